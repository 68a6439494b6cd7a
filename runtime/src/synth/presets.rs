//! The shapes of real models, as their GGUF files on the model hubs declare them (the
//! `{arch}.*` keys of the published conversions and the HF `config.json` they came from).
//! Only shapes and shape-bearing flags: the weights are random.

use super::{RopeScaling, SynthSpec};
use crate::model::Arch;

/// A named preset (`webgguf synth --preset NAME`).
pub struct Preset {
    pub name: &'static str,
    /// The model whose shape it copies.
    pub model: &'static str,
    pub spec: SynthSpec,
}

/// Llama 3.x (`rope_scaling: llama3`): low/high frequency factors 1 and 4 over an original
/// context of 8192 (Llama-3.1/3.2 config.json).
const fn llama3_rope(factor: f32) -> RopeScaling {
    RopeScaling::Llama3 { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8192 }
}

const fn base(arch: Arch) -> SynthSpec {
    SynthSpec {
        arch,
        n_layers: 0,
        d_model: 0,
        n_heads: 0,
        n_kv_heads: 0,
        head_dim: 0,
        ffn_dim: 0,
        n_vocab: 0,
        n_ctx_train: 0,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_embeddings: true,
        qkv_bias: false,
        rope_scaling: RopeScaling::None,
        sliding_window: None,
    }
}

/// Every preset, smallest first within a family.
pub fn presets() -> Vec<Preset> {
    use Arch::*;
    let llama = |n_layers, d_model, n_heads, head_dim, ffn_dim, tied, factor| SynthSpec {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: 8,
        head_dim,
        ffn_dim,
        n_vocab: 128_256,
        n_ctx_train: 131_072,
        rope_base: 500_000.0,
        tied_embeddings: tied,
        rope_scaling: llama3_rope(factor),
        ..base(Llama)
    };
    let qwen = |arch, n_layers, d_model, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab, n_ctx_train, tied| SynthSpec {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim,
        n_vocab,
        n_ctx_train,
        rope_base: 1_000_000.0,
        rms_eps: 1e-6,
        tied_embeddings: tied,
        // Qwen2 has q/k/v biases; Qwen3 replaced them by q/k norms (a flag of the arch).
        qkv_bias: arch == Qwen2,
        ..base(arch)
    };
    let gemma = |n_layers, d_model, n_heads, n_kv_heads, ffn_dim, n_vocab, n_ctx_train, window, scaling| SynthSpec {
        n_layers,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim: 256,
        ffn_dim,
        n_vocab,
        n_ctx_train,
        rope_base: 1_000_000.0,
        rms_eps: 1e-6,
        rope_scaling: scaling,
        sliding_window: Some(window),
        ..base(Gemma3)
    };
    vec![
        Preset { name: "llama-3.2-1b", model: "Llama-3.2-1B-Instruct", spec: llama(16, 2048, 32, 64, 8192, true, 32.0) },
        Preset { name: "llama-3.2-3b", model: "Llama-3.2-3B-Instruct", spec: llama(28, 3072, 24, 128, 8192, true, 32.0) },
        Preset { name: "llama-3.1-8b", model: "Llama-3.1-8B-Instruct", spec: llama(32, 4096, 32, 128, 14336, false, 8.0) },
        Preset { name: "qwen2.5-0.5b", model: "Qwen2.5-0.5B-Instruct", spec: qwen(Qwen2, 24, 896, 14, 2, 64, 4864, 151_936, 32_768, true) },
        Preset { name: "qwen2.5-7b", model: "Qwen2.5-7B-Instruct", spec: qwen(Qwen2, 28, 3584, 28, 4, 128, 18944, 152_064, 32_768, false) },
        Preset { name: "qwen3-0.6b", model: "Qwen3-0.6B", spec: qwen(Qwen3, 28, 1024, 16, 8, 128, 3072, 151_936, 40_960, true) },
        Preset { name: "qwen3-4b", model: "Qwen3-4B", spec: qwen(Qwen3, 36, 2560, 32, 8, 128, 9728, 151_936, 40_960, true) },
        Preset { name: "gemma-3-1b", model: "gemma-3-1b-it", spec: gemma(26, 1152, 4, 1, 6912, 262_144, 32_768, 512, RopeScaling::None) },
        Preset {
            name: "gemma-3-4b",
            model: "gemma-3-4b-it (text part)",
            spec: gemma(34, 2560, 8, 4, 10240, 262_208, 131_072, 1024, RopeScaling::Linear { factor: 8.0 }),
        },
    ]
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}
