//! The KV cache: per layer, per position, per KV head one K row (`head_dim_k` values) and one
//! V row (`head_dim_v`), stored as f32, f16, or quantized in groups of 32 values along the head
//! dimension with one f16 scale per group.
//!
//! Layout (the same bytes a GPU backend would upload): K and V are separate byte arrays,
//! indexed `[layer][pos][kv_head][row bytes]`, little-endian. Row formats:
//! - `F32`: 4 bytes per value; `F16`: 2 bytes per value (ggml's fp32→fp16 rounding).
//! - `Q8`: ggml's `block_q8_0` per 32 values (f16 d, 32 × i8), written with
//!   `quantize_row_q8_0_ref`. Error per value ≤ d/2 = amax/254 of its group (rotated and
//!   K less its offset, as Q4 below).
//! - `Q4`: ggml's `block_q4_0` per 32 values (f16 d, 16 bytes of nibbles: value j in the low
//!   nibble of byte j, value j+16 in the high nibble), written with `quantize_row_q4_0_ref`.
//!   Error per value ≤ |d|/2 = amax/16 of its group, except that the largest-magnitude value is
//!   exact up to the f16 scale. We keep Q4_0 (symmetric, no min) rather than Q4_1: K and V
//!   rows are roughly zero-centred, the attention kernels can then dot K in the quantized
//!   domain against Q8_0 queries (what ggml does for a q4_0 cache), and the layout matches
//!   [`KvType::bytes_for`] and ggml's own `-ctk q4_0`. Unlike ggml, each group of 32 is
//!   [rotated](rotate_groups) before it is quantized (queries are rotated to match and the
//!   attention output rotated back): top-1 agreement with the f32 cache on the oracle
//!   sequences rises from 75.8 % to 84.2 % (SmolLM2) and from 82.8 % to 86.5 % (Gemma-3).
//!   A Q4 cache also stores K [less an offset](k_offset) per layer and channel, the mean K of
//!   the batch that starts the sequence: attention is unchanged by it (softmax ignores a
//!   score shift common to all positions), and each group's scale no longer has to cover the
//!   part of K shared by all tokens.
//!
//! A quantized cache can also keep f16 copies of some rows, which attention reads instead
//! ([`KvCache::with_recent`]; sessions keep the first 4 positions and each query's last 64).
//!
//! Both quantized types rotate and offset alike. Measured without the 8-bit activation
//! rounding of the matmuls (`Kernels::Float`, where an f16 cache agrees with f32 on every
//! oracle position; docs/kv-cache-llama-cpp.md), Q8 stored plainly agreed with the f32 cache
//! on 97.8 / 97.9 % of 4096 GPL-3 positions (SmolLM2 / Gemma-3), rotated and offset on
//! 99.2 / 99.3 %, its KL divergence a fifth; with llama.cpp's arithmetic the same change is
//! lost in that rounding's noise (see `Kernels::Float`).

use crate::error::KvError;
use crate::quant::{ggml_fp32_to_fp16, quantize_row_q4_0_ref, quantize_row_q8_0_ref, BlockQ4_0, BlockQ8_0, GgmlType};
use bytemuck::Zeroable;
use serde::Serialize;

/// How K and V rows are stored: plain floats, or quantized in groups of 32 values per
/// (token, head) with one f16 scale per group (the Q8_0 / Q4_0 block layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    F32,
    F16,
    Q8,
    Q4,
}

impl KvType {
    pub fn from_name(s: &str) -> Option<KvType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            "q8" => KvType::Q8,
            "q4" => KvType::Q4,
            _ => return None,
        })
    }

    /// The name [`from_name`](Self::from_name) reads (f32, f16, q8, q4).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
            KvType::Q4 => "q4",
        }
    }

    /// Bytes for `n` values (n a multiple of 32 for the quantized types; rounded up otherwise).
    pub fn bytes_for(self, n: u64) -> u64 {
        let groups = n.div_ceil(32);
        match self {
            KvType::F32 => n * 4,
            KvType::F16 => n * 2,
            KvType::Q8 => groups * 34,
            KvType::Q4 => groups * 18,
        }
    }

    /// The ggml type whose row format this cache type uses (F32, F16, Q8_0, Q4_0).
    pub fn ggml_type(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Q8 => GgmlType::Q8_0,
            KvType::Q4 => GgmlType::Q4_0,
        }
    }

    /// Whether rows are stored in groups of 32 (head dims must then be multiples of 32).
    pub fn is_quantized(self) -> bool {
        matches!(self, KvType::Q8 | KvType::Q4)
    }

    /// Whether K and V rows are stored [rotated](rotate_groups): the quantized types (see
    /// there and the module docs why). attention.wgsl's `quantized()` states the same rule.
    pub fn rotates(self) -> bool {
        self.is_quantized()
    }

    /// Whether K rows are stored less the layer's [K offset](k_offset): the quantized types
    /// (see there why). attention.wgsl's `quantized()` states the same rule; the GPU attention
    /// test compares the stored offset of every type with the CPU cache's.
    pub fn offsets_k(self) -> bool {
        self.is_quantized()
    }

    /// Bytes of one row of `n` values (`n` a multiple of 32 for quantized types).
    fn row_bytes(self, n: usize) -> usize {
        match self {
            KvType::F32 => n * 4,
            KvType::F16 => n * 2,
            KvType::Q8 => n / 32 * 34,
            KvType::Q4 => n / 32 * 18,
        }
    }
}

