//! x86-64 AVX2 + FMA + F16C kernels with the arithmetic of llama.cpp's x86 AVX2 build,
//! operation for operation: on such a CPU our logits are llama.cpp's bit for bit, where any
//! other arithmetic lands ~2 % of near-tied positions on another top-1 token (an ulp in one f32
//! sum moves an 8-bit activation quant by one, and such flips compound over the layers; see
//! docs/oracle-agreement-llama-cpp.md, which also lists how each piece was found).
//!
//! Written from ggml-cpu's x86 sources, which fix what must not change here:
//! - matmul (arch/x86/quants.c `vec_dot`s, llamafile/sgemm.cpp `tinyBLAS_Q0_AVX`, which has
//!   the same per-element order): per 32-value block, integer products summed in 8 lanes of 4
//!   consecutive elements; each lane accumulated across blocks with one fused multiply-add by
//!   the block's scale product; the lanes added as `hsum_float_8` does;
//! - K-quants in a batch (repack.cpp q4_K_8x8 gemm/gemv, tiled/ Q6_K): where the exact block
//!   integers are converted to f32 and fused, per output element;
//! - attention without flash attention, for f32/f16 caches (vec.cpp `ggml_vec_dot_f32`,
//!   `ggml_vec_soft_max_f32` with vec.h's `ggml_v_expf`, tinyBLAS for `p·V`);
//! - SwiGLU with `ggml_v_silu`; and, in `ops.rs`, the `a·b + c` GCC fused in ggml's scalar C
//!   (`-ffp-contract=fast`, seen in the build's disassembly).
//!
//! Chosen at run time ([`available`]); `simd.rs` serves the types without a kernel here.

use core::arch::x86_64::*;

use super::act_quant::ActRow;
use crate::kv_cache::{KvCache, KvType};

/// The f16 at byte `o` of `b` as f32 (F16C: exact, as `ggml_fp16_to_fp32`).
#[inline(always)]
unsafe fn rd_f16(b: &[u8], o: usize) -> f32 {
    let h = u16::from_le_bytes([b[o], b[o + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Whether this CPU has AVX2, FMA and F16C (std caches the CPUID answer).
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c")
}

/// ggml's `hsum_float_8`: upper half + lower half, then lanes (0+2, 1+3), then their sum.
#[inline(always)]
unsafe fn hsum_float_8(x: __m256) -> f32 {
    let mut res = _mm256_extractf128_ps(x, 1);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// 8 lanes of Σ (4 consecutive products) of unsigned `ax` by signed `sy` bytes, as f32
/// (`mul_sum_us8_pairs_float` without VNNI; pair sums fit i16 for every use here).
#[inline(always)]
unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
}

/// `mul_sum_i8_pairs_float`: signed × signed bytes via |x| and sign-transferred y.
#[inline(always)]
unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_us8_pairs_float(ax, sy)
}

/// 32 nibbles of a 16-byte array as bytes: low nibbles (elements 0..16) then high (16..32).
#[inline(always)]
unsafe fn bytes_from_nibbles_32(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p as *const __m128i);
    let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(bytes, _mm256_set1_epi8(0xF))
}

/// 32 bits → 32 bytes of 0x00 / 0xFF (`bytes_from_bits_32`).
#[inline(always)]
unsafe fn bytes_from_bits_32(bits: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1))
}

/// `get_scale_shuffle(is)` applied: scales[2·is] in i16 lanes 0..8, scales[2·is + 1] in 8..16.
#[inline(always)]
unsafe fn scale_shuffle(scales: __m128i, is: usize) -> __m256i {
    let lo = (2 * is) as i8;
    let hi = (2 * is + 1) as i8;
    let shuf = _mm_set_epi8(hi, hi, hi, hi, hi, hi, hi, hi, lo, lo, lo, lo, lo, lo, lo, lo);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf))
}

