//! Element-wise and row operations of the forward pass, with ggml's numerics
//! (ggml-cpu/ops.cpp, vec.h, vec.cpp): RMS norm, residual add / mul, SiLU, GELU (tanh form),
//! SwiGLU / GeGLU, softmax and rotary position embedding.
//!
//! Where ggml's SIMD paths and its scalar path differ (SiLU / softmax use a polynomial `expf`
//! under AVX2 / NEON), we follow the scalar path with the platform's `expf`/`tanhf` (a few ulp
//! from ggml's SIMD results) — except with [`super::Kernels::Avx2`], which takes the AVX2
//! build's vector `expf` (SwiGLU) and GCC's fused multiply-adds (rope, the GELU table), as
//! that build computes them.

use super::Kernels;
use crate::quant::{ggml_fp16_to_fp32, ggml_fp32_to_fp16};
use half::f16;
use std::sync::OnceLock;

/// ggml_compute_forward_rms_norm_f32 followed by ggml_mul with `weight`:
/// `mean = (float)(Σ (x·x as f32) in f64 / n)`, `scale = 1/sqrtf(mean + eps)`,
/// `out = (x · scale) · weight`. Bit-identical to ggml (the sum is sequential in f64).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), weight.len(), "rms_norm: weight length");
    assert_eq!(x.len(), out.len(), "rms_norm: output length");
    let scale = rms_scale(x, eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    assert_eq!(x.len(), weight.len(), "rms_norm: weight length");
    let scale = rms_scale(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = (*v * scale) * w;
    }
}

/// `1/sqrtf(mean(x²) + eps)` with ggml's f64 (`ggml_float`) sum of f32 squares.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut sum = 0.0f64;
    for &v in x {
        sum += f64::from(v * v);
    }
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// `x += y` (ggml_add of same-shape rows).
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add_inplace: lengths differ");
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x *= y` (ggml_mul of same-shape rows).
pub fn mul_inplace(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "mul_inplace: lengths differ");
    for (a, &b) in x.iter_mut().zip(y) {
        *a *= b;
    }
}

/// `x *= s` (ggml_scale).
pub fn scale_inplace(x: &mut [f32], s: f32) {
    for a in x.iter_mut() {
        *a *= s;
    }
}

/// ggml_silu_f32: `x / (1 + expf(-x))`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

const GELU_COEF_A: f32 = 0.044715;
#[allow(clippy::excessive_precision)]
const SQRT_2_OVER_PI: f32 = 0.797_884_560_802_865_355_879_892_119_868_76; // C's literal, rounded to f32

/// ggml_gelu_f32, the tanh approximation evaluated in f32:
/// `0.5·x·(1 + tanhf(√(2/π)·x·(1 + 0.044715·x²)))`.
#[inline]
pub fn gelu_tanh_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// ggml_table_gelu_f16: `fp16(gelu(fp32(h)))` for every half `h`, built on first use (128 KiB).
/// With [`Kernels::Avx2`], `1 + 0.044715·x·x` is fused as GCC fused it in ggml's x86 build
/// (`fma(x, 0.044715·x, 1)`, seen in its `ggml_cpu_init`).
fn gelu_table(kernels: Kernels) -> &'static [u16] {
    static PLAIN: OnceLock<Vec<u16>> = OnceLock::new();
    static FUSED: OnceLock<Vec<u16>> = OnceLock::new();
    // GCC contracts `a·b + c` in ggml's x86 build (`-ffp-contract=fast` with FMA)
    let fused = kernels == Kernels::Avx2;
    (if fused { &FUSED } else { &PLAIN }).get_or_init(|| {
        (0..=u16::MAX)
            .map(|i| {
                let x = ggml_fp16_to_fp32(f16::from_bits(i));
                let g = if fused { 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * x.mul_add(GELU_COEF_A * x, 1.0)).tanh()) } else { gelu_tanh_f32(x) };
                ggml_fp32_to_fp16(g).to_bits()
            })
            .collect()
    })
}

#[inline(always)]
fn gelu_lookup(table: &[u16], x: f32) -> f32 {
    let h = ggml_fp32_to_fp16(x).to_bits();
    ggml_fp16_to_fp32(f16::from_bits(table[usize::from(h)]))
}

/// GELU as llama.cpp's CPU backend computes it (`ggml_vec_gelu_f32` with `GGML_GELU_FP16`,
/// which ggml-cpu/vec.h defines): 0 for x ≤ −10, x for x ≥ 10, otherwise the input is rounded
/// to f16 and looked up in a table of `fp16(gelu_tanh_f32(h))`. The result therefore carries
/// f16 precision (relative error ≤ 2⁻¹¹ plus the input rounding), exactly as ggml's does;
/// the table is built with this platform's `tanhf`, which may differ from glibc's by an ulp
/// before the f16 rounding (so almost never after it). [`gelu_tanh_f32`] is the plain f32 form.
/// `kernels` picks the table ([`gelu_table`]).
pub fn gelu_tanh(kernels: Kernels, x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_lookup(gelu_table(kernels), x)
    }
}

/// ggml_vec_swiglu_f32 (scalar path): `out = silu(gate) · up`. With [`Kernels::Avx2`], the
/// AVX2 build's (`avx2::swiglu`: its vector `expf`).
pub fn swiglu(kernels: Kernels, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: lengths differ");
    assert_eq!(gate.len(), out.len(), "swiglu: output length");
    let _ = kernels; // read on x86-64 only
    #[cfg(target_arch = "x86_64")]
    if kernels.runs_avx2() {
        // SAFETY: `runs_avx2` checked the CPU.
        return unsafe { super::avx2::swiglu(gate, up, out) };
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// ggml_vec_geglu_f32 with `GGML_GELU_FP16`: `out = gelu(gate) · up`, gelu as [`gelu_tanh`]
/// (0 for gate ≤ −10, gate·up for gate ≥ 10, the f16 table otherwise).
pub fn geglu(kernels: Kernels, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len(), "geglu: lengths differ");
    assert_eq!(gate.len(), out.len(), "geglu: output length");
    let table = gelu_table(kernels);
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = if g <= -10.0 {
            0.0
        } else if g >= 10.0 {
            g * u
        } else {
            gelu_lookup(table, g) * u
        };
    }
}

/// ggml_soft_max (scalar path of `ggml_vec_soft_max_f32`): subtract the max, `expf`, sum in
/// f64, then scale by `(float)(1.0 / sum)`. An empty slice is left as is.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let mut max = f32::NEG_INFINITY;
    for &v in x.iter() {
        max = max.max(v);
    }
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        let e = (*v - max).exp();
        sum += f64::from(e);
        *v = e;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Which elements rotary embedding pairs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (x[2i], x[2i+1]): llama, mistral, smollm (GGML_ROPE_TYPE_NORMAL).
    Normal,
    /// Halves (x[i], x[i + n_dims/2]): gemma, qwen, phi (GGML_ROPE_TYPE_NEOX).
    Neox,
}

/// Rotary position embedding parameters (ggml_rope_ext without YaRN: `ext_factor = 0`,
/// `attn_factor = 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Rotated dimensions per head (even, ≤ head_dim); the rest pass through.
    pub n_dims: usize,
    pub freq_base: f32,
    /// Linear position scaling (1 / rope scaling factor).
    pub freq_scale: f32,
    pub mode: RopeMode,
    /// Optional per-pair frequency divisors (`rope_freqs.weight`, llama-3 long-context
    /// scaling): θᵢ is divided by `freq_factors[i]`; at least n_dims/2 values.
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// `n_dims` rotated dims, base `freq_base`, no scaling, no frequency factors.
    pub fn new(n_dims: usize, freq_base: f32, mode: RopeMode) -> Rope {
        Rope { n_dims, freq_base, freq_scale: 1.0, mode, freq_factors: None }
    }

    /// (cos θᵢ, sin θᵢ) for position `pos` and pair i, as ggml_rope_cache_init computes them:
    /// `theta_scale = powf(base, -2/n_dims)`, θ starts at `(float)pos` and is multiplied by
    /// theta_scale in f32 after each pair; the angle used is `freq_scale · θ / ff`.
    pub fn for_each_angle(&self, pos: usize, mut f: impl FnMut(usize, f32, f32)) {
        let theta_scale = self.freq_base.powf(-2.0 / self.n_dims as f32);
        let mut theta = pos as f32;
        for i in 0..self.n_dims / 2 {
            let ff = self.freq_factors.as_ref().and_then(|v| v.get(i).copied()).unwrap_or(1.0);
            let theta_extrap = theta / ff;
            let theta_interp = self.freq_scale * theta_extrap;
            f(i, theta_interp.cos(), theta_interp.sin());
            theta *= theta_scale;
        }
    }
}

