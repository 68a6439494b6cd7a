//! The SIMD kernels, written once over the 128-bit vector operations of `simd128.rs`
//! (wasm32 + SIMD128: the browser path) or `sse2.rs` (x86_64 baseline: native builds).
//!
//! The idea shared by the quantized kernels: load 16 bytes of packed weights and view them as
//! eight 16-bit lanes. Lane k then holds four nibbles (two bytes) whose element indices are
//! fixed by the format, and `and` / `shr` on 16-bit lanes turn them into four i16x8 vectors of
//! small unsigned integers without any byte shuffles or sign extensions. The activations
//! (quantized exactly as the reference does, see `act_quant.rs`) are stored widened to i16 in
//! the matching element order ([`Layout`]), so each product is one `i32x4.dot_i16x8_s`.
//! Weight offsets (−8 for Q4_0, −16 for Q5_0, −32 for Q6_K) are not subtracted per element:
//! they are folded in once per block through the activation sums (Σq for Q8_0 blocks, `bsums`
//! for Q8_K).
//!
//! Integer block sums are exact. Floats are accumulated in four f32 lanes (blocks in a
//! different order than ggml's generic loop), so results equal `quant::vec_dot` up to float
//! reassociation. ggml's own wasm kernels (ggml-cpu/arch/wasm/quants.c) extend bytes to i16
//! and shuffle instead; they are the model for the functions named after them here.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use super::simd128 as arch;
#[cfg(all(target_arch = "x86_64", not(target_arch = "wasm32")))]
use super::sse2 as arch;

use super::act_quant::{ActRow, Layout};
use super::{DotFn, TILE_TOKENS};
use crate::kv_cache::KvType;
use crate::quant::{ggml_fp16_to_fp32, GgmlType};
use arch::*;
use half::f16;
use std::sync::OnceLock;

pub(super) fn layout_for(ty: GgmlType) -> Layout {
    use GgmlType::*;
    match ty {
        Q8_0 => Layout::Natural,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 => Layout::Legacy,
        Q4_K | Q5_K => Layout::K4,
        Q6_K => Layout::K6,
        _ => Layout::None,
    }
}

/// The SIMD128 kernel for weights of type `ty` (None: use the scalar one).
pub(super) fn dot_fn(ty: GgmlType) -> Option<DotFn> {
    use GgmlType::*;
    Some(match ty {
        F32 => dot_f32,
        F16 => dot_f16,
        BF16 => dot_bf16,
        Q4_0 => dot_q4_0,
        Q4_1 => dot_q4_1,
        Q5_0 => dot_q5_0,
        Q5_1 => dot_q5_1,
        Q8_0 => dot_q8_0,
        Q4_K => dot_q4_k,
        Q5_K => dot_q5_k,
        Q6_K => dot_q6_k,
        _ => return None,
    })
}

/// `GGML_CPU_FP16_TO_FP32` as a 64 Ki-entry table (what ggml uses on wasm, where there is no
/// half-precision conversion instruction); built on first use from the exact conversion.
fn f16_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| ggml_fp16_to_fp32(f16::from_bits(b))).collect())
}

/// The f16 at `p` through the table.
///
/// # Safety
/// `p` must be readable for 2 bytes and `t` must be [`f16_table`] (65536 entries).
#[inline(always)]
unsafe fn f16_at(t: &[f32], p: *const u8) -> f32 {
    *t.get_unchecked(usize::from((p as *const u16).read_unaligned()))
}

/// `x · s` per i32 lane for lanes that fit in i16 and |s| < 2¹⁵: one `dot_i16` against
/// (s, 0) pairs, much cheaper than a 32-bit multiply on x86 (`pmulld`, or its wasm lowering).
#[inline(always)]
fn mul_small(x: V, s: i32) -> V {
    dot_i16(x, splat_i32(s & 0xFFFF))
}

/// The four nibbles of each 16-bit lane of `x` as four i16x8 vectors:
/// (bits 0–3, bits 8–11, bits 4–7, bits 12–15), i.e. (low nibble of the even byte, low nibble
/// of the odd byte, high nibble of the even byte, high nibble of the odd byte).
#[inline(always)]
fn nibbles(x: V) -> (V, V, V, V) {
    let m4 = splat_i16(0x0F);
    (and(x, m4), and(shr_u16(x, 8), m4), and(shr_u16(x, 4), m4), shr_u16(x, 12))
}

