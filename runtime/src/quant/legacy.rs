//! The 32-element "legacy" block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Ports of ggml's reference code: `dequantize_row_*` and `quantize_row_*_ref`
//! (ggml/src/ggml-quants.c) and the generic `ggml_vec_dot_*_generic` (ggml/src/ggml-cpu/quants.c).
//! Float operations are written in the C's order and precision, so results are bit-identical
//! to ggml built without FMA contraction (x86-64 baseline) and to gguf-py's numpy code.
//! Compilers that fuse `x*d + m` into an FMA (GCC/Clang on aarch64, `-march=native` with FMA)
//! make ggml's Q4_1/Q5_1 dequantize and `_1` dot products differ from this in the last bit.
//!
//! Float-to-int conversions: C's `(int8_t)f`/`(uint8_t)f` truncate toward zero and are
//! undefined outside the target range; Rust's `as` truncates the same way and saturates
//! (NaN gives 0), so the two agree wherever the C is defined.
use super::float::{ggml_fp16_to_fp32, ggml_fp32_to_fp16};
use half::f16;

/// Elements per Q4_0 block.
pub const QK4_0: usize = 32;
/// Elements per Q4_1 block.
pub const QK4_1: usize = 32;
/// Elements per Q5_0 block.
pub const QK5_0: usize = 32;
/// Elements per Q5_1 block.
pub const QK5_1: usize = 32;
/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;
/// Elements per Q8_1 block.
pub const QK8_1: usize = 32;

/// `block_q4_0`: x = d * (q - 8), q in 0..16; element j in the low nibble of `qs[j]`,
/// element j + 16 in the high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// `block_q4_1`: x = d * q + m, q in 0..16, nibbles laid out as in Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// `block_q5_0`: x = d * (q - 16), q in 0..32; low 4 bits as in Q4_0, bit 4 of element j is
/// bit j of the little-endian u32 `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// `block_q5_1`: x = d * q + m, q in 0..32, bits laid out as in Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// `block_q8_0`: x = d * q, q in -127..=127 (the quantizer never writes -128).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// `block_q8_1`: x = d * q; `s` = d * sum(qs) (computed from the f32 `d`, then rounded to
/// f16), used by the Q4_1/Q5_1 dot products for the min term.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// C's `MIN(15, (int8_t)f)` (or 31), then the implicit conversion of that int to `uint8_t`.
#[inline]
fn min_trunc_i8(limit: i32, f: f32) -> u8 {
    limit.min(i32::from(f as i8)) as u8
}

/// The 5th bits of a Q5 block: the little-endian u32 stored in `qh`.
#[inline]
fn qh_u32(qh: [u8; 4]) -> u32 {
    u32::from_le_bytes(qh)
}

// ---------------------------------------------------------------------------------------------
// dequantize

/// Ports `dequantize_row_q4_0` (ggml-quants.c).
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK4_0);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK4_0)) {
        let d = ggml_fp16_to_fp32(b.d);
        for j in 0..QK4_0 / 2 {
            let x0 = i32::from(b.qs[j] & 0x0F) - 8;
            let x1 = i32::from(b.qs[j] >> 4) - 8;
            out[j] = x0 as f32 * d;
            out[j + QK4_0 / 2] = x1 as f32 * d;
        }
    }
}

/// Ports `dequantize_row_q4_1` (ggml-quants.c).
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK4_1);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK4_1)) {
        let d = ggml_fp16_to_fp32(b.d);
        let m = ggml_fp16_to_fp32(b.m);
        for j in 0..QK4_1 / 2 {
            let x0 = i32::from(b.qs[j] & 0x0F);
            let x1 = i32::from(b.qs[j] >> 4);
            out[j] = x0 as f32 * d + m;
            out[j + QK4_1 / 2] = x1 as f32 * d + m;
        }
    }
}

/// Ports `dequantize_row_q5_0` (ggml-quants.c).
pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK5_0);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK5_0)) {
        let d = ggml_fp16_to_fp32(b.d);
        let qh = qh_u32(b.qh);
        for j in 0..QK5_0 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = i32::from((b.qs[j] & 0x0F) | xh_0) - 16;
            let x1 = i32::from((b.qs[j] >> 4) | xh_1) - 16;
            out[j] = x0 as f32 * d;
            out[j + QK5_0 / 2] = x1 as f32 * d;
        }
    }
}