/// `ggml_vec_dot_q6_K_q8_K` (AVX2). block_q6_K: ql [128], qh [64], scales [16] i8, d f16
/// (210 bytes); the −32 offset enters as `32 · Σ scale · bsum` per lane.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_q8_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let m15 = _mm256_set1_epi8(15);
    let mut acc = _mm256_setzero_ps();
    for (i, b) in w.chunks_exact(210).enumerate() {
        let d = a.d[i] * rd_f16(b, 208);
        let mut q4 = b.as_ptr();
        let mut qh = b.as_ptr().add(128);
        let mut q8 = a.qs.as_ptr().add(256 * i);
        let q8sums = _mm256_loadu_si256(a.bsums.as_ptr().add(16 * i) as *const __m256i);
        let scales = _mm_loadu_si128(b.as_ptr().add(192) as *const __m128i);
        let scales_16 = _mm256_cvtepi8_epi16(scales);
        let q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales_16), 5);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..2 {
            let q4bits1 = _mm256_loadu_si256(q4 as *const __m256i);
            let q4bits2 = _mm256_loadu_si256(q4.add(32) as *const __m256i);
            q4 = q4.add(64);
            let q4bits_h = _mm256_loadu_si256(qh as *const __m256i);
            qh = qh.add(32);
            let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m3), 4);
            let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(12)), 2);
            let q4h_2 = _mm256_and_si256(q4bits_h, _mm256_set1_epi8(48));
            let q4h_3 = _mm256_srli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(-64)), 2);
            let q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0);
            let q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1);
            let q4_2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), q4h_2);
            let q4_3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), q4h_3);
            let q8_0 = _mm256_loadu_si256(q8 as *const __m256i);
            let q8_1 = _mm256_loadu_si256(q8.add(32) as *const __m256i);
            let q8_2 = _mm256_loadu_si256(q8.add(64) as *const __m256i);
            let q8_3 = _mm256_loadu_si256(q8.add(96) as *const __m256i);
            q8 = q8.add(128);
            let p16_0 = _mm256_madd_epi16(scale_shuffle(scales, 4 * j), _mm256_maddubs_epi16(q4_0, q8_0));
            let p16_1 = _mm256_madd_epi16(scale_shuffle(scales, 4 * j + 1), _mm256_maddubs_epi16(q4_1, q8_1));
            let p16_2 = _mm256_madd_epi16(scale_shuffle(scales, 4 * j + 2), _mm256_maddubs_epi16(q4_2, q8_2));
            let p16_3 = _mm256_madd_epi16(scale_shuffle(scales, 4 * j + 3), _mm256_maddubs_epi16(q4_3, q8_3));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_2, p16_3));
        }
        sumi = _mm256_sub_epi32(sumi, q8sclsub);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc)
}

// ---------------------------------------------------------------------------------------------
// K-quant products of a batch. On x86 AVX2 a batch of K-quant weights never meets `vec_dot`
// in llama.cpp: Q4_K matrices with a multiple of 8 rows are repacked at load (`repack.cpp`,
// q4_K_8x8: `ggml_gemm_q4_K_8x8_q8_K` for the tokens in groups of 4, `ggml_gemv_...` for the
// rest), and Q6_K (like other K-quants) goes to the tiled matmul (`tiled/`) from 8 tokens
// on. Their integer sums are exact; what fixes the floats is where they are converted and
// fused, reproduced below per output element.

/// Σ over 32 elements of unsigned weight bytes (< 64) times i8 activations (exact).
#[inline(always)]
unsafe fn dot_u8_i8_32(w: __m256i, a: *const i8) -> i32 {
    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_loadu_si256(a as *const __m256i)), _mm256_set1_epi16(1));
    hsum_i32_8(p)
}

