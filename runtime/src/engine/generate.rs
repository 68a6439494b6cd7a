//! A text generation driven pass by pass: sampling, detokenizing, stop conditions and
//! streaming of text that is safe to show.

use super::logprobs::{token_logprob, TokenLogprob};
use super::{ms_since, Session, Stats};
use crate::chat::tools::{parse_tool_calls, ToolCall, ToolCallFormat};
use crate::constraint::Constraint;
use crate::error::{EngineError, ModelError};
use crate::model::{Backend, Logits};
use crate::sampler::{Sampler, StopConditions, TextScan};
use crate::tokenizer::{Detokenizer, Tokenizer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use web_time::Instant;

/// What a streaming callback tells the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why a generation ended (OpenAI's `finish_reason` words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The abort flag was raised or the callback asked to stop.
    Abort,
    /// The answer was tool calls ([`TextGen::want_tool_calls`]).
    ToolCalls,
}

/// The outcome of [`Session::generate_text`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Generated tokens (without the end token).
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// The calls the answer made (finish reason `ToolCalls`).
    pub tool_calls: Vec<ToolCall>,
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
    /// Prompt tokens taken from the cache rather than prefilled.
    reused: usize,
    /// Where a stop string begins in `text`.
    cut_at: Option<usize>,
    finish: Option<FinishReason>,
    /// Alternatives per token when log-probabilities are asked for.
    logprobs: Option<usize>,
    /// [ids.len()] when `logprobs` is set: each generated token's log-probability.
    token_logprobs: Vec<TokenLogprob>,
    /// How tool calls are written, when the request offered tools: text that may be a call
    /// is held back and parsed at the end.
    tools: Option<ToolCallFormat>,
    tool_calls: Vec<ToolCall>,
    /// The schema or grammar the answer is held to.
    constraint: Option<Constraint>,
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

    /// Records each generated token's log-probability with the `top` most likely tokens (at
    /// most [`MAX_TOP_LOGPROBS`](super::MAX_TOP_LOGPROBS)); passes then read the logits back.
    pub fn want_logprobs(&mut self, top: usize) {
        self.logprobs = Some(top);
        self.on_device = false;
    }

    /// The generated tokens' log-probabilities from the `from`-th token on (empty unless
    /// [`TextGen::want_logprobs`]).
    pub fn logprobs_from(&self, from: usize) -> &[TokenLogprob] {
        self.token_logprobs.get(from..).unwrap_or_default()
    }

    /// Finds tool calls written in `format` in the answer: text that may be a call is not
    /// handed out as it comes; at the end the calls are parsed ([`TextGen::tool_calls`]) and
    /// what is not a call is handed out as text.
    pub fn want_tool_calls(&mut self, format: ToolCallFormat) {
        self.tools = Some(format);
    }

    /// Holds the answer to `constraint` (a JSON schema or grammar): each step's logits are
    /// masked to what keeps it valid; it ends where the grammar is complete. Passes then read
    /// the logits back.
    pub fn constrain(&mut self, constraint: Constraint) {
        self.constraint = Some(constraint);
        self.on_device = false;
    }

    /// The calls the answer made (once it ended).
    pub fn tool_calls(&self) -> &[ToolCall] {
        &self.tool_calls
    }

    /// Prompt tokens taken from the cache rather than prefilled.
    pub fn reused(&self) -> usize {
        self.reused
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
        let mut piece = self.text.get(self.emitted..).unwrap_or_default().to_owned();
        let mut reason = reason;
        if let Some(format) = self.tools {
            let (rest, calls) = parse_tool_calls(format, &piece);
            if !calls.is_empty() {
                self.text.truncate(self.emitted);
                self.text.push_str(&rest);
                (piece, self.tool_calls, reason) = (rest, calls, FinishReason::ToolCalls);
            }
        }
        self.emitted = self.text.len();
        self.finish = Some(reason);
        self.pending.clear();
        piece
    }
}

