//! Activation quantization: the "other operand" of every quantized dot product.
//!
//! As ggml's CPU `ggml_compute_forward_mul_mat` does (`from_float` of the weight type's
//! `vec_dot_type`), each activation row is quantized to Q8_0 (Q4_0/Q5_0/Q8_0 weights), Q8_1
//! (Q4_1/Q5_1) or Q8_K (K-quants) with the `quant::` reference quantizers
//! (`quantize_row_q8_0_ref`, `quantize_row_q8_1_ref`, `quantize_row_q8_K_ref`), or rounded to
//! F16 / BF16 per element (`ggml_fp32_to_fp16_row`, `ggml_fp32_to_bf16_row`).
//!
//! The blocks are then split into plain arrays the kernels read without parsing (quants,
//! f32 scales, Q8_1's `s` as f32, Q8_K's `bsums`, per-block quant sums) and, for the SIMD
//! kernels, widened to i16 in the element order the weight kernel unpacks its nibbles in
//! (see `simd.rs`). The conversions are exact, so the dot products see exactly the values
//! of the reference blocks.
//!
//! ggml differences worth knowing: ggml's x86 AVX `quantize_row_q8_0/q8_1` compute `127/max`
//! and round ties to even (`_mm256_round_ps`) where the reference multiplies by `1/(max/127)`
//! and rounds half away from zero, and ggml's own wasm `quantize_row_q8_0/q8_1` truncate
//! toward zero; both change a quant by one in rare (resp. frequent) cases. The `Simd` and
//! `Scalar` families use the reference (so native SSE2 and wasm agree); `Avx2` uses the x86
//! form, and for the repacked Q4_K gemm's tokens the sign rule of x86
//! `ggml_quantize_mat_q8_K_4x8`, as llama.cpp's x86 build does.

use crate::error::QuantError;
use crate::quant::{
    ggml_bf16_to_fp32, ggml_fp16_to_fp32, ggml_fp32_to_bf16, ggml_fp32_to_fp16, quantize_row_q8_0_ref, quantize_row_q8_1_ref, quantize_row_q8_k_ref, BlockQ8K,
    BlockQ8_0, BlockQ8_1, GgmlType,
};
use bytemuck::Zeroable;

use super::Kernels;

/// How the SIMD kernels want the i16 copy of the quants ordered (per block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
pub(crate) enum Layout {
    /// No i16 copy.
    None,
    /// Element order.
    Natural,
    /// Per 32: elements [0,1,16,17][v] + 2k for v in 0..4, k in 0..8 (the i16 lanes of a
    /// 16-byte nibble vector: low/high nibble of the low/high byte).
    Legacy,
    /// Per 64: [0,1,16,17,32,33,48,49][v] + 2k (Q4_K / Q5_K: 32 nibble bytes per 64).
    K4,
    /// Per 128: 16h + [0,1,32,33,64,65,96,97][v] + 2k for h in 0..2 (Q6_K).
    K6,
}

impl Layout {
    /// Source element (within a chunk) of i16 slot `p`, and the chunk length.
    #[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
    fn chunk(self) -> usize {
        match self {
            Layout::None | Layout::Natural => 1,
            Layout::Legacy => 32,
            Layout::K4 => 64,
            Layout::K6 => 128,
        }
    }

    fn src(self, p: usize) -> usize {
        const L: [usize; 4] = [0, 1, 16, 17];
        const K4: [usize; 8] = [0, 1, 16, 17, 32, 33, 48, 49];
        const K6: [usize; 8] = [0, 1, 32, 33, 64, 65, 96, 97];
        match self {
            Layout::None | Layout::Natural => p,
            Layout::Legacy => L[p / 8] + 2 * (p % 8),
            Layout::K4 => K4[p / 8] + 2 * (p % 8),
            Layout::K6 => 16 * (p / 64) + K6[(p % 64) / 8] + 2 * (p % 8),
        }
    }
}

