//! `webgguf synth`: GGUF files with random weights and the shapes of real models, so every
//! size path (buffers past the binding limit, files past 4 GiB, shards, the planner) can be
//! exercised without downloading those models.
//!
//! - `presets`: the shapes of Llama-3.x, Qwen2.5/3 and Gemma-3 models
//! - this file: a [`SynthSpec`] → metadata (validated by [`ModelConfig::from_metadata`] and
//!   [`Weights::load`], the loader's own checks) and the tensor list with each tensor's
//!   initialisation
//! - `write`: the streaming writer (native): rows generated, quantized and written slab by
//!   slab, types chosen by the quantizer's per-tensor rules ([`crate::quantize::mix`])
//!
//! The weights are uniform random with a per-tensor scale chosen so that every layer's
//! activations stay of order one (pre-norm residual blocks; see [`Init`]): logits and
//! perplexity are finite numbers a test can compare across backends.

mod presets;
#[cfg(not(target_arch = "wasm32"))]
mod write;

pub use presets::{preset, presets, Preset};
#[cfg(not(target_arch = "wasm32"))]
pub use write::{synth_file, tensor_bytes, SynthOptions};

use crate::error::ModelError;
use crate::gguf::{Array, Metadata, Value};
use crate::model::{Arch, ModelConfig, WeightProvider, Weights};
use crate::tokenizer::attr;

/// Long-context rope scaling of a preset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// `{arch}.rope.scaling.type = linear` (Gemma-3-4B's global layers).
    Linear {
        factor: f32,
    },
    /// Llama 3.1+: per-frequency divisors stored as the `rope_freqs.weight` tensor, as
    /// llama.cpp's converter writes them (`LlamaModel.generate_extra_tensors`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: u32,
    },
}

/// The hyperparameters of a synthetic model.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Per head, for keys and values alike (`attention.key_length`).
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// No `output.weight`: the logits reuse `token_embd.weight`.
    pub tied_embeddings: bool,
    /// `attn_{q,k,v}.bias` (Qwen2).
    pub qkv_bias: bool,
    pub rope_scaling: RopeScaling,
    /// Gemma-3: the local layers' window (every 6th layer global, llama.cpp's pattern).
    pub sliding_window: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown preset {name:?}; one of {known}")]
    UnknownPreset { name: String, known: String },
    #[error("the hyperparameters do not make a model: {0}")]
    Config(#[from] ModelError),
    #[error("{what} must be {rule}, got {value}")]
    BadSpec { what: &'static str, rule: &'static str, value: String },
    #[error("--tokenizer-from: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Mix(#[from] crate::quantize::mix::MixError),
    #[error("tensor {tensor}: {source}")]
    Quant { tensor: String, source: crate::QuantError },
    #[cfg(not(target_arch = "wasm32"))]
    #[error(transparent)]
    Write(#[from] crate::gguf::partial_file::WriteError),
    #[cfg(not(target_arch = "wasm32"))]
    #[error(transparent)]
    Shard(#[from] crate::gguf::ShardError),
}

/// How a tensor's values are made. Scales keep each pre-norm block's output of order one:
/// an RMS-normed input (entries ~1) times rows of standard deviation 1/√fan_in gives entries
/// ~1; the projections back into the residual stream are scaled by a further 1/√(2·layers)
/// so the stream grows slowly with depth; the output matrix's 2/√d gives logits of standard
/// deviation ~2 (a peaked but not degenerate distribution).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform with this standard deviation.
    Uniform { std: f32 },
    /// Norm weights: 1 ± 0.1 (Gemma's files store the "+1" already, so 1 is right for all).
    Norm,
    /// Llama-3 rope frequency divisors, one per rotated pair.
    RopeFactors,
}

/// One tensor of the synthetic model.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthTensor {
    pub name: String,
    /// ggml order (row length first).
    pub shape: Vec<u64>,
    pub init: Init,
}

/// `general.architecture` of `arch`.
pub fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
        Arch::Gemma3 => "gemma3",
    }
}

