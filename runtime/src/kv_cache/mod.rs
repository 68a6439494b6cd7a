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
use crate::quant::{ggml_fp32_to_fp16, BlockQ4_0, BlockQ8_0, GgmlType};
use serde::Serialize;

mod recent;
mod rows;
#[cfg(test)]
mod tests;

pub use recent::RecentRows;
pub(crate) use rows::stored_form;
use rows::{decode, encode};
pub use rows::{k_offset, rotate_groups};

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

    /// [`RecentRows::resume_point`] once the last batch's rows are in their slots (they move
    /// there at the next write).
    pub fn resume_point(&self, n: usize) -> usize {
        match self.pending {
            Some((layer, pos0, len)) => {
                let mut copies = self.copies.clone();
                copies.keep(layer, pos0, len);
                copies.resume_point(n)
            }
            None => self.copies.resume_point(n),
        }
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
