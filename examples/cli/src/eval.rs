//! `webgguf eval --model P --file TEXT [--tokens N] [--window W] [--write-reference F |
//! --reference F] [--json]`: one row of the quantization table. Over the first N tokens of the
//! text, in windows of W positions from an empty cache (as `perplexity`): perplexity; with
//! `--reference` (log-probabilities written earlier by the source model with
//! `--write-reference`), the mean KL divergence KL(source ‖ this) and top-1 agreement per
//! position; then prefill and decode tok/s (a 32-token greedy continuation), file size, bits
//! per weight, KV-cache bytes at 4096 positions for f16/q8/q4, and peak resident memory.
//!
//! The reference file: magic `WGEVREF1`, n_vocab (u32), n_positions (u32), the token ids
//! (u32 each, so a mismatched text or tokenizer is refused), then per position the source's
//! log-probabilities as f16 (`[n_positions, n_vocab]`). It is streamed window by window, so
//! memory holds one window's logits whatever N is.

use crate::common::{fail, load, ModelArgs};
use crate::with_session;
use half::f16;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::engine::Session;
use webgguf::gguf::partial_file::PartialFile;
use webgguf::kv_cache::KvType;
use webgguf::model::Backend;
use webgguf::ModelError;

const MAGIC: &[u8; 8] = b"WGEVREF1";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to evaluate on.
    #[arg(long)]
    file: PathBuf,
    /// Tokens of the text used (from its start).
    #[arg(long, default_value_t = 1024)]
    tokens: usize,
    /// Window length in positions (BOS included when the model adds one).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Write this model's log-probabilities here, as the reference for other files.
    #[arg(long, conflicts_with = "reference")]
    write_reference: Option<PathBuf>,
    /// Compare with the reference written by the source model (KL divergence, top-1).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Tokens generated for the decode rate.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    file_bytes: u64,
    /// Tensor data bits per weight (norms and other kept tensors included).
    bits_per_weight: f64,
    tokens: usize,
    predictions: usize,
    ppl: f64,
    /// Mean KL(reference ‖ model) over positions, nats (null without --reference).
    kl_mean: Option<f64>,
    /// Largest per-position KL divergence.
    kl_max: Option<f64>,
    /// Share of positions whose argmax equals the reference's.
    top1_agreement: Option<f64>,
    /// The same over the positions where the reference's top-2 margin is at least 0.1 (the
    /// near-ties, where any change of rounding may swap the two, left out).
    top1_agreement_confident: Option<f64>,
    /// How many positions that is.
    confident_positions: Option<usize>,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// Greedy tokens the decode rate was measured over.
    decode_tokens: usize,
    device: String,
    /// KV-cache bytes for 4096 positions, by storage type.
    kv_bytes_4k: std::collections::BTreeMap<&'static str, u64>,
    /// Peak resident set of this process (VmHWM), when the OS reports it.
    peak_rss_bytes: Option<u64>,
}

struct RefReader {
    r: BufReader<File>,
    /// `[n_vocab]` f16 log-probabilities of one position
    row: Vec<u8>,
}

fn log_softmax(row: &[f32], out: &mut Vec<f64>) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    out.clear();
    out.extend(row.iter().map(|&x| x as f64 - lse));
}

fn argmax(v: &[f64]) -> usize {
    top2(v).0
}

/// The first index of the largest value, and the largest minus the second largest.
fn top2(v: &[f64]) -> (usize, f64) {
    let (mut bi, mut b1, mut b2) = (0, f64::NEG_INFINITY, f64::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > b1 {
            (bi, b2, b1) = (i, b1, x);
        } else if x > b2 {
            b2 = x;
        }
    }
    (bi, b1 - b2)
}

/// Top-2 margin from which a reference position counts as confident.
const CONFIDENT_MARGIN: f64 = 0.1;

fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(mut args: Args) -> ExitCode {
    args.model.ctx = args.model.ctx.max(args.window).max(64);
    let path = args.model.model.first().map(|p| p.display().to_string()).unwrap_or_default();
    let file_bytes: u64 = args.model.model.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let mut loaded = match load(&args.model) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", args.file.display()), false),
    };
    let mut tokens = match loaded.tokenizer.tokenize(&text, false, false) {
        Ok(t) => t,
        Err(e) => return fail(e, false),
    };
    tokens.truncate(args.tokens);
    if tokens.len() < 2 || args.window < 2 {
        return fail("the text gives fewer than 2 tokens, or --window is under 2", false);
    }
    let bos = if loaded.tokenizer.add_bos() { loaded.tokenizer.bos() } else { None };
    let cfg = with_session!(&loaded.session, s => s.model.config.clone());
    let n_vocab = cfg.n_vocab;

    // Reference in or out.
    let mut writer = None;
    let mut reader = None;
    if let Some(p) = &args.write_reference {
        // Written as P.partial and renamed when complete: a killed run leaves no short reference.
        let mut w = match PartialFile::create(p) {
            Ok(f) => f,
            Err(e) => return fail(e, false),
        };
        let predictions = count_predictions(tokens.len(), args.window, bos.is_some());
        let mut head = MAGIC.to_vec();
        head.extend((n_vocab as u32).to_le_bytes());
        head.extend((predictions as u32).to_le_bytes());
        head.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
        if let Err(e) = w.write(&head) {
            return fail(e, false);
        }
        writer = Some(w);
    }
    if let Some(p) = &args.reference {
        match open_reference(p, n_vocab, &tokens, count_predictions(tokens.len(), args.window, bos.is_some())) {
            Ok(r) => reader = Some(r),
            Err(e) => return fail(format!("{}: {e}", p.display()), false),
        }
    }

    // Windows: NLL, and against the reference KL and top-1.
    let per_window = if bos.is_some() { args.window - 1 } else { args.window };
    let (mut nll, mut predictions) = (0f64, 0usize);
    let (mut kl_sum, mut kl_max, mut agree) = (0f64, 0f64, 0usize);
    let (mut confident, mut agree_confident) = (0usize, 0usize);
    let mut lp = Vec::with_capacity(n_vocab);
    let mut ref_lp = vec![0f64; n_vocab];
    let mut prefill_tokens = 0usize;
    let mut prefill_s = 0f64;
    for chunk in tokens.chunks(per_window) {
        let mut seq = Vec::with_capacity(args.window);
        seq.extend(bos);
        seq.extend_from_slice(chunk);
        if seq.len() < 2 {
            continue;
        }
        let t = std::time::Instant::now();
        let logits = match with_session!(&mut loaded.session, s => s.logits_all(&seq)) {
            Ok(l) => l,
            Err(e) => return fail(e, false),
        };
        prefill_s += t.elapsed().as_secs_f64();
        prefill_tokens += seq.len();
        for (pos, &target) in seq.iter().enumerate().skip(1) {
            log_softmax(&logits[(pos - 1) * n_vocab..pos * n_vocab], &mut lp);
            nll -= lp[target as usize];
            predictions += 1;
            if let Some(w) = writer.as_mut() {
                let row: Vec<u8> = lp.iter().flat_map(|&x| f16::from_f64(x.max(-65504.0)).to_le_bytes()).collect();
                if let Err(e) = w.write(&row) {
                    return fail(e, false);
                }
            }
            if let Some(r) = reader.as_mut() {
                if let Err(e) = r.r.read_exact(&mut r.row) {
                    return fail(format!("reference: {e}"), false);
                }
                for (d, b) in ref_lp.iter_mut().zip(r.row.chunks_exact(2)) {
                    *d = f16::from_le_bytes([b[0], b[1]]).to_f64();
                }
                // Renormalise the f16-rounded reference so it is a distribution again.
                let lse = {
                    let m = ref_lp.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    m + ref_lp.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
                };
                let kl: f64 = ref_lp.iter().zip(&lp).map(|(&p, &q)| (p - lse).exp() * ((p - lse) - q)).sum();
                kl_sum += kl;
                kl_max = kl_max.max(kl);
                let (ref_top, margin) = top2(&ref_lp);
                let same = ref_top == argmax(&lp);
                agree += usize::from(same);
                if margin >= CONFIDENT_MARGIN {
                    confident += 1;
                    agree_confident += usize::from(same);
                }
            }
        }
    }
    if let Some(w) = writer {
        if let Err(e) = w.finish() {
            return fail(e, false);
        }
    }

    // Decode: a greedy continuation of the text's first tokens.
    let prompt: Vec<u32> = bos.into_iter().chain(tokens.iter().copied().take(16)).collect();
    let decode = with_session!(&mut loaded.session, s => decode_rate(s, &prompt, args.decode_tokens));
    let decode_tok_s = match decode {
        Ok(r) => r,
        Err(e) => return fail(e, false),
    };

    let (elements, tensor_bytes) = loaded.gguf.tensors().fold((0u64, 0u64), |(e, b), (_, t)| (e + t.n_elements, b + t.n_bytes));
    let per_pos = |kv: KvType| (cfg.n_layers * cfg.n_kv_heads) as u64 * (kv.bytes_for(cfg.head_dim_k as u64) + kv.bytes_for(cfg.head_dim_v as u64));
    // with the quantized caches' f16 copies (--kv-recent)
    let copies = |kv: KvType| {
        webgguf::kv_cache::RecentRows::bytes(
            kv,
            cfg.n_layers as u64,
            4096,
            args.model.kv_recent as u64,
            (cfg.n_kv_heads * cfg.head_dim_k) as u64,
            (cfg.n_kv_heads * cfg.head_dim_v) as u64,
        )
    };
    let kv_bytes_4k = [("f16", KvType::F16), ("q8", KvType::Q8), ("q4", KvType::Q4)].into_iter().map(|(n, k)| (n, per_pos(k) * 4096 + copies(k))).collect();
    let report = Report {
        model: path,
        file_bytes,
        bits_per_weight: tensor_bytes as f64 * 8.0 / elements.max(1) as f64,
        tokens: tokens.len(),
        predictions,
        ppl: (nll / predictions.max(1) as f64).exp(),
        kl_mean: reader.as_ref().map(|_| kl_sum / predictions.max(1) as f64),
        kl_max: reader.as_ref().map(|_| kl_max),
        top1_agreement: reader.as_ref().map(|_| agree as f64 / predictions.max(1) as f64),
        top1_agreement_confident: reader.as_ref().map(|_| agree_confident as f64 / confident.max(1) as f64),
        confident_positions: reader.as_ref().map(|_| confident),
        prefill_tok_s: prefill_tokens as f64 / prefill_s.max(1e-9),
        decode_tok_s,
        decode_tokens: args.decode_tokens,
        device: with_session!(&loaded.session, s => s.device()),
        kv_bytes_4k,
        peak_rss_bytes: peak_rss(),
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e, false),
        }
    } else {
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_owned(), f);
        println!(
            "{}: {:.2} bpw, ppl {:.4} over {} predictions, KL {} (max {}), top-1 {} ({} where the reference's margin >= {CONFIDENT_MARGIN}), prefill {:.1} tok/s, decode {:.1} tok/s",
            report.model,
            report.bits_per_weight,
            report.ppl,
            report.predictions,
            opt(report.kl_mean, &|v| format!("{v:.5}")),
            opt(report.kl_max, &|v| format!("{v:.3}")),
            opt(report.top1_agreement, &|v| format!("{:.2} %", v * 100.0)),
            opt(report.top1_agreement_confident, &|v| format!("{:.2} %", v * 100.0)),
            report.prefill_tok_s,
            report.decode_tok_s
        );
    }
    ExitCode::SUCCESS
}

