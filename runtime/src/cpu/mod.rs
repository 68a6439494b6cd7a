//! Fast CPU kernels: quantized matrix × activation products, norms, rope, activations and
//! attention over the (quantized) KV cache.
//!
//! Three kernel families compute the same thing ([`Kernels::best`] picks one at run time):
//! - [`Kernels::Avx2`] (`avx2.rs`, x86-64 with AVX2 + FMA + F16C): the arithmetic of
//!   llama.cpp's x86 AVX2 build operation for operation, so native x86 gives its logits bit
//!   for bit (see `avx2.rs`); types it has no kernel for fall back to `Simd`.
//! - [`Kernels::Scalar`] (`scalar.rs`): portable Rust reading the packed GGUF blocks in place,
//!   with the integer and float operations of ggml's generic `ggml_vec_dot_*` in the same
//!   order, so its results are bit-identical to the oracle `quant::vec_dot`; wasm without
//!   `simd128` runs it.
//! - [`Kernels::Simd`] (`simd.rs`): 128-bit integer kernels written once over a small set of
//!   vector operations, implemented with wasm SIMD128 (`simd128.rs`, the browser path) and
//!   with x86_64's baseline SSE2 (`sse2.rs`, so native x86 can run, and tests, the browser's
//!   kernels: `CpuBackend::with_kernels`). Integer block sums are exact; only the float
//!   accumulation across blocks is reassociated, so results agree with the oracle to float
//!   rounding (see the tests).
//!
//! Activations entering a quantized dot product are first quantized to the weight type's
//! `vec_dot_type` with the `quant::` reference quantizers (as ggml's CPU backend does; `Avx2`
//! with ggml's x86 ones), see `act_quant.rs`.
//!
//! A fourth family, [`Kernels::Float`] (`float.rs`), is a reference for measurements, not a
//! fast path: weight rows dequantized to f32 and multiplied with unrounded f32 activations.

mod act_quant;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod float;
pub mod ops;
mod scalar;
#[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
mod simd;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;
#[cfg(all(target_arch = "x86_64", not(target_arch = "wasm32")))]
mod sse2;

pub use attention::{attention, AttnScratch};
pub use ops::{add_inplace, geglu, gelu_tanh, mul_inplace, rms_norm, rms_norm_inplace, rope_inplace, silu, softmax_inplace, swiglu, Rope, RopeMode};

use crate::error::QuantError;
use crate::quant::{dequantize_row, GgmlType};
use act_quant::{ActForm, ActRow, QuantizedActs};

/// A row-major matrix of quantized rows as stored in GGUF: `rows` rows of `cols` elements,
/// each row `ty.row_bytes(cols)` bytes of packed blocks, any alignment.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `ty` is computable here, that `cols` is a whole number of blocks and that
    /// `data` holds exactly `rows` rows.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        if !multipliable(ty) {
            return Err(QuantError::Unsupported { ty, op: "matmul" });
        }
        let bs = ty.block_size();
        if cols % bs != 0 {
            return Err(QuantError::NotBlockMultiple { ty, n: cols, block: bs });
        }
        let row_bytes = cols / bs * ty.type_size();
        let expected =
            row_bytes.checked_mul(rows).ok_or(QuantError::BufferSize { what: "matrix data (size overflows)", ty, expected: usize::MAX, got: data.len() })?;
        if data.len() != expected {
            return Err(QuantError::BufferSize { what: "matrix data", ty, expected, got: data.len() });
        }
        Ok(QMatrix { ty, rows, cols, data })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// The packed bytes of row `r` (panics when `r >= rows`).
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Whether weights of type `ty` can be multiplied here: every supported type but the
/// activation-only Q8_K and Q8_1.
fn multipliable(ty: GgmlType) -> bool {
    ty.is_supported() && ty != GgmlType::Q8_K && ty != GgmlType::Q8_1
}

