//! Which tensors a model has, by llama.cpp's names (`blk.N.attn_q.weight`…), checked for
//! shape and loaded into backend weights.

use super::backend::Backend;
use super::config::ModelConfig;
use crate::error::ModelError;
use crate::gguf::{GgufModel, TensorInfo};

/// Reads tensor bytes for loading: `range` is absolute within shard `shard`.
pub trait TensorSource {
    fn read(&mut self, shard: usize, range: std::ops::Range<u64>, buf: &mut Vec<u8>) -> Result<(), ModelError>;
}

/// Whole shards held in memory (wasm "load from bytes", tests).
pub struct BytesSource<'a>(pub Vec<&'a [u8]>);

impl TensorSource for BytesSource<'_> {
    fn read(&mut self, shard: usize, range: std::ops::Range<u64>, buf: &mut Vec<u8>) -> Result<(), ModelError> {
        let bytes = self.0.get(shard).ok_or_else(|| ModelError::TensorRead {
            name: format!("shard {shard}"),
            message: "no such shard".into(),
        })?;
        let slice = usize::try_from(range.start)
            .ok()
            .zip(usize::try_from(range.end).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| ModelError::TensorRead {
                name: format!("shard {shard}"),
                message: format!("bytes {}..{} outside the {} held", range.start, range.end, bytes.len()),
            })?;
        buf.clear();
        buf.extend_from_slice(slice);
        Ok(())
    }
}

/// Shard files on disk (native).
#[cfg(not(target_arch = "wasm32"))]
pub struct FileSource(pub Vec<std::fs::File>);

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for FileSource {
    fn read(&mut self, shard: usize, range: std::ops::Range<u64>, buf: &mut Vec<u8>) -> Result<(), ModelError> {
        use std::io::{Read, Seek, SeekFrom};
        let err = |m: String| ModelError::TensorRead { name: format!("shard {shard}"), message: m };
        let f = self.0.get_mut(shard).ok_or_else(|| err("no such shard".into()))?;
        let len = usize::try_from(range.end - range.start).map_err(|e| err(e.to_string()))?;
        buf.resize(len, 0);
        f.seek(SeekFrom::Start(range.start)).map_err(|e| err(e.to_string()))?;
        f.read_exact(buf).map_err(|e| err(e.to_string()))?;
        Ok(())
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

struct Loader<'a, B: Backend, S: TensorSource> {
    backend: &'a mut B,
    model: &'a GgufModel,
    source: &'a mut S,
    buf: Vec<u8>,
}

impl<B: Backend, S: TensorSource> Loader<'_, B, S> {
    fn info(&self, name: &str) -> Option<(usize, &TensorInfo)> {
        self.model.tensor(name)
    }

    fn load(&mut self, name: &str, expected: &[u64]) -> Result<B::Weight, ModelError> {
        self.opt(name, expected)?.ok_or_else(|| ModelError::MissingTensor(name.to_owned()))
    }

    fn opt(&mut self, name: &str, expected: &[u64]) -> Result<Option<B::Weight>, ModelError> {
        let Some((shard, info)) = self.info(name) else { return Ok(None) };
        // ggml drops trailing 1-sized dims: compare without them.
        let trim = |s: &[u64]| {
            let mut v = s.to_vec();
            while v.len() > 1 && v.last() == Some(&1) {
                v.pop();
            }
            v
        };
        if trim(&info.shape) != trim(expected) {
            return Err(ModelError::TensorShape { name: name.to_owned(), expected: expected.to_vec(), found: info.shape.clone() });
        }
        let range = self.model.shards[shard].tensor_range(info);
        let (ty, shape) = (info.ty, info.shape.clone());
        self.source.read(shard, range, &mut self.buf)?;
        self.backend.load_weight(name, ty, &shape, &self.buf).map(Some)
    }
}

impl<W> Weights<W> {
    /// Loads every tensor the configuration needs, checking shapes.
    pub fn load<B, S>(backend: &mut B, cfg: &ModelConfig, model: &GgufModel, source: &mut S) -> Result<Weights<W>, ModelError>
    where
        B: Backend<Weight = W>,
        S: TensorSource,
    {
        let mut l = Loader { backend, model, source, buf: Vec::new() };
        let d = cfg.d_model as u64;
        let q_out = (cfg.n_heads * cfg.head_dim_k) as u64;
        let k_out = (cfg.n_kv_heads * cfg.head_dim_k) as u64;
        let v_out = (cfg.n_kv_heads * cfg.head_dim_v) as u64;
        let o_in = (cfg.n_heads * cfg.head_dim_v) as u64;
        let ff = cfg.ffn_dim as u64;
        let hk = cfg.head_dim_k as u64;
        let vocab = cfg.n_vocab as u64;

        let token_embd = l.load("token_embd.weight", &[d, vocab])?;
        let output_norm = l.load("output_norm.weight", &[d])?;
        let output = l.opt("output.weight", &[d, vocab])?;
        let rope_freqs = l.opt("rope_freqs.weight", &[cfg.rope.n_dims as u64 / 2])?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let q_norm = if cfg.qk_norm { Some(l.load(&n("attn_q_norm.weight"), &[hk])?) } else { None };
            let k_norm = if cfg.qk_norm { Some(l.load(&n("attn_k_norm.weight"), &[hk])?) } else { None };
            let (post_attn_norm, post_ffn_norm) = if cfg.post_norms {
                (Some(l.load(&n("post_attention_norm.weight"), &[d])?), Some(l.load(&n("post_ffw_norm.weight"), &[d])?))
            } else {
                (None, None)
            };
            layers.push(LayerWeights {
                attn_norm: l.load(&n("attn_norm.weight"), &[d])?,
                wq: l.load(&n("attn_q.weight"), &[d, q_out])?,
                wk: l.load(&n("attn_k.weight"), &[d, k_out])?,
                wv: l.load(&n("attn_v.weight"), &[d, v_out])?,
                wo: l.load(&n("attn_output.weight"), &[o_in, d])?,
                bq: l.opt(&n("attn_q.bias"), &[q_out])?,
                bk: l.opt(&n("attn_k.bias"), &[k_out])?,
                bv: l.opt(&n("attn_v.bias"), &[v_out])?,
                bo: l.opt(&n("attn_output.bias"), &[d])?,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: l.load(&n("ffn_norm.weight"), &[d])?,
                ffn_gate: l.load(&n("ffn_gate.weight"), &[d, ff])?,
                ffn_up: l.load(&n("ffn_up.weight"), &[d, ff])?,
                ffn_down: l.load(&n("ffn_down.weight"), &[ff, d])?,
                post_ffn_norm,
            });
        }
        Ok(Weights { token_embd, output_norm, output, rope_freqs, layers })
    }
}