/// Decode tok/s of a greedy continuation of `prompt`.
fn decode_rate<B: Backend>(s: &mut Session<B>, prompt: &[u32], n: usize) -> Result<f64, ModelError> {
    s.reset();
    s.reset_stats();
    let mut next = argmax_f32(&s.prefill(prompt)?);
    for _ in 0..n {
        next = argmax_f32(&s.step(next)?);
    }
    Ok(s.stats().decode_tok_s)
}

fn argmax_f32(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0 as u32
}

/// Predictions over `n` tokens in windows (each window predicts all but its first position).
fn count_predictions(n: usize, window: usize, bos: bool) -> usize {
    let per = if bos { window - 1 } else { window };
    (0..n).step_by(per).map(|s| (n - s).min(per) + usize::from(bos)).filter(|&len| len >= 2).map(|len| len - 1).sum()
}

fn open_reference(p: &PathBuf, n_vocab: usize, tokens: &[u32], predictions: usize) -> Result<RefReader, String> {
    let mut r = BufReader::new(File::open(p).map_err(|e| e.to_string())?);
    let mut head = [0u8; 16];
    r.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..8] != MAGIC {
        return Err("not a webgguf eval reference (write one with --write-reference)".into());
    }
    let rv = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let rp = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
    if rv != n_vocab || rp != predictions {
        return Err(format!(
            "written for {rv} tokens of vocabulary and {rp} predictions; this run has {n_vocab} and {predictions} (same --tokens, --window and text?)"
        ));
    }
    let mut ids = vec![0u8; tokens.len() * 4];
    r.read_exact(&mut ids).map_err(|e| format!("truncated: {e}"))?;
    if ids.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ne(tokens.iter().copied()) {
        return Err("the reference was computed on other tokens (another text or tokenizer)".into());
    }
    Ok(RefReader { r, row: vec![0u8; n_vocab * 2] })
}

#[cfg(test)]
mod tests {
    use super::top2;

    #[test]
    fn top2_takes_the_first_of_equal_maxima_and_their_margin() {
        assert_eq!(top2(&[1.0, 3.0, 3.0, 2.0]), (1, 0.0));
        assert_eq!(top2(&[-1.0, -4.0, -0.5, -0.75]), (2, 0.25));
        assert_eq!(top2(&[0.5]), (0, f64::INFINITY));
    }
}
