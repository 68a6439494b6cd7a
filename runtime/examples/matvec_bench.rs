//! Micro-benchmark of the CPU matmul kernels on decode-shaped products (one token):
//! `cargo run --release -p webgguf --example matvec_bench [threads]`.
//! Prints time per product, weight bytes/s and weights/s for every type.

use std::time::Instant;
use webgguf::cpu::{self, QMatrix, Scratch};
use webgguf::quant::{quantize_row, GgmlType};

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    cpu::set_num_threads(threads);
    println!("kernels: {}, threads: {threads}", cpu::Kernels::best().name());
    let types = GgmlType::WEIGHT_TYPES;
    let mut seed = 0x1234_5678_u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for ty in types {
        // SmolLM2-like FFN shape: 1536 rows of 576 (768 for the 256-blocks).
        let (rows, cols) = if ty.block_size() == 256 { (1536, 768) } else { (1536, 576) };
        let rb = ty.row_bytes(cols as u64).expect("whole blocks") as usize;
        let mut data = vec![0u8; rb * rows];
        for r in 0..rows {
            let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
            quantize_row(ty, &x, &mut data[r * rb..(r + 1) * rb]).expect("quantize");
        }
        let w = QMatrix::new(ty, rows, cols, &data).expect("matrix");
        let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
        let mut y = vec![0f32; rows];
        let mut s = Scratch::default();
        cpu::matmul(&w, &x, 1, &mut y, &mut s).expect("warm-up");
        let mut iters = 0u32;
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < 0.3 {
            cpu::matmul(&w, &x, 1, &mut y, &mut s).expect("matmul");
            iters += 1;
        }
        let per = t0.elapsed().as_secs_f64() / f64::from(iters);
        println!(
            "{:>5} {rows}x{cols}: {:8.1} us  {:6.2} GB/s  {:6.2} Gweights/s",
            ty.name(),
            per * 1e6,
            data.len() as f64 / per / 1e9,
            (rows * cols) as f64 / per / 1e9
        );
    }
}
