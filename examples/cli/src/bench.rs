//! `webgguf bench --device gpu|cpu [--shapes RxC,…] [--reps N] [--model P --tokens T --prefill N --kv K]`:
//! prints, never asserts. For every weight type and shape: the matvec (one token, as in decode)
//! in GB/s of weights read, and its ratio to a plain copy on the same device in the same run
//! (GPU: the `copy` kernel, GB/s counting bytes read + written; CPU: memcpy). With `--model`:
//! dispatches, compute passes and weight + KV bytes per decode token; decode tok/s and its
//! ratio to the roofline ((weight + KV bytes per token) ÷ copy GB/s); prefill tok/s.

use crate::common::fail;
use std::process::ExitCode;
use std::time::Instant;
use webgguf::engine::{Session, SessionOptions};
use webgguf::gpu::GpuBackend;
use webgguf::kv_cache::KvType;
use webgguf::model::{Backend, CpuBackend};
use webgguf::GgmlType;

#[derive(clap::Args)]
pub struct Args {
    /// gpu or cpu.
    #[arg(long, default_value = "gpu", value_parser = ["gpu", "cpu"])]
    device: String,
    /// Matvec shapes, rows×cols (columns a multiple of 256), comma-separated: Llama-3.1-8B's
    /// attention and feed-forward widths by default.
    #[arg(long, default_value = "4096x4096,14336x4096", value_delimiter = ',', value_parser = parse_shape)]
    shapes: Vec<(usize, usize)>,
    /// Skip the matvec tables (only the copy rate and the model runs).
    #[arg(long)]
    no_matvec: bool,
    /// Least timed repetitions per measurement (after one warm-up); more run until the
    /// measurement lasts `--min-ms`, so a fast device is not timed on its submission latency.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Least duration of one measurement, ms.
    #[arg(long, default_value_t = 200.0)]
    min_ms: f64,
    /// Also time decoding this model.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Decode steps to time.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Prompt tokens of the timed prefill (0: none).
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// GPU matvec layout: narrow (software adapters) or wide (hardware GPUs); default: the
    /// adapter's.
    #[arg(long, value_parser = ["narrow", "wide"])]
    matvec: Option<String>,
    /// GPU kernel family: exact (activations rounded as ggml's) or fast (unrounded); default:
    /// the adapter's (fast on hardware).
    #[arg(long, value_parser = ["exact", "fast"])]
    gpu_kernels: Option<String>,
    /// KV cache type of the model runs.
    #[arg(long, default_value = "q8", value_parser = crate::common::parse_kv)]
    kv: KvType,
}

fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (r, c) = s.split_once(['x', 'X', '×']).ok_or_else(|| format!("{s:?} is not ROWSxCOLS"))?;
    let n = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
    Ok((n(r)?, n(c)?))
}

/// Pseudo-random bytes (xorshift): bandwidth does not depend on the values.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // keep f16 scales finite: clear the top exponent bit of every byte pair's high byte
            (s >> 24) as u8 & 0xBF
        })
        .collect()
}

/// Seconds per call of `f`: one warm-up, then `reps` calls to estimate, then as many as fill
/// `min_ms` (each batch waited for with `sync`).
fn time_per_call<B: Timed>(b: &mut B, reps: usize, min_ms: f64, mut f: impl FnMut(&mut B) -> Result<(), String>) -> Result<f64, String> {
    f(b)?;
    b.sync()?;
    let mut n = reps.max(1);
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f(b)?;
        }
        b.sync()?;
        let secs = t.elapsed().as_secs_f64();
        if secs * 1e3 >= min_ms || n >= 1 << 20 {
            return Ok(secs / n as f64);
        }
        n = ((n as f64 * min_ms / (secs * 1e3).max(1e-3)).ceil() as usize).clamp(n + 1, 1 << 20);
    }
}

/// A device to time: the backend, a way to wait for queued work, and the copy baseline.
trait Timed: Backend {
    fn sync(&mut self) -> Result<(), String>;
    /// Copy bandwidth in GB/s over `bytes` (read + written).
    fn copy_gbs(&mut self, bytes: usize, reps: usize, min_ms: f64) -> Result<f64, String>;
    /// Bytes the device holds for a weight of `ty` with `rows × cols` values.
    fn weight_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize;
    /// (compute dispatches, compute passes) recorded so far; zeros on the CPU.
    fn counters(&self) -> (u64, u64) {
        (0, 0)
    }
    /// The largest buffer one copy may cover.
    fn max_copy_bytes(&self) -> usize {
        usize::MAX
    }
}