// ---------------------------------------------------------------------------------------------
// legacy 32-element blocks (Layout::Legacy: per block the i16 activations of elements
// 2k, 2k+1, 16+2k, 17+2k for k = 0..8: the nibbles of lane k of the 16 quant bytes; Q8_0 in
// element order)
//
// One generic kernel computes R rows × T tokens at once (1 × 1, 2 × 1, and 2 × 4 in a prefill),
// so a token's activations are loaded once for the rows and a row's block unpacked once for
// the tokens.

/// How a legacy block type is unpacked and corrected.
#[derive(Clone, Copy)]
struct Legacy {
    /// Bytes per block.
    bytes: usize,
    /// `Σ(q + offset)·y` is computed as `Σq·y + offset·Σy` (−8 for Q4_0, −16 for Q5_0, 0).
    offset: f32,
    /// Q4_1 / Q5_1: add `m·s` per block (m the f16 at byte 2, s from the Q8_1 activations).
    min: bool,
}

/// Σ over blocks for `R` rows and `T` tokens: `unpack(block)` gives the four i16 weight
/// vectors of a block in the activation layout. A row's block is unpacked once for all `T`
/// tokens and a token's activations are loaded once for all `R` rows; each (row, token) sum
/// runs the same operations in the same order whatever `R` and `T` are, so tiles give bit for
/// bit the results of single rows.
#[inline(always)]
fn legacy_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T], l: Legacy, unpack: impl Fn(*const u8) -> (V, V, V, V)) -> [[f32; T]; R] {
    let nb = w[0].len() / l.bytes;
    for r in w.iter() {
        assert_eq!(r.len(), nb * l.bytes);
    }
    for a in a.iter() {
        assert!(a.q16.len() >= nb * 32 && a.d.len() >= nb && a.ysum.len() >= nb && (!l.min || a.s.len() >= nb));
    }
    let tab = f16_table();
    let yp = a.map(|a| a.q16.as_ptr());
    let wp = w.map(|r| r.as_ptr());
    let mut acc = [[zero(); T]; R];
    let mut corr = [[0.0f32; T]; R];
    for ib in 0..nb {
        // SAFETY: block ib of each row is within it (length asserted above); activations
        // checked above.
        unsafe {
            // [T] per token: the block's activation scale and its correction term
            let dy: [f32; T] = core::array::from_fn(|t| *a[t].d.get_unchecked(ib));
            let cy: [f32; T] = core::array::from_fn(|t| if l.min { *a[t].s.get_unchecked(ib) } else { *a[t].ysum.get_unchecked(ib) });
            // [R] per row: the block's scale, min and unpacked quants
            let mut dw = [0.0f32; R];
            let mut mw = [0.0f32; R];
            let mut x = [(zero(), zero(), zero(), zero()); R];
            for r in 0..R {
                let b = wp[r].add(ib * l.bytes);
                dw[r] = f16_at(tab, b);
                if l.min {
                    mw[r] = f16_at(tab, b.add(2));
                }
                x[r] = unpack(b);
            }
            for t in 0..T {
                let y = yp[t].add(ib * 32);
                let (y0, y1, y2, y3) = (ld16(y), ld16(y.add(8)), ld16(y.add(16)), ld16(y.add(24)));
                for r in 0..R {
                    let (x0, x1, x2, x3) = x[r];
                    let s = add_i32(add_i32(dot_i16(x0, y0), dot_i16(x1, y1)), add_i32(dot_i16(x2, y2), dot_i16(x3, y3)));
                    let scale = dw[r] * dy[t];
                    acc[r][t] = add_f32(acc[r][t], mul_f32(cvt_i32_f32(s), splat_f32(scale)));
                    if l.min {
                        corr[r][t] += mw[r] * cy[t];
                    } else if l.offset != 0.0 {
                        corr[r][t] += scale * cy[t];
                    }
                }
            }
        }
    }
    core::array::from_fn(|r| core::array::from_fn(|t| hsum_f32(acc[r][t]) + if l.min { corr[r][t] } else { l.offset * corr[r][t] }))
}

