//! Plain float types: F32, F16, BF16, with ggml's exact fp16/bf16 conversions.
//!
//! The conversions are bit-level ports of ggml's portable C (`ggml-impl.h`), not calls into
//! `half`, so that every target (x86, ARM, wasm) produces the same bits, NaNs included. For
//! non-NaN values they agree with IEEE round-to-nearest-even conversion (`half`, numpy,
//! F16C), which the unit tests check.
//!
//! The dot products port the scalar (non-`GGML_SIMD`) paths of `ggml-cpu/vec.cpp`: products
//! in f32, accumulated in `ggml_float` (f64), rounded to f32 once at the end. ggml's SIMD
//! paths accumulate in f32 vectors with FMA and so differ in the last bits.
use half::{bf16, f16};

/// Ports `ggml_compute_fp16_to_fp32` (ggml-impl.h, after Maratyszcza/FP16): exact for every
/// finite value and infinities. NaNs come back quiet with their payload kept (what the C
/// code yields on x86 and ARM; wasm leaves NaN payloads unspecified, so it is spelled out).
pub fn ggml_fp16_to_fp32(h: f16) -> f32 {
    let w = u32::from(h.to_bits()) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    const EXP_OFFSET: u32 = 0xE0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 0x1.0p-112f
    let normalized_bits = (two_w >> 4) + EXP_OFFSET;
    if two_w > 0xF800_0000 {
        // NaN: the C multiplies it by exp_scale, which quiets it and keeps the payload.
        return f32::from_bits(sign | normalized_bits | 0x0040_0000);
    }
    let normalized_value = f32::from_bits(normalized_bits) * exp_scale;

    const MAGIC_MASK: u32 = 126 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | MAGIC_MASK) - magic_bias;

    const DENORMALIZED_CUTOFF: u32 = 1 << 27;
    let result = sign | if two_w < DENORMALIZED_CUTOFF { denormalized_value.to_bits() } else { normalized_value.to_bits() };
    f32::from_bits(result)
}

/// Ports `ggml_compute_fp32_to_fp16` (ggml-impl.h; `GGML_FP32_TO_FP16` in ggml-quants.c):
/// round to nearest even, overflow to infinity, and every NaN to the canonical quiet NaN
/// `0x7E00` with the input's sign (the payload is dropped, unlike F16C hardware).
pub fn ggml_fp32_to_fp16(f: f32) -> f16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112f
    let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110f
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }

    // C: base = fp32_from_bits(...) + base (IEEE addition commutes, bit for bit)
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let h = (sign >> 16) | if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign };
    // `h` fits in 16 bits: sign >> 16 is bit 15, nonsign is at most 0x7C00 + 0xFFF.
    f16::from_bits(h as u16)
}

/// Ports `ggml_compute_bf16_to_fp32` (ggml-impl.h): the bf16 bits are the high half of the f32.
pub fn ggml_bf16_to_fp32(h: bf16) -> f32 {
    f32::from_bits(u32::from(h.to_bits()) << 16)
}

/// Ports `ggml_compute_fp32_to_bf16` (ggml-impl.h): round to nearest even (overflowing to
/// infinity), NaNs truncated and forced quiet (`| 64`), subnormals kept.
pub fn ggml_fp32_to_bf16(s: f32) -> bf16 {
    let i = s.to_bits();
    if (i & 0x7FFF_FFFF) > 0x7F80_0000 {
        return bf16::from_bits(((i >> 16) | 64) as u16);
    }
    // No overflow: i <= 0xFF80_0000 here, so i + 0x8000 < 2^32.
    bf16::from_bits(((i + (0x7FFF + ((i >> 16) & 1))) >> 16) as u16)
}

/// F32 "dequantize": a copy (ggml's F32 `to_float` is a plain copy).
pub fn dequantize_row_f32(x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v;
    }
}

/// Ports `ggml_fp16_to_fp32_row` (ggml.c).
pub fn dequantize_row_f16(x: &[f16], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = ggml_fp16_to_fp32(v);
    }
}

/// Ports `ggml_bf16_to_fp32_row` (ggml.c).
pub fn dequantize_row_bf16(x: &[bf16], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = ggml_bf16_to_fp32(v);
    }
}

/// F32 "quantize": a copy.
pub fn quantize_row_f32(x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v;
    }
}

/// Ports `ggml_fp32_to_fp16_row` (ggml.c; F16's `from_float_ref`).
pub fn quantize_row_f16(x: &[f32], y: &mut [f16]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = ggml_fp32_to_fp16(v);
    }
}

/// Ports `ggml_fp32_to_bf16_row_ref` (ggml.c; BF16's `from_float_ref`).
pub fn quantize_row_bf16(x: &[f32], y: &mut [bf16]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = ggml_fp32_to_bf16(v);
    }
}