impl SynthSpec {
    /// The preset `name`, or a typed error listing the presets.
    pub fn from_preset(name: &str) -> Result<SynthSpec, SynthError> {
        preset(name)
            .map(|p| p.spec)
            .ok_or_else(|| SynthError::UnknownPreset { name: name.to_owned(), known: presets().iter().map(|p| p.name).collect::<Vec<_>>().join(", ") })
    }

    fn check(&self) -> Result<(), SynthError> {
        let bad = |what, rule, value: usize| Err(SynthError::BadSpec { what, rule, value: value.to_string() });
        // Every dimension here becomes a row length or count: keep them where a file stays
        // writable (a 2^31 dimension is no model) and the tensor byte counts fit u64.
        const MAX_DIM: usize = 1 << 20;
        for (what, v) in [
            ("layers", self.n_layers),
            ("d_model", self.d_model),
            ("heads", self.n_heads),
            ("kv heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("ffn_dim", self.ffn_dim),
            ("context", self.n_ctx_train),
        ] {
            if v == 0 || v > MAX_DIM {
                return bad(what, "between 1 and 2^20", v);
            }
        }
        if self.n_vocab < BUILTIN_VOCAB_MIN || self.n_vocab > MAX_DIM {
            return bad("vocab", "between 259 (the built-in byte tokenizer) and 2^20", self.n_vocab);
        }
        if self.head_dim % 2 != 0 {
            return bad("head_dim", "even (rope rotates pairs)", self.head_dim);
        }
        Ok(())
    }

    /// The model's metadata (architecture keys and `general.*`; the tokenizer's keys are
    /// added by [`with_tokenizer`]).
    fn arch_metadata(&self, name: &str) -> Metadata {
        let a = arch_name(self.arch);
        let mut md = Metadata::with_capacity(24);
        let k = |s: &str| format!("{a}.{s}");
        let u = |v: usize| Value::U32(v as u32);
        md.push("general.architecture".into(), Value::String(a.into()));
        md.push("general.name".into(), Value::String(name.into()));
        md.push(k("context_length"), u(self.n_ctx_train));
        md.push(k("embedding_length"), u(self.d_model));
        md.push(k("block_count"), u(self.n_layers));
        md.push(k("feed_forward_length"), u(self.ffn_dim));
        md.push(k("attention.head_count"), u(self.n_heads));
        md.push(k("attention.head_count_kv"), u(self.n_kv_heads));
        md.push(k("attention.key_length"), u(self.head_dim));
        md.push(k("attention.value_length"), u(self.head_dim));
        md.push(k("attention.layer_norm_rms_epsilon"), Value::F32(self.rms_eps));
        md.push(k("rope.freq_base"), Value::F32(self.rope_base));
        md.push(k("rope.dimension_count"), u(self.head_dim));
        if let RopeScaling::Linear { factor } = self.rope_scaling {
            md.push(k("rope.scaling.type"), Value::String("linear".into()));
            md.push(k("rope.scaling.factor"), Value::F32(factor));
        }
        if let Some(w) = self.sliding_window {
            md.push(k("attention.sliding_window"), u(w));
        }
        md
    }

    /// Every tensor, in llama.cpp's order ([`crate::quantize::mix::llama_order`]), with how
    /// its values are made.
    pub fn tensors(&self) -> Vec<SynthTensor> {
        let (d, hd, ff, vocab) = (self.d_model as u64, self.head_dim as u64, self.ffn_dim as u64, self.n_vocab as u64);
        let (q_out, kv_out) = (self.n_heads as u64 * hd, self.n_kv_heads as u64 * hd);
        let depth = 1.0 / (2.0 * self.n_layers as f32).sqrt();
        let std_in = |fan_in: u64| 1.0 / (fan_in as f32).sqrt();
        let mut out = Vec::new();
        let mut t = |name: String, shape: &[u64], init: Init| out.push(SynthTensor { name, shape: shape.to_vec(), init });
        let logits = Init::Uniform { std: 2.0 / (d as f32).sqrt() };
        t("token_embd.weight".into(), &[d, vocab], logits);
        if matches!(self.rope_scaling, RopeScaling::Llama3 { .. }) {
            t("rope_freqs.weight".into(), &[hd / 2], Init::RopeFactors);
        }
        let qk_norm = matches!(self.arch, Arch::Qwen3 | Arch::Gemma3);
        let post_norms = self.arch == Arch::Gemma3;
        for i in 0..self.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            t(n("attn_norm.weight"), &[d], Init::Norm);
            t(n("attn_q.weight"), &[d, q_out], Init::Uniform { std: std_in(d) });
            t(n("attn_k.weight"), &[d, kv_out], Init::Uniform { std: std_in(d) });
            t(n("attn_v.weight"), &[d, kv_out], Init::Uniform { std: std_in(d) });
            if self.qkv_bias {
                for (b, len) in [("attn_q.bias", q_out), ("attn_k.bias", kv_out), ("attn_v.bias", kv_out)] {
                    t(n(b), &[len], Init::Uniform { std: 0.1 });
                }
            }
            if qk_norm {
                t(n("attn_q_norm.weight"), &[hd], Init::Norm);
                t(n("attn_k_norm.weight"), &[hd], Init::Norm);
            }
            t(n("attn_output.weight"), &[q_out, d], Init::Uniform { std: std_in(q_out) * depth });
            if post_norms {
                t(n("post_attention_norm.weight"), &[d], Init::Norm);
            }
            t(n("ffn_norm.weight"), &[d], Init::Norm);
            t(n("ffn_gate.weight"), &[d, ff], Init::Uniform { std: std_in(d) });
            t(n("ffn_up.weight"), &[d, ff], Init::Uniform { std: std_in(d) });
            t(n("ffn_down.weight"), &[ff, d], Init::Uniform { std: std_in(ff) * depth });
            if post_norms {
                t(n("post_ffw_norm.weight"), &[d], Init::Norm);
            }
        }
        t("output_norm.weight".into(), &[d], Init::Norm);
        if !self.tied_embeddings {
            t("output.weight".into(), &[d, vocab], logits);
        }
        // llama.cpp's order: the `_M` rules' layer counters depend on it.
        let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
        let order = crate::quantize::mix::llama_order(&names);
        order.into_iter().map(|i| out[i].clone()).collect()
    }

