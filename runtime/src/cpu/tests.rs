//! Kernel tests against the scalar oracle (`quant::`), run natively by `cargo test` and under
//! Node by `pkg-scripts/test-wasm-cpu` (wasm32 + SIMD128), where every kernel family compiled
//! in ([`Kernels::available`]) is checked.
//!
//! Conventions: deterministic pseudo-random data, awkward shapes (1 row, row counts that are
//! no multiple of any unroll, one and several blocks per row), sentinel values after every
//! output buffer, NaN/Inf checks, exact comparison of the scalar kernels with
//! `quant::vec_dot`, reassociation-sized bounds for SIMD, normalized MSE against an f64 dot
//! of the dequantized weights with the unquantized activations.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::kv_cache::{rotate_groups, KvCache, KvType};
use crate::quant::{self, GgmlType};

/// xorshift64*: deterministic data without a rand dependency.
pub(crate) struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    /// Roughly normal, with occasional outliers (like real activations).
    pub fn act(&mut self) -> f32 {
        let v = (self.f() + self.f() + self.f()) * 0.8;
        if self.next_u64() % 61 == 0 {
            v * 9.0
        } else {
            v
        }
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.act()).collect()
    }
}

const SENTINEL: u32 = 0x7FC0_DEAD;
const PAD: usize = 7;

fn padded(n: usize) -> Vec<f32> {
    vec![f32::from_bits(SENTINEL); n + PAD]
}

fn check_pad(buf: &[f32], n: usize, what: &str) {
    for (i, v) in buf[n..].iter().enumerate() {
        assert_eq!(v.to_bits(), SENTINEL, "{what}: sentinel {i} after the output was overwritten");
    }
}

fn check_finite(v: &[f32], what: &str) {
    for (i, x) in v.iter().enumerate() {
        assert!(x.is_finite(), "{what}: element {i} is {x}");
    }
}

const ALL_TYPES: [GgmlType; 13] = GgmlType::WEIGHT_TYPES;

fn col_sizes(ty: GgmlType) -> &'static [usize] {
    match ty.block_size() {
        1 => &[7, 32, 96, 640],
        32 => &[32, 96, 640],
        _ => &[256, 512, 768],
    }
}

/// A `rows × cols` weight matrix of type `ty`: quantized random floats, or (`raw`) random
/// quant bits with the f16 scales overwritten by sane values (exercises bit patterns the
/// quantizer never writes, e.g. −128 in Q8_0 and every 6-bit K-quant scale).
fn make_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng, raw: bool) -> Vec<u8> {
    let rb = ty.row_bytes(cols as u64).expect("whole blocks") as usize;
    let mut data = vec![0u8; rb * rows];
    if !raw || ty.block_size() == 1 {
        for r in 0..rows {
            let x: Vec<f32> = (0..cols).map(|_| rng.f() * 0.1).collect();
            quant::quantize_row(ty, &x, &mut data[r * rb..(r + 1) * rb]).expect("quantize");
        }
        return data;
    }
    for b in data.iter_mut() {
        *b = rng.next_u64() as u8;
    }
    // (offset of each f16 scale within the block)
    let scales: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for blk in data.chunks_exact_mut(ty.type_size()) {
        for &o in scales {
            let v = quant::ggml_fp32_to_fp16(rng.f() * 0.01).to_bits().to_le_bytes();
            blk[o..o + 2].copy_from_slice(&v);
        }
    }
    data
}

/// Dequantized weights and quantized activations, for the magnitude of the terms.
fn abs_dot(ty: GgmlType, w: &[u8], a: &[u8], cols: usize) -> f64 {
    let mut wf = vec![0f32; cols];
    let mut af = vec![0f32; cols];
    quant::dequantize_row(ty, w, &mut wf).expect("dequantize w");
    quant::dequantize_row(ty.vec_dot_type(), a, &mut af).expect("dequantize a");
    wf.iter().zip(&af).map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs()).sum()
}

