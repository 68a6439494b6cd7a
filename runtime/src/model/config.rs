//! Model configuration read from GGUF metadata. Architectures differ only by the flags here;
//! the forward pass (forward.rs) is shared. Values not stored in files but fixed by an
//! architecture's reference graph (llama.cpp src/models/<arch>.cpp) are set per architecture.

use crate::error::ModelError;
use crate::gguf::Metadata;

/// Supported architectures (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }
}

/// How rotary position embedding pairs dimensions (ggml rope modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RopeKind {
    /// Adjacent pairs (x0,x1), (x2,x3)… — GGML_ROPE_TYPE_NORM (llama).
    Normal,
    /// Halves (x_i, x_{i+n/2}) — GGML_ROPE_TYPE_NEOX (qwen, gemma).
    Neox,
}

/// Feed-forward gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// Rotary embedding parameters for one kind of layer.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RopeParams {
    pub kind: RopeKind,
    /// Rotated dimensions per head (≤ head_dim).
    pub n_dims: usize,
    pub freq_base: f32,
    /// Position multiplier (1 / linear scaling factor).
    pub freq_scale: f32,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub ffn_dim: usize,
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    /// Rope of global (full-attention) layers.
    pub rope: RopeParams,
    /// Rope of sliding-window layers (gemma3: base 10,000).
    pub rope_local: RopeParams,
    /// Sliding-window size, if any layer uses one.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it attends within the sliding window only.
    pub layer_is_swa: Vec<bool>,
    /// Multiplier applied to token embeddings (gemma: √d_model).
    pub embed_scale: Option<f32>,
    /// Multiplier of attention scores (usually 1/√head_dim).
    pub attn_scale: f32,
    /// RMS-norm each q/k head before rope (qwen3, gemma3).
    pub qk_norm: bool,
    /// RMS-norm attention and FFN outputs before the residual add (gemma3).
    pub post_norms: bool,
    pub activation: Activation,
    /// tanh soft-capping of the final logits (0 = off).
    pub final_logit_softcap: f32,
}

