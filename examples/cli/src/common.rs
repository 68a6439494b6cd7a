//! Loading a model for the commands that run it.

use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::engine::{Session, SessionOptions};
use webgguf::gguf::GgufModel;
use webgguf::gpu::GpuBackend;
use webgguf::kv_cache::KvType;
use webgguf::loader::LoadError;
use webgguf::model::{Backend, CpuBackend};
use webgguf::tokenizer::Tokenizer;
use webgguf::ModelError;

/// Options shared by generate / logits / perplexity.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// GGUF file; repeat for every shard of a split model.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// KV-cache storage.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv: KvType,
    /// q8 / q4 caches: positions before and including each query's own (with the sequence's
    /// first 4) whose K and V rows are read from f16 copies instead of the quantized rows;
    /// 0 for none.
    #[arg(long, default_value_t = webgguf::kv_cache::KV_RECENT)]
    pub kv_recent: usize,
    /// Context length (positions the KV cache holds).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Compute device: `gpu` (wgpu: Vulkan/Metal/DX12), `cpu`, or `auto`: the GPU when a
    /// hardware adapter exists and the model loads on it, else the CPU. Software adapters
    /// (lavapipe, SwiftShader) are used only when asked for with `gpu`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "gpu"])]
    pub device: String,
    /// CPU threads (native only); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPU kernel family: `auto` (x86-64 with AVX2+FMA: `avx2`, else `simd`), `avx2` (the
    /// arithmetic of llama.cpp's x86 AVX2 build, bit for bit), `simd` (the 128-bit kernels the
    /// browser runs as SIMD128), `scalar`, or `float` (weights dequantized to f32, activations
    /// not rounded to 8 bits: slow, a reference for measuring e.g. a quantized KV cache).
    #[arg(long, default_value = "auto", value_parser = ["auto", "avx2", "simd", "scalar", "float"])]
    pub kernels: String,
    /// GPU kernel family: `exact` (activations rounded as ggml's dot products round them: the
    /// `simd` CPU family's numbers), `fast` (unrounded: the `float` family's, fewer dispatches);
    /// default: fast on hardware GPUs, exact on software adapters.
    #[arg(long, value_parser = ["exact", "fast"])]
    pub gpu_kernels: Option<String>,
}

/// A CPU backend on the `--kernels` family (an error when this CPU lacks it).
pub fn cpu_backend(name: &str) -> Result<CpuBackend, ExitCode> {
    use webgguf::cpu::Kernels;
    let k = match name {
        "avx2" => Kernels::Avx2,
        "simd" => Kernels::Simd,
        "scalar" => Kernels::Scalar,
        "float" => Kernels::Float,
        _ => return Ok(CpuBackend::new()),
    };
    CpuBackend::with_kernels(k).ok_or_else(|| fail(format!("--kernels {name}: not available on this CPU or build"), false))
}

pub fn parse_kv(s: &str) -> Result<KvType, String> {
    KvType::from_name(s).ok_or_else(|| format!("unknown KV type {s:?} (f32, f16, q8, q4)"))
}

/// A session on whichever device was chosen (one per process: the variants' sizes differ, and
/// that does not matter).
#[allow(clippy::large_enum_variant)]
pub enum AnySession {
    Cpu(Session<CpuBackend>),
    Gpu(Session<GpuBackend>),
}

/// Runs `$body` with `$v` bound to the session, whatever its backend.
#[macro_export]
macro_rules! with_session {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::common::AnySession::Cpu($v) => $body,
            $crate::common::AnySession::Gpu($v) => $body,
        }
    };
}

pub struct Loaded {
    pub session: AnySession,
    pub tokenizer: Tokenizer,
    pub gguf: GgufModel,
}

/// Prints a load error and picks the exit code (2 for a malformed file).
pub fn fail(e: impl std::fmt::Display, malformed: bool) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(if malformed { 2 } else { 1 })
}

pub fn load(args: &ModelArgs) -> Result<Loaded, ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    webgguf::cpu::set_num_threads(args.threads.unwrap_or(cores));
    let cpu = cpu_backend(&args.kernels)?;
    let options = SessionOptions { kv: args.kv, n_ctx: args.ctx, kv_recent: args.kv_recent, ..Default::default() };
    if args.device != "cpu" {
        match GpuBackend::open() {
            Ok(mut gpu) if args.device == "gpu" || gpu.device().info.device_type != "Cpu" => {
                if let Some(k) = args.gpu_kernels.as_deref().and_then(webgguf::gpu::GpuKernels::from_name) {
                    gpu.kernels = k;
                }
                match session_on(gpu, &args.model, options) {
                    Ok((gguf, s)) => {
                        eprintln!("[device: {}]", s.device());
                        let tokenizer = Tokenizer::from_metadata(gguf.metadata()).map_err(|e| fail(e, true))?;
                        return Ok(Loaded { session: AnySession::Gpu(s), tokenizer, gguf });
                    }
                    Err(e) if args.device == "gpu" || malformed(&e) => {
                        let m = malformed(&e);
                        return Err(fail(e, m));
                    }
                    Err(e) => eprintln!("[the model does not run on the GPU ({e}); using the CPU]"),
                }
            }
            Ok(gpu) => eprintln!("[{} is a software adapter; using the CPU (--device gpu to use it)]", gpu.device().info.adapter),
            Err(e) if args.device == "gpu" => return Err(fail(e, false)),
            Err(e) => eprintln!("[{e}; using the CPU]"),
        }
    }
    let (gguf, session) = session_on(cpu, &args.model, options).map_err(|e| {
        let m = malformed(&e);
        fail(e, m)
    })?;
    let tokenizer = Tokenizer::from_metadata(gguf.metadata()).map_err(|e| fail(e, true))?;
    Ok(Loaded { session: AnySession::Cpu(session), tokenizer, gguf })
}

/// A file that is not a usable GGUF model (exit code 2), rather than a device or I/O failure.
fn malformed(e: &LoadError) -> bool {
    !matches!(e, LoadError::Io { .. } | LoadError::Model(ModelError::Kv(_) | ModelError::Gpu(_)))
}

fn session_on<B: Backend>(mut backend: B, paths: &[PathBuf], options: SessionOptions) -> Result<(GgufModel, Session<B>), LoadError> {
    let (gguf, model) = webgguf::loader::load_files(paths, &mut backend)?;
    Ok((gguf, Session::new(backend, model, options)?))
}

/// The header of `path`, or the exit code after printing why (2: malformed GGUF, 1: I/O).
pub fn read_header_or_exit(path: &std::path::Path) -> Result<webgguf::gguf::GgufHeader, ExitCode> {
    use webgguf::gguf::{read_header_from_path, Limits, ReadHeaderError};
    read_header_from_path(path, &Limits::default()).map_err(|e| match e {
        ReadHeaderError::Gguf(e) => {
            eprintln!("error: {}: malformed GGUF: {e}", path.display());
            ExitCode::from(2)
        }
        ReadHeaderError::Io(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(1)
        }
    })
}
