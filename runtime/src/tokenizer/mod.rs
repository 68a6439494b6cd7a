//! Tokenizer built from GGUF metadata, token for token equal to llama.cpp's.
//!
//! - `vocab`: tokens, scores, attributes, special ids, end-of-generation set (`llama_vocab::load`)
//! - `attr`: token attributes and GGUF token types
//! - `unicode`: code-point classes as llama.cpp's tables have them, GPT-2 byte map
//! - `pretokenize`: the BPE pre-tokenizer regexes (`unicode_regex_split`)
//! - `bpe`: byte-level BPE (`llm_tokenizer_bpe_session`)
//! - `spm`: SentencePiece (`llm_tokenizer_spm_session`)
//! - `special`: splitting on special-token text (`tokenizer_st_partition`)
//! - `detokenize`: pieces, llama.cpp's detokenize, the streaming [`Detokenizer`]

pub mod attr;
mod bpe;
mod detokenize;
mod pretokenize;
mod special;
mod spm;
mod unicode;
mod vocab;

#[cfg(test)]
mod tests;

pub use attr::TokenAttr;
pub use detokenize::Detokenizer;
pub use vocab::{SpecialTokens, TokenizerKind};

use crate::error::TokenizerError;
use crate::gguf::Metadata;
use special::Fragment;

/// The words byte-level BPE cuts `text` into before merging, for the pre-tokenizer named by
/// `tokenizer.ggml.pre` (`None`: llama.cpp's default). For inspection and tests.
pub fn pre_tokenize<'t>(pre: Option<&str>, text: &'t str) -> Result<Vec<&'t str>, TokenizerError> {
    let settings = vocab::pre_settings(pre).ok_or_else(|| TokenizerError::UnknownPreTokenizer { pre: pre.unwrap_or_default().to_owned() })?;
    Ok(pretokenize::split(text, settings.rules))
}

/// Checks what a tokenizer needs that the vocabulary does not: a known algorithm
/// (`tokenizer.ggml.model`) and, for byte-level BPE, a known pre-tokenizer — the same checks
/// [`Tokenizer::from_metadata`] makes first. For the planner, on a header alone.
pub fn check_supported(md: &Metadata) -> Result<TokenizerKind, TokenizerError> {
    vocab::algorithm(md).map(|(kind, _)| kind)
}

/// A tokenizer for one model: encodes text to ids and ids back to text.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: vocab::Vocab,
    bpe: Option<bpe::Bpe>,
    pieces: detokenize::Pieces,
}

