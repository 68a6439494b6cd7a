//! Portable row dot products reading packed GGUF blocks in place.
//!
//! Each kernel mirrors ggml's generic `ggml_vec_dot_<w>_<act>_generic` (ggml-cpu/quants.c;
//! `ggml_vec_dot_f32/f16/bf16` of ggml-cpu/vec.cpp for the float types): integer sums are
//! exact whatever their order, and the float operations happen in the C's order and
//! precision, so results are bit-identical to `quant::vec_dot` (tested). The inner loops are
//! fixed-length integer loops that LLVM autovectorizes; nothing is allocated or copied.

use super::act_quant::ActRow;
use crate::quant::{ggml_bf16_to_fp32, ggml_fp16_to_fp32, GgmlType};
use half::{bf16, f16};

pub(super) fn dot_fn(ty: GgmlType) -> Option<super::DotFn> {
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
        Q2_K => dot_q2_k,
        Q3_K => dot_q3_k,
        Q4_K => dot_q4_k,
        Q5_K => dot_q5_k,
        Q6_K => dot_q6_k,
        _ => return None,
    })
}

/// The little-endian f16 at byte `o` of `b`, as f32 (`GGML_CPU_FP16_TO_FP32`).
#[inline(always)]
pub(super) fn rd_f16(b: &[u8], o: usize) -> f32 {
    ggml_fp16_to_fp32(f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])))
}

/// The first `N` bytes of `s` as an array (callers slice exactly `N` bytes; a shorter slice
/// cannot happen and would read zeros).
#[inline(always)]
pub(super) fn arr<const N: usize>(s: &[u8]) -> &[u8; N] {
    s.first_chunk::<N>().unwrap_or(&[0; N])
}

#[inline(always)]
fn arr_i8<const N: usize>(s: &[i8]) -> &[i8; N] {
    s.first_chunk::<N>().unwrap_or(&[0; N])
}

// ---------------------------------------------------------------------------------------------
// float types: products in f32, summed in f64 in element order (the scalar `ggml_vec_dot_*`)

/// Mirrors the scalar path of `ggml_vec_dot_f32`.
fn dot_f32(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f64;
    for (c, &y) in w.chunks_exact(4).zip(a.f) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        sumf += f64::from(x * y);
    }
    sumf as f32
}

/// Mirrors the scalar path of `ggml_vec_dot_f16` (activations already rounded to f16).
fn dot_f16(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f64;
    for (c, &y) in w.chunks_exact(2).zip(a.f) {
        let x = ggml_fp16_to_fp32(f16::from_bits(u16::from_le_bytes([c[0], c[1]])));
        sumf += f64::from(x * y);
    }
    sumf as f32
}

/// Mirrors the scalar tail of `ggml_vec_dot_bf16` (activations already rounded to bf16).
fn dot_bf16(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f64;
    for (c, &y) in w.chunks_exact(2).zip(a.f) {
        let x = ggml_bf16_to_fp32(bf16::from_bits(u16::from_le_bytes([c[0], c[1]])));
        sumf += f64::from(x * y);
    }
    sumf as f32
}

// ---------------------------------------------------------------------------------------------
// legacy 32-element blocks

/// Mirrors `ggml_vec_dot_q4_0_q8_0_generic`. Block: d f16, qs[16].
fn dot_q4_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for ((blk, y), &dy) in w.chunks_exact(18).zip(a.qs.chunks_exact(32)).zip(a.d) {
        let qs = arr::<16>(&blk[2..]);
        let y = arr_i8::<32>(y);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..16 {
            sumi0 += (i32::from(qs[j] & 0x0F) - 8) * i32::from(y[j]);
            sumi1 += (i32::from(qs[j] >> 4) - 8) * i32::from(y[j + 16]);
        }
        sumf += (sumi0 + sumi1) as f32 * rd_f16(blk, 0) * dy;
    }
    sumf
}

