//! The 256-element "K-quant" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the
//! activation format Q8_K.
use super::k_quants_helpers::{get_scale_min_k4, make_q3_quants, make_qkx2_quants, make_qx_quants, nearest_int, q3_k_scales, GROUP_MAX_EPS};
use bytemuck::Zeroable;
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

// ---------------------------------------------------------------------------------------------
// Quantization (ports of ggml-quants.c `quantize_row_*_ref`)
// ---------------------------------------------------------------------------------------------

/// Packs 2-bit values (`l[e] < 4`) into a Q2_K/Q3_K `qs` array: element `128·n + 32·k + i` goes
/// to bits `2k..2k+2` of byte `32·n + i`.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for n in 0..QK_K / 128 {
        let l = &l[128 * n..128 * n + 128];
        for i in 0..32 {
            qs[32 * n + i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
}

/// Port of ggml's `quantize_row_q2_K_ref`: per 16 elements `make_qkx2_quants` (nmax 3,
/// |x| weights, absolute error), scales and mins quantized to 4 bits against the block maxima,
/// then every element re-quantized against the rounded scale and min.
pub fn quantize_row_q2_k_ref(x: &[f32], y: &mut [BlockQ2K]) {
    const Q4SCALE: f32 = 15.0;
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0_u8; QK_K];
        let mut laux = [0_u8; 16];
        let mut weights = [0_f32; 16];
        let mut mins = [0_f32; QK_K / 16];
        let mut scales = [0_f32; QK_K / 16];
        let mut max_scale = 0.0_f32;
        let mut max_min = 0.0_f32;
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (scale, min) = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..16 * j + 16], &mut laux, -0.5, 0.1, 15, true);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }

        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &scale) in b.scales.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * scale) as u8;
            }
            b.d = f16::from_f32(max_scale / Q4SCALE);
        } else {
            b.scales = [0; QK_K / 16];
            b.d = f16::from_f32(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &min) in b.scales.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * min) << 4) as u8;
            }
            b.dmin = f16::from_f32(max_min / Q4SCALE);
        } else {
            b.dmin = f16::from_f32(0.0);
        }
        for j in 0..QK_K / 16 {
            let d = b.d.to_f32() * f32::from(b.scales[j] & 0xF);
            if d == 0.0 {
                continue;
            }
            let dm = b.dmin.to_f32() * f32::from(b.scales[j] >> 4);
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + dm) / d);
                l[16 * j + ii] = q.clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, &mut b.qs);
    }
}

/// Port of ggml's `quantize_row_q3_K_ref`: per 16 elements `make_q3_quants` (nmax 4, with the
/// RMSE refinement), the 16 signed scales quantized to 6 bits against the largest-magnitude
/// one, then every element re-quantized to −4..3 against its rounded scale.
pub fn quantize_row_q3_k_ref(x: &[f32], y: &mut [BlockQ3K]) {
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0_i8; QK_K];
        let mut scales = [0_f32; QK_K / 16];
        let mut max_scale = 0.0_f32;
        let mut amax = 0.0_f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16], true);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &scale) in scales.iter().enumerate() {
                // ggml stores nearest_int's result in an int8_t before clamping.
                let lv = (i32::from(nearest_int(iscale * scale) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = lv & 0xF;
                } else {
                    b.scales[j - 8] |= (lv & 0xF) << 4;
                }
                b.scales[j % 4 + 8] |= (lv >> 4) << (2 * (j / 4));
            }
            b.d = f16::from_f32(1.0 / iscale);
        } else {
            b.d = f16::from_f32(0.0);
        }

        let sc = q3_k_scales(&b.scales);
        for j in 0..QK_K / 16 {
            let d = b.d.to_f32() * f32::from(sc[j]);
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }

        // The third bit of element e goes to bit e / 32 of hmask[e % 32].
        let mut lu = [0_u8; QK_K];
        b.hmask = [0; QK_K / 8];
        for (e, (&v, u)) in l.iter().zip(lu.iter_mut()).enumerate() {
            let mut v = v as u8;
            if v > 3 {
                b.hmask[e % 32] |= 1 << (e / 32);
                v -= 4;
            }
            *u = v;
        }
        pack_2bit(&lu, &mut b.qs);
    }
}

