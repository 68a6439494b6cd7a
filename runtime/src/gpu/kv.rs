//! The KV cache on the GPU and attention over it (`attention.wgsl`): per layer one buffer of K
//! rows, V rows, the K offset and the f16 copies.

use super::layout;
use super::ops::shape_err;
use super::recorder::{GpuAct, GpuBackend, PARAM_BIND};
use crate::error::ModelError;
use crate::kv_cache::{KvType, RecentRows};
use crate::model::ModelConfig;
use webgguf_shaders::Family;

/// At most this many bytes of attention partials per dispatch group (prefill is chunked).
pub(crate) const SCORES_BUDGET: u64 = 64 << 20;

/// Positions per `attn_split` workgroup (attention.wgsl's SPLIT).
const ATTN_SPLIT: usize = webgguf_shaders::ATTN_SPLIT as usize;

/// The KV cache of one session: per layer one buffer, K rows then V rows (`attention.wgsl`).
pub struct GpuCache {
    pub(super) ty: KvType,
    pub(super) n_ctx: usize,
    pub(super) n_kv_heads: usize,
    pub(super) head_dim_k: usize,
    pub(super) head_dim_v: usize,
    pub(super) k_row_words: usize,
    pub(super) v_row_words: usize,
    /// per layer: `[n_ctx, n_kv_heads, k_row_words]` then `[n_ctx, n_kv_heads, v_row_words]` u32,
    /// then for a type that offsets K the layer's K offset `[n_kv_heads · head_dim_k]` f32,
    /// then with f16 copies `[copies.slots(), n_kv_heads, head_dim_k / 2]` and
    /// `[copies.slots(), n_kv_heads, head_dim_v / 2]` u32 (f16 pairs)
    pub(super) layers: Vec<wgpu::Buffer>,
    /// Which positions' rows the f16 copies hold (kv_cache/recent.rs's bookkeeping; none unless
    /// quantized).
    pub(super) copies: RecentRows,
}

impl GpuCache {
    /// Word offset of the V rows in a layer's buffer (after `[n_ctx][n_kv_heads]` K rows).
    pub(super) fn v_base_words(&self) -> usize {
        self.n_ctx * self.n_kv_heads * self.k_row_words
    }

    /// Word offset of the K offset in a layer's buffer (after the V rows).
    pub(super) fn offset_base_words(&self) -> usize {
        self.v_base_words() + self.n_ctx * self.n_kv_heads * self.v_row_words
    }

    /// Word offset of the copies' K rows (after the K offset).
    pub(super) fn copies_k_words(&self) -> usize {
        self.offset_base_words() + if self.ty.offsets_k() { self.n_kv_heads * self.head_dim_k } else { 0 }
    }

    /// Word offset of the copies' V rows.
    pub(super) fn copies_v_words(&self) -> usize {
        self.copies_k_words() + self.copies.slots() * self.n_kv_heads * self.head_dim_k / 2
    }
}

pub(super) fn kv_type_id(ty: KvType) -> u32 {
    ty.ggml_type().id()
}

/// Uniforms of attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct AttnParams {
    pub(super) n: u32,
    pub(super) t0: u32,
    pub(super) n_heads: u32,
    pub(super) n_kv_heads: u32,
    pub(super) hdk: u32,
    pub(super) hdv: u32,
    pub(super) pos0: u32,
    pub(super) n_kv: u32,
    pub(super) window: u32,
    pub(super) k_row_words: u32,
    pub(super) v_row_words: u32,
    pub(super) v_base: u32,
    pub(super) scale: f32,
    pub(super) offset_base: u32,
    pub(super) inv_count: f32,
    pub(super) sink: u32,
    pub(super) recent: u32,
    pub(super) sink_n: u32,
    pub(super) ring_lo: u32,
    pub(super) ring_hi: u32,
    pub(super) copies_k: u32,
    pub(super) copies_v: u32,
    pub(super) stash_v: u32,
    pub(super) q_groups: u32,
    pub(super) keep_in_store: u32,
    pub(super) n_splits: u32,
}

