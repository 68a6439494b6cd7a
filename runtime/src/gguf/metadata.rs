//! The metadata map of a GGUF header, in file order, with typed accessors for the keys the
//! runtime reads (architecture, hyperparameters, tokenizer arrays).

use super::value::{Array, Value};
use crate::error::GgufError;
use std::collections::HashMap;

#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
    GgufError::WrongType { key: key.to_owned(), expected, found: v.type_name() }
}

impl Metadata {
    pub fn with_capacity(n: usize) -> Self {
        Metadata { entries: Vec::with_capacity(n), index: HashMap::with_capacity(n) }
    }

    /// Appends an entry; a later entry with the same key replaces the earlier one
    /// (the reader rejects duplicates before calling this).
    pub fn push(&mut self, key: String, value: Value) {
        if let Some(&i) = self.index.get(&key) {
            self.entries[i].1 = value;
        } else {
            self.index.insert(key.clone(), self.entries.len());
            self.entries.push((key, value));
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// An integer of any integer type that fits in u64 (files disagree on u32 vs u64 for
    /// sizes, so accept all of them as ggml's loader does).
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let i = v.as_i128().ok_or_else(|| wrong(key, "unsigned integer", v))?;
        u64::try_from(i).map(Some).map_err(|_| GgufError::OutOfRange { key: key.to_owned(), value: i.to_string(), expected: "u64" })
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?.ok_or_else(|| GgufError::MissingKey { key: key.to_owned() })
    }

    /// An integer key that must fit in u32 (layer counts, head counts, lengths).
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        match self.get_u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v).map(Some).map_err(|_| GgufError::OutOfRange { key: key.to_owned(), value: v.to_string(), expected: "u32" }),
        }
    }

    pub fn require_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.get_u32(key)?.ok_or_else(|| GgufError::MissingKey { key: key.to_owned() })
    }

    /// A float key (f32 or f64 in the file).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => Err(wrong(key, "f32", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong(key, "bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong(key, "string", v)),
        }
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?.ok_or_else(|| GgufError::MissingKey { key: key.to_owned() })
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&Array>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(wrong(key, "array", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::String(a))) => Ok(Some(a)),
            Some(v) => Err(wrong(key, "array[string]", v)),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::F32(a))) => Ok(Some(a)),
            Some(v) => Err(wrong(key, "array[f32]", v)),
        }
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Option<&[i32]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::I32(a))) => Ok(Some(a)),
            Some(v) => Err(wrong(key, "array[i32]", v)),
        }
    }

    /// A per-layer integer (e.g. head_count_kv) given either as one integer or as an array of
    /// integers with one entry per layer; returns one value per layer.
    pub fn get_per_layer_u32(&self, key: &str, n_layers: usize) -> Result<Option<Vec<u32>>, GgufError> {
        let out_of_range = |v: i128| GgufError::OutOfRange { key: key.to_owned(), value: v.to_string(), expected: "u32" };
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                let vals: Vec<i128> = match a {
                    Array::U32(v) => v.iter().map(|&x| x.into()).collect(),
                    Array::I32(v) => v.iter().map(|&x| x.into()).collect(),
                    Array::U64(v) => v.iter().map(|&x| x.into()).collect(),
                    Array::I64(v) => v.iter().map(|&x| x.into()).collect(),
                    _ => return Err(GgufError::WrongType { key: key.to_owned(), expected: "array of integers", found: a.type_name() }),
                };
                if vals.len() != n_layers {
                    return Err(GgufError::OutOfRange { key: key.to_owned(), value: format!("{} entries", vals.len()), expected: "one entry per layer" });
                }
                vals.into_iter().map(|v| u32::try_from(v).map_err(|_| out_of_range(v))).collect::<Result<_, _>>().map(Some)
            }
            Some(_) => Ok(self.get_u32(key)?.map(|v| vec![v; n_layers])),
        }
    }

    // --- the usual keys ---

    /// `general.architecture` ("llama", "gemma3", …).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.require_str("general.architecture")
    }

    /// `general.name`, if present.
    pub fn model_name(&self) -> Result<Option<&str>, GgufError> {
        self.get_str("general.name")
    }

    /// `{arch}.{suffix}`, e.g. `arch_key("embedding_length")` → "llama.embedding_length".
    pub fn arch_key(&self, suffix: &str) -> Result<String, GgufError> {
        Ok(format!("{}.{}", self.architecture()?, suffix))
    }

    /// The hyperparameters every transformer file carries, read for its architecture.
    pub fn hyperparameters(&self) -> Result<Hyperparameters, GgufError> {
        let k = |s: &str| self.arch_key(s);
        let n_layers = self.require_u32(&k("block_count")?)?;
        let n_head = self.require_u32(&k("attention.head_count")?)?;
        Ok(Hyperparameters {
            context_length: self.require_u32(&k("context_length")?)?,
            embedding_length: self.require_u32(&k("embedding_length")?)?,
            block_count: n_layers,
            feed_forward_length: self.get_u32(&k("feed_forward_length")?)?,
            head_count: n_head,
            head_count_kv: self.get_u32(&k("attention.head_count_kv")?)?.unwrap_or(n_head),
            key_length: self.get_u32(&k("attention.key_length")?)?,
            value_length: self.get_u32(&k("attention.value_length")?)?,
            rms_norm_eps: self.get_f32(&k("attention.layer_norm_rms_epsilon")?)?,
            rope_freq_base: self.get_f32(&k("rope.freq_base")?)?,
            rope_dimension_count: self.get_u32(&k("rope.dimension_count")?)?,
            sliding_window: self.get_u32(&k("attention.sliding_window")?)?,
            vocab_size: self.get_u32(&k("vocab_size")?)?,
        })
    }

    /// The tokenizer arrays and flags (`tokenizer.ggml.*`).
    pub fn tokenizer(&self) -> Result<TokenizerMetadata<'_>, GgufError> {
        Ok(TokenizerMetadata {
            model: self.require_str("tokenizer.ggml.model")?,
            pre: self.get_str("tokenizer.ggml.pre")?,
            tokens: self.get_str_array("tokenizer.ggml.tokens")?.ok_or_else(|| GgufError::MissingKey { key: "tokenizer.ggml.tokens".into() })?,
            scores: self.get_f32_array("tokenizer.ggml.scores")?,
            token_types: self.get_i32_array("tokenizer.ggml.token_type")?,
            merges: self.get_str_array("tokenizer.ggml.merges")?,
            bos_id: self.get_u32("tokenizer.ggml.bos_token_id")?,
            eos_id: self.get_u32("tokenizer.ggml.eos_token_id")?,
            unk_id: self.get_u32("tokenizer.ggml.unknown_token_id")?,
            pad_id: self.get_u32("tokenizer.ggml.padding_token_id")?,
            add_bos: self.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: self.get_bool("tokenizer.ggml.add_eos_token")?,
            chat_template: self.get_str("tokenizer.chat_template")?,
        })
    }
}

/// Hyperparameters common to the supported architectures (`{arch}.*` keys).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hyperparameters {
    pub context_length: u32,
    pub embedding_length: u32,
    pub block_count: u32,
    pub feed_forward_length: Option<u32>,
    pub head_count: u32,
    pub head_count_kv: u32,
    pub key_length: Option<u32>,
    pub value_length: Option<u32>,
    pub rms_norm_eps: Option<f32>,
    pub rope_freq_base: Option<f32>,
    pub rope_dimension_count: Option<u32>,
    pub sliding_window: Option<u32>,
    pub vocab_size: Option<u32>,
}

/// Borrowed view of the tokenizer metadata.
#[derive(Clone, Debug)]
pub struct TokenizerMetadata<'a> {
    pub model: &'a str,
    pub pre: Option<&'a str>,
    pub tokens: &'a [String],
    pub scores: Option<&'a [f32]>,
    pub token_types: Option<&'a [i32]>,
    pub merges: Option<&'a [String]>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<&'a str>,
}