/// Quantized types store groups of 32 values: both head dimensions must be multiples of 32
/// (checked by [`KvCache::new`] and by the planner before anything is loaded).
pub fn check_head_dims(ty: KvType, head_dim_k: usize, head_dim_v: usize) -> Result<(), KvError> {
    if ty.is_quantized() {
        for (what, hd) in [("K head dimension", head_dim_k), ("V head dimension", head_dim_v)] {
            if hd % 32 != 0 {
                return Err(KvError::HeadDimNotGroupMultiple { ty, what, head_dim: hd });
            }
        }
    }
    Ok(())
}

/// Bytes a cache of `n_ctx` positions holds over `n_layers` layers: K and V rows of `width_k` /
/// `width_v` values per position (all KV heads), plus the f16 copies of [`RecentRows::bytes`].
/// Saturating: a size past u64 reads as u64::MAX, which nothing fits.
pub fn capacity_bytes(ty: KvType, n_layers: u64, n_ctx: u64, recent: u64, width_k: u64, width_v: u64) -> u64 {
    let per_pos = ty.bytes_for(width_k).saturating_add(ty.bytes_for(width_v));
    per_pos.saturating_mul(n_ctx).saturating_mul(n_layers).saturating_add(RecentRows::bytes(ty, n_layers, n_ctx, recent, width_k, width_v))
}

/// Positions at a sequence's start that a cache [with recent copies](KvCache::with_recent)
/// also keeps as f16 copies (StreamingLLM's four attention sinks).
pub const KV_SINK: usize = 4;

/// Positions before and including each query's own that a session's quantized cache reads
/// from f16 copies by default ([`KvCache::with_recent`]).
pub const KV_RECENT: usize = 64;

/// Which positions' K and V rows a quantized cache [keeps as f16 copies](KvCache::with_recent)
/// beside the quantized ones, per layer, and in which slot: the bookkeeping of the CPU cache
/// and of the GPU's (which keeps its copies in the layer's buffer, read by attention.wgsl by
/// the same rules).
#[derive(Clone, Debug, Default)]
pub struct RecentRows {
    /// Positions `0..sink` are kept (slot `p`).
    pub sink: usize,
    /// A query at `pos` reads positions `pos − recent + 1 ..= pos` from copies (slot
    /// `sink + p % recent`); 0 for no copies at all.
    pub recent: usize,
    /// [n_layers]: positions `lo..hi` (all ≥ `sink`) held in the recent slots.
    span: Vec<(usize, usize)>,
    /// [n_layers]: positions `0..n` held in the sink slots.
    sink_n: Vec<usize>,
}

impl RecentRows {
    /// For a quantized `ty` and `recent > 0`: the first [`KV_SINK`] positions and a query's
    /// last `recent`, both capped at `n_ctx`; else none (f32 / f16 rows are exact already).
    pub fn new(ty: KvType, n_layers: usize, n_ctx: usize, recent: usize) -> RecentRows {
        if !ty.is_quantized() || recent == 0 {
            return RecentRows::default();
        }
        RecentRows { sink: KV_SINK.min(n_ctx), recent: recent.min(n_ctx), span: vec![(0, 0); n_layers], sink_n: vec![0; n_layers] }
    }

    /// Rows per layer and head.
    pub fn slots(&self) -> usize {
        self.sink + self.recent
    }

    /// Bytes of the f16 copies a cache of type `ty` keeps with `recent` (0 unless quantized),
    /// for `n_layers` layers of `width_k + width_v` values per position (all KV heads).
    pub fn bytes(ty: KvType, n_layers: u64, n_ctx: u64, recent: u64, width_k: u64, width_v: u64) -> u64 {
        let size = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        let slots = RecentRows::new(ty, 0, size(n_ctx), size(recent)).slots() as u64;
        n_layers.saturating_mul(slots).saturating_mul(width_k.saturating_add(width_v)).saturating_mul(2)
    }

    /// The slot of position `pos`.
    pub fn slot(&self, pos: usize) -> usize {
        if pos < self.sink {
            pos
        } else {
            self.sink + pos % self.recent
        }
    }

    /// Whether a query at `pos` reads position `p`'s rows from a copy when one is kept.
    pub fn reads_copy(&self, p: usize, pos: usize) -> bool {
        self.recent > 0 && (p < self.sink || p + self.recent > pos)
    }

    /// The slot holding `layer`'s rows of `pos`, when they are kept.
    pub fn kept(&self, layer: usize, pos: usize) -> Option<usize> {
        if self.recent == 0 {
            return None;
        }
        let held = if pos < self.sink { pos < self.sink_n[layer] } else { (self.span[layer].0..self.span[layer].1).contains(&pos) };
        held.then(|| self.slot(pos))
    }

    /// `layer`'s sink positions held (`0..n`) and recent span (`lo..hi`), as attention.wgsl
    /// takes them.
    pub fn held(&self, layer: usize) -> (usize, (usize, usize)) {
        match self.recent {
            0 => (0, (0, 0)),
            _ => (self.sink_n[layer], self.span[layer]),
        }
    }

    /// Records that `layer`'s positions `pos0..pos0 + n` were written (anything held from
    /// `pos0` on is replaced) and returns the positions whose rows now go to their slots: the
    /// batch's sink positions and its last `recent` ones.
    pub fn keep(&mut self, layer: usize, pos0: usize, n: usize) -> [std::ops::Range<usize>; 2] {
        if self.recent == 0 || n == 0 {
            return [0..0, 0..0];
        }
        let (sink, end) = (self.sink, pos0 + n);
        // held sink positions stay valid below the batch, unless a gap separates them from it
        let sink_n = &mut self.sink_n[layer];
        if pos0 < sink && pos0 <= *sink_n {
            *sink_n = end.min(sink);
        }
        let first = end.saturating_sub(self.recent).max(pos0).max(sink);
        if end > sink {
            let (lo, hi) = self.span[layer];
            let b0 = pos0.max(sink);
            let lo = if hi < b0 || lo > b0 { b0 } else { lo };
            self.span[layer] = (lo.max(end.saturating_sub(self.recent)), end);
        }
        [pos0.min(sink)..end.min(sink), first.min(end)..end]
    }