/// Rotates `x` (`n_heads` rows of `head_dim`) in place for position `pos`, with
/// ggml_compute_forward_rope_f32's semantics: for each pair (x0, x1) of the first `n_dims`
/// dims, `x0' = x0·cos − x1·sin`, `x1' = x0·sin + x1·cos` — with [`Kernels::Avx2`] each
/// with one fused multiply-add, as ggml's x86 build (`avx2::rope_pairs`).
pub fn rope_inplace(kernels: Kernels, x: &mut [f32], n_heads: usize, head_dim: usize, pos: usize, rope: &Rope) {
    assert_eq!(x.len(), n_heads * head_dim, "rope: x is not n_heads·head_dim");
    assert!(rope.n_dims % 2 == 0 && rope.n_dims <= head_dim, "rope: n_dims must be even and ≤ head_dim");
    let half = rope.n_dims / 2;
    let _ = kernels; // read on x86-64 only
    #[cfg(target_arch = "x86_64")]
    let fused = kernels.runs_avx2();
    rope.for_each_angle(pos, |i, c, s| {
        let (i0, i1) = match rope.mode {
            RopeMode::Normal => (2 * i, 2 * i + 1),
            RopeMode::Neox => (i, i + half),
        };
        #[cfg(target_arch = "x86_64")]
        if fused {
            // SAFETY: `runs_avx2` checked the CPU.
            return unsafe { super::avx2::rope_pairs(x, head_dim, i0, i1, c, s) };
        }
        for h in x.chunks_exact_mut(head_dim) {
            let (x0, x1) = (h[i0], h[i1]);
            h[i0] = x0 * c - x1 * s;
            h[i1] = x0 * s + x1 * c;
        }
    });
}
