//! The operations the forward pass needs, implemented once per device (CPU now, WebGPU next).
//! Activations are row-major `[n_tokens, width]` f32 matrices living on the device; the pass
//! reads back only the logits.

use super::config::{Activation, ModelConfig, RopeParams};
use crate::error::ModelError;
use crate::kv_cache::KvType;
use crate::quant::GgmlType;

pub trait Backend {
    /// A weight tensor resident on the device.
    type Weight;
    /// An activation matrix `[n_tokens, width]`.
    type Act;
    /// The KV cache of one session.
    type Cache;

    /// A weight whose bytes are still arriving (streamed loading).
    type Pending;

    /// Starts receiving a tensor (`shape` in ggml order, packed blocks of `ty`): checks that the
    /// device can hold it and reserves its storage.
    fn begin_weight(&mut self, name: &str, ty: GgmlType, shape: &[u64]) -> Result<Self::Pending, ModelError>;

    /// The next bytes of the tensor, in order, in pieces of any length. Devices keep at most a
    /// bounded staging window in host memory (the CPU backend keeps the tensor: it is its storage).
    fn write_weight(&mut self, w: &mut Self::Pending, bytes: &[u8]) -> Result<(), ModelError>;

    /// Completes a tensor; every byte must have been written.
    fn finish_weight(&mut self, w: Self::Pending) -> Result<Self::Weight, ModelError>;

    /// The tensors about to arrive (name, type, ggml shape), before the first `begin_weight`
    /// of them: a device may place weights one kernel reads together (q/k/v, gate/up) in one
    /// buffer. Weights loaded without it work the same, unfused.
    fn expect_weights(&mut self, _tensors: &[(&str, GgmlType, &[u64])]) -> Result<(), ModelError> {
        Ok(())
    }

    /// A whole tensor at once.
    fn load_weight(&mut self, name: &str, ty: GgmlType, shape: &[u64], bytes: &[u8]) -> Result<Self::Weight, ModelError> {
        let mut w = self.begin_weight(name, ty, shape)?;
        self.write_weight(&mut w, bytes)?;
        self.finish_weight(w)
    }

    /// A KV cache of `n_ctx` positions; a quantized one keeps `recent` positions' rows as f16
    /// copies too ([`KvCache::with_recent`](crate::kv_cache::KvCache::with_recent)).
    fn new_cache(&mut self, cfg: &ModelConfig, kv: KvType, n_ctx: usize, recent: usize) -> Result<Self::Cache, ModelError>;

    /// The longest prefix of `n` filled positions that a pass may continue from and compute
    /// what it would after a session that never went past it (see [`RecentRows::resume_point`](crate::kv_cache::RecentRows::resume_point)).
    fn resumable(&self, _cache: &Self::Cache, n: usize) -> usize {
        n
    }

    /// Rows `ids` of an embedding table `[n_vocab, width]`, times `scale` when given.
    fn embed(&mut self, table: &Self::Weight, ids: &[u32], scale: Option<f32>) -> Result<Self::Act, ModelError>;

    /// RMS-norm of each group of `weight.len()` consecutive values (the whole row, or one
    /// head for q/k norms), multiplied by `weight` (ggml_rms_norm + ggml_mul).
    fn rms_norm(&mut self, x: &Self::Act, weight: &Self::Weight, eps: f32) -> Result<Self::Act, ModelError>;

    /// `x · Wᵀ`: `[n, cols]` × weight `[rows, cols]` → `[n, rows]`.
    fn matmul(&mut self, w: &Self::Weight, x: &Self::Act) -> Result<Self::Act, ModelError>;

    /// `x · Wᵀ` for each weight of `ws` (same input: q/k/v, gate/up); devices that round the
    /// input per weight type override it to round once.
    fn matmuls<const N: usize>(&mut self, ws: [&Self::Weight; N], x: &Self::Act) -> Result<[Self::Act; N], ModelError> {
        let mut out = Vec::with_capacity(N);
        for w in ws {
            out.push(self.matmul(w, x)?);
        }
        outputs_array(out)
    }