#[inline(always)]
unsafe fn hsum_i32_8(a: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// One Q4_K block (144 bytes: d, dmin f16, scales [12], qs [128]) against Q8_K activations
/// block `i`: per 64-element pair `j` of sub-blocks, `(Σ scale·dot, Σ min·bsum)` (exact).
#[inline(always)]
unsafe fn q4_k_pairs(b: &[u8], a: &ActRow<'_>, i: usize) -> [(i32, i32); 4] {
    let mut sc = [0u8; 12];
    sc.copy_from_slice(&b[4..16]);
    let q8 = a.qs.as_ptr().add(256 * i);
    let bs = &a.bsums[16 * i..16 * i + 16];
    let m15 = _mm256_set1_epi8(15);
    // (loops, not closures: a closure would not inherit the target features)
    let mut out = [(0i32, 0i32); 4];
    for (j, o) in out.iter_mut().enumerate() {
        let (s0, m0) = crate::quant::get_scale_min_k4(2 * j, &sc);
        let (s1, m1) = crate::quant::get_scale_min_k4(2 * j + 1, &sc);
        let qs = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * j) as *const __m256i);
        let d0 = dot_u8_i8_32(_mm256_and_si256(qs, m15), q8.add(64 * j));
        let d1 = dot_u8_i8_32(_mm256_and_si256(_mm256_srli_epi16(qs, 4), m15), q8.add(64 * j + 32));
        let b0 = i32::from(bs[4 * j]) + i32::from(bs[4 * j + 1]);
        let b1 = i32::from(bs[4 * j + 2]) + i32::from(bs[4 * j + 3]);
        *o = (i32::from(s0) * d0 + i32::from(s1) * d1, i32::from(m0) * b0 + i32::from(m1) * b1);
    }
    out
}

/// Σ of 4 i32 lanes.
#[inline(always)]
unsafe fn hsum_i32_4(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32(v, 0b10_11_00_01)))
}

/// `ggml_gemm_q4_K_8x8_q8_K`: one fused multiply-add per 64-element sub-block pair,
/// scales and mins in two accumulators subtracted at the end.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_gemm(w: &[u8], a: &ActRow<'_>) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (i, b) in w.chunks_exact(144).enumerate() {
        let dd = rd_f16(b, 0) * a.d[i];
        let dm = rd_f16(b, 2) * a.d[i];
        for (s, m) in q4_k_pairs(b, a, i) {
            acc = (s as f32).mul_add(dd, acc);
            acc_min = (m as f32).mul_add(dm, acc_min);
        }
    }
    acc - acc_min
}

/// `ggml_gemv_q4_K_8x8_q8_K`: the same, one fused multiply-add per 256-element block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_gemv(w: &[u8], a: &ActRow<'_>) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (i, b) in w.chunks_exact(144).enumerate() {
        let dd = rd_f16(b, 0) * a.d[i];
        let dm = rd_f16(b, 2) * a.d[i];
        let (s, m) = q4_k_pairs(b, a, i).iter().fold((0, 0), |(x, y), &(s, m)| (x + s, y + m));
        acc = (s as f32).mul_add(dd, acc);
        acc_min = (m as f32).mul_add(dm, acc_min);
    }
    acc - acc_min
}

/// `tiled_run_microtile_avx2` for Q6_K: per block the exact integer Σ scale·(q − 32)·q8,
/// times the weight's d, then fused with the activation's d into the sum.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_tiled(w: &[u8], a: &ActRow<'_>) -> f32 {
    let m15 = _mm256_set1_epi8(15);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = 0.0f32;
    for (i, b) in w.chunks_exact(210).enumerate() {
        let q8 = a.qs.as_ptr().add(256 * i);
        let bs = &a.bsums[16 * i..16 * i + 16];
        let sc = &b[192..208];
        let mut s1 = 0i32;
        for j in 0..2 {
            let ql0 = _mm256_loadu_si256(b.as_ptr().add(64 * j) as *const __m256i);
            let ql1 = _mm256_loadu_si256(b.as_ptr().add(64 * j + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * j) as *const __m256i);
            // the four 32-element runs of this half: (low bits, high-bit shift)
            let parts = [
                (_mm256_and_si256(ql0, m15), 0),
                (_mm256_and_si256(ql1, m15), 2),
                (_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m15), 4),
                (_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m15), 6),
            ];
            for (k, (lo, sh)) in parts.into_iter().enumerate() {
                let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(sh)), m3);
                let q = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
                // two 16-element sub-blocks of their own scale
                let g = 8 * j + 2 * k;
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256(q8.add(128 * j + 32 * k) as *const __m256i)), _mm256_set1_epi16(1));
                let lo4 = hsum_i32_4(_mm256_castsi256_si128(p));
                let hi4 = hsum_i32_4(_mm256_extracti128_si256(p, 1));
                s1 += i32::from(sc[g] as i8) * (lo4 - 32 * i32::from(bs[g]));
                s1 += i32::from(sc[g + 1] as i8) * (hi4 - 32 * i32::from(bs[g + 1]));
            }
        }
        let res = rd_f16(b, 208) * s1 as f32;
        acc = res.mul_add(a.d[i], acc);
    }
    acc
}

