//! Stop conditions: max tokens, end-of-generation tokens and stop strings.

use serde::{Deserialize, Serialize};

/// When generation ends: after `max_tokens`, on an end-of-generation token, or when the
/// text contains a stop string (which is cut off, never emitted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StopConditions {
    #[serde(alias = "max_tokens")]
    pub max_tokens: Option<usize>,
    /// End-of-generation token ids (EOS, EOT, `<end_of_turn>`, …).
    #[serde(alias = "stop_tokens")]
    pub stop_tokens: Vec<u32>,
    #[serde(alias = "stop_strings", alias = "stop")]
    pub stop_strings: Vec<String>,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    StopToken(u32),
    /// Index into `stop_strings`.
    StopString(usize),
}

/// Result of scanning the generated text for stop strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextScan {
    /// A stop string starts at byte `cut`: the final text is `text[..cut]`.
    Stop { cut: usize, stop_index: usize },
    /// No stop string yet. `text[..safe_len]` may be emitted; the rest could be the start of
    /// a stop string and must be held back until more text decides it.
    Continue { safe_len: usize },
}

impl StopConditions {
    /// Checks a freshly sampled token; `n_generated` counts it.
    pub fn check_token(&self, token: u32, n_generated: usize) -> Option<StopReason> {
        if self.stop_tokens.contains(&token) {
            return Some(StopReason::StopToken(token));
        }
        match self.max_tokens {
            Some(m) if n_generated >= m => Some(StopReason::MaxTokens),
            _ => None,
        }
    }

    /// Scans `text` (everything generated so far) for the earliest stop string, looking only
    /// at matches starting at or after byte `from` (what was already emitted: a match cannot
    /// start there, because any possible start was held back). Empty stop strings are ignored.
    pub fn scan_text(&self, text: &str, from: usize) -> TextScan {
        let mut from = from.min(text.len());
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let mut best: Option<(usize, usize)> = None;
        for (idx, s) in self.stop_strings.iter().enumerate() {
            if s.is_empty() {
                continue;
            }
            if let Some(pos) = text[from..].find(s.as_str()) {
                let cut = from + pos;
                if best.is_none_or(|(c, _)| cut < c) {
                    best = Some((cut, idx));
                }
            }
        }
        if let Some((cut, stop_index)) = best {
            return TextScan::Stop { cut, stop_index };
        }
        // Longest suffix of text that is a proper prefix of some stop string.
        let mut hold = 0usize;
        for s in &self.stop_strings {
            let max_l = s.len().saturating_sub(1).min(text.len());
            for l in (hold + 1..=max_l).rev() {
                if s.is_char_boundary(l) && text.as_bytes().ends_with(&s.as_bytes()[..l]) {
                    hold = l;
                    break;
                }
            }
        }
        TextScan::Continue { safe_len: (text.len() - hold).max(from) }
    }
}