/// Which kernel family computes the dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Portable code, bit-identical to `quant::vec_dot`.
    Scalar,
    /// 128-bit SIMD: wasm SIMD128 in the browser, SSE2 on x86_64 (only where compiled in:
    /// see [`Kernels::available`]).
    Simd,
    /// x86-64 with AVX2 + FMA + F16C (detected at run time): the arithmetic of ggml's x86
    /// AVX2 build (`avx2.rs`) for the types it has kernels for, [`Kernels::Simd`] for the rest.
    Avx2,
    /// Weight rows dequantized to f32 times the f32 activations, unrounded (`float.rs`): slow,
    /// and not llama.cpp's arithmetic, but without the 8-bit rounding of activations that
    /// turns any tiny perturbation into whole rounding steps — the baseline against which
    /// a quantized KV cache is measured on its own. Everything but the weight products
    /// (attention over a quantized cache included) runs [`Kernels::quantized`]'s family.
    /// Never picked by [`Kernels::best`] and not in [`Kernels::available`] (whose families
    /// reproduce ggml's quantized products).
    Float,
}

const HAS_SIMD: bool = cfg!(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")));

impl Kernels {
    /// The fastest family this build and CPU have (what a backend runs unless told otherwise).
    pub fn best() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return Kernels::Avx2;
        }
        if HAS_SIMD {
            Kernels::Simd
        } else {
            Kernels::Scalar
        }
    }

    /// Whether this is [`Kernels::Avx2`] on a CPU that has it: the condition for calling
    /// `avx2`'s target-feature functions (anyone can name `Kernels::Avx2`).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn runs_avx2(self) -> bool {
        self == Kernels::Avx2 && avx2::available()
    }

    /// Every family this build and CPU have (tests run each).
    pub fn available() -> &'static [Kernels] {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return &[Kernels::Scalar, Kernels::Simd, Kernels::Avx2];
        }
        if HAS_SIMD {
            &[Kernels::Scalar, Kernels::Simd]
        } else {
            &[Kernels::Scalar]
        }
    }

    /// Whether the 128-bit SIMD kernels serve what this family has no kernel of its own for.
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    fn simd_like(self) -> bool {
        matches!(self, Kernels::Simd | Kernels::Avx2 | Kernels::Float)
    }

    /// The family whose quantized products this one uses where it needs any:
    /// [`Kernels::Float`]'s attention over a quantized cache, whose format includes the Q8
    /// rounding of the query, runs the 128-bit kernels (scalar without them).
    pub fn quantized(self) -> Kernels {
        match self {
            Kernels::Float if HAS_SIMD => Kernels::Simd,
            Kernels::Float => Kernels::Scalar,
            k => k,
        }
    }

    /// "scalar", "simd128" (wasm), "sse2" or "avx2" (x86_64), "float".
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Scalar => "scalar",
            Kernels::Simd if cfg!(target_arch = "wasm32") => "simd128",
            Kernels::Simd => "sse2",
            Kernels::Avx2 => "avx2",
            Kernels::Float => "float",
        }
    }
}

/// Reusable buffers for quantized activations (no allocation per call once warm).
#[derive(Default)]
pub struct Scratch {
    acts: QuantizedActs,
}

