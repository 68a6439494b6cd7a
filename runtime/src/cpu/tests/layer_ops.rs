//! Layer ops against f64 and ggml's formulas: RMS norm, SiLU/GELU/GLUs, softmax and RoPE.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

#[test]
fn rms_norm_matches_f64() {
    let mut rng = Rng::new(11);
    for n in [1usize, 7, 576, 640] {
        let x = rng.vec(n);
        let w = rng.vec(n);
        let mut out = padded(n);
        rms_norm(&x, &w, 1e-6, &mut out[..n]);
        check_pad(&out, n, "rms_norm");
        let ms: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
        let s = 1.0 / (ms + 1e-6).sqrt();
        for i in 0..n {
            let want = f64::from(x[i]) * s * f64::from(w[i]);
            assert!((f64::from(out[i]) - want).abs() <= 1e-6 * want.abs() + 1e-30, "{n} {i}");
        }
        let mut y = x.clone();
        rms_norm_inplace(&mut y, &w, 1e-6);
        assert_eq!(y, out[..n].to_vec());
    }
}

#[test]
fn activations_match_ggml_formulas() {
    for i in -2000..2000 {
        let x = i as f32 * 0.01;
        let s = silu(x);
        let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
        assert!((f64::from(s) - want).abs() <= 1e-6 * want.abs().max(1e-3), "silu {x}");
    }
    for &k in Kernels::available() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            // GELU goes through an f16 table: f16 precision of input and output.
            let g = gelu_tanh(k, x);
            let e = ops::gelu_tanh_f32(x);
            assert!((g - e).abs() <= 2e-3 * e.abs() + 2e-3 * x.abs() * 0.5 + 1e-4, "{k:?} gelu {x}: {g} vs {e}");
        }
        assert_eq!(gelu_tanh(k, -10.0), 0.0);
        assert_eq!(gelu_tanh(k, 12.5), 12.5);
        let gate = [-11.0f32, -1.0, 0.5, 3.0, 11.0];
        let up = [2.0f32, 2.0, 2.0, 2.0, 2.0];
        let mut out = padded(5);
        geglu(k, &gate, &up, &mut out[..5]);
        check_pad(&out, 5, "geglu");
        assert_eq!(out[0], 0.0);
        assert_eq!(out[4], 22.0);
        assert_eq!(out[2], gelu_tanh(k, 0.5) * 2.0);
        swiglu(k, &gate, &up, &mut out[..5]);
        check_pad(&out, 5, "swiglu");
        let want = silu(-1.0) * 2.0;
        assert!((out[1] - want).abs() <= 4.0 * f32::EPSILON * want.abs(), "{k:?} swiglu");
    }
}

#[test]
fn softmax_sums_to_one() {
    let mut rng = Rng::new(5);
    let mut x = rng.vec(100);
    x[3] = 80.0;
    let orig = x.clone();
    softmax_inplace(&mut x);
    let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - 1.0).abs() < 1e-5);
    let m: f64 = orig.iter().map(|&v| (f64::from(v) - 80.0).exp()).sum();
    for (a, &b) in x.iter().zip(&orig) {
        let want = (f64::from(b) - 80.0).exp() / m;
        assert!((f64::from(*a) - want).abs() <= 1e-6 * want + 1e-37);
    }
    softmax_inplace(&mut []);
}

fn rope_reference(x: &[f32], n_heads: usize, hd: usize, pos: usize, r: &Rope) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for i in 0..r.n_dims / 2 {
        let ff = r.freq_factors.as_ref().map_or(1.0, |f| f64::from(f[i]));
        let theta = pos as f64 * f64::from(r.freq_base).powf(-2.0 * i as f64 / r.n_dims as f64) * f64::from(r.freq_scale) / ff;
        let (s, c) = theta.sin_cos();
        let (i0, i1) = match r.mode {
            RopeMode::Normal => (2 * i, 2 * i + 1),
            RopeMode::Neox => (i, i + r.n_dims / 2),
        };
        for h in 0..n_heads {
            let (a, b) = (out[h * hd + i0], out[h * hd + i1]);
            out[h * hd + i0] = a * c - b * s;
            out[h * hd + i1] = a * s + b * c;
        }
    }
    out
}

#[test]
fn rope_matches_reference() {
    let mut rng = Rng::new(21);
    for (mode, n_heads, hd, n_dims, base, ff) in [
        (RopeMode::Normal, 9, 64, 64, 100_000.0f32, false),
        (RopeMode::Neox, 4, 256, 256, 1_000_000.0, false),
        (RopeMode::Neox, 3, 64, 32, 10_000.0, false),
        (RopeMode::Normal, 2, 128, 128, 500_000.0, true),
    ] {
        let mut r = Rope::new(n_dims, base, mode);
        if ff {
            r.freq_factors = Some((0..n_dims / 2).map(|i| 1.0 + i as f32 * 0.25).collect());
            r.freq_scale = 0.5;
        }
        for pos in [0usize, 1, 17, 511, 4000] {
            let x = rng.vec(n_heads * hd);
            for &k in Kernels::available() {
                let mut y = x.clone();
                rope_inplace(k, &mut y, n_heads, hd, pos, &r);
                let want = rope_reference(&x, n_heads, hd, pos, &r);
                // the x86 build's contractions, bit for bit: one FMA per output
                let mut fused = x.clone();
                r.for_each_angle(pos, |i, c, s| {
                    let (i0, i1) = if mode == RopeMode::Normal { (2 * i, 2 * i + 1) } else { (i, i + n_dims / 2) };
                    for h in fused.chunks_exact_mut(hd) {
                        let (x0, x1) = (h[i0], h[i1]);
                        (h[i0], h[i1]) = (x0.mul_add(c, -(x1 * s)), x0.mul_add(s, x1 * c));
                    }
                });
                if k == Kernels::Avx2 {
                    assert!(y == fused, "{mode:?} pos {pos}: Avx2 rounds as x86's fused multiply-adds");
                } else if pos > 0 {
                    assert!(y != fused, "{k:?} {mode:?} pos {pos}: no fused multiply-adds");
                }
                // ggml's f32 theta recurrence drifts by ~n_dims/2 ulp of θ: allow pos-proportional error.
                // An error in θ moves an element in proportion to its pair's size.
                let size = x.iter().fold(1f64, |m, &v| m.max(f64::from(v.abs())));
                let tol = (1e-5 + pos as f64 * 4e-7 * (n_dims as f64 / 64.0)) * size;
                for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
                    assert!((f64::from(a) - b).abs() <= tol, "{k:?} {mode:?} pos {pos} elem {i}: {a} vs {b}");
                }
                for h in 0..n_heads {
                    for d in n_dims..hd {
                        assert_eq!(y[h * hd + d], x[h * hd + d], "unrotated dims pass through");
                    }
                }
                if pos == 0 {
                    assert_eq!(y, x, "position 0 is the identity");
                }
            }
        }
    }
}