/// One product for a test: a random `rows × cols` matrix of type `ty` (see [`make_weights`])
/// and `n_tokens` random activation rows from `seed`, multiplied on `kernels` into an output
/// with sentinels after it, which are checked. Returns the weights, the activations, the
/// output (`[n_tokens][rows]`, sentinels after) and a label for messages.
fn run_matmul(kernels: Kernels, ty: GgmlType, rows: usize, cols: usize, n_tokens: usize, raw: bool, seed: u64) -> (Vec<u8>, Vec<f32>, Vec<f32>, String) {
    let mut rng = Rng::new(seed);
    let data = make_weights(ty, rows, cols, &mut rng, raw);
    let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
    let x = rng.vec(cols * n_tokens);
    let mut y = padded(rows * n_tokens);
    matmul_with(kernels, &w, &x, n_tokens, &mut y, &mut Scratch::default()).expect("matmul");
    let what = format!("{} {ty} {rows}x{cols} t={n_tokens} raw={raw}", kernels.name());
    check_pad(&y, rows * n_tokens, &what);
    (data, x, y, what)
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
        let act = super::act_quant::quantize_row_bytes(kernels, vt, xt);
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
                            assert_eq!(got.to_bits(), super::float::dot(&wf, xt).to_bits(), "{what}: row {r} token {t}");
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
    assert!(data.len() >= super::PARALLEL_MIN_BYTES, "the product must be large enough to split");
    for n_tokens in [1, 3] {
        let x = rng.vec(cols * n_tokens);
        let mut one = padded(rows * n_tokens);
        let mut split = padded(rows * n_tokens);
        super::float::rows(&w, &x, n_tokens, 0, rows, |t, r, v| one[t * rows + r] = v).expect("one thread");
        // the parallel split itself, whatever num_threads() other tests set meanwhile
        super::split_rows_parallel(
            &w,
            n_tokens,
            &mut split[..rows * n_tokens],
            |r0, r1, out| super::float::rows(&w, &x, n_tokens, r0, r1, |t, r, v| out.put(t, r, v)),
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

// ---------------------------------------------------------------------------------------------
// ops

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

// ---------------------------------------------------------------------------------------------
// KV cache and attention

const KV_TYPES: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8, KvType::Q4];

#[test]
fn kv_round_trip_within_bounds() {
    let mut rng = Rng::new(31);
    for ty in KV_TYPES {
        let (nl, nctx, nkv, dk, dv) = (2, 5, 3, 64, 96);
        let mut c = KvCache::new(ty, nl, nctx, nkv, dk, dv).expect("cache");
        let mut rows = Vec::new();
        for l in 0..nl {
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for p in 0..nctx {
                // K with a part shared by all tokens (what a Q4 cache's K offset takes out)
                let k: Vec<f32> = rng.vec(nkv * dk).iter().enumerate().map(|(i, x)| x + (i as f32 * 0.3).sin()).collect();
                let v = rng.vec(nkv * dv);
                if l == 0 {
                    c.write(l, p, &k, &v).expect("write");
                }
                ks.extend_from_slice(&k);
                vs.extend_from_slice(&v);
                rows.push((l, p, k, v));
            }
            // layer 1: one batch from position 0, which sets a Q4 cache's K offset
            if l == 1 {
                c.write_batch(l, 0, &ks, &vs).expect("write batch");
            }
        }
        assert_eq!(c.n_pos(), nctx);
        for (l, p, k, v) in &rows {
            for (src, d, is_k) in [(k, dk, true), (v, dv, false)] {
                for h in 0..nkv {
                    let mut out = padded(d);
                    if is_k {
                        c.read_k(*l, *p, h, &mut out[..d]);
                    } else {
                        c.read_v(*l, *p, h, &mut out[..d]);
                    }
                    check_pad(&out, d, "kv read");
                    let mut src = src[h * d..(h + 1) * d].to_vec();
                    let out = &mut out[..d];
                    // A type that offsets K quantizes K less the offset: bound the error there.
                    if is_k {
                        let m = c.k_offset(*l, h);
                        assert_eq!(m.len(), if ty.offsets_k() { d } else { 0 });
                        for ((s, o), m) in src.iter_mut().zip(out.iter_mut()).zip(m) {
                            *s -= m;
                            *o -= m;
                        }
                    }
                    // A rotating type quantizes the rotated row: bound the error there.
                    if ty.rotates() {
                        rotate_groups(&mut src);
                        rotate_groups(out);
                    }
                    for (g, (o, s)) in out.chunks(32).zip(src.chunks(32)).enumerate() {
                        let amax = s.iter().fold(0f32, |m, &x| m.max(x.abs()));
                        // (+ the f32 rounding of adding the offset back and taking it off)
                        let bound = 1e-6
                            + match ty {
                                KvType::F32 => 0.0,
                                KvType::F16 => amax * 2f32.powi(-11),
                                // d/2 + f16 rounding of d (≤ 2⁻¹¹·d per unit of q, |q| ≤ 127)
                                KvType::Q8 => amax / 127.0 * 0.57,
                                // the clamp of the extreme value costs a whole step d = amax/8
                                KvType::Q4 => amax / 8.0 * 1.01,
                            };
                        for (a, b) in o.iter().zip(s) {
                            assert!((a - b).abs() <= bound, "{ty:?} l{l} p{p} h{h} g{g}: {a} vs {b} (bound {bound})");
                        }
                    }
                }
            }
        }
    }
}

/// Tokens evaluated together, for the attention calls (a prefill; `Avx2`'s `p·V` order differs
/// for a single token: `attention_matches_reference` checks both).
const BATCH: usize = 2;

/// The query as the attention kernels see it: Q8_0 for quantized caches, f32 otherwise.
fn effective_q(ty: KvType, q: &[f32]) -> Vec<f32> {
    if !ty.is_quantized() {
        return q.to_vec();
    }
    // A rotating cache rounds the rotated query; rotated back it meets the rows as read_k gives them.
    let mut q = q.to_vec();
    if ty.rotates() {
        rotate_groups(&mut q);
    }
    let vt = ty.ggml_type().vec_dot_type();
    let mut bytes = vec![0u8; vt.row_bytes(q.len() as u64).expect("q row") as usize];
    quant::quantize_row(vt, &q, &mut bytes).expect("quantize q");
    let mut out = vec![0f32; q.len()];
    quant::dequantize_row(vt, &bytes, &mut out).expect("dequantize q");
    if ty.rotates() {
        rotate_groups(&mut out);
    }
    out
}

/// `q·m` in f64.
fn q_dot(q: &[f32], m: &[f32]) -> f64 {
    q.iter().zip(m).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// f64 attention of `q` over K/V rows given by `kv(p, kv_head) -> (k, v)`, with `shifts[h]`
/// (when given) added to head `h`'s dot products before they are scaled.
#[allow(clippy::too_many_arguments)]
fn attention_reference(
    kv: &dyn Fn(usize, usize) -> (Vec<f32>, Vec<f32>),
    dk: usize,
    dv: usize,
    nkv: usize,
    q: &[f32],
    n_heads: usize,
    start: usize,
    end: usize,
    scale: f32,
    softcap: Option<f32>,
    shifts: &[f64],
) -> Vec<f64> {
    let group = n_heads / nkv;
    let mut out = vec![0f64; n_heads * dv];
    for h in 0..n_heads {
        let g = h / group;
        let mut s = Vec::new();
        for p in start..end {
            let (k, _) = kv(p, g);
            let mut d = q_dot(&q[h * dk..(h + 1) * dk], &k) + shifts.get(h).copied().unwrap_or(0.0);
            d *= f64::from(scale);
            if let Some(cap) = softcap {
                d = f64::from(cap) * (d / f64::from(cap)).tanh();
            }
            s.push(d);
        }
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (i, p) in (start..end).enumerate() {
            let (_, v) = kv(p, g);
            for j in 0..dv {
                out[h * dv + j] += e[i] / sum * f64::from(v[j]);
            }
        }
    }
    out
}

/// Largest |a − b| over max |b|.
fn max_rel_err(a: &[f32], b: &[f64]) -> f64 {
    let m = b.iter().fold(0f64, |m, &x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max) / m
}

#[test]
fn attention_matches_reference() {
    for &kernels in Kernels::available() {
        for ty in KV_TYPES {
            for (n_heads, nkv, dk, dv) in [(9usize, 3usize, 64usize, 64usize), (4, 1, 256, 256), (6, 6, 32, 64), (4, 2, 64, 32)] {
                let mut rng = Rng::new((n_heads * 31 + dk) as u64);
                let (nl, nctx) = (2, 40);
                let q_all: Vec<f32> = rng.vec(n_heads * dk);
                let mut c = KvCache::new(ty, nl, nctx, nkv, dk, dv).expect("cache");
                let mut orig = Vec::new();
                for p in 0..nctx {
                    let (k, v) = (rng.vec(nkv * dk), rng.vec(nkv * dv));
                    c.write(0, p, &k, &v).expect("write");
                }
                // layer 1 (the one attended): one batch from position 0, K with a part shared
                // by all tokens, so that a Q4 cache stores it less an offset
                for _ in 0..nctx {
                    let k: Vec<f32> = rng.vec(nkv * dk).iter().enumerate().map(|(i, x)| x + 0.5 * (i as f32 * 0.7).sin()).collect();
                    orig.push((k, rng.vec(nkv * dv)));
                }
                let ks: Vec<f32> = orig.iter().flat_map(|(k, _)| k.clone()).collect();
                let vs: Vec<f32> = orig.iter().flat_map(|(_, v)| v.clone()).collect();
                c.write_batch(1, 0, &ks, &vs).expect("write batch");
                assert_eq!(c.k_offset(1, 0).iter().any(|m| m.abs() > 0.1), ty.offsets_k());
                // the stored rows (K less the offset, which moves no softmax)
                let stored = |p: usize, g: usize| {
                    let (mut k, mut v) = (vec![0f32; dk], vec![0f32; dv]);
                    c.read_k(1, p, g, &mut k);
                    c.read_v(1, p, g, &mut v);
                    for (k, m) in k.iter_mut().zip(c.k_offset(1, g)) {
                        *k -= m;
                    }
                    (k, v)
                };
                // what a softcap needs added back: q·m per head
                let shifts: Vec<f64> = (0..n_heads)
                    .map(|h| {
                        let m = c.k_offset(1, h / (n_heads / nkv));
                        q_dot(&q_all[h * dk..(h + 1) * dk], m)
                    })
                    .collect();
                let original = |p: usize, g: usize| (orig[p].0[g * dk..(g + 1) * dk].to_vec(), orig[p].1[g * dv..(g + 1) * dv].to_vec());
                let q = q_all.clone();
                let scale = 1.0 / (dk as f32).sqrt();
                for ((start, end, cap), batch) in [(0usize, 1usize, None), (0, 40, None), (13, 29, None), (0, 33, Some(5.0f32))]
                    .into_iter()
                    // a query of a batch, and one alone (`Avx2` sums p·V in another order then)
                    .flat_map(|r| [(r, BATCH), (r, 1)])
                {
                    let mut out = padded(n_heads * dv);
                    let mut s = AttnScratch::default();
                    attention(kernels, &c, 1, &q, n_heads, start, end, scale, cap, batch, &mut out[..n_heads * dv], &mut s);
                    let what = format!("{} {ty:?} {n_heads}/{nkv} dk{dk} dv{dv} {start}..{end} cap {cap:?} batch {batch}", kernels.name());
                    check_pad(&out, n_heads * dv, &what);
                    check_finite(&out[..n_heads * dv], &what);
                    let out = &out[..n_heads * dv];
                    // Tight: the stored rows and the query as converted for the K dot product.
                    let q_eff = effective_q(ty, &q);
                    let shift: &[f64] = if cap.is_some() { &shifts } else { &[] };
                    let tight = attention_reference(&stored, dk, dv, nkv, &q_eff, n_heads, start, end, scale, cap, shift);
                    let e = max_rel_err(out, &tight);
                    assert!(e <= 2e-5, "{what}: {e:e} off the f64 reference on the stored rows");
                    // Loose: the original f32 rows and query (the cost of the cache format).
                    let loose = attention_reference(&original, dk, dv, nkv, &q, n_heads, start, end, scale, cap, &[]);
                    let bound = match ty {
                        KvType::F32 => 2e-5,
                        KvType::F16 => 5e-3,
                        KvType::Q8 => 6e-2,
                        KvType::Q4 => 0.5,
                    };
                    let e = max_rel_err(out, &loose);
                    assert!(e <= bound, "{what}: {e:e} off the f64 reference on the original rows (bound {bound:e})");
                }
                // An empty range writes zeros.
                let mut out = vec![1f32; n_heads * dv];
                attention(kernels, &c, 0, &q, n_heads, 5, 5, scale, None, BATCH, &mut out, &mut AttnScratch::default());
                assert!(out.iter().all(|&v| v == 0.0));
            }
        }
    }
}

/// A quantized cache with f16 copies (4 sink positions, a query's last 5): every query reads
/// the copies of the positions RecentRows names and the quantized rows of the others — within
/// 2e-5 of the f64 reference on exactly those rows (the copies rotated back, the query as the
/// quantized rows meet it), with and without a softcap and a sliding window; and, summed over
/// the cases, clearly closer to the original f32 rows than the same cache without copies.
#[test]
fn attention_reads_sink_and_recent_copies() {
    for &kernels in Kernels::available() {
        for ty in [KvType::Q8, KvType::Q4] {
            // summed over the cases: [with copies, without]
            let mut sq_err = [0f64; 2];
            for (n_heads, nkv, dk, dv) in [(9usize, 3usize, 64usize, 64usize), (4, 1, 256, 256), (4, 2, 64, 32)] {
                let mut rng = Rng::new((n_heads * 7 + dk) as u64);
                let nctx = 40;
                let q: Vec<f32> = rng.vec(n_heads * dk);
                let orig: Vec<(Vec<f32>, Vec<f32>)> = (0..nctx)
                    .map(|_| (rng.vec(nkv * dk).iter().enumerate().map(|(i, x)| x + 0.5 * (i as f32 * 0.7).sin()).collect(), rng.vec(nkv * dv)))
                    .collect();
                let ks: Vec<f32> = orig.iter().flat_map(|(k, _)| k.clone()).collect();
                let vs: Vec<f32> = orig.iter().flat_map(|(_, v)| v.clone()).collect();
                let mut plain = KvCache::new(ty, 1, nctx, nkv, dk, dv).expect("cache");
                let mut c = KvCache::new(ty, 1, nctx, nkv, dk, dv).expect("cache").with_recent(5).expect("copies");
                assert_eq!((c.copies().sink, c.copies().recent), (4, 5));
                // positions 0..24 in one batch (the K offset), then 24..40 a further batch, so
                // that queries read copies both kept from the first and pending from the second
                for cache in [&mut plain, &mut c] {
                    cache.write_batch(0, 0, &ks[..24 * nkv * dk], &vs[..24 * nkv * dv]).expect("write");
                    cache.write_batch(0, 24, &ks[24 * nkv * dk..], &vs[24 * nkv * dv..]).expect("write");
                }
                let half_row = |row: &[u8]| -> Vec<f32> {
                    let mut x: Vec<f32> =
                        row.chunks_exact(2).map(|b| quant::ggml_fp16_to_fp32(half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])))).collect();
                    rotate_groups(&mut x);
                    x
                };
                let original = |p: usize, g: usize| (orig[p].0[g * dk..(g + 1) * dk].to_vec(), orig[p].1[g * dv..(g + 1) * dv].to_vec());
                let shifts: Vec<f64> = (0..n_heads).map(|h| q_dot(&q[h * dk..(h + 1) * dk], c.k_offset(0, h / (n_heads / nkv)))).collect();
                let scale = 1.0 / (dk as f32).sqrt();
                for (start, end, cap) in [(0usize, 40usize, None), (0, 30, None), (0, 3, None), (13, 36, Some(5.0f32)), (0, 22, Some(5.0))] {
                    let what = format!("{} {ty:?} {n_heads}/{nkv} dk{dk} dv{dv} {start}..{end} cap {cap:?}", kernels.name());
                    // the rows this query reads, less the K offset
                    let read = |p: usize, g: usize| {
                        // (a query at 21 finds no copies of 17 and 18: of the first batch only
                        // its last 5 positions are kept, and the sinks)
                        if let (true, Some(k), Some(v)) = (c.copies().reads_copy(p, end - 1), c.recent_k_row(0, p, g), c.recent_v_row(0, p, g)) {
                            return (half_row(k), half_row(v));
                        }
                        let (mut k, mut v) = (vec![0f32; dk], vec![0f32; dv]);
                        c.read_k(0, p, g, &mut k);
                        c.read_v(0, p, g, &mut v);
                        for (k, m) in k.iter_mut().zip(c.k_offset(0, g)) {
                            *k -= m;
                        }
                        (k, v)
                    };
                    let mut outs = Vec::new();
                    for cache in [&c, &plain] {
                        let mut out = padded(n_heads * dv);
                        attention(kernels, cache, 0, &q, n_heads, start, end, scale, cap, BATCH, &mut out[..n_heads * dv], &mut AttnScratch::default());
                        check_pad(&out, n_heads * dv, &what);
                        check_finite(&out[..n_heads * dv], &what);
                        out.truncate(n_heads * dv);
                        outs.push(out);
                    }
                    let shift: &[f64] = if cap.is_some() { &shifts } else { &[] };
                    let tight = attention_reference(&read, dk, dv, nkv, &effective_q(ty, &q), n_heads, start, end, scale, cap, shift);
                    let e = max_rel_err(&outs[0], &tight);
                    assert!(e <= 2e-5, "{what}: {e:e} off the f64 reference on the rows read");
                    let loose = attention_reference(&original, dk, dv, nkv, &q, n_heads, start, end, scale, cap, &[]);
                    for (sq, out) in sq_err.iter_mut().zip(&outs) {
                        *sq += out.iter().zip(&loose).map(|(a, b)| (f64::from(*a) - b).powi(2)).sum::<f64>();
                    }
                }
            }
            let [with, without] = sq_err;
            assert!(with < 0.8 * without, "{} {ty:?}: squared error from the f32 rows with copies {with:e}, without {without:e}", kernels.name());
        }
    }
}