    /// Forgets what is held from `n_pos` on.
    pub fn truncate(&mut self, n_pos: usize) {
        for (lo, hi) in &mut self.span {
            *hi = (*hi).min(n_pos);
            *lo = (*lo).min(*hi);
        }
        for n in &mut self.sink_n {
            *n = (*n).min(n_pos);
        }
    }

    /// Forgets everything held.
    pub fn clear(&mut self) {
        self.truncate(0);
    }
}

/// The KV cache of one sequence: see the module docs for the layout.
pub struct KvCache {
    ty: KvType,
    n_layers: usize,
    n_ctx: usize,
    n_kv_heads: usize,
    head_dim_k: usize,
    head_dim_v: usize,
    k_row: usize,
    v_row: usize,
    k: Vec<u8>,
    v: Vec<u8>,
    /// One past the highest position written (and not truncated away).
    n_pos: usize,
    tmp8: Vec<BlockQ8_0>,
    tmp4: Vec<BlockQ4_0>,
    /// The row being written in its [stored form](stored_form), when that is not the row itself.
    staged: Vec<f32>,
    /// [n_layers][n_kv_heads · head_dim_k]: each layer's [K offset](k_offset), subtracted from
    /// every K row before it is stored (types that [offset K](KvType::offsets_k); else empty).
    k_offsets: Vec<f32>,
    /// Which positions' rows the f16 copies hold (see [`KvCache::with_recent`]).
    copies: RecentRows,
    /// [n_layers][copies.slots()][n_kv_heads · head_dim_k] f16 (ggml's rounding,
    /// little-endian): K rows in their [stored form](stored_form) before quantization, in
    /// the slots [`RecentRows`] assigns.
    recent_k: Vec<u8>,
    /// [n_layers][copies.slots()][n_kv_heads · head_dim_v] f16: the V rows likewise.
    recent_v: Vec<u8>,
    /// [n][n_kv_heads · head_dim_k] f16: the K rows of the last batch written (`pending`) in
    /// the same form, read by its own queries, and moved to the slots by the next write.
    batch_k: Vec<u8>,
    /// [n][n_kv_heads · head_dim_v] f16: its V rows.
    batch_v: Vec<u8>,
    /// (layer, pos0, n) of the batch in `batch_k` / `batch_v`.
    pending: Option<(usize, usize, usize)>,
}

/// Appends `src` as f16 (ggml's rounding), little-endian.
fn push_f16(dst: &mut Vec<u8>, src: &[f32]) {
    for &x in src {
        dst.extend_from_slice(&ggml_fp32_to_fp16(x).to_bits().to_le_bytes());
    }
}

fn alloc_zeroed(bytes: usize) -> Result<Vec<u8>, KvError> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes).map_err(|_| KvError::AllocFailed { bytes })?;
    v.resize(bytes, 0);
    Ok(v)
}

impl KvCache {
    /// Allocates a zeroed cache. Sizes are checked (no overflow, head dims multiples of 32 for
    /// quantized types) before anything is allocated; allocation failure is an error, not an abort.
    pub fn new(ty: KvType, n_layers: usize, n_ctx: usize, n_kv_heads: usize, head_dim_k: usize, head_dim_v: usize) -> Result<Self, KvError> {
        for (what, v) in [
            ("layer count", n_layers),
            ("context length", n_ctx),
            ("KV head count", n_kv_heads),
            ("K head dimension", head_dim_k),
            ("V head dimension", head_dim_v),
        ] {
            if v == 0 {
                return Err(KvError::ZeroSize { what });
            }
        }
        check_head_dims(ty, head_dim_k, head_dim_v)?;
        let overflow = KvError::SizeOverflow { n_layers, n_ctx, n_kv_heads };
        let rows = n_layers.checked_mul(n_ctx).and_then(|r| r.checked_mul(n_kv_heads)).ok_or(overflow.clone())?;
        let k_row = head_dim_k.checked_mul(4).map(|_| ty.row_bytes(head_dim_k)).ok_or(overflow.clone())?;
        let v_row = head_dim_v.checked_mul(4).map(|_| ty.row_bytes(head_dim_v)).ok_or(overflow.clone())?;
        let k_bytes = rows.checked_mul(k_row).ok_or(overflow.clone())?;
        let v_bytes = rows.checked_mul(v_row).ok_or(overflow.clone())?;
        // Rust allocations are limited to isize::MAX bytes.
        if k_bytes.checked_add(v_bytes).is_none_or(|t| t > isize::MAX as usize) {
            return Err(overflow);
        }
        let k = alloc_zeroed(k_bytes)?;
        let v = alloc_zeroed(v_bytes)?;
        let mut k_offsets = Vec::new();
        if ty.offsets_k() {
            // (no overflow: at most the K rows' values, whose byte size was checked)
            let n = n_layers * n_kv_heads * head_dim_k;
            k_offsets.try_reserve_exact(n).map_err(|_| KvError::AllocFailed { bytes: n * 4 })?;
            k_offsets.resize(n, 0.0);
        }
        Ok(KvCache {
            ty,
            n_layers,
            n_ctx,
            n_kv_heads,
            head_dim_k,
            head_dim_v,
            k_row,
            v_row,
            k,
            v,
            n_pos: 0,
            tmp8: Vec::new(),
            tmp4: Vec::new(),
            staged: Vec::new(),
            k_offsets,
            copies: RecentRows::default(),
            recent_k: Vec::new(),
            recent_v: Vec::new(),
            batch_k: Vec::new(),
            batch_v: Vec::new(),
            pending: None,
        })
    }