/// Adds the fifth bits (`qh`, bit j for element j) as 16 to the four nibble vectors.
#[inline(always)]
fn q5_high(qh: u32, x: (V, V, V, V)) -> (V, V, V, V) {
    let even = set_i16([1, 1 << 2, 1 << 4, 1 << 6, 1 << 8, 1 << 10, 1 << 12, 1 << 14]);
    let odd = set_i16([1 << 1, 1 << 3, 1 << 5, 1 << 7, 1 << 9, 1 << 11, 1 << 13, i16::MIN]);
    let sixteen = splat_i16(16);
    let lo = splat_i16(qh as u16 as i16);
    let hi = splat_i16((qh >> 16) as u16 as i16);
    let bit = |v: V, m: V| and(eq_i16(and(v, m), m), sixteen);
    (
        or(x.0, bit(lo, even)), // elements 2k: bits 2k
        or(x.1, bit(lo, odd)),  // elements 2k+1
        or(x.2, bit(hi, even)), // elements 16+2k: bits 16+2k
        or(x.3, bit(hi, odd)),  // elements 17+2k
    )
}

/// Mirrors `ggml_vec_dot_q4_0_q8_0`. Block: d f16, qs[16]; Σ(q−8)·y = Σq·y − 8·Σy.
#[inline(always)]
fn q4_0_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    let l = Legacy { bytes: 18, offset: -8.0, min: false };
    // SAFETY: a block has 16 quant bytes at offset 2.
    legacy_tile(w, a, l, |b| nibbles(unsafe { ld(b.add(2)) }))
}

/// Mirrors `ggml_vec_dot_q4_1_q8_1`. Block: d, m f16, qs[16]; d·dy·Σq·y + m·s.
#[inline(always)]
fn q4_1_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    let l = Legacy { bytes: 20, offset: 0.0, min: true };
    // SAFETY: a block has 16 quant bytes at offset 4.
    legacy_tile(w, a, l, |b| nibbles(unsafe { ld(b.add(4)) }))
}

/// Mirrors `ggml_vec_dot_q5_0_q8_0`. Block: d f16, qh[4], qs[16]; Σ(q−16)·y = Σq·y − 16·Σy.
#[inline(always)]
fn q5_0_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    let l = Legacy { bytes: 22, offset: -16.0, min: false };
    // SAFETY: a block has qh at offset 2 and 16 quant bytes at offset 6.
    legacy_tile(w, a, l, |b| unsafe { q5_high((b.add(2) as *const u32).read_unaligned(), nibbles(ld(b.add(6)))) })
}

/// Mirrors `ggml_vec_dot_q5_1_q8_1`. Block: d, m f16, qh[4], qs[16].
#[inline(always)]
fn q5_1_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    let l = Legacy { bytes: 24, offset: 0.0, min: true };
    // SAFETY: a block has qh at offset 4 and 16 quant bytes at offset 8.
    legacy_tile(w, a, l, |b| unsafe { q5_high((b.add(4) as *const u32).read_unaligned(), nibbles(ld(b.add(8)))) })
}

/// Mirrors `ggml_vec_dot_q8_0_q8_0`. Block: d f16, qs[32] i8; activations in element order.
#[inline(always)]
fn q8_0_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    let l = Legacy { bytes: 34, offset: 0.0, min: false };
    legacy_tile(w, a, l, |b| {
        // SAFETY: a block has 32 quant bytes at offset 2.
        let (x0, x1) = unsafe { (ld(b.add(2)), ld(b.add(18))) };
        (ext_lo_i8(x0), ext_hi_i8(x0), ext_lo_i8(x1), ext_hi_i8(x1))
    })
}

