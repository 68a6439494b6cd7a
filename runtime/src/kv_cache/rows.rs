//! How a KV cache row is stored: encoding and decoding in the cache's format, the K offset
//! subtracted from K rows, and the rotation of each group of 32 (why and measured gains: see
//! the `kv_cache` module docs).

use super::KvType;
use crate::quant::{ggml_fp32_to_fp16, quantize_row_q4_0_ref, quantize_row_q8_0_ref, BlockQ4_0, BlockQ8_0};
use bytemuck::Zeroable;

/// Encodes `src` (whole rows) into `dst` bytes in the format of `ty`.
pub(super) fn encode(ty: KvType, src: &[f32], dst: &mut [u8], tmp8: &mut Vec<BlockQ8_0>, tmp4: &mut Vec<BlockQ4_0>) {
    match ty {
        KvType::F32 => {
            for (d, &s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        KvType::F16 => {
            for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&ggml_fp32_to_fp16(s).to_bits().to_le_bytes());
            }
        }
        KvType::Q8 => {
            tmp8.clear();
            tmp8.resize(src.len() / 32, BlockQ8_0::zeroed());
            quantize_row_q8_0_ref(src, tmp8);
            dst.copy_from_slice(bytemuck::cast_slice(tmp8));
        }
        KvType::Q4 => {
            tmp4.clear();
            tmp4.resize(src.len() / 32, BlockQ4_0::zeroed());
            quantize_row_q4_0_ref(src, tmp4);
            dst.copy_from_slice(bytemuck::cast_slice(tmp4));
        }
    }
}

/// Decodes one row (`out.len()` values) from its bytes, rotated back when `ty` rotates.
pub(super) fn decode(ty: KvType, src: &[u8], out: &mut [f32]) {
    // The row length matches by construction; dequantize_row only fails on length mismatch.
    if crate::quant::dequantize_row(ty.ggml_type(), src, out).is_err() {
        out.fill(f32::NAN);
    }
    if ty.rotates() {
        rotate_groups(out);
    }
}

/// The K offset of a sequence, from the K rows of the batch that starts it (`k`:
/// `[n][width]`): per channel the mean over the batch's tokens after the first, in f32 summed
/// in token order then times `1/(n−1)` (zero for a one-token batch), the same operations as
/// the GPU's `kv_offset` so both caches store the same bytes.
///
/// Why: a cache that [offsets K](KvType::offsets_k) stores `k − m` instead of `k`. Every score
/// of a query then moves by the same `q·m`, which the softmax does not see, so attention is
/// unchanged; but K rows share a large component across tokens (a per-channel mean — bias-like
/// directions, strongest after Gemma-3's K norm), and without it each Q4 group's scale covers
/// only what varies from token to token. The first token (a BOS / attention-sink position
/// whose K is unlike the rest) is left out of the mean. Measured (docs/kv-cache-llama-cpp.md):
/// Q4 top-1 agreement with the f32 cache on the oracle sequences rises from 84.9 to 87.5 %
/// (SmolLM2) and from 85.3 to 92.4 % (Gemma-3); over 4096 positions of GPL-3 the KL divergence
/// from the f32 cache falls by a third (SmolLM2) and by nearly half (Gemma-3).
pub fn k_offset(k: &[f32], width: usize, out: &mut [f32]) {
    let n = k.len() / width;
    let inv = if n > 1 { 1.0 / (n - 1) as f32 } else { 0.0 };
    for (c, o) in out.iter_mut().enumerate().take(width) {
        let mut sum = 0.0f32;
        for t in 1..n {
            sum += k[t * width + c];
        }
        *o = sum * inv;
    }
}

/// `src` (whole rows) in the form a cache of type `ty` stores it, and attention must meet it:
/// less `offset` (the [K offset](k_offset) for K rows; empty for none) and rotated when `ty`
/// rotates, into `buf`; `src` itself when neither applies.
pub(crate) fn stored_form<'a>(ty: KvType, src: &'a [f32], offset: &[f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    if !ty.rotates() && offset.is_empty() {
        return src;
    }
    buf.clear();
    if offset.is_empty() {
        buf.extend_from_slice(src);
    } else {
        buf.extend(src.iter().zip(offset).map(|(x, m)| x - m));
    }
    if ty.rotates() {
        rotate_groups(buf);
    }
    buf
}

/// The orthonormal Walsh–Hadamard transform `H₃₂/√32` of every group of 32 values of `x`
/// (`x.len()` a multiple of 32), in place. `H` is symmetric and orthonormal, so it is its own
/// inverse and `(Hq)·(Hk) = q·k`, `Σ pᵢ·Hvᵢ = H·Σ pᵢ·vᵢ`: a cache that stores `Hk`, `Hv`
/// gives the same attention when the query is rotated and the output rotated back. Why: when
/// a few values of a Q4 group are far larger than the rest, they set the scale and the other
/// values round to a handful of levels; the rotation spreads each group's energy over all 32
/// values before quantizing (QuaRot, arXiv:2404.00456, does this per head against outlier
/// channels). Measured gain: see the module docs.
pub fn rotate_groups(x: &mut [f32]) {
    const NORM: f32 = 0.176_776_69; // 1/√32
    for g in x.chunks_exact_mut(32) {
        let mut h = 1;
        while h < 32 {
            for i in (0..32).step_by(2 * h) {
                for j in i..i + h {
                    let (a, b) = (g[j], g[j + h]);
                    g[j] = a + b;
                    g[j + h] = a - b;
                }
            }
            h *= 2;
        }
        for v in g.iter_mut() {
            *v *= NORM;
        }
    }
}