impl<B: Backend> Session<B> {
    /// Starts a generation for `prompt_ids`: the positions it shares with the cached
    /// conversation are kept ([`Session::reusable_prefix`], unless the options say otherwise),
    /// the rest is forgotten. `forced`: tokens to generate first whatever is sampled (replaying
    /// a generation that was cut off).
    pub fn start_text(&mut self, tokenizer: &Tokenizer, prompt_ids: &[u32], sampler: &Sampler, forced: &[u32]) -> TextGen {
        let keep = if self.options.reuse_prefix { self.reusable_prefix(prompt_ids) } else { 0 };
        self.rewind(keep);
        self.reset_stats();
        self.reused = keep;
        TextGen {
            prompt_ids: prompt_ids.to_vec(),
            history: prompt_ids.to_vec(),
            ids: Vec::new(),
            text: String::new(),
            emitted: 0,
            detok: tokenizer.detokenizer(),
            forced: forced.iter().copied().collect(),
            on_device: forced.is_empty() && sampler.is_plain_greedy() && self.backend.argmax_on_device(),
            pending: prompt_ids[keep..].to_vec(),
            prefill: true,
            reused: keep,
            cut_at: None,
            finish: None,
            logprobs: None,
            token_logprobs: Vec::new(),
            tools: None,
            tool_calls: Vec::new(),
            constraint: None,
            t0: Instant::now(),
        }
    }

    /// Runs `gen`'s next pass and reads it (synchronously: the CPU, or a native GPU).
    pub fn run_pass(&mut self, gen: &TextGen) -> Result<Next, ModelError> {
        let t0 = Instant::now();
        let act = self.pass(&gen.pending, Logits::Last)?;
        let next = if gen.on_device { Next::Id(self.backend.argmax(act)?) } else { Next::Logits(self.backend.read_host(act)?) };
        self.count_pass(&gen.pending, ms_since(t0), gen.prefill);
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
        let (sampled, raw) = match next {
            Next::Id(id) => (id, None),
            Next::Logits(mut logits) => {
                // The sampler edits the logits; log-probabilities are the model's own.
                let raw = gen.logprobs.map(|_| logits.clone());
                if let Some(c) = gen.constraint.as_mut() {
                    c.mask(&mut logits)?;
                }
                (sampler.sample(&mut logits, &gen.history)?, raw)
            }
        };
        let id = gen.forced.pop_front().unwrap_or(sampled);
        if gen.ids.is_empty() {
            self.ttft_ms = ms_since(gen.t0);
        }
        if tokenizer.is_eog(id) || stop.stop_tokens.contains(&id) {
            return Ok(gen.end(FinishReason::Stop));
        }
        if let (Some(top), Some(raw)) = (gen.logprobs, raw) {
            gen.token_logprobs.push(token_logprob(&raw, id, top));
        }
        // A grammar that is complete and allows nothing more ends the answer after this token.
        let complete = match gen.constraint.as_mut() {
            Some(c) => c.accept(id)?,
            None => false,
        };
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
                let safe_len = gen.tools.map_or(safe_len, |f| safe_len.min(f.hold_from(&gen.text, gen.emitted)));
                if safe_len > gen.emitted {
                    out.push_str(&gen.text[gen.emitted..safe_len]);
                    gen.emitted = safe_len;
                }
            }
        }
        if complete {
            out.push_str(&gen.end(FinishReason::Stop));
            return Ok(out);
        }
        // max_tokens, or no position left for the token: the answer is cut ("length").
        if stop.max_tokens.is_some_and(|m| gen.ids.len() >= m) || self.n_past() >= self.options.n_ctx {
            out.push_str(&gen.end(FinishReason::Length));
            return Ok(out);
        }
        gen.pending.push(id);
        Ok(out)
    }

    /// The finished (or abandoned) generation with this session's stats.
    pub fn finish_text(&self, gen: TextGen) -> Generation {
        let finish_reason = gen.finish.unwrap_or(FinishReason::Abort);
        Generation { prompt_ids: gen.prompt_ids, ids: gen.ids, text: gen.text, finish_reason, tool_calls: gen.tool_calls, stats: self.stats() }
    }

    /// Generates text for `prompt_ids` (after the prefix it shares with the cached
    /// conversation, [`Session::start_text`]): samples with `sampler`,
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
        on_text: impl FnMut(&str) -> Flow,
    ) -> Result<Generation, EngineError> {
        let gen = self.start_text(tokenizer, prompt_ids, sampler, &[]);
        self.run_text(gen, tokenizer, sampler, stop, abort, on_text)
    }

    /// [`Session::generate_text`] for a generation already started (and set up: log-probabilities,
    /// tool calls, a constraint).
    pub fn run_text(
        &mut self,
        mut gen: TextGen,
        tokenizer: &Tokenizer,
        sampler: &mut Sampler,
        stop: &StopConditions,
        abort: Option<&AtomicBool>,
        mut on_text: impl FnMut(&str) -> Flow,
    ) -> Result<Generation, EngineError> {
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