/// Queries read the same rows, and give the same bits, whether their positions were written in
/// one batch, in batches of other sizes, or one at a time with each query right after its
/// write (as a forward pass does): the copies of a query's last positions come from the
/// pending batch or the kept slots alike, across the slots' wrap-around.
#[test]
fn attention_with_copies_is_the_same_batched_or_not() {
    for &kernels in Kernels::available() {
        for ty in [KvType::Q8, KvType::Q4] {
            let (n_heads, nkv, dk, dv, nctx) = (6usize, 2usize, 64usize, 32usize, 40usize);
            let mut rng = Rng::new(11);
            let q: Vec<f32> = rng.vec(nctx * n_heads * dk);
            let ks: Vec<f32> = rng.vec(nctx * nkv * dk);
            let vs: Vec<f32> = rng.vec(nctx * nkv * dv);
            let scale = 0.2;
            let mut runs: Vec<Vec<f32>> = Vec::new();
            // every split starts with the same batch 0..8 (which sets the K offset); the last
            // run is the first without copies
            for (splits, recent) in
                [(vec![0usize, 8, 40], 6), (vec![0, 8, 9, 25, 40], 6), ((0..=40).filter(|&p| p == 0 || p >= 8).collect(), 6), (vec![0, 8, 40], 0)]
            {
                let mut c = KvCache::new(ty, 2, nctx, nkv, dk, dv).expect("cache").with_recent(recent).expect("copies");
                let mut out = vec![0f32; nctx * n_heads * dv];
                for w in splits.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    for layer in 0..2 {
                        c.write_batch(layer, a, &ks[a * nkv * dk..b * nkv * dk], &vs[a * nkv * dv..b * nkv * dv]).expect("write");
                        for pos in a..b {
                            let o = &mut out[pos * n_heads * dv..(pos + 1) * n_heads * dv];
                            attention(
                                kernels,
                                &c,
                                layer,
                                &q[pos * n_heads * dk..(pos + 1) * n_heads * dk],
                                n_heads,
                                0,
                                pos + 1,
                                scale,
                                None,
                                b - a,
                                o,
                                &mut AttnScratch::default(),
                            );
                        }
                    }
                }
                runs.push(out);
            }
            let same = |r: &[f32]| r.iter().zip(&runs[0]).all(|(a, b)| a.to_bits() == b.to_bits());
            for (i, r) in runs.iter().enumerate().take(3).skip(1) {
                assert!(same(r), "{} {ty:?}: split {i} differs from one batch", kernels.name());
            }
            // (not vacuous: the copies change what the queries read)
            assert!(!same(&runs[3]), "{} {ty:?}: the same bits without copies", kernels.name());
        }
    }
}

