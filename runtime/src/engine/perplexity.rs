//! Perplexity over windows of a token sequence, as llama.cpp's perplexity tool computes it.

use super::Session;
use crate::error::ModelError;
use crate::model::Backend;

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
