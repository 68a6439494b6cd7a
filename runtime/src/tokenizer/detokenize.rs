//! From ids back to text: the bytes of each token (llama.cpp `token_to_piece`, cached for every
//! token as llama.cpp's `cache_token_to_piece`), llama.cpp's `detokenize` with its space
//! clean-up, and a streaming [`Detokenizer`] that never splits a UTF-8 character.

use super::attr;
use super::unicode;
use super::vocab::{parse_byte_token, TokenizerKind, Vocab};
use super::Tokenizer;
use crate::error::TokenizerError;

/// The piece of every token with special tokens rendered (`token_to_piece(.., special=true)`),
/// stored back to back.
#[derive(Clone, Debug)]
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    /// `ends[i]` is where token i's piece ends; it starts where token i-1's ends.
    ends: Vec<usize>,
}

impl Pieces {
    pub(crate) fn build(vocab: &Vocab) -> Pieces {
        let mut bytes = Vec::with_capacity(vocab.texts.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(vocab.texts.len());
        for (id, text) in vocab.texts.iter().enumerate() {
            let a = vocab.attrs[id];
            if a.has(attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) {
                bytes.extend_from_slice(text.as_bytes());
            } else if a.has(attr::NORMAL) {
                match vocab.kind {
                    TokenizerKind::Spm => bytes.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
                    TokenizerKind::Bpe => decode_bpe_text(text, &mut bytes),
                }
            } else if a.has(attr::BYTE) {
                // Validated when the vocabulary was read.
                if let Some(b) = parse_byte_token(text) {
                    bytes.push(b);
                }
            }
            ends.push(bytes.len());
        }
        Pieces { bytes, ends }
    }

    /// The piece of `id` with special tokens rendered; `None` outside the vocabulary.
    pub(crate) fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }
}

/// GPT-2 code points back to bytes (`llama_decode_text`), including llama.cpp's marker for a
/// code point outside the byte map.
fn decode_bpe_text(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match unicode::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).as_bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// llama.cpp's `clean_up_tokenization_spaces` passes of `llama_vocab::impl::detokenize`,
/// ported literally (in place, including how a pass reads bytes it has already rewritten).
pub(crate) fn clean_spaces(t: &mut Vec<u8>) {
    // " ?", " !", " .", " ,": drop the space.
    let n = t.len();
    let mut total = n.min(1);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);

    // " ' ": drop the spaces around a lone apostrophe.
    let n = t.len();
    let mut total = n.min(1);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    t.truncate(total);

    // " 's", " 'm", " 're", " 've": drop the space (" 't", " 'd", " 'll" keep it).
    let n = t.len();
    let mut total = n.min(1);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < n {
                let x2 = t[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

/// Streaming detokenizer: feed ids one at a time, get back only complete UTF-8 text.
///
/// Bytes of a character split across tokens (byte-fallback tokens of an emoji, say) are held
/// until the character is complete; byte sequences that can never become valid UTF-8 come out
/// as U+FFFD, exactly as `String::from_utf8_lossy` would render the whole output.
#[derive(Clone, Debug, Default)]
pub struct Detokenizer {
    pending: Vec<u8>,
    special: bool,
}

impl Detokenizer {
    /// A detokenizer that renders control tokens as empty (`special = false`) or as their text.
    pub fn new(special: bool) -> Detokenizer {
        Detokenizer { pending: Vec::new(), special }
    }

    /// Whether control tokens are rendered as their text.
    pub fn special(&self) -> bool {
        self.special
    }

    /// Appends the piece of token `id` and returns the text that is now complete.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        let piece = tokenizer.token_to_piece(id, self.special)?;
        Ok(self.push_bytes(piece))
    }

    /// Appends raw bytes and returns the text that is now complete.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid` is UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..start + valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                        None => {
                            // An incomplete character at the end: wait for more bytes.
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Bytes held back because they end in an incomplete character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: whatever is held back, with U+FFFD for the incomplete character.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