/// `ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q8_0_q8_0` and `ggml_vec_dot_q5_0_q8_0` (AVX2)
/// for `R` rows × `T` tokens at once (each weight block unpacked once for all tokens): every
/// output element keeps its own 8-lane accumulator and ggml's operations in ggml's order, so
/// one row and one token, a pair or a tile give the same bits (tested against a scalar model).
/// Q4_1's `m·s` term is fused into its own sum (GCC contracts `summs += m*s`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Legacy {
    Q4_1,
    Q8_0,
    Q5_0,
}

impl Legacy {
    const fn block_bytes(self) -> usize {
        match self {
            Legacy::Q4_1 => 20,
            Legacy::Q8_0 => 34,
            Legacy::Q5_0 => 22,
        }
    }
}

#[inline(always)]
unsafe fn legacy_tile<const R: usize, const T: usize>(kind: Legacy, rows: [&[u8]; R], acts: [&ActRow<'_>; T]) -> [[f32; T]; R] {
    let bb = kind.block_bytes();
    let nb = rows[0].len() / bb;
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut summs = [[0.0f32; T]; R];
    for i in 0..nb {
        for r in 0..R {
            let b = rows[r].as_ptr().add(i * bb);
            let blk = core::slice::from_raw_parts(b, bb);
            let dx = rd_f16(blk, 0);
            // the weight bytes: unsigned nibbles for Q4_1, signed values otherwise
            let qx = match kind {
                Legacy::Q4_1 => bytes_from_nibbles_32(b.add(4)),
                Legacy::Q8_0 => _mm256_loadu_si256(b.add(2) as *const __m256i),
                Legacy::Q5_0 => {
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    let hi = _mm256_andnot_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0xF0u8 as i8));
                    _mm256_or_si256(bytes_from_nibbles_32(b.add(6)), hi)
                }
            };
            for t in 0..T {
                let a = acts[t];
                let qy = _mm256_loadu_si256(a.qs.as_ptr().add(32 * i) as *const __m256i);
                let xy = if kind == Legacy::Q4_1 {
                    summs[r][t] = rd_f16(blk, 2).mul_add(a.s[i], summs[r][t]);
                    mul_sum_us8_pairs_float(qx, qy)
                } else {
                    mul_sum_i8_pairs_float(qx, qy)
                };
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * a.d[i]), xy, acc[r][t]);
            }
        }
    }
    // (loops, not closures: a closure would not inherit the target features)
    let mut out = [[0.0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_float_8(acc[r][t]) + if kind == Legacy::Q4_1 { summs[r][t] } else { 0.0 };
        }
    }
    out
}

