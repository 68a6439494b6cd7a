//! The WebGPU backend compiled to wasm32 in headless Chromium (run by `pkg-scripts/test-wasm-browser`,
//! which serves models/ on a loopback port and passes the model URL at build time in
//! `WEBGGUF_TEST_MODEL_URL`). Chromium's adapter there is SwiftShader (software Vulkan behind
//! `--enable-unsafe-webgpu`, runtime/webdriver.json): no shader-f16, no subgroups through wgpu's
//! web backend, so these run the shared-memory reduction variant of the kernels.
//!
//! Kernels against the CPU backend (same `Backend` trait, itself tested against the `quant::`
//! oracle) on the shapes of `runtime/src/gpu/tests.rs`, read back with the async readers (the
//! sync ones return `GpuError::NeedsAsync` here). SmolLM2's greedy generation on the GPU, held
//! against llama.cpp's tokens, is in `web_loader.rs` (loaded by the streaming loader). No adapter
//! is a failure, never a skip. Kept small: SwiftShader is a slow software GPU.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use webgguf::cpu::Kernels;
use webgguf::gpu::{GpuAct, GpuBackend, GpuDevice, GpuKernels};
use webgguf::kv_cache::KvType;
use webgguf::model::{Activation, Backend, CpuAct, CpuBackend, ModelConfig, RopeKind, RopeParams};
use webgguf::quant;
use webgguf::GgmlType;

wasm_bindgen_test_configure!(run_in_browser);

/// xorshift64*, the generator of the native kernel tests.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    /// Roughly normal, with occasional outliers (like real activations).
    fn act(&mut self) -> f32 {
        let v = (self.f() + self.f() + self.f()) * 0.8;
        if self.next_u64() % 61 == 0 {
            v * 9.0
        } else {
            v
        }
    }
    fn acts(&mut self, n: usize, width: usize) -> Vec<f32> {
        (0..n * width).map(|_| self.act()).collect()
    }
}

async fn gpu() -> GpuBackend {
    let dev = GpuDevice::new_async().await.unwrap_or_else(|e| panic!("a WebGPU adapter (Chromium with --enable-unsafe-webgpu): {e}"));
    console_log!("adapter: {:?}", dev.info);
    GpuBackend::new(dev)
}

/// Values of `x` on the host, every one finite.
async fn read(g: &mut GpuBackend, x: &GpuAct, what: &str) -> Vec<f32> {
    let v = g.to_host_async(x).await.unwrap_or_else(|e| panic!("{what}: readback: {e}"));
    assert_eq!(v.len(), x.n_tokens * x.width, "{what}: values read back");
    for (i, x) in v.iter().enumerate() {
        assert!(x.is_finite(), "{what}: value {i} is {x}");
    }
    v
}

/// Normalized MSE of `got` against `want`.
fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| f64::from(b).powi(2)).sum::<f64>().max(1e-30);
    num / den
}

fn assert_close(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let e = nmse(got, want);
    let scale = want.iter().fold(0f32, |m, &b| m.max(b.abs())).max(f32::MIN_POSITIVE);
    // Shown on failure (or with --nocapture): how many values differ, and the first few.
    let diffs: Vec<(usize, f32, f32)> =
        got.iter().zip(want).enumerate().filter(|(_, (a, b))| (*a - *b).abs() > 1e-5 * scale).map(|(i, (&a, &b))| (i, a, b)).collect();
    console_log!("{what}: nmse {e:e}, {} of {} values off by > 1e-5 of max |want| {scale}: {:?}", diffs.len(), want.len(), &diffs[..diffs.len().min(6)]);
    assert!(e <= tol, "{what}: nmse {e:e} > {tol:e}");
}

fn cpu_act(data: Vec<f32>, n_tokens: usize, width: usize) -> CpuAct {
    CpuAct { data, n_tokens, width }
}

/// A random `rows × cols` weight of `ty` as GGUF bytes.
fn weight_bytes(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let f: Vec<f32> = (0..rows * cols).map(|_| rng.f() * 0.5).collect();
    let rb = ty.row_bytes(cols as u64).expect("row bytes") as usize;
    let mut out = vec![0u8; rb * rows];
    for (src, dst) in f.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
        quant::quantize_row(ty, src, dst).expect("quantize");
    }
    out
}