/// Quantized activations of `n_tokens` rows of `cols` values.
#[derive(Default)]
pub(crate) struct QuantizedActs {
    cols: usize,
    n_tokens: usize,
    /// Quant blocks per token (32 or 256 values each).
    nb: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    ysum: Vec<f32>,
    bsums: Vec<i16>,
    bsums32: Vec<i16>,
    q16: Vec<i16>,
    f: Vec<f32>,
    b8_0: Vec<BlockQ8_0>,
    b8_1: Vec<BlockQ8_1>,
    b8_k: Vec<BlockQ8K>,
}

/// One token's activations as the kernels read them. Unused parts are empty.
pub(crate) struct ActRow<'a> {
    /// Quants (Q8_0 / Q8_1 / Q8_K), element order.
    pub qs: &'a [i8],
    /// Per-block scale as f32 (exactly the f16 `d` of Q8_0/Q8_1; Q8_K's f32 `d`).
    pub d: &'a [f32],
    /// Q8_1: per-block `s` (f16 d·Σq) as f32.
    #[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
    pub s: &'a [f32],
    /// Q8_0 / Q8_1: per-block Σq as f32 (exact; for kernels that fold the weight offset out of the loop).
    #[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
    pub ysum: &'a [f32],
    /// Q8_K: sums of each 16 quants.
    pub bsums: &'a [i16],
    /// Q8_K: sums of each 32 quants (|Σ| ≤ 32·127 fits i16), for the SIMD min corrections.
    #[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
    pub bsums32: &'a [i16],
    /// SIMD only: quants widened to i16, in the weight kernel's [`Layout`].
    #[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
    pub q16: &'a [i16],
    /// F32 / F16 / BF16 activations (after the type's rounding), as f32.
    pub f: &'a [f32],
}

fn fill<T: Copy>(v: &mut Vec<T>, n: usize, z: T) {
    v.clear();
    v.resize(n, z);
}

/// What the kernels of a product need of its quantized activations beyond the values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActForm {
    /// The i16 copy they read ([`layout_for`] for [`dot_fn`](super::dot_fn)'s kernel).
    pub layout: Layout,
    /// The first tokens of a Q8_K quantization made as ggml's x86
    /// `ggml_quantize_mat_q8_K_4x8` makes them (see [`quantize_q8_k_4x8_sign`]; 0 for none).
    pub q8k_4x8_tokens: usize,
}

impl ActForm {
    /// The form [`dot_fn`](super::dot_fn)'s kernel for weights `wty` reads.
    pub fn of(wty: GgmlType, kernels: Kernels) -> ActForm {
        ActForm { layout: layout_for(wty, kernels), q8k_4x8_tokens: 0 }
    }
}