/// One-row, two-row and two-row × [`TILE_TOKENS`] entry points of the `*_tile` kernels.
macro_rules! tile_fns {
    ($($one:ident, $two:ident, $tile:ident => $k:ident;)*) => {$(
        fn $one(w: &[u8], a: &ActRow<'_>) -> f32 {
            $k([w], [a])[0][0]
        }
        fn $two(w0: &[u8], w1: &[u8], a: &ActRow<'_>) -> [f32; 2] {
            let [[v0], [v1]] = $k([w0, w1], [a]);
            [v0, v1]
        }
        fn $tile(
            w0: &[u8],
            w1: &[u8],
            a: [&ActRow<'_>; TILE_TOKENS],
        ) -> [[f32; TILE_TOKENS]; 2] {
            $k([w0, w1], a)
        }
    )*};
}

tile_fns! {
    dot_q4_0, dot2_q4_0, tile_q4_0 => q4_0_tile;
    dot_q4_1, dot2_q4_1, tile_q4_1 => q4_1_tile;
    dot_q5_0, dot2_q5_0, tile_q5_0 => q5_0_tile;
    dot_q5_1, dot2_q5_1, tile_q5_1 => q5_1_tile;
    dot_q8_0, dot2_q8_0, tile_q8_0 => q8_0_tile;
}

/// The two-row kernel and the two-row × [`TILE_TOKENS`] kernel (a prefill: each weight block
/// unpacked once for four tokens) for weights of type `ty`, where the family has them.
pub(super) fn multi_row_fns(ty: GgmlType) -> Option<(super::Dot2Fn, super::TileFn)> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => (dot2_q4_0, tile_q4_0),
        Q4_1 => (dot2_q4_1, tile_q4_1),
        Q5_0 => (dot2_q5_0, tile_q5_0),
        Q5_1 => (dot2_q5_1, tile_q5_1),
        Q8_0 => (dot2_q8_0, tile_q8_0),
        Q4_K => (dot2_q4_k, tile_q4_k),
        Q5_K => (dot2_q5_k, tile_q5_k),
        Q6_K => (dot2_q6_k, tile_q6_k),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// K-quants

/// The 12 packed scale bytes of a Q4_K / Q5_K block unpacked with ggml's kmask shuffle
/// (`ggml_vec_dot_q4_K_q8_K`): bytes 0–7 of the result are the 8 six-bit scales, bytes 8–15
/// the 8 mins.
///
/// # Safety
/// `p` must be readable for 12 bytes.
#[inline(always)]
unsafe fn scales_k4(p: *const u8) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let q = p as *const u32;
    let (u0, u1, u2) = (q.read_unaligned(), q.add(1).read_unaligned(), q.add(2).read_unaligned());
    [u0 & KMASK1, (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4), u1 & KMASK1, ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4)]
}

/// Σ mins[j]·(bsums[2j] + bsums[2j+1]): the min correction of a Q4_K / Q5_K block.
///
/// # Safety
/// `bs32` must be readable for 8 i16.
#[inline(always)]
unsafe fn mins_dot(u: &[u32; 4], bs32: *const i16) -> i32 {
    let v = ld(u.as_ptr() as *const u8);
    hsum_i32(dot_i16(ld16(bs32), ext_hi_u8(v)))
}

#[inline(always)]
fn scale_byte(u: &[u32; 4], i: usize) -> i32 {
    ((u[i / 4] >> (8 * (i % 4))) & 0xFF) as i32
}