impl ModelConfig {
    pub fn from_metadata(md: &Metadata) -> Result<ModelConfig, ModelError> {
        let arch_name = md.architecture()?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| ModelError::UnsupportedArchitecture(arch_name.to_owned()))?;
        let hp = md.hyperparameters()?;
        let n_layers = hp.block_count as usize;
        let d_model = hp.embedding_length as usize;
        let n_heads = hp.head_count as usize;
        let n_kv_heads = hp.head_count_kv as usize;
        let bad = |what: &str, v: String| ModelError::BadHyperparameter { what: what.to_owned(), value: v };
        if n_layers == 0 || d_model == 0 || n_heads == 0 {
            return Err(bad("layers/embedding/heads", format!("{n_layers}/{d_model}/{n_heads}")));
        }
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad("head_count_kv", format!("{n_kv_heads} (head_count {n_heads})")));
        }
        let head_dim_k = hp.key_length.map(|v| v as usize).unwrap_or(d_model / n_heads);
        let head_dim_v = hp.value_length.map(|v| v as usize).unwrap_or(d_model / n_heads);
        if head_dim_k == 0 || head_dim_v == 0 || head_dim_k % 2 != 0 {
            return Err(bad("head dimension", format!("{head_dim_k}/{head_dim_v}")));
        }
        let ffn_dim =
            hp.feed_forward_length.ok_or_else(|| ModelError::Gguf(crate::GgufError::MissingKey { key: format!("{arch_name}.feed_forward_length") }))? as usize;
        let n_vocab = match hp.vocab_size {
            Some(v) => v as usize,
            None => md.get_array("tokenizer.ggml.tokens")?.map(|a| a.len()).unwrap_or(0),
        };
        if n_vocab == 0 {
            return Err(bad("vocab size", "0".into()));
        }
        let rms_eps = hp.rms_norm_eps.unwrap_or(1e-5);
        let n_rot = hp.rope_dimension_count.map(|v| v as usize).unwrap_or(head_dim_k);
        if n_rot > head_dim_k || n_rot % 2 != 0 {
            return Err(bad("rope.dimension_count", n_rot.to_string()));
        }
        let freq_base = hp.rope_freq_base.unwrap_or(10_000.0);
        let freq_scale = rope_freq_scale(md, arch_name)?;
        let kind = match arch {
            Arch::Llama => RopeKind::Normal,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeKind::Neox,
        };
        let rope = RopeParams { kind, n_dims: n_rot, freq_base, freq_scale };
        let mut rope_local = rope;
        let mut sliding_window = None;
        let mut layer_is_swa = vec![false; n_layers];
        let mut embed_scale = None;
        let mut qk_norm = false;
        let mut post_norms = false;
        let mut activation = Activation::Silu;
        let mut final_logit_softcap = md.get_f32(&format!("{arch_name}.final_logit_softcapping"))?.unwrap_or(0.0);
        let attn_scale = 1.0 / (head_dim_k as f32).sqrt();
        match arch {
            Arch::Llama | Arch::Qwen2 => {}
            Arch::Qwen3 => qk_norm = true,
            Arch::Gemma3 => {
                // llama.cpp src/models/gemma3.cpp: √d embedding scale, q/k norms, post norms,
                // GELU gate, every 6th layer global (5, 11, 17…), local rope base 10,000.
                embed_scale = Some((d_model as f32).sqrt());
                qk_norm = true;
                post_norms = true;
                activation = Activation::GeluTanh;
                if let Some(w) = hp.sliding_window.filter(|&w| w > 0) {
                    sliding_window = Some(w as usize);
                    let pattern = md.get_u32(&format!("{arch_name}.attention.sliding_window_pattern"))?.unwrap_or(6) as usize;
                    for (il, swa) in layer_is_swa.iter_mut().enumerate() {
                        *swa = pattern == 0 || il % pattern < pattern - 1;
                    }
                    rope_local.freq_base = md.get_f32(&format!("{arch_name}.rope.freq_base_swa"))?.unwrap_or(10_000.0);
                    rope_local.freq_scale = 1.0;
                }
                if final_logit_softcap < 0.0 {
                    final_logit_softcap = 0.0;
                }
            }
        }
        Ok(ModelConfig {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim_k,
            head_dim_v,
            ffn_dim,
            n_vocab,
            n_ctx_train: hp.context_length as usize,
            rms_eps,
            rope,
            rope_local,
            sliding_window,
            layer_is_swa,
            embed_scale,
            attn_scale,
            qk_norm,
            post_norms,
            activation,
            final_logit_softcap,
        })
    }

    /// Rope parameters of layer `il`.
    /// A two-layer llama-style configuration for attention kernel tests: `n_heads` query heads
    /// over `n_kv_heads` KV heads of `head_dim` values, NeoX rope, and with `window` a sliding
    /// window on layer 1 (layer 0 attends globally).
    #[doc(hidden)]
    pub fn attention_test(n_heads: usize, n_kv_heads: usize, head_dim: usize, window: Option<usize>) -> ModelConfig {
        let rope = RopeParams { kind: RopeKind::Neox, n_dims: head_dim, freq_base: 10000.0, freq_scale: 1.0 };
        ModelConfig {
            arch: Arch::Llama,
            n_layers: 2,
            d_model: n_heads * head_dim,
            n_heads,
            n_kv_heads,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            ffn_dim: 4 * head_dim,
            n_vocab: 10,
            n_ctx_train: 64,
            rms_eps: 1e-6,
            rope,
            rope_local: rope,
            sliding_window: window,
            layer_is_swa: vec![false, window.is_some()],
            embed_scale: None,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            qk_norm: false,
            post_norms: false,
            activation: Activation::Silu,
            final_logit_softcap: 0.0,
        }
    }

    pub fn rope_for_layer(&self, il: usize) -> &RopeParams {
        if self.layer_is_swa.get(il).copied().unwrap_or(false) {
            &self.rope_local
        } else {
            &self.rope
        }
    }

    /// First position layer `il` may attend to from position `pos`.
    pub fn attn_start(&self, il: usize, pos: usize) -> usize {
        match self.sliding_window {
            // llama.cpp LLAMA_SWA_TYPE_STANDARD masks p0 when p1 - p0 >= n_swa.
            Some(w) if self.layer_is_swa.get(il).copied().unwrap_or(false) => (pos + 1).saturating_sub(w),
            _ => 0,
        }
    }
}

/// `{arch}.rope.scaling.type` / `.factor`: none or linear are supported (llama3-style scaling
/// comes as a `rope_freqs.weight` tensor instead); others are a typed error.
fn rope_freq_scale(md: &Metadata, arch: &str) -> Result<f32, ModelError> {
    let ty = md.get_str(&format!("{arch}.rope.scaling.type"))?.unwrap_or("none");
    let factor = md.get_f32(&format!("{arch}.rope.scaling.factor"))?.unwrap_or(0.0);
    match ty {
        "none" => Ok(1.0),
        "linear" if factor > 0.0 => Ok(1.0 / factor),
        "linear" => Ok(1.0),
        other => Err(ModelError::UnsupportedRopeScaling(other.to_owned())),
    }
}
