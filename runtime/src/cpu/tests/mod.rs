//! Kernel tests against the scalar oracle (`quant::`), run natively by `cargo test` and under
//! Node by `pkg-scripts/test-wasm-cpu` (wasm32 + SIMD128), where every kernel family compiled
//! in ([`Kernels::available`]) is checked.
//!
//! Conventions: deterministic pseudo-random data, awkward shapes (1 row, row counts that are
//! no multiple of any unroll, one and several blocks per row), sentinel values after every
//! output buffer, NaN/Inf checks, exact comparison of the scalar kernels with
//! `quant::vec_dot`, reassociation-sized bounds for SIMD, normalized MSE against an f64 dot
//! of the dequantized weights with the unquantized activations.
//!
//! Shared here: the [`Rng`] generator, sentinel-padded buffers, weight makers and the opt-in
//! benchmarks (with the `KERNEL_SHAPES` seam `cpu` reads); the tests by concern in
//! `matmul.rs`, `layer_ops.rs`, `kv_attention.rs` and (x86-64) `x86_models.rs`.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::kv_cache::{KvCache, KvType};
use crate::quant::{self, GgmlType};

mod kv_attention;
mod layer_ops;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod x86_models;

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

// ---------------------------------------------------------------------------------------------
// shared by the KV cache and attention tests and the benchmarks

const KV_TYPES: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8, KvType::Q4];

/// Tokens evaluated together, for the attention calls (a prefill; `Avx2`'s `p·V` order differs
/// for a single token: `attention_matches_reference` checks both).
const BATCH: usize = 2;

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
            // each family, then (f16) with the rows widened once for a batch, as a prefill reads them
            for (&kernels, batch_rows) in Kernels::available().iter().map(|k| (k, false)).chain(Kernels::available().iter().map(|k| (k, true))) {
                if batch_rows && ty != KvType::F16 {
                    continue;
                }
                s.widen_batch_rows(kernels, &c, 0, n_heads, if batch_rows { 0 } else { n }, n);
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
                s.forget_batch_rows();
                line += &format!("  {}{} {:7.1} us", kernels.name(), if batch_rows { " (batch rows)" } else { "" }, best * 1e3);
            }
            report(&line);
        }
    }
}