/// Q4_K (`q5 = false`, 144-byte blocks: d, dmin f16, scales[12], qs[128]) and Q5_K
/// (`q5 = true`, 176 bytes: d, dmin, scales[12], qh[32], qs[128]) for `R` rows and `T` tokens.
/// Per 64-element chunk j, quant bytes 32j..32j+32 hold sub-block 2j in their low nibbles and
/// 2j+1 in their high nibbles; activations are in [`Layout::K4`] order. Per-lane sub-block sums
/// stay below 2¹⁵ (8 products of ≤ 31·127), as [`mul_small`] needs. A row's chunk is unpacked
/// once for all `T` tokens; each (row, token) sum runs the same operations in the same order
/// whatever `R` and `T` are.
#[inline(always)]
fn k4_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T], q5: bool) -> [[f32; T]; R] {
    let bytes = if q5 { 176 } else { 144 };
    let nb = w[0].len() / bytes;
    for r in w.iter() {
        assert_eq!(r.len(), nb * bytes);
    }
    for a in a.iter() {
        assert!(a.q16.len() >= nb * 256 && a.d.len() >= nb && a.bsums32.len() >= nb * 8);
    }
    let tab = f16_table();
    let (yp, bp) = (a.map(|a| a.q16.as_ptr()), a.map(|a| a.bsums32.as_ptr()));
    let wp = w.map(|r| r.as_ptr());
    let qs = if q5 { 48 } else { 16 };
    let mut acc = [[zero(); T]; R];
    let mut summin = [[0.0f32; T]; R];
    for ib in 0..nb {
        // SAFETY: block ib of each row is within it (lengths asserted above); activations
        // checked above.
        unsafe {
            let dy: [f32; T] = core::array::from_fn(|t| *a[t].d.get_unchecked(ib));
            let mut u = [[0u32; 4]; R];
            for r in 0..R {
                let b = wp[r].add(ib * bytes);
                u[r] = scales_k4(b.add(4));
                let dmin = f16_at(tab, b.add(2));
                for t in 0..T {
                    summin[r][t] += dmin * dy[t] * mins_dot(&u[r], bp[t].add(ib * 8)) as f32;
                }
            }
            let mut isum = [[zero(); T]; R];
            for j in 0..4 {
                for r in 0..R {
                    let b = wp[r].add(ib * bytes);
                    let q = b.add(qs + 32 * j);
                    let mut v0 = nibbles(ld(q));
                    let mut v1 = nibbles(ld(q.add(16)));
                    if q5 {
                        v0 = q5k_high(ld(b.add(16)), j as u32, v0);
                        v1 = q5k_high(ld(b.add(32)), j as u32, v1);
                    }
                    let (sc_lo, sc_hi) = (scale_byte(&u[r], 2 * j), scale_byte(&u[r], 2 * j + 1));
                    for t in 0..T {
                        let y = yp[t].add(ib * 256 + 64 * j);
                        let ys: [V; 8] = core::array::from_fn(|i| ld16(y.add(8 * i)));
                        // v.0 = elements 16v+2k, v.1 = 16v+2k+1 (sub-block 2j); v.2, v.3: +32
                        let lo = add_i32(add_i32(dot_i16(v0.0, ys[0]), dot_i16(v0.1, ys[1])), add_i32(dot_i16(v1.0, ys[2]), dot_i16(v1.1, ys[3])));
                        let hi = add_i32(add_i32(dot_i16(v0.2, ys[4]), dot_i16(v0.3, ys[5])), add_i32(dot_i16(v1.2, ys[6]), dot_i16(v1.3, ys[7])));
                        let s = add_i32(mul_small(lo, sc_lo), mul_small(hi, sc_hi));
                        isum[r][t] = add_i32(isum[r][t], s);
                    }
                }
            }
            for r in 0..R {
                let dw = f16_at(tab, wp[r].add(ib * bytes));
                for t in 0..T {
                    let d = dw * dy[t];
                    acc[r][t] = add_f32(acc[r][t], mul_f32(cvt_i32_f32(isum[r][t]), splat_f32(d)));
                }
            }
        }
    }
    core::array::from_fn(|r| core::array::from_fn(|t| hsum_f32(acc[r][t]) - summin[r][t]))
}

/// Adds the fifth bits of chunk `j` of a Q5_K block to its nibble vectors: `h` is 16 bytes of
/// `qh` as 16-bit lanes (bytes 2k, 2k+1); bit 2j of byte l belongs to the low nibble of quant
/// byte l, bit 2j+1 to its high nibble.
#[inline(always)]
fn q5k_high(h: V, j: u32, x: (V, V, V, V)) -> (V, V, V, V) {
    let s = shr_u16(h, 2 * j);
    let m = splat_i16(0x10);
    (
        or(x.0, and(shl_i16(s, 4), m)), // even byte, bit 2j
        or(x.1, and(shr_u16(s, 4), m)), // odd byte, bit 2j
        or(x.2, and(shl_i16(s, 3), m)), // even byte, bit 2j+1
        or(x.3, and(shr_u16(s, 5), m)), // odd byte, bit 2j+1
    )
}

/// Mirrors `ggml_vec_dot_q4_K_q8_K`.
#[inline(always)]
fn q4_k_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    k4_tile(w, a, false)
}

/// Mirrors `ggml_vec_dot_q5_K_q8_K`.
#[inline(always)]
fn q5_k_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    k4_tile(w, a, true)
}

