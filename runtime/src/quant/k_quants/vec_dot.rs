//! Dot products with Q8_K activations (ports of ggml-cpu/quants.c `ggml_vec_dot_*_generic`).
//!
//! Integer sums are exact, so only the float accumulation order matters for bit-identity; it is
//! kept as in ggml: Q2_K adds one float per block, the others accumulate `d·aux32[l]` in eight
//! per-lane float sums (lane = element index mod 8) that are added up at the end, after the
//! running min correction (Q4_K, Q5_K).

use super::{q6_k_values, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, K_SCALE_SIZE, QK_K};
use crate::quant::k_quants_helpers::{get_scale_min_k4, q3_k_scales};
use half::f16;

/// Adds `scale · Σ q8·a` over 16-element groups into the 8 lanes (`aux32[l]` gets elements
/// `≡ l mod 8`): the `aux16`/`aux32` inner loop of ggml's generic K-quant dot products.
/// `scale_of(e)` is the integer scale of element `e`.
#[inline]
fn accumulate_lanes(q8: &[i8; QK_K], a: &[i8; QK_K], scale_of: impl Fn(usize) -> i32) -> [i32; 8] {
    let mut aux32 = [0_i32; 8];
    for (g, (q8, a)) in q8.chunks_exact(8).zip(a.chunks_exact(8)).enumerate() {
        let scale = scale_of(8 * g);
        for l in 0..8 {
            let aux16 = i32::from(q8[l]) * i32::from(a[l]);
            aux32[l] += scale * aux16;
        }
    }
    aux32
}

/// Port of ggml's `ggml_vec_dot_q2_K_q8_K_generic`.
pub fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0_f32;
    for (xb, yb) in x.iter().zip(y) {
        let sc = &xb.scales;
        let mut summs = 0_i32;
        for (&bs, &s) in yb.bsums.iter().zip(sc) {
            summs += i32::from(bs) * i32::from(s >> 4);
        }
        let dall = yb.d * xb.d.to_f32();
        let dmin = yb.d * xb.dmin.to_f32();

        let mut isum = 0_i32;
        for n in 0..QK_K / 128 {
            let q2 = &xb.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                let q8 = &yb.qs[128 * n + 32 * j..128 * n + 32 * j + 32];
                for h in 0..2 {
                    let d = i32::from(sc[8 * n + 2 * j + h] & 0xF);
                    let mut isuml = 0_i32;
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

/// Port of ggml's `ggml_vec_dot_q3_K_q8_K_generic`.
pub fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0_f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let mut aux8 = [0_i8; QK_K];
        for n in 0..QK_K / 128 {
            let q3 = &xb.qs[32 * n..32 * n + 32];
            for k in 0..4 {
                let m = 1_u8 << (4 * n + k);
                let a = &mut aux8[128 * n + 32 * k..128 * n + 32 * k + 32];
                for (l, a) in a.iter_mut().enumerate() {
                    let hi = if xb.hmask[l] & m != 0 { 0 } else { 4 };
                    *a = ((q3[l] >> (2 * k)) & 3) as i8 - hi;
                }
            }
        }
        let scales = q3_k_scales(&xb.scales);
        let aux32 = accumulate_lanes(&yb.qs, &aux8, |e| i32::from(scales[e / 16]));
        let d = xb.d.to_f32() * yb.d;
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
    }
    let mut sumf = 0.0_f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// The shared tail of ggml's `ggml_vec_dot_q4_K_q8_K_generic` and
/// `ggml_vec_dot_q5_K_q8_K_generic` for one block: lane sums into `sums`, min correction
/// (`Σ bsums·min`) subtracted from `sumf`.
#[inline]
fn dot_q4_q5_k_block(aux8: &[i8; QK_K], scales: &[u8; K_SCALE_SIZE], d: f16, dmin: f16, yb: &BlockQ8K, sums: &mut [f32; 8], sumf: &mut f32) {
    let mut sc = [0_u8; 8];
    let mut mins = [0_u8; 8];
    for j in 0..QK_K / 32 {
        (sc[j], mins[j]) = get_scale_min_k4(j, scales);
    }
    let mut sumi = 0_i32;
    for (j, &bs) in yb.bsums.iter().enumerate() {
        sumi += i32::from(bs) * i32::from(mins[j / 2]);
    }
    let aux32 = accumulate_lanes(&yb.qs, aux8, |e| i32::from(sc[e / 32]));
    let d = d.to_f32() * yb.d;
    for (s, &a) in sums.iter_mut().zip(&aux32) {
        *s += d * a as f32;
    }
    let dmin = dmin.to_f32() * yb.d;
    *sumf -= dmin * sumi as f32;
}

/// Port of ggml's `ggml_vec_dot_q4_K_q8_K_generic`.
pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0_f32; 8];
    let mut sumf = 0.0_f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut aux8 = [0_i8; QK_K];
        for j in 0..QK_K / 64 {
            let q4 = &xb.qs[32 * j..32 * j + 32];
            let (lo, hi) = aux8[64 * j..64 * j + 64].split_at_mut(32);
            for ((lo, hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(q4) {
                *lo = (q & 0xF) as i8;
                *hi = (q >> 4) as i8;
            }
        }
        dot_q4_q5_k_block(&aux8, &xb.scales, xb.d, xb.dmin, yb, &mut sums, &mut sumf);
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Port of ggml's `ggml_vec_dot_q5_K_q8_K_generic`.
pub fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0_f32; 8];
    let mut sumf = 0.0_f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut aux8 = [0_i8; QK_K];
        for j in 0..QK_K / 64 {
            let q4 = &xb.qs[32 * j..32 * j + 32];
            let (m1, m2) = (1_u8 << (2 * j), 2_u8 << (2 * j));
            let (lo, hi) = aux8[64 * j..64 * j + 64].split_at_mut(32);
            for (l, (lo, hi)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                *lo = (q4[l] & 0xF) as i8 + if xb.qh[l] & m1 != 0 { 16 } else { 0 };
                *hi = (q4[l] >> 4) as i8 + if xb.qh[l] & m2 != 0 { 16 } else { 0 };
            }
        }
        dot_q4_q5_k_block(&aux8, &xb.scales, xb.d, xb.dmin, yb, &mut sums, &mut sumf);
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Port of ggml's `ggml_vec_dot_q6_K_q8_K_generic`.
pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut sums = [0.0_f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let aux8 = q6_k_values(xb);
        let aux32 = accumulate_lanes(&yb.qs, &aux8, |e| i32::from(xb.scales[e / 16]));
        let d = xb.d.to_f32() * yb.d;
        for (s, &a) in sums.iter_mut().zip(&aux32) {
            *s += d * a as f32;
        }
    }
    let mut sumf = 0.0_f32;
    for s in sums {
        sumf += s;
    }
    sumf
}
