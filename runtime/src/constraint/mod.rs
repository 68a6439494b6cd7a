//! Constrained decoding: an answer held to a JSON schema or a grammar, by masking each step's
//! logits to the tokens that keep it valid.
//!
//! The work is llguidance's (the library llama.cpp, vLLM and SGLang use): [`Vocabulary`]
//! gives it the model's tokens as bytes once per model (control tokens behind its
//! special-token marker, so grammars may name them and text never matches them);
//! [`Constraint`] is one answer's matcher: [`Constraint::mask`] before sampling,
//! [`Constraint::accept`] after. GBNF grammars (llama.cpp's format) are rewritten into
//! llguidance's Lark syntax first ([`gbnf::to_lark`]).

use crate::error::ConstraintError;
use crate::tokenizer::{attr, Tokenizer};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;

pub mod gbnf;
#[cfg(test)]
mod tests;

/// Tokens longer than this are left out of the vocabulary the grammar sees (no real token
/// comes near; a hostile file could otherwise make the trie deep).
const MAX_TOKEN_BYTES: usize = 1024;

/// What an answer is held to.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// A JSON schema (OpenAI's `response_format: { type: "json_schema" }`; `{"type": "object"}`
    /// for `json_object`).
    JsonSchema(serde_json::Value),
    /// A GBNF grammar, as llama.cpp takes it (`root` is the start rule).
    Gbnf(String),
    /// llguidance's Lark syntax (`start` is the start rule).
    Lark(String),
}

/// The model's tokens as llguidance needs them, built once per model.
pub struct Vocabulary {
    factory: ParserFactory,
    /// (id, the id the trie holds for the same bytes): vocabularies hold duplicates (Gemma's
    /// several `" "`), the trie one per byte string; a duplicate is allowed when its twin is.
    twins: Arc<Vec<(u32, u32)>>,
}

/// llguidance's tokenizer interface over the trie alone: it tokenizes only the literal text of
/// grammars, where a greedy tokenization is what it expects without a tokenizer of its own.
struct TrieEnv(TokTrie);

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.0
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.0.greedy_tokenize(s)
    }
}

impl Vocabulary {
    /// The vocabulary of `tokenizer`: normal tokens as the bytes they decode to, control tokens
    /// as the special-token marker and their text, unknown and unused ones empty (never
    /// allowed); the end-of-generation tokens end an answer where the grammar allows it.
    pub fn new(tokenizer: &Tokenizer) -> Result<Vocabulary, ConstraintError> {
        let n = tokenizer.n_vocab();
        let mut words = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let a = tokenizer.token_attr(id).unwrap_or_default();
            let piece = tokenizer.token_to_piece(id, true).map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
            let word = if a.has(attr::UNKNOWN | attr::UNUSED) || piece.len() > MAX_TOKEN_BYTES {
                Vec::new()
            } else if a.has(attr::CONTROL) {
                [&[TokTrie::SPECIAL_TOKEN_MARKER][..], piece].concat()
            } else {
                piece.to_vec()
            };
            words.push(word);
        }
        let eog = tokenizer.eog_ids();
        let eos = tokenizer.eos().or(eog.first().copied()).ok_or_else(|| ConstraintError::Vocabulary("has no end-of-generation token".into()))?;
        let info = TokRxInfo { vocab_size: n as u32, tok_eos: eos, tok_bos: tokenizer.bos(), tok_pad: None, tok_unk: None, tok_end_of_turn: None };
        let ends = if eog.is_empty() { vec![eos] } else { eog.to_vec() };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        let twins = words
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_empty())
            .filter_map(|(id, w)| trie.token_id(w).filter(|&held| held != id as u32).map(|held| (id as u32, held)))
            .collect();
        let env: TokEnv = Arc::new(TrieEnv(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Vocabulary { factory, twins: Arc::new(twins) })
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `schema` with llguidance's layout options set unless it sets them (`x-guidance`): JSON laid
/// out as Python's `json.dumps` writes it (`", "`, `": "`), no other whitespace. Flexible
/// whitespace lets a small model write blanks until `max_tokens`.
fn fixed_layout(schema: &serde_json::Value) -> Result<serde_json::Value, ConstraintError> {
    let mut schema = schema.clone();
    let obj = schema.as_object_mut().ok_or_else(|| ConstraintError::Grammar("a JSON schema must be an object".into()))?;
    obj.entry("x-guidance").or_insert_with(json_layout);
    Ok(schema)
}

/// llguidance's layout options (`x-guidance`) for JSON as Python's `json.dumps` writes it.
pub(crate) fn json_layout() -> serde_json::Value {
    serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// One answer's matcher.
pub struct Constraint {
    matcher: Matcher,
    n_vocab: usize,
    twins: Arc<Vec<(u32, u32)>>,
}

impl Constraint {
    /// Compiles `grammar` against `vocab`; a schema or grammar that does not compile is a
    /// [`ConstraintError::Grammar`] before any token is generated.
    pub fn new(vocab: &Vocabulary, grammar: &Grammar) -> Result<Constraint, ConstraintError> {
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(fixed_layout(schema)?),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Grammar::Gbnf(gbnf) => TopLevelGrammar::from_lark(gbnf::to_lark(gbnf)?),
        };
        let parser = vocab.factory.create_parser(top).map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Grammar(e));
        }
        Ok(Constraint { matcher, n_vocab: vocab.len(), twins: vocab.twins.clone() })
    }

    /// Sets the logits of the tokens the grammar does not allow now to −∞ (`logits`:
    /// `[n_vocab]`; ids past the grammar's vocabulary are never allowed).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mut allowed = self.matcher.compute_mask_or_eos().map_err(|e| ConstraintError::Failed(e.to_string()))?;
        for &(id, held) in self.twins.iter() {
            if allowed.is_allowed(held) {
                allowed.allow_token(id);
            }
        }
        for (id, l) in logits.iter_mut().enumerate() {
            if id >= self.n_vocab || !allowed.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past `id`; true when the grammar is complete and allows nothing more.
    pub fn accept(&mut self, id: u32) -> Result<bool, ConstraintError> {
        self.matcher.consume_token(id).map_err(|e| ConstraintError::Failed(e.to_string()))?;
        Ok(self.matcher.is_stopped())
    }

    /// Whether the answer so far is a complete match (an end token is allowed now).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