impl QuantizedActs {
    /// Quantizes `x` (`n_tokens` rows of `cols`) for a dot product with weights of type `wty`,
    /// in the form the kernels read (`form`).
    pub fn quantize(&mut self, wty: GgmlType, kernels: Kernels, form: ActForm, x: &[f32], cols: usize, n_tokens: usize) -> Result<(), QuantError> {
        let ActForm { layout, q8k_4x8_tokens } = form;
        let vt = wty.vec_dot_type();
        let bs = vt.block_size();
        if cols % bs != 0 {
            return Err(QuantError::NotBlockMultiple { ty: vt, n: cols, block: bs });
        }
        let n = cols * n_tokens;
        debug_assert_eq!(x.len(), n);
        self.cols = cols;
        self.n_tokens = n_tokens;
        self.nb = cols / bs;
        let nbt = n / bs;
        self.qs.clear();
        self.d.clear();
        self.s.clear();
        self.ysum.clear();
        self.bsums.clear();
        self.bsums32.clear();
        self.q16.clear();
        self.f.clear();
        match vt {
            GgmlType::F32 => self.f.extend_from_slice(x),
            GgmlType::F16 => self.f.extend(x.iter().map(|&v| ggml_fp16_to_fp32(ggml_fp32_to_fp16(v)))),
            GgmlType::BF16 => self.f.extend(x.iter().map(|&v| ggml_bf16_to_fp32(ggml_fp32_to_bf16(v)))),
            GgmlType::Q8_0 => {
                fill(&mut self.b8_0, nbt, BlockQ8_0::zeroed());
                if kernels == Kernels::Avx2 {
                    let mut blocks = self.b8_0.iter_mut();
                    quantize_blocks_x86(x, |d, qs, _| {
                        if let Some(b) = blocks.next() {
                            *b = BlockQ8_0 { d: ggml_fp32_to_fp16(d), qs };
                        }
                    });
                } else {
                    quantize_row_q8_0_ref(x, &mut self.b8_0);
                }
                for b in &self.b8_0 {
                    self.qs.extend_from_slice(&b.qs);
                    self.d.push(ggml_fp16_to_fp32(b.d));
                    self.ysum.push(b.qs.iter().map(|&q| i32::from(q)).sum::<i32>() as f32);
                }
            }
            GgmlType::Q8_1 => {
                fill(&mut self.b8_1, nbt, BlockQ8_1::zeroed());
                if kernels == Kernels::Avx2 {
                    let mut blocks = self.b8_1.iter_mut();
                    quantize_blocks_x86(x, |d, qs, sum| {
                        if let Some(b) = blocks.next() {
                            let s = ggml_fp32_to_fp16(d * sum as f32);
                            *b = BlockQ8_1 { d: ggml_fp32_to_fp16(d), s, qs };
                        }
                    });
                } else {
                    quantize_row_q8_1_ref(x, &mut self.b8_1);
                }
                for b in &self.b8_1 {
                    self.qs.extend_from_slice(&b.qs);
                    self.d.push(ggml_fp16_to_fp32(b.d));
                    self.s.push(ggml_fp16_to_fp32(b.s));
                    self.ysum.push(b.qs.iter().map(|&q| i32::from(q)).sum::<i32>() as f32);
                }
            }
            GgmlType::Q8_K => {
                fill(&mut self.b8_k, nbt, BlockQ8K::zeroed());
                quantize_row_q8_k_ref(x, &mut self.b8_k);
                if q8k_4x8_tokens > 0 {
                    let per = cols / bs;
                    let gemm = q8k_4x8_tokens.min(n_tokens) * per;
                    for (xb, b) in x.chunks_exact(bs).zip(self.b8_k.iter_mut()).take(gemm) {
                        quantize_q8_k_4x8_sign(xb, b);
                    }
                }
                for b in &self.b8_k {
                    self.qs.extend_from_slice(&b.qs);
                    self.d.push(b.d);
                    self.bsums.extend_from_slice(&b.bsums);
                    self.bsums32.extend(b.bsums.chunks_exact(2).map(|p| p[0] + p[1]));
                }
            }
            _ => return Err(QuantError::Unsupported { ty: wty, op: "matmul" }),
        }
        if layout != Layout::None {
            let chunk = layout.chunk();
            self.q16.resize(self.qs.len(), 0);
            for (dst, src) in self.q16.chunks_exact_mut(chunk).zip(self.qs.chunks_exact(chunk)) {
                for (p, o) in dst.iter_mut().enumerate() {
                    *o = i16::from(src[layout.src(p)]);
                }
            }
        }
        Ok(())
    }

    /// The activations of token `t`.
    pub fn row(&self, t: usize) -> ActRow<'_> {
        fn part<T>(v: &[T], t: usize, per: usize) -> &[T] {
            if v.is_empty() {
                v
            } else {
                &v[t * per..(t + 1) * per]
            }
        }
        let _ = self.n_tokens;
        ActRow {
            qs: part(&self.qs, t, self.cols),
            d: part(&self.d, t, self.nb),
            s: part(&self.s, t, self.nb),
            ysum: part(&self.ysum, t, self.nb),
            bsums: part(&self.bsums, t, self.cols / 16),
            bsums32: part(&self.bsums32, t, self.cols / 32),
            q16: part(&self.q16, t, self.cols),
            f: part(&self.f, t, self.cols),
        }
    }
}