impl Timed for GpuBackend {
    fn sync(&mut self) -> Result<(), String> {
        self.finish().map_err(|e| e.to_string())
    }
    fn copy_gbs(&mut self, bytes: usize, reps: usize, min_ms: f64) -> Result<f64, String> {
        let src = self.storage_buffer(bytes as u64);
        let dst = self.storage_buffer(bytes as u64);
        let secs = time_per_call(self, reps, min_ms, |b| b.record_copy(&src, &dst, bytes / 4).map_err(|e| e.to_string()))?;
        Ok(2.0 * bytes as f64 / secs / 1e9)
    }
    fn weight_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize {
        webgguf::gpu::layout::row_words(ty, cols).map_or(0, |w| w * 4 * rows)
    }
    fn counters(&self) -> (u64, u64) {
        (self.dispatch_count(), self.pass_count())
    }
    fn max_copy_bytes(&self) -> usize {
        self.device().max_binding() as usize
    }
}

impl Timed for CpuBackend {
    fn sync(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn copy_gbs(&mut self, bytes: usize, reps: usize, min_ms: f64) -> Result<f64, String> {
        let src = noise(bytes, 7);
        let mut dst = vec![0u8; bytes];
        let secs = time_per_call(self, reps, min_ms, |_| {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            Ok(())
        })?;
        Ok(2.0 * bytes as f64 / secs / 1e9)
    }
    fn weight_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize {
        ty.row_bytes(cols as u64).map_or(0, |b| b as usize * rows)
    }
}

fn run_on<B: Timed>(mut b: B, args: &Args, describe: String) -> Result<(), String> {
    println!("device: {describe}");
    let (max_rows, max_cols) = args.shapes.iter().fold((1, 256), |(r, c), &(r2, c2)| (r.max(r2), c.max(c2)));
    // The largest matrix's f32 bytes, at most 256 MiB and one binding.
    let copy_bytes = B::weight_bytes(GgmlType::F32, max_rows, max_cols).min(256 << 20).min(b.max_copy_bytes()) / 16 * 16;
    let copy = b.copy_gbs(copy_bytes, args.reps, args.min_ms)?;
    println!("copy: {copy:.2} GB/s (read + written, {} MB buffers)", copy_bytes >> 20);
    for &(rows, cols) in args.shapes.iter().filter(|_| !args.no_matvec) {
        matvec_table(&mut b, args, rows, cols, copy)?;
    }
    if let Some(path) = &args.model {
        model_run(b, args, path, copy)?;
    }
    Ok(())
}

/// Matvec GB/s of every weight type at `rows × cols`, against the copy rate.
fn matvec_table<B: Timed>(b: &mut B, args: &Args, rows: usize, cols: usize, copy: f64) -> Result<(), String> {
    println!("matvec {rows}x{cols}, one token");
    println!("{:<6} {:>10} {:>10} {:>8}", "type", "MB", "GB/s", "vs copy");
    let x: Vec<f32> = noise(cols, 3).iter().map(|&v| f32::from(v) / 128.0 - 0.5).collect();
    for ty in GgmlType::WEIGHT_TYPES {
        let Some(row_bytes) = ty.row_bytes(cols as u64) else { continue };
        let bytes = noise(row_bytes as usize * rows, ty.id().into());
        let w = b.load_weight("bench", ty, &[cols as u64, rows as u64], &bytes).map_err(|e| e.to_string())?;
        drop(bytes);
        let xs = upload(b, &x)?;
        let secs = time_per_call(b, args.reps, args.min_ms, |b| b.matmul(&w, &xs).map(drop).map_err(|e| e.to_string()))?;
        let dev_bytes = B::weight_bytes(ty, rows, cols);
        let gbs = dev_bytes as f64 / secs / 1e9;
        println!("{:<6} {:>10.1} {:>10.2} {:>8.2}", ty.name(), dev_bytes as f64 / 1e6, gbs, gbs / copy);
    }
    Ok(())
}

/// Decode and prefill of a model file: per-token counts, tok/s and the roofline ratio.
fn model_run<B: Timed>(mut b: B, args: &Args, path: &std::path::Path, copy: f64) -> Result<(), String> {
    let gguf = webgguf::loader::read_headers(&[path.to_path_buf()]).map_err(|e| e.to_string())?;
    // Decode reads every matrix once per token; the embedding table only when it is also
    // the output projection (tied).
    let tied = !gguf.tensors().any(|(_, t)| t.name == "output.weight");
    let weights: usize = gguf
        .tensors()
        .map(|(_, t)| t)
        .filter(|t| t.shape.len() >= 2 && t.shape[1] > 1 && (t.name != "token_embd.weight" || tied))
        .map(|t| B::weight_bytes(t.ty, t.shape.iter().skip(1).product::<u64>() as usize, t.shape[0] as usize))
        .sum();
    let (_, model) = webgguf::loader::load_files(&[path.to_path_buf()], &mut b).map_err(|e| e.to_string())?;
    let c = model.config.clone();
    let prompt: Vec<u32> = (0..args.prefill.max(4) as u32).map(|i| 1 + i * 7919 % (c.n_vocab as u32 - 1)).collect();
    let n_ctx = prompt.len() + args.tokens + 8;
    let mut s = Session::new(b, model, SessionOptions { kv: args.kv, n_ctx, ..Default::default() }).map_err(|e| e.to_string())?;
    // Warm-up: every pipeline compiled, the pool filled.
    let mut id = s.eval_argmax(&prompt[..4]).map_err(|e| e.to_string())?;
    id = s.eval_argmax(&[id]).map_err(|e| e.to_string())?;
    let (d0, p0) = s.backend().counters();
    let t = Instant::now();
    for _ in 0..args.tokens {
        id = s.eval_argmax(&[id]).map_err(|e| e.to_string())?;
    }
    let secs = t.elapsed().as_secs_f64();
    let (d1, p1) = s.backend().counters();
    let tok_s = args.tokens as f64 / secs;
    let n = args.tokens as f64;
    // KV rows read per token at the middle of the timed steps: every layer's K and V rows of
    // every position so far (a sliding-window layer reads at most its window).
    let mid = 5 + args.tokens / 2;
    let kv: u64 = (0..c.n_layers)
        .map(|l| {
            let span = if c.layer_is_swa[l] { c.sliding_window.unwrap_or(mid).min(mid) } else { mid } as u64;
            span * c.n_kv_heads as u64 * (args.kv.bytes_for(c.head_dim_k as u64) + args.kv.bytes_for(c.head_dim_v as u64))
        })
        .sum();
    let per_token = weights as f64 + kv as f64;
    let roof = copy * 1e9 / per_token;
    println!("model {} ({} layers, {} KV cache)", path.display(), c.n_layers, args.kv.name());
    println!(
        "decode per token: {:.1} dispatches ({:.1} per layer), {:.1} compute passes, weights {:.1} MB + KV {:.2} MB",
        (d1 - d0) as f64 / n,
        (d1 - d0) as f64 / n / c.n_layers as f64,
        (p1 - p0) as f64 / n,
        weights as f64 / 1e6,
        kv as f64 / 1e6
    );
    println!("decode: {tok_s:.2} tok/s over {} tokens; roofline {roof:.1} tok/s (bytes per token ÷ copy GB/s), ratio {:.2}", args.tokens, tok_s / roof);
    if args.prefill > 0 {
        s.reset();
        let t = Instant::now();
        s.eval_argmax(&prompt).map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        println!("prefill: {} tokens in {:.3} s, {:.1} tok/s", prompt.len(), secs, prompt.len() as f64 / secs);
    }
    Ok(())
}

fn upload<B: Timed>(b: &mut B, x: &[f32]) -> Result<B::Act, String> {
    // The embedding path is the one way into every backend: a one-row F32 table.
    let table = b.load_weight("x", GgmlType::F32, &[x.len() as u64, 2], bytemuck_f32(x).as_slice()).map_err(|e| e.to_string())?;
    b.embed(&table, &[0], None).map_err(|e| e.to_string())
}

fn bytemuck_f32(x: &[f32]) -> Vec<u8> {
    let mut v: Vec<u8> = x.iter().flat_map(|f| f.to_le_bytes()).collect();
    v.extend(std::iter::repeat_n(0u8, x.len() * 4));
    v
}

pub fn run(args: Args) -> ExitCode {
    let r = if args.device == "gpu" {
        match GpuBackend::open() {
            Ok(mut g) => {
                if let Some(m) = args.matvec.as_deref().and_then(webgguf::gpu::MatvecLayout::from_name) {
                    g.matvec = m;
                }
                if let Some(k) = args.gpu_kernels.as_deref().and_then(webgguf::gpu::GpuKernels::from_name) {
                    g.kernels = k;
                }
                let d = g.describe();
                run_on(g, &args, d)
            }
            Err(e) => return fail(e, false),
        }
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        webgguf::cpu::set_num_threads(cores);
        run_on(CpuBackend::new(), &args, format!("cpu, {cores} threads"))
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e, false),
    }
}
