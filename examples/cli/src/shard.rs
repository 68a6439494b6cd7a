//! `webgguf shard IN.gguf --max-size 512M --out DIR`: llama.cpp split GGUF files
//! (`{stem}-0000k-of-0000n.gguf`, as `gguf-split --split-max-size` writes them) and
//! `DIR/manifest.json`. The work is `webgguf::gguf::shard_writer`; this is the command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::gguf::shard_writer::{self, ShardError, ShardWritten};

#[derive(clap::Args)]
pub struct Args {
    /// A single-file GGUF model (a 1-of-1 split too; shards of a larger split are refused).
    input: PathBuf,
    /// Most tensor-data bytes per shard: bytes, or K, M, G (KiB, MiB, GiB). Like gguf-split,
    /// headers are not counted and a larger tensor gets a shard of its own.
    #[arg(long, value_parser = parse_size)]
    max_size: u64,
    /// Output directory (created if missing); existing shards of the same names are replaced.
    #[arg(long)]
    out: PathBuf,
}

fn parse_size(s: &str) -> Result<u64, String> {
    shard_writer::parse_max_size(s).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> ExitCode {
    let mut progress = |w: ShardWritten<'_>| {
        let sha = w.shard.sha256.as_deref().unwrap_or("");
        // A closed stdout (piped into `head`) must not abort the run.
        let _ = writeln!(
            std::io::stdout().lock(),
            "shard {}/{}: {} — {} tensors, {} bytes, sha256 {sha}",
            w.no + 1,
            w.count,
            args.out.join(&w.shard.file).display(),
            w.tensors,
            w.shard.bytes,
        );
    };
    match shard_writer::write_shards_with_progress(&args.input, args.max_size, &args.out, &mut progress) {
        Ok(m) => {
            let _ = writeln!(
                std::io::stdout().lock(),
                "{} shards, {} tensors, {} bytes; manifest {}",
                m.shards.len(),
                m.tensors,
                m.model.bytes,
                args.out.join(shard_writer::MANIFEST_FILE).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                ShardError::Malformed { .. } => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