const _: () = assert!(std::mem::size_of::<AttnParams>() as u64 <= PARAM_BIND);

impl GpuBackend {
    pub(super) fn new_gpu_cache(&mut self, cfg: &ModelConfig, kv: KvType, n_ctx: usize, recent: usize) -> Result<GpuCache, ModelError> {
        let (hdk, hdv) = (cfg.head_dim_k, cfg.head_dim_v);
        let bytes = layout::kv_layer_bytes(kv, cfg.n_kv_heads, hdk, hdv, n_ctx, recent, self.dev.max_binding())?;
        let k_row_words = layout::kv_row_words(kv, hdk);
        let v_row_words = layout::kv_row_words(kv, hdv);
        let copies = RecentRows::new(kv, cfg.n_layers, n_ctx, recent);
        let layers = (0..cfg.n_layers)
            .map(|_| {
                self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kv"),
                    size: bytes,
                    // COPY_SRC: tests read the stored rows back (cache_rows_as_ggml)
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            })
            .collect();
        self.dev.check()?;
        Ok(GpuCache { ty: kv, n_ctx, n_kv_heads: cfg.n_kv_heads, head_dim_k: hdk, head_dim_v: hdv, k_row_words, v_row_words, layers, copies })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn gpu_attention(
        &mut self,
        cache: &mut GpuCache,
        cfg: &ModelConfig,
        layer: usize,
        q: &GpuAct,
        k: &GpuAct,
        v: &GpuAct,
        pos0: usize,
    ) -> Result<GpuAct, ModelError> {
        let n = q.n_tokens;
        if pos0 + n > cache.n_ctx {
            return Err(ModelError::ContextFull { pos: pos0 + n, n_ctx: cache.n_ctx });
        }
        let (hdk, hdv, nkv) = (cache.head_dim_k, cache.head_dim_v, cache.n_kv_heads);
        if q.width != cfg.n_heads * hdk || k.width != nkv * hdk || v.width != nkv * hdv || cfg.n_heads % nkv != 0 {
            return Err(shape_err("attention widths", q.width, cfg.n_heads * hdk));
        }
        let kv = cache.layers.get(layer).ok_or_else(|| shape_err("attention layer", layer, cache.layers.len()))?.clone();
        if cache.ty.rotates() && hdv > 64 * 32 {
            // attn_split / attn_merge rotate a head's output back with one invocation per group of 32
            return Err(shape_err("attention head_dim_v for a rotated cache (at most 2048)", hdv, 64 * 32));
        }
        let ty = kv_type_id(cache.ty);
        let window = if cfg.layer_is_swa.get(layer).copied().unwrap_or(false) { cfg.sliding_window.unwrap_or(0) } else { 0 };
        let mut p = AttnParams {
            n: n as u32,
            t0: 0,
            n_heads: cfg.n_heads as u32,
            n_kv_heads: nkv as u32,
            hdk: hdk as u32,
            hdv: hdv as u32,
            pos0: pos0 as u32,
            n_kv: (pos0 + n) as u32,
            window: window as u32,
            k_row_words: cache.k_row_words as u32,
            v_row_words: cache.v_row_words as u32,
            v_base: cache.v_base_words() as u32,
            scale: cfg.attn_scale,
            offset_base: cache.offset_base_words() as u32,
            inv_count: if n > 1 { 1.0 / (n - 1) as f32 } else { 0.0 },
            ..AttnParams::default()
        };
        // f16 copies: what the layer holds before this pass, and the pass's own rows in `stash`
        // ([n][nkv][hdk / 2] then [n][nkv][hdv / 2] words; one placeholder word without copies)
        let copies = cache.copies.recent > 0;
        let (sink_n, (ring_lo, ring_hi)) = cache.copies.held(layer);
        (p.sink, p.recent, p.sink_n, p.ring_lo, p.ring_hi) =
            (cache.copies.sink as u32, cache.copies.recent as u32, sink_n as u32, ring_lo as u32, ring_hi as u32);
        (p.copies_k, p.copies_v, p.stash_v) = (cache.copies_k_words() as u32, cache.copies_v_words() as u32, (n * nkv * hdk / 2) as u32);
        let stash = self.alloc(if copies { (n * nkv * (hdk + hdv) / 2 * 4) as u64 } else { 4 })?;
        if cache.ty.offsets_k() && pos0 == 0 {
            // a pass from position 0 starts a sequence: its K offset first (kv_cache::k_offset)
            self.dispatch(
                Family::Attention,
                "kv_offset",
                &[("KVTYPE", ty)],
                &[(0, &kv), (1, k.buf.get())],
                5,
                bytemuck::bytes_of(&p),
                (nkv * hdk).div_ceil(64),
            )?;
        }
        // Queries as the CPU's integer dot products see them for a quantized cache (rotated
        // first when the cache stores rotated rows), prepared by the same dispatch that stores
        // the new K/V rows.
        let qr = if cache.ty.is_quantized() { Some(self.new_act(n, q.width)?) } else { None };
        let q_groups = if qr.is_some() { n * q.width / 32 } else { 0 };
        let groups_per_tok = nkv * (hdk / 32 + hdv / 32);
        let mut ps = p;
        ps.q_groups = q_groups as u32;
        // One token (decode): its copies go to their slot in kv_store (the slot's previous
        // position lies outside the query's copy window), not by a kv_keep after attention.
        let keep_in_store = copies && n == 1;
        ps.keep_in_store = u32::from(keep_in_store);
        let placeholder_out = self.placeholder_out.clone();
        let placeholder = self.placeholder.clone();
        let (q_in, q_out) = match &qr {
            Some(qr) => (q.buf.get(), qr.buf.get()),
            None => (&placeholder, &placeholder_out),
        };
        self.dispatch(
            Family::Attention,
            "kv_store",
            &[("KVTYPE", ty)],
            &[(0, &kv), (1, k.buf.get()), (2, v.buf.get()), (4, q_out), (6, stash.get()), (7, q_in)],
            5,
            bytemuck::bytes_of(&ps),
            (n * groups_per_tok + q_groups).div_ceil(64),
        )?;
        let q = qr.as_ref().unwrap_or(q);
        let out = self.new_act(n, cfg.n_heads * hdv)?;
        // Flash decoding: attn_split per (token, head, SPLIT positions); attn_merge combines
        // the splits' partials ([n_splits][2 + hdv] floats per token and head) when there are
        // several (a context of at most SPLIT positions is one dispatch).
        let n_kv = pos0 + n;
        let n_splits = n_kv.div_ceil(ATTN_SPLIT);
        p.n_splits = n_splits as u32;
        let per_token = (cfg.n_heads * n_splits * (hdv + 2) * 4) as u64;
        let chunk = if n_splits == 1 { n } else { ((SCORES_BUDGET.min(self.dev.max_binding()) / per_token) as usize).clamp(1, n) };
        let partials = if n_splits == 1 { None } else { Some(self.alloc(per_token * chunk as u64)?) };
        let partials_buf = partials.as_ref().map_or(&placeholder_out, |b| b.get());
        let mut t0 = 0;
        while t0 < n {
            let m = chunk.min(n - t0);
            p.n = m as u32;
            p.t0 = t0 as u32;
            self.dispatch(
                Family::Attention,
                "attn_split",
                &[("KVTYPE", ty)],
                &[(0, &kv), (1, q.buf.get()), (3, partials_buf), (4, out.buf.get()), (6, stash.get())],
                5,
                bytemuck::bytes_of(&p),
                m * cfg.n_heads * n_splits,
            )?;
            if n_splits > 1 {
                self.dispatch(
                    Family::Attention,
                    "attn_merge",
                    &[("KVTYPE", ty)],
                    &[(3, partials_buf), (4, out.buf.get())],
                    5,
                    bytemuck::bytes_of(&p),
                    m * cfg.n_heads,
                )?;
            }
            t0 += m;
        }
        // the rows the copies keep move to their slots (after the pass's queries read them)
        for range in cache.copies.keep(layer, pos0, n) {
            if !range.is_empty() && !keep_in_store {
                (p.t0, p.n) = ((range.start - pos0) as u32, range.len() as u32);
                let words = range.len() * nkv * (hdk + hdv) / 2;
                self.dispatch(Family::Attention, "kv_keep", &[("KVTYPE", ty)], &[(0, &kv), (6, stash.get())], 5, bytemuck::bytes_of(&p), words.div_ceil(64))?;
            }
        }
        // (a rotating cache's output left attn_split / attn_merge rotated back)
        Ok(out)
    }

    /// Every stored K and V row of `layer`, `[pos][kv_head]` for all `n_ctx` positions, read back
    /// once and converted from the GPU's word layout to ggml's block bytes (as `KvCache::k_row`
    /// holds them): per 32 values a quantized group is its quant words then the f16 scale, a
    /// ggml block the scale then the quants (tests).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn cache_rows_as_ggml(&mut self, cache: &GpuCache, layer: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let buf = cache.layers[layer].clone();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(self.read_async(&buf, buf.size())).expect("readback"));
        let q = match cache.ty {
            KvType::F32 | KvType::F16 => None,
            KvType::Q8 => Some(8),
            KvType::Q4 => Some(4),
        };
        let as_ggml = |w: &[u32]| -> Vec<u8> {
            let Some(q) = q else { return bytemuck::cast_slice(w).to_vec() };
            w.chunks_exact(q + 1)
                .flat_map(|g| (g[q] as u16).to_le_bytes().into_iter().chain(bytemuck::cast_slice::<u32, u8>(&g[..q]).iter().copied()))
                .collect()
        };
        let (k, v) = words.split_at(cache.v_base_words());
        k.chunks_exact(cache.k_row_words)
            .zip(v.chunks_exact(cache.v_row_words))
            .take(cache.n_ctx * cache.n_kv_heads)
            .map(|(k, v)| (as_ggml(k), as_ggml(v)))
            .collect()
    }

