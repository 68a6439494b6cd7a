//! Synthetic models (`webgguf synth`) run end to end: every preset's real widths (one layer,
//! a small vocabulary: the full vocabularies and depths are checked at header level in the
//! runtime's unit tests) on the CPU and on the GPU (lavapipe in CI), and every preset's real
//! depth at small widths, where the weights' scale must keep activations finite through all
//! layers. No adapter is a failure.

use webgguf::engine::{Session, SessionOptions};
use webgguf::gpu::GpuBackend;
use webgguf::kv_cache::KvType;
use webgguf::model::{Backend, CpuBackend};
use webgguf::quantize::FileType;
use webgguf::synth::{presets, synth_file, SynthOptions, SynthSpec};
use webgguf_tests::{top2, use_all_cores};

const TOKENS: [u32; 8] = [1, 72, 101, 108, 108, 111, 44, 32];

fn write(spec: &SynthSpec, ftype: FileType, file: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("webgguf-synth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(file);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = SynthOptions { ftype, mix: Default::default(), seed: 7, threads, name: file.into() };
    synth_file(spec, None, &opts, &path, None, &mut |_| {}).unwrap_or_else(|e| panic!("{file}: {e}"));
    path
}

fn session<B: Backend>(mut backend: B, path: &std::path::Path) -> Session<B> {
    let (_, model) = webgguf::loader::load_files(&[path.to_owned()], &mut backend).expect("load");
    Session::new(backend, model, SessionOptions { kv: KvType::Q8, n_ctx: 64, ..Default::default() }).expect("session")
}

/// Teacher-forced logits over `TOKENS`: finite, spread (std between 0.3 and 20: neither
/// collapsed nor blown up), and not the same row twice.
fn check_logits(name: &str, logits: &[f32], n_vocab: usize) {
    assert!(logits.iter().all(|x| x.is_finite()), "{name}: non-finite logits");
    for row in logits.chunks_exact(n_vocab) {
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / n_vocab as f64;
        let std = (row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n_vocab as f64).sqrt();
        assert!((0.3..20.0).contains(&std), "{name}: logit std {std}");
    }
    let rows: Vec<&[f32]> = logits.chunks_exact(n_vocab).collect();
    assert!(rows.windows(2).all(|w| w[0] != w[1]), "{name}: two positions gave the same logits");
}

/// A preset at its real widths with one layer and a 512-token vocabulary.
fn wide(name: &str) -> SynthSpec {
    let mut s = SynthSpec::from_preset(name).expect("preset");
    (s.n_layers, s.n_vocab) = (1, 512);
    s
}

#[test]
fn every_preset_at_real_width_runs_on_the_cpu() {
    use_all_cores();
    for p in presets() {
        let spec = wide(p.name);
        let path = write(&spec, FileType::Q4_K_M, &format!("{}-wide.gguf", p.name));
        let mut s = session(CpuBackend::new(), &path);
        let logits = s.logits_all(&TOKENS).expect("forward");
        check_logits(p.name, &logits, spec.n_vocab);
        s.reset();
        let mut id = s.eval_argmax(&TOKENS).expect("prefill");
        for _ in 0..3 {
            id = s.eval_argmax(&[id]).expect("step");
            assert!((id as usize) < spec.n_vocab);
        }
        println!("{}: real widths, 1 layer: logits finite, greedy ran", p.name);
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn every_preset_at_real_depth_keeps_activations_finite() {
    use_all_cores();
    for p in presets() {
        let mut spec = SynthSpec::from_preset(p.name).expect("preset");
        // Small widths keeping the head grouping and (Gemma) the window pattern of the preset.
        let group = spec.n_heads / spec.n_kv_heads;
        (spec.d_model, spec.n_kv_heads, spec.head_dim, spec.ffn_dim, spec.n_vocab) = (256, 1, 64, 512, 300);
        spec.n_heads = group;
        let path = write(&spec, FileType::Q8_0, &format!("{}-deep.gguf", p.name));
        let mut s = session(CpuBackend::new(), &path);
        let logits = s.logits_all(&TOKENS).expect("forward");
        check_logits(p.name, &logits, spec.n_vocab);
        println!("{}: {} layers at small widths: logits finite", p.name, spec.n_layers);
        std::fs::remove_file(&path).ok();
    }
}

/// The smaller presets' real widths on the GPU against the CPU's 128-bit kernels (the
/// numerics the GPU follows): finite logits and the same top-1 where the CPU's margin is
/// clear (the tolerance of tests/gpu_vs_cpu.rs).
#[test]
fn small_presets_at_real_width_run_on_the_gpu() {
    use_all_cores();
    for name in ["qwen2.5-0.5b", "qwen3-0.6b", "gemma-3-1b", "llama-3.2-1b"] {
        let spec = wide(name);
        let path = write(&spec, FileType::Q4_K_M, &format!("{name}-gpu.gguf"));
        let simd = CpuBackend::with_kernels(webgguf::cpu::Kernels::Simd).expect("the 128-bit CPU kernels");
        let lc = session(simd, &path).logits_all(&TOKENS).expect("cpu");
        let gpu = GpuBackend::open().expect("a GPU adapter (CI installs Mesa lavapipe)");
        let lg = session(gpu, &path).logits_all(&TOKENS).expect("gpu");
        check_logits(name, &lg, spec.n_vocab);
        for (pos, (rc, rg)) in lc.chunks_exact(spec.n_vocab).zip(lg.chunks_exact(spec.n_vocab)).enumerate() {
            let ((ic, margin), (ig, _)) = (top2(rc), top2(rg));
            assert!(ic == ig || margin < 0.25, "{name}: position {pos}: GPU top-1 {ig}, CPU {ic} at margin {margin}");
        }
        println!("{name}: real widths, 1 layer: GPU logits finite, top-1 as the CPU's");
        std::fs::remove_file(&path).ok();
    }
}

/// An adapter held to the WebGPU spec's default limits (128 MiB per binding, 256 MiB per
/// buffer: what many Android phones offer): Llama-3.2-1B's tied embedding (128,256 × 2,048 as
/// Q6_K, 215 MB) is over a binding and is split into row-aligned chunks; every logit (rows in
/// every chunk) stays close to the CPU's: the backends differ by summation order, which can
/// flip an 8-bit activation rounding (measured max 0.07, against a logit spread of ~2).
#[test]
fn spec_default_limits_split_the_embedding() {
    use webgguf::gpu::{DeviceLimits, GpuDevice};
    use_all_cores();
    let mut spec = SynthSpec::from_preset("llama-3.2-1b").expect("preset");
    spec.n_layers = 1;
    let path = write(&spec, FileType::Q4_K_M, "llama-3.2-1b-spec-limits.gguf");
    let mut small = GpuBackend::new(GpuDevice::with_limits(DeviceLimits::SpecDefaults).expect("a GPU adapter (CI installs Mesa lavapipe)"));
    assert_eq!(small.device().max_binding(), 128 << 20);
    let (_, model) = webgguf::loader::load_files(std::slice::from_ref(&path), &mut small).expect("load under spec-default limits");
    let chunks = GpuBackend::chunk_count(&model.weights.token_embd);
    assert!(chunks >= 2, "the 215 MB embedding was not split ({chunks} chunk)");
    let mut s_small = Session::new(small, model, SessionOptions { kv: KvType::Q8, n_ctx: 64, ..Default::default() }).expect("session");
    let tokens = &TOKENS[..4];
    let lg = s_small.logits_all(tokens).expect("spec-default limits");
    check_logits("llama-3.2-1b (spec limits)", &lg, spec.n_vocab);
    let simd = CpuBackend::with_kernels(webgguf::cpu::Kernels::Simd).expect("the 128-bit CPU kernels");
    let lc = session(simd, &path).logits_all(tokens).expect("cpu");
    for (pos, (rc, rg)) in lc.chunks_exact(spec.n_vocab).zip(lg.chunks_exact(spec.n_vocab)).enumerate() {
        let ((ic, margin), (ig, _)) = (top2(rc), top2(rg));
        assert!(ic == ig || margin < 0.25, "position {pos}: GPU top-1 {ig}, CPU {ic} at margin {margin}");
        // Every row of the vocabulary, in whichever chunk it sits, scored as on the CPU: a
        // row read from the wrong chunk or offset would be off by the logits' own spread (~2).
        let worst = rc.iter().zip(rg).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let err: f64 = rc.iter().zip(rg).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        let nmse = err / rc.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
        println!("position {pos}: max |GPU - CPU| {worst:.4}, NMSE {nmse:.2e}");
        assert!(worst < 0.5 && nmse < 1e-3, "position {pos}: GPU logits off the CPU's (max {worst}, NMSE {nmse})");
    }
    println!("llama-3.2-1b: embedding in {chunks} chunks under 128 MiB bindings; logits as the CPU's");
    std::fs::remove_file(&path).ok();
}

/// Compute dispatches of one decode token per layer on the GPU: the difference between a 4-layer
/// and a 2-layer model of the same widths, halved (embedding, output and argmax cancel), per
/// architecture, weight family, cache type and kernel family; printed as a table
/// (`cargo test --test synth decode_dispatches -- --nocapture`). Llama with one weight type
/// and a q8 or f16 cache, fast kernels: at most 10 per layer (norm, q/k/v, rope, KV store,
/// attention (one dispatch up to 256 positions, then split + merge), output + residual, norm,
/// gate/up/GLU, down + residual: 9 here), with K-quant mixes too (Q4_K_M's Q6_K v is read with
/// q/k).
#[test]
fn decode_dispatches_per_layer() {
    use webgguf::gpu::GpuKernels;
    use_all_cores();
    let per_layer = |path2: &std::path::Path, path4: &std::path::Path, kv: KvType, kernels: GpuKernels| -> f64 {
        let count = |path: &std::path::Path| {
            let mut gpu = GpuBackend::open().expect("a GPU adapter (CI installs Mesa lavapipe)");
            gpu.kernels = kernels;
            let (_, model) = webgguf::loader::load_files(&[path.to_owned()], &mut gpu).expect("load");
            let mut s = Session::new(gpu, model, SessionOptions { kv, n_ctx: 64, ..Default::default() }).expect("session");
            let id = s.eval_argmax(&TOKENS[..3]).expect("prefill");
            let d0 = s.backend().dispatch_count();
            let p0 = s.backend().pass_count();
            s.eval_argmax(&[id]).expect("decode");
            assert_eq!(s.backend().pass_count() - p0, 1, "a decode token is one compute pass");
            s.backend().dispatch_count() - d0
        };
        (count(path4) as f64 - count(path2) as f64) / 2.0
    };
    let mut fast_llama = Vec::new();
    for (name, ftypes) in [
        ("llama-3.2-1b", &[FileType::Q4_0, FileType::Q8_0, FileType::Q4_K_M][..]),
        ("qwen2.5-0.5b", &[FileType::Q4_K_M][..]),
        ("qwen3-0.6b", &[FileType::Q4_K_M][..]),
        ("gemma-3-1b", &[FileType::Q4_K_M][..]),
    ] {
        for &ftype in ftypes {
            let paths: Vec<std::path::PathBuf> = [2usize, 4]
                .iter()
                .map(|&n_layers| {
                    let mut spec = SynthSpec::from_preset(name).expect("preset");
                    let group = spec.n_heads / spec.n_kv_heads;
                    (spec.n_layers, spec.d_model, spec.n_kv_heads, spec.head_dim, spec.ffn_dim, spec.n_vocab) = (n_layers, 256, 1, 64, 512, 300);
                    spec.n_heads = group;
                    write(&spec, ftype, &format!("{name}-{ftype:?}-{n_layers}-dispatches.gguf"))
                })
                .collect();
            for kv in [KvType::Q8, KvType::F16] {
                for kernels in [GpuKernels::Exact, GpuKernels::Fast] {
                    let n = per_layer(&paths[0], &paths[1], kv, kernels);
                    println!("{name} {ftype:?} {kv:?} cache, {} kernels: {n} dispatches per layer", kernels.name());
                    if name == "llama-3.2-1b" && kernels == GpuKernels::Fast {
                        fast_llama.push((ftype, kv, n));
                    }
                }
            }
            for p in paths {
                std::fs::remove_file(p).ok();
            }
        }
    }
    for (ftype, kv, n) in fast_llama {
        assert!(n <= 10.0, "llama {ftype:?} {kv:?} cache, fast kernels: {n} dispatches per layer > 10");
    }
}