/// Mirrors `ggml_vec_dot_q4_1_q8_1_generic`. Block: d, m f16, qs[16].
fn dot_q4_1(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (((blk, y), &dy), &sy) in w.chunks_exact(20).zip(a.qs.chunks_exact(32)).zip(a.d).zip(a.s) {
        let qs = arr::<16>(&blk[4..]);
        let y = arr_i8::<32>(y);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..16 {
            sumi0 += i32::from(qs[j] & 0x0F) * i32::from(y[j]);
            sumi1 += i32::from(qs[j] >> 4) * i32::from(y[j + 16]);
        }
        sumf += (rd_f16(blk, 0) * dy) * (sumi0 + sumi1) as f32 + rd_f16(blk, 2) * sy;
    }
    sumf
}

/// The 32 fifth bits of a Q5 block as 0/16 per element.
#[inline(always)]
fn q5_high(qh: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    for (j, o) in h.iter_mut().enumerate() {
        *o = (((qh >> j) & 1) << 4) as u8;
    }
    h
}

/// Mirrors `ggml_vec_dot_q5_0_q8_0_generic`. Block: d f16, qh[4], qs[16].
fn dot_q5_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for ((blk, y), &dy) in w.chunks_exact(22).zip(a.qs.chunks_exact(32)).zip(a.d) {
        let h = q5_high(u32::from_le_bytes(*arr::<4>(&blk[2..])));
        let qs = arr::<16>(&blk[6..]);
        let y = arr_i8::<32>(y);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..16 {
            sumi0 += (i32::from((qs[j] & 0x0F) | h[j]) - 16) * i32::from(y[j]);
            sumi1 += (i32::from((qs[j] >> 4) | h[j + 16]) - 16) * i32::from(y[j + 16]);
        }
        sumf += (rd_f16(blk, 0) * dy) * (sumi0 + sumi1) as f32;
    }
    sumf
}

/// Mirrors `ggml_vec_dot_q5_1_q8_1_generic`. Block: d, m f16, qh[4], qs[16].
fn dot_q5_1(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (((blk, y), &dy), &sy) in w.chunks_exact(24).zip(a.qs.chunks_exact(32)).zip(a.d).zip(a.s) {
        let h = q5_high(u32::from_le_bytes(*arr::<4>(&blk[4..])));
        let qs = arr::<16>(&blk[8..]);
        let y = arr_i8::<32>(y);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..16 {
            sumi0 += i32::from((qs[j] & 0x0F) | h[j]) * i32::from(y[j]);
            sumi1 += i32::from((qs[j] >> 4) | h[j + 16]) * i32::from(y[j + 16]);
        }
        sumf += (rd_f16(blk, 0) * dy) * (sumi0 + sumi1) as f32 + rd_f16(blk, 2) * sy;
    }
    sumf
}

/// Mirrors `ggml_vec_dot_q8_0_q8_0_generic`. Block: d f16, qs[32] i8.
fn dot_q8_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for ((blk, y), &dy) in w.chunks_exact(34).zip(a.qs.chunks_exact(32)).zip(a.d) {
        let qs = arr::<32>(&blk[2..]);
        let y = arr_i8::<32>(y);
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += i32::from(qs[j] as i8) * i32::from(y[j]);
        }
        sumf += sumi as f32 * (rd_f16(blk, 0) * dy);
    }
    sumf
}

// ---------------------------------------------------------------------------------------------
// K-quants (256-element super-blocks, Q8_K activations)
//
// ggml's generic K-quant dot products accumulate `scale · q8 · q` into eight i32 lanes
// (`aux32[l]`, l = element index mod 8), then `sums[l] += d · aux32[l]` in f32 per block, and
// add the eight lane sums at the very end. Integer lanes are exact however they are summed, so
// only that float structure is kept.

