//! Byte-level BPE (port of llama.cpp `llm_tokenizer_bpe_session::tokenize`): pre-tokenize into
//! words, map each word's bytes to GPT-2's printable code points, then repeatedly merge the
//! adjacent pair with the lowest merge rank (leftmost on ties).

use super::pretokenize::{self, SplitRule};
use super::unicode;
use super::vocab::Vocab;
use crate::error::TokenizerError;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for the (left id, right id) keys of the merge table.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let h = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

type PairMap = HashMap<u64, Merge, BuildHasherDefault<PairHasher>>;

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// One merge rule: its rank and the token the merged text is (if it is one).
#[derive(Clone, Copy, Debug)]
struct Merge {
    rank: u32,
    merged: Option<u32>,
}

/// The BPE model: merge ranks by token pair, the pre-tokenizer, the byte map.
#[derive(Clone, Debug)]
pub(crate) struct Bpe {
    merges: PairMap,
    rules: &'static [SplitRule],
    byte_chars: [char; 256],
    /// Token of each byte's GPT-2 code point.
    byte_tokens: [Option<u32>; 256],
}

impl Bpe {
    /// Builds the merge table from `tokenizer.ggml.merges` ("left right" per line, rank = line).
    /// llama.cpp keys merges by text; every part must be a vocabulary token here, so ids serve.
    pub(crate) fn new(vocab: &Vocab, merges: &[String], rules: &'static [SplitRule]) -> Result<Bpe, TokenizerError> {
        let mut map = PairMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut buf = String::new();
        for (index, m) in merges.iter().enumerate() {
            // llama.cpp: word.find(' ', 1)
            let pos = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1);
            let Some(pos) = pos else {
                return Err(TokenizerError::MalformedMerge { index, merge: m.clone() });
            };
            let (first, second) = (&m[..pos], &m[pos + 1..]);
            let id = |part: &str| vocab.text_to_token(part).ok_or_else(|| TokenizerError::MergeUnknownToken { index, merge: m.clone(), part: part.to_owned() });
            let (l, r) = (id(first)?, id(second)?);
            buf.clear();
            buf.push_str(first);
            buf.push_str(second);
            let rank = u32::try_from(index).unwrap_or(u32::MAX);
            // The first occurrence of a pair keeps its rank (unordered_map::emplace).
            map.entry(pair_key(l, r)).or_insert(Merge { rank, merged: vocab.text_to_token(&buf) });
        }
        let byte_chars = unicode::byte_to_char_table();
        let byte_tokens = std::array::from_fn(|b| vocab.text_to_token(byte_chars[b].encode_utf8(&mut [0; 4])));
        Ok(Bpe { merges: map, rules, byte_chars, byte_tokens })
    }

    /// Tokenizes one text fragment, appending to `out`.
    pub(crate) fn tokenize(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut encoded = String::new();
        let mut syms: Vec<Symbol> = Vec::new();
        let mut queue = BinaryHeap::new();
        for word in pretokenize::split(text, self.rules) {
            encoded.clear();
            for &b in word.as_bytes() {
                encoded.push(self.byte_chars[usize::from(b)]);
            }
            if vocab.ignore_merges {
                if let Some(id) = vocab.text_to_token(&encoded) {
                    out.push(id);
                    continue;
                }
            }
            syms.clear();
            queue.clear();
            let mut start = 0;
            for (i, &b) in word.as_bytes().iter().enumerate() {
                let n = self.byte_chars[usize::from(b)].len_utf8();
                syms.push(Symbol { start, n, prev: i.checked_sub(1), next: Some(i + 1), id: self.byte_tokens[usize::from(b)] });
                start += n;
            }
            let Some(last) = syms.last_mut() else { continue };
            last.next = None;

            for i in 1..syms.len() {
                self.add_bigram(&syms, &mut queue, Some(i - 1), Some(i));
            }
            while let Some(bg) = queue.pop() {
                let (l, r) = (syms[bg.left], syms[bg.right]);
                // Stale: a side was merged away or changed since the bigram was queued.
                if l.n == 0 || r.n == 0 || l.n != bg.left_n || r.n != bg.right_n {
                    continue;
                }
                syms[bg.left].n += r.n;
                syms[bg.left].id = bg.merged;
                syms[bg.right].n = 0;
                syms[bg.left].next = r.next;
                if let Some(nx) = r.next {
                    syms[nx].prev = Some(bg.left);
                }
                self.add_bigram(&syms, &mut queue, l.prev, Some(bg.left));
                self.add_bigram(&syms, &mut queue, Some(bg.left), r.next);
            }

            let mut i = Some(0);
            while let Some(k) = i {
                let s = syms[k];
                match s.id {
                    Some(id) => out.push(id),
                    None => {
                        // Not a token: llama.cpp looks up each byte of the encoded text as a
                        // one-byte string, which only ASCII bytes can be; others are dropped.
                        for &b in &encoded.as_bytes()[s.start..s.start + s.n] {
                            if b.is_ascii() {
                                if let Some(id) = vocab.text_to_token(char::from(b).encode_utf8(&mut [0; 4])) {
                                    out.push(id);
                                }
                            }
                        }
                    }
                }
                i = s.next;
            }
        }
    }

    fn add_bigram(&self, syms: &[Symbol], queue: &mut BinaryHeap<Bigram>, left: Option<usize>, right: Option<usize>) {
        let (Some(l), Some(r)) = (left, right) else { return };
        let (ls, rs) = (syms[l], syms[r]);
        let (Some(lid), Some(rid)) = (ls.id, rs.id) else { return };
        if let Some(m) = self.merges.get(&pair_key(lid, rid)) {
            queue.push(Bigram { left: l, right: r, rank: m.rank, left_n: ls.n, right_n: rs.n, merged: m.merged });
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Symbol {
    /// Byte offset in the encoded word.
    start: usize,
    /// Byte length in the encoded word (0 once merged into its left neighbour).
    n: usize,
    prev: Option<usize>,
    next: Option<usize>,
    /// The token whose text this symbol is, if any.
    id: Option<u32>,
}

/// A candidate merge (`llm_bigram_bpe`); the side lengths stand for its text.
#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    rank: u32,
    left_n: usize,
    right_n: usize,
    merged: Option<u32>,
}

impl Ord for Bigram {
    /// Lowest rank first, then the leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then_with(|| o.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
