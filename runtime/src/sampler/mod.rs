//! Token sampling: llama.cpp's default sampler chain, deterministic on every platform.
//!
//! [`Sampler::sample`] applies, in llama.cpp's order (`common/sampling.cpp` builds the chain;
//! each step mirrors a sampler of `src/llama-sampling.cpp`):
//!
//! 1. logit bias            — `llama_sampler_logit_bias_apply`
//! 2. penalties             — `llama_sampler_penalties_apply` (repetition, frequency, presence)
//! 3. top-k                 — `llama_sampler_top_k_impl`
//! 4. top-p                 — `llama_sampler_top_p_apply`
//! 5. min-p                 — `llama_sampler_min_p_apply`
//! 6. temperature           — `llama_sampler_temp_impl`
//! 7. softmax + draw        — `llama_sampler_dist_apply`
//!
//! Temperature 0 is greedy: the argmax after steps 1–2 (what llama.cpp's chain yields, since
//! top-k/top-p/min-p always keep the best token and `temp <= 0` keeps only it), ties going to
//! the lowest token id. That path is one O(n_vocab) pass with no allocation.
//!
//! ## Same seed, same tokens, on every platform
//! Native and wasm32 must draw the same tokens from the same seed and logits, so nothing here
//! calls a libm transcendental (`exp`, `ln` differ in the last ulp between platform libms):
//! - the PRNG is xoshiro256** (Blackman & Vigna, 2018) seeded through SplitMix64, integer
//!   operations only; a uniform draw takes the top 53 bits as an f64 in [0, 1);
//! - probabilities use [`det_exp`], an exp built only from IEEE-754 basic operations (+ − × and
//!   floor, which are correctly rounded everywhere and never contracted into FMAs by Rust);
//! - sums run in a fixed order, in f64; candidate order is total (logit descending, then id
//!   ascending), so selection and sorting give the same result whatever the algorithm.

mod chain;
mod config;
mod rng;
mod stop;
#[cfg(test)]
mod tests;

pub use chain::{apply_logit_bias, apply_penalties, argmax, draw, min_p, top_k, top_p, Candidate};
pub use config::{SamplerConfig, DEFAULT_SEED};
pub use rng::{det_exp, splitmix64, Xoshiro256StarStar};
pub use stop::{StopConditions, StopReason, TextScan};

use crate::error::SamplerError;

/// A configured sampler with its PRNG and reusable buffers.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    n_vocab: usize,
    rng: Xoshiro256StarStar,
    candidates: Vec<Candidate>,
    scratch: Vec<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig, n_vocab: usize) -> Result<Sampler, SamplerError> {
        config.validate(n_vocab)?;
        let rng = Xoshiro256StarStar::seed_from_u64(config.seed);
        Ok(Sampler { config, n_vocab, rng, candidates: Vec::new(), scratch: Vec::new() })
    }

    /// Greedy with nothing that changes logits first (no bias, no penalties): the next token is
    /// the plain argmax, which a GPU computes on the device.
    pub fn is_plain_greedy(&self) -> bool {
        let c = &self.config;
        c.temperature == 0.0 && c.logit_bias.is_empty() && !c.penalties_active()
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Restarts the PRNG stream from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.config.seed = seed;
        self.rng = Xoshiro256StarStar::seed_from_u64(seed);
    }

    /// Picks the next token. `logits` (one per vocabulary entry) are modified in place: logit
    /// bias and penalties are applied to them. `history` holds the tokens the penalties look
    /// at (the prompt and/or the generated tokens, as the caller chooses; its last
    /// `penalty_last_n` are used). The PRNG advances once per non-greedy call.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SamplerError> {
        if logits.len() != self.n_vocab {
            return Err(SamplerError::LogitsLength { expected: self.n_vocab, got: logits.len() });
        }
        let cfg = &self.config;
        apply_logit_bias(logits, &cfg.logit_bias);
        if cfg.penalties_active() {
            apply_penalties(logits, history, cfg.penalty_last_n, cfg.repetition_penalty, cfg.frequency_penalty, cfg.presence_penalty, &mut self.scratch);
        }
        if cfg.temperature == 0.0 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.reserve(logits.len());
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() {
                return Err(SamplerError::NanLogit { token: i as u32 });
            }
            if l > f32::NEG_INFINITY {
                c.push(Candidate { id: i as u32, logit: l });
            }
        }
        if c.is_empty() {
            return Err(SamplerError::NoCandidates);
        }
        let min_keep = cfg.min_keep.max(1);
        let mut sorted = false;
        sorted = top_k(c, cfg.top_k, min_keep, sorted);
        sorted = top_p(c, cfg.top_p, min_keep, sorted);
        let _ = min_p(c, cfg.min_p, min_keep, sorted);
        draw(c, cfg.temperature, &mut self.rng)
    }
}