    /// Keeps, besides a quantized cache's rows, f16 copies of the rows of each layer's first
    /// [`KV_SINK`] positions and of its last `recent` ones (both capped at the context): a
    /// query at position `pos` reads positions `0..KV_SINK` and `pos − recent + 1 ..= pos`
    /// from them, the others from the quantized rows. No change for f32 / f16 caches or
    /// `recent == 0` (then no sink copies either).
    ///
    /// Why: the rows a query attends to most are its recent ones and the first (attention
    /// sinks), and 4-bit K is where a q4 cache loses most (docs/kv-cache-llama-cpp.md). Keeping
    /// the last positions exact is KIVI's residual (arXiv:2402.02750; Hugging Face's quantized
    /// cache keeps 128), the first ones StreamingLLM's sinks (arXiv:2309.17453). Measured over
    /// 4096 GPL-3 positions (float kernels), q4's top-1 agreement with the f32 cache: 87.6 %
    /// plain, 93.9 % with the last 64 positions exact, 97.7 % with position 0 as well (SmolLM2).
    /// The copies hold the rows as the quantizer meets them (K less its offset, rotated), so
    /// their scores and outputs mix with the quantized rows' unchanged; the query is the one
    /// the quantized rows' dot products see (rotated, rounded as Q8_0).
    pub fn with_recent(mut self, recent: usize) -> Result<Self, KvError> {
        let copies = RecentRows::new(self.ty, self.n_layers, self.n_ctx, recent);
        if copies.recent == 0 {
            return Ok(self);
        }
        // (no overflow: at most n_ctx + 4 rows per layer, at 2 bytes per value)
        let per_layer = |hd: usize| copies.slots() * self.n_kv_heads * hd * 2;
        self.recent_k = alloc_zeroed(self.n_layers * per_layer(self.head_dim_k))?;
        self.recent_v = alloc_zeroed(self.n_layers * per_layer(self.head_dim_v))?;
        self.copies = copies;
        Ok(self)
    }

    /// Which positions' rows are held as f16 copies (see [`with_recent`](Self::with_recent)).
    pub fn copies(&self) -> &RecentRows {
        &self.copies
    }

    /// The f16 copy of the K row of (`layer`, `pos`, `head`) in its stored form, when the
    /// cache keeps one (`head_dim_k` f16 values).
    pub fn recent_k_row(&self, layer: usize, pos: usize, head: usize) -> Option<&[u8]> {
        self.recent_row(layer, pos, head, self.head_dim_k, &self.batch_k, &self.recent_k)
    }

    /// The f16 copy of the V row of (`layer`, `pos`, `head`), when the cache keeps one.
    pub fn recent_v_row(&self, layer: usize, pos: usize, head: usize) -> Option<&[u8]> {
        self.recent_row(layer, pos, head, self.head_dim_v, &self.batch_v, &self.recent_v)
    }

