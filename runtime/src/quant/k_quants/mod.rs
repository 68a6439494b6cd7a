//! The 256-element "K-quant" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the
//! activation format Q8_K: the block structs and `dequantize_row_*` here, `quantize_row_*_ref`
//! in `quantize.rs`, the dot products with Q8_K activations in `vec_dot.rs`.

mod quantize;
mod vec_dot;

pub use quantize::*;
pub use vec_dot::*;

#[cfg(test)]
mod tests;

use crate::quant::k_quants_helpers::{get_scale_min_k4, q3_k_scales};
use half::f16;

pub const QK_K: usize = 256;
pub const K_SCALE_SIZE: usize = 12;

/// Q2_K: 2.625 bits/weight. 16 sub-blocks of 16 with a 4-bit scale and 4-bit min each
/// (`scales`: low nibble scale, high nibble min), scaled by `d` and `dmin`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// Q3_K: 3.4375 bits/weight. Low 2 bits in `qs`, high bit in `hmask` (clear means −4);
/// 16 signed 6-bit scales packed in 12 bytes, scaled by `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

/// Q4_K: 4.5 bits/weight. 8 sub-blocks of 32 with 6-bit scale and min packed in 12 bytes
/// (see `get_scale_min_k4`), scaled by `d` and `dmin`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// Q5_K: 5.5 bits/weight. Q4_K plus a fifth bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

/// Q6_K: 6.5625 bits/weight. Low 4 bits in `ql`, high 2 bits in `qh` (stored value − 32),
/// 16 signed 8-bit scales, scaled by `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// Q8_K: the activation format of K-quant dot products. 8-bit quants, an `f32` scale and the
/// sums of each 16 quants (`bsums`) that the min terms of Q2_K/Q4_K/Q5_K need.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

// ---------------------------------------------------------------------------------------------
// Dequantization (ports of ggml-quants.c `dequantize_row_*`)
// ---------------------------------------------------------------------------------------------

/// Port of ggml's `dequantize_row_q2_K`. Each 128-element half of a block reads 32 bytes of
/// `qs` four times (2-bit shifts 0, 2, 4, 6); each 16 elements use one `scales` byte
/// (low nibble: scale, high nibble: min): `y = d·sc·q − dmin·m`.
pub fn dequantize_row_q2_k(x: &[BlockQ2K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for n in 0..QK_K / 128 {
            let q = &b.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for h in 0..2 {
                    let sc = b.scales[8 * n + 2 * j + h];
                    let dl = d * f32::from(sc & 0xF);
                    let ml = min * f32::from(sc >> 4);
                    let out = &mut y[128 * n + 32 * j + 16 * h..][..16];
                    for (o, &qv) in out.iter_mut().zip(&q[16 * h..16 * h + 16]) {
                        *o = dl * f32::from((qv >> shift) & 3) - ml;
                    }
                }
            }
        }
    }
}

/// Port of ggml's `dequantize_row_q3_K`. Low 2 bits as in Q2_K; the third bit of element
/// `e` is bit `e / 32` of `hmask[e % 32]`, and a *clear* bit subtracts 4 (`q` in −4..3).
/// Sixteen signed 6-bit scales: `y = d·(sc − 32)·q`.
pub fn dequantize_row_q3_k(x: &[BlockQ3K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = b.d.to_f32();
        let scales = q3_k_scales(&b.scales);
        for n in 0..QK_K / 128 {
            let q = &b.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                let m = 1_u8 << (4 * n + j);
                for h in 0..2 {
                    let dl = d_all * f32::from(scales[8 * n + 2 * j + h]);
                    let out = &mut y[128 * n + 32 * j + 16 * h..][..16];
                    for (l, o) in out.iter_mut().enumerate() {
                        let k = 16 * h + l;
                        let hi = if b.hmask[k] & m != 0 { 0 } else { 4 };
                        *o = dl * (i32::from((q[k] >> shift) & 3) - hi) as f32;
                    }
                }
            }
        }
    }
}

/// Port of ggml's `dequantize_row_q4_K`. Each 64 elements read 32 bytes of `qs`: low nibbles
/// then high nibbles, one 6-bit scale/min pair (see `get_scale_min_k4`) per 32 elements:
/// `y = d·sc·q − dmin·m`.
pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for j in 0..QK_K / 64 {
            let q = &b.qs[32 * j..32 * j + 32];
            let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (lo, hi) = y[64 * j..64 * j + 64].split_at_mut(32);
            for ((lo, hi), &qv) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                *lo = d1 * f32::from(qv & 0xF) - m1;
                *hi = d2 * f32::from(qv >> 4) - m2;
            }
        }
    }
}

/// Port of ggml's `dequantize_row_q5_K`: Q4_K plus a fifth bit, bit `e / 32` of `qh[e % 32]`
/// for element `e`, worth 16.
pub fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for j in 0..QK_K / 64 {
            let ql = &b.qs[32 * j..32 * j + 32];
            let (u1, u2) = (1_u8 << (2 * j), 2_u8 << (2 * j));
            let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (lo, hi) = y[64 * j..64 * j + 64].split_at_mut(32);
            for (l, (lo, hi)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                *lo = d1 * f32::from((ql[l] & 0xF) + h1) - m1;
                *hi = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
        }
    }
}

/// The 6-bit quants of one Q6_K block minus 32 (−32..31), in element order. Shared by
/// `dequantize_row_q6_k` and `vec_dot_q6_k_q8_k` (ggml computes it identically in both).
/// Per 128 elements: 64 bytes of `ql` (low nibbles of elements 0–31 and 32–63, then high
/// nibbles of 64–95 and 96–127) and 32 bytes of `qh` (2 bits per quarter, at shift 2·quarter).
#[inline]
fn q6_k_values(b: &BlockQ6K) -> [i8; QK_K] {
    let mut a = [0_i8; QK_K];
    for n in 0..QK_K / 128 {
        let ql = &b.ql[64 * n..64 * n + 64];
        let qh = &b.qh[32 * n..32 * n + 32];
        let a = &mut a[128 * n..128 * n + 128];
        for l in 0..32 {
            a[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

/// Port of ggml's `dequantize_row_q6_K`: `y = d·sc·(q − 32)`, one signed 8-bit scale per
/// 16 elements.
pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let q = q6_k_values(b);
        for (e, o) in y.iter_mut().enumerate() {
            *o = d * f32::from(b.scales[e / 16]) * f32::from(q[e]);
        }
    }
}

/// Port of ggml's `dequantize_row_q8_K`: `y = d·q`.
pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = b.d * f32::from(q);
        }
    }
}