// Safe entry points for `DotFn`, `Dot2Fn`, `TileFn`. SAFETY (every `unsafe` call below):
// these are handed out only where [`available`] said yes, and the slices are whole blocks of
// equal length (checked by `QMatrix::new` / `QuantizedActs`).
macro_rules! legacy_fns {
    ($one:ident, $two:ident, $tile:ident, $kind:expr) => {
        fn $one(w: &[u8], a: &ActRow<'_>) -> f32 {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn go(w: &[u8], a: &ActRow<'_>) -> f32 {
                legacy_tile::<1, 1>($kind, [w], [a])[0][0]
            }
            unsafe { go(w, a) }
        }
        fn $two(w0: &[u8], w1: &[u8], a: &ActRow<'_>) -> [f32; 2] {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn go(w0: &[u8], w1: &[u8], a: &ActRow<'_>) -> [f32; 2] {
                let [[x], [y]] = legacy_tile::<2, 1>($kind, [w0, w1], [a]);
                [x, y]
            }
            unsafe { go(w0, w1, a) }
        }
        fn $tile(w0: &[u8], w1: &[u8], a: [&ActRow<'_>; super::TILE_TOKENS]) -> [[f32; super::TILE_TOKENS]; 2] {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn go(w0: &[u8], w1: &[u8], a: [&ActRow<'_>; super::TILE_TOKENS]) -> [[f32; super::TILE_TOKENS]; 2] {
                legacy_tile::<2, { super::TILE_TOKENS }>($kind, [w0, w1], a)
            }
            unsafe { go(w0, w1, a) }
        }
    };
}
legacy_fns!(dot_q4_1, two_q4_1, tile_q4_1, Legacy::Q4_1);
legacy_fns!(dot_q8_0, two_q8_0, tile_q8_0, Legacy::Q8_0);
legacy_fns!(dot_q5_0, two_q5_0, tile_q5_0, Legacy::Q5_0);

/// Row-pair and tile kernels with the single-row kernels' arithmetic, where there are.
pub(crate) fn multi_row_fns(ty: crate::quant::GgmlType) -> Option<(super::Dot2Fn, super::TileFn)> {
    use crate::quant::GgmlType as T;
    if !available() {
        return None;
    }
    Some(match ty {
        T::Q4_1 => (two_q4_1, tile_q4_1),
        T::Q8_0 => (two_q8_0, tile_q8_0),
        T::Q5_0 => (two_q5_0, tile_q5_0),
        _ => return None,
    })
}

fn dot_q6_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    unsafe { q6_k_q8_k(w, a) }
}
fn dot_q6_k_tiled(w: &[u8], a: &ActRow<'_>) -> f32 {
    unsafe { q6_k_tiled(w, a) }
}
fn dot_q4_k_gemm(w: &[u8], a: &ActRow<'_>) -> f32 {
    unsafe { q4_k_gemm(w, a) }
}
fn dot_q4_k_gemv(w: &[u8], a: &ActRow<'_>) -> f32 {
    unsafe { q4_k_gemv(w, a) }
}

/// The kernels of a product of `rows` × `n_tokens` as llama.cpp's x86 AVX2 build picks them.
pub(crate) struct BatchDots {
    /// The kernel of the tokens before `rest_from`.
    pub one: super::DotFn,
    pub rest_from: usize,
    /// The kernel of the tokens from `rest_from` on.
    pub rest: super::DotFn,
    /// The first tokens whose Q8_K activations x86's `ggml_quantize_mat_q8_K_4x8` makes
    /// (the repacked Q4_K gemm's).
    pub q8k_4x8_tokens: usize,
}

pub(crate) fn batch_dot_fns(ty: crate::quant::GgmlType, rows: usize, n_tokens: usize) -> Option<BatchDots> {
    use crate::quant::GgmlType as T;
    if !available() {
        return None;
    }
    let all = |f| BatchDots { one: f, rest_from: n_tokens, rest: f, q8k_4x8_tokens: 0 };
    match ty {
        // repacked (rows a multiple of 8): gemm for the tokens in groups of four, if more
        // than three, then gemv
        T::Q4_K if rows % 8 == 0 => {
            let from = if n_tokens > 3 { n_tokens - n_tokens % 4 } else { 0 };
            Some(BatchDots { one: dot_q4_k_gemm, rest_from: from, rest: dot_q4_k_gemv, q8k_4x8_tokens: from })
        }
        // the tiled matmul takes batches of 8 tokens and more
        T::Q6_K if n_tokens >= 8 => Some(all(dot_q6_k_tiled)),
        _ => dot_fn(ty).map(all),
    }
}