/// An f16 cache gives bit for bit what an f32 cache holding the same (f16-representable) values
/// gives: with several heads per KV head its rows are widened once and the f32 kernels run;
/// with one, the f16 kernels read them in place.
#[test]
fn attention_f16_cache_equals_f32_cache_of_same_values() {
    for &kernels in Kernels::available() {
        for (n_heads, nkv, dk, dv) in [(9usize, 3usize, 64usize, 64usize), (4, 4, 36, 68)] {
            let mut rng = Rng::new((n_heads + dk) as u64);
            let (nl, nctx) = (1, 23);
            let mut c16 = KvCache::new(KvType::F16, nl, nctx, nkv, dk, dv).expect("cache");
            let mut c32 = KvCache::new(KvType::F32, nl, nctx, nkv, dk, dv).expect("cache");
            let halve = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::f16::from_f32(x * 4.0).to_f32()).collect() };
            for p in 0..nctx {
                let (k, v) = (halve(rng.vec(nkv * dk)), halve(rng.vec(nkv * dv)));
                c16.write(0, p, &k, &v).expect("write");
                c32.write(0, p, &k, &v).expect("write");
            }
            let q = rng.vec(n_heads * dk);
            for (start, end, cap) in [(0usize, 23usize, None), (5, 17, Some(3.0f32))] {
                let mut o16 = vec![0f32; n_heads * dv];
                let mut o32 = vec![0f32; n_heads * dv];
                let mut s = AttnScratch::default();
                attention(kernels, &c16, 0, &q, n_heads, start, end, 0.125, cap, BATCH, &mut o16, &mut s);
                attention(kernels, &c32, 0, &q, n_heads, start, end, 0.125, cap, BATCH, &mut o32, &mut s);
                check_finite(&o16, "f16 cache");
                for (i, (a, b)) in o16.iter().zip(&o32).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{} {n_heads}/{nkv} {start}..{end}: output {i}: f16 cache {a}, f32 cache {b}", kernels.name());
                }
            }
        }
    }
}

