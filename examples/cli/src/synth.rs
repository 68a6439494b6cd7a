//! `webgguf synth OUT.gguf --preset llama-3.2-1b --type Q4_K_M`: a GGUF with random weights
//! and a real model's shapes. The work is `webgguf::synth`; this is the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::gguf::{read_header_from_path, shard_writer, Limits};
use webgguf::quantize::{FileType, MixOptions};
use webgguf::synth::{presets, synth_file, SynthError, SynthOptions, SynthSpec};

#[derive(clap::Args)]
pub struct Args {
    /// The output file (written as OUT.partial, renamed when complete); with --split-max-size
    /// the shards `{stem}-0000k-of-0000n.gguf` and manifest.json go to its folder instead.
    output: Option<PathBuf>,
    /// A real model's shape: llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, qwen2.5-0.5b,
    /// qwen2.5-7b, qwen3-0.6b, qwen3-4b, gemma-3-1b, gemma-3-4b (--list prints them).
    #[arg(long)]
    preset: Option<String>,
    /// List the presets and exit.
    #[arg(long)]
    list: bool,
    /// Without a preset: llama, qwen2, qwen3 or gemma3 (then every dimension below is needed).
    #[arg(long, value_parser = ["llama", "qwen2", "qwen3", "gemma3"])]
    arch: Option<String>,
    /// Override the preset's layer count (e.g. 1 or 2 for a quick model of real widths).
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    d_model: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    #[arg(long)]
    head_dim: Option<usize>,
    #[arg(long)]
    ffn: Option<usize>,
    /// Vocabulary size (grown to the tokenizer's when --tokenizer-from has more tokens).
    #[arg(long)]
    vocab: Option<usize>,
    /// Trained context length (metadata only).
    #[arg(long)]
    context: Option<usize>,
    /// File type: F32, F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1,
    /// Q4_0, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K (llama.cpp's per-tensor rules apply).
    #[arg(long = "type", default_value = "Q4_K_M", value_parser = parse_ftype)]
    ftype: FileType,
    /// Copy the tokenizer and chat template (every `tokenizer.*` key) from this GGUF; default:
    /// a built-in byte-level SentencePiece vocabulary.
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// Seed of every weight (same seed, same bytes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Split into shards of at most this many tensor-data bytes (bytes or K, M, G), as
    /// `webgguf shard --max-size`.
    #[arg(long, value_parser = parse_size)]
    split_max_size: Option<u64>,
    /// Threads generating and quantizing rows (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_ftype(s: &str) -> Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| format!("unknown type {s:?}; one of {}", FileType::all().map(FileType::name).collect::<Vec<_>>().join(", ")))
}

fn parse_size(s: &str) -> Result<u64, String> {
    shard_writer::parse_max_size(s).map_err(|e| e.to_string())
}

fn usage(msg: String) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

/// The spec the flags describe: a preset with overrides, or every dimension given.
fn spec(args: &Args) -> Result<SynthSpec, String> {
    let mut s = match (&args.preset, &args.arch) {
        (Some(p), None) => SynthSpec::from_preset(p).map_err(|e| e.to_string())?,
        (None, Some(a)) => {
            let preset = match a.as_str() {
                "llama" => "llama-3.2-1b",
                "qwen2" => "qwen2.5-0.5b",
                "qwen3" => "qwen3-0.6b",
                _ => "gemma-3-1b",
            };
            // The arch's flags from its smallest preset; every dimension from the flags.
            let mut s = SynthSpec::from_preset(preset).map_err(|e| e.to_string())?;
            s.rope_scaling = webgguf::synth::RopeScaling::None;
            let need = |v: Option<usize>, flag: &str| v.ok_or_else(|| format!("--arch needs --{flag}"));
            s.n_layers = need(args.layers, "layers")?;
            s.d_model = need(args.d_model, "d-model")?;
            s.n_heads = need(args.heads, "heads")?;
            s.n_kv_heads = need(args.kv_heads, "kv-heads")?;
            s.head_dim = need(args.head_dim, "head-dim")?;
            s.ffn_dim = need(args.ffn, "ffn")?;
            s.n_vocab = need(args.vocab, "vocab")?;
            s
        }
        _ => return Err("give exactly one of --preset and --arch".into()),
    };
    let set = |field: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut s.n_layers, args.layers);
    set(&mut s.d_model, args.d_model);
    set(&mut s.n_heads, args.heads);
    set(&mut s.n_kv_heads, args.kv_heads);
    set(&mut s.head_dim, args.head_dim);
    set(&mut s.ffn_dim, args.ffn);
    set(&mut s.n_vocab, args.vocab);
    set(&mut s.n_ctx_train, args.context);
    Ok(s)
}

