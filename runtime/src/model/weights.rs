//! Which tensors a model has, by llama.cpp's names (`blk.N.attn_q.weight`…), checked for
//! shape and loaded into backend weights.

use super::config::ModelConfig;
use crate::error::ModelError;

/// Where [`Weights::load`] takes tensors from, by llama.cpp name.
pub trait WeightProvider<W> {
    /// The tensor `name` if the model has it; `expected` is the shape the configuration implies
    /// (ggml order), which the provider has checked with [`same_shape`].
    fn take(&mut self, name: &str, expected: &[u64]) -> Result<Option<W>, ModelError>;

    /// A tensor the configuration requires: [`take`](Self::take), its absence an error. A
    /// provider that only knows part of the model (the planner, from shard 0 of a split model)
    /// tells required tensors from optional ones here.
    fn take_required(&mut self, name: &str, expected: &[u64]) -> Result<W, ModelError> {
        self.take(name, expected)?.ok_or_else(|| ModelError::MissingTensor(name.to_owned()))
    }
}

/// Shapes equal up to trailing 1-sized dimensions (ggml drops them).
pub fn same_shape(a: &[u64], b: &[u64]) -> bool {
    let trim = |s: &[u64]| {
        let mut n = s.len();
        while n > 1 && s[n - 1] == 1 {
            n -= 1;
        }
        n
    };
    a[..trim(a)] == b[..trim(b)]
}

/// Lists what the configuration asks for, answering "present" to every optional tensor.
struct Wanted(Vec<(String, Vec<u64>)>);

impl WeightProvider<()> for Wanted {
    fn take(&mut self, name: &str, expected: &[u64]) -> Result<Option<()>, ModelError> {
        self.0.push((name.to_owned(), expected.to_vec()));
        Ok(Some(()))
    }
}

/// Weights of one transformer block. Optional tensors are config-dependent.
pub struct LayerWeights<W> {
    pub attn_norm: W,
    pub wq: W,
    pub wk: W,
    pub wv: W,
    pub wo: W,
    pub bq: Option<W>,
    pub bk: Option<W>,
    pub bv: Option<W>,
    pub bo: Option<W>,
    pub q_norm: Option<W>,
    pub k_norm: Option<W>,
    pub post_attn_norm: Option<W>,
    pub ffn_norm: W,
    pub ffn_gate: W,
    pub ffn_up: W,
    pub ffn_down: W,
    pub post_ffn_norm: Option<W>,
}

pub struct Weights<W> {
    /// `[n_vocab, d_model]` (ggml shape [d_model, n_vocab]).
    pub token_embd: W,
    pub output_norm: W,
    /// None when the output projection is tied to token_embd.
    pub output: Option<W>,
    /// llama3-style per-pair rope frequency divisors.
    pub rope_freqs: Option<W>,
    pub layers: Vec<LayerWeights<W>>,
}

fn req<W>(l: &mut impl WeightProvider<W>, name: &str, expected: &[u64]) -> Result<W, ModelError> {
    l.take_required(name, expected)
}

impl<W> Weights<W> {
    /// Takes every tensor the configuration needs from `l` (a missing required one is an error).
    pub fn load(cfg: &ModelConfig, l: &mut impl WeightProvider<W>) -> Result<Weights<W>, ModelError> {
        let d = cfg.d_model as u64;
        let q_out = (cfg.n_heads * cfg.head_dim_k) as u64;
        let k_out = (cfg.n_kv_heads * cfg.head_dim_k) as u64;
        let v_out = (cfg.n_kv_heads * cfg.head_dim_v) as u64;
        let o_in = (cfg.n_heads * cfg.head_dim_v) as u64;
        let ff = cfg.ffn_dim as u64;
        let hk = cfg.head_dim_k as u64;
        let vocab = cfg.n_vocab as u64;

        let token_embd = req(l, "token_embd.weight", &[d, vocab])?;
        let output_norm = req(l, "output_norm.weight", &[d])?;
        let output = l.take("output.weight", &[d, vocab])?;
        let rope_freqs = l.take("rope_freqs.weight", &[cfg.rope.n_dims as u64 / 2])?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let q_norm = if cfg.qk_norm { Some(req(l, &n("attn_q_norm.weight"), &[hk])?) } else { None };
            let k_norm = if cfg.qk_norm { Some(req(l, &n("attn_k_norm.weight"), &[hk])?) } else { None };
            let (post_attn_norm, post_ffn_norm) = if cfg.post_norms {
                (Some(req(l, &n("post_attention_norm.weight"), &[d])?), Some(req(l, &n("post_ffw_norm.weight"), &[d])?))
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm: req(l, &n("attn_norm.weight"), &[d])?,
                wq: req(l, &n("attn_q.weight"), &[d, q_out])?,
                wk: req(l, &n("attn_k.weight"), &[d, k_out])?,
                wv: req(l, &n("attn_v.weight"), &[d, v_out])?,
                wo: req(l, &n("attn_output.weight"), &[o_in, d])?,
                bq: l.take(&n("attn_q.bias"), &[q_out])?,
                bk: l.take(&n("attn_k.bias"), &[k_out])?,
                bv: l.take(&n("attn_v.bias"), &[v_out])?,
                bo: l.take(&n("attn_output.bias"), &[d])?,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: req(l, &n("ffn_norm.weight"), &[d])?,
                ffn_gate: req(l, &n("ffn_gate.weight"), &[d, ff])?,
                ffn_up: req(l, &n("ffn_up.weight"), &[d, ff])?,
                ffn_down: req(l, &n("ffn_down.weight"), &[ff, d])?,
                post_ffn_norm,
            });
        }
        Ok(Weights { token_embd, output_norm, output, rope_freqs, layers })
    }
}

impl Weights<()> {
    /// Every tensor name the configuration may use, optional ones included, with its shape.
    pub fn wanted(cfg: &ModelConfig) -> Result<Vec<(String, Vec<u64>)>, ModelError> {
        let mut w = Wanted(Vec::new());
        Weights::load(cfg, &mut w)?;
        Ok(w.0)
    }
}
