//! A session over one model: prefill, token-by-token decode, teacher-forced logits and
//! perplexity, with timing stats. One conversation at a time; `reset` starts afresh.

use crate::error::{EngineError, ModelError};
use crate::kv_cache::KvType;
use crate::model::{Backend, Logits, Model};
use crate::sampler::{Sampler, StopConditions, TextScan};
use crate::tokenizer::Tokenizer;
use std::sync::atomic::{AtomicBool, Ordering};
use web_time::Instant;

/// Options fixed when a session is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SessionOptions {
    pub kv: KvType,
    /// Positions the KV cache holds (capped at the model's trained context).
    pub n_ctx: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { kv: KvType::F16, n_ctx: 4096 }
    }
}

/// Timings of the work done since the last `reset_stats`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Time to first token: prefill plus the first sampled token, ms.
    pub ttft_ms: f64,
    pub prefill_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_ms: f64,
    pub decode_tok_s: f64,
    /// Inter-token latency percentiles over decode steps, ms.
    pub itl_p50_ms: f64,
    pub itl_p95_ms: f64,
    /// Most KV-cache bytes in use (positions filled × bytes per position).
    pub peak_kv_bytes: u64,
    /// Bytes the KV cache has allocated.
    pub kv_capacity_bytes: u64,
    /// The compute device: "cpu", or the GPU adapter, backend and features chosen.
    pub device: String,
}

pub struct Session<B: Backend> {
    pub backend: B,
    pub model: Model<B>,
    cache: B::Cache,
    options: SessionOptions,
    /// Positions filled in the cache.
    n_past: usize,
    peak_past: usize,
    prefill_ms: f64,
    prefill_tokens: usize,
    step_ms: Vec<f64>,
    ttft_ms: f64,
    generated: usize,
}

/// What a streaming callback tells the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

impl<B: Backend> Session<B> {
    pub fn new(mut backend: B, model: Model<B>, options: SessionOptions) -> Result<Self, ModelError> {
        let n_ctx = options.n_ctx.min(model.config.n_ctx_train.max(1)).max(1);
        let options = SessionOptions { n_ctx, ..options };
        let cache = backend.new_cache(&model.config, options.kv, n_ctx)?;
        Ok(Session { backend, model, cache, options, n_past: 0, peak_past: 0, prefill_ms: 0.0, prefill_tokens: 0, step_ms: Vec::new(), ttft_ms: 0.0, generated: 0 })
    }

    pub fn options(&self) -> SessionOptions {
        self.options
    }