/// Mirrors `ggml_vec_dot_q6_K_q8_K` for `R` rows and `T` tokens. Block: ql[128], qh[64],
/// scales[16] i8, d f16. Quants are used unsigned (0..63); Σ sc·(q−32)·y = Σ sc·q·y − 32·Σ sc·bsum.
/// A row's 64 elements are unpacked once for all `T` tokens.
#[inline(always)]
fn q6_k_tile<const R: usize, const T: usize>(w: [&[u8]; R], a: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    let nb = w[0].len() / 210;
    for r in w.iter() {
        assert_eq!(r.len(), nb * 210);
    }
    for a in a.iter() {
        assert!(a.q16.len() >= nb * 256 && a.d.len() >= nb && a.bsums.len() >= nb * 16);
    }
    let tab = f16_table();
    let (yp, bp) = (a.map(|a| a.q16.as_ptr()), a.map(|a| a.bsums.as_ptr()));
    let wp = w.map(|r| r.as_ptr());
    let m4 = splat_i16(0x0F);
    let m30 = splat_i16(0x30);
    let mut acc = [[zero(); T]; R];
    for ib in 0..nb {
        // SAFETY: block ib of each row is within it (lengths asserted above); activations
        // checked above.
        unsafe {
            let mut isum = [[zero(); T]; R];
            for r in 0..R {
                let scv = ld(wp[r].add(ib * 210 + 192));
                for t in 0..T {
                    let bs = bp[t].add(ib * 16);
                    let (bs0, bs1) = (ld16(bs), ld16(bs.add(8)));
                    let off = add_i32(dot_i16(bs0, ext_lo_i8(scv)), dot_i16(bs1, ext_hi_i8(scv)));
                    isum[r][t] = sub_i32(zero(), shl_i32(off, 5));
                }
            }
            for n in 0..2 {
                for h in 0..2 {
                    let g = 8 * n + h;
                    for r in 0..R {
                        let b = wp[r].add(ib * 210);
                        let sc = b.add(192) as *const i8;
                        let ql0 = ld(b.add(64 * n + 16 * h));
                        let ql32 = ld(b.add(64 * n + 32 + 16 * h));
                        let qh = ld(b.add(128 + 32 * n + 16 * h));
                        // element 16h + [0,1,32,33,64,65,96,97][v] + 2k of this 128-element half
                        let v0 = or(and(ql0, m4), and(shl_i16(qh, 4), m30));
                        let v1 = or(and(shr_u16(ql0, 8), m4), and(shr_u16(qh, 4), m30));
                        let v2 = or(and(ql32, m4), and(shl_i16(qh, 2), m30));
                        let v3 = or(and(shr_u16(ql32, 8), m4), and(shr_u16(qh, 6), m30));
                        let v4 = or(and(shr_u16(ql0, 4), m4), and(qh, m30));
                        let v5 = or(shr_u16(ql0, 12), and(shr_u16(qh, 8), m30));
                        let v6 = or(and(shr_u16(ql32, 4), m4), and(shr_u16(qh, 2), m30));
                        let v7 = or(shr_u16(ql32, 12), and(shr_u16(qh, 10), m30));
                        let scs = [g, g + 2, g + 4, g + 6].map(|i| i32::from(*sc.add(i)));
                        for t in 0..T {
                            let y = yp[t].add(ib * 256 + 128 * n + 64 * h);
                            let ys: [V; 8] = core::array::from_fn(|i| ld16(y.add(8 * i)));
                            // pair sums ≤ 4·63·127 < 2¹⁵, as mul_small needs
                            let p0 = add_i32(dot_i16(v0, ys[0]), dot_i16(v1, ys[1]));
                            let p1 = add_i32(dot_i16(v2, ys[2]), dot_i16(v3, ys[3]));
                            let p2 = add_i32(dot_i16(v4, ys[4]), dot_i16(v5, ys[5]));
                            let p3 = add_i32(dot_i16(v6, ys[6]), dot_i16(v7, ys[7]));
                            let s01 = add_i32(mul_small(p0, scs[0]), mul_small(p1, scs[1]));
                            let s23 = add_i32(mul_small(p2, scs[2]), mul_small(p3, scs[3]));
                            isum[r][t] = add_i32(isum[r][t], add_i32(s01, s23));
                        }
                    }
                }
            }
            for r in 0..R {
                let dw = f16_at(tab, wp[r].add(ib * 210 + 208));
                for t in 0..T {
                    let d = dw * *a[t].d.get_unchecked(ib);
                    acc[r][t] = add_f32(acc[r][t], mul_f32(cvt_i32_f32(isum[r][t]), splat_f32(d)));
                }
            }
        }
    }
    core::array::from_fn(|r| core::array::from_fn(|t| hsum_f32(acc[r][t])))
}

tile_fns! {
    dot_q4_k, dot2_q4_k, tile_q4_k => q4_k_tile;
    dot_q5_k, dot2_q5_k, tile_q5_k => q5_k_tile;
    dot_q6_k, dot2_q6_k, tile_q6_k => q6_k_tile;
}

// ---------------------------------------------------------------------------------------------
// float types (f32 lanes; ggml's SIMD paths of ggml_vec_dot_f16 etc. also accumulate in f32)