/// The ggml-AVX2-order kernel for weights of type `ty`, where there is one.
pub(crate) fn dot_fn(ty: crate::quant::GgmlType) -> Option<super::DotFn> {
    use crate::quant::GgmlType as T;
    if !available() {
        return None;
    }
    Some(match ty {
        T::Q4_1 => dot_q4_1,
        T::Q8_0 => dot_q8_0,
        T::Q5_0 => dot_q5_0,
        T::Q6_K => dot_q6_k,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Element-wise: ggml's AVX2 `ggml_v_expf` / `ggml_v_silu` (ggml-cpu/vec.h, from ARM's
// optimized-routines expf: ≤ 1.5 ulp), used by `ggml_vec_swiglu_f32` and
// `ggml_vec_soft_max_f32` on 8 values at a time, with libm `expf` for the tail.

#[inline(always)]
unsafe fn splat(bits: u32) -> __m256 {
    _mm256_set1_ps(f32::from_bits(bits))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn v_expf(x: __m256) -> __m256 {
    let r = splat(0x4b40_0000); // 0x1.8p23
    let z = _mm256_fmadd_ps(x, splat(0x3fb8_aa3b), r); // log2 e
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        splat(0x35bf_be8e),                         // ln 2, low part
        _mm256_fnmadd_ps(n, splat(0x3f31_7200), x), // ln 2, high part
    );
    let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    let c = _mm256_castps_si256(_mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0), _CMP_GT_OQ));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(splat(0x3c07_2010), b, splat(0x3d2b_9f17)), u, _mm256_fmadd_ps(splat(0x3e2a_af33), b, splat(0x3eff_fedb))),
        u,
        _mm256_mul_ps(splat(0x3f7f_fff6), b),
    );
    if _mm256_movemask_ps(_mm256_castsi256_ps(c)) == 0 {
        return _mm256_fmadd_ps(j, k, k);
    }
    let g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)), _mm256_set1_epi32(0x8200_0000u32 as i32));
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    let d = _mm256_castps_si256(_mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0), _CMP_GT_OQ));
    let d = _mm256_castsi256_ps(d);
    let c = _mm256_castsi256_ps(c);
    _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(d, _mm256_or_ps(_mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)), _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)))),
    )
}

/// One rope pair `(i0, i1)` of every head of `x` (rows of `head_dim`) rotated by (c, s), as
/// GCC compiled ggml's `rotate_pairs` in the AVX2 build: `x0·c − x1·s` and `x0·s + x1·c` each
/// with one fused multiply-add (vfmaddsub for adjacent pairs, vfmsub/vfmadd for halves: the
/// same roundings).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rope_pairs(x: &mut [f32], head_dim: usize, i0: usize, i1: usize, c: f32, s: f32) {
    for h in x.chunks_exact_mut(head_dim) {
        let (x0, x1) = (h[i0], h[i1]);
        h[i0] = x0.mul_add(c, -(x1 * s));
        h[i1] = x0.mul_add(s, x1 * c);
    }
}

/// `ggml_vec_swiglu_f32` of the AVX2 build: `out = silu(gate) · up`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len().min(gate.len()).min(up.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm256_loadu_ps(gate.as_ptr().add(i));
        // ggml_v_silu: x / (1 + v_expf(0 - x))
        let e = v_expf(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i))));
        i += 8;
    }
    for k in i..n {
        out[k] = super::ops::silu(gate[k]) * up[k];
    }
}

