//! `webgguf bench-mask --model MODEL.gguf [--schema JSON] [--instance JSON] [--json]`
//!
//! The cost of constrained decoding per step for a model's vocabulary: builds the vocabulary
//! llguidance sees (timed once), compiles the schema (timed), then walks a valid answer (the
//! instance, tokenized) computing each step's token mask and accepting the token, and prints
//! the mask time per step (mean, p50, p95, max) in µs. Only the tokenizer metadata is read.
//! The default schema has nested objects, an array, an enum, numbers and escaped strings.

use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use webgguf::constraint::{Constraint, Grammar, Vocabulary};
use webgguf::gguf::{self, Limits};
use webgguf::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .gguf file (the header is enough).
    #[arg(long)]
    model: PathBuf,
    /// The JSON schema (default: a schema with nested objects, arrays, enums, numbers).
    #[arg(long)]
    schema: Option<String>,
    /// A JSON value valid against the schema, written as the answer would be.
    #[arg(long)]
    instance: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn default_schema() -> (serde_json::Value, String) {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["city", "zip"]},
            "status": {"enum": ["active", "retired"]},
            "score": {"type": "number"}
        },
        "required": ["name", "age", "tags", "address", "status", "score"]
    });
    let instance = r#"{"name": "Ada \"the\" Countess", "age": 36, "tags": ["math", "engines"], "address": {"city": "London", "zip": "12345"}, "status": "retired", "score": 9.75}"#;
    (schema, instance.to_owned())
}

pub fn run(args: Args) -> ExitCode {
    let header = match gguf::read_header_from_path(&args.model, &Limits::default()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}: {e}", args.model.display());
            return ExitCode::from(2);
        }
    };
    let tok = match Tokenizer::from_metadata(&header.metadata) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: tokenizer: {e}", args.model.display());
            return ExitCode::from(2);
        }
    };
    let (mut schema, mut instance) = default_schema();
    if let Some(s) = &args.schema {
        match serde_json::from_str(s) {
            Ok(v) => schema = v,
            Err(e) => {
                eprintln!("error: --schema: {e}");
                return ExitCode::from(2);
            }
        }
        instance = args.instance.clone().unwrap_or_default();
    }
    let t0 = Instant::now();
    let vocab = match Vocabulary::new(&tok) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let vocab_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let mut c = match Constraint::new(&vocab, &Grammar::JsonSchema(schema)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let ids = match tok.tokenize(&instance, false, false) {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("error: tokenizing the instance: {e}");
            return ExitCode::from(2);
        }
    };
    let mut logits = vec![0f32; tok.n_vocab()];
    let mut us = Vec::with_capacity(ids.len());
    for &id in &ids {
        logits.fill(0.0);
        let t = Instant::now();
        if let Err(e) = c.mask(&mut logits) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if logits[id as usize] == f32::NEG_INFINITY {
            let allowed: Vec<String> = (0..logits.len() as u32)
                .filter(|&i| logits[i as usize] == 0.0)
                .take(12)
                .map(|i| format!("{:?}", tok.decode(&[i]).unwrap_or_default()))
                .collect();
            eprintln!(
                "error: the instance's token {id} ({:?}) is not allowed at step {}; allowed: {}",
                tok.decode(&[id]).unwrap_or_default(),
                us.len() - 1,
                allowed.join(" ")
            );
            return ExitCode::from(1);
        }
        if let Err(e) = c.accept(id) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let accepting = c.is_accepting();
    let mut sorted = us.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0.0);
    let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
    let out = json!({
        "model": args.model.display().to_string(), "n_vocab": tok.n_vocab(), "vocabulary_ms": vocab_ms, "compile_ms": compile_ms,
        "steps": us.len(), "mask_us_mean": mean, "mask_us_p50": pct(0.5), "mask_us_p95": pct(0.95), "mask_us_max": pct(1.0), "complete": accepting,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "{}: {} tokens; vocabulary {vocab_ms:.0} ms, schema {compile_ms:.1} ms; mask per step over {} steps: mean {mean:.0} µs, p50 {:.0}, p95 {:.0}, max {:.0}; answer complete: {accepting}",
            args.model.display(),
            tok.n_vocab(),
            us.len(),
            pct(0.5),
            pct(0.95),
            pct(1.0)
        );
    }
    ExitCode::SUCCESS
}