/// Ports the scalar path of `ggml_vec_dot_f32` (ggml-cpu/vec.cpp): f32 products summed in f64.
pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f64;
    for (&a, &b) in x.iter().zip(y) {
        sumf += f64::from(a * b);
    }
    sumf as f32
}

/// Ports the scalar path of `ggml_vec_dot_f16` (ggml-cpu/vec.cpp): f32 products of the
/// converted halves, summed in f64.
pub fn vec_dot_f16(x: &[f16], y: &[f16]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f64;
    for (&a, &b) in x.iter().zip(y) {
        sumf += f64::from(ggml_fp16_to_fp32(a) * ggml_fp16_to_fp32(b));
    }
    sumf as f32
}

/// Ports the scalar tail loop of `ggml_vec_dot_bf16` (ggml-cpu/vec.cpp), which is the whole
/// computation without AVX: f32 products of the converted values, summed in f64.
pub fn vec_dot_bf16(x: &[bf16], y: &[bf16]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f64;
    for (&a, &b) in x.iter().zip(y) {
        sumf += f64::from(ggml_bf16_to_fp32(a) * ggml_bf16_to_fp32(b));
    }
    sumf as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64) so the tests need no rand crate.
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    fn is_nan_bits32(b: u32) -> bool {
        (b & 0x7FFF_FFFF) > 0x7F80_0000
    }

    #[test]
    fn fp16_to_fp32_matches_ieee_for_every_half() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let ours = ggml_fp16_to_fp32(h).to_bits();
            if h.is_nan() {
                // quiet, same sign, payload shifted into the f32 mantissa
                let sign = u32::from(bits & 0x8000) << 16;
                let payload = u32::from(bits & 0x03FF) << 13;
                assert_eq!(ours, sign | 0x7FC0_0000 | payload, "{bits:#06x}");
            } else {
                assert_eq!(ours, h.to_f32().to_bits(), "{bits:#06x}");
            }
        }
    }

    /// Every rounding decision of f32 -> f16 happens at a representable half or at a midpoint
    /// between two consecutive halves; test those, their f32 neighbours, plus random bits.
    #[test]
    fn fp32_to_fp16_matches_ieee_round_to_nearest_even() {
        let check = |f: f32| {
            let ours = ggml_fp32_to_fp16(f).to_bits();
            if f.is_nan() {
                assert_eq!(ours, ((f.to_bits() >> 16) as u16 & 0x8000) | 0x7E00);
            } else {
                assert_eq!(ours, f16::from_f32(f).to_bits(), "{f:e} ({:#010x})", f.to_bits());
            }
        };
        for bits in 0..0x7C00u16 {
            let lo = f64::from(f16::from_bits(bits).to_f32());
            let hi = f64::from(f16::from_bits(bits + 1).to_f32());
            for v in [lo, (lo + hi) / 2.0] {
                let f = v as f32; // exact: halves and their midpoints fit in f32
                for g in [f, f32::from_bits(f.to_bits() + 1), f32::from_bits(f.to_bits().saturating_sub(1))] {
                    check(g);
                    check(-g);
                }
            }
        }
        let mut rng = SplitMix(1);
        for _ in 0..200_000 {
            check(f32::from_bits(rng.next() as u32));
        }
        for f in [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 65504.0, 65520.0, 65519.99] {
            check(f);
        }
    }

    #[test]
    fn bf16_conversions_match_ggml() {
        // ggml_compute_fp32_to_bf16 written as directly as possible
        let reference = |f: f32| -> u16 {
            let i = f.to_bits() as u64;
            if (i & 0x7FFF_FFFF) > 0x7F80_0000 {
                return ((i >> 16) | 64) as u16;
            }
            ((i + (0x7FFF + ((i >> 16) & 1))) >> 16) as u16
        };
        let mut rng = SplitMix(2);
        let mut samples: Vec<f32> = (0..200_000).map(|_| f32::from_bits(rng.next() as u32)).collect();
        samples.extend([0.0, -0.0, f32::MAX, -f32::MAX, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(1)]);
        samples.extend([f32::from_bits(0x7F80_0001), f32::from_bits(0xFFC1_2345), f32::from_bits(0x3F80_8000)]);
        samples.extend([f32::from_bits(0x3F81_8000), f32::from_bits(0x3F80_8001), f32::from_bits(0x7F7F_FFFF)]);
        for f in samples {
            let ours = ggml_fp32_to_bf16(f).to_bits();
            assert_eq!(ours, reference(f), "{:#010x}", f.to_bits());
            // half agrees with ggml for these too (it also quiets NaNs with | 0x40)
            assert_eq!(ours, bf16::from_f32(f).to_bits(), "{:#010x}", f.to_bits());
            let back = ggml_bf16_to_fp32(ggml_fp32_to_bf16(f)).to_bits();
            if !is_nan_bits32(f.to_bits()) {
                assert_eq!(back, u32::from(ours) << 16);
            }
        }
        // ties go to even, NaN becomes quiet
        assert_eq!(ggml_fp32_to_bf16(f32::from_bits(0x3F80_8000)).to_bits(), 0x3F80);
        assert_eq!(ggml_fp32_to_bf16(f32::from_bits(0x3F81_8000)).to_bits(), 0x3F82);
        assert_eq!(ggml_fp32_to_bf16(f32::from_bits(0x7F80_0001)).to_bits(), 0x7FC0);
        assert_eq!(ggml_fp32_to_bf16(f32::MAX).to_bits(), 0x7F80);
    }

    /// `0.1 + 2*cosf(i + offset)` from ggml's tests/test-quantize-fns.cpp.
    fn generate_data(offset: f32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (0.1 + 2.0 * f64::from((i as f32 + offset).cos())) as f32).collect()
    }

    /// test-quantize-fns.cpp's `array_rmse` is sqrt(Σ diff²) / n, with its limits set for
    /// n = 4096. This is the same metric scaled to that size, sqrt(Σ diff² / n) / 64, so short
    /// rows get the same per-element budget (identical at n = 4096).
    fn array_rmse(a: &[f32], b: &[f32]) -> f32 {
        let sum: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
        ((sum / a.len() as f64).sqrt() / 64.0) as f32
    }

    fn dot_f64(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x * y)).sum::<f64>() as f32
    }

    const MAX_QUANTIZATION_TOTAL_ERROR: f32 = 0.002;
    const MAX_DOT_PRODUCT_ERROR: f32 = 0.02;

    /// test-quantize-fns.cpp's dot error |dot_q - dot| / n at n = 4096; for other n the
    /// (random-walk) error is scaled as |dot_q - dot| / sqrt(4096 n), identical at n = 4096.
    fn dot_error(got: f32, exact: f32, n: usize) -> f32 {
        (got - exact).abs() / (4096.0 * n as f32).sqrt()
    }

    #[test]
    fn round_trip_and_dot_within_ggml_tolerances() {
        for n in [1usize, 3, 17, 32, 96, 32 * 128] {
            let x = generate_data(0.0, n);
            let y = generate_data(1.0, n);

            let mut f = vec![0f32; n];
            let mut back = vec![0f32; n];
            quantize_row_f32(&x, &mut f);
            dequantize_row_f32(&f, &mut back);
            assert_eq!(back, x);
            assert_eq!(vec_dot_f32(&x, &y), dot_f64(&x, &y));

            let mut h = vec![f16::ZERO; n];
            let mut hy = vec![f16::ZERO; n];
            quantize_row_f16(&x, &mut h);
            quantize_row_f16(&y, &mut hy);
            dequantize_row_f16(&h, &mut back);
            assert!(array_rmse(&x, &back) < MAX_QUANTIZATION_TOTAL_ERROR);
            let err = dot_error(vec_dot_f16(&h, &hy), dot_f64(&x, &y), n);
            assert!(err < MAX_DOT_PRODUCT_ERROR, "f16 n={n}: {err}");

            let mut b = vec![bf16::ZERO; n];
            let mut by = vec![bf16::ZERO; n];
            quantize_row_bf16(&x, &mut b);
            quantize_row_bf16(&y, &mut by);
            dequantize_row_bf16(&b, &mut back);
            assert!(array_rmse(&x, &back) < MAX_QUANTIZATION_TOTAL_ERROR);
            let err = dot_error(vec_dot_bf16(&b, &by), dot_f64(&x, &y), n);
            assert!(err < MAX_DOT_PRODUCT_ERROR, "bf16 n={n}: {err}");
        }
    }

    #[test]
    fn dots_accumulate_in_f64() {
        // 4096² = 2^24; in f32, 2^24 + 1 rounds back to 2^24 each time.
        let v = [4096.0f32, 1.0, 1.0];
        let h: Vec<f16> = v.iter().map(|&f| ggml_fp32_to_fp16(f)).collect();
        let b: Vec<bf16> = v.iter().map(|&f| ggml_fp32_to_bf16(f)).collect();
        assert_eq!(vec_dot_f32(&v, &v), 16_777_218.0);
        assert_eq!(vec_dot_f16(&h, &h), 16_777_218.0);
        assert_eq!(vec_dot_bf16(&b, &b), 16_777_218.0);
        assert_eq!(vec_dot_f32(&[], &[]), 0.0);
    }
}
