//! A text generation driven pass by pass: sampling, detokenizing, stop conditions and
//! streaming of text that is safe to show.

use super::{ms_since, Session, Stats};
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
