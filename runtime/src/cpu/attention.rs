//! Attention of one query position over the KV cache, reading the stored (possibly
//! quantized) rows in place.
//!
//! Mirrors what ggml's CPU `ggml_compute_forward_flash_attn_ext_f16` does per query row, with a
//! two-pass softmax instead of the online one:
//! - for q8 / q4 caches the query is quantized to Q8_0 (K's `vec_dot_type`, as ggml does) and
//!   each score is one integer-domain row dot product with the matmul kernels (`scalar.rs` /
//!   `simd.rs`); for f32 and f16 caches the query stays f32 (ggml rounds it to f16 for an f16
//!   cache: we do not, because models with large attention logits are very sensitive to it:
//!   on SmolLM2 rounding only the query to f16 moves the logits by 0.18 on average);
//! - `s = scale · q·k`, then with a softcap `s = softcap · tanh(s / softcap)` (ggml folds the
//!   cap into the scale the same way);
//! - softmax in f32 with max subtraction (a vectorizable Cephes `expf`, ≤ 2 ulp), sum in f64;
//! - V rows are dequantized group by group on the fly and accumulated in f32 (ggml accumulates
//!   f16 V in f16; we keep f32), then divided by the sum;
//! - a q4 cache stores rotated rows (`kv_cache::rotate_groups`): the query is rotated before
//!   it is quantized and the output rotated back (not in ggml); it stores K less an offset
//!   (`kv_cache::k_offset`), which moves all of a query's scores by the same `q·m`: the
//!   softmax ignores that, a softcap does not, so with a softcap `q·m` is added back;
//! - a quantized cache with f16 copies ([`KvCache::with_recent`]: the first positions and the
//!   query's last ones) gives those positions' scores as f32 dot products of the copy (same
//!   stored form) with the Q8_0 query's values, and accumulates their V copies with the rest,
//!   before the rotation back (not in ggml).
//!
//! Grouped-query attention: query head `h` reads KV head `h / (n_heads / n_kv_heads)`; positions
//! outer, heads inner, so each K and V row is read once per position for its whole group of
//! query heads. An f16 row read by a group of several heads is first widened to f32 (exact)
//! and the f32 kernels run per head: bit for bit what the f16 kernels give (the same
//! operations in the same order on the same values), converting each row once, not once per
//! head (a third of a long prefill's time went to those conversions on SmolLM2, 3 heads a group).

use super::act_quant::{ActForm, QuantizedActs};
use super::{dot_fn, Kernels};
use crate::kv_cache::{rotate_groups, stored_form, KvCache, KvType};
use crate::quant::{ggml_fp16_to_fp32, GgmlType};
use half::f16;

/// Reusable buffers of [`attention`].
#[derive(Default)]
pub struct AttnScratch {
    q: QuantizedActs,
    scores: Vec<f32>,
    /// The rotated query, for caches that store rotated rows.
    q_rot: Vec<f32>,
    /// [max(head_dim_k, head_dim_v)]: one f16 K or V row widened to f32.
    row: Vec<f32>,
    /// [heads per KV head]: each head's softmax denominator.
    sums: Vec<f64>,
    /// The query as a quantized cache's dot products see it, dequantized, for the rows kept
    /// as f16 copies ([`KvCache::with_recent`]).
    q_recent: QuantizedActs,
    /// [n_heads · head_dim_k]: its values.
    q_deq: Vec<f32>,
    /// An f16 cache's rows of one layer widened once for a batch of queries
    /// ([`AttnScratch::widen_batch_rows`]).
    batch_rows: Option<BatchRows>,
    /// The path of [`Kernels::Avx2`] (`avx2::attention`).
    #[cfg(target_arch = "x86_64")]
    x86: super::avx2::AttnAcc,
}

/// Positions `[lo, hi)` of one layer's f16 K and V rows, widened to f32.
#[derive(Default)]
struct BatchRows {
    layer: usize,
    lo: usize,
    hi: usize,
    /// [hi - lo][n_kv_heads][head_dim_k]
    k: Vec<f32>,
    /// [hi - lo][n_kv_heads][head_dim_v]
    v: Vec<f32>,
}