/// Ports `dequantize_row_q5_1` (ggml-quants.c).
pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK5_1);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK5_1)) {
        let d = ggml_fp16_to_fp32(b.d);
        let m = ggml_fp16_to_fp32(b.m);
        let qh = qh_u32(b.qh);
        for j in 0..QK5_1 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = i32::from((b.qs[j] & 0x0F) | xh_0);
            let x1 = i32::from((b.qs[j] >> 4) | xh_1);
            out[j] = x0 as f32 * d + m;
            out[j + QK5_1 / 2] = x1 as f32 * d + m;
        }
    }
}

/// Ports `dequantize_row_q8_0` (ggml-quants.c).
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK8_0);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = ggml_fp16_to_fp32(b.d);
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

/// Q8_1 dequantize: y = d * q (ggml has no `dequantize_row_q8_1`; Q8_1 only ever feeds dot
/// products, and `s` is not needed to reconstruct the values).
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK8_1);
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK8_1)) {
        let d = ggml_fp16_to_fp32(b.d);
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// quantize

/// The value of largest magnitude in `xb` (the first one on ties, 0.0 for an all-zero block),
/// as the `if (amax < fabsf(v))` scan of `quantize_row_q4_0_ref` / `q5_0_ref` finds it.
#[inline]
fn signed_absmax(xb: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `min`/`max` of a block as `quantize_row_q4_1_ref` / `q5_1_ref` scan them.
#[inline]
fn min_max(xb: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in xb {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `amax` as `quantize_row_q8_0_ref` / `q8_1_ref` compute it: `amax = MAX(amax, fabsf(v))`.
#[inline]
fn absmax(xb: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    for &v in xb {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    amax
}

/// C's `d ? 1.0f/d : 0.0f` (NaN counts as true, as in C).
#[inline]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Ports `quantize_row_q4_0_ref` (ggml-quants.c).
pub fn quantize_row_q4_0_ref(x: &[f32], y: &mut [BlockQ4_0]) {
    debug_assert_eq!(x.len(), y.len() * QK4_0);
    for (xb, b) in x.chunks_exact(QK4_0).zip(y.iter_mut()) {
        let max = signed_absmax(xb);
        let d = max / -8.0;
        let id = inverse_or_zero(d);
        b.d = ggml_fp32_to_fp16(d);
        for j in 0..QK4_0 / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK4_0 / 2 + j] * id;
            let xi0 = min_trunc_i8(15, x0 + 8.5);
            let xi1 = min_trunc_i8(15, x1 + 8.5);
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// Ports `quantize_row_q4_1_ref` (ggml-quants.c).
pub fn quantize_row_q4_1_ref(x: &[f32], y: &mut [BlockQ4_1]) {
    debug_assert_eq!(x.len(), y.len() * QK4_1);
    for (xb, b) in x.chunks_exact(QK4_1).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        b.d = ggml_fp32_to_fp16(d);
        b.m = ggml_fp32_to_fp16(min);
        for j in 0..QK4_1 / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK4_1 / 2 + j] - min) * id;
            let xi0 = min_trunc_i8(15, x0 + 0.5);
            let xi1 = min_trunc_i8(15, x1 + 0.5);
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// Ports `quantize_row_q5_0_ref` (ggml-quants.c).
pub fn quantize_row_q5_0_ref(x: &[f32], y: &mut [BlockQ5_0]) {
    debug_assert_eq!(x.len(), y.len() * QK5_0);
    for (xb, b) in x.chunks_exact(QK5_0).zip(y.iter_mut()) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = inverse_or_zero(d);
        b.d = ggml_fp32_to_fp16(d);
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK5_0 / 2 + j] * id;
            let xi0 = min_trunc_i8(31, x0 + 16.5);
            let xi1 = min_trunc_i8(31, x1 + 16.5);
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (u32::from(xi0 & 0x10) >> 4) << j;
            qh |= (u32::from(xi1 & 0x10) >> 4) << (j + QK5_0 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Ports `quantize_row_q5_1_ref` (ggml-quants.c). Unlike Q4_1 the C has no `MIN(31, …)`:
/// the value is converted straight to `uint8_t`.
pub fn quantize_row_q5_1_ref(x: &[f32], y: &mut [BlockQ5_1]) {
    debug_assert_eq!(x.len(), y.len() * QK5_1);
    for (xb, b) in x.chunks_exact(QK5_1).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        b.d = ggml_fp32_to_fp16(d);
        b.m = ggml_fp32_to_fp16(min);
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[QK5_1 / 2 + j] - min) * id;
            let xi0 = (x0 + 0.5) as u8;
            let xi1 = (x1 + 0.5) as u8;
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (u32::from(xi0 & 0x10) >> 4) << j;
            qh |= (u32::from(xi1 & 0x10) >> 4) << (j + QK5_1 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Ports `quantize_row_q8_0_ref` (ggml-quants.c): `roundf` (half away from zero, which is
/// Rust's `f32::round`), not the `nearest_int` of the K-quants.
pub fn quantize_row_q8_0_ref(x: &[f32], y: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), y.len() * QK8_0);
    for (xb, b) in x.chunks_exact(QK8_0).zip(y.iter_mut()) {
        let amax = absmax(xb);
        let d = amax / 127.0;
        let id = inverse_or_zero(d);
        b.d = ggml_fp32_to_fp16(d);
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

/// Ports `quantize_row_q8_1_ref` (ggml-quants.c); `s = (float)sum(qs) * d` with the f32 `d`.
pub fn quantize_row_q8_1_ref(x: &[f32], y: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), y.len() * QK8_1);
    for (xb, b) in x.chunks_exact(QK8_1).zip(y.iter_mut()) {
        let amax = absmax(xb);
        let d = amax / 127.0;
        let id = inverse_or_zero(d);
        b.d = ggml_fp32_to_fp16(d);
        let mut sum = 0i32;
        for j in 0..QK8_1 / 2 {
            let v0 = xb[j] * id;
            let v1 = xb[QK8_1 / 2 + j] * id;
            b.qs[j] = v0.round() as i8;
            b.qs[QK8_1 / 2 + j] = v1.round() as i8;
            sum += i32::from(b.qs[j]);
            sum += i32::from(b.qs[QK8_1 / 2 + j]);
        }
        b.s = ggml_fp32_to_fp16(sum as f32 * d);
    }
}

// ---------------------------------------------------------------------------------------------
// vec_dot

/// Ports `ggml_vec_dot_q4_0_q8_0_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK8_0 / 2 {
            let v0 = i32::from(bx.qs[j] & 0x0F) - 8;
            let v1 = i32::from(bx.qs[j] >> 4) - 8;
            sumi0 += v0 * i32::from(by.qs[j]);
            sumi1 += v1 * i32::from(by.qs[j + QK8_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += sumi as f32 * ggml_fp16_to_fp32(bx.d) * ggml_fp16_to_fp32(by.d);
    }
    sumf
}

/// Ports `ggml_vec_dot_q4_1_q8_1_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK8_1 / 2 {
            let v0 = i32::from(bx.qs[j] & 0x0F);
            let v1 = i32::from(bx.qs[j] >> 4);
            sumi0 += v0 * i32::from(by.qs[j]);
            sumi1 += v1 * i32::from(by.qs[j + QK8_1 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (ggml_fp16_to_fp32(bx.d) * ggml_fp16_to_fp32(by.d)) * sumi as f32 + ggml_fp16_to_fp32(bx.m) * ggml_fp16_to_fp32(by.s);
    }
    sumf
}

/// Ports `ggml_vec_dot_q5_0_q8_0_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let qh = qh_u32(bx.qh);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK8_0 / 2 {
            let xh_0 = (((qh & (1 << j)) >> j) << 4) as u8;
            let xh_1 = ((qh & (1 << (j + 16))) >> (j + 12)) as u8;
            let x0 = i32::from((bx.qs[j] & 0x0F) | xh_0) - 16;
            let x1 = i32::from((bx.qs[j] >> 4) | xh_1) - 16;
            sumi0 += x0 * i32::from(by.qs[j]);
            sumi1 += x1 * i32::from(by.qs[j + QK8_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (ggml_fp16_to_fp32(bx.d) * ggml_fp16_to_fp32(by.d)) * sumi as f32;
    }
    sumf
}

/// Ports `ggml_vec_dot_q5_1_q8_1_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let qh = qh_u32(bx.qh);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK8_1 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = i32::from((bx.qs[j] & 0x0F) | xh_0);
            let x1 = i32::from((bx.qs[j] >> 4) | xh_1);
            sumi0 += x0 * i32::from(by.qs[j]);
            sumi1 += x1 * i32::from(by.qs[j + QK8_1 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (ggml_fp16_to_fp32(bx.d) * ggml_fp16_to_fp32(by.d)) * sumi as f32 + ggml_fp16_to_fp32(bx.m) * ggml_fp16_to_fp32(by.s);
    }
    sumf
}

/// Ports `ggml_vec_dot_q8_0_q8_0_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for (&a, &b) in bx.qs.iter().zip(&by.qs) {
            sumi += i32::from(a) * i32::from(b);
        }
        sumf += sumi as f32 * (ggml_fp16_to_fp32(bx.d) * ggml_fp16_to_fp32(by.d));
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, vec_dot, GgmlType};

    const TYPES: [GgmlType; 6] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q8_1];

    /// `0.1 + 2*cosf(i + offset)` from ggml's tests/test-quantize-fns.cpp.
    fn generate_data(offset: f32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (0.1 + 2.0 * f64::from((i as f32 + offset).cos())) as f32).collect()
    }

    /// test-quantize-fns.cpp's limits. Its `array_rmse` is sqrt(Σ diff²) / n, measured at
    /// n = 4096; we compare the size-independent sqrt(Σ diff² / n) against 0.002 * sqrt(4096)
    /// so that short rows get the same per-element budget.
    const MAX_QUANTIZATION_TOTAL_ERROR: f64 = 0.002;
    const MAX_DOT_PRODUCT_ERROR: f64 = 0.02;
    const GGML_TEST_SIZE: f64 = 4096.0;

    fn rms(a: &[f32], b: &[f32]) -> f64 {
        let sum: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
        (sum / a.len() as f64).sqrt()
    }

    fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let mut q = vec![0u8; x.len() / ty.block_size() * ty.type_size()];
        quantize_row(ty, x, &mut q).expect("quantize");
        q
    }

    fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; n];
        dequantize_row(ty, q, &mut y).expect("dequantize");
        y
    }

    fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
    }

    /// Row lengths: one block, an odd number of blocks, and ggml's test size.
    const LENGTHS: [usize; 4] = [32, 96, 224, 4096];

    #[test]
    fn round_trip_within_ggml_tolerance() {
        for ty in TYPES {
            for n in LENGTHS {
                let x = generate_data(0.0, n);
                let y = dequantize(ty, &quantize(ty, &x), n);
                let err = rms(&x, &y);
                let max = MAX_QUANTIZATION_TOTAL_ERROR * GGML_TEST_SIZE.sqrt();
                assert!(err < max, "{ty} n={n}: rms {err} >= {max}");
                if n == 4096 {
                    // the file's own metric at the file's size
                    assert!(err * (n as f64).sqrt() / n as f64 <= MAX_QUANTIZATION_TOTAL_ERROR, "{ty}");
                }
            }
        }
    }

    #[test]
    fn vec_dot_within_ggml_tolerance_and_matches_dequantized_dot() {
        for ty in TYPES.into_iter().filter(|&t| t != GgmlType::Q8_1) {
            let vt = ty.vec_dot_type();
            for n in LENGTHS {
                let a = generate_data(0.0, n);
                let b = generate_data(1.0, n);
                let qa = quantize(ty, &a);
                let qb = quantize(vt, &b);
                let got = f64::from(vec_dot(ty, n, &qa, &qb).expect("vec_dot"));

                // test-quantize-fns.cpp: against the dot of the unquantized data, |Δ| / n at
                // n = 4096; other sizes scaled as a random walk, |Δ| / sqrt(4096 n)
                let err = (got - dot_f64(&a, &b)).abs() / (GGML_TEST_SIZE * n as f64).sqrt();
                assert!(err < MAX_DOT_PRODUCT_ERROR, "{ty} n={n}: {err}");

                // against the dot of what the blocks dequantize to: equal up to f32 rounding,
                // plus for Q8_1 the f16 rounding of `s` (d * Σq) in the min term.
                let da = dequantize(ty, &qa, n);
                let db = dequantize(vt, &qb, n);
                let reference = dot_f64(&da, &db);
                let magnitude: f64 = da.iter().zip(&db).map(|(&x, &y)| f64::from(x * y).abs()).sum();
                let mut slack = 1e-5 * magnitude;
                if vt == GgmlType::Q8_1 {
                    let mins: Vec<f64> = match ty {
                        GgmlType::Q4_1 => blocks_of::<BlockQ4_1>(&qa).iter().map(|b| b.m.to_f64()).collect(),
                        _ => blocks_of::<BlockQ5_1>(&qa).iter().map(|b| b.m.to_f64()).collect(),
                    };
                    let sums = blocks_of::<BlockQ8_1>(&qb);
                    slack += mins.iter().zip(&sums).map(|(m, s)| (m * s.s.to_f64()).abs() / 1024.0).sum::<f64>();
                }
                assert!((got - reference).abs() <= slack, "{ty} n={n}: {got} vs {reference} (slack {slack})");
            }
        }
    }

    fn blocks_of<T: bytemuck::Pod>(q: &[u8]) -> Vec<T> {
        bytemuck::pod_collect_to_vec(q)
    }

    #[test]
    fn all_zero_blocks() {
        let x = [0f32; 64];
        let mut q40 = [BlockQ4_0 { d: f16::ONE, qs: [0; 16] }; 2];
        quantize_row_q4_0_ref(&x, &mut q40);
        // d = max / -8 with max = +0.0 is -0.0 (f16 0x8000), in ggml and gguf-py alike
        assert!(q40.iter().all(|b| b.d.to_bits() == 0x8000 && b.qs == [0x88; 16]));
        let mut q50 = [BlockQ5_0 { d: f16::ONE, qh: [0; 4], qs: [1; 16] }; 2];
        quantize_row_q5_0_ref(&x, &mut q50);
        assert!(q50.iter().all(|b| b.d.to_bits() == 0x8000 && b.qs == [0; 16] && b.qh == [0xFF; 4]));
        let mut q41 = [BlockQ4_1 { d: f16::ONE, m: f16::ONE, qs: [1; 16] }; 2];
        quantize_row_q4_1_ref(&x, &mut q41);
        assert!(q41.iter().all(|b| b.d.to_bits() == 0 && b.m.to_bits() == 0 && b.qs == [0; 16]));
        let mut q81 = [BlockQ8_1 { d: f16::ONE, s: f16::ONE, qs: [1; 32] }; 2];
        quantize_row_q8_1_ref(&x, &mut q81);
        assert!(q81.iter().all(|b| b.d.to_bits() == 0 && b.s.to_bits() == 0 && b.qs == [0; 32]));
        for ty in TYPES {
            assert_eq!(dequantize(ty, &quantize(ty, &x), 64), vec![0f32; 64], "{ty}");
        }
    }

    #[test]
    fn exact_grids_round_trip_with_expected_bits() {
        // Q4_0: the signed max sets d = max / -8, so a block whose max magnitude is -8 has d = 1.
        let x: Vec<f32> = (0..32).map(|j| (j % 16) as f32 - 8.0).collect();
        let mut b = [BlockQ4_0 { d: f16::ZERO, qs: [0; 16] }];
        quantize_row_q4_0_ref(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), 1.0);
        assert_eq!(b[0].qs, std::array::from_fn(|j| (j as u8) | ((j as u8) << 4)));
        let mut y = [0f32; 32];
        dequantize_row_q4_0(&b, &mut y);
        assert_eq!(y.to_vec(), x);

        // Q4_0: +8 would need q = 16, clamped by MIN(15, …)
        let mut x8 = [0f32; 32];
        x8[0] = -8.0;
        x8[1] = 8.0;
        quantize_row_q4_0_ref(&x8, &mut b);
        assert_eq!(b[0].qs[0], 0x80);
        assert_eq!(b[0].qs[1], 0x8F);

        // Q5_0: x = j - 16 gives d = 1 and q = j; bit 4 of q lands in bit j of qh
        let x: Vec<f32> = (0..32).map(|j| j as f32 - 16.0).collect();
        let mut b = [BlockQ5_0 { d: f16::ZERO, qh: [0; 4], qs: [0; 16] }];
        quantize_row_q5_0_ref(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), 1.0);
        assert_eq!(u32::from_le_bytes(b[0].qh), 0xFFFF_0000);
        assert_eq!(b[0].qs, std::array::from_fn(|j| (j as u8) | ((j as u8) << 4)));
        dequantize_row_q5_0(&b, &mut y);
        assert_eq!(y.to_vec(), x);

        // Q4_1: min 1, max 8.5, d = 0.5
        let x: Vec<f32> = (0..32).map(|j| (j % 16) as f32 * 0.5 + 1.0).collect();
        let mut b = [BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; 16] }];
        quantize_row_q4_1_ref(&x, &mut b);
        assert_eq!((b[0].d.to_f32(), b[0].m.to_f32()), (0.5, 1.0));
        dequantize_row_q4_1(&b, &mut y);
        assert_eq!(y.to_vec(), x);

        // Q5_1: min -2, max 5.75, d = 0.25, q = j
        let x: Vec<f32> = (0..32).map(|j| j as f32 * 0.25 - 2.0).collect();
        let mut b = [BlockQ5_1 { d: f16::ZERO, m: f16::ZERO, qh: [0; 4], qs: [0; 16] }];
        quantize_row_q5_1_ref(&x, &mut b);
        assert_eq!((b[0].d.to_f32(), b[0].m.to_f32()), (0.25, -2.0));
        assert_eq!(u32::from_le_bytes(b[0].qh), 0xFFFF_0000);
        dequantize_row_q5_1(&b, &mut y);
        assert_eq!(y.to_vec(), x);
    }

    #[test]
    fn q8_rounds_half_away_from_zero_and_q8_1_sums() {
        // amax 127 gives d = 1 and id = 1, so q = roundf(x)
        let mut x = [0f32; 32];
        x[..8].copy_from_slice(&[127.0, 2.5, -2.5, 0.5, -0.5, 1.49, -126.5, 3.0]);
        let mut b0 = [BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }];
        quantize_row_q8_0_ref(&x, &mut b0);
        assert_eq!(b0[0].d.to_f32(), 1.0);
        assert_eq!(&b0[0].qs[..8], &[127, 3, -3, 1, -1, 1, -127, 3]);
        let mut b1 = [BlockQ8_1 { d: f16::ZERO, s: f16::ZERO, qs: [0; 32] }];
        quantize_row_q8_1_ref(&x, &mut b1);
        assert_eq!(b1[0].qs, b0[0].qs);
        assert_eq!(b1[0].s.to_f32(), 4.0); // 127 + 3 - 3 + 1 - 1 + 1 - 127 + 3

        // s uses the f32 d, not the f16-rounded one
        let x: Vec<f32> = (0..32).map(|j| (j as f32 * 0.37).sin() * 0.3).collect();
        quantize_row_q8_1_ref(&x, &mut b1);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let sum: i32 = b1[0].qs.iter().map(|&q| i32::from(q)).sum();
        assert_eq!(b1[0].s, ggml_fp32_to_fp16(sum as f32 * (amax / 127.0)));
    }

    #[test]
    fn dot_products_on_hand_built_blocks() {
        let x = BlockQ8_0 { d: f16::from_f32(0.5), qs: std::array::from_fn(|j| j as i8 - 16) };
        let y = BlockQ8_0 { d: f16::from_f32(2.0), qs: [1; 32] };
        // Σ (j - 16) for j in 0..32 = -16
        assert_eq!(vec_dot_q8_0_q8_0(&[x, x, x], &[y, y, y]), -48.0);
        let q4 = BlockQ4_0 { d: f16::from_f32(0.25), qs: [0xF0; 16] }; // lows -8, highs +7
        assert_eq!(vec_dot_q4_0_q8_0(&[q4], &[y]), 0.25 * 2.0 * (16.0 * -8.0 + 16.0 * 7.0));
        let q41 = BlockQ4_1 { d: f16::from_f32(1.0), m: f16::from_f32(-1.0), qs: [0x21; 16] };
        let y1 = BlockQ8_1 { d: f16::from_f32(1.0), s: f16::from_f32(32.0), qs: [1; 32] };
        // Σ q = 16*1 + 16*2 = 48, plus m * s = -32
        assert_eq!(vec_dot_q4_1_q8_1(&[q41], &[y1]), 16.0);
        let q51 = BlockQ5_1 { d: f16::from_f32(1.0), m: f16::ZERO, qh: [0, 0, 0, 0x80], qs: [0; 16] };
        // only element 31 has its 5th bit: q = 16
        assert_eq!(vec_dot_q5_1_q8_1(&[q51], &[y1]), 16.0);
        let q50 = BlockQ5_0 { d: f16::from_f32(1.0), qh: [1, 0, 0, 0], qs: [0; 16] };
        // element 0 is 16 - 16 = 0, the other 31 are -16
        assert_eq!(vec_dot_q5_0_q8_0(&[q50], &[y]), 2.0 * (31.0 * -16.0));
        assert_eq!(vec_dot_q8_0_q8_0(&[], &[]), 0.0);
    }
}