    /// Llama-3 rope frequency divisors (llama.cpp's `LlamaModel.generate_extra_tensors`).
    pub fn rope_factors(&self) -> Vec<f32> {
        let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } = self.rope_scaling else {
            return vec![1.0; self.head_dim / 2];
        };
        let old = original_context as f32;
        let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
        (0..self.head_dim / 2)
            .map(|i| {
                let freq = 1.0 / self.rope_base.powf((2 * i) as f32 / self.head_dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                }
            })
            .collect()
    }

    /// The whole metadata (tokenizer from `tokenizer_from`, or the built-in byte tokenizer)
    /// and the tensor list, checked by the loader's own rules: [`ModelConfig::from_metadata`]
    /// accepts the metadata and [`Weights::load`] finds every tensor it needs, with its shape.
    /// The vocabulary grows to the tokenizer's when that is larger (reported in `n_vocab`).
    pub fn plan(&self, name: &str, tokenizer_from: Option<&Metadata>) -> Result<(Metadata, Vec<SynthTensor>, SynthSpec), SynthError> {
        let mut spec = self.clone();
        if let Some(md) = tokenizer_from {
            let n = md.get_str_array("tokenizer.ggml.tokens").map_err(|e| SynthError::Tokenizer(e.to_string()))?.map(<[String]>::len);
            let n = n.ok_or_else(|| SynthError::Tokenizer("the file has no tokenizer.ggml.tokens".into()))?;
            spec.n_vocab = spec.n_vocab.max(n);
        }
        spec.check()?;
        let mut md = spec.arch_metadata(name);
        match tokenizer_from {
            Some(src) => copy_tokenizer(src, spec.n_vocab, &mut md)?,
            None => builtin_tokenizer(spec.n_vocab, &mut md),
        }
        let cfg = ModelConfig::from_metadata(&md)?;
        let tensors = spec.tensors();
        Weights::load(&cfg, &mut Listed(&tensors))?;
        Ok((md, tensors, spec))
    }
}

