//! `webgguf generate --model P --prompt T [--chat] [--max-tokens N] [--temperature …] [--seed S]
//! [--kv f32|f16|q8|q4] [--device auto|cpu|gpu] [--json-schema S | --grammar G] [--json]`
//!
//! Streams the text to stdout (stats to stderr), or prints one JSON object:
//! `{"prompt_ids":[…], "ids":[…], "text":"…", "finish_reason":"stop|length|abort", "stats":{…}}`
//! where `ids` are the generated tokens only.

use crate::common::{fail, load, ModelArgs};
use crate::with_session;
use std::io::Write;
use std::process::ExitCode;
use webgguf::chat::{ChatMessage, ChatTemplate};
use webgguf::constraint::{Constraint, Grammar, Vocabulary};
use webgguf::engine::Flow;
use webgguf::sampler::{Sampler, SamplerConfig, StopConditions};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (raw, or the user message with --chat).
    #[arg(long)]
    prompt: String,
    /// Treat the prompt as one user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: i32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop string (repeatable); never printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Hold the answer to this JSON schema (constrained decoding).
    #[arg(long, conflicts_with = "grammar")]
    json_schema: Option<String>,
    /// Hold the answer to this GBNF grammar (llama.cpp's format; `root` starts it).
    #[arg(long)]
    grammar: Option<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> ExitCode {
    let mut loaded = match load(&args.model) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let tok = &loaded.tokenizer;
    let prompt_ids = if args.chat {
        let arch = loaded.gguf.metadata().architecture().unwrap_or("");
        let template = match ChatTemplate::from_metadata(loaded.gguf.metadata(), arch) {
            Ok(t) => t,
            Err(e) => return fail(e, false),
        };
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::new("system", s.clone()));
        }
        messages.push(ChatMessage::new("user", args.prompt.clone()));
        let rendered = match template.apply(&messages, true) {
            Ok(r) => r,
            Err(e) => return fail(e, false),
        };
        // The template writes BOS itself when the model wants one: no extra BOS.
        tok.tokenize(&rendered, false, true)
    } else {
        tok.tokenize(&args.prompt, true, false)
    };
    let prompt_ids = match prompt_ids {
        Ok(ids) => ids,
        Err(e) => return fail(e, false),
    };
    let config = SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplerConfig::default()
    };
    let mut sampler = match Sampler::new(config, with_session!(&loaded.session, s => s.model.config.n_vocab)) {
        Ok(s) => s,
        Err(e) => return fail(e, false),
    };
    let stop = StopConditions { max_tokens: Some(args.max_tokens), stop_tokens: Vec::new(), stop_strings: args.stop.clone() };
    let json = args.json;
    let mut out = std::io::stdout().lock();
    let grammar = match (&args.json_schema, &args.grammar) {
        (Some(s), _) => match serde_json::from_str(s) {
            Ok(v) => Some(Grammar::JsonSchema(v)),
            Err(e) => return fail(format!("--json-schema: {e}"), false),
        },
        (None, Some(g)) => Some(Grammar::Gbnf(g.clone())),
        (None, None) => None,
    };
    let constraint = match &grammar {
        Some(g) => match Vocabulary::new(tok).and_then(|v| Constraint::new(&v, g)) {
            Ok(c) => Some(c),
            Err(e) => return fail(e, false),
        },
        None => None,
    };
    let result = with_session!(&mut loaded.session, s => {
        let mut gen = s.start_text(tok, &prompt_ids, &sampler, &[]);
        if let Some(c) = constraint {
            gen.constrain(c);
        }
        s.run_text(gen, tok, &mut sampler, &stop, None, |piece| {
            if !json {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
            Flow::Continue
        })
    });
    let g = match result {
        Ok(g) => g,
        Err(e) => return fail(e, false),
    };
    if json {
        match serde_json::to_string(&g) {
            Ok(s) => {
                let _ = writeln!(out, "{s}");
            }
            Err(e) => return fail(e, false),
        }
    } else {
        let _ = writeln!(out);
        let s = &g.stats;
        eprintln!(
            "[{} prompt tokens, {} generated ({:?}); TTFT {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s, ITL p50 {:.1} ms p95 {:.1} ms, KV {} bytes]",
            s.prompt_tokens, s.generated_tokens, g.finish_reason, s.ttft_ms, s.prefill_tok_s, s.decode_tok_s, s.itl_p50_ms, s.itl_p95_ms, s.peak_kv_bytes
        );
    }
    ExitCode::SUCCESS
}