    fn recent_row<'a>(&'a self, layer: usize, pos: usize, head: usize, hd: usize, batch: &'a [u8], kept: &'a [u8]) -> Option<&'a [u8]> {
        let row = |rows: &'a [u8], i: usize| {
            let at = (i * self.n_kv_heads + head) * hd * 2;
            &rows[at..at + hd * 2]
        };
        if let Some((l, pos0, n)) = self.pending {
            if l == layer && (pos0..pos0 + n).contains(&pos) {
                return Some(row(batch, pos - pos0));
            }
        }
        let slot = self.copies.kept(layer, pos)?;
        Some(row(kept, layer * self.copies.slots() + slot))
    }

    /// Moves the rows of the pending batch that the copies keep to their slots.
    fn keep_pending(&mut self) {
        let Some((layer, pos0, n)) = self.pending.take() else {
            return;
        };
        let (kb, vb) = (self.n_kv_heads * self.head_dim_k * 2, self.n_kv_heads * self.head_dim_v * 2);
        for p in self.copies.keep(layer, pos0, n).into_iter().flatten() {
            let (slot, t) = (layer * self.copies.slots() + self.copies.slot(p), p - pos0);
            self.recent_k[slot * kb..(slot + 1) * kb].copy_from_slice(&self.batch_k[t * kb..(t + 1) * kb]);
            self.recent_v[slot * vb..(slot + 1) * vb].copy_from_slice(&self.batch_v[t * vb..(t + 1) * vb]);
        }
    }

    /// Stores the K and V rows of every KV head for `pos` in `layer`: `k` holds
    /// `n_kv_heads · head_dim_k` values, `v` `n_kv_heads · head_dim_v` (head-major). The same
    /// as a [batch](Self::write_batch) of one token.
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        self.write_batch(layer, pos, k, v)
    }

    /// Stores the K and V rows of consecutive positions `pos0..pos0 + n` of `layer`:
    /// `k` holds `[n][n_kv_heads · head_dim_k]` values, `v` `[n][n_kv_heads · head_dim_v]`.
    /// A batch from position 0 starts a sequence: for a type that [offsets K](KvType::offsets_k)
    /// it sets the layer's [K offset](k_offset) from its K rows first.
    pub fn write_batch(&mut self, layer: usize, pos0: usize, k: &[f32], v: &[f32]) -> Result<(), KvError> {
        if layer >= self.n_layers {
            return Err(KvError::LayerOutOfRange { layer, n_layers: self.n_layers });
        }
        let (kw, vw) = (self.n_kv_heads * self.head_dim_k, self.n_kv_heads * self.head_dim_v);
        let n = k.len() / kw;
        if k.is_empty() || k.len() % kw != 0 {
            return Err(KvError::RowLength { what: "K", expected: kw, got: k.len() });
        }
        if v.len() != n * vw {
            return Err(KvError::RowLength { what: "V", expected: n * vw, got: v.len() });
        }
        if pos0.checked_add(n).is_none_or(|end| end > self.n_ctx) {
            return Err(KvError::PositionOutOfRange { pos: pos0.saturating_add(n - 1), n_ctx: self.n_ctx });
        }
        let ty = self.ty;
        self.keep_pending();
        if self.copies.recent > 0 {
            self.batch_k.clear();
            self.batch_v.clear();
            self.pending = Some((layer, pos0, n));
        }
        if ty.offsets_k() && pos0 == 0 {
            k_offset(k, kw, &mut self.k_offsets[layer * kw..(layer + 1) * kw]);
        }
        for (t, (k, v)) in k.chunks_exact(kw).zip(v.chunks_exact(vw)).enumerate() {
            let base = (layer * self.n_ctx + pos0 + t) * self.n_kv_heads;
            let (kr, vr) = (self.k_row, self.v_row);
            let kdst = &mut self.k[base * kr..(base + self.n_kv_heads) * kr];
            let offset = self.k_offsets.get(layer * kw..(layer + 1) * kw).unwrap_or(&[]);
            let k = stored_form(ty, k, offset, &mut self.staged);
            encode(ty, k, kdst, &mut self.tmp8, &mut self.tmp4);
            if self.copies.recent > 0 {
                push_f16(&mut self.batch_k, k);
            }
            let vdst = &mut self.v[base * vr..(base + self.n_kv_heads) * vr];
            let v = stored_form(ty, v, &[], &mut self.staged);
            encode(ty, v, vdst, &mut self.tmp8, &mut self.tmp4);
            if self.copies.recent > 0 {
                push_f16(&mut self.batch_v, v);
            }
        }
        self.n_pos = self.n_pos.max(pos0 + n);
        Ok(())
    }

    /// Bytes held by K and V (with the [recent](Self::with_recent) copies, not the transient
    /// copy of a batch).
    pub fn bytes(&self) -> usize {
        self.k.len() + self.v.len() + self.recent_k.len() + self.recent_v.len()
    }

    /// Positions the cache can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// One past the highest position written since the last [`clear`](Self::clear) /
    /// [`truncate`](Self::truncate).
    pub fn n_pos(&self) -> usize {
        self.n_pos
    }

    /// Forgets every position (contents are overwritten by later writes, not zeroed).
    pub fn clear(&mut self) {
        self.n_pos = 0;
        self.pending = None;
        self.copies.clear();
    }

    /// Keeps positions `0..n_pos` (rewinding a conversation); later positions are stale.
    pub fn truncate(&mut self, n_pos: usize) {
        self.n_pos = self.n_pos.min(n_pos);
        self.keep_pending();
        self.copies.truncate(n_pos);
    }

    pub fn ty(&self) -> KvType {
        self.ty
    }
    pub fn n_layers(&self) -> usize {
        self.n_layers
    }
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    pub fn head_dim_k(&self) -> usize {
        self.head_dim_k
    }
    pub fn head_dim_v(&self) -> usize {
        self.head_dim_v
    }
    /// Bytes of one K row (one head, one position).
    pub fn k_row_bytes(&self) -> usize {
        self.k_row
    }
    /// Bytes of one V row.
    pub fn v_row_bytes(&self) -> usize {
        self.v_row
    }

    /// The stored K row of (`layer`, `pos`, `head`) (panics when out of range).
    #[inline]
    pub fn k_row(&self, layer: usize, pos: usize, head: usize) -> &[u8] {
        let i = (layer * self.n_ctx + pos) * self.n_kv_heads + head;
        &self.k[i * self.k_row..(i + 1) * self.k_row]
    }

    /// The stored V row of (`layer`, `pos`, `head`) (panics when out of range).
    #[inline]
    pub fn v_row(&self, layer: usize, pos: usize, head: usize) -> &[u8] {
        let i = (layer * self.n_ctx + pos) * self.n_kv_heads + head;
        &self.v[i * self.v_row..(i + 1) * self.v_row]
    }

    /// All K bytes of `layer` (`n_ctx · n_kv_heads` rows), e.g. for a GPU upload.
    pub fn k_layer(&self, layer: usize) -> &[u8] {
        let n = self.n_ctx * self.n_kv_heads * self.k_row;
        &self.k[layer * n..(layer + 1) * n]
    }

    /// All V bytes of `layer`.
    pub fn v_layer(&self, layer: usize) -> &[u8] {
        let n = self.n_ctx * self.n_kv_heads * self.v_row;
        &self.v[layer * n..(layer + 1) * n]
    }

    /// The [K offset](k_offset) of `layer`'s KV head `head` (`head_dim_k` values): what
    /// [`read_k`](Self::read_k) adds back to a stored K row. Empty for a type that does not
    /// [offset K](KvType::offsets_k) (panics when out of range).
    pub fn k_offset(&self, layer: usize, head: usize) -> &[f32] {
        assert!(layer < self.n_layers && head < self.n_kv_heads, "k_offset out of range");
        let i = layer * self.n_kv_heads + head;
        self.k_offsets.get(i * self.head_dim_k..(i + 1) * self.head_dim_k).unwrap_or(&[])
    }

    /// Decodes the stored K row of (`layer`, `pos`, `head`) into `out` (`head_dim_k` values),
    /// rotated back when the type rotates and with the layer's K offset added back.
    pub fn read_k(&self, layer: usize, pos: usize, head: usize, out: &mut [f32]) {
        decode(self.ty, self.k_row(layer, pos, head), out);
        for (v, o) in out.iter_mut().zip(self.k_offset(layer, head)) {
            *v += o;
        }
    }

    /// Decodes the stored V row of (`layer`, `pos`, `head`) into `out` (`head_dim_v` values),
    /// rotated back when the type rotates.
    pub fn read_v(&self, layer: usize, pos: usize, head: usize, out: &mut [f32]) {
        decode(self.ty, self.v_row(layer, pos, head), out);
    }
}