/// Matvec (1 token) and tiled matmul (37 tokens) of a 37-row weight of every type: 37 is no
/// multiple of the 32-row tile or the 64-wide workgroup. The K types and BF16 agree to summation
/// order (nmse ~1e-14), as do F16, Q4_0, Q5_0, Q8_0: f16 rounding uses `f16.wgsl`'s exact
/// round-to-nearest-even, not `quantizeToF16` (which SwiftShader truncates, as WGSL allows).
/// Q4_1/Q5_1 include the CPU's f16-rounded Q8_1 block sums (`min_fix`). Both kernel families.
#[wasm_bindgen_test]
async fn matmul_every_type_matches_cpu() {
    let mut g = gpu().await;
    let mut rng = Rng::new(1);
    let rows = 37usize;
    // exact: the CPU's 128-bit family (the browser's default); fast: activations unrounded, as
    // the CPU's Kernels::Float
    for (kernels, mut c) in [(GpuKernels::Exact, CpuBackend::new()), (GpuKernels::Fast, CpuBackend::with_kernels(Kernels::Float).expect("float kernels"))] {
        g.kernels = kernels;
        for ty in GgmlType::WEIGHT_TYPES {
            let cols = match ty.block_size() {
                256 => 512,
                32 => 160,
                _ => 132,
            };
            let bytes = weight_bytes(&mut rng, ty, rows, cols);
            let shape = [cols as u64, rows as u64];
            let gw = g.load_weight("w", ty, &shape, &bytes).expect("gpu weight");
            let cw = c.load_weight("w", ty, &shape, &bytes).expect("cpu weight");
            for n in [1usize, 37] {
                let what = format!("{} matmul {ty} {rows}x{cols} n={n}", kernels.name());
                let x = rng.acts(n, cols);
                let gx = g.upload(&x, n, cols).expect("upload");
                let gy = g.matmul(&gw, &gx).expect(&what);
                let got = read(&mut g, &gy, &what).await;
                let want = c.matmul(&cw, &cpu_act(x, n, cols)).expect("cpu matmul").data;
                assert_close(&got, &want, 1e-10, &what);
            }
        }
    }
}

/// Prefill of 6 tokens then one single-token step, every cache type (q4 with its K offset; the
/// quantized ones also with f16 copies of 4 sink positions and a query's last 3),
/// grouped-query heads, the second layer with a sliding window of 3: outputs equal the CPU's
/// attention over its own cache
/// (every cache type to summation order: f16 rounding is exact, see the matmul test).
#[wasm_bindgen_test]
async fn attention_every_cache_type_matches_cpu() {
    let mut g = gpu().await;
    let mut c = CpuBackend::new();
    let mut rng = Rng::new(6);
    let (nh, nkv, hd) = (4usize, 2usize, 64usize);
    let cfg = ModelConfig::attention_test(nh, nkv, hd, Some(3));
    for (kv, recent) in [(KvType::F32, 0), (KvType::F16, 0), (KvType::Q8, 0), (KvType::Q8, 3), (KvType::Q4, 0), (KvType::Q4, 3)] {
        let mut gc = g.new_cache(&cfg, kv, 16, recent).expect("gpu cache");
        let mut cc = c.new_cache(&cfg, kv, 16, recent).expect("cpu cache");
        let mut pos = 0;
        for n in [6usize, 1, 1] {
            let q = rng.acts(n, nh * hd);
            // K with a part shared by all tokens: a q4 cache stores it less the prefill's
            // offset (the GPU's kv_offset pass)
            let k: Vec<f32> = rng.acts(n, nkv * hd).iter().enumerate().map(|(i, x)| x + 3.0 * ((i % (nkv * hd)) as f32 * 0.37).sin()).collect();
            let v = rng.acts(n, nkv * hd);
            for layer in 0..2 {
                let what = format!("attention {kv:?} recent {recent} layer {layer} pos {pos} n {n}");
                let gq = g.upload(&q, n, nh * hd).expect("upload");
                let gk = g.upload(&k, n, nkv * hd).expect("upload");
                let gv = g.upload(&v, n, nkv * hd).expect("upload");
                let go = g.attention(&mut gc, &cfg, layer, &gq, &gk, &gv, pos).expect(&what);
                let got = read(&mut g, &go, &what).await;
                let want = c
                    .attention(&mut cc, &cfg, layer, &cpu_act(q.clone(), n, nh * hd), &cpu_act(k.clone(), n, nkv * hd), &cpu_act(v.clone(), n, nkv * hd), pos)
                    .expect("cpu attention")
                    .data;
                let tol = 1e-9;
                assert_close(&got, &want, tol, &what);
            }
            pos += n;
        }
    }
}