/// Four f16 (low halves of the u32 lanes) to f32: `ggml_compute_fp16_to_fp32` lane-wise.
#[inline(always)]
fn f16x4_to_f32(h32: V) -> V {
    let w = shl_i32(h32, 16);
    let sign = and(w, splat_i32(i32::MIN));
    let two_w = add_i32(w, w);
    let normalized = mul_f32(
        add_i32(shr_u32(two_w, 4), splat_i32(0xE0 << 23)),
        splat_f32(f32::from_bits(0x0780_0000)), // 2⁻¹¹²
    );
    let denormalized = sub_f32(or(shr_u32(two_w, 17), splat_i32(126 << 23)), splat_f32(0.5));
    let is_denormal = lt_u32(two_w, splat_i32(1 << 27));
    or(sign, select(denormalized, normalized, is_denormal))
}

/// `Σ x·y` over `n` pairs where `load(i)` yields 4 weights as f32 lanes starting at element i
/// and `scalar(i)` one weight.
#[inline(always)]
fn dot_floats(n: usize, y: &[f32], load: impl Fn(usize) -> V, scalar: impl Fn(usize) -> f32) -> f32 {
    assert!(y.len() >= n);
    let yp = y.as_ptr();
    let mut acc = [zero(); 4];
    let mut i = 0;
    // SAFETY: i + 16 (resp. 4) <= n <= y.len() in these loops; `load` checks its own source.
    unsafe {
        while i + 16 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = add_f32(*a, mul_f32(load(i + 4 * k), ldf(yp.add(i + 4 * k))));
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = add_f32(acc[0], mul_f32(load(i), ldf(yp.add(i))));
            i += 4;
        }
    }
    let mut s = hsum_f32(add_f32(add_f32(acc[0], acc[1]), add_f32(acc[2], acc[3])));
    while i < n {
        s += scalar(i) * y[i];
        i += 1;
    }
    s
}

/// `ggml_vec_dot_f32` (SIMD form: f32 lanes).
fn dot_f32(w: &[u8], a: &ActRow<'_>) -> f32 {
    let n = w.len() / 4;
    let p = w.as_ptr();
    // SAFETY (both closures): element i < n lies within w.
    dot_floats(n, a.f, |i| unsafe { ldf(p.add(4 * i) as *const f32) }, |i| unsafe { (p.add(4 * i) as *const f32).read_unaligned() })
}

/// `ggml_vec_dot_f16` (SIMD form; activations already rounded to f16).
fn dot_f16(w: &[u8], a: &ActRow<'_>) -> f32 {
    let n = w.len() / 2;
    let p = w.as_ptr();
    // SAFETY (both closures): element i < n lies within w.
    dot_floats(
        n,
        a.f,
        |i| unsafe { f16x4_to_f32(ld_u16x4(p.add(2 * i))) },
        |i| unsafe { ggml_fp16_to_fp32(f16::from_bits((p.add(2 * i) as *const u16).read_unaligned())) },
    )
}

/// `ggml_vec_dot_bf16` (SIMD form; activations already rounded to bf16).
fn dot_bf16(w: &[u8], a: &ActRow<'_>) -> f32 {
    let n = w.len() / 2;
    let p = w.as_ptr();
    // SAFETY (both closures): element i < n lies within w.
    dot_floats(
        n,
        a.f,
        |i| unsafe { shl_i32(ld_u16x4(p.add(2 * i)), 16) },
        |i| unsafe { f32::from_bits(u32::from((p.add(2 * i) as *const u16).read_unaligned()) << 16) },
    )
}

// ---------------------------------------------------------------------------------------------
// attention: out += a · V row

pub(super) fn axpy_fn(ty: KvType) -> super::attention::AxpyFn {
    match ty {
        KvType::F32 => axpy_f32,
        KvType::F16 => axpy_f16,
        KvType::Q8 => axpy_q8_0,
        KvType::Q4 => axpy_q4_0,
    }
}

