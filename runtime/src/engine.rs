//! A session over one model: prefill, token-by-token decode, teacher-forced logits and
//! perplexity, with timing stats. One conversation at a time; `reset` starts afresh.

use crate::error::{EngineError, ModelError};
use crate::kv_cache::KvType;
use crate::model::{Backend, Logits, Model};
use crate::sampler::{Sampler, StopConditions, TextScan};
use crate::tokenizer::{Detokenizer, Tokenizer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use web_time::Instant;

/// Options fixed when a session is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SessionOptions {
    pub kv: KvType,
    /// Positions the KV cache holds (capped at the model's trained context).
    pub n_ctx: usize,
    /// For a quantized cache: positions before and including each query's own read from f16
    /// copies, with the sequence's first [`KV_SINK`](crate::kv_cache::KV_SINK) (0: none;
    /// [`KvCache::with_recent`](crate::kv_cache::KvCache::with_recent) says why).
    pub kv_recent: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { kv: KvType::F16, n_ctx: 4096, kv_recent: crate::kv_cache::KV_RECENT }
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
        let cache = backend.new_cache(&model.config, options.kv, n_ctx, options.kv_recent)?;
        Ok(Session {
            backend,
            model,
            cache,
            options,
            n_past: 0,
            peak_past: 0,
            prefill_ms: 0.0,
            prefill_tokens: 0,
            step_ms: Vec::new(),
            ttft_ms: 0.0,
            generated: 0,
        })
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
        self.advance(ids, which, B::read_host)
    }

    /// Runs the pass over `ids` at the end of the conversation, reads its logits with `read`,
    /// and only then counts the positions as taken.
    fn advance<T>(&mut self, ids: &[u32], which: Logits, read: impl FnOnce(&mut B, B::Act) -> Result<T, ModelError>) -> Result<T, ModelError> {
        let logits = self.pass(ids, which)?;
        let out = read(&mut self.backend, logits)?;
        self.count(ids.len());
        Ok(out)
    }

    /// The forward pass over `ids` at the end of the conversation, without counting the
    /// positions: the caller reads the result (a browser GPU reads asynchronously) and then
    /// calls [`Session::count_pass`]. An error leaves the conversation as it was.
    pub fn pass(&mut self, ids: &[u32], which: Logits) -> Result<B::Act, ModelError> {
        if ids.is_empty() {
            return Err(ModelError::BadHyperparameter { what: "tokens to evaluate".into(), value: "none".into() });
        }
        self.check_room(ids.len())?;
        self.model.forward(&mut self.backend, &mut self.cache, ids, self.n_past, which)
    }

    fn count(&mut self, n: usize) {
        self.n_past += n;
        self.peak_past = self.peak_past.max(self.n_past);
    }

    /// Counts a [`Session::pass`] of `n` positions whose result was read, timed `ms` (pass and
    /// read) as a prefill or as a decode step.
    pub fn count_pass(&mut self, n: usize, ms: f64, prefill: bool) {
        self.count(n);
        if prefill {
            self.prefill_ms += ms;
            self.prefill_tokens += n;
        } else {
            self.step_ms.push(ms);
        }
    }

    /// Prefill: evaluates a prompt and returns the last position's logits, timing it.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(ids, Logits::Last)?;
        let out = self.backend.read_host(act)?;
        self.count_pass(ids.len(), ms_since(t0), true);
        Ok(out)
    }

    /// Decode step: one token in, next-token logits out, timing it.
    pub fn step(&mut self, id: u32) -> Result<Vec<f32>, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(&[id], Logits::Last)?;
        let out = self.backend.read_host(act)?;
        self.count_pass(1, ms_since(t0), false);
        Ok(out)
    }

    /// Appends `ids` and returns the greedy next token (the lowest id among equal maxima),
    /// computed on the device: a GPU reads back 4 bytes instead of the logits. Timed as a
    /// prefill (several ids) or a decode step (one).
    pub fn eval_argmax(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(ids, Logits::Last)?;
        let id = self.backend.argmax(act)?;
        self.count_pass(ids.len(), ms_since(t0), ids.len() > 1);
        Ok(id)
    }

    /// The backend, for its counters (benchmarks, tests).
    pub fn backend(&self) -> &B {
        &self.backend
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
        let per_pos = self.options.kv.bytes_for((c.n_kv_heads * c.head_dim_k) as u64) + self.options.kv.bytes_for((c.n_kv_heads * c.head_dim_v) as u64);
        let per_pos = per_pos * c.n_layers as u64;
        let o = &self.options;
        let (width_k, width_v) = ((c.n_kv_heads * c.head_dim_k) as u64, (c.n_kv_heads * c.head_dim_v) as u64);
        let copies = crate::kv_cache::RecentRows::bytes(o.kv, c.n_layers as u64, o.n_ctx as u64, o.kv_recent as u64, width_k, width_v);
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
            peak_kv_bytes: per_pos * self.peak_past as u64 + copies,
            kv_capacity_bytes: crate::kv_cache::capacity_bytes(o.kv, c.n_layers as u64, o.n_ctx as u64, o.kv_recent as u64, width_k, width_v),
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

/// What a pass hands the generator: logits, or the token the device already picked.
pub enum Next {
    Logits(Vec<f32>),
    Id(u32),
}

/// A text generation between passes: what the next pass evaluates (`pending`), what was
/// generated and shown so far. Driven by [`Session::generate_text`] natively, or pass by pass
/// by the browser bindings, which read GPU results asynchronously ([`Session::pass`], then
/// [`Session::take`]).
pub struct TextGen {
    prompt_ids: Vec<u32>,
    /// Prompt and generated tokens: the penalties' window.
    history: Vec<u32>,
    ids: Vec<u32>,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    detok: Detokenizer,
    /// Tokens taken instead of the sampled ones (a generation replayed after a lost device:
    /// the sampler still draws, so a seeded run continues as it would have), oldest first.
    forced: VecDeque<u32>,
    /// Plain greedy on a device with its own argmax: passes read back the token, not logits.
    on_device: bool,
    /// Ids the next pass evaluates (the prompt, then the last token); empty once finished.
    pending: Vec<u32>,
    /// The next pass is the prompt's.
    prefill: bool,
    /// Where a stop string begins in `text`.
    cut_at: Option<usize>,
    finish: Option<FinishReason>,
    t0: Instant,
}

impl TextGen {
    /// Ids the next pass evaluates; empty once the generation finished.
    pub fn pending(&self) -> &[u32] {
        &self.pending
    }

    /// The next pass is the prompt's (timed as prefill).
    pub fn is_prefill(&self) -> bool {
        self.prefill
    }

    /// Read the next pass with the device's argmax (4 bytes) rather than the logits.
    pub fn argmax_on_device(&self) -> bool {
        self.on_device
    }

    pub fn is_done(&self) -> bool {
        self.finish.is_some()
    }

    /// Tokens generated so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_ids.len()
    }

    /// Why it ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Stops the generation; nothing more is handed out.
    pub fn abort(&mut self) {
        if self.finish.is_none() {
            self.text.push_str(&self.detok.finish());
            self.finish = Some(FinishReason::Abort);
            self.pending.clear();
        }
    }

    /// Ends the generation: flushes the detokenizer, cuts a stop string, returns the text not
    /// yet handed out.
    fn end(&mut self, reason: FinishReason) -> String {
        if self.cut_at.is_none() {
            self.text.push_str(&self.detok.finish());
        }
        let end = self.cut_at.unwrap_or(self.text.len());
        self.text.truncate(end);
        let piece = self.text.get(self.emitted..).unwrap_or_default().to_owned();
        self.emitted = end;
        self.finish = Some(reason);
        self.pending.clear();
        piece
    }
}

