//! Shared helpers of the K-quant reference code: the scale searches of ggml's
//! `ggml-quants.c` (`nearest_int`, `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`)
//! and the unpacking of the packed 6-bit sub-block scales (`get_scale_min_k4`, the Q3_K
//! scale shuffle).
//!
//! Floating-point expressions keep the C operand order (`a * b * c` is `(a * b) * c`) and are
//! evaluated in `f32` without fused multiply-adds, as a strict-IEEE build of ggml does, so the
//! chosen quants are bit-identical to ggml's.

/// Smallest group maximum that counts as non-zero (ggml's `GROUP_MAX_EPS`).
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even. Port of ggml's `nearest_int`: adding
/// 1.5·2²³ pushes the integer part into the low mantissa bits, which are read back.
/// Valid for |fval| ≤ 4194303 (ggml asserts it); outside that range (or for NaN) the
/// result is as meaningless as ggml's, but equal to it.
#[inline]
pub(super) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0_f32;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Symmetric quantization of `x` to levels `-nmax..nmax-1`, written to `l` offset by `nmax`;
/// returns the scale. Port of ggml's `make_qx_quants`: start from `-nmax / max`, then try 18
/// nudged inverse scales and keep the one with the best weighted least-squares fit.
/// `rmse_type` picks the weighting when `qw` is `None` (1: x², 2: 1, 3: |x|, else √|x|);
/// 0 skips the search and a negative value returns after the first fit.
pub(super) fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8], rmse_type: i32, qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let mut max = 0.0_f32;
    let mut amax = 0.0_f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    if rmse_type == 0 {
        for (q, &v) in l.iter_mut().zip(x) {
            let li = nearest_int(iscale * v);
            *q = (nmax + li.clamp(-nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 { (-rmse_type, true) } else { (rmse_type, false) };
    let weight = |i: usize| -> f32 {
        match qw {
            Some(qw) => qw[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0.0_f32;
    let mut suml2 = 0.0_f32;
    for i in 0..n {
        let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = (li + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 { 0.5 * (scale + 1.0 / iscale) } else { 1.0 / iscale };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (i, &xi) in x.iter().enumerate() {
            let li = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
            let w = weight(i);
            sumlx += w * xi * li as f32;
            suml2 += w * li as f32 * li as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (q, &v) in l.iter_mut().zip(x) {
                let li = nearest_int(iscale * v);
                *q = (nmax + li.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric 3-bit-style quantization of `x` to `-nmax..nmax-1` (stored offset by `nmax` in
/// `l`); returns the scale. Port of ggml's `make_q3_quants`: with `do_rmse`, up to 5 rounds of
/// coordinate descent on the x²-weighted least-squares error, one quant at a time.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let mut max = 0.0_f32;
    let mut amax = 0.0_f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let mut sumlx = 0.0_f32;
        let mut suml2 = 0.0_f32;
        for i in 0..n {
            let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l[i] = li as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * li as f32;
            suml2 += w * li as f32 * li as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != i32::from(l[i]) {
                        slx += w * x[i] * new_l as f32;
                        sl2 += w * new_l as f32 * new_l as f32;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for q in l[..n].iter_mut() {
            *q += nmax as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for (q, &v) in l.iter_mut().zip(x) {
        let li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *q = (li + nmax) as i8;
    }
    1.0 / iscale
}

/// Asymmetric quantization `x ≈ scale·l − min` with `l` in `0..=nmax`; returns
/// `(scale, min)` (the `min` ggml returns through `the_min`, so ≥ 0). Port of ggml's
/// `make_qkx2_quants`: a first fit from the range, then `nstep + 1` inverse scales
/// `(rmin + rdelta·is + nmax) / (max − min)`, each refit by weighted least squares for both
/// scale and offset, keeping the one with the lowest weighted error (absolute if `use_mad`,
/// squared otherwise). `laux` is scratch of `x.len()` bytes.
#[allow(clippy::too_many_arguments)]
pub(super) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0_f32;
    for i in 0..n {
        let li = nearest_int(iscale * (x[i] - min));
        l[i] = li.clamp(0, nmax) as u8;
        let diff = scale * f32::from(l[i]) + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0_f32;
        let mut sum_l2 = 0.0_f32;
        let mut sum_xl = 0.0_f32;
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let w = weights[i];
            let lf = li as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0_f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed scale bytes of a Q4_K /
/// Q5_K block. Port of ggml's `get_scale_min_k4`: sub-blocks 0–3 keep scale and min in the low
/// 6 bits of bytes 0–3 and 4–7; sub-blocks 4–7 keep their low 4 bits in the nibbles of bytes
/// 8–11 and their top 2 bits in the top 2 bits of bytes 0–3 (scale) and 4–7 (min).
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The 16 signed 6-bit sub-block scales (−32..31) of a Q3_K block, from its 12 packed bytes:
/// sub-block `j` has its low 4 bits in byte `j % 8` (low nibble for j < 8, high nibble after)
/// and its top 2 bits in byte `8 + j % 4` at bit `2·(j / 4)`. This is the result of the
/// `kmask1`/`kmask2` shuffle of ggml's `dequantize_row_q3_K` and `ggml_vec_dot_q3_K_q8_K`,
/// written per element.
#[inline]
pub(super) fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0_i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999), -2);
        assert_eq!(nearest_int(3.7), 4);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    }

    #[test]
    fn q3_k_scales_match_ggml_kmask_shuffle() {
        // The literal u32 shuffle of ggml's dequantize_row_q3_K.
        fn ggml_shuffle(s: &[u8; 12]) -> [i8; 16] {
            const KMASK1: u32 = 0x0303_0303;
            const KMASK2: u32 = 0x0f0f_0f0f;
            let w = |k: usize| u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
            let (a0, a1, tmp) = (w(0), w(1), w(2));
            let aux = [
                (a0 & KMASK2) | ((tmp & KMASK1) << 4),
                (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
                ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
                ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
            ];
            let mut out = [0_i8; 16];
            for (j, o) in out.iter_mut().enumerate() {
                *o = aux[j / 4].to_le_bytes()[j % 4] as i8 - 32;
            }
            out
        }
        let mut state = 0x1234_5678_u32;
        for _ in 0..1000 {
            let mut s = [0_u8; 12];
            for b in &mut s {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            assert_eq!(q3_k_scales(&s), ggml_shuffle(&s));
        }
    }

    #[test]
    fn get_scale_min_k4_matches_ggml_utmp_shuffle() {
        // The literal u32 shuffle of ggml's ggml_vec_dot_q4_K_q8_K (scales then mins).
        fn ggml_shuffle(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
            const KMASK1: u32 = 0x3f3f_3f3f;
            const KMASK2: u32 = 0x0f0f_0f0f;
            const KMASK3: u32 = 0x0303_0303;
            let w = |k: usize| u32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
            let mut u = [w(0), w(1), w(2), 0];
            u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
            let uaux = u[1] & KMASK1;
            u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
            u[2] = uaux;
            u[0] &= KMASK1;
            let b: Vec<u8> = u.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut sc = [0; 8];
            let mut m = [0; 8];
            sc.copy_from_slice(&b[0..8]);
            m.copy_from_slice(&b[8..16]);
            (sc, m)
        }
        let mut state = 0x9e37_79b9_u32;
        for _ in 0..1000 {
            let mut s = [0_u8; 12];
            for b in &mut s {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
            let (sc, m) = ggml_shuffle(&s);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &s), (sc[j], m[j]));
            }
        }
    }
}