/// `out[i] = row[i]` for a row of f16 (exact), as `ggml_fp16_to_fp32` per element.
pub(super) fn widen_f16(row: &[u8], out: &mut [f32]) {
    let n = row.len() / 2;
    assert!(out.len() >= n);
    let (p, o) = (row.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: i + 4 <= n elements of row and out.
    unsafe {
        while i + 4 <= n {
            stf(o.add(i), f16x4_to_f32(ld_u16x4(p.add(2 * i))));
            i += 4;
        }
    }
    for (o, c) in out[i..n].iter_mut().zip(row[2 * i..].chunks_exact(2)) {
        *o = ggml_fp16_to_fp32(f16::from_bits(u16::from_le_bytes([c[0], c[1]])));
    }
}

/// `o[0..4] += a · v`.
///
/// # Safety
/// `o` must be valid for 4 f32 reads and writes.
#[inline(always)]
unsafe fn madd4(o: *mut f32, a: V, v: V) {
    stf(o, add_f32(ldf(o), mul_f32(a, v)));
}

fn axpy_f32(a: f32, row: &[u8], out: &mut [f32]) {
    let n = row.len() / 4;
    assert!(out.len() >= n);
    let av = splat_f32(a);
    let (p, o) = (row.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: i + 4 <= n elements of row and out.
    unsafe {
        while i + 4 <= n {
            madd4(o.add(i), av, ldf(p.add(4 * i) as *const f32));
            i += 4;
        }
    }
    for (o, c) in out[i..n].iter_mut().zip(row[4 * i..].chunks_exact(4)) {
        *o += a * f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn axpy_f16(a: f32, row: &[u8], out: &mut [f32]) {
    let n = row.len() / 2;
    assert!(out.len() >= n);
    let av = splat_f32(a);
    let (p, o) = (row.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: i + 4 <= n elements of row and out.
    unsafe {
        while i + 4 <= n {
            madd4(o.add(i), av, f16x4_to_f32(ld_u16x4(p.add(2 * i))));
            i += 4;
        }
    }
    for (o, c) in out[i..n].iter_mut().zip(row[2 * i..].chunks_exact(2)) {
        *o += a * ggml_fp16_to_fp32(f16::from_bits(u16::from_le_bytes([c[0], c[1]])));
    }
}

/// `o[0..8] += a · (i16 lanes of v as f32)`.
///
/// # Safety
/// `o` must be valid for 8 f32 reads and writes.
#[inline(always)]
unsafe fn madd8_i16(o: *mut f32, a: V, v: V) {
    madd4(o, a, cvt_i32_f32(ext_lo_i16(v)));
    madd4(o.add(4), a, cvt_i32_f32(ext_hi_i16(v)));
}

/// Q8_0 groups: `out += (a·d) · q`.
fn axpy_q8_0(a: f32, row: &[u8], out: &mut [f32]) {
    let nb = row.len() / 34;
    assert!(out.len() >= nb * 32);
    let t = f16_table();
    let (p, o) = (row.as_ptr(), out.as_mut_ptr());
    for ib in 0..nb {
        // SAFETY: block ib is row[34ib..34ib+34], output out[32ib..32ib+32].
        unsafe {
            let b = p.add(ib * 34);
            let ad = splat_f32(a * f16_at(t, b));
            let o = o.add(ib * 32);
            for h in 0..2 {
                let q = ld(b.add(2 + 16 * h));
                madd8_i16(o.add(16 * h), ad, ext_lo_i8(q));
                madd8_i16(o.add(16 * h + 8), ad, ext_hi_i8(q));
            }
        }
    }
}

/// Q4_0 groups: `out += (a·d) · (q − 8)`; value j in the low nibble of byte j, j+16 in the high.
fn axpy_q4_0(a: f32, row: &[u8], out: &mut [f32]) {
    let nb = row.len() / 18;
    assert!(out.len() >= nb * 32);
    let t = f16_table();
    let (p, o) = (row.as_ptr(), out.as_mut_ptr());
    let m4 = splat_i16(0x0F0F);
    let eight = splat_i16(8);
    for ib in 0..nb {
        // SAFETY: block ib is row[18ib..18ib+18], output out[32ib..32ib+32].
        unsafe {
            let b = p.add(ib * 18);
            let ad = splat_f32(a * f16_at(t, b));
            let q = ld(b.add(2));
            let lo = and(q, m4); // bytes: values 0..16
            let hi = and(shr_u16(q, 4), m4); // bytes: values 16..32
            let o = o.add(ib * 32);
            for (h, v) in [lo, hi].into_iter().enumerate() {
                let o = o.add(16 * h);
                // (u8 → i16) − 8 stays exact in i16
                madd8_i16(o, ad, sub_i16(ext_lo_u8(v), eight));
                madd8_i16(o.add(8), ad, sub_i16(ext_hi_u8(v), eight));
            }
        }
    }
}
