//! Splitting text on special-token strings before the tokenizer proper runs
//! (port of llama.cpp `llama_vocab::impl::tokenizer_st_partition`).
//!
//! Special tokens are tried longest first; each one splits every text fragment left by the
//! previous ones at all of its occurrences. Without `parse_special`, CONTROL and UNKNOWN tokens
//! are not looked for, but USER_DEFINED tokens still are (as Hugging Face tokenizers do with
//! added tokens).

use super::attr;
use super::vocab::Vocab;
use std::ops::Range;

/// A piece of the input: text still to tokenize, or a special token already found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Which adjacent byte pairs occur in a text: a quick necessary condition for a substring.
struct BytePairs(Vec<u64>);

impl BytePairs {
    fn of(text: &[u8]) -> BytePairs {
        let mut bits = vec![0u64; 65536 / 64];
        for w in text.windows(2) {
            let i = usize::from(w[0]) << 8 | usize::from(w[1]);
            bits[i / 64] |= 1 << (i % 64);
        }
        BytePairs(bits)
    }

    fn may_contain(&self, needle: &[u8]) -> bool {
        needle.windows(2).all(|w| {
            let i = usize::from(w[0]) << 8 | usize::from(w[1]);
            self.0[i / 64] & (1 << (i % 64)) != 0
        })
    }
}

pub(crate) fn partition(vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Fragment::Text(0..text.len()));
    let pairs = BytePairs::of(text.as_bytes());
    for &id in &vocab.special_cache {
        let a = vocab.attr(id);
        if !parse_special && a.has(attr::CONTROL | attr::UNKNOWN) {
            continue;
        }
        let needle = vocab.texts[id as usize].as_str();
        // Fragments are ranges of `text`: a token absent from the whole text splits nothing.
        // (Most special tokens are absent; the byte-pair test rules them out cheaply.)
        if needle.is_empty() || !pairs.may_contain(needle.as_bytes()) || !text.contains(needle) {
            continue;
        }
        let mut out = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            let Fragment::Text(range) = f else {
                out.push(f);
                continue;
            };
            let (mut base, end) = (range.start, range.end);
            loop {
                let Some(rel) = text[base..end].find(needle) else {
                    if base < end {
                        out.push(Fragment::Text(base..end));
                    }
                    break;
                };
                let m = base + rel;
                let mut left_end = m;
                if a.has(attr::LSTRIP) {
                    while left_end > base && is_c_space(text.as_bytes()[left_end - 1]) {
                        left_end -= 1;
                    }
                }
                if left_end > base {
                    out.push(Fragment::Text(base..left_end));
                }
                out.push(Fragment::Token(id));
                base = m + needle.len();
                if a.has(attr::RSTRIP) {
                    while base < end && is_c_space(text.as_bytes()[base]) {
                        base += 1;
                    }
                }
                if base >= end {
                    break;
                }
            }
        }
        frags = out;
    }
    frags
}