impl AttnScratch {
    /// Widens positions `[lo, hi)` of `layer`'s rows to f32 once for the batch of queries that
    /// read them next: each query of a batch would otherwise widen every row it reads again (on
    /// a long chat's prefill that was most of the time). Only an f16 cache read by groups of
    /// heads is widened at all (see the module docs); the attention is bit for bit the same.
    /// The rows stay in use until [`AttnScratch::forget_batch_rows`].
    pub fn widen_batch_rows(&mut self, kernels: Kernels, cache: &KvCache, layer: usize, n_heads: usize, lo: usize, hi: usize) {
        let n_kv = cache.n_kv_heads();
        // (the x86 path reads f16 rows itself)
        #[cfg(target_arch = "x86_64")]
        let x86 = kernels.quantized().runs_avx2();
        #[cfg(not(target_arch = "x86_64"))]
        let x86 = false;
        if x86 || cache.ty() != KvType::F16 || n_heads / n_kv <= 1 || lo >= hi {
            self.batch_rows = None;
            return;
        }
        let (dk, dv) = (cache.head_dim_k(), cache.head_dim_v());
        let widen_row = widen_fn(kernels.quantized());
        let mut rows = self.batch_rows.take().unwrap_or_default();
        rows.k.resize((hi - lo) * n_kv * dk, 0.0);
        rows.v.resize((hi - lo) * n_kv * dv, 0.0);
        for p in lo..hi {
            for g in 0..n_kv {
                let i = (p - lo) * n_kv + g;
                widen_row(cache.k_row(layer, p, g), &mut rows.k[i * dk..(i + 1) * dk]);
                widen_row(cache.v_row(layer, p, g), &mut rows.v[i * dv..(i + 1) * dv]);
            }
        }
        (rows.layer, rows.lo, rows.hi) = (layer, lo, hi);
        self.batch_rows = Some(rows);
    }

    /// Ends the use of [`AttnScratch::widen_batch_rows`]' rows (the cache changes next).
    pub fn forget_batch_rows(&mut self) {
        if let Some(rows) = &mut self.batch_rows {
            rows.hi = rows.lo;
        }
    }
}