/// Row dot product `w_row · activations of one token`.
type DotFn = fn(&[u8], &ActRow<'_>) -> f32;
/// Two rows against the same activations (shares their loads).
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
type Dot2Fn = fn(&[u8], &[u8], &ActRow<'_>) -> [f32; 2];
/// Two rows against [`TILE_TOKENS`] tokens (a prefill: each weight block unpacked once for
/// all of them); bit for bit the results of [`Dot2Fn`] per token.
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
type TileFn = fn(&[u8], &[u8], [&ActRow<'_>; TILE_TOKENS]) -> [[f32; TILE_TOKENS]; 2];
/// Tokens per [`TileFn`] call.
const TILE_TOKENS: usize = 4;

/// The kernels of one matmul: single rows, and row pairs and tiles where the family has them.
/// Tokens from `rest_from` on use `rest` for single rows ([`Kernels::Avx2`] follows llama.cpp,
/// whose x86 build computes the last tokens of some batches with another kernel).
#[derive(Clone, Copy)]
struct Dots {
    one: DotFn,
    two: Option<Dot2Fn>,
    tile: Option<TileFn>,
    rest_from: usize,
    rest: DotFn,
    /// The quantized activations these kernels read.
    acts: ActForm,
}

/// The pair and tile kernels the benches allow (`tests::KERNEL_SHAPES`: 0 single rows, 1 and
/// row pairs, 2 and tiles; always 2 outside tests).
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
fn allowed_shapes(two: Option<Dot2Fn>, tile: Option<TileFn>) -> (Option<Dot2Fn>, Option<TileFn>) {
    #[cfg(test)]
    let shapes = tests::KERNEL_SHAPES.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    let shapes = 2;
    (two.filter(|_| shapes >= 1), tile.filter(|_| shapes >= 2))
}

/// The kernels for a product of `rows` weight rows by `n_tokens` tokens.
fn dots(ty: GgmlType, kernels: Kernels, rows: usize, n_tokens: usize) -> Result<Dots, QuantError> {
    if kernels == Kernels::Avx2 {
        #[cfg(target_arch = "x86_64")]
        if let Some(b) = avx2::batch_dot_fns(ty, rows, n_tokens) {
            // pairs and tiles only where every token takes the same arithmetic
            let (two, tile) = avx2::multi_row_fns(ty).filter(|_| b.rest_from >= n_tokens).unzip();
            let (two, tile) = allowed_shapes(two, tile);
            let avx2::BatchDots { one, rest_from, rest, q8k_4x8_tokens } = b;
            // llama.cpp's x86 kernels read the i8 quants only
            let acts = ActForm { layout: act_quant::Layout::None, q8k_4x8_tokens };
            return Ok(Dots { one, two, tile, rest_from, rest, acts });
        }
        return dots(ty, Kernels::Simd, rows, n_tokens);
    }
    let _ = rows;
    let one = dot_fn(ty, kernels)?;
    let acts = ActForm::of(ty, kernels);
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    if kernels == Kernels::Simd {
        let (two, tile) = simd::multi_row_fns(ty).unzip();
        let (two, tile) = allowed_shapes(two, tile);
        return Ok(Dots { one, two, tile, rest_from: n_tokens, rest: one, acts });
    }
    Ok(Dots { one, two: None, tile: None, rest_from: n_tokens, rest: one, acts })
}

fn dot_fn(ty: GgmlType, kernels: Kernels) -> Result<DotFn, QuantError> {
    #[cfg(target_arch = "x86_64")]
    if kernels == Kernels::Avx2 {
        if let Some(f) = avx2::dot_fn(ty) {
            return Ok(f);
        }
    }
    #[cfg(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128")))]
    if kernels.simd_like() {
        if let Some(f) = simd::dot_fn(ty) {
            return Ok(f);
        }
    }
    let _ = kernels;
    scalar::dot_fn(ty).ok_or(QuantError::Unsupported { ty, op: "matmul" })
}

/// `y[t*w.rows + r] = dot(w.row(r), x[t*w.cols..(t+1)*w.cols])` for `t` in `0..n_tokens`.
///
/// Activations are first quantized to `w.ty.vec_dot_type()` as ggml's CPU backend does
/// (Q8_0 / Q8_1 / Q8_K with the `quant::` reference quantizers; F16 / BF16 rounded per
/// element; F32 as is), then each dot product runs on the fastest kernel of the platform.
/// `x` must hold exactly `n_tokens * w.cols` values and `y` at least `n_tokens * w.rows`
/// (elements past that are left untouched).
pub fn matmul(w: &QMatrix, x: &[f32], n_tokens: usize, y: &mut [f32], scratch: &mut Scratch) -> Result<(), QuantError> {
    matmul_with(Kernels::best(), w, x, n_tokens, y, scratch)
}

/// [`matmul`] on a chosen kernel family (tests compare the families).
pub fn matmul_with(kernels: Kernels, w: &QMatrix, x: &[f32], n_tokens: usize, y: &mut [f32], scratch: &mut Scratch) -> Result<(), QuantError> {
    let ty = w.ty;
    let want_x = n_tokens.saturating_mul(w.cols);
    if x.len() != want_x {
        return Err(QuantError::BufferSize { what: "matmul activations (f32 values)", ty, expected: want_x, got: x.len() });
    }
    let want_y = n_tokens.saturating_mul(w.rows);
    if y.len() < want_y {
        return Err(QuantError::BufferSize { what: "matmul output (f32 values)", ty, expected: want_y, got: y.len() });
    }
    if w.data.len() != w.row_bytes() * w.rows {
        return Err(QuantError::BufferSize { what: "matrix data", ty, expected: w.row_bytes() * w.rows, got: w.data.len() });
    }
    let y = &mut y[..want_y];
    if kernels == Kernels::Float {
        // (the quantized kernels refuse other types when they look for a dot product)
        if !multipliable(ty) {
            return Err(QuantError::Unsupported { ty, op: "matmul" });
        }
        return split_rows(w, n_tokens, y, |r0, r1, out| float::rows(w, x, n_tokens, r0, r1, |t, r, v| out.put(t, r, v)));
    }
    let dot = dots(ty, kernels, w.rows, n_tokens)?;
    scratch.acts.quantize(ty, kernels, dot.acts, x, w.cols, n_tokens)?;
    let acts = &scratch.acts;
    split_rows(w, n_tokens, y, |r0, r1, out| {
        matmul_rows(w, acts, n_tokens, r0, r1, dot, |t, r, v| out.put(t, r, v));
        Ok(())
    })
}

/// Where the results of rows `r0..` go: value `(t, r)` at
/// `out[(r - r0) * row_stride + t * token_stride]`.
struct RowsOut<'a> {
    out: &'a mut [f32],
    r0: usize,
    row_stride: usize,
    token_stride: usize,
}

impl RowsOut<'_> {
    #[inline]
    fn put(&mut self, t: usize, r: usize, v: f32) {
        self.out[(r - self.r0) * self.row_stride + t * self.token_stride] = v;
    }
}

/// Runs `work(r0, r1, out)` over all rows of a product of `w` by `n_tokens` tokens with
/// results in `y` (`[n_tokens][w.rows]`): in this thread, or natively split into row ranges
/// over [`num_threads`] threads when the product is large enough to repay the spawning.
fn split_rows<F>(w: &QMatrix, n_tokens: usize, y: &mut [f32], work: F) -> Result<(), QuantError>
where
    F: Fn(usize, usize, &mut RowsOut<'_>) -> Result<(), QuantError> + Sync,
{
    if n_tokens == 0 || w.rows == 0 {
        return Ok(());
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = num_threads().min(w.rows);
        // Spawning costs tens of microseconds: only split products large enough to repay it.
        if threads > 1 && w.data.len().saturating_mul(n_tokens) >= PARALLEL_MIN_BYTES {
            return split_rows_parallel(w, n_tokens, y, work, threads);
        }
    }
    let mut out = RowsOut { out: y, r0: 0, row_stride: 1, token_stride: w.rows };
    work(0, w.rows, &mut out)
}

/// Tokens per pass over the rows of a matmul: their quantized activations (2 bytes per
/// element in the SIMD layout: 36 KiB at 576 columns) stay in L1/L2 while the rows pass, where
/// a whole long prompt's did not (558 tokens: 640 KiB per row pair; blocks of 16 or 32 made
/// SmolLM2's prefill of that prompt ~8 % faster natively, 137 tokens unchanged).
const TOKEN_BLOCK: usize = 32;

/// Computes rows `r0..r1` for every token, handing each result to `put(t, r, value)`.
/// Tokens in blocks of [`TOKEN_BLOCK`]; per block, rows outer and tokens inner: a weight row
/// (or row pair) is read once per block and stays in L1 while the block's activations pass
/// over it.
#[inline]
fn matmul_rows(w: &QMatrix, acts: &QuantizedActs, n_tokens: usize, r0: usize, r1: usize, dot: Dots, mut put: impl FnMut(usize, usize, f32)) {
    // Sliced once per call, not per row: for one token this was ~2 % of a decode step.
    let all_rows: Vec<ActRow<'_>> = (0..n_tokens).map(|t| acts.row(t)).collect();
    for (bi, act_rows) in all_rows.chunks(TOKEN_BLOCK).enumerate() {
        let t0 = bi * TOKEN_BLOCK;
        let mut put = |t: usize, r: usize, v: f32| put(t0 + t, r, v);
        let mut r = r0;
        if let Some(two) = dot.two {
            // Pairs rows i and i + h, not i and i + 1: two long sequential streams, which the
            // hardware prefetchers follow, where adjacent pairs made the read position jump
            // ahead by a row after every pair. On a matrix larger than the caches (a 57 M-weight
            // Q8_0 in `bench_matvec`, like SmolLM2's 28 M-weight output) adjacent pairs ran at
            // 4.8 Gw/s against 13.5 for these (native; 5.4 against ~13 under Node's wasm).
            let h = (r1 - r0) / 2;
            for i in 0..h {
                let (ra, rb) = (r0 + i, r0 + h + i);
                let (w0, w1) = (w.row(ra), w.row(rb));
                // Tokens by TILE_TOKENS where there is a tile kernel, the rest one by one.
                let mut tiled = 0;
                if let Some(tile) = dot.tile {
                    while tiled + TILE_TOKENS <= act_rows.len() {
                        let a4 = core::array::from_fn(|k| &act_rows[tiled + k]);
                        let [v0, v1] = tile(w0, w1, a4);
                        for k in 0..TILE_TOKENS {
                            put(tiled + k, ra, v0[k]);
                            put(tiled + k, rb, v1[k]);
                        }
                        tiled += TILE_TOKENS;
                    }
                }
                for (t, a) in act_rows.iter().enumerate().skip(tiled) {
                    let [v0, v1] = two(w0, w1, a);
                    put(t, ra, v0);
                    put(t, rb, v1);
                }
            }
            r = r0 + 2 * h;
        }
        for r in r..r1 {
            let wr = w.row(r);
            for (t, a) in act_rows.iter().enumerate() {
                let f = if t0 + t < dot.rest_from { dot.one } else { dot.rest };
                put(t, r, f(wr, a));
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
const PARALLEL_MIN_BYTES: usize = 1 << 20;

#[cfg(not(target_arch = "wasm32"))]
static NUM_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Threads a native [`matmul`] may split its rows over (1 by default; wasm is always 1).
pub fn num_threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        NUM_THREADS.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

/// Sets the thread count of native matmuls (clamped to at least 1; ignored on wasm).
pub fn set_num_threads(n: usize) {
    #[cfg(not(target_arch = "wasm32"))]
    NUM_THREADS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    #[cfg(target_arch = "wasm32")]
    let _ = n;
}

#[cfg(not(target_arch = "wasm32"))]
fn split_rows_parallel<F>(w: &QMatrix, n_tokens: usize, y: &mut [f32], work: F, threads: usize) -> Result<(), QuantError>
where
    F: Fn(usize, usize, &mut RowsOut<'_>) -> Result<(), QuantError> + Sync,
{
    let rows = w.rows;
    let per = rows.div_ceil(threads);
    // A worker that panicked (it cannot, short of a bug) is reported, not left as garbage.
    let failed = || QuantError::Unsupported { ty: w.ty, op: "matmul (worker thread failed)" };
    let work = &work;
    if n_tokens == 1 {
        // Output rows are contiguous: each thread owns a slice of y.
        return std::thread::scope(|s| {
            let handles: Vec<_> = y
                .chunks_mut(per)
                .enumerate()
                .map(|(i, chunk)| {
                    let r0 = i * per;
                    s.spawn(move || {
                        let r1 = r0 + chunk.len();
                        work(r0, r1, &mut RowsOut { out: chunk, r0, row_stride: 1, token_stride: 0 })
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(failed())))
        });
    }
    // Several tokens: each thread fills a row-major [rows_i × n_tokens] block, copied after.
    let parts: Vec<Result<Vec<f32>, QuantError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let r0 = (i * per).min(rows);
                let r1 = ((i + 1) * per).min(rows);
                s.spawn(move || {
                    // this thread's results: [r1 - r0][n_tokens]
                    let mut out = vec![0.0f32; (r1 - r0) * n_tokens];
                    work(r0, r1, &mut RowsOut { out: &mut out, r0, row_stride: n_tokens, token_stride: 1 })?;
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(failed()))).collect()
    });
    for (i, part) in parts.into_iter().enumerate() {
        let part = part?;
        let r0 = (i * per).min(rows);
        let r1 = ((i + 1) * per).min(rows);
        if part.len() != (r1 - r0) * n_tokens {
            return Err(failed());
        }
        for r in r0..r1 {
            for t in 0..n_tokens {
                y[t * rows + r] = part[(r - r0) * n_tokens + t];
            }
        }
    }
    Ok(())
}

/// Dequantizes row `r` of `w` into `out` (embedding lookup, ggml's `get_rows`).
pub fn get_row(w: &QMatrix, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
    if r >= w.rows {
        return Err(QuantError::BufferSize { what: "get_row row index (rows)", ty: w.ty, expected: w.rows, got: r });
    }
    if out.len() != w.cols {
        return Err(QuantError::BufferSize { what: "get_row output (f32 values)", ty: w.ty, expected: w.cols, got: out.len() });
    }
    dequantize_row(w.ty, w.row(r), out)
}

#[cfg(test)]
pub(crate) mod tests;