    /// Positions already in the cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forgets the conversation (the cache is reused, not reallocated).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    pub fn reset_stats(&mut self) {
        self.peak_past = self.n_past;
        self.prefill_ms = 0.0;
        self.prefill_tokens = 0;
        self.step_ms.clear();
        self.ttft_ms = 0.0;
        self.generated = 0;
    }

    fn check_room(&self, n: usize) -> Result<(), ModelError> {
        if self.n_past + n > self.options.n_ctx {
            return Err(ModelError::ContextFull { pos: self.n_past + n, n_ctx: self.options.n_ctx });
        }
        Ok(())
    }

    /// Appends `ids` to the conversation and returns logits (`[1, n_vocab]` for `Last`,
    /// `[ids.len(), n_vocab]` for `All`).
    pub fn eval(&mut self, ids: &[u32], which: Logits) -> Result<Vec<f32>, ModelError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.advance(ids, which, B::into_host)
    }

    /// Runs the pass over `ids` at the end of the conversation, reads its logits with `read`,
    /// and only then counts the positions as taken.
    fn advance<T>(&mut self, ids: &[u32], which: Logits, read: impl FnOnce(&mut B, B::Act) -> Result<T, ModelError>) -> Result<T, ModelError> {
        self.check_room(ids.len())?;
        let logits = self.model.forward(&mut self.backend, &mut self.cache, ids, self.n_past, which)?;
        let out = read(&mut self.backend, logits)?;
        self.n_past += ids.len();
        self.peak_past = self.peak_past.max(self.n_past);
        Ok(out)
    }

    /// Prefill: evaluates a prompt and returns the last position's logits, timing it.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let t0 = Instant::now();
        let out = self.eval(ids, Logits::Last)?;
        self.prefill_ms += t0.elapsed().as_secs_f64() * 1e3;
        self.prefill_tokens += ids.len();
        Ok(out)
    }

    /// Decode step: one token in, next-token logits out, timing it.
    pub fn step(&mut self, id: u32) -> Result<Vec<f32>, ModelError> {
        let t0 = Instant::now();
        let out = self.eval(&[id], Logits::Last)?;
        self.step_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        Ok(out)
    }

    /// Appends `ids` and returns the greedy next token (the lowest id among equal maxima),
    /// computed on the device: a GPU reads back 4 bytes instead of the logits. Timed as a
    /// prefill (several ids) or a decode step (one).
    pub fn eval_argmax(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        if ids.is_empty() {
            return Err(ModelError::BadHyperparameter { what: "tokens to evaluate".into(), value: "none".into() });
        }
        let t0 = Instant::now();
        let id = self.advance(ids, Logits::Last, B::argmax)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if ids.len() == 1 {
            self.step_ms.push(ms);
        } else {
            self.prefill_ms += ms;
            self.prefill_tokens += ids.len();
        }
        Ok(id)
    }

    /// The compute device ("cpu", or the GPU adapter and its features).
    pub fn device(&self) -> String {
        self.backend.describe()
    }

    /// Logits for every position of `ids`, teacher-forced from an empty cache.
    pub fn logits_all(&mut self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.reset();
        self.eval(ids, Logits::All)
    }

    pub fn stats(&self) -> Stats {
        let decode_ms: f64 = self.step_ms.iter().sum();
        let mut sorted = self.step_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if sorted.is_empty() {
                0.0
            } else {
                sorted[((sorted.len() - 1) as f64 * p).round() as usize]
            }
        };
        let rate = |n: usize, ms: f64| if ms > 0.0 { n as f64 / (ms / 1e3) } else { 0.0 };
        let c = &self.model.config;
        let per_pos = self.options.kv.bytes_for((c.n_kv_heads * c.head_dim_k) as u64)
            + self.options.kv.bytes_for((c.n_kv_heads * c.head_dim_v) as u64);
        let per_pos = per_pos * c.n_layers as u64;
        Stats {
            prompt_tokens: self.prefill_tokens,
            generated_tokens: self.generated,
            ttft_ms: self.ttft_ms,
            prefill_ms: self.prefill_ms,
            prefill_tok_s: rate(self.prefill_tokens, self.prefill_ms),
            decode_ms,
            decode_tok_s: rate(self.step_ms.len(), decode_ms),
            itl_p50_ms: pct(0.5),
            itl_p95_ms: pct(0.95),
            peak_kv_bytes: per_pos * self.peak_past as u64,
            kv_capacity_bytes: per_pos * self.options.n_ctx as u64,
            device: self.backend.describe(),
        }
    }
}

/// Why a generation ended (OpenAI's `finish_reason` words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The abort flag was raised or the callback asked to stop.
    Abort,
}

/// The outcome of [`Session::generate_text`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Generated tokens (without the end token).
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub stats: Stats,
}

/// What a decode step hands the sampler: logits, or the token the device already picked.
enum Next {
    Logits(Vec<f32>),
    Id(u32),
}

