//! Loading a model for the commands that run it.

use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::engine::{Session, SessionOptions};
use webgguf::gguf::GgufModel;
use webgguf::kv_cache::KvType;
use webgguf::loader::LoadError;
use webgguf::model::{CpuBackend, Model};
use webgguf::tokenizer::Tokenizer;

/// Options shared by generate / logits / perplexity.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// GGUF file; repeat for every shard of a split model.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// KV-cache storage.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv: KvType,
    /// Context length (positions the KV cache holds).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Compute device. Only the CPU backend exists so far; `auto` picks it.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu"])]
    pub device: String,
    /// CPU threads (native only); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn parse_kv(s: &str) -> Result<KvType, String> {
    KvType::from_name(s).ok_or_else(|| format!("unknown KV type {s:?} (f32, f16, q8, q4)"))
}

pub struct Loaded {
    pub session: Session<CpuBackend>,
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
    let (gguf, mut source) = webgguf::loader::open_files(&args.model).map_err(|e| {
        let malformed = matches!(e, LoadError::Gguf { .. });
        fail(e, malformed)
    })?;
    let tokenizer = Tokenizer::from_metadata(gguf.metadata()).map_err(|e| fail(e, true))?;
    let mut backend = CpuBackend::new();
    let model = Model::load(&mut backend, &gguf, &mut source).map_err(|e| fail(e, true))?;
    let session = Session::new(backend, model, SessionOptions { kv: args.kv, n_ctx: args.ctx }).map_err(|e| fail(e, false))?;
    Ok(Loaded { session, tokenizer, gguf })
}