/// Causal attention of one query position over cached positions `[start, end)` of `layer`
/// with kernel family `kernels`, the position being one of `batch_tokens` evaluated together
/// (llama.cpp's x86 build sums `p·V` in another order for a single token than for a batch:
/// [`Kernels::Avx2`] follows it).
///
/// `q` holds `n_heads · head_dim_k` values, `out` receives `n_heads · head_dim_v`. Scores are
/// `scale · q·k`, then with `softcap` `softcap · tanh(s / softcap)` (Gemma-2 style), softmax in
/// f32 with max subtraction. An empty range writes zeros.
///
/// Panics on inconsistent arguments (a bug in the caller, not a data error): `layer` out of
/// range, `end > n_ctx`, `start > end`, `n_heads` not a multiple of the KV head count, or
/// wrong `q` / `out` lengths.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    kernels: Kernels,
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    n_heads: usize,
    start: usize,
    end: usize,
    scale: f32,
    softcap: Option<f32>,
    batch_tokens: usize,
    out: &mut [f32],
    scratch: &mut AttnScratch,
) {
    let n_kv = cache.n_kv_heads();
    let (dk, dv) = (cache.head_dim_k(), cache.head_dim_v());
    assert!(layer < cache.n_layers(), "attention: layer {layer} out of range");
    assert!(start <= end && end <= cache.n_ctx(), "attention: bad range {start}..{end} (n_ctx {})", cache.n_ctx());
    assert!(n_heads > 0 && n_heads % n_kv == 0, "attention: {n_heads} heads over {n_kv} KV heads");
    assert_eq!(q.len(), n_heads * dk, "attention: q length");
    assert_eq!(out.len(), n_heads * dv, "attention: out length");
    out.fill(0.0);
    // a quantized cache's format includes its Q8 query: Kernels::Float keeps it
    let kernels = kernels.quantized();
    #[cfg(target_arch = "x86_64")]
    if kernels.runs_avx2() && softcap.is_none() && !cache.ty().is_quantized() {
        if start < end {
            // SAFETY: `runs_avx2` checked the CPU.
            unsafe { super::avx2::attention(cache, layer, q, n_heads, start, end, scale, batch_tokens > 1, out, &mut scratch.x86) };
        }
        return;
    }
    let _ = batch_tokens;
    let n = end - start;
    if n == 0 {
        return;
    }
    let group = n_heads / n_kv;
    let kty = cache.ty().ggml_type();
    // the type the query is converted to (see the module docs)
    let qty = if kty == GgmlType::F16 { GgmlType::F32 } else { kty };

    // --- scores: q·k with the matmul row kernels
    let widen = cache.ty() == KvType::F16 && group > 1;
    // the stored rows as the kernels meet them
    let row_ty = if widen { KvType::F32 } else { cache.ty() };
    let Ok(dot) = dot_fn(row_ty.ggml_type(), kernels) else { unreachable!("every KV type has a dot kernel") };
    let axpy = axpy_fn(row_ty, kernels);
    let widen_row = widen_fn(kernels);
    // with a softcap, each head's `q·m` for a cache that stores K less an offset `m`
    let q_dot_offset = |h: usize| -> f32 {
        let m = cache.k_offset(layer, h / group);
        q[h * dk..(h + 1) * dk].iter().zip(m).map(|(q, m)| q * m).sum()
    };
    let shifts: Vec<f32> = if softcap.is_some() && cache.ty().offsets_k() { (0..n_heads).map(q_dot_offset).collect() } else { Vec::new() };
    // rotated as the rows (K's offset needs nothing here: see the module docs)
    let q = stored_form(cache.ty(), q, &[], &mut scratch.q_rot);
    if scratch.q.quantize(qty, kernels, ActForm::of(qty, kernels), q, dk, n_heads).is_err() {
        unreachable!("head_dim_k is a whole number of groups (checked by KvCache::new)")
    }
    // positions whose rows a quantized cache keeps as f16 copies are read from them
    let copies = cache.copies();
    let copied = |p: usize| copies.reads_copy(p, end - 1);
    let Ok(dot_recent) = dot_fn(GgmlType::F16, kernels) else { unreachable!("f16 rows have a dot kernel") };
    let axpy_recent = axpy_fn(KvType::F16, kernels);
    if copies.recent > 0 {
        // the quantized query's values (Q8_0 d·q), as f32
        let (qs, q_deq) = (&scratch.q, &mut scratch.q_deq);
        q_deq.clear();
        for h in 0..n_heads {
            let r = qs.row(h);
            q_deq.extend(r.qs.chunks_exact(32).zip(r.d).flat_map(|(g, &d)| g.iter().map(move |&q| d * f32::from(q))));
        }
        if scratch.q_recent.quantize(GgmlType::F32, kernels, ActForm::of(GgmlType::F32, kernels), q_deq, dk, n_heads).is_err() {
            unreachable!("f32 activations take any length")
        }
    }
    let AttnScratch { q: qa, q_recent, scores, row: wide, sums, batch_rows, .. } = scratch;
    // rows widened for the whole batch, when they cover this query's
    let pre = batch_rows.as_ref().filter(|r| widen && r.layer == layer && r.lo <= start && end <= r.hi);
    // [group][n]: the scores, then the softmax numerators, of the group's heads
    scores.clear();
    scores.resize(group * n, 0.0);
    wide.resize(dk.max(dv), 0.0);
    sums.clear();
    sums.resize(group, 0.0);
    for g in 0..n_kv {
        // the group's query rows and score shifts, taken once for all positions
        let q_rows: Vec<_> = (0..group).map(|j| qa.row(g * group + j)).collect();
        let group_shifts = shifts.get(g * group..(g + 1) * group);
        for (i, p) in (start..end).enumerate() {
            if let (true, Some(k)) = (copied(p), cache.recent_k_row(layer, p, g)) {
                for j in 0..group {
                    let s = dot_recent(k, &q_recent.row(g * group + j));
                    scores[j * n + i] = match shifts.get(g * group + j) {
                        Some(shift) => (s + shift) * scale,
                        None => s * scale,
                    };
                }
                continue;
            }
            let mut k = cache.k_row(layer, p, g);
            if let Some(r) = pre {
                let i = (p - r.lo) * n_kv + g;
                k = bytemuck::cast_slice(&r.k[i * dk..(i + 1) * dk]);
            } else if widen {
                widen_row(k, &mut wide[..dk]);
                k = bytemuck::cast_slice(&wide[..dk]);
            }
            for (j, q_row) in q_rows.iter().enumerate() {
                let s = dot(k, q_row);
                scores[j * n + i] = match group_shifts {
                    Some(shifts) => (s + shifts[j]) * scale,
                    None => s * scale,
                };
            }
        }
        for (row, sum) in scores.chunks_exact_mut(n).zip(sums.iter_mut()) {
            if let Some(cap) = softcap {
                for s in row.iter_mut() {
                    *s = cap * (*s / cap).tanh();
                }
            }
            // softmax numerators; the sum (in f64) divides the output at the end
            let mut max = f32::NEG_INFINITY;
            for &s in row.iter() {
                max = max.max(s);
            }
            for s in row.iter_mut() {
                *s = exp_nonpositive(*s - max);
            }
            *sum = 0.0;
            for &e in row.iter() {
                *sum += f64::from(e);
            }
        }
        // weighted sum of V rows
        let outs = &mut out[g * group * dv..(g + 1) * group * dv];
        for (i, p) in (start..end).enumerate() {
            if let (true, Some(v)) = (copied(p), cache.recent_v_row(layer, p, g)) {
                for (j, o) in outs.chunks_exact_mut(dv).enumerate() {
                    axpy_recent(scores[j * n + i], v, o);
                }
                continue;
            }
            let mut v = cache.v_row(layer, p, g);
            if let Some(r) = pre {
                let i = (p - r.lo) * n_kv + g;
                v = bytemuck::cast_slice(&r.v[i * dv..(i + 1) * dv]);
            } else if widen {
                widen_row(v, &mut wide[..dv]);
                v = bytemuck::cast_slice(&wide[..dv]);
            }
            for (j, o) in outs.chunks_exact_mut(dv).enumerate() {
                axpy(scores[j * n + i], v, o);
            }
        }
        for (o, &sum) in outs.chunks_exact_mut(dv).zip(sums.iter()) {
            let inv = (1.0 / sum) as f32;
            for v in o.iter_mut() {
                *v *= inv;
            }
        }
    }
    if cache.ty().rotates() {
        rotate_groups(out);
    }
}