/// Packs the 8 sub-block scales and mins (each ≤ 63) of a Q4_K/Q5_K block into 12 bytes, the
/// inverse of `get_scale_min_k4` (the packing loop of ggml's `quantize_row_q4_K_ref`).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], scales: &mut [u8; K_SCALE_SIZE]) {
    for j in 0..QK_K / 32 {
        if j < 4 {
            scales[j] = ls[j];
            scales[j + 4] = lm[j];
        } else {
            scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            scales[j - 4] |= (ls[j] >> 4) << 6;
            scales[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// The shared scale search of ggml's `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref`:
/// per 32 elements `make_qkx2_quants` with weights `rms(x) + |x|` (squared error), then scales
/// and mins quantized to 6 bits against the block maxima and packed into `scales_out`, then
/// every element re-quantized against its rounded scale and min into `l` (0..=`nmax`).
/// Returns `(d, dmin)`.
fn quantize_q4_q5_k_block(x: &[f32], nmax: i32, rmin: f32, nstep: i32, scales_out: &mut [u8; K_SCALE_SIZE], l: &mut [u8; QK_K]) -> (f16, f16) {
    let mut laux = [0_u8; 32];
    let mut weights = [0_f32; 32];
    let mut mins = [0_f32; QK_K / 32];
    let mut scales = [0_f32; QK_K / 32];
    let mut max_scale = 0.0_f32;
    let mut max_min = 0.0_f32;
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0_f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux, rmin, 0.1, nstep, false);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0_u8; 8];
    let mut lm = [0_u8; 8];
    for j in 0..QK_K / 32 {
        // ggml stores nearest_int's result in a uint8_t, then takes MIN(63, ·).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    pack_scale_min_k4(&ls, &lm, scales_out);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);

    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, scales_out);
        let dj = d.to_f32() * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / dj);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
    (d, dmin)
}

/// Port of ggml's `quantize_row_q4_K_ref` (`make_qkx2_quants` with nmax 15, rmin −1,
/// 20 steps).
pub fn quantize_row_q4_k_ref(x: &[f32], y: &mut [BlockQ4K]) {
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0_u8; QK_K];
        (b.d, b.dmin) = quantize_q4_q5_k_block(x, 15, -1.0, 20, &mut b.scales, &mut l);
        for j in 0..QK_K / 64 {
            for i in 0..32 {
                b.qs[32 * j + i] = l[64 * j + i] | (l[64 * j + i + 32] << 4);
            }
        }
    }
}

