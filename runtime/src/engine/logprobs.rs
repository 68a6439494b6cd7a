//! Log-probabilities of generated tokens, as OpenAI's `logprobs` / `top_logprobs` report them:
//! the model's own distribution (a log-softmax of the raw logits, before logit bias, penalties
//! and temperature), as llama.cpp's server reports `n_probs` by default.

use serde::Serialize;

/// The most alternatives a request may ask for (OpenAI's bound on `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// (id, logprob), most likely first (ties: lower id first); `top` entries long.
    pub top: Vec<(u32, f32)>,
}

/// `id`'s log-probability under `softmax(logits)` and the `top` most likely tokens (at most
/// [`MAX_TOP_LOGPROBS`]). The log-sum-exp is taken in f64 from the largest logit.
pub fn token_logprob(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    let lp = |x: f32| (x as f64 - lse) as f32;
    let top = top.min(MAX_TOP_LOGPROBS).min(logits.len());
    // Insertion into a short sorted list: `top` ≤ 20, one pass over the vocabulary.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &x) in logits.iter().enumerate() {
            if best.len() == top && best.last().is_some_and(|&(_, b)| x <= b) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= x);
            best.insert(at, (i as u32, x));
            best.truncate(top);
        }
    }
    let logprob = logits.get(id as usize).map_or(f32::NEG_INFINITY, |&x| lp(x));
    TokenLogprob { id, logprob, top: best.into_iter().map(|(i, x)| (i, lp(x))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let r = token_logprob(&logits, 4, 3);
        assert!((r.logprob as f64 - (0.5f64.exp() / z).ln()).abs() < 1e-6);
        // Ties keep the lower id first; the list is sorted by probability.
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 0]);
        assert!((r.top[2].1 as f64 - (1f64.exp() / z).ln()).abs() < 1e-6);
        let p: f64 = logits.iter().enumerate().map(|(i, _)| (token_logprob(&logits, i as u32, 0).logprob as f64).exp()).sum();
        assert!((p - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bounds_top_and_handles_extremes() {
        let logits = vec![0f32; 100];
        assert_eq!(token_logprob(&logits, 0, 50).top.len(), MAX_TOP_LOGPROBS);
        assert_eq!(token_logprob(&logits[..3], 0, 10).top.len(), 3);
        let big = [1e30f32, 0.0];
        let r = token_logprob(&big, 1, 1);
        assert_eq!((r.logprob, r.top[0]), (-1e30, (0, 0.0)));
        assert_eq!(token_logprob(&big, 7, 0).logprob, f32::NEG_INFINITY);
    }
}