// ---------------------------------------------------------------------------------------------
// Attention over an f32 (or f16) KV cache as llama.cpp's graph computes it without flash attention:
// `kq = mul_mat(K, Q)` (ggml_vec_dot_f32 per score), `soft_max_ext` (scale, mask, v_expf,
// chunk sums into an f64, then `p *= (float)(1/sum)`), `kqv = mul_mat(Vᵀ, kq)` (tinyBLAS
// over positions for a batch of ≥ 2 tokens, ggml_vec_dot_f32 for one). Positions are cache
// cells: masked cells (outside [start, end)) contribute exact zeros, so only their lane
// within a vector (the position modulo 8 or 32) matters, which we keep.

/// `ggml_vec_dot_f32` (AVX2): 4 accumulators × 8 lanes over chunks of 32, reduced as
/// `GGML_F32x8_REDUCE`, leftovers fused one by one.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_f32_impl(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let np = n & !31;
    let mut sum = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (j, s) in sum.iter_mut().enumerate() {
            let ax = _mm256_loadu_ps(x.as_ptr().add(i + 8 * j));
            let ay = _mm256_loadu_ps(y.as_ptr().add(i + 8 * j));
            *s = _mm256_fmadd_ps(ax, ay, *s);
        }
        i += 32;
    }
    let mut sumf = reduce_f32x8x4(sum);
    for k in np..n {
        sumf = x[k].mul_add(y[k], sumf);
    }
    sumf
}

/// `GGML_F32x8_REDUCE` of four accumulators.
#[inline(always)]
unsafe fn reduce_f32x8x4(s: [__m256; 4]) -> f32 {
    let s0 = _mm256_add_ps(s[0], s[2]);
    let s1 = _mm256_add_ps(s[1], s[3]);
    let s0 = _mm256_add_ps(s0, s1);
    let t0 = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

/// Scratch of [`attention`].
#[derive(Default)]
pub(crate) struct AttnAcc {
    /// [heads per KV head × (end − start)]: scores, then probabilities
    p: Vec<f32>,
    /// [heads per KV head × slots × head_dim_v]: V accumulators, one row per lane slot (8 or 32)
    acc: Vec<f32>,
    /// [max(head_dim_k, head_dim_v)]: a cached row decoded to f32
    row: Vec<f32>,
}

/// Row `pos` of KV head `g` of an f32 or f16 cache as f32: an f32 row in place when aligned,
/// else converted into `buf` (exactly).
fn cached_row<'a>(cache: &'a KvCache, layer: usize, pos: usize, g: usize, v: bool, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let bytes = if v { cache.v_row(layer, pos, g) } else { cache.k_row(layer, pos, g) };
    if cache.ty() == KvType::F32 {
        if let Ok(r) = bytemuck::try_cast_slice(bytes) {
            return r;
        }
    }
    buf.resize(if v { cache.head_dim_v() } else { cache.head_dim_k() }, 0.0);
    if cache.ty() == KvType::F16 {
        // SAFETY: `available()` includes F16C; `bytes` holds buf.len() halves.
        unsafe { widen_f16(bytes, buf) };
    } else if v {
        cache.read_v(layer, pos, g, buf);
    } else {
        cache.read_k(layer, pos, g, buf);
    }
    buf
}

/// f16 → f32 (exact, as `ggml_fp16_to_fp32`), 8 at a time with F16C's `vcvtph2ps`: the
/// portable `simd::widen_f16` (SSE2 bit arithmetic) took 18 % of a 558-token SmolLM2 prefill
/// here, against ~4 % for this.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_f16(src: &[u8], out: &mut [f32]) {
    let n = out.len().min(src.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    for (o, c) in out[i..n].iter_mut().zip(src[2 * i..].chunks_exact(2)) {
        *o = crate::quant::ggml_fp16_to_fp32(half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])));
    }
}

