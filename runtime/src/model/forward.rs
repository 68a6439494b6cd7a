//! The one forward pass, for every architecture and backend. Architecture differences are the
//! config flags (qk_norm, post_norms, embed_scale, activation, sliding window, biases present).
//! Mirrors llama.cpp's graphs in src/models/{llama,qwen2,qwen3,gemma3}.cpp.

use super::backend::Backend;
use super::Model;
use crate::error::ModelError;

/// Which logits a pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's row: `[1, n_vocab]` (generation).
    Last,
    /// Every position's row: `[n_tokens, n_vocab]` (teacher forcing, perplexity).
    All,
}

impl<B: Backend> Model<B> {
    /// Runs tokens `ids` at positions `pos0…` through the model, appending their K/V to
    /// `cache`, and returns logits on the device.
    pub fn forward(&self, b: &mut B, cache: &mut B::Cache, ids: &[u32], pos0: usize, which: Logits) -> Result<B::Act, ModelError> {
        let c = &self.config;
        let w = &self.weights;
        for &id in ids {
            if id as usize >= c.n_vocab {
                return Err(ModelError::TokenOutOfRange { id, n_vocab: c.n_vocab });
            }
        }
        let mut x = b.embed(&w.token_embd, ids, c.embed_scale)?;
        for (il, l) in w.layers.iter().enumerate() {
            // attention block
            let h = b.rms_norm(&x, &l.attn_norm, c.rms_eps)?;
            let [mut q, mut k, mut v] = b.matmuls([&l.wq, &l.wk, &l.wv], &h)?;
            if let Some(bias) = &l.bq {
                b.add_bias(&mut q, bias)?;
            }
            if let Some(bias) = &l.bk {
                b.add_bias(&mut k, bias)?;
            }
            if let Some(bias) = &l.bv {
                b.add_bias(&mut v, bias)?;
            }
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                q = b.rms_norm(&q, qn, c.rms_eps)?;
                k = b.rms_norm(&k, kn, c.rms_eps)?;
            }
            let rope = c.rope_for_layer(il);
            let factors = if c.layer_is_swa[il] { None } else { w.rope_freqs.as_ref() };
            b.rope_qk(&mut q, &mut k, c.head_dim_k, pos0, rope, factors)?;
            let att = b.attention(cache, c, il, &q, &k, &v, pos0)?;
            if l.bo.is_none() && l.post_attn_norm.is_none() {
                b.matmul_add(&l.wo, &att, &mut x)?;
            } else {
                let mut o = b.matmul(&l.wo, &att)?;
                if let Some(bias) = &l.bo {
                    b.add_bias(&mut o, bias)?;
                }
                if let Some(n) = &l.post_attn_norm {
                    o = b.rms_norm(&o, n, c.rms_eps)?;
                }
                b.add(&mut x, &o)?;
            }

            // feed-forward block
            let h = b.rms_norm(&x, &l.ffn_norm, c.rms_eps)?;
            let act = b.gate_up_glu(&l.ffn_gate, &l.ffn_up, &h, c.activation)?;
            if let Some(n) = &l.post_ffn_norm {
                let f = b.matmul(&l.ffn_down, &act)?;
                let f = b.rms_norm(&f, n, c.rms_eps)?;
                b.add(&mut x, &f)?;
            } else {
                b.matmul_add(&l.ffn_down, &act, &mut x)?;
            }
        }
        if which == Logits::Last && ids.len() > 1 {
            x = b.last_rows(&x, 1)?;
        }
        let x = b.rms_norm(&x, &w.output_norm, c.rms_eps)?;
        let mut logits = b.matmul(w.output.as_ref().unwrap_or(&w.token_embd), &x)?;
        if c.final_logit_softcap > 0.0 {
            b.softcap(&mut logits, c.final_logit_softcap)?;
        }
        Ok(logits)
    }
}