/// Encodes `src` (whole rows) into `dst` bytes in the format of `ty`.
fn encode(ty: KvType, src: &[f32], dst: &mut [u8], tmp8: &mut Vec<BlockQ8_0>, tmp4: &mut Vec<BlockQ4_0>) {
    match ty {
        KvType::F32 => {
            for (d, &s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        KvType::F16 => {
            for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&ggml_fp32_to_fp16(s).to_bits().to_le_bytes());
            }
        }
        KvType::Q8 => {
            tmp8.clear();
            tmp8.resize(src.len() / 32, BlockQ8_0::zeroed());
            quantize_row_q8_0_ref(src, tmp8);
            dst.copy_from_slice(bytemuck::cast_slice(tmp8));
        }
        KvType::Q4 => {
            tmp4.clear();
            tmp4.resize(src.len() / 32, BlockQ4_0::zeroed());
            quantize_row_q4_0_ref(src, tmp4);
            dst.copy_from_slice(bytemuck::cast_slice(tmp4));
        }
    }
}

/// Decodes one row (`out.len()` values) from its bytes, rotated back when `ty` rotates.
fn decode(ty: KvType, src: &[u8], out: &mut [f32]) {
    // The row length matches by construction; dequantize_row only fails on length mismatch.
    if crate::quant::dequantize_row(ty.ggml_type(), src, out).is_err() {
        out.fill(f32::NAN);
    }
    if ty.rotates() {
        rotate_groups(out);
    }
}

/// The K offset of a sequence, from the K rows of the batch that starts it (`k`:
/// `[n][width]`): per channel the mean over the batch's tokens after the first, in f32 summed
/// in token order then times `1/(n−1)` (zero for a one-token batch), the same operations as
/// the GPU's `kv_offset` so both caches store the same bytes.
///
/// Why: a cache that [offsets K](KvType::offsets_k) stores `k − m` instead of `k`. Every score
/// of a query then moves by the same `q·m`, which the softmax does not see, so attention is
/// unchanged; but K rows share a large component across tokens (a per-channel mean — bias-like
/// directions, strongest after Gemma-3's K norm), and without it each Q4 group's scale covers
/// only what varies from token to token. The first token (a BOS / attention-sink position
/// whose K is unlike the rest) is left out of the mean. Measured (docs/kv-cache-llama-cpp.md):
/// Q4 top-1 agreement with the f32 cache on the oracle sequences rises from 84.9 to 87.5 %
/// (SmolLM2) and from 85.3 to 92.4 % (Gemma-3); over 4096 positions of GPL-3 the KL divergence
/// from the f32 cache falls by a third (SmolLM2) and by nearly half (Gemma-3).
pub fn k_offset(k: &[f32], width: usize, out: &mut [f32]) {
    let n = k.len() / width;
    let inv = if n > 1 { 1.0 / (n - 1) as f32 } else { 0.0 };
    for (c, o) in out.iter_mut().enumerate().take(width) {
        let mut sum = 0.0f32;
        for t in 1..n {
            sum += k[t * width + c];
        }
        *o = sum * inv;
    }
}

/// `src` (whole rows) in the form a cache of type `ty` stores it, and attention must meet it:
/// less `offset` (the [K offset](k_offset) for K rows; empty for none) and rotated when `ty`
/// rotates, into `buf`; `src` itself when neither applies.
pub(crate) fn stored_form<'a>(ty: KvType, src: &'a [f32], offset: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    if !ty.rotates() && offset.is_empty() {
        return src;
    }
    buf.clear();
    if offset.is_empty() {
        buf.extend_from_slice(src);
    } else {
        buf.extend(src.iter().zip(offset).map(|(x, m)| x - m));
    }
    if ty.rotates() {
        rotate_groups(buf);
    }
    buf
}