/// Port of ggml's `quantize_row_q5_K_ref` (`make_qkx2_quants` with nmax 31, rmin −0.5,
/// 15 steps); the fifth bit of element `e` goes to bit `e / 32` of `qh[e % 32]`.
pub fn quantize_row_q5_k_ref(x: &[f32], y: &mut [BlockQ5K]) {
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0_u8; QK_K];
        (b.d, b.dmin) = quantize_q4_q5_k_block(x, 31, -0.5, 15, &mut b.scales, &mut l);
        b.qh = [0; QK_K / 8];
        let (mut m1, mut m2) = (1_u8, 2_u8);
        for n in 0..QK_K / 64 {
            for j in 0..32 {
                let mut l1 = l[64 * n + j];
                if l1 > 15 {
                    l1 -= 16;
                    b.qh[j] |= m1;
                }
                let mut l2 = l[64 * n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    b.qh[j] |= m2;
                }
                b.qs[32 * n + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// Port of ggml's `quantize_row_q6_K_ref`: per 16 elements `make_qx_quants` (nmax 32,
/// x²-weighted search), the 16 scales quantized to signed 8 bits against the
/// largest-magnitude one (`d = max_scale / −128`), then every element re-quantized to
/// −32..31. A block whose scales are all below `GROUP_MAX_EPS` is all zero.
pub fn quantize_row_q6_k_ref(x: &[f32], y: &mut [BlockQ6K]) {
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0_i8; QK_K];
        let mut scales = [0_f32; QK_K / 16];
        let mut max_scale = 0.0_f32;
        let mut max_abs_scale = 0.0_f32;
        for ib in 0..QK_K / 16 {
            let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16], 1, None);
            scales[ib] = scale;
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }

        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6K::zeroed();
            continue;
        }

        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for (s, &scale) in b.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale).min(127) as i8;
        }

        for j in 0..QK_K / 16 {
            let d = b.d.to_f32() * f32::from(b.scales[j]);
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }

        for n in 0..QK_K / 128 {
            let l = &l[128 * n..128 * n + 128];
            let ql = &mut b.ql[64 * n..64 * n + 64];
            for i in 0..32 {
                let q = |k: usize| l[i + 32 * k] as u8;
                ql[i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                ql[i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                b.qh[32 * n + i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}

/// Port of ggml's `quantize_row_q8_K_ref`: `d = max / −127` for the largest-magnitude
/// element (so it maps to −127), `q = min(127, round(x / d))`, and `bsums` the sums of `q`
/// per 16 elements. An all-zero block gets `d = 0` and zero quants; ggml leaves its `bsums`
/// untouched, we zero them (which are also their true sums).
pub fn quantize_row_q8_k_ref(x: &[f32], y: &mut [BlockQ8K]) {
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0.0_f32;
        let mut amax = 0.0_f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            b.d = 0.0;
            b.qs = [0; QK_K];
            b.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum();
        }
        b.d = 1.0 / iscale;
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products with Q8_K activations (ports of ggml-cpu/quants.c `ggml_vec_dot_*_generic`)
//
// Integer sums are exact, so only the float accumulation order matters for bit-identity; it is
// kept as in ggml: Q2_K adds one float per block, the others accumulate `d·aux32[l]` in eight
// per-lane float sums (lane = element index mod 8) that are added up at the end, after the
// running min correction (Q4_K, Q5_K).
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, vec_dot, GgmlType};

    const K_TYPES: [GgmlType; 6] = [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K];

    /// tests/test-quantize-fns.cpp `generate_data`: `0.1 + amplitude·cos(i + offset)`.
    fn generate_data(offset: f32, n: usize, amplitude: f32) -> Vec<f32> {
        (0..n).map(|i| (0.1_f64 + f64::from(amplitude * (i as f32 + offset).cos())) as f32).collect()
    }

    /// tests/test-quantize-fns.cpp `array_rmse` (sic: √Σd² / n, not √(Σd²/n)).
    fn array_rmse(a: &[f32], b: &[f32]) -> f32 {
        let sum: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x - y) * f64::from(x - y)).sum();
        (sum as f32).sqrt() / a.len() as f32
    }

    /// Deterministic pseudo-random data in [-amp, amp) (xorshift).
    fn random_data(seed: u64, n: usize, amp: f32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let mut q = vec![0_u8; x.len() / ty.block_size() * ty.type_size()];
        quantize_row(ty, x, &mut q).expect("quantize");
        q
    }

    fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; n];
        dequantize_row(ty, q, &mut y).expect("dequantize");
        y
    }

    /// ggml's MAX_QUANTIZATION_TOTAL_ERROR{,_2BITS,_3BITS}.
    fn max_quantization_error(ty: GgmlType) -> f32 {
        match ty {
            GgmlType::Q2_K => 0.0075,
            GgmlType::Q3_K => 0.0040,
            _ => 0.002,
        }
    }

    #[test]
    fn round_trip_error_within_ggml_tolerances() {
        // test-quantize-fns.cpp: 32·128 elements of generate_data(0.0).
        let n = 32 * 128;
        let x = generate_data(0.0, n, 2.0);
        for ty in K_TYPES {
            let y = dequantize(ty, &quantize(ty, &x), n);
            let err = array_rmse(&x, &y);
            eprintln!("{ty:?}: total quantization error {err:.6} (ggml limit {})", max_quantization_error(ty));
            assert!(err < max_quantization_error(ty), "{ty:?}: {err}");
        }
    }

    #[test]
    fn round_trip_on_awkward_lengths() {
        // ggml's metric shrinks like 1/√n, so compare the per-element RMS against the RMS its
        // limits allow at n = 4096 (limit·64), and also against a tighter relative bound.
        for (ty, max_rel) in
            [(GgmlType::Q2_K, 0.30), (GgmlType::Q3_K, 0.16), (GgmlType::Q4_K, 0.065), (GgmlType::Q5_K, 0.032), (GgmlType::Q6_K, 0.016), (GgmlType::Q8_K, 0.005)]
        {
            for (blocks, seed) in [(1, 7), (3, 11)] {
                let n = blocks * QK_K;
                for x in [generate_data(0.5, n, 2.0), random_data(seed, n, 3.0)] {
                    let y = dequantize(ty, &quantize(ty, &x), n);
                    let rms = (array_rmse(&x, &y) * n as f32) / (n as f32).sqrt();
                    let rms_x = (x.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
                    eprintln!("{ty:?} n={n}: rms {rms:.5}, relative {:.5}", rms / rms_x);
                    assert!(rms < max_quantization_error(ty) * 64.0, "{ty:?} n={n}: rms {rms}");
                    assert!(rms / rms_x < max_rel, "{ty:?} n={n}: relative rms {}", rms / rms_x);
                }
            }
        }
    }

    #[test]
    fn zero_and_constant_rows_round_trip() {
        for ty in K_TYPES {
            let zeros = vec![0.0_f32; 2 * QK_K];
            let y = dequantize(ty, &quantize(ty, &zeros), zeros.len());
            assert!(y.iter().all(|&v| v == 0.0), "{ty:?}: zeros");

            let ones = vec![1.0_f32; 2 * QK_K];
            let y = dequantize(ty, &quantize(ty, &ones), ones.len());
            for &v in &y {
                assert!((v - 1.0).abs() < 0.02, "{ty:?}: constant row gave {v}");
            }
        }
    }

    #[test]
    fn dot_product_error_within_ggml_tolerances() {
        // test-quantize-fns.cpp dot_product_error: weights from generate_data(0), activations
        // from generate_data(1) quantized to Q8_K, |vec_dot − Σ x·y| / n.
        let n = 32 * 128;
        let x = generate_data(0.0, n, 2.0);
        let a = generate_data(1.0, n, 2.0);
        let qa = quantize(GgmlType::Q8_K, &a);
        let exact: f64 = x.iter().zip(&a).map(|(&p, &q)| f64::from(p * q)).sum();
        for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let got = vec_dot(ty, n, &quantize(ty, &x), &qa).expect("vec_dot");
            let err = (got - exact as f32).abs() / n as f32;
            let limit = if ty == GgmlType::Q2_K { 0.04 } else { 0.02 };
            eprintln!("{ty:?}: dot product error {err:.6} (ggml limit {limit})");
            assert!(err < limit, "{ty:?}: {err}");
        }
    }

    #[test]
    fn vec_dot_matches_dequantized_f64_dot() {
        for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            for (blocks, seed) in [(1_usize, 1_u64), (3, 2), (16, 3)] {
                let n = blocks * QK_K;
                let x = random_data(seed, n, 2.0);
                let mut a = random_data(seed + 100, n, 1.5);
                // A shifted block exercises the min terms (bsums) of Q2_K/Q4_K/Q5_K.
                for v in &mut a[..QK_K] {
                    *v += 0.75;
                }
                let (qx, qa) = (quantize(ty, &x), quantize(GgmlType::Q8_K, &a));
                let got = vec_dot(ty, n, &qx, &qa).expect("vec_dot");
                let (dx, da) = (dequantize(ty, &qx, n), dequantize(GgmlType::Q8_K, &qa, n));
                let exact: f64 = dx.iter().zip(&da).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum();
                let mag: f64 = dx.iter().zip(&da).map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs()).sum();
                let diff = (f64::from(got) - exact).abs();
                assert!(diff <= 1e-5 * mag, "{ty:?} n={n}: got {got}, exact {exact}, diff {diff}, mag {mag}");
            }
        }
    }

    #[test]
    fn q8_k_bsums_are_sums_per_16_and_max_maps_to_127() {
        let x = random_data(42, 4 * QK_K, 5.0);
        let mut y = [BlockQ8K::zeroed(); 4];
        quantize_row_q8_k_ref(&x, &mut y);
        for (b, x) in y.iter().zip(x.chunks_exact(QK_K)) {
            for (j, &s) in b.bsums.iter().enumerate() {
                let want: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| i32::from(q)).sum();
                assert_eq!(i32::from(s), want);
            }
            let imax = (0..QK_K).max_by(|&i, &j| x[i].abs().total_cmp(&x[j].abs())).unwrap_or(0);
            assert_eq!(b.qs[imax], -127);
            assert_eq!(b.d, 1.0 / (-127.0 / x[imax]));
        }
    }

    /// FNV-1a 64 of a byte string.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }

    #[test]
    fn quantize_and_vec_dot_match_ggml_reference_bits() {
        // Expected values from ggml's own C (quantize_row_*_ref and ggml_vec_dot_*_q8_K_generic
        // of the llama.cpp vendored in llama-cpp-python 0.3.36, built with -O2
        // -ffp-contract=off) on the same inputs. The inputs avoid libm (cos) so they are
        // identical on every platform. Note: a build that contracts to FMA (GCC's default with
        // -march=native) quantizes a few blocks differently and sums vec_dot differently.
        let mut x = random_data(99, 4 * QK_K, 3.0);
        for v in &mut x[256..512] {
            *v *= 0.001;
        }
        x[600] = 40.0;
        x[768..800].fill(0.0);
        let qa = quantize(GgmlType::Q8_K, &random_data(7, 4 * QK_K, 1.0));
        for (ty, hash, dot) in [
            (GgmlType::Q2_K, 0x6de6_e27f_e79b_e035_u64, Some(0xc141_74e1_u32)),
            (GgmlType::Q3_K, 0x649c_b348_a215_d4a5, Some(0xc18c_167a)),
            (GgmlType::Q4_K, 0x4cf4_f5a7_5f4d_75bc, Some(0xc0bb_1fb4)),
            (GgmlType::Q5_K, 0x43c4_1073_0358_d8c7, Some(0xc0e9_8f98)),
            (GgmlType::Q6_K, 0x6fa7_c533_fe33_f7c5, Some(0xc0d6_dbb8)),
            (GgmlType::Q8_K, 0xffce_3890_3571_f8fb, None),
        ] {
            let q = quantize(ty, &x);
            assert_eq!(fnv1a(&q), hash, "{ty:?}: quantized bytes differ from ggml's");
            if let Some(dot) = dot {
                let got = vec_dot(ty, x.len(), &q, &qa).expect("vec_dot");
                assert_eq!(got.to_bits(), dot, "{ty:?}: vec_dot {got} differs from ggml's {}", f32::from_bits(dot));
            }
        }
    }

    // ---- hand-made blocks: element order and bit placement, written from the format spec ----

    /// 6-bit Q4_K/Q5_K scales and mins, packed as the format describes.
    fn pack_k4(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut s = [0_u8; 12];
        for j in 0..4 {
            s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        s
    }

    /// Puts 2-bit value `v` of element `e` where Q2_K/Q3_K keep it.
    fn put_2bit(qs: &mut [u8; 64], e: usize, v: u8) {
        let (half, r) = (e / 128, e % 128);
        qs[32 * half + r % 32] |= (v & 3) << (2 * (r / 32));
    }

    /// Puts 4-bit value `v` of element `e` where Q4_K/Q5_K keep it.
    fn put_nibble(qs: &mut [u8; 128], e: usize, v: u8) {
        let (chunk, r) = (e / 64, e % 64);
        qs[32 * chunk + r % 32] |= (v & 0xF) << (4 * (r / 32));
    }

    #[test]
    fn dequantize_hand_made_q2_k() {
        let mut b = BlockQ2K::zeroed();
        b.d = f16::from_f32(0.5);
        b.dmin = f16::from_f32(0.25);
        let q = |e: usize| ((e * 5 + e / 7) % 4) as u8;
        for j in 0..16 {
            b.scales[j] = ((j as u8) & 0xF) | (((15 - j) as u8) << 4);
        }
        for e in 0..QK_K {
            put_2bit(&mut b.qs, e, q(e));
        }
        let mut y = [0.0_f32; QK_K];
        dequantize_row_q2_k(&[b], &mut y);
        for (e, &v) in y.iter().enumerate() {
            let j = e / 16;
            let want = 0.5 * j as f32 * f32::from(q(e)) - 0.25 * (15 - j) as f32;
            assert_eq!(v, want, "element {e}");
        }
    }

    #[test]
    fn dequantize_hand_made_q3_k() {
        let mut b = BlockQ3K::zeroed();
        b.d = f16::from_f32(0.5);
        let q = |e: usize| ((e * 3 + e / 5) % 8) as u8; // stored 3-bit value 0..7, meaning q − 4
        let sc = |j: usize| (j * 4 + 1) as u8; // 6-bit scale 1..61, meaning sc − 32
        for j in 0..16 {
            let s = sc(j);
            if j < 8 {
                b.scales[j] |= s & 0xF;
            } else {
                b.scales[j - 8] |= (s & 0xF) << 4;
            }
            b.scales[8 + j % 4] |= (s >> 4) << (2 * (j / 4));
        }
        for e in 0..QK_K {
            put_2bit(&mut b.qs, e, q(e) & 3);
            if q(e) & 4 != 0 {
                b.hmask[e % 32] |= 1 << (e / 32);
            }
        }
        let mut y = [0.0_f32; QK_K];
        dequantize_row_q3_k(&[b], &mut y);
        for (e, &v) in y.iter().enumerate() {
            let want = 0.5 * (i32::from(sc(e / 16)) - 32) as f32 * (i32::from(q(e)) - 4) as f32;
            assert_eq!(v, want, "element {e}");
        }
    }

    #[test]
    fn dequantize_hand_made_q4_k_and_q5_k() {
        let sc = [1_u8, 2, 3, 4, 17, 33, 49, 63];
        let m = [0_u8, 5, 63, 3, 20, 40, 50, 16];
        let q4 = |e: usize| ((e * 7 + 3) % 16) as u8;
        let q5 = |e: usize| ((e * 11 + e / 9) % 32) as u8;

        let mut b4 = BlockQ4K::zeroed();
        b4.d = f16::from_f32(1.0);
        b4.dmin = f16::from_f32(0.5);
        b4.scales = pack_k4(sc, m);
        let mut b5 = BlockQ5K::zeroed();
        b5.d = f16::from_f32(0.25);
        b5.dmin = f16::from_f32(2.0);
        b5.scales = pack_k4(sc, m);
        for e in 0..QK_K {
            put_nibble(&mut b4.qs, e, q4(e));
            put_nibble(&mut b5.qs, e, q5(e) & 0xF);
            if q5(e) & 16 != 0 {
                b5.qh[e % 32] |= 1 << (e / 32);
            }
        }
        let mut y4 = [0.0_f32; QK_K];
        let mut y5 = [0.0_f32; QK_K];
        dequantize_row_q4_k(&[b4], &mut y4);
        dequantize_row_q5_k(&[b5], &mut y5);
        for e in 0..QK_K {
            let j = e / 32;
            let want4 = f32::from(sc[j]) * f32::from(q4(e)) - 0.5 * f32::from(m[j]);
            let want5 = 0.25 * f32::from(sc[j]) * f32::from(q5(e)) - 2.0 * f32::from(m[j]);
            assert_eq!(y4[e], want4, "Q4_K element {e}");
            assert_eq!(y5[e], want5, "Q5_K element {e}");
        }
    }

    #[test]
    fn dequantize_hand_made_q6_k() {
        let mut b = BlockQ6K::zeroed();
        b.d = f16::from_f32(0.125);
        let q = |e: usize| ((e * 13 + e / 11) % 64) as u8; // stored 0..63, meaning q − 32
        for j in 0..16 {
            b.scales[j] = (j as i8 - 8) * 15;
        }
        for e in 0..QK_K {
            let (half, r) = (e / 128, e % 128);
            let (quarter, l) = (r / 32, r % 32);
            // Low nibbles: quarters 0/1 in the low nibbles of ql[0..32]/ql[32..64], quarters
            // 2/3 in their high nibbles; high 2 bits of quarter k at bits 2k of qh[l].
            let byte = 64 * half + 32 * (quarter % 2) + l;
            b.ql[byte] |= (q(e) & 0xF) << (4 * (quarter / 2));
            b.qh[32 * half + l] |= (q(e) >> 4) << (2 * quarter);
        }
        let mut y = [0.0_f32; QK_K];
        dequantize_row_q6_k(&[b], &mut y);
        for (e, &v) in y.iter().enumerate() {
            let want = 0.125 * f32::from(b.scales[e / 16]) * (i32::from(q(e)) - 32) as f32;
            assert_eq!(v, want, "element {e}");
        }
    }

    #[test]
    fn dequantize_hand_made_q8_k() {
        let mut b = BlockQ8K::zeroed();
        b.d = 0.5;
        for (e, q) in b.qs.iter_mut().enumerate() {
            *q = (e as i32 - 128) as i8;
        }
        let mut y = [0.0_f32; QK_K];
        dequantize_row_q8_k(&[b], &mut y);
        for (e, &v) in y.iter().enumerate() {
            assert_eq!(v, 0.5 * (e as f32 - 128.0));
        }
    }

    #[test]
    fn quantize_keeps_a_4bit_grid_close_in_q4_k() {
        // Values on a 4-bit grid with a common step and offset: every element keeps its grid
        // level, so only the f16/6-bit rounding of scale and min remains (checks the
        // scale/min packing end to end).
        let x: Vec<f32> = (0..QK_K).map(|e| ((e * 7 + 3) % 16) as f32 * 0.5 - 2.0).collect();
        let y = dequantize(GgmlType::Q4_K, &quantize(GgmlType::Q4_K, &x), QK_K);
        for (e, (&a, &b)) in x.iter().zip(&y).enumerate() {
            assert!((a - b).abs() < 1e-2, "element {e}: {a} vs {b}");
        }
    }
}
