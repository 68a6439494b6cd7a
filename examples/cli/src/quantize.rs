//! `webgguf quantize IN.gguf OUT.gguf --type Q4_K_M`: another file type, with llama.cpp's
//! per-tensor rules. The work is `webgguf::quantize`; this is the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::quantize::{quantize_file, FileType, MixOptions, QuantizeError, QuantizeOptions};
use webgguf::GgmlType;

#[derive(clap::Args)]
pub struct Args {
    /// A single-file GGUF model (F32/F16/BF16 is best; quantized input is dequantized first).
    input: PathBuf,
    /// The output file (written as OUT.partial, renamed when complete).
    output: PathBuf,
    /// F32, F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0,
    /// Q3_K_L, Q3_K_M, Q3_K_S, Q2_K.
    #[arg(long = "type", value_parser = parse_ftype)]
    ftype: FileType,
    /// Type of token_embd.weight (e.g. F16 or Q8_0 to keep it in higher precision).
    #[arg(long, value_parser = parse_type)]
    token_embedding_type: Option<GgmlType>,
    /// Type of output.weight (and of a token embedding tied to it).
    #[arg(long, value_parser = parse_type)]
    output_tensor_type: Option<GgmlType>,
    /// Every quantizable tensor gets the base type: no per-tensor mixing.
    #[arg(long)]
    pure: bool,
    /// Threads quantizing rows (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as JSON (per tensor: from, to, bytes) instead of one line per tensor.
    #[arg(long)]
    json: bool,
}

fn parse_ftype(s: &str) -> Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = FileType::all().map(FileType::name).collect();
        format!("unknown type {s:?}; one of {}", names.join(", "))
    })
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s)
        .filter(|t| GgmlType::WEIGHT_TYPES.contains(t))
        .ok_or_else(|| format!("unknown tensor type {s:?}; one of F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0, Q3_K, Q2_K"))
}

pub fn run(args: Args) -> ExitCode {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = QuantizeOptions {
        ftype: args.ftype,
        mix: MixOptions { token_embedding_type: args.token_embedding_type, output_tensor_type: args.output_tensor_type, pure: args.pure },
        threads,
    };
    let json = args.json;
    let mut progress = |r: &webgguf::quantize::TensorReport| {
        if json {
            return;
        }
        let fell = r.fell_back_from.map(|t| format!(" (wanted {t}: rows are not whole {t} blocks)")).unwrap_or_default();
        let _ = writeln!(
            std::io::stdout().lock(),
            "{:<36} {:>6} -> {:<6} {:>10} -> {:>10} bytes{fell}",
            r.name,
            r.from.name(),
            r.to.name(),
            r.bytes_in,
            r.bytes_out
        );
    };
    let t0 = std::time::Instant::now();
    match quantize_file(&args.input, &args.output, &opts, &mut progress) {
        Ok(report) => {
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            let mut out = std::io::stdout().lock();
            if json {
                let _ = writeln!(out, "{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                let _ = writeln!(
                    out,
                    "{}: {} tensors, {} -> {} bytes of tensor data, {:.2} bits per weight, file {} bytes, {:.1} s",
                    args.output.display(),
                    report.tensors.len(),
                    report.bytes_in,
                    report.bytes_out,
                    report.bits_per_weight,
                    report.file_bytes,
                    t0.elapsed().as_secs_f64()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                QuantizeError::Malformed { .. } | QuantizeError::Metadata { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
