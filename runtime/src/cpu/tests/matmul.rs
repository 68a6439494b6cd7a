//! Matmul kernels against the scalar oracle and f64 (every family, weight type and shape),
//! `Kernels::Float` across threads, shape errors, and `get_row`.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;

/// Dequantized weights and quantized activations, for the magnitude of the terms.
fn abs_dot(ty: GgmlType, w: &[u8], a: &[u8], cols: usize) -> f64 {
    let mut wf = vec![0f32; cols];
    let mut af = vec![0f32; cols];
    quant::dequantize_row(ty, w, &mut wf).expect("dequantize w");
    quant::dequantize_row(ty.vec_dot_type(), a, &mut af).expect("dequantize a");
    wf.iter().zip(&af).map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs()).sum()
}

fn matmul_case(kernels: Kernels, ty: GgmlType, rows: usize, cols: usize, n_tokens: usize, raw: bool, seed: u64) {
    let (data, x, y, what) = run_matmul(kernels, ty, rows, cols, n_tokens, raw, seed);
    let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
    check_finite(&y[..rows * n_tokens], &what);

    let vt = ty.vec_dot_type();
    let ab = vt.row_bytes(cols as u64).expect("act row") as usize;
    let mut err2 = 0.0f64;
    let mut ref2 = 0.0f64;
    for t in 0..n_tokens {
        let xt = &x[t * cols..(t + 1) * cols];
        // the activations exactly as this family quantizes them
        let act = super::super::act_quant::quantize_row_bytes(kernels, vt, xt);
        assert_eq!(act.len(), ab, "quantize act");
        for r in 0..rows {
            let got = y[t * rows + r];
            let want = quant::vec_dot(ty, cols, w.row(r), &act).expect("oracle");
            match kernels {
                Kernels::Scalar => {
                    assert_eq!(got.to_bits(), want.to_bits(), "{what}: row {r} token {t}: {got} vs oracle {want}")
                }
                Kernels::Simd | Kernels::Avx2 | Kernels::Float => {
                    let nb = (cols / ty.block_size()) as f64;
                    let tol = 4.0 * (nb.min(64.0) + 16.0) * f64::from(f32::EPSILON) * abs_dot(ty, w.row(r), &act, cols);
                    assert!((f64::from(got) - f64::from(want)).abs() <= tol + 1e-30, "{what}: row {r} token {t}: {got} vs oracle {want} (tolerance {tol:e})");
                }
            }
            // against the unquantized activations, in f64
            let mut wf = vec![0f32; cols];
            quant::dequantize_row(ty, w.row(r), &mut wf).expect("dequantize");
            let exact: f64 = wf.iter().zip(xt).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let mag: f64 = wf.iter().zip(xt).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
            err2 += (f64::from(got) - exact).powi(2);
            ref2 += mag * mag;
        }
    }
    // Squared error over the squared magnitude Σ|w·x| (robust to cancelling rows).
    let nmse = err2 / ref2.max(1e-30);
    let bound = match vt {
        GgmlType::F32 => 1e-12,
        GgmlType::F16 => 1e-7,
        GgmlType::BF16 => 1e-5,
        _ => 1e-4,
    };
    assert!(nmse <= bound, "{what}: normalized MSE {nmse:e} over {bound:e}");
}

#[test]
fn matmul_matches_oracle_every_type_and_shape() {
    for &kernels in Kernels::available() {
        for (i, &ty) in ALL_TYPES.iter().enumerate() {
            for &cols in col_sizes(ty) {
                for (j, &rows) in [1usize, 3, 17].iter().enumerate() {
                    let seed = (i * 100 + j * 10 + cols) as u64;
                    matmul_case(kernels, ty, rows, cols, 1, false, seed);
                }
                matmul_case(kernels, ty, 5, cols, 3, false, 7 + cols as u64);
                // two tiles of four tokens and one left over, rows in pairs and one single
                matmul_case(kernels, ty, 5, cols, 9, false, 8 + cols as u64);
                matmul_case(kernels, ty, 4, cols, 1, true, 9 + cols as u64);
            }
        }
    }
}

/// Tiles (two rows × four tokens), row pairs, single rows and token blocks give bit for bit
/// the same results: a prefill's logits do not depend on how its tokens were grouped.
#[test]
fn matmul_tokens_together_equal_one_by_one() {
    for &kernels in Kernels::available() {
        for (i, &ty) in ALL_TYPES.iter().enumerate() {
            let cols = col_sizes(ty)[0];
            // 37 tokens: a whole token block of 32 and five more (a tile and one left over)
            let (rows, n_tokens) = (7, 37);
            let mut rng = Rng::new(500 + i as u64);
            let data = make_weights(ty, rows, cols, &mut rng, false);
            let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
            if kernels == Kernels::Avx2 && ty == GgmlType::Q6_K {
                // llama.cpp's x86 build takes a batch of 8 or more Q6_K tokens through its
                // tiled matmul, whose rounding differs from vec_dot's: so do we (see
                // `avx2::tests`), and a batch's results differ from single tokens' by design.
                continue;
            }
            let x = rng.vec(cols * n_tokens);
            let mut s = Scratch::default();
            let mut together = vec![0f32; rows * n_tokens];
            matmul_with(kernels, &w, &x, n_tokens, &mut together, &mut s).expect("matmul");
            for t in 0..n_tokens {
                let mut one = vec![0f32; rows];
                let xt = &x[t * cols..(t + 1) * cols];
                matmul_with(kernels, &w, xt, 1, &mut one, &mut s).expect("matmul");
                for r in 0..rows {
                    assert_eq!(together[t * rows + r].to_bits(), one[r].to_bits(), "{} {ty}: row {r} token {t}", kernels.name());
                }
            }
        }
    }
}

