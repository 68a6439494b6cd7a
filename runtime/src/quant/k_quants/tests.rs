//! Tests of the K-quant reference code: round-trip and dot-product errors within ggml's
//! tolerances, bit-identity with ggml's own C on fixed inputs, hand-made blocks.

use super::*;
use crate::quant::{dequantize_row, quantize_row, vec_dot, GgmlType};
use bytemuck::Zeroable;

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