pub fn run(args: Args) -> ExitCode {
    if args.list {
        let mut out = std::io::stdout().lock();
        for p in presets() {
            let s = &p.spec;
            let q4 = webgguf::synth::tensor_bytes(s, FileType::Q4_K_M).unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<14} {:<26} {:?} layers {:>2} d {:>4} heads {:>2}/{:<2} head_dim {:>3} ffn {:>5} vocab {:>6}  Q4_K_M {:>5.2} GB",
                p.name,
                p.model,
                s.arch,
                s.n_layers,
                s.d_model,
                s.n_heads,
                s.n_kv_heads,
                s.head_dim,
                s.ffn_dim,
                s.n_vocab,
                q4 as f64 / 1e9
            );
        }
        return ExitCode::SUCCESS;
    }
    let Some(output) = args.output.clone() else { return usage("give the output file (or --list)".into()) };
    let spec = match spec(&args) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    let tokenizer = match &args.tokenizer_from {
        Some(p) => match read_header_from_path(p, &Limits::default()) {
            Ok(h) => Some(h.metadata),
            Err(e) => {
                eprintln!("error: --tokenizer-from {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let name = format!("synthetic {} (webgguf synth, seed {})", args.preset.as_deref().or(args.arch.as_deref()).unwrap_or("model"), args.seed);
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = SynthOptions { ftype: args.ftype, mix: MixOptions::default(), seed: args.seed, threads, name };
    let json = args.json;
    let mut progress = |r: &webgguf::quantize::TensorReport| {
        if !json {
            let _ = writeln!(std::io::stdout().lock(), "{:<36} {:<6} {:>12} bytes", r.name, r.to.name(), r.bytes_out);
        }
    };
    let t0 = std::time::Instant::now();
    match synth_file(&spec, tokenizer.as_ref(), &opts, &output, args.split_max_size, &mut progress) {
        Ok((report, spec)) => {
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            let mut out = std::io::stdout().lock();
            if json {
                let v = serde_json::json!({
                    "output": output.display().to_string(),
                    "arch": webgguf::synth::arch_name(spec.arch),
                    "layers": spec.n_layers, "d_model": spec.d_model, "heads": spec.n_heads, "kv_heads": spec.n_kv_heads,
                    "head_dim": spec.head_dim, "ffn": spec.ffn_dim, "vocab": spec.n_vocab,
                    "seconds": t0.elapsed().as_secs_f64(),
                    "report": report,
                });
                let _ = writeln!(out, "{v}");
            } else {
                let _ = writeln!(
                    out,
                    "{}: {} tensors, {} bytes of tensor data, {:.2} bits per weight, file {} bytes{}, {:.1} s",
                    output.display(),
                    report.tensors.len(),
                    report.bytes_out,
                    report.bits_per_weight,
                    report.file_bytes,
                    if args.split_max_size.is_some() { " (split into shards beside it)" } else { "" },
                    t0.elapsed().as_secs_f64()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            // 2: the --tokenizer-from file is malformed (as the other commands); 1: the rest.
            ExitCode::from(if matches!(e, SynthError::Tokenizer(_)) { 2 } else { 1 })
        }
    }
}
