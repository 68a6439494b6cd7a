//! A session over one model: prefill, token-by-token decode, teacher-forced logits and
//! perplexity, with timing stats. One conversation at a time: the cache keeps its tokens, and
//! a generation whose prompt continues them prefills only what is new; `reset` starts afresh.

use crate::error::ModelError;
use crate::kv_cache::KvType;
use crate::model::{Backend, Logits, Model};
use web_time::Instant;

mod generate;
mod logprobs;
mod perplexity;

pub use generate::{FinishReason, Flow, Generation, Next, TextGen};
pub use logprobs::{token_logprob, TokenLogprob, MAX_TOP_LOGPROBS};
pub use perplexity::Perplexity;

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
    /// A generation keeps the cached positions its prompt shares with the conversation so far
    /// and prefills only the rest ([`Session::reusable_prefix`]).
    pub reuse_prefix: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { kv: KvType::F16, n_ctx: 4096, kv_recent: crate::kv_cache::KV_RECENT, reuse_prefix: true }
    }
}

/// Timings of the work done since the last `reset_stats`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Prompt positions evaluated (prefilled).
    pub prompt_tokens: usize,
    /// Prompt positions taken from the cache instead ([`Session::reusable_prefix`]).
    pub reused_tokens: usize,
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
    /// [positions filled in the cache]: the token at each (what a new prompt is compared with).
    tokens: Vec<u32>,
    reused: usize,
    peak_past: usize,
    prefill_ms: f64,
    prefill_tokens: usize,
    step_ms: Vec<f64>,
    ttft_ms: f64,
    generated: usize,
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
            tokens: Vec::new(),
            reused: 0,
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
        self.tokens.len()
    }

    /// Forgets the conversation (the cache is reused, not reallocated).
    pub fn reset(&mut self) {
        self.rewind(0);
    }

    /// Forgets every position from `n` on: the next pass writes at `n` (the cache's rows there
    /// are replaced as they are written).
    pub fn rewind(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    /// The tokens at the filled positions.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How many leading positions a continuation with `prompt` can keep: the prompt's common
    /// prefix with the cached tokens, less its last token (its logits are needed), and no
    /// further back than the cache can resume exactly from ([`Backend::resumable`]: a
    /// quantized cache's f16 copies may no longer hold what the next query reads).
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let common = common.min(prompt.len().saturating_sub(1));
        self.backend.resumable(&self.cache, common)
    }

    pub fn reset_stats(&mut self) {
        self.peak_past = self.n_past();
        self.reused = 0;
        self.prefill_ms = 0.0;
        self.prefill_tokens = 0;
        self.step_ms.clear();
        self.ttft_ms = 0.0;
        self.generated = 0;
    }

    fn check_room(&self, n: usize) -> Result<(), ModelError> {
        if self.n_past() + n > self.options.n_ctx {
            return Err(ModelError::ContextFull { pos: self.n_past() + n, n_ctx: self.options.n_ctx });
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
        self.count(ids);
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
        self.model.forward(&mut self.backend, &mut self.cache, ids, self.tokens.len(), which)
    }

    fn count(&mut self, ids: &[u32]) {
        self.tokens.extend_from_slice(ids);
        self.peak_past = self.peak_past.max(self.n_past());
    }

    /// Counts a [`Session::pass`] of `ids` whose result was read, timed `ms` (pass and read)
    /// as a prefill or as a decode step.
    pub fn count_pass(&mut self, ids: &[u32], ms: f64, prefill: bool) {
        self.count(ids);
        if prefill {
            self.prefill_ms += ms;
            self.prefill_tokens += ids.len();
        } else {
            self.step_ms.push(ms);
        }
    }

    /// Prefill: evaluates a prompt and returns the last position's logits, timing it.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(ids, Logits::Last)?;
        let out = self.backend.read_host(act)?;
        self.count_pass(ids, ms_since(t0), true);
        Ok(out)
    }

    /// Decode step: one token in, next-token logits out, timing it.
    pub fn step(&mut self, id: u32) -> Result<Vec<f32>, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(&[id], Logits::Last)?;
        let out = self.backend.read_host(act)?;
        self.count_pass(&[id], ms_since(t0), false);
        Ok(out)
    }

    /// Appends `ids` and returns the greedy next token (the lowest id among equal maxima),
    /// computed on the device: a GPU reads back 4 bytes instead of the logits. Timed as a
    /// prefill (several ids) or a decode step (one).
    pub fn eval_argmax(&mut self, ids: &[u32]) -> Result<u32, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(ids, Logits::Last)?;
        let id = self.backend.argmax(act)?;
        self.count_pass(ids, ms_since(t0), ids.len() > 1);
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
            reused_tokens: self.reused,
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

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}