/// Answers [`Weights::load`] from the synthetic tensor list (shape mismatches are errors).
struct Listed<'a>(&'a [SynthTensor]);

impl WeightProvider<()> for Listed<'_> {
    fn take(&mut self, name: &str, expected: &[u64]) -> Result<Option<()>, ModelError> {
        match self.0.iter().find(|t| t.name == name) {
            Some(t) if crate::model::same_shape(&t.shape, expected) => Ok(Some(())),
            Some(t) => Err(ModelError::TensorShape { name: name.to_owned(), expected: expected.to_vec(), found: t.shape.clone() }),
            None => Ok(None),
        }
    }
}

/// `<unk>`, `<s>`, `</s>` and the 256 byte tokens.
const BUILTIN_VOCAB_MIN: usize = 3 + 256;

/// A SentencePiece ("llama") vocabulary of byte tokens only: every text tokenizes (byte
/// fallback), no download needed. Padded with unused tokens to `n_vocab`.
fn builtin_tokenizer(n_vocab: usize, md: &mut Metadata) {
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![attr::TYPE_UNKNOWN, attr::TYPE_CONTROL, attr::TYPE_CONTROL];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([attr::TYPE_BYTE; 256]);
    md.push("tokenizer.ggml.model".into(), Value::String("llama".into()));
    pad_vocab(&mut tokens, None, &mut types, n_vocab);
    let scores = vec![0.0f32; n_vocab];
    md.push("tokenizer.ggml.tokens".into(), Value::Array(Array::String(tokens)));
    md.push("tokenizer.ggml.scores".into(), Value::Array(Array::F32(scores)));
    md.push("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types)));
    md.push("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
    md.push("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.push("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    md.push("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
}

/// Appends unused tokens (`<unused_synth_N>`, type UNUSED, score 0) up to `n`.
fn pad_vocab(tokens: &mut Vec<String>, scores: Option<&mut Vec<f32>>, types: &mut Vec<i32>, n: usize) {
    let have = tokens.len();
    tokens.extend((have..n).map(|i| format!("<unused_synth_{i}>")));
    types.resize(n, attr::TYPE_UNUSED);
    if let Some(s) = scores {
        s.resize(n, 0.0);
    }
}

/// Every `tokenizer.*` key of `src` (chat template included), the token arrays padded to
/// `n_vocab`.
fn copy_tokenizer(src: &Metadata, n_vocab: usize, md: &mut Metadata) -> Result<(), SynthError> {
    let err = |e: crate::GgufError| SynthError::Tokenizer(e.to_string());
    let mut tokens = src.get_str_array("tokenizer.ggml.tokens").map_err(err)?.unwrap_or_default().to_vec();
    let mut types = match src.get_i32_array("tokenizer.ggml.token_type").map_err(err)? {
        Some(t) if t.len() == tokens.len() => t.to_vec(),
        Some(t) => return Err(SynthError::Tokenizer(format!("{} token types for {} tokens", t.len(), tokens.len()))),
        None => vec![attr::TYPE_NORMAL; tokens.len()],
    };
    let mut scores = src.get_f32_array("tokenizer.ggml.scores").map_err(err)?.map(<[f32]>::to_vec);
    if scores.as_ref().is_some_and(|s| s.len() != tokens.len()) {
        return Err(SynthError::Tokenizer("tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length".into()));
    }
    pad_vocab(&mut tokens, scores.as_mut(), &mut types, n_vocab);
    for (k, v) in src.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        let v = match k {
            "tokenizer.ggml.tokens" => Value::Array(Array::String(std::mem::take(&mut tokens))),
            "tokenizer.ggml.token_type" => Value::Array(Array::I32(std::mem::take(&mut types))),
            "tokenizer.ggml.scores" => Value::Array(Array::F32(scores.take().unwrap_or_default())),
            _ => v.clone(),
        };
        md.push(k.to_owned(), v);
    }
    if !types.is_empty() {
        md.push("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(types)));
    }
    Ok(())
}

// Native: the tests write files.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