impl<B: Backend> Session<B> {
    /// Generates text for `prompt_ids` from an empty conversation: samples with `sampler`,
    /// stops on `stop` (end tokens, stop strings — never emitted — and max_tokens), and streams
    /// text through `on_text` in pieces that never split a UTF-8 character or show part of a
    /// stop string. `abort` is polled before every step.
    pub fn generate_text(
        &mut self,
        tokenizer: &Tokenizer,
        prompt_ids: &[u32],
        sampler: &mut Sampler,
        stop: &StopConditions,
        abort: Option<&AtomicBool>,
        mut on_text: impl FnMut(&str) -> Flow,
    ) -> Result<Generation, EngineError> {
        self.reset();
        self.reset_stats();
        let t0 = Instant::now();
        let mut history = prompt_ids.to_vec();
        let mut ids = Vec::new();
        let mut text = String::new();
        let mut emitted = 0usize;
        let mut detok = tokenizer.detokenizer();
        let mut finish = FinishReason::Length;
        // Plain greedy on a device with its own argmax: read back 4 bytes per token, not logits.
        let on_device = sampler.is_plain_greedy() && self.backend.argmax_on_device();
        let mut next = if on_device { Next::Id(self.eval_argmax(prompt_ids)?) } else { Next::Logits(self.prefill(prompt_ids)?) };
        let mut cut_at: Option<usize> = None;
        loop {
            if abort.is_some_and(|a| a.load(Ordering::Relaxed)) {
                finish = FinishReason::Abort;
                break;
            }
            if stop.max_tokens.is_some_and(|m| ids.len() >= m) {
                break;
            }
            let id = match &mut next {
                Next::Id(id) => *id,
                Next::Logits(logits) => sampler.sample(logits, &history)?,
            };
            if ids.is_empty() {
                self.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
            }
            if tokenizer.is_eog(id) || stop.stop_tokens.contains(&id) {
                finish = FinishReason::Stop;
                break;
            }
            ids.push(id);
            history.push(id);
            self.generated += 1;
            text.push_str(&detok.push(tokenizer, id)?);
            match stop.scan_text(&text, emitted) {
                TextScan::Stop { cut, .. } => {
                    cut_at = Some(cut);
                    finish = FinishReason::Stop;
                }
                TextScan::Continue { safe_len } => {
                    if safe_len > emitted && on_text(&text[emitted..safe_len]) == Flow::Stop {
                        emitted = safe_len;
                        finish = FinishReason::Abort;
                        break;
                    }
                    emitted = emitted.max(safe_len);
                }
            }
            if cut_at.is_some() {
                break;
            }
            if stop.max_tokens.is_some_and(|m| ids.len() >= m) {
                break;
            }
            next = if on_device { Next::Id(self.eval_argmax(&[id])?) } else { Next::Logits(self.step(id)?) };
        }
        if cut_at.is_none() {
            text.push_str(&detok.finish());
        }
        let end = cut_at.unwrap_or(text.len());
        text.truncate(end);
        if end > emitted && finish != FinishReason::Abort {
            on_text(&text[emitted..end]);
        }
        Ok(Generation { prompt_ids: prompt_ids.to_vec(), ids, text, finish_reason: finish, stats: self.stats() })
    }
}

/// Perplexity as llama.cpp's oracle defines it (tests/fixtures/oracle/README.md): the tokens
/// are cut into consecutive windows of `ctx` positions — `ctx - 1` tokens after a BOS when
/// `bos` is given, else `ctx` tokens — each evaluated from an empty cache; every position that
/// has a predecessor in its window is predicted.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    pub predictions: usize,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
    pub windows: usize,
}

impl<B: Backend> Session<B> {
    pub fn perplexity(&mut self, tokens: &[u32], ctx: usize, bos: Option<u32>) -> Result<Perplexity, ModelError> {
        let per_window = if bos.is_some() { ctx.saturating_sub(1) } else { ctx }.max(1);
        let (mut nll, mut predictions, mut windows) = (0f64, 0usize, 0usize);
        for chunk in tokens.chunks(per_window) {
            let mut seq = Vec::with_capacity(ctx);
            seq.extend(bos);
            seq.extend_from_slice(chunk);
            let logits = self.logits_all(&seq)?;
            let n_vocab = logits.len() / seq.len();
            for (pos, &target) in seq.iter().enumerate().skip(1) {
                let row = &logits[(pos - 1) * n_vocab..pos * n_vocab];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                nll += lse - row[target as usize] as f64;
                predictions += 1;
            }
            windows += 1;
        }
        let mean = nll / predictions.max(1) as f64;
        Ok(Perplexity { ppl: mean.exp(), predictions, nll: mean, windows })
    }
}