/// The i16 copy [`dot_fn`](super::dot_fn)'s kernel for weights `wty` reads.
fn layout_for(wty: GgmlType, kernels: Kernels) -> Layout {
    match kernels {
        Kernels::Scalar => Layout::None,
        #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
        Kernels::Simd => super::simd::layout_for(wty),
        #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
        Kernels::Simd => {
            let _ = wty;
            Layout::None
        }
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2 if super::avx2::dot_fn(wty).is_some() => Layout::None,
        Kernels::Avx2 => layout_for(wty, Kernels::Simd),
        Kernels::Float => layout_for(wty, kernels.quantized()),
    }
}

/// One activation row of `x` quantized to `vt` as family `kernels` quantizes it, as packed
/// blocks (tests compare the kernels with `quant::vec_dot` on exactly these values).
#[cfg(test)]
pub(crate) fn quantize_row_bytes(kernels: Kernels, vt: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; vt.row_bytes(x.len() as u64).unwrap_or(0) as usize];
    match vt {
        GgmlType::Q8_0 if kernels == Kernels::Avx2 => {
            let mut blocks = Vec::new();
            quantize_blocks_x86(x, |d, qs, _| blocks.push(BlockQ8_0 { d: ggml_fp32_to_fp16(d), qs }));
            out.copy_from_slice(bytemuck::cast_slice(&blocks));
        }
        GgmlType::Q8_1 if kernels == Kernels::Avx2 => {
            let mut blocks = Vec::new();
            quantize_blocks_x86(x, |d, qs, sum| blocks.push(BlockQ8_1 { d: ggml_fp32_to_fp16(d), s: ggml_fp32_to_fp16(d * sum as f32), qs }));
            out.copy_from_slice(bytemuck::cast_slice(&blocks));
        }
        _ => {
            if crate::quant::quantize_row(vt, x, &mut out).is_err() {
                out.clear();
            }
        }
    }
    out
}

/// ggml's x86 `ggml_quantize_mat_q8_K_4x8` differs from `quantize_row_q8_K_ref` in one case:
/// when both +max|x| and −max|x| occur in a block, it takes the positive one as the block's
/// signed maximum (the reference takes the first). Requantizes `b` (already the reference
/// result) in that case; the rounding is the same (ties to even).
fn quantize_q8_k_4x8_sign(x: &[f32], b: &mut BlockQ8K) {
    let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    if amax == 0.0 || !x.contains(&amax) || !x.contains(&-amax) {
        return;
    }
    let iscale = -127.0 / amax;
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).clamp(-128, 127) as i8;
    }
    for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| i16::from(v)).sum();
    }
    b.d = 1.0 / iscale;
}

/// Per 32-value block of `x`: ggml's x86 AVX `quantize_row_q8_0` / `quantize_row_q8_1`
/// (ggml-cpu/arch/x86/quants.c): `d = max|x|/127`, `q = round_ties_even(x · (127/max|x|))`
/// (the reference multiplies by `1/d` and rounds half away from zero: a quant differs by one
/// in rare cases). Hands each block's `(d, quants, Σq)` to `put`.
fn quantize_blocks_x86(x: &[f32], mut put: impl FnMut(f32, [i8; 32], i32)) {
    for xb in x.chunks_exact(32) {
        let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(xb) {
            // ties to even as `_mm256_round_ps` (|v·id| ≤ 127.5 < 2²², where adding and
            // removing 1.5·2²³ rounds exactly so, without a libm call)
            let r = ((v * id + 12_582_912.0) - 12_582_912.0) as i32;
            *q = r.clamp(-128, 127) as i8;
            sum += r;
        }
        put(d, qs, sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_permutations() {
        for l in [Layout::Legacy, Layout::K4, Layout::K6] {
            let n = l.chunk();
            let mut seen = vec![false; n];
            for p in 0..n {
                let s = l.src(p);
                assert!(s < n && !seen[s], "{l:?} slot {p} -> {s}");
                seen[s] = true;
            }
        }
    }
}
