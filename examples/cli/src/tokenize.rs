//! `webgguf tokenize --model MODEL.gguf --text TEXT [--no-bos] [--special] [--json]`
//!
//! Prints the token ids of TEXT as llama.cpp would produce them. BOS (and EOS) are added when
//! the file says so (`tokenizer.ggml.add_bos_token`) unless `--no-bos`; the text of special
//! tokens such as `<|im_start|>` becomes those tokens only with `--special`.
//!
//! Output: one line per token, `id<TAB>piece` (piece as a Rust string literal), or with
//! `--json` exactly `{"ids":[…]}`.

use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::gguf::{self, Limits, ReadHeaderError};
use webgguf::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .gguf file (the header is enough: only the tokenizer metadata is read).
    #[arg(long)]
    model: PathBuf,
    /// The text to tokenize.
    #[arg(long)]
    text: String,
    /// Never add BOS/EOS, even where the model asks for them.
    #[arg(long)]
    no_bos: bool,
    /// Turn the text of special tokens (e.g. `<|im_start|>`) into those tokens.
    #[arg(long)]
    special: bool,
    /// Print `{"ids":[…]}` instead of one `id<TAB>piece` line per token.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> ExitCode {
    let header = match gguf::read_header_from_path(&args.model, &Limits::default()) {
        Ok(h) => h,
        Err(ReadHeaderError::Gguf(e)) => {
            eprintln!("error: {}: malformed GGUF: {e}", args.model.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.model.display());
            return ExitCode::from(1);
        }
    };
    let tok = match Tokenizer::from_metadata(&header.metadata) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: tokenizer: {e}", args.model.display());
            return ExitCode::from(2);
        }
    };
    let ids = match tok.tokenize(&args.text, !args.no_bos, args.special) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("error: tokenizing: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout (piped into `head`) is not an error worth reporting.
    if args.json {
        let _ = writeln!(out, "{}", json!({ "ids": ids }));
    } else {
        for id in ids {
            let piece = tok.token_to_piece(id, true).map(String::from_utf8_lossy).unwrap_or_default();
            let _ = writeln!(out, "{id}\t{piece:?}");
        }
    }
    ExitCode::SUCCESS
}