/// Adds `scale · Σ q8·q` of one run of 8·`G` elements into the eight lanes.
#[inline(always)]
fn lanes_add<const G: usize>(aux32: &mut [i32; 8], scale: i32, q8: &[i8], q: &[i8]) {
    let mut t = [0i32; 8];
    for g in 0..G {
        for l in 0..8 {
            t[l] += i32::from(q8[8 * g + l]) * i32::from(q[8 * g + l]);
        }
    }
    for l in 0..8 {
        aux32[l] += scale * t[l];
    }
}

#[inline(always)]
fn lanes_finish(sums: &[f32; 8], mut sumf: f32) -> f32 {
    for &s in sums {
        sumf += s;
    }
    sumf
}

/// The 6-bit scales and mins of the 8 sub-blocks of a Q4_K/Q5_K block (`get_scale_min_k4`).
#[inline(always)]
pub(super) fn scale_min_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 0xF) | ((q[j] >> 6) << 4);
        mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Mirrors `ggml_vec_dot_q2_K_q8_K_generic`. Block: scales[16], qs[64], d, dmin f16.
fn dot_q2_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sumf = 0.0f32;
    for (((blk, q8), &dy), bsums) in w.chunks_exact(84).zip(a.qs.chunks_exact(256)).zip(a.d).zip(a.bsums.chunks_exact(16)) {
        let sc = arr::<16>(blk);
        let qs = arr::<64>(&blk[16..]);
        let mut summs = 0i32;
        for (&bs, &s) in bsums.iter().zip(sc) {
            summs += i32::from(bs) * i32::from(s >> 4);
        }
        let dall = dy * rd_f16(blk, 80);
        let dmin = dy * rd_f16(blk, 82);
        let mut isum = 0i32;
        for n in 0..2 {
            let q2 = &qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                let q8 = &q8[128 * n + 32 * j..128 * n + 32 * j + 32];
                for h in 0..2 {
                    let d = i32::from(sc[8 * n + 2 * j + h] & 0xF);
                    let mut isuml = 0i32;
                    for l in 16 * h..16 * h + 16 {
                        isuml += i32::from(q8[l]) * i32::from((q2[l] >> shift) & 3);
                    }
                    isum += d * isuml;
                }
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Mirrors `ggml_vec_dot_q3_K_q8_K_generic`. Block: hmask[32], qs[64], scales[12], d f16.
fn dot_q3_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    for ((blk, q8), &dy) in w.chunks_exact(110).zip(a.qs.chunks_exact(256)).zip(a.d) {
        let hmask = arr::<32>(blk);
        let qs = arr::<64>(&blk[32..]);
        let s = arr::<12>(&blk[96..]);
        let mut aux32 = [0i32; 8];
        for n in 0..2 {
            let q3 = &qs[32 * n..32 * n + 32];
            for k in 0..4 {
                let m = 1u8 << (4 * n + k);
                let mut v = [0i8; 32];
                for l in 0..32 {
                    let hi = if hmask[l] & m != 0 { 0 } else { 4 };
                    v[l] = ((q3[l] >> (2 * k)) & 3) as i8 - hi;
                }
                let e0 = 128 * n + 32 * k;
                for half in 0..2 {
                    // 16 elements share a scale: sub-block j = e / 16
                    let j = e0 / 16 + half;
                    let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
                    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
                    let scale = i32::from((low | (high << 4)) as i8 - 32);
                    lanes_add::<2>(&mut aux32, scale, &q8[e0 + 16 * half..], &v[16 * half..]);
                }
            }
        }
        let d = rd_f16(blk, 108) * dy;
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
    }
    lanes_finish(&sums, 0.0)
}

/// Mirrors `ggml_vec_dot_q4_K_q8_K_generic`. Block: d, dmin f16, scales[12], qs[128].
fn dot_q4_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (((blk, q8), &dy), bsums) in w.chunks_exact(144).zip(a.qs.chunks_exact(256)).zip(a.d).zip(a.bsums.chunks_exact(16)) {
        let (sc, mins) = scale_min_k4(arr::<12>(&blk[4..]));
        let qs = arr::<128>(&blk[16..]);
        let mut sumi = 0i32;
        for (j, &bs) in bsums.iter().enumerate() {
            sumi += i32::from(bs) * i32::from(mins[j / 2]);
        }
        let mut aux32 = [0i32; 8];
        for j in 0..4 {
            let q4 = &qs[32 * j..32 * j + 32];
            let mut lo = [0i8; 32];
            let mut hi = [0i8; 32];
            for l in 0..32 {
                lo[l] = (q4[l] & 0xF) as i8;
                hi[l] = (q4[l] >> 4) as i8;
            }
            lanes_add::<4>(&mut aux32, i32::from(sc[2 * j]), &q8[64 * j..], &lo);
            lanes_add::<4>(&mut aux32, i32::from(sc[2 * j + 1]), &q8[64 * j + 32..], &hi);
        }
        let d = rd_f16(blk, 0) * dy;
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
        let dmin = rd_f16(blk, 2) * dy;
        sumf -= dmin * sumi as f32;
    }
    lanes_finish(&sums, sumf)
}