/// `eˣ` for `x ≤ 0` (0 below −87), branch-free so the softmax loop vectorizes: Cephes' `expf`
/// (range reduction by n·ln 2 in two parts, degree-6 polynomial, 2ⁿ from the exponent bits);
/// within 2 ulp of the correctly rounded value. NaN gives NaN.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x }; // (keeps NaN)
                                               // n = round(x·log2 e) by the 1.5·2²³ trick (ties to even); z's low bits hold n
    let z = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = z - 12_582_912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    let pow2n = f32::from_bits(((z.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32);
    y * pow2n
}

/// `out += a · row` for one stored V row.
pub(super) type AxpyFn = fn(f32, &[u8], &mut [f32]);

fn axpy_fn(ty: KvType, kernels: Kernels) -> AxpyFn {
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    if kernels.simd_like() {
        return super::simd::axpy_fn(ty);
    }
    let _ = kernels;
    match ty {
        KvType::F32 => axpy_f32,
        KvType::F16 => axpy_f16,
        KvType::Q8 => axpy_q8_0,
        KvType::Q4 => axpy_q4_0,
    }
}

/// Widens a stored f16 row to f32.
type WidenFn = fn(&[u8], &mut [f32]);

fn widen_fn(kernels: Kernels) -> WidenFn {
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    if kernels.simd_like() {
        return super::simd::widen_f16;
    }
    let _ = kernels;
    widen_f16
}

fn widen_f16(row: &[u8], out: &mut [f32]) {
    // `out` holds the row's values by construction; dequantize_row only fails on a mismatch.
    if crate::quant::dequantize_row(GgmlType::F16, row, out).is_err() {
        out.fill(f32::NAN);
    }
}

fn axpy_f32(a: f32, row: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
        *o += a * f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn axpy_f16(a: f32, row: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
        *o += a * ggml_fp16_to_fp32(f16::from_bits(u16::from_le_bytes([c[0], c[1]])));
    }
}

/// Dequantizes each Q8_0 group (`d·q`, as `dequantize_row_q8_0`) and accumulates.
fn axpy_q8_0(a: f32, row: &[u8], out: &mut [f32]) {
    for (blk, o) in row.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = super::scalar::rd_f16(blk, 0);
        for (o, &q) in o.iter_mut().zip(&blk[2..34]) {
            *o += a * (d * f32::from(q as i8));
        }
    }
}

/// Dequantizes each Q4_0 group (`d·(q − 8)`, as `dequantize_row_q4_0`) and accumulates.
fn axpy_q4_0(a: f32, row: &[u8], out: &mut [f32]) {
    for (blk, o) in row.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = super::scalar::rd_f16(blk, 0);
        let (lo, hi) = o.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&blk[2..18]) {
            *l += a * (d * f32::from(i16::from(q & 0x0F) - 8));
            *h += a * (d * f32::from(i16::from(q >> 4) - 8));
        }
    }
}