/// RMS norm (whole row and per head), GLU (SiLU, GELU), rope (NORM and NEOX, partial rotation)
/// and the device argmax. GELU rounds through `f16.wgsl`; rope's cos/sin come from the host
/// (WGSL's are only accurate to 2^-11, and SwiftShader's are off by ~1e-4), so both match the
/// CPU to summation order.
#[wasm_bindgen_test]
async fn norm_glu_rope_argmax_match_cpu() {
    let mut g = gpu().await;
    let mut c = CpuBackend::new();
    let mut rng = Rng::new(4);
    let (n, width) = (3usize, 96usize);
    let x = rng.acts(n, width);
    let y = rng.acts(n, width);
    let norm: Vec<f32> = (0..width).map(|_| 1.0 + rng.f()).collect();
    let head_norm: Vec<f32> = (0..32).map(|_| 1.0 + rng.f()).collect();
    let gn = g.load_weight("n", GgmlType::F32, &[width as u64], bytemuck::cast_slice(&norm)).expect("gpu norm");
    let cn = c.load_weight("n", GgmlType::F32, &[width as u64], bytemuck::cast_slice(&norm)).expect("cpu norm");
    let ghn = g.load_weight("hn", GgmlType::F32, &[32], bytemuck::cast_slice(&head_norm)).expect("gpu head norm");
    let chn = c.load_weight("hn", GgmlType::F32, &[32], bytemuck::cast_slice(&head_norm)).expect("cpu head norm");
    let gx = g.upload(&x, n, width).expect("upload");
    let gy = g.upload(&y, n, width).expect("upload");
    let cx = cpu_act(x.clone(), n, width);
    let cy = cpu_act(y.clone(), n, width);

    for (w_g, w_c, what) in [(&gn, &cn, "rms_norm row"), (&ghn, &chn, "rms_norm per head")] {
        let o = g.rms_norm(&gx, w_g, 1e-6).expect(what);
        let got = read(&mut g, &o, what).await;
        assert_close(&got, &c.rms_norm(&cx, w_c, 1e-6).expect("cpu rms_norm").data, 1e-11, what);
    }
    for act in [Activation::Silu, Activation::GeluTanh] {
        let what = format!("glu {act:?}");
        let o = g.glu(&gx, &gy, act).expect(&what);
        let got = read(&mut g, &o, &what).await;
        assert_close(&got, &c.glu(&cx, &cy, act).expect("cpu glu").data, 1e-10, &what);
    }
    for kind in [RopeKind::Normal, RopeKind::Neox] {
        for (n_dims, pos0) in [(32usize, 5usize), (24, 5), (32, 1000)] {
            let what = format!("rope {kind:?} {n_dims} at {pos0}");
            let rope = RopeParams { kind, n_dims, freq_base: 10000.0, freq_scale: 0.5 };
            let mut a = g.upload(&x, n, width).expect("upload");
            let mut b = cx.clone();
            g.rope(&mut a, 32, pos0, &rope, None).expect(&what);
            c.rope(&mut b, 32, pos0, &rope, None).expect("cpu rope");
            assert_close(&read(&mut g, &a, &what).await, &b.data, 1e-9, &what);
        }
    }
    for width in [7usize, 49_153] {
        let mut v = rng.acts(2, width);
        // ties: the lowest index wins
        let m = v[width..].iter().copied().fold(f32::MIN, f32::max) + 1.0;
        v[width + width / 2] = m;
        v[2 * width - 1] = m;
        let gv = g.upload(&v, 2, width).expect("upload");
        assert_eq!(g.argmax_async(&gv).await.expect("argmax") as usize, width / 2, "argmax width {width}");
    }
}