/// Mirrors `ggml_vec_dot_q5_K_q8_K_generic`. Block: d, dmin f16, scales[12], qh[32], qs[128].
fn dot_q5_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (((blk, q8), &dy), bsums) in w.chunks_exact(176).zip(a.qs.chunks_exact(256)).zip(a.d).zip(a.bsums.chunks_exact(16)) {
        let (sc, mins) = scale_min_k4(arr::<12>(&blk[4..]));
        let qh = arr::<32>(&blk[16..]);
        let qs = arr::<128>(&blk[48..]);
        let mut sumi = 0i32;
        for (j, &bs) in bsums.iter().enumerate() {
            sumi += i32::from(bs) * i32::from(mins[j / 2]);
        }
        let mut aux32 = [0i32; 8];
        for j in 0..4 {
            let q4 = &qs[32 * j..32 * j + 32];
            let (m1, m2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let mut lo = [0i8; 32];
            let mut hi = [0i8; 32];
            for l in 0..32 {
                lo[l] = ((q4[l] & 0xF) + if qh[l] & m1 != 0 { 16 } else { 0 }) as i8;
                hi[l] = ((q4[l] >> 4) + if qh[l] & m2 != 0 { 16 } else { 0 }) as i8;
            }
            lanes_add::<4>(&mut aux32, i32::from(sc[2 * j]), &q8[64 * j..], &lo);
            lanes_add::<4>(&mut aux32, i32::from(sc[2 * j + 1]), &q8[64 * j + 32..], &hi);
        }
        let d = rd_f16(blk, 0) * dy;
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
        let dmin = rd_f16(blk, 2) * dy;
        sumf -= dmin * sumi as f32;
    }
    lanes_finish(&sums, sumf)
}

/// Mirrors `ggml_vec_dot_q6_K_q8_K_generic`. Block: ql[128], qh[64], scales[16] i8, d f16.
fn dot_q6_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sums = [0.0f32; 8];
    for ((blk, q8), &dy) in w.chunks_exact(210).zip(a.qs.chunks_exact(256)).zip(a.d) {
        let scales = arr::<16>(&blk[192..]);
        let mut aux32 = [0i32; 8];
        for n in 0..2 {
            let ql = arr::<64>(&blk[64 * n..]);
            let qh = arr::<32>(&blk[128 + 32 * n..]);
            let mut v = [[0i8; 32]; 4];
            for l in 0..32 {
                v[0][l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                v[1][l] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                v[2][l] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                v[3][l] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
            for (k, v) in v.iter().enumerate() {
                let e0 = 128 * n + 32 * k;
                for half in 0..2 {
                    let scale = i32::from(scales[e0 / 16 + half] as i8);
                    lanes_add::<2>(&mut aux32, scale, &q8[e0 + 16 * half..], &v[16 * half..]);
                }
            }
        }
        let d = rd_f16(blk, 208) * dy;
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
    }
    lanes_finish(&sums, 0.0)
}
