//! Native integration tests of the CPU kernels through the public API (the per-kernel oracle
//! comparisons live in runtime/src/cpu/tests.rs and also run under wasm): threading, batched
//! (prefill) products against token-by-token ones, kernel families against each other on
//! model-sized shapes.

use webgguf::cpu::{self, matmul_with, Kernels, QMatrix, Scratch};
use webgguf::quant::{quantize_row, GgmlType};
use webgguf_tests::rng;

fn weights(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = rng(seed);
    let rb = ty.row_bytes(cols as u64).expect("whole blocks") as usize;
    let mut data = vec![0u8; rb * rows];
    for row in data.chunks_exact_mut(rb) {
        let x: Vec<f32> = (0..cols).map(|_| r() * 0.05).collect();
        quantize_row(ty, &x, row).expect("quantize");
    }
    data
}

const TYPES: [GgmlType; 8] = [GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

/// Splitting rows over threads changes nothing: every row is one kernel call either way.
#[test]
fn threads_give_identical_results() {
    for ty in TYPES {
        // large enough to cross the parallel threshold (1 MiB of weights × tokens)
        let (rows, cols) = (2051, if ty.block_size() == 256 { 1024 } else { 1120 });
        let data = weights(ty, rows, cols, 5);
        let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
        let mut r = rng(9);
        for n_tokens in [1usize, 3] {
            let x: Vec<f32> = (0..cols * n_tokens).map(|_| r()).collect();
            let mut s = Scratch::default();
            let mut y1 = vec![0f32; rows * n_tokens];
            let mut y3 = vec![0f32; rows * n_tokens];
            cpu::set_num_threads(1);
            cpu::matmul(&w, &x, n_tokens, &mut y1, &mut s).expect("1 thread");
            cpu::set_num_threads(3);
            cpu::matmul(&w, &x, n_tokens, &mut y3, &mut s).expect("3 threads");
            cpu::set_num_threads(1);
            assert_eq!(y1, y3, "{ty} t={n_tokens}");
        }
    }
}

/// A batch of tokens gives bit-for-bit the results of one call per token.
#[test]
fn batched_equals_token_by_token() {
    for &kernels in Kernels::available() {
        for ty in TYPES {
            let (rows, cols) = (37, if ty.block_size() == 256 { 512 } else { 160 });
            let data = weights(ty, rows, cols, 11);
            let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
            let mut r = rng(13);
            let n = 5;
            let x: Vec<f32> = (0..cols * n).map(|_| r()).collect();
            let mut s = Scratch::default();
            let mut batched = vec![0f32; rows * n];
            matmul_with(kernels, &w, &x, n, &mut batched, &mut s).expect("batched");
            for t in 0..n {
                let mut one = vec![0f32; rows];
                matmul_with(kernels, &w, &x[t * cols..(t + 1) * cols], 1, &mut one, &mut s).expect("one");
                assert_eq!(one, batched[t * rows..(t + 1) * rows].to_vec(), "{} {ty} token {t}", kernels.name());
            }
        }
    }
}

/// SIMD and scalar kernels agree on model-sized rows (SmolLM2 / Gemma-3 shapes), relative to
/// the magnitude of the row.
#[test]
fn kernel_families_agree_on_model_shapes() {
    for ty in TYPES {
        for (rows, cols) in [(64usize, 576usize), (48, 1536), (40, 640), (33, 2048)] {
            if cols % ty.block_size() != 0 {
                continue;
            }
            let data = weights(ty, rows, cols, (rows * cols) as u64);
            let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
            let mut r = rng(17);
            let x: Vec<f32> = (0..cols).map(|_| r()).collect();
            let mut s = Scratch::default();
            let mut out: Vec<Vec<f32>> = Vec::new();
            for &k in Kernels::available() {
                let mut y = vec![0f32; rows];
                matmul_with(k, &w, &x, 1, &mut y, &mut s).expect("matmul");
                assert!(y.iter().all(|v| v.is_finite()));
                out.push(y);
            }
            let scale = out[0].iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
            for y in &out[1..] {
                for (a, b) in y.iter().zip(&out[0]) {
                    assert!((a - b).abs() <= 1e-5 * scale, "{ty} {rows}x{cols}: {a} vs {b}");
                }
            }
        }
    }
}
