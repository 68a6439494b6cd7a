//! `webgguf`: the native command-line tool.
//!
//! Exit codes: 0 success, 1 I/O or usage trouble, 2 the model file is malformed (typed error).

mod bench;
mod bench_mask;
mod common;
mod eval;
mod generate;
mod inspect;
mod logits;
mod perplexity;
mod plan;
mod quantize;
mod shard;
mod synth;
mod tokenize;

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
    /// Tokenize text with a model's tokenizer (ids as llama.cpp produces them).
    Tokenize(tokenize::Args),
    /// Generate text from a prompt (streams to stdout; --json for ids, text and stats).
    Generate(generate::Args),
    /// Teacher-forced logits for a token sequence, written as .npy [n_ids, n_vocab].
    Logits(logits::Args),
    /// Perplexity of a text file.
    Perplexity(perplexity::Args),
    /// Matvec bandwidth per weight type vs a copy, and decode speed vs the roofline.
    Bench(bench::Args),
    /// Split a model into llama.cpp split GGUF files (gguf-split's layout) plus manifest.json.
    Shard(shard::Args),
    /// Convert a model to another file type (Q8_0 … Q2_K, F16), with llama.cpp's per-tensor mixing.
    Quantize(quantize::Args),
    /// Write a model with random weights and a real model's shapes (--preset llama-3.1-8b …).
    Synth(synth::Args),
    /// One row of the quantization table: perplexity, KL divergence and top-1 against a reference, speed, sizes.
    Eval(eval::Args),
    /// Plan a model from its header: device, KV type and context (and why), or the typed error a load would end in.
    Plan(plan::Args),
    /// Constrained decoding's cost per step for a model's vocabulary (token masks of a JSON schema).
    BenchMask(bench_mask::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Shard(args) => shard::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Plan(args) => plan::run(args),
        Command::BenchMask(args) => bench_mask::run(args),
        Command::Synth(args) => synth::run(args),
    }
}