impl<B: Backend> Session<B> {
    /// Starts a generation for `prompt_ids` from an empty conversation. `forced`: tokens to
    /// generate first whatever is sampled (replaying a generation that was cut off).
    pub fn start_text(&mut self, tokenizer: &Tokenizer, prompt_ids: &[u32], sampler: &Sampler, forced: &[u32]) -> TextGen {
        self.reset();
        self.reset_stats();
        TextGen {
            prompt_ids: prompt_ids.to_vec(),
            history: prompt_ids.to_vec(),
            ids: Vec::new(),
            text: String::new(),
            emitted: 0,
            detok: tokenizer.detokenizer(),
            forced: forced.iter().copied().collect(),
            on_device: forced.is_empty() && sampler.is_plain_greedy() && self.backend.argmax_on_device(),
            pending: prompt_ids.to_vec(),
            prefill: true,
            cut_at: None,
            finish: None,
            t0: Instant::now(),
        }
    }

    /// Runs `gen`'s next pass and reads it (synchronously: the CPU, or a native GPU).
    pub fn run_pass(&mut self, gen: &TextGen) -> Result<Next, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(&gen.pending, Logits::Last)?;
        let next = if gen.on_device { Next::Id(self.backend.argmax(act)?) } else { Next::Logits(self.backend.read_host(act)?) };
        self.count_pass(gen.pending.len(), ms_since(t0), gen.prefill);
        Ok(next)
    }

    /// Takes a pass's result: samples (or takes the device's token), detokenizes, checks the
    /// stop conditions (end tokens, stop strings — never handed out — and max_tokens), and
    /// returns the text now safe to show: never part of a UTF-8 character or of a stop string.
    /// `aborted` ends the generation before sampling.
    pub fn take(
        &mut self,
        gen: &mut TextGen,
        next: Next,
        tokenizer: &Tokenizer,
        sampler: &mut Sampler,
        stop: &StopConditions,
        aborted: bool,
    ) -> Result<String, EngineError> {
        gen.prefill = false;
        gen.pending.clear();
        if gen.finish.is_some() {
            return Ok(String::new());
        }
        if aborted {
            gen.abort();
            return Ok(String::new());
        }
        if stop.max_tokens.is_some_and(|m| gen.ids.len() >= m) {
            return Ok(gen.end(FinishReason::Length));
        }
        let sampled = match next {
            Next::Id(id) => id,
            Next::Logits(mut logits) => sampler.sample(&mut logits, &gen.history)?,
        };
        let id = gen.forced.pop_front().unwrap_or(sampled);
        if gen.ids.is_empty() {
            self.ttft_ms = ms_since(gen.t0);
        }
        if tokenizer.is_eog(id) || stop.stop_tokens.contains(&id) {
            return Ok(gen.end(FinishReason::Stop));
        }
        gen.ids.push(id);
        gen.history.push(id);
        self.generated += 1;
        let piece = gen.detok.push(tokenizer, id)?;
        gen.text.push_str(&piece);
        let mut out = String::new();
        match stop.scan_text(&gen.text, gen.emitted) {
            TextScan::Stop { cut, .. } => {
                gen.cut_at = Some(cut);
                return Ok(gen.end(FinishReason::Stop));
            }
            TextScan::Continue { safe_len } => {
                if safe_len > gen.emitted {
                    out.push_str(&gen.text[gen.emitted..safe_len]);
                    gen.emitted = safe_len;
                }
            }
        }
        if stop.max_tokens.is_some_and(|m| gen.ids.len() >= m) {
            out.push_str(&gen.end(FinishReason::Length));
            return Ok(out);
        }
        gen.pending.push(id);
        Ok(out)
    }

    /// The finished (or abandoned) generation with this session's stats.
    pub fn finish_text(&self, gen: TextGen) -> Generation {
        Generation { prompt_ids: gen.prompt_ids, ids: gen.ids, text: gen.text, finish_reason: gen.finish.unwrap_or(FinishReason::Abort), stats: self.stats() }
    }

    /// Generates text for `prompt_ids` from an empty conversation: samples with `sampler`,
    /// stops on `stop` (end tokens, stop strings — never emitted — and max_tokens), and streams
    /// text through `on_text` in pieces that never split a UTF-8 character or show part of a
    /// stop string. `abort` is polled before every sampling step; `on_text` returning
    /// [`Flow::Stop`] ends the generation too.
    pub fn generate_text(
        &mut self,
        tokenizer: &Tokenizer,
        prompt_ids: &[u32],
        sampler: &mut Sampler,
        stop: &StopConditions,
        abort: Option<&AtomicBool>,
        mut on_text: impl FnMut(&str) -> Flow,
    ) -> Result<Generation, EngineError> {
        let mut gen = self.start_text(tokenizer, prompt_ids, sampler, &[]);
        while !gen.is_done() {
            let next = self.run_pass(&gen)?;
            let aborted = abort.is_some_and(|a| a.load(Ordering::Relaxed));
            let piece = self.take(&mut gen, next, tokenizer, sampler, stop, aborted)?;
            if !piece.is_empty() && on_text(&piece) == Flow::Stop {
                gen.abort();
            }
        }
        Ok(self.finish_text(gen))
    }
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
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
