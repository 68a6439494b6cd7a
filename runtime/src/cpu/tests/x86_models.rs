//! Scalar models of the arithmetic of llama.cpp's x86 AVX2 build (ggml-cpu/arch/x86/quants.c
//! `vec_dot`s, repack.cpp's q4_K gemm/gemv, tiled/ q6_K), written per output element: the
//! [`Kernels::Avx2`] matmul must equal them bit for bit on every shape, whatever row pairs,
//! tiles or token blocks it uses (the oracle tests show these models are llama.cpp's).

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