#[test]
fn attention_exp_is_accurate() {
    let mut x = 0.0f32;
    while x > -90.0 {
        let got = f64::from(attention::exp_nonpositive(x));
        let want = f64::from(x).exp();
        if x >= -87.0 {
            assert!((got - want).abs() <= 3.0 * f64::from(f32::EPSILON) * want, "exp({x}) = {got}, want {want}");
        } else {
            assert!(got <= 1.7e-38, "exp({x}) = {got}");
        }
        x -= 0.0137;
    }
    assert_eq!(attention::exp_nonpositive(0.0), 1.0);
    assert!(attention::exp_nonpositive(f32::NAN).is_nan());
}

// ---------------------------------------------------------------------------------------------
// benchmark (opt-in: build with WEBGGUF_BENCH=1; prints per-type matvec throughput)

fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

fn report(line: &str) {
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_test::console_log!("{}", line);
    #[cfg(not(target_arch = "wasm32"))]
    println!("{line}");
}

/// Bench only: the kernel shapes the SIMD matmuls may use — 0 single rows, 1 and row pairs,
/// 2 and two-row × four-token tiles (all, the default).
pub(super) static KERNEL_SHAPES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);

#[test]
fn bench_matvec() {
    if option_env!("WEBGGUF_BENCH").is_none() {
        return;
    }
    let mut rng = Rng::new(99);
    // (label, kernels, KERNEL_SHAPES)
    let mut variants = vec![("scalar", Kernels::Scalar, 2)];
    if Kernels::available().contains(&Kernels::Simd) {
        variants.push((Kernels::Simd.name(), Kernels::Simd, 2));
        variants.push(("no-tile", Kernels::Simd, 1));
        variants.push(("1-row", Kernels::Simd, 0));
    }
    // (type, rows, cols, tokens): every type at a cache-resident size, then Q4_1 and Q8_0 at
    // SmolLM2's output shape (x2: 98304 x 576, 57 M weights, more than L3 holds: streamed from
    // memory, as decode streams the whole model), then prefill-shaped products (64 tokens).
    let shapes = ALL_TYPES
        .iter()
        .map(|&ty| match ty.block_size() {
            256 => (ty, 1536, 768, 1),
            _ => (ty, 1536, 576, 1),
        })
        .chain([
            (GgmlType::Q4_1, 98304, 576, 1),
            (GgmlType::Q8_0, 98304, 576, 1),
            (GgmlType::Q4_1, 1536, 576, 64),
            (GgmlType::Q8_0, 1536, 576, 64),
            (GgmlType::Q4_K, 1536, 768, 64),
            (GgmlType::Q6_K, 1536, 768, 64),
        ]);
    for (ty, rows, cols, n_tokens) in shapes {
        let data = make_weights(ty, rows, cols, &mut rng, false);
        let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
        let x = rng.vec(cols * n_tokens);
        let mut y = vec![0f32; rows * n_tokens];
        let mut s = Scratch::default();
        // best of 3 interleaved rounds of ~100 ms per variant (the machine may be busy)
        let mut best = vec![f64::INFINITY; variants.len()];
        for _ in 0..3 {
            for (i, &(_, kernels, shapes)) in variants.iter().enumerate() {
                KERNEL_SHAPES.store(shapes, std::sync::atomic::Ordering::Relaxed);
                matmul_with(kernels, &w, &x, n_tokens, &mut y, &mut s).expect("warm-up");
                let t0 = now_ms();
                let mut iters = 0u32;
                while now_ms() - t0 < 100.0 {
                    matmul_with(kernels, &w, &x, n_tokens, &mut y, &mut s).expect("matmul");
                    iters += 1;
                }
                best[i] = best[i].min((now_ms() - t0) / 1e3 / f64::from(iters));
            }
        }
        KERNEL_SHAPES.store(2, std::sync::atomic::Ordering::Relaxed);
        // Gw/s: weight-token products per second (a weight read once per token in decode)
        let mut line = format!("{:>5} {rows}x{cols} t={n_tokens}:", ty.name());
        for (i, &(label, _, _)) in variants.iter().enumerate() {
            line += &format!("  {label} {:8.1} us {:5.2} Gw/s", best[i] * 1e6, (rows * cols * n_tokens) as f64 / best[i] / 1e9);
        }
        report(&line);
    }
}

