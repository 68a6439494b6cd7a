//! SentencePiece tokenization of one text fragment (port of llama.cpp
//! `llm_tokenizer_spm_session::tokenize`): start from UTF-8 characters, repeatedly merge the
//! adjacent pair whose concatenation is the highest-scoring vocabulary token (leftmost on
//! ties), then emit each symbol as its token or, failing that, as byte-fallback tokens.
//!
//! The caller has already replaced spaces by "▁" and added the space prefix.

use super::vocab::Vocab;
use crate::error::TokenizerError;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    n: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge (`llm_bigram_spm`).
#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl Ord for Bigram {
    /// Highest score first, then the leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
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

pub(crate) fn tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
    let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(Symbol { start, n: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
    }
    let Some(last) = syms.last_mut() else { return Ok(()) };
    last.next = None;

    let mut queue = BinaryHeap::new();
    let try_add = |syms: &[Symbol], queue: &mut BinaryHeap<Bigram>, left: Option<usize>, right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else { return };
        let (ls, rs) = (syms[l], syms[r]);
        // Adjacent symbols are contiguous in `text`.
        let s = &text[ls.start..ls.start + ls.n + rs.n];
        if let Some(id) = vocab.text_to_token(s) {
            queue.push(Bigram { left: l, right: r, score: vocab.scores[id as usize], size: s.len() });
        }
    };
    for i in 1..syms.len() {
        try_add(&syms, &mut queue, Some(i - 1), Some(i));
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (syms[b.left], syms[b.right]);
        // Stale: one side was merged away or grew since the bigram was queued.
        if l.n == 0 || r.n == 0 || l.n + r.n != b.size {
            continue;
        }
        syms[b.left].n += r.n;
        syms[b.right].n = 0;
        syms[b.left].next = r.next;
        if let Some(nx) = r.next {
            syms[nx].prev = Some(b.left);
        }
        try_add(&syms, &mut queue, l.prev, Some(b.left));
        try_add(&syms, &mut queue, Some(b.left), r.next);
    }

    // `resegment`: every merged symbol is a vocabulary token by construction, so only single
    // characters can miss and fall back to bytes (llama.cpp's rev_merge never applies).
    let mut i = Some(0);
    while let Some(k) = i {
        let s = syms[k];
        let piece = &text[s.start..s.start + s.n];
        match vocab.text_to_token(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(vocab.byte_fallback[usize::from(b)].ok_or(TokenizerError::NoByteToken { byte: b })?);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}