/// `Kernels::Float`: every weight type on awkward shapes against the dequantized row times the
/// unrounded activations in f64; each value bit for bit `float::dot` of the dequantized row
/// (so the same for any token grouping and thread split), sentinels untouched, no NaN.
#[test]
fn float_matmul_matches_f64_every_type_and_shape() {
    for (i, &ty) in ALL_TYPES.iter().enumerate() {
        for &cols in col_sizes(ty) {
            for (j, &(rows, n_tokens)) in [(1usize, 1usize), (17, 1), (5, 3), (3, 37)].iter().enumerate() {
                for raw in [false, true] {
                    let seed = (1000 + i * 100 + j * 10 + cols) as u64;
                    let (data, x, y, what) = run_matmul(Kernels::Float, ty, rows, cols, n_tokens, raw, seed);
                    let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
                    check_finite(&y[..rows * n_tokens], &what);
                    for r in 0..rows {
                        let mut wf = vec![0f32; cols];
                        quant::dequantize_row(ty, w.row(r), &mut wf).expect("dequantize");
                        for t in 0..n_tokens {
                            let xt = &x[t * cols..(t + 1) * cols];
                            let got = y[t * rows + r];
                            assert_eq!(got.to_bits(), super::super::float::dot(&wf, xt).to_bits(), "{what}: row {r} token {t}");
                            let exact: f64 = wf.iter().zip(xt).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                            let mag: f64 = wf.iter().zip(xt).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum();
                            let tol = (cols / 16 + 20) as f64 * f64::from(f32::EPSILON) * mag;
                            assert!((f64::from(got) - exact).abs() <= tol + 1e-30, "{what}: row {r} token {t}: {got} vs {exact} (tolerance {tol:e})");
                        }
                    }
                }
            }
        }
    }
}

/// `Kernels::Float` split over threads (a product large enough to be split: one token and
/// several) gives the bits of one thread (native: wasm runs one thread).
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn float_matmul_threads_change_nothing() {
    let (ty, rows, cols) = (GgmlType::Q8_0, 301, 4096);
    let mut rng = Rng::new(77);
    let data = make_weights(ty, rows, cols, &mut rng, false);
    let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
    assert!(data.len() >= super::super::PARALLEL_MIN_BYTES, "the product must be large enough to split");
    for n_tokens in [1, 3] {
        let x = rng.vec(cols * n_tokens);
        let mut one = padded(rows * n_tokens);
        let mut split = padded(rows * n_tokens);
        super::super::float::rows(&w, &x, n_tokens, 0, rows, |t, r, v| one[t * rows + r] = v).expect("one thread");
        // the parallel split itself, whatever num_threads() other tests set meanwhile
        super::super::split_rows_parallel(
            &w,
            n_tokens,
            &mut split[..rows * n_tokens],
            |r0, r1, out| super::super::float::rows(&w, &x, n_tokens, r0, r1, |t, r, v| out.put(t, r, v)),
            3,
        )
        .expect("three threads");
        check_pad(&split, rows * n_tokens, "float, three threads");
        let same = one.iter().zip(&split).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "float matmul, {n_tokens} tokens: three threads differ from one");
    }
}

#[test]
fn matmul_rejects_bad_shapes() {
    let data = vec![0u8; 2 * 18];
    assert!(matches!(QMatrix::new(GgmlType::Q4_0, 2, 48, &data), Err(QuantError::NotBlockMultiple { .. })));
    assert!(matches!(QMatrix::new(GgmlType::Q4_0, 3, 32, &data), Err(QuantError::BufferSize { .. })));
    assert!(matches!(QMatrix::new(GgmlType::IQ2_XS, 1, 256, &[0; 74]), Err(QuantError::Unsupported { .. })));
    let w = QMatrix::new(GgmlType::Q4_0, 2, 32, &data).expect("matrix");
    let mut s = Scratch::default();
    let mut y = vec![0f32; 2];
    assert!(matmul(&w, &[0.0; 31], 1, &mut y, &mut s).is_err());
    assert!(matmul(&w, &[0.0; 64], 2, &mut y, &mut s).is_err(), "y too short for 2 tokens");
    assert!(matmul(&w, &[0.0; 32], 1, &mut y, &mut s).is_ok());
    assert_eq!(w.row(1).len(), 18);
}

#[test]
fn get_row_dequantizes() {
    let mut rng = Rng::new(3);
    for &ty in &ALL_TYPES {
        let cols = col_sizes(ty)[1];
        let data = make_weights(ty, 3, cols, &mut rng, false);
        let w = QMatrix::new(ty, 3, cols, &data).expect("matrix");
        let mut out = vec![0f32; cols];
        let mut want = vec![0f32; cols];
        get_row(&w, 2, &mut out).expect("get_row");
        quant::dequantize_row(ty, w.row(2), &mut want).expect("dequantize");
        assert_eq!(out, want, "{ty}");
        assert!(get_row(&w, 3, &mut out).is_err());
    }
}
