//! `webgguf perplexity --model P --file TEXT [--ctx N] [--json]`: perplexity over consecutive
//! windows of N positions (BOS + N-1 tokens when the model adds BOS), each from an empty cache,
//! as llama.cpp's oracle defines it. JSON: `{"ppl":…, "predictions":…, "nll":…, "windows":…}`.

use crate::common::{fail, load, ModelArgs};
use crate::with_session;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to evaluate.
    #[arg(long)]
    file: PathBuf,
    /// Window length in positions.
    #[arg(long = "window", default_value_t = 512)]
    window: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(mut args: Args) -> ExitCode {
    args.model.ctx = args.model.ctx.max(args.window);
    let mut loaded = match load(&args.model) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", args.file.display()), false),
    };
    let tokens = match loaded.tokenizer.tokenize(&text, false, false) {
        Ok(t) => t,
        Err(e) => return fail(e, false),
    };
    let bos = if loaded.tokenizer.add_bos() { loaded.tokenizer.bos() } else { None };
    let t0 = std::time::Instant::now();
    let p = match with_session!(&mut loaded.session, s => s.perplexity(&tokens, args.window, bos)) {
        Ok(p) => p,
        Err(e) => return fail(e, false),
    };
    if args.json {
        match serde_json::to_string(&p) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e, false),
        }
    } else {
        println!(
            "perplexity {:.4} over {} predictions ({} tokens, {} windows of {}, {:.1} s)",
            p.ppl,
            p.predictions,
            tokens.len(),
            p.windows,
            args.window,
            t0.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