    /// `act(x · gateᵀ) * (x · upᵀ)`: the feed-forward's two products and GLU; devices fuse them.
    fn gate_up_glu(&mut self, gate: &Self::Weight, up: &Self::Weight, x: &Self::Act, act: Activation) -> Result<Self::Act, ModelError> {
        let [g, u] = self.matmuls([gate, up], x)?;
        self.glu(&g, &u, act)
    }

    /// `acc += x · Wᵀ` (a residual add after a projection); devices fuse the add into the matmul.
    fn matmul_add(&mut self, w: &Self::Weight, x: &Self::Act, acc: &mut Self::Act) -> Result<(), ModelError> {
        let y = self.matmul(w, x)?;
        self.add(acc, &y)
    }

    /// Adds a bias vector to every row.
    fn add_bias(&mut self, x: &mut Self::Act, bias: &Self::Weight) -> Result<(), ModelError>;

    /// `x += y`, element-wise.
    fn add(&mut self, x: &mut Self::Act, y: &Self::Act) -> Result<(), ModelError>;

    /// Rotary embedding of every head (`head_dim` values) of every row; row t is at
    /// position `pos0 + t`. `freq_factors` divides each pair's frequency (llama3 scaling).
    fn rope(&mut self, x: &mut Self::Act, head_dim: usize, pos0: usize, rope: &RopeParams, freq_factors: Option<&Self::Weight>) -> Result<(), ModelError>;

    /// [`Backend::rope`] of the queries and the keys at the same positions; devices rope both in
    /// one dispatch.
    fn rope_qk(
        &mut self,
        q: &mut Self::Act,
        k: &mut Self::Act,
        head_dim: usize,
        pos0: usize,
        rope: &RopeParams,
        freq_factors: Option<&Self::Weight>,
    ) -> Result<(), ModelError> {
        self.rope(q, head_dim, pos0, rope, freq_factors)?;
        self.rope(k, head_dim, pos0, rope, freq_factors)
    }

    /// `act(gate) * up`, element-wise.
    fn glu(&mut self, gate: &Self::Act, up: &Self::Act, act: Activation) -> Result<Self::Act, ModelError>;

    /// Stores `k`, `v` (rows at positions pos0…) in layer `layer` of the cache, then attends
    /// each query row causally over positions `[start(pos), pos]`, where
    /// `start(pos) = cfg.attn_start(layer, pos)`. q: `[n, n_heads·head_dim_k]` → `[n, n_heads·head_dim_v]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        cache: &mut Self::Cache,
        cfg: &ModelConfig,
        layer: usize,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        pos0: usize,
    ) -> Result<Self::Act, ModelError>;

    /// The last `n` rows of `x`.
    fn last_rows(&mut self, x: &Self::Act, n: usize) -> Result<Self::Act, ModelError>;

    /// `cap · tanh(x / cap)`, element-wise.
    fn softcap(&mut self, x: &mut Self::Act, cap: f32) -> Result<(), ModelError>;

    /// Moves an activation matrix (the logits) back to the host, consuming it: the CPU backend
    /// hands its buffer over without a copy.
    fn read_host(&mut self, x: Self::Act) -> Result<Vec<f32>, ModelError>;

    /// Index of the largest value of `x`, one row of logits (lowest index among ties; NaN is an
    /// error): greedy sampling. Devices override it to read back 4 bytes instead of the logits.
    fn argmax(&mut self, x: Self::Act) -> Result<u32, ModelError> {
        let v = self.read_host(x)?;
        Ok(crate::sampler::argmax(&v)?)
    }

    /// Whether [`Backend::argmax`] saves a logits readback (greedy decoding then uses it).
    fn argmax_on_device(&self) -> bool {
        false
    }

    /// The device, for stats ("cpu", or the GPU adapter and what was chosen).
    fn describe(&self) -> String {
        "cpu".to_owned()
    }
}

/// The outputs of [`Backend::matmuls`] as an array (one per weight).
pub(crate) fn outputs_array<T, const N: usize>(v: Vec<T>) -> Result<[T; N], ModelError> {
    v.try_into().map_err(|v: Vec<T>| ModelError::BadHyperparameter { what: "matmul outputs".into(), value: format!("{} for {N} weights", v.len()) })
}
