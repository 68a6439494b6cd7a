//! The sampling chain, one function per llama.cpp sampler (logit bias, penalties, top-k/p, min-p, temperature + draw).

use super::rng::{det_exp, Xoshiro256StarStar};
use crate::error::SamplerError;
use std::cmp::Ordering;

/// A candidate token (llama_token_data without `p`: probabilities are computed where needed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// Total order: higher logit first, then lower id (no NaN reaches the candidates).
pub(super) fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Ensures `c[..want]` holds the `want` best candidates in order, given that `c[..sorted]`
/// already does (partial selection on the rest, then a sort of only the new part).
fn extend_sorted_prefix(c: &mut [Candidate], sorted: usize, want: usize) -> usize {
    let want = want.min(c.len());
    if want <= sorted {
        return sorted;
    }
    let rest = &mut c[sorted..];
    let m = want - sorted;
    if m < rest.len() {
        rest.select_nth_unstable_by(m - 1, by_logit_desc);
    }
    rest[..m].sort_unstable_by(by_logit_desc);
    want
}

/// `llama_sampler_logit_bias_apply`: adds each bias to its token's logit.
pub fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(t, b) in bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
}

/// `llama_sampler_penalties_apply` over the last `last_n` tokens of `history` (-1: all):
/// a repeated token's logit is divided by `repeat` if positive, multiplied if <= 0, then
/// `count·freq + present` is subtracted. `scratch` is reused between calls.
pub fn apply_penalties(logits: &mut [f32], history: &[u32], last_n: i32, repeat: f32, freq: f32, present: f32, scratch: &mut Vec<u32>) {
    if last_n == 0 || (repeat == 1.0 && freq == 0.0 && present == 0.0) {
        return;
    }
    let window = if last_n < 0 { history } else { &history[history.len().saturating_sub(last_n as usize)..] };
    scratch.clear();
    scratch.extend_from_slice(window);
    scratch.sort_unstable();
    let mut i = 0;
    while i < scratch.len() {
        let tok = scratch[i];
        let mut j = i + 1;
        while j < scratch.len() && scratch[j] == tok {
            j += 1;
        }
        let count = (j - i) as f32;
        if let Some(l) = logits.get_mut(tok as usize) {
            if *l <= 0.0 {
                *l *= repeat;
            } else {
                *l /= repeat;
            }
            *l -= count * freq + present;
        }
        i = j;
    }
}

/// Greedy argmax: first maximum (lowest id on ties); NaN is an error.
pub fn argmax(logits: &[f32]) -> Result<u32, SamplerError> {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    let mut any = false;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            return Err(SamplerError::NanLogit { token: i as u32 });
        }
        if v > best_v {
            best = i;
            best_v = v;
            any = true;
        }
    }
    if !any {
        return Err(SamplerError::NoCandidates);
    }
    Ok(best as u32)
}

/// `llama_sampler_top_k_impl`: keeps the `k` best (at least `min_keep`), sorted. `k <= 0`
/// disables. Returns whether the candidates are now sorted.
pub fn top_k(c: &mut Vec<Candidate>, k: i32, min_keep: usize, sorted: bool) -> bool {
    if k <= 0 {
        return sorted;
    }
    let k = (k as usize).max(min_keep).min(c.len());
    if !sorted {
        extend_sorted_prefix(c, 0, k);
    }
    c.truncate(k);
    true
}

/// `llama_sampler_top_p_apply`: keeps the shortest best-first prefix whose probability
/// (softmax of the current logits) reaches `p`, and at least `min_keep`. Like llama.cpp's
/// adaptive partial sort, only as much of the list is sorted as the cut needs. Returns
/// whether the candidates are sorted (always, once the filter ran).
pub fn top_p(c: &mut Vec<Candidate>, p: f32, min_keep: usize, sorted: bool) -> bool {
    if p >= 1.0 || c.is_empty() {
        return sorted;
    }
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.logit)) as f64;
    let sum: f64 = c.iter().map(|x| det_exp(x.logit as f64 - max)).sum();
    let p = p as f64;
    let mut sorted_len = if sorted { c.len() } else { 0 };
    let mut cum = 0.0f64;
    let mut keep = c.len();
    for i in 0..c.len() {
        if i == sorted_len {
            sorted_len = extend_sorted_prefix(c, sorted_len, (sorted_len * 4).max(256));
        }
        cum += det_exp(c[i].logit as f64 - max) / sum;
        if cum >= p && i + 1 >= min_keep {
            keep = i + 1;
            break;
        }
    }
    if keep == c.len() {
        let n = c.len();
        extend_sorted_prefix(c, sorted_len, n);
    }
    c.truncate(keep);
    true
}

/// `llama_sampler_min_p_apply`: keeps tokens with probability >= `p` × the best one's, i.e.
/// logit >= max + ln p (compared as exp(logit − max) >= p, deterministic), at least
/// `min_keep`. Order is preserved.
pub fn min_p(c: &mut Vec<Candidate>, p: f32, min_keep: usize, sorted: bool) -> bool {
    if p <= 0.0 || c.is_empty() {
        return sorted;
    }
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.logit)) as f64;
    let p = p as f64;
    let kept = c.iter().filter(|x| det_exp(x.logit as f64 - max) >= p).count();
    if kept >= min_keep.max(1) {
        c.retain(|x| det_exp(x.logit as f64 - max) >= p);
        sorted
    } else {
        let n = min_keep.min(c.len());
        let already = if sorted { c.len() } else { 0 };
        extend_sorted_prefix(c, already, n);
        c.truncate(n);
        true
    }
}

/// `llama_sampler_temp_impl` + `llama_sampler_dist_apply`: weights exp((logit − max)/temp)
/// summed in f64, then the first candidate whose running sum exceeds u·total, u uniform in
/// [0, 1). With +inf logits, the first +inf candidate wins.
pub fn draw(c: &[Candidate], temperature: f32, rng: &mut Xoshiro256StarStar) -> Result<u32, SamplerError> {
    let first = c.first().ok_or(SamplerError::NoCandidates)?;
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.logit));
    if max == f32::INFINITY {
        return Ok(c.iter().find(|x| x.logit == f32::INFINITY).map_or(first.id, |x| x.id));
    }
    let (max, t) = (max as f64, temperature as f64);
    let total: f64 = c.iter().map(|x| det_exp((x.logit as f64 - max) / t)).sum();
    let u = rng.next_f64() * total;
    let mut cum = 0.0f64;
    let mut last_positive = first.id;
    for x in c {
        let w = det_exp((x.logit as f64 - max) / t);
        if w > 0.0 {
            last_positive = x.id;
        }
        cum += w;
        if u < cum {
            return Ok(x.id);
        }
    }
    // Only reachable through rounding at the very end of the sum.
    Ok(last_positive)
}