/// One query position's attention over cached positions `[start, end)` of `layer`, every
/// head; `batch` says whether the position was evaluated in a batch of ≥ 2 tokens (tinyBLAS
/// order for V) or alone (vec_dot order). `out`: `[n_heads × head_dim_v]`. An f16 cache is
/// read as the f32 values it stores (llama.cpp would round the query to f16 for its f16 dot
/// products; we keep our f16 cache a storage format of the f32 arithmetic).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attention(
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    n_heads: usize,
    start: usize,
    end: usize,
    scale: f32,
    batch: bool,
    out: &mut [f32],
    s: &mut AttnAcc,
) {
    let (dk, dv) = (cache.head_dim_k(), cache.head_dim_v());
    let group = n_heads / cache.n_kv_heads();
    let n = end - start;
    let slots = if batch { 8 } else { 32 };
    let AttnAcc { p: probs, acc, row } = s;
    probs.resize(group * n, 0.0);
    acc.resize(group * slots * dv, 0.0);
    for g in 0..cache.n_kv_heads() {
        // scores: (k·q) · scale (+ mask 0), each K row decoded once for the group
        for (i, p) in (start..end).enumerate() {
            let k = cached_row(cache, layer, p, g, false, row);
            for j in 0..group {
                let h = g * group + j;
                probs[j * n + i] = vec_dot_f32_impl(k, &q[h * dk..(h + 1) * dk]) * scale;
            }
        }
        for pj in probs.chunks_exact_mut(n) {
            let max = pj.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            // ggml_vec_soft_max_f32: exp over chunks of 8 cells, each chunk's hsum added in f64
            let mut sum = 0.0f64;
            let mut c = start & !7;
            while c < end {
                let mut buf = [f32::NEG_INFINITY; 8];
                for (l, b) in buf.iter_mut().enumerate() {
                    if (start..end).contains(&(c + l)) {
                        *b = pj[c + l - start];
                    }
                }
                let val = v_expf(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), _mm256_set1_ps(max)));
                _mm256_storeu_ps(buf.as_mut_ptr(), val);
                for (l, &b) in buf.iter().enumerate() {
                    if (start..end).contains(&(c + l)) {
                        pj[c + l - start] = b;
                    }
                }
                sum += f64::from(hsum_float_8(val));
                c += 8;
            }
            let inv = (1.0 / sum) as f32;
            for v in pj.iter_mut() {
                *v *= inv;
            }
        }
        // V: per head, slot (cell mod slots) accumulators, fused, in cell order
        acc.fill(0.0);
        for (i, p) in (start..end).enumerate() {
            let v = cached_row(cache, layer, p, g, true, row);
            for j in 0..group {
                let a = &mut acc[(j * slots + p % slots) * dv..(j * slots + p % slots + 1) * dv];
                let wj = probs[j * n + i];
                let w = _mm256_set1_ps(wj);
                let mut d = 0;
                while d + 8 <= dv {
                    let o = a.as_mut_ptr().add(d);
                    _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_loadu_ps(v.as_ptr().add(d)), w, _mm256_loadu_ps(o)));
                    d += 8;
                }
                for d in d..dv {
                    a[d] = v[d].mul_add(wj, a[d]);
                }
            }
        }
        for j in 0..group {
            let h = g * group + j;
            let lanes = &acc[j * slots * dv..(j + 1) * slots * dv];
            for (d, o) in out[h * dv..(h + 1) * dv].iter_mut().enumerate() {
                let lane = |m: usize| lanes[m * dv + d];
                *o = if batch {
                    // tinyBLAS hsum(__m256): (hi + lo), then (0+2) + (1+3)
                    let t: [f32; 4] = core::array::from_fn(|m| lane(m + 4) + lane(m));
                    (t[0] + t[2]) + (t[1] + t[3])
                } else {
                    // GGML_F32x8_REDUCE over accumulators j (slots 8j..8j+8)
                    let r: [f32; 8] = core::array::from_fn(|m| (lane(m) + lane(16 + m)) + (lane(8 + m) + lane(24 + m)));
                    let t0: [f32; 4] = core::array::from_fn(|m| r[m] + r[m + 4]);
                    (t0[0] + t0[1]) + (t0[2] + t0[3])
                };
            }
        }
    }
}