#[test]
fn bench_attention() {
    if option_env!("WEBGGUF_BENCH").is_none() {
        return;
    }
    let mut rng = Rng::new(7);
    // (n_heads, n_kv_heads, head_dim, positions): SmolLM2 and Gemma-3-270M at 512 tokens
    for (n_heads, nkv, hd, n) in [(9usize, 3usize, 64usize, 512usize), (4, 1, 256, 512)] {
        for ty in KV_TYPES {
            let mut c = KvCache::new(ty, 1, n, nkv, hd, hd).expect("cache");
            for p in 0..n {
                c.write(0, p, &rng.vec(nkv * hd), &rng.vec(nkv * hd)).expect("write");
            }
            let q = rng.vec(n_heads * hd);
            let mut out = vec![0f32; n_heads * hd];
            let mut s = AttnScratch::default();
            let mut line = format!("attention {n_heads}/{nkv} x{hd} over {n} {ty:?}:");
            for &kernels in Kernels::available() {
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let t0 = now_ms();
                    let mut iters = 0u32;
                    while now_ms() - t0 < 50.0 {
                        attention(kernels, &c, 0, &q, n_heads, 0, n, 0.125, None, BATCH, &mut out, &mut s);
                        iters += 1;
                    }
                    best = best.min((now_ms() - t0) / f64::from(iters));
                }
                line += &format!("  {} {:7.1} us", kernels.name(), best * 1e3);
            }
            report(&line);
        }
    }
}

