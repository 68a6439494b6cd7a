//! Sampler configuration: [`SamplerConfig`], its defaults, validation and deserialization.

use crate::error::SamplerError;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Sampling parameters. Defaults are llama.cpp's (`common_params_sampling`): temperature 0.8,
/// top-k 40, top-p 0.95, min-p 0.05, no penalties over the last 64 tokens. Field names accept
/// camelCase (JS option objects) and snake_case; `logitBias` is `[[id, bias], …]` or an
/// OpenAI-style `{"id": bias}` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SamplerConfig {
    /// 0 = greedy. Otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; <= 0 disables (as llama.cpp).
    #[serde(alias = "top_k")]
    pub top_k: i32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 disables.
    #[serde(alias = "top_p")]
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the best token's; 0 disables.
    #[serde(alias = "min_p")]
    pub min_p: f32,
    /// llama.cpp's repeat penalty: a repeated token's logit is divided by it when positive,
    /// multiplied when <= 0. 1 disables.
    #[serde(alias = "repetition_penalty", alias = "repeat_penalty", alias = "repeatPenalty")]
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token present in the window.
    #[serde(alias = "presence_penalty")]
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the window.
    #[serde(alias = "frequency_penalty")]
    pub frequency_penalty: f32,
    /// Window of the penalties: the last `penalty_last_n` tokens of the history; -1 = all of
    /// it, 0 = penalties off.
    #[serde(alias = "penalty_last_n", alias = "repeatLastN", alias = "repeat_last_n")]
    pub penalty_last_n: i32,
    /// Added to a token's logit before anything else; `-inf` bans the token.
    #[serde(alias = "logit_bias", deserialize_with = "deserialize_logit_bias")]
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the PRNG (fixed default so runs reproduce; pass a random one for variety).
    pub seed: u64,
    /// Minimum number of tokens top-k/top-p/min-p keep (llama.cpp's `min_keep`; 0 acts as 1).
    #[serde(alias = "min_keep")]
    pub min_keep: usize,
}

/// Default seed: any fixed value; callers that want different text per run pass their own.
pub const DEFAULT_SEED: u64 = 0x5EED;

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: DEFAULT_SEED,
            min_keep: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0), no penalties.
    pub fn greedy() -> Self {
        SamplerConfig { temperature: 0.0, ..Default::default() }
    }

    /// Checks every rule; `n_vocab` bounds the logit-bias token ids.
    pub fn validate(&self, n_vocab: usize) -> Result<(), SamplerError> {
        if n_vocab == 0 {
            return Err(SamplerError::EmptyVocab);
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplerError::Temperature { value: self.temperature });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplerError::TopP { value: self.top_p });
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(SamplerError::MinP { value: self.min_p });
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplerError::RepetitionPenalty { value: self.repetition_penalty });
        }
        if !self.presence_penalty.is_finite() {
            return Err(SamplerError::PresencePenalty { value: self.presence_penalty });
        }
        if !self.frequency_penalty.is_finite() {
            return Err(SamplerError::FrequencyPenalty { value: self.frequency_penalty });
        }
        if self.penalty_last_n < -1 {
            return Err(SamplerError::PenaltyLastN { value: self.penalty_last_n });
        }
        for &(token, bias) in &self.logit_bias {
            if token as usize >= n_vocab {
                return Err(SamplerError::LogitBiasToken { token, n_vocab });
            }
            if bias.is_nan() || bias == f32::INFINITY {
                return Err(SamplerError::LogitBiasValue { token, bias });
            }
        }
        Ok(())
    }

    pub(super) fn penalties_active(&self) -> bool {
        // Same early-out as llama_sampler_penalties_apply.
        self.penalty_last_n != 0 && !(self.repetition_penalty == 1.0 && self.frequency_penalty == 0.0 && self.presence_penalty == 0.0)
    }
}

/// A token id as a map key: a number or a decimal string (JSON object keys are strings).
struct TokenKey(u32);

impl<'de> Deserialize<'de> for TokenKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TokenKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token id (integer or decimal string)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenKey, E> {
                u32::try_from(v).map(TokenKey).map_err(|_| E::custom(format!("token id {v} out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TokenKey, E> {
                u32::try_from(v).map(TokenKey).map_err(|_| E::custom(format!("token id {v} out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TokenKey, E> {
                // JS numbers arrive as f64 through serde-wasm-bindgen.
                if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
                    Ok(TokenKey(v as u32))
                } else {
                    Err(E::custom(format!("token id {v} is not a valid id")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TokenKey, E> {
                v.trim().parse::<u32>().map(TokenKey).map_err(|_| E::custom(format!("token id {v:?} is not a valid id")))
            }
        }
        d.deserialize_any(V)
    }
}

fn deserialize_logit_bias<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u32, f32)>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(u32, f32)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("[[token, bias], …] or {\"token\": bias, …}")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, b)) = seq.next_element::<(TokenKey, f32)>()? {
                out.push((k.0, b));
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, b)) = map.next_entry::<TokenKey, f32>()? {
                out.push((k.0, b));
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V)
}