/// The orthonormal Walsh–Hadamard transform `H₃₂/√32` of every group of 32 values of `x`
/// (`x.len()` a multiple of 32), in place. `H` is symmetric and orthonormal, so it is its own
/// inverse and `(Hq)·(Hk) = q·k`, `Σ pᵢ·Hvᵢ = H·Σ pᵢ·vᵢ`: a cache that stores `Hk`, `Hv`
/// gives the same attention when the query is rotated and the output rotated back. Why: when
/// a few values of a Q4 group are far larger than the rest, they set the scale and the other
/// values round to a handful of levels; the rotation spreads each group's energy over all 32
/// values before quantizing (QuaRot, arXiv:2404.00456, does this per head against outlier
/// channels). Measured gain: see the module docs.
pub fn rotate_groups(x: &mut [f32]) {
    const NORM: f32 = 0.176_776_69; // 1/√32
    for g in x.chunks_exact_mut(32) {
        let mut h = 1;
        while h < 32 {
            for i in (0..32).step_by(2 * h) {
                for j in i..i + h {
                    let (a, b) = (g[j], g[j + h]);
                    g[j] = a + b;
                    g[j + h] = a - b;
                }
            }
            h *= 2;
        }
        for v in g.iter_mut() {
            *v *= NORM;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;

    #[test]
    fn new_checks_sizes_before_allocating() {
        assert_eq!(KvCache::new(KvType::F32, 0, 8, 1, 64, 64).err(), Some(KvError::ZeroSize { what: "layer count" }));
        assert!(matches!(KvCache::new(KvType::Q8, 1, 8, 1, 48, 64), Err(KvError::HeadDimNotGroupMultiple { head_dim: 48, .. })));
        assert!(matches!(KvCache::new(KvType::F32, usize::MAX / 2, 3, 1, 64, 64), Err(KvError::SizeOverflow { .. })));
        assert!(matches!(KvCache::new(KvType::F32, 1 << 20, 1 << 20, 64, 256, 256), Err(KvError::SizeOverflow { .. }) | Err(KvError::AllocFailed { .. })));
        let c = KvCache::new(KvType::Q4, 2, 16, 3, 64, 32).expect("small cache");
        assert_eq!(c.bytes() as u64, KvType::Q4.bytes_for(2 * 16 * 3 * 64) + KvType::Q4.bytes_for(2 * 16 * 3 * 32));
    }

    /// The bookkeeping of the f16 copies: which positions a batch hands to the slots, what is
    /// held after batches, a rewrite from an earlier position, a gap, and a truncation.
    #[test]
    fn recent_rows_track_sinks_and_last_positions() {
        assert_eq!(RecentRows::new(KvType::Q4, 2, 100, 0).keep(0, 0, 10), [0..0, 0..0]);
        assert_eq!(RecentRows::new(KvType::F16, 2, 100, 5).slots(), 0);
        let mut r = RecentRows::new(KvType::Q4, 2, 100, 5);
        assert_eq!((r.sink, r.recent, r.slots()), (4, 5, 9));
        let held = |r: &RecentRows, layer| (0..100).filter(|&p| r.kept(layer, p).is_some()).collect::<Vec<_>>();
        // a prompt of 12: sinks 0..4 and its last 5
        assert_eq!(r.keep(0, 0, 12), [0..4, 7..12]);
        assert_eq!(held(&r, 0), [0, 1, 2, 3, 7, 8, 9, 10, 11]);
        assert!(held(&r, 1).is_empty());
        // one token at a time: the window slides, each in slot 4 + p % 5
        assert_eq!(r.keep(0, 12, 1), [4..4, 12..13]);
        assert_eq!(held(&r, 0), [0, 1, 2, 3, 8, 9, 10, 11, 12]);
        assert_eq!((r.kept(0, 12), r.kept(0, 7), r.kept(0, 2)), (Some(6), None, Some(2)));
        assert!(r.reads_copy(2, 12) && r.reads_copy(8, 12) && !r.reads_copy(7, 12) && !r.reads_copy(5, 12));
        // rewriting from 10 (a rewound conversation): 10 and later are the new batch's
        assert_eq!(r.keep(0, 10, 2), [4..4, 10..12]);
        assert_eq!(held(&r, 0), [0, 1, 2, 3, 8, 9, 10, 11]);
        // a batch that leaves a gap after what is held: only its own rows
        assert_eq!(r.keep(0, 30, 2), [4..4, 30..32]);
        assert_eq!(held(&r, 0), [0, 1, 2, 3, 30, 31]);
        // a new sequence of 2, then 2 more: the sinks fill as it goes
        r.clear();
        assert!(held(&r, 0).is_empty());
        assert_eq!(r.keep(0, 0, 2), [0..2, 2..2]);
        assert_eq!(r.keep(0, 2, 5), [2..4, 4..7]);
        assert_eq!(held(&r, 0), [0, 1, 2, 3, 4, 5, 6]);
        r.truncate(3);
        assert_eq!(held(&r, 0), [0, 1, 2]);
    }

    #[test]
    fn rotation_is_orthonormal_and_its_own_inverse() {
        let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
        let y: Vec<f32> = (0..96).map(|i| ((i * 11 % 17) as f32 - 8.0) * 1.3).collect();
        let (mut rx, mut ry) = (x.clone(), y.clone());
        rotate_groups(&mut rx);
        rotate_groups(&mut ry);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>();
        assert!((dot(&rx, &ry) - dot(&x, &y)).abs() < 1e-3 * dot(&x, &x).sqrt() * dot(&y, &y).sqrt());
        // each group is transformed on its own: group 1 of rx depends only on group 1 of x
        let mut g1 = x[32..64].to_vec();
        rotate_groups(&mut g1);
        assert_eq!(&rx[32..64], &g1[..]);
        rotate_groups(&mut rx);
        for (a, b) in rx.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // one large channel is spread evenly over its group
        let mut spike = vec![0.0f32; 32];
        spike[5] = 32.0;
        rotate_groups(&mut spike);
        assert!(spike.iter().all(|v| (v.abs() - 32.0 / 32f32.sqrt()).abs() < 1e-4));
    }

    #[test]
    fn q4_rows_are_stored_rotated_and_read_back_in_place() {
        // A row with one outlier value per group.
        let k: Vec<f32> = (0..64).map(|i| if i % 32 == 3 { 40.0 } else { ((i * 7 % 13) as f32 - 6.0) * 0.25 }).collect();
        let mut c = KvCache::new(KvType::Q4, 1, 2, 1, 64, 64).expect("cache");
        c.write(0, 0, &k, &k).expect("write");
        let mut plain = vec![0.0f32; 64];
        quant::dequantize_row(GgmlType::Q4_0, c.k_row(0, 0, 0), &mut plain).expect("row");
        let mut rot = k.clone();
        rotate_groups(&mut rot);
        let mut direct = vec![0.0f32; 64];
        let mut blocks = vec![BlockQ4_0::zeroed(); 2];
        quantize_row_q4_0_ref(&rot, &mut blocks);
        quant::dequantize_row(GgmlType::Q4_0, bytemuck::cast_slice(&blocks), &mut direct).expect("row");
        assert_eq!(plain, direct, "the stored bytes are Q4_0 of the rotated row");
        let (mut rk, mut rv) = (vec![0.0f32; 64], vec![0.0f32; 64]);
        c.read_k(0, 0, 0, &mut rk);
        c.read_v(0, 0, 0, &mut rv);
        assert_eq!(rk, rv);
        // Rotated, the small channels keep their values to about a tenth; unrotated Q4_0 of this
        // row (scale 40/8 = 5) rounds every one of them to 0.
        let err = |r: &[f32]| r.iter().zip(&k).enumerate().filter(|(i, _)| i % 32 != 3).map(|(_, (a, b))| (a - b).abs()).fold(0.0f32, f32::max);
        let mut unrotated = vec![BlockQ4_0::zeroed(); 2];
        quantize_row_q4_0_ref(&k, &mut unrotated);
        let mut back = vec![0.0f32; 64];
        quant::dequantize_row(GgmlType::Q4_0, bytemuck::cast_slice(&unrotated), &mut back).expect("row");
        assert!(err(&rk) < 0.6 * err(&back), "rotated error {} vs plain {}", err(&rk), err(&back));
    }

    #[test]
    fn quantized_k_offset_is_set_by_a_batch_from_position_0() {
        for ty in [KvType::Q8, KvType::Q4] {
            k_offset_case(ty);
        }
        // Float types store K as it is.
        let (nkv, hd, n) = (2, 64, 6);
        let k: Vec<f32> = (0..n * nkv * hd).map(|i| 4.0 + (i % 7) as f32).collect();
        for ty in [KvType::F32, KvType::F16] {
            let mut c = KvCache::new(ty, 2, 16, nkv, hd, hd).expect("cache");
            c.write_batch(1, 0, &k, &k).expect("batch");
            assert!(c.k_offset(1, 0).is_empty(), "{ty:?}");
        }
    }

    fn k_offset_case(ty: KvType) {
        let (nkv, hd, n) = (2, 64, 6);
        let width = nkv * hd;
        // K rows: a large part shared by all tokens, a small part that varies
        let shared: Vec<f32> = (0..width).map(|i| 4.0 * (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..n * width).map(|i| shared[i % width] + 0.1 * (((i * 13) % 17) as f32 - 8.0) / 8.0).collect();
        let v = vec![0.25f32; n * width];
        let mut c = KvCache::new(ty, 2, 16, nkv, hd, hd).expect("cache");
        c.write_batch(1, 0, &k, &v).expect("batch");
        // the mean of tokens 1..n, summed in token order in f32, times 1/(n−1)
        for h in 0..nkv {
            for j in 0..hd {
                let sum = (1..n).fold(0f32, |s, t| s + k[t * width + h * hd + j]);
                assert_eq!(c.k_offset(1, h)[j].to_bits(), (sum * (1.0 / (n - 1) as f32)).to_bits());
            }
        }
        assert!(c.k_offset(0, 1).iter().all(|&m| m == 0.0), "other layers keep theirs");
        // The same rows written token by token: a one-token batch from position 0 sets a zero
        // offset, so they are stored whole, and read back far less exactly.
        let mut whole = KvCache::new(ty, 2, 16, nkv, hd, hd).expect("cache");
        for t in 0..n {
            whole.write(1, t, &k[t * width..(t + 1) * width], &v[..width]).expect("write");
        }
        assert!(whole.k_offset(1, 0).iter().all(|&m| m == 0.0));
        let max_err = |c: &KvCache| {
            let mut out = vec![0f32; hd];
            let mut e = 0f32;
            for t in 0..n {
                for h in 0..nkv {
                    c.read_k(1, t, h, &mut out);
                    for (o, x) in out.iter().zip(&k[t * width + h * hd..]) {
                        e = e.max((o - x).abs());
                    }
                }
            }
            e
        };
        let (with, without) = (max_err(&c), max_err(&whole));
        assert!(with < 0.2 * without, "{ty:?}: K error with the offset {with}, stored whole {without}");
        // A later batch keeps the offset; a new sequence from position 0 replaces it.
        let before = c.k_offset(1, 0).to_vec();
        c.write_batch(1, n, &k[..2 * width], &v[..2 * width]).expect("batch");
        assert_eq!(c.k_offset(1, 0), &before[..]);
        c.write(1, 0, &k[..width], &v[..width]).expect("write");
        assert!(c.k_offset(1, 0).iter().all(|&m| m == 0.0));
    }

    #[test]
    fn write_checks_ranges() {
        let mut c = KvCache::new(KvType::F16, 2, 4, 2, 32, 32).expect("cache");
        let r = vec![0.5f32; 64];
        assert_eq!(c.write(2, 0, &r, &r), Err(KvError::LayerOutOfRange { layer: 2, n_layers: 2 }));
        assert_eq!(c.write(0, 4, &r, &r), Err(KvError::PositionOutOfRange { pos: 4, n_ctx: 4 }));
        assert_eq!(c.write(0, 0, &r[..32], &r), Err(KvError::RowLength { what: "K", expected: 64, got: 32 }));
        assert_eq!(c.write_batch(0, 0, &r, &r[..32]), Err(KvError::RowLength { what: "V", expected: 64, got: 32 }));
        assert_eq!(c.write_batch(0, 0, &[], &[]), Err(KvError::RowLength { what: "K", expected: 64, got: 0 }));
        assert_eq!(c.write(0, usize::MAX, &r, &r), Err(KvError::PositionOutOfRange { pos: usize::MAX, n_ctx: 4 }));
        let three = vec![0.5f32; 3 * 64];
        assert_eq!(c.write_batch(0, 2, &three, &three), Err(KvError::PositionOutOfRange { pos: 4, n_ctx: 4 }));
        c.write(1, 2, &r, &r).expect("write");
        assert_eq!(c.n_pos(), 3);
        c.truncate(1);
        assert_eq!(c.n_pos(), 1);
        c.clear();
        assert_eq!(c.n_pos(), 0);
    }
}
