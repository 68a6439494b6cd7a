//! Quantization of the K-quant formats (ports of ggml-quants.c `quantize_row_*_ref`).

use super::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, K_SCALE_SIZE, QK_K};
use crate::quant::k_quants_helpers::{get_scale_min_k4, make_q3_quants, make_qkx2_quants, make_qx_quants, nearest_int, q3_k_scales, GROUP_MAX_EPS};
use bytemuck::Zeroable;
use half::f16;

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