/// Scalar models of the arithmetic of llama.cpp's x86 AVX2 build (ggml-cpu/arch/x86/quants.c
/// `vec_dot`s, repack.cpp's q4_K gemm/gemv, tiled/ q6_K), written per output element: the
/// [`Kernels::Avx2`] matmul must equal them bit for bit on every shape, whatever row pairs,
/// tiles or token blocks it uses (the oracle tests show these models are llama.cpp's).
#[cfg(target_arch = "x86_64")]
mod x86_models {
    use super::*;

    fn f16_at(b: &[u8], o: usize) -> f32 {
        quant::ggml_fp16_to_fp32(half::f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]])))
    }

    /// `hsum_float_8`: (x[i+4] + x[i]), then (0+2) + (1+3).
    fn hsum8(x: [f32; 8]) -> f32 {
        let t: [f32; 4] = core::array::from_fn(|m| x[m + 4] + x[m]);
        (t[0] + t[2]) + (t[1] + t[3])
    }

    /// Legacy types against Q8_0/Q8_1 activation blocks: 8 lanes of 4 consecutive products,
    /// one fused multiply-add per block and lane by `d_w·d_a`, Q4_1's `m·s` fused aside.
    fn legacy(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
        let (bb, ab) = (ty.type_size(), ty.vec_dot_type().type_size());
        let mut acc = [0f32; 8];
        let mut summs = 0f32;
        for (b, y) in w.chunks_exact(bb).zip(a.chunks_exact(ab)) {
            let wq: [i32; 32] = core::array::from_fn(|e| match ty {
                GgmlType::Q4_1 => i32::from(if e < 16 { b[4 + e] & 15 } else { b[4 + e - 16] >> 4 }),
                GgmlType::Q8_0 => i32::from(b[2 + e] as i8),
                _ => {
                    // Q5_0
                    let nib = i32::from(if e < 16 { b[6 + e] & 15 } else { b[6 + e - 16] >> 4 });
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    nib | (((qh >> e) & 1) as i32) << 4
                }
            } - if ty == GgmlType::Q5_0 { 16 } else { 0 });
            let yq_off = if ty == GgmlType::Q4_1 { 4 } else { 2 };
            let d = f16_at(b, 0) * f16_at(y, 0);
            for (j, a) in acc.iter_mut().enumerate() {
                let s: i32 = (4 * j..4 * j + 4).map(|e| wq[e] * i32::from(y[yq_off + e] as i8)).sum();
                *a = d.mul_add(s as f32, *a);
            }
            if ty == GgmlType::Q4_1 {
                summs = f16_at(b, 2).mul_add(f16_at(y, 2), summs);
            }
        }
        hsum8(acc) + summs
    }

    /// Q8_K activation block: (d, quants, bsums).
    fn q8k(y: &[u8]) -> (f32, Vec<i32>, Vec<i32>) {
        let d = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let q = y[4..260].iter().map(|&v| i32::from(v as i8)).collect();
        let bs = y[260..292].chunks_exact(2).map(|c| i32::from(i16::from_le_bytes([c[0], c[1]]))).collect();
        (d, q, bs)
    }

    /// Q6_K value `e` (0..256) of a block, 0..63.
    fn q6(b: &[u8], e: usize) -> i32 {
        let (half, l) = (e / 128, e % 128);
        let (part, l) = (l / 32, l % 32);
        let ql = b[64 * half + l + if part % 2 == 1 { 32 } else { 0 }];
        let lo = if part < 2 { ql & 15 } else { ql >> 4 };
        let hi = (b[128 + 32 * half + l] >> (2 * part)) & 3;
        i32::from(lo | (hi << 4))
    }

    #[allow(clippy::needless_range_loop)] // indices are element numbers, as in the lanes
    /// `ggml_vec_dot_q6_K_q8_K` (AVX2): lane u holds, per 32-element run, the scaled products
    /// of elements 4u..4u+4 minus 32·(bsum·scale) of the 16-groups 2u, 2u+1.
    fn q6_k_vec_dot(w: &[u8], a: &[u8]) -> f32 {
        let mut acc = [0f32; 8];
        for (b, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
            let (yd, q8, bs) = q8k(y);
            let sc = |k: usize| i32::from(b[192 + k] as i8);
            let mut lanes = [0i32; 8];
            for (u, lane) in lanes.iter_mut().enumerate() {
                for run in 0..8 {
                    for e in 32 * run + 4 * u..32 * run + 4 * u + 4 {
                        *lane += sc(e / 16) * q6(b, e) * q8[e];
                    }
                }
                *lane -= 32 * (bs[2 * u] * sc(2 * u) + bs[2 * u + 1] * sc(2 * u + 1));
            }
            let d = yd * f16_at(b, 208);
            for (x, &l) in acc.iter_mut().zip(&lanes) {
                *x = d.mul_add(l as f32, *x);
            }
        }
        hsum8(acc)
    }

    /// The tiled matmul (8 tokens or more): per block the exact integer, times the weight d,
    /// fused with the activation d.
    fn q6_k_tiled(w: &[u8], a: &[u8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
            let (yd, q8, _) = q8k(y);
            let s1: i32 = (0..256).map(|e| i32::from(b[192 + e / 16] as i8) * (q6(b, e) - 32) * q8[e]).sum();
            acc = (f16_at(b, 208) * s1 as f32).mul_add(yd, acc);
        }
        acc
    }

    /// Repacked Q4_K: gemm fuses per 64-element pair of sub-blocks, gemv per block.
    fn q4_k(w: &[u8], a: &[u8], gemm: bool) -> f32 {
        let (mut acc, mut acc_min) = (0f32, 0f32);
        for (b, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
            let (yd, q8, bs) = q8k(y);
            let sc: [u8; 12] = core::array::from_fn(|i| b[4 + i]);
            let (dd, dm) = (f16_at(b, 0) * yd, f16_at(b, 2) * yd);
            let (mut sb, mut mb) = (0i32, 0i32);
            for j in 0..4 {
                let (mut s, mut m) = (0i32, 0i32);
                for k in 0..2 {
                    let (scale, min) = quant::get_scale_min_k4(2 * j + k, &sc);
                    let dot: i32 = (0..32)
                        .map(|l| {
                            let q = b[16 + 32 * j + l];
                            i32::from(if k == 0 { q & 15 } else { q >> 4 }) * q8[64 * j + 32 * k + l]
                        })
                        .sum();
                    s += i32::from(scale) * dot;
                    m += i32::from(min) * (bs[4 * j + 2 * k] + bs[4 * j + 2 * k + 1]);
                }
                if gemm {
                    acc = (s as f32).mul_add(dd, acc);
                    acc_min = (m as f32).mul_add(dm, acc_min);
                } else {
                    (sb, mb) = (sb + s, mb + m);
                }
            }
            if !gemm {
                acc = (sb as f32).mul_add(dd, acc);
                acc_min = (mb as f32).mul_add(dm, acc_min);
            }
        }
        acc - acc_min
    }

    #[test]
    fn avx2_matmul_is_the_x86_arithmetic_bit_for_bit() {
        assert!(Kernels::available().contains(&Kernels::Avx2), "this test needs an x86-64 CPU with AVX2, FMA and F16C");
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q6_K, GgmlType::Q4_K] {
            for &cols in col_sizes(ty) {
                // 8 rows: Q4_K repacked (a multiple of 8); 5: not (the SIMD fallback, skipped)
                for rows in [8usize, 5] {
                    for n_tokens in [1usize, 3, 4, 6, 9, 37] {
                        for raw in [false, true] {
                            let seed = (cols * 131 + rows * 7 + n_tokens) as u64;
                            let (data, x, y, what) = run_matmul(Kernels::Avx2, ty, rows, cols, n_tokens, raw, seed);
                            let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
                            if ty == GgmlType::Q4_K && rows % 8 != 0 {
                                continue;
                            }
                            let gemm_until = if n_tokens > 3 { n_tokens - n_tokens % 4 } else { 0 };
                            for t in 0..n_tokens {
                                let a = super::super::act_quant::quantize_row_bytes(Kernels::Avx2, ty.vec_dot_type(), &x[t * cols..(t + 1) * cols]);
                                for r in 0..rows {
                                    let want = match ty {
                                        GgmlType::Q6_K if n_tokens >= 8 => q6_k_tiled(w.row(r), &a),
                                        GgmlType::Q6_K => q6_k_vec_dot(w.row(r), &a),
                                        GgmlType::Q4_K => q4_k(w.row(r), &a, t < gemm_until),
                                        _ => legacy(ty, w.row(r), &a),
                                    };
                                    let got = y[t * rows + r];
                                    assert_eq!(got.to_bits(), want.to_bits(), "{what}: row {r} token {t}: {got} vs model {want}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