    /// The f16 copies of `layer` the cache holds, by (position, KV head): K and V row bytes
    /// as `KvCache::recent_k_row` holds them (tests).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn cache_copies(&mut self, cache: &GpuCache, layer: usize) -> std::collections::HashMap<(usize, usize), (Vec<u8>, Vec<u8>)> {
        let buf = cache.layers[layer].clone();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(self.read_async(&buf, buf.size())).expect("readback"));
        let (wk, wv) = (cache.head_dim_k / 2, cache.head_dim_v / 2);
        let mut out = std::collections::HashMap::new();
        for p in 0..cache.n_ctx {
            let Some(slot) = cache.copies.kept(layer, p) else { continue };
            for h in 0..cache.n_kv_heads {
                let k = cache.copies_k_words() + (slot * cache.n_kv_heads + h) * wk;
                let v = cache.copies_v_words() + (slot * cache.n_kv_heads + h) * wv;
                out.insert((p, h), (bytemuck::cast_slice(&words[k..k + wk]).to_vec(), bytemuck::cast_slice(&words[v..v + wv]).to_vec()));
            }
        }
        out
    }

    /// The K offset of `layer` as stored (tests; empty for a type that does not offset K).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn cache_k_offset(&mut self, cache: &GpuCache, layer: usize) -> Vec<f32> {
        let buf = cache.layers[layer].clone();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(self.read_async(&buf, buf.size())).expect("readback"));
        words[cache.offset_base_words()..cache.copies_k_words()].iter().map(|w| f32::from_bits(*w)).collect()
    }
}
