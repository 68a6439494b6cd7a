//! [`Kernels::Float`](super::Kernels::Float): weight rows dequantized to f32 and multiplied
//! with the f32 activations as they are — no Q8_0 / Q8_K rounding of the activations.
//!
//! Not a fast path (each row is dequantized again on every call) and not llama.cpp's
//! arithmetic: a reference for measurements. ggml's quantized products round every
//! activation to 8 bits, and a rounding step turns a perturbation far below its step into an
//! occasional whole step: two f32 runs that differ only in float rounding order already
//! disagree on ~4 % of greedy tokens (docs/kv-cache-llama-cpp.md). Without that rounding, what
//! a change such as a quantized KV cache does to the logits is measured on its own.
//!
//! The sum order is fixed (16 partial sums, a fixed tree, then the tail), with no fused
//! multiply-add: the same bits on every platform and for any thread split.

use super::QMatrix;
use crate::error::QuantError;
use crate::quant::dequantize_row;

/// Partial sums per dot product (independent lanes the compiler may vectorize; the order of
/// every addition stays the written one).
const LANES: usize = 16;

/// `a · b` in the fixed order: lane `k` sums `a[i]·b[i]` for `i ≡ k (mod 16)` below the last
/// whole chunk, the lanes are added pairwise (8 + 8, 4 + 4, 2 + 2, 1 + 1), then the tail in
/// order.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for k in 0..width {
            acc[k] += acc[k + width];
        }
        width /= 2;
    }
    let mut sum = acc[0];
    for (x, y) in ta.iter().zip(tb) {
        sum += x * y;
    }
    sum
}

/// Rows `r0..r1` of `w` against every token of `x` (`[n_tokens][w.cols]`), each result handed
/// to `put(t, r, value)`. One dequantized row at a time (`w.cols` f32 values).
pub(super) fn rows(w: &QMatrix, x: &[f32], n_tokens: usize, r0: usize, r1: usize, mut put: impl FnMut(usize, usize, f32)) -> Result<(), QuantError> {
    // one dequantized weight row: [w.cols]
    let mut row = vec![0.0f32; w.cols];
    for r in r0..r1 {
        dequantize_row(w.ty, w.row(r), &mut row)?;
        for t in 0..n_tokens {
            put(t, r, dot(&row, &x[t * w.cols..(t + 1) * w.cols]));
        }
    }
    Ok(())
}
