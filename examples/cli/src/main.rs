//! `webgguf`: the native command-line tool.
//!
//! Exit codes: 0 success, 1 I/O or usage trouble, 2 the model file is malformed (typed error).

mod inspect;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "webgguf", version, about = "Run and inspect quantized GGUF language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a GGUF file's metadata, tensor table, type counts and a memory estimate.
    Inspect(inspect::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
    }
}