/// A summary: the vocabulary itself is too large to print.
impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.vocab.kind)
            .field("pre", &self.vocab.pre)
            .field("n_vocab", &self.n_vocab())
            .field("bos", &self.bos())
            .field("eos", &self.eos())
            .field("add_bos", &self.add_bos())
            .field("eog", &self.vocab.eog)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a model's `tokenizer.ggml.*` metadata, validating it.
    pub fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let vocab = vocab::Vocab::from_metadata(md)?;
        let bpe = match vocab.kind {
            TokenizerKind::Spm => None,
            TokenizerKind::Bpe => {
                let merges = md.get_str_array("tokenizer.ggml.merges")?.ok_or(TokenizerError::MissingMerges)?;
                let rules = vocab::pre_settings(vocab.pre.as_deref())
                    .ok_or_else(|| TokenizerError::UnknownPreTokenizer { pre: vocab.pre.clone().unwrap_or_default() })?
                    .rules;
                Some(bpe::Bpe::new(&vocab, merges, rules)?)
            }
        };
        let pieces = detokenize::Pieces::build(&vocab);
        Ok(Tokenizer { vocab, bpe, pieces })
    }

    /// Tokenizes `text` (llama.cpp `llama_tokenize`). `add_special` adds BOS / EOS where the
    /// model asks for them (`tokenizer.ggml.add_bos_token` …); `parse_special` turns the text of
    /// control tokens (e.g. `<|im_start|>`) into those tokens. User-defined tokens are always
    /// recognised.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let v = &self.vocab;
        let frags = special::partition(v, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            out.extend(v.special.bos);
        }
        match &self.bpe {
            None => {
                // SentencePiece: a space prefix on text that starts the input or follows a
                // special token, spaces escaped as "▁".
                let mut prev_special = true;
                let mut buf = String::new();
                for f in &frags {
                    match f {
                        Fragment::Text(r) => {
                            buf.clear();
                            if v.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[r.clone()].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(v, &buf, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                    }
                }
            }
            Some(bpe) => {
                for f in &frags {
                    match f {
                        Fragment::Text(r) => bpe.tokenize(v, &text[r.clone()], &mut out),
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
        }
        if add_special && v.add_eos {
            out.extend(v.special.eos);
        }
        Ok(out)
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.n_vocab()
    }

    /// SentencePiece or byte-level BPE.
    pub fn kind(&self) -> TokenizerKind {
        self.vocab.kind
    }

    /// `tokenizer.ggml.pre`, if the file names one.
    pub fn pre(&self) -> Option<&str> {
        self.vocab.pre.as_deref()
    }

    /// Every special token id llama.cpp tracks (from metadata, defaults, or found by text).
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.vocab.special
    }

    pub fn bos(&self) -> Option<u32> {
        self.vocab.special.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.vocab.special.eos
    }

    /// Whether `tokenize(.., add_special = true, ..)` puts BOS first.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    /// Whether `tokenize(.., add_special = true, ..)` puts EOS last.
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }

    /// Whether SentencePiece prefixes text with a space (`tokenizer.ggml.add_space_prefix`).
    pub fn add_space_prefix(&self) -> bool {
        self.vocab.add_space_prefix
    }

    /// Whether `id` ends generation (EOS, EOT, `<end_of_turn>`, `<|im_end|>` …, as llama.cpp's
    /// `llama_vocab_is_eog`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.is_eog(id)
    }

    /// The end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    /// The vocabulary text of `id` (SentencePiece "▁", GPT-2 byte code points as stored).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// The id whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.text_to_token(text)
    }

    pub fn token_attr(&self, id: u32) -> Option<TokenAttr> {
        self.vocab.attrs.get(id as usize).copied()
    }

    /// The SentencePiece score of `id` (0 when the file has none).
    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.vocab.scores.get(id as usize).copied()
    }

    /// The bytes `id` stands for (llama.cpp `token_to_piece` without lstrip): control and
    /// unknown tokens are empty unless `special`.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Result<&[u8], TokenizerError> {
        let piece = self.pieces.get(id).ok_or(TokenizerError::TokenOutOfRange { id, n_vocab: self.n_vocab() })?;
        if !special && self.vocab.attr(id).has(attr::UNKNOWN | attr::CONTROL) {
            return Ok(&[]);
        }
        Ok(piece)
    }

    /// The pieces of `ids` concatenated, as text (invalid UTF-8 becomes U+FFFD); control tokens
    /// render as empty. Equal to feeding a [`Detokenizer`] every id and finishing it.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_to_piece(id, false)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// llama.cpp's `llama_detokenize`: as [`decode`](Self::decode), but the first piece loses one
    /// leading space when the model adds a space prefix, `remove_special` drops a leading BOS /
    /// trailing EOS the model adds itself, `unparse_special` renders control tokens, and the
    /// model's `clean_up_tokenization_spaces` rules apply.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Result<String, TokenizerError> {
        let v = &self.vocab;
        let mut ids = ids;
        let mut remove_space = v.add_space_prefix;
        if remove_special && v.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), v.special.bos) {
                if first == bos {
                    remove_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if remove_special && v.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), v.special.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut bytes = Vec::new();
        for &id in ids {
            let mut piece = self.token_to_piece(id, unparse_special)?;
            if remove_space {
                if let Some(rest) = piece.strip_prefix(b" ") {
                    piece = rest;
                }
            }
            remove_space = false;
            bytes.extend_from_slice(piece);
        }
        if v.clean_spaces {
            detokenize::clean_spaces(&mut bytes);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A streaming detokenizer for this tokenizer's ids (control tokens render as empty).
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer::new(false)
    }
}
