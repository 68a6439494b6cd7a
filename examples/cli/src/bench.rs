//! `webgguf bench --device gpu|cpu [--rows R --cols C --reps N] [--model P --tokens T]`:
//! prints, never asserts. For every weight type: the matvec (one token, as in decode) in GB/s
//! of weights read, and its ratio to a plain copy on the same device in the same run (GPU: the
//! `copy` kernel, GB/s counting bytes read + written; CPU: memcpy). With `--model`: decode
//! tok/s and its ratio to the roofline (weight bytes per token ÷ copy GB/s).

use crate::common::fail;
use std::process::ExitCode;
use std::time::Instant;
use webgguf::engine::{Session, SessionOptions};
use webgguf::gpu::GpuBackend;
use webgguf::model::{Backend, CpuBackend};
use webgguf::GgmlType;

#[derive(clap::Args)]
pub struct Args {
    /// gpu or cpu.
    #[arg(long, default_value = "gpu", value_parser = ["gpu", "cpu"])]
    device: String,
    /// Weight rows of each matvec.
    #[arg(long, default_value_t = 2048)]
    rows: usize,
    /// Weight columns (a multiple of 256).
    #[arg(long, default_value_t = 2048)]
    cols: usize,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also time decoding this model.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Decode steps to time.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
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

/// A device to time: the backend, a way to wait for queued work, and the copy baseline.
trait Timed: Backend {
    fn sync(&mut self) -> Result<(), String>;
    /// Copy bandwidth in GB/s over `bytes`, `reps` times.
    fn copy_gbs(&mut self, bytes: usize, reps: usize) -> Result<f64, String>;
    /// Bytes the device holds for a weight of `ty` with `rows × cols` values.
    fn weight_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize;
}

impl Timed for GpuBackend {
    fn sync(&mut self) -> Result<(), String> {
        self.finish().map_err(|e| e.to_string())
    }
    fn copy_gbs(&mut self, bytes: usize, reps: usize) -> Result<f64, String> {
        let src = self.storage_buffer(bytes as u64);
        let dst = self.storage_buffer(bytes as u64);
        self.record_copy(&src, &dst, bytes / 4).map_err(|e| e.to_string())?;
        self.sync()?;
        let t = Instant::now();
        for _ in 0..reps {
            self.record_copy(&src, &dst, bytes / 4).map_err(|e| e.to_string())?;
        }
        self.sync()?;
        Ok(2.0 * (bytes * reps) as f64 / t.elapsed().as_secs_f64() / 1e9)
    }
    fn weight_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize {
        webgguf::gpu::layout::row_words(ty, cols).map_or(0, |w| w * 4 * rows)
    }
}

impl Timed for CpuBackend {
    fn sync(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn copy_gbs(&mut self, bytes: usize, reps: usize) -> Result<f64, String> {
        let src = noise(bytes, 7);
        let mut dst = vec![0u8; bytes];
        let t = Instant::now();
        for _ in 0..reps {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        Ok(2.0 * (bytes * reps) as f64 / t.elapsed().as_secs_f64() / 1e9)
    }
    fn weight_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize {
        ty.row_bytes(cols as u64).map_or(0, |b| b as usize * rows)
    }
}

fn run_on<B: Timed>(mut b: B, args: &Args, describe: String) -> Result<(), String> {
    println!("device: {describe}");
    let copy_bytes = B::weight_bytes(GgmlType::F32, args.rows, args.cols);
    let copy = b.copy_gbs(copy_bytes, args.reps)?;
    println!("copy: {copy:.2} GB/s (read + written, {} MB buffers)", copy_bytes >> 20);
    println!("{:<6} {:>10} {:>10} {:>8}", "type", "MB", "GB/s", "vs copy");
    let x: Vec<f32> = noise(args.cols, 3).iter().map(|&v| f32::from(v) / 128.0 - 0.5).collect();
    for ty in GgmlType::WEIGHT_TYPES {
        let Some(row_bytes) = ty.row_bytes(args.cols as u64) else { continue };
        let bytes = noise(row_bytes as usize * args.rows, ty.id().into());
        let w = b.load_weight("bench", ty, &[args.cols as u64, args.rows as u64], &bytes).map_err(|e| e.to_string())?;
        let xs = upload(&mut b, &x)?;
        drop(b.matmul(&w, &xs).map_err(|e| e.to_string())?);
        b.sync()?;
        let t = Instant::now();
        for _ in 0..args.reps {
            drop(b.matmul(&w, &xs).map_err(|e| e.to_string())?);
        }
        b.sync()?;
        let dev_bytes = B::weight_bytes(ty, args.rows, args.cols);
        let gbs = (dev_bytes * args.reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("{:<6} {:>10.1} {:>10.2} {:>8.2}", ty.name(), dev_bytes as f64 / 1e6, gbs, gbs / copy);
    }
    if let Some(path) = &args.model {
        let gguf = webgguf::loader::read_headers(std::slice::from_ref(path)).map_err(|e| e.to_string())?;
        // Decode reads every matrix once per token; the embedding table only when it is also
        // the output projection (tied).
        let tied = !gguf.tensors().any(|(_, t)| t.name == "output.weight");
        let per_token: usize = gguf
            .tensors()
            .map(|(_, t)| t)
            .filter(|t| t.shape.len() >= 2 && t.shape[1] > 1 && (t.name != "token_embd.weight" || tied))
            .map(|t| B::weight_bytes(t.ty, t.shape.iter().skip(1).product::<u64>() as usize, t.shape[0] as usize))
            .sum();
        let (_, model) = webgguf::loader::load_files(std::slice::from_ref(path), &mut b).map_err(|e| e.to_string())?;
        let mut s = Session::new(b, model, SessionOptions { kv: webgguf::kv_cache::KvType::F16, n_ctx: 64 + args.tokens, ..Default::default() })
            .map_err(|e| e.to_string())?;
        let mut id = s.eval_argmax(&[1, 2, 3, 4]).map_err(|e| e.to_string())?;
        let t = Instant::now();
        for _ in 0..args.tokens {
            id = s.eval_argmax(&[id]).map_err(|e| e.to_string())?;
        }
        let tok_s = args.tokens as f64 / t.elapsed().as_secs_f64();
        let roof = copy * 1e9 / 2.0 / per_token as f64;
        println!(
            "decode {}: {tok_s:.2} tok/s; weights {:.1} MB/token, roofline {roof:.1} tok/s (read-only copy rate), ratio {:.2}",
            path.display(),
            per_token as f64 / 1e6,
            tok_s / roof
        );
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
            Ok(g) => {
                let d = format!("{:?}", g.device().info);
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
