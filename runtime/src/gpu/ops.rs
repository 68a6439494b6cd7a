//! The ops of the forward pass on the GPU: the [`Backend`] implementation (weights and the KV
//! cache delegate to `weights.rs` and `kv.rs`), activation rounding, matmuls, element-wise ops.
//!
//! Numerics follow the CPU backend: activations entering a weight matmul are first rounded to
//! the weight type's `vec_dot_type` (Q8_0 / Q8_K / F16 / BF16, `act_quant.wgsl`), queries for
//! quantized caches to Q8_0, GELU through the f16 table, rope angles built by repeated
//! multiplication. The GPU then differs from the CPU only in summation order.

use super::recorder::{bytes_of, GpuAct, GpuBackend, PooledBuffer, PARAM_BIND};
use super::weights::{ChunkView, MatrixView};
use super::{GpuCache, GpuWeight, PendingGpuWeight};
use crate::error::{GpuError, ModelError};
use crate::kv_cache::KvType;
use crate::model::{Activation, Backend, ModelConfig, RopeKind, RopeParams};
use crate::quant::GgmlType;
use webgguf_shaders::{ActRound, Family};
use wgpu::util::DeviceExt;

/// Matmuls with at most this many tokens use the matvec kernel.
pub(super) const MATVEC_MAX_TOKENS: usize = 4;

/// How ggml rounds the activations entering a product with a weight of type `ty`.
pub(super) fn act_mode(ty: GgmlType) -> ActRound {
    match ty.vec_dot_type() {
        GgmlType::F16 => ActRound::F16,
        GgmlType::BF16 => ActRound::Bf16,
        GgmlType::Q8_0 => ActRound::Q8_0,
        GgmlType::Q8_K => ActRound::Q8K,
        GgmlType::Q8_1 => ActRound::Q8_1,
        _ => ActRound::None,
    }
}

/// Which arithmetic the weight products follow, chosen per adapter ([`GpuKernels::for_device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuKernels {
    /// Activations rounded to the weight type's `vec_dot_type` before each product, as ggml's
    /// quantized dot products see them: the CPU's 128-bit kernels ([`Kernels::Simd`]) up to
    /// summation order (tests/gpu_vs_cpu.rs holds the whole model to them).
    ///
    /// [`Kernels::Simd`]: crate::cpu::Kernels::Simd
    Exact,
    /// Activations unrounded (no `act_round` dispatch): dequantized weights times f32
    /// activations, the CPU's [`Kernels::Float`] up to summation order. Fewer dispatches, and
    /// closer to the unquantized model than ggml's own arithmetic.
    ///
    /// [`Kernels::Float`]: crate::cpu::Kernels::Float
    Fast,
}

impl GpuKernels {
    /// Exact on software adapters (device type Cpu: lavapipe natively; in the browser wgpu
    /// reports a fallback adapter such as Chromium's SwiftShader so), where tests hold the GPU
    /// to the CPU's kernels; fast on every other adapter (both families are tested on every
    /// adapter).
    pub fn for_device(device_type: &str) -> GpuKernels {
        if device_type == "Cpu" {
            GpuKernels::Exact
        } else {
            GpuKernels::Fast
        }
    }

    pub fn from_name(s: &str) -> Option<GpuKernels> {
        match s {
            "exact" => Some(GpuKernels::Exact),
            "fast" => Some(GpuKernels::Fast),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GpuKernels::Exact => "exact",
            GpuKernels::Fast => "fast",
        }
    }
}

/// How `matvec` shares a weight row among invocations (matmul.wgsl's MV_LANES):
/// chosen per adapter, the same numbers either way (only the summation order differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatvecLayout {
    /// 4 invocations per row, 16 rows per workgroup: few barriers per value, for software
    /// adapters.
    Narrow,
    /// 32 invocations per row, 2 rows per workgroup: a row read by many lanes at once, for
    /// hardware GPUs.
    Wide,
}

impl MatvecLayout {
    /// Narrow on software adapters (device type Cpu), wide on hardware.
    pub fn for_device(device_type: &str) -> MatvecLayout {
        if device_type == "Cpu" {
            MatvecLayout::Narrow
        } else {
            MatvecLayout::Wide
        }
    }

    pub fn from_name(s: &str) -> Option<MatvecLayout> {
        match s {
            "narrow" => Some(MatvecLayout::Narrow),
            "wide" => Some(MatvecLayout::Wide),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MatvecLayout::Narrow => "narrow",
            MatvecLayout::Wide => "wide",
        }
    }

    /// Invocations per output value (MV_LANES).
    pub(super) fn lanes(self) -> u32 {
        match self {
            MatvecLayout::Narrow => 4,
            MatvecLayout::Wide => 32,
        }
    }

    /// Output values per workgroup (MV_ROWS).
    pub(super) fn rows_per_group(self) -> usize {
        64 / self.lanes() as usize
    }
}

/// Uniforms of matmul.wgsl (`MatParams`).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct MatParams {
    pub(super) rows: u32,
    pub(super) cols: u32,
    pub(super) n: u32,
    pub(super) row_words: u32,
    pub(super) y_stride: u32,
    pub(super) y_offset: u32,
    pub(super) w_base: u32,
    pub(super) rows1: u32,
    pub(super) w_base1: u32,
    pub(super) rows2: u32,
    pub(super) w_base2: u32,
    pub(super) row_words2: u32,
}

const _: () = assert!(std::mem::size_of::<MatParams>() as u64 <= PARAM_BIND);

impl MatParams {
    /// A chunk of `m` times `n` tokens.
    fn chunk(m: &MatrixView<'_>, c: &ChunkView<'_>, n: usize) -> MatParams {
        MatParams {
            rows: c.rows as u32,
            cols: m.cols as u32,
            n: n as u32,
            row_words: m.row_words as u32,
            y_stride: m.rows as u32,
            y_offset: c.row0 as u32,
            w_base: c.word0 as u32,
            ..MatParams::default()
        }
    }
}

/// Weights one `matvec3` / `matvec_glu` dispatch can read: each one chunk, all in the same
/// buffer and of one width; of one type, except that `matvec3`'s third may be another
/// [`mixes_in_matvec3`] type (Q4_K_M's v in Q6_K).
struct SharedBuffer<'a> {
    buf: &'a wgpu::Buffer,
    ty: GgmlType,
    cols: usize,
    row_words: usize,
    /// (word of the first row, rows) per weight
    parts: Vec<(usize, usize)>,
    /// The third weight's type and row words when it differs from the others'
    third: Option<(GgmlType, usize)>,
}

/// Types matvec3 may pair (each with its own case in matmul.wgsl's `dot32`, none with a Q8_1
/// block-sum correction) when their activations round alike.
pub(crate) fn mixes_in_matvec3(a: GgmlType, b: GgmlType) -> bool {
    use GgmlType::*;
    let own_case = |t: GgmlType| matches!(t, Q4_0 | Q5_0 | Q8_0 | Q4_K | Q5_K | Q6_K);
    own_case(a) && own_case(b) && a.vec_dot_type() == b.vec_dot_type()
}

/// Whether `ws` can be read by one fused dispatch (tests).
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(super) fn shares_buffer(ws: &[&GpuWeight]) -> bool {
    shared_buffer(ws).is_some()
}

fn shared_buffer<'a>(ws: &[&'a GpuWeight]) -> Option<SharedBuffer<'a>> {
    let mut out: Option<SharedBuffer<'a>> = None;
    for (i, w) in ws.iter().enumerate() {
        let GpuWeight::Matrix { ty, rows, cols, row_words, chunks } = w else { return None };
        let [c] = chunks.as_slice() else { return None };
        match &mut out {
            None => out = Some(SharedBuffer { buf: &c.buf, ty: *ty, cols: *cols, row_words: *row_words, parts: vec![(c.word0, *rows)], third: None }),
            Some(s) if s.buf == &c.buf && s.cols == *cols && s.ty == *ty => s.parts.push((c.word0, *rows)),
            Some(s) if s.buf == &c.buf && s.cols == *cols && i == 2 && cols % 32 == 0 && mixes_in_matvec3(s.ty, *ty) => {
                s.parts.push((c.word0, *rows));
                s.third = Some((*ty, *row_words));
            }
            Some(_) => return None,
        }
    }
    out
}

/// Uniforms of elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct EwParams {
    pub(super) count: u32,
    pub(super) width: u32,
    pub(super) head_dim: u32,
    pub(super) n_dims: u32,
    pub(super) neox: u32,
    pub(super) gelu: u32,
    pub(super) f0: f32,
    pub(super) count2: u32,
    pub(super) width2: u32,
}

const _: () = assert!(std::mem::size_of::<EwParams>() as u64 <= PARAM_BIND);

/// Runs a GPU future to completion natively; the browser cannot block.
pub(super) fn block_on<T>(what: &'static str, f: impl std::future::Future<Output = Result<T, GpuError>>) -> Result<T, GpuError> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = what;
        pollster::block_on(f)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(f);
        Err(GpuError::NeedsAsync(what))
    }
}

pub(super) fn shape_err(what: &str, a: usize, b: usize) -> ModelError {
    ModelError::BadHyperparameter { what: what.to_owned(), value: format!("{a} vs {b}") }
}

/// What a rope cos/sin table depends on (`factors`: the frequency-factor weight's address).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct RopeKey {
    pub(super) pos0: usize,
    pub(super) n_tokens: usize,
    pub(super) n_dims: usize,
    pub(super) freq_base: u32,
    pub(super) freq_scale: u32,
    pub(super) factors: Option<usize>,
}

/// Rope tables kept: a pass uses one per rope base (Gemma-3: local and global).
pub(super) const ROPE_TABLES: usize = 4;

impl GpuBackend {
    /// `x` rounded as ggml rounds activations for `mode` (act_quant.wgsl), into a new buffer.
    /// Mode 5 (Q8_1) also returns each block's sum correction (`[n_tokens, width / 32]`) for
    /// `min_fix`.
    /// matmul.wgsl's MV_SHUFFLE: 1 when the matvec's lanes of a row fit the adapter's least
    /// subgroup and the module has subgroup operations.
    pub(super) fn mv_shuffle(&self) -> u32 {
        let min = self.dev.info.subgroup_min_size;
        u32::from(matches!(self.reduce, webgguf_shaders::Reduce::Subgroup { .. }) && min > 0 && self.matvec.lanes() <= min)
    }

    /// How activations entering a product with a `ty` weight are rounded: `act_mode(ty)`, or
    /// not at all in the fast family.
    pub(super) fn act_mode_for(&self, ty: GgmlType) -> ActRound {
        match self.kernels {
            GpuKernels::Exact => act_mode(ty),
            GpuKernels::Fast => ActRound::None,
        }
    }

    pub(super) fn act_round(&mut self, x: &GpuAct, mode: ActRound) -> Result<(GpuAct, Option<PooledBuffer>), GpuError> {
        let n = x.n_tokens * x.width;
        let block = mode.block();
        if matches!(mode, ActRound::Q8_0 | ActRound::Q8K | ActRound::Q8_1) && x.width % block != 0 {
            return Err(GpuError::Shape(format!("rows of {} values are not whole blocks of {block}", x.width)));
        }
        let out = self.new_act(x.n_tokens, x.width)?;
        // Every mode binds the correction buffer (the entry point uses it for Q8_1).
        let sfix = self.alloc((n / 32 * 4) as u64)?;
        let params = [n as u32, mode as u32];
        self.dispatch(Family::ActQuant, "act_round", &[], &[(0, x.buf.get()), (2, sfix.get()), (3, out.buf.get())], 1, bytes_of(&params), n.div_ceil(block))?;
        Ok((out, (mode == ActRound::Q8_1).then_some(sfix)))
    }

    /// Adds the Q8_1 block-sum corrections of `act_round` with `ActRound::Q8_1` to `y = x · Wᵀ` (Q4_1, Q5_1).
    pub(super) fn min_fix(&mut self, w: &GpuWeight, n_tokens: usize, sfix: &PooledBuffer, y: &GpuAct) -> Result<(), GpuError> {
        let m = w.view()?;
        for c in &m.chunks {
            let params = MatParams::chunk(&m, c, n_tokens);
            self.dispatch(
                Family::Matmul,
                "min_fix",
                &[("WTYPE", m.ty.id())],
                &[(0, c.buf), (2, y.buf.get()), (4, sfix.get())],
                3,
                bytemuck::bytes_of(&params),
                (c.rows * n_tokens).div_ceil(64),
            )?;
        }
        Ok(())
    }

    /// Records `y = x · Wᵀ` (or `y += x · Wᵀ` with `accumulate`) for activations `x` already
    /// rounded; `sfix`: the Q8_1 corrections of Q4_1/Q5_1 (`act_round` with `ActRound::Q8_1`).
    pub(super) fn matmul_into(&mut self, w: &GpuWeight, x: &GpuAct, y: &GpuAct, sfix: Option<&PooledBuffer>, accumulate: bool) -> Result<(), GpuError> {
        let m = w.view()?;
        let tiled = x.n_tokens > MATVEC_MAX_TOKENS;
        if tiled && accumulate && sfix.is_some() {
            return Err(GpuError::Shape("a tiled Q4_1/Q5_1 matmul cannot accumulate (min_fix follows it)".into()));
        }
        let acc = u32::from(accumulate);
        let wtype = m.ty.id();
        let placeholder = self.placeholder.clone();
        for c in &m.chunks {
            let params = MatParams::chunk(&m, c, x.n_tokens);
            let (buf, rows) = (c.buf, c.rows);
            if tiled {
                let groups = rows.div_ceil(32) * x.n_tokens.div_ceil(32);
                let constants = [("WTYPE", wtype), ("ACCUMULATE", acc)];
                self.dispatch(
                    Family::Matmul,
                    "matmul_tiled",
                    &constants,
                    &[(0, buf), (1, x.buf.get()), (2, y.buf.get())],
                    3,
                    bytemuck::bytes_of(&params),
                    groups,
                )?;
            } else {
                let groups = (rows * x.n_tokens).div_ceil(self.matvec.rows_per_group());
                let constants = [
                    ("WTYPE", wtype),
                    ("MV_LANES", self.matvec.lanes()),
                    ("MV_SHUFFLE", self.mv_shuffle()),
                    ("ACCUMULATE", acc),
                    ("MIN_FIX", u32::from(sfix.is_some())),
                ];
                let s = sfix.map_or(&placeholder, |s| s.get());
                self.dispatch(
                    Family::Matmul,
                    "matvec",
                    &constants,
                    &[(0, buf), (1, x.buf.get()), (2, y.buf.get()), (4, s)],
                    3,
                    bytemuck::bytes_of(&params),
                    groups,
                )?;
            }
        }
        if let (true, Some(sfix)) = (tiled, sfix) {
            self.min_fix(w, x.n_tokens, sfix, y)?;
        }
        Ok(())
    }

    /// `matvec3`: up to three weights of one shared buffer times `x` (rounded for their type),
    /// one dispatch; `ys[i]` receives part `i`.
    fn matvec_shared(&mut self, s: &SharedBuffer<'_>, x: &GpuAct, ys: &[&GpuAct], sfix: Option<&PooledBuffer>) -> Result<(), GpuError> {
        let part = |i: usize| s.parts.get(i).copied().unwrap_or((0, 0));
        let (p0, p1, p2) = (part(0), part(1), part(2));
        let params = MatParams {
            rows: p0.1 as u32,
            cols: s.cols as u32,
            n: x.n_tokens as u32,
            row_words: s.row_words as u32,
            y_stride: p0.1 as u32,
            w_base: p0.0 as u32,
            rows1: p1.1 as u32,
            w_base1: p1.0 as u32,
            rows2: p2.1 as u32,
            w_base2: p2.0 as u32,
            row_words2: s.third.map_or(s.row_words, |t| t.1) as u32,
            ..MatParams::default()
        };
        let (placeholder, placeholder_out) = (self.placeholder.clone(), self.placeholder_out.clone());
        let y = |i: usize| ys.get(i).map_or(&placeholder_out, |y| y.buf.get());
        let all: usize = s.parts.iter().map(|p| p.1).sum();
        let groups = (all * x.n_tokens).div_ceil(self.matvec.rows_per_group());
        let constants = [
            ("WTYPE", s.ty.id()),
            ("WTYPE2", s.third.map_or(s.ty, |t| t.0).id()),
            ("MV_LANES", self.matvec.lanes()),
            ("MV_SHUFFLE", self.mv_shuffle()),
            ("MIN_FIX", u32::from(sfix.is_some())),
        ];
        let sf = sfix.map_or(&placeholder, |s| s.get());
        let bindings = [(0, s.buf), (1, x.buf.get()), (2, y(0)), (4, sf), (5, y(1)), (6, y(2))];
        self.dispatch(Family::Matmul, "matvec3", &constants, &bindings, 3, bytemuck::bytes_of(&params), groups)
    }

    /// Rope of `x` (and `y`, at the same positions) in one dispatch.
    fn rope_rows(
        &mut self,
        x: &mut GpuAct,
        y: Option<&mut GpuAct>,
        head_dim: usize,
        pos0: usize,
        rope: &RopeParams,
        factors: Option<&GpuWeight>,
    ) -> Result<(), ModelError> {
        for a in std::iter::once(&*x).chain(y.as_deref()) {
            if head_dim == 0 || a.width % head_dim != 0 || rope.n_dims % 2 != 0 || rope.n_dims > head_dim || a.n_tokens != x.n_tokens {
                return Err(shape_err("rope head_dim", a.width, head_dim));
            }
        }
        let freq_factors = match factors {
            Some(GpuWeight::Vector { host, .. }) if host.len() >= rope.n_dims / 2 => Some(host),
            Some(_) => return Err(GpuError::Shape("rope frequency factors".into()).into()),
            None => None,
        };
        let key = RopeKey {
            pos0,
            n_tokens: x.n_tokens,
            n_dims: rope.n_dims,
            freq_base: rope.freq_base.to_bits(),
            freq_scale: rope.freq_scale.to_bits(),
            factors: freq_factors.map(|f| f.as_ptr() as usize),
        };
        // Every layer ropes q and k at the same positions: one table per (positions, params).
        let b = match self.rope_tables.iter().find(|(k, _)| *k == key) {
            Some((_, b)) => b.clone(),
            None => {
                // cos/sin of every (row, pair) by the CPU's own code: bit-identical angles everywhere.
                let cpu_rope = crate::cpu::ops::Rope {
                    n_dims: rope.n_dims,
                    freq_base: rope.freq_base,
                    freq_scale: rope.freq_scale,
                    mode: crate::cpu::ops::RopeMode::Normal,
                    freq_factors: freq_factors.cloned(),
                };
                let mut table = Vec::with_capacity(x.n_tokens * rope.n_dims); // [n_tokens, n_dims/2, 2]
                for t in 0..x.n_tokens {
                    cpu_rope.for_each_angle(pos0 + t, |_, c, s| table.extend_from_slice(&[c, s]));
                }
                let b = self.dev.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("rope cos/sin"),
                    contents: bytes_of(&table),
                    usage: wgpu::BufferUsages::STORAGE,
                });
                if self.rope_tables.len() >= ROPE_TABLES {
                    self.rope_tables.remove(0);
                }
                self.rope_tables.push((key, b.clone()));
                b
            }
        };
        let pairs = |a: &GpuAct| a.n_tokens * (a.width / head_dim) * (rope.n_dims / 2);
        let count = pairs(x);
        let count2 = y.as_deref().map_or(0, pairs);
        let p = EwParams {
            count: count as u32,
            width: x.width as u32,
            count2: count2 as u32,
            width2: y.as_deref().map_or(0, |y| y.width as u32),
            head_dim: head_dim as u32,
            n_dims: rope.n_dims as u32,
            neox: u32::from(rope.kind == RopeKind::Neox),
            ..EwParams::default()
        };
        // (C is bound either way: the kernel declares it)
        let placeholder_out = self.placeholder_out.clone();
        let keys = y.as_deref().map_or(&placeholder_out, |y| y.buf.get());
        self.elementwise("rope", x.buf.get(), Some(&b), Some(keys), &p, count + count2)?;
        Ok(())
    }

    pub(super) fn elementwise(
        &mut self,
        entry: &'static str,
        a: &wgpu::Buffer,
        b: Option<&wgpu::Buffer>,
        c: Option<&wgpu::Buffer>,
        params: &EwParams,
        count: usize,
    ) -> Result<(), GpuError> {
        let mut bindings = vec![(0, a)];
        if let Some(b) = b {
            bindings.push((1, b));
        }
        if let Some(c) = c {
            bindings.push((2, c));
        }
        self.dispatch(Family::Elementwise, entry, &[], &bindings, 3, bytemuck::bytes_of(params), count.div_ceil(64))
    }
}

impl Backend for GpuBackend {
    type Weight = GpuWeight;
    type Act = GpuAct;
    type Cache = GpuCache;

    type Pending = PendingGpuWeight;

    fn expect_weights(&mut self, tensors: &[(&str, GgmlType, &[u64])]) -> Result<(), ModelError> {
        self.expect_gpu_weights(tensors)
    }

    fn begin_weight(&mut self, name: &str, ty: GgmlType, shape: &[u64]) -> Result<PendingGpuWeight, ModelError> {
        self.begin_gpu_weight(name, ty, shape)
    }

    fn write_weight(&mut self, w: &mut PendingGpuWeight, bytes: &[u8]) -> Result<(), ModelError> {
        self.write_gpu_weight(w, bytes)
    }

    fn finish_weight(&mut self, w: PendingGpuWeight) -> Result<GpuWeight, ModelError> {
        self.finish_gpu_weight(w)
    }

    fn new_cache(&mut self, cfg: &ModelConfig, kv: KvType, n_ctx: usize, recent: usize) -> Result<GpuCache, ModelError> {
        self.new_gpu_cache(cfg, kv, n_ctx, recent)
    }

    fn embed(&mut self, table: &GpuWeight, ids: &[u32], scale: Option<f32>) -> Result<GpuAct, ModelError> {
        let GpuWeight::Matrix { ty, rows, cols, row_words, chunks } = table else {
            return Err(GpuError::Shape("embedding table is a vector".into()).into());
        };
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= *rows) {
            return Err(ModelError::TokenOutOfRange { id, n_vocab: *rows });
        }
        let out = self.new_act(ids.len(), *cols)?;
        let ids_buf = self.dev.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("ids"),
            contents: bytes_of(ids),
            usage: wgpu::BufferUsages::STORAGE,
        });
        for c in chunks {
            if !ids.iter().any(|&id| (c.row0..c.row0 + c.rows).contains(&(id as usize))) {
                continue;
            }
            let params: [u32; 8] = [
                *cols as u32,
                *row_words as u32,
                ids.len() as u32,
                c.row0 as u32,
                c.rows as u32,
                u32::from(scale.is_some()),
                scale.unwrap_or(1.0).to_bits(),
                c.word0 as u32,
            ];
            self.dispatch(
                Family::Embed,
                "embed",
                &[("WTYPE", ty.id())],
                &[(0, &c.buf), (1, &ids_buf), (2, out.buf.get())],
                3,
                bytes_of(&params),
                (ids.len() * cols / 4).div_ceil(64),
            )?;
        }
        Ok(out)
    }

    fn rms_norm(&mut self, x: &GpuAct, weight: &GpuWeight, eps: f32) -> Result<GpuAct, ModelError> {
        let GpuWeight::Vector { buf, len, .. } = weight else {
            return Err(GpuError::Shape("rms_norm weight is a matrix".into()).into());
        };
        if *len == 0 || x.width % len != 0 {
            return Err(shape_err("rms_norm width", x.width, *len));
        }
        let out = self.new_act(x.n_tokens, x.width)?;
        let groups = x.n_tokens * x.width / len;
        let params = [*len as u32, groups as u32, eps.to_bits()];
        let buf = buf.clone();
        self.dispatch(Family::Norm, "rms_norm", &[], &[(0, x.buf.get()), (1, &buf), (2, out.buf.get())], 3, bytes_of(&params), groups)?;
        Ok(out)
    }

    fn matmul(&mut self, w: &GpuWeight, x: &GpuAct) -> Result<GpuAct, ModelError> {
        let [y] = self.matmuls([w], x)?;
        Ok(y)
    }

    fn matmuls<const N: usize>(&mut self, ws: [&GpuWeight; N], x: &GpuAct) -> Result<[GpuAct; N], ModelError> {
        let mut shapes = Vec::with_capacity(ws.len());
        for w in ws {
            let m = w.view()?;
            if m.cols != x.width {
                return Err(shape_err("matmul inner dimension", m.cols, x.width));
            }
            shapes.push((self.act_mode_for(m.ty), m.rows));
        }
        // Weights that round their input the same way share one rounded copy (q/k/v, gate/up).
        let mut rounded: Vec<(ActRound, GpuAct, Option<PooledBuffer>)> = Vec::new();
        for &(mode, _) in &shapes {
            if mode != ActRound::None && !rounded.iter().any(|r| r.0 == mode) {
                let (xr, sfix) = self.act_round(x, mode)?;
                rounded.push((mode, xr, sfix));
            }
        }
        let input = |mode: ActRound| match rounded.iter().find(|r| r.0 == mode) {
            Some((_, xr, sfix)) => (xr, sfix.as_ref()),
            None => (x, None),
        };
        let mut out = Vec::with_capacity(ws.len());
        for &(_, rows) in &shapes {
            out.push(self.new_act(x.n_tokens, rows)?);
        }
        // Runs of consecutive weights in one shared buffer (q/k/v placed together at load) are
        // one `matvec3` dispatch in decode; the rest one matmul each.
        let mut i = 0;
        while i < N {
            let mut j = i + 1;
            if x.n_tokens <= MATVEC_MAX_TOKENS {
                while j < N && j - i < 3 && shared_buffer(&ws[i..=j]).is_some() {
                    j += 1;
                }
            }
            let (xi, sfix) = input(shapes[i].0);
            match shared_buffer(&ws[i..j]) {
                Some(s) if j - i > 1 => {
                    let ys: Vec<&GpuAct> = out[i..j].iter().collect();
                    self.matvec_shared(&s, xi, &ys, sfix)?;
                }
                _ => self.matmul_into(ws[i], xi, &out[i], sfix, false)?,
            }
            i = j;
        }
        crate::model::backend::outputs_array(out)
    }

    fn gate_up_glu(&mut self, gate: &GpuWeight, up: &GpuWeight, x: &GpuAct, act: Activation) -> Result<GpuAct, ModelError> {
        let fused = match shared_buffer(&[gate, up]) {
            Some(s) if x.n_tokens <= MATVEC_MAX_TOKENS && s.third.is_none() && s.parts[0].1 == s.parts[1].1 && s.cols == x.width => Some(s),
            _ => None,
        };
        let Some(s) = fused else {
            let [g, u] = self.matmuls([gate, up], x)?;
            return self.glu(&g, &u, act);
        };
        let mode = self.act_mode_for(s.ty);
        let rounded = if mode == ActRound::None { None } else { Some(self.act_round(x, mode)?) };
        let (xi, sfix) = rounded.as_ref().map_or((x, None), |(xr, sf)| (xr, sf.as_ref()));
        let rows = s.parts[0].1;
        let y = self.new_act(x.n_tokens, rows)?;
        let params = MatParams {
            rows: rows as u32,
            cols: s.cols as u32,
            n: x.n_tokens as u32,
            row_words: s.row_words as u32,
            y_stride: rows as u32,
            w_base: s.parts[0].0 as u32,
            w_base1: s.parts[1].0 as u32,
            ..MatParams::default()
        };
        let placeholder = self.placeholder.clone();
        let sf = sfix.map_or(&placeholder, |s| s.get());
        let constants = [
            ("WTYPE", s.ty.id()),
            ("MV_LANES", self.matvec.lanes()),
            ("MV_SHUFFLE", self.mv_shuffle()),
            ("MIN_FIX", u32::from(sfix.is_some())),
            ("GELU", u32::from(act == Activation::GeluTanh)),
        ];
        let groups = (rows * x.n_tokens).div_ceil(self.matvec.rows_per_group());
        self.dispatch(
            Family::Matmul,
            "matvec_glu",
            &constants,
            &[(0, s.buf), (1, xi.buf.get()), (2, y.buf.get()), (4, sf)],
            3,
            bytemuck::bytes_of(&params),
            groups,
        )?;
        Ok(y)
    }

    fn matmul_add(&mut self, w: &GpuWeight, x: &GpuAct, acc: &mut GpuAct) -> Result<(), ModelError> {
        let (ty, rows, cols) = {
            let m = w.view()?;
            (m.ty, m.rows, m.cols)
        };
        let mode = self.act_mode_for(ty);
        if mode == ActRound::Q8_1 && x.n_tokens > MATVEC_MAX_TOKENS {
            // the tiled Q4_1/Q5_1 matmul is followed by min_fix: add afterwards
            let [y] = self.matmuls([w], x)?;
            return self.add(acc, &y);
        }
        if cols != x.width || rows != acc.width || x.n_tokens != acc.n_tokens {
            return Err(shape_err("matmul_add shapes", rows * x.n_tokens, acc.width * acc.n_tokens));
        }
        if mode == ActRound::None {
            self.matmul_into(w, x, acc, None, true)?;
        } else {
            let (xr, sfix) = self.act_round(x, mode)?;
            self.matmul_into(w, &xr, acc, sfix.as_ref(), true)?;
        }
        Ok(())
    }

    fn add_bias(&mut self, x: &mut GpuAct, bias: &GpuWeight) -> Result<(), ModelError> {
        let GpuWeight::Vector { buf, len, .. } = bias else {
            return Err(GpuError::Shape("bias is a matrix".into()).into());
        };
        if *len != x.width {
            return Err(shape_err("bias width", *len, x.width));
        }
        let n = x.n_tokens * x.width;
        let p = EwParams { count: n as u32, width: x.width as u32, ..EwParams::default() };
        let buf = buf.clone();
        self.elementwise("add_bias", x.buf.get(), Some(&buf), None, &p, n)?;
        Ok(())
    }

    fn add(&mut self, x: &mut GpuAct, y: &GpuAct) -> Result<(), ModelError> {
        if x.n_tokens * x.width != y.n_tokens * y.width {
            return Err(shape_err("add", x.n_tokens * x.width, y.n_tokens * y.width));
        }
        let n = x.n_tokens * x.width;
        let p = EwParams { count: n as u32, ..EwParams::default() };
        self.elementwise("add", x.buf.get(), Some(y.buf.get()), None, &p, n)?;
        Ok(())
    }

    fn rope(&mut self, x: &mut GpuAct, head_dim: usize, pos0: usize, rope: &RopeParams, factors: Option<&GpuWeight>) -> Result<(), ModelError> {
        self.rope_rows(x, None, head_dim, pos0, rope, factors)
    }

    fn rope_qk(
        &mut self,
        q: &mut GpuAct,
        k: &mut GpuAct,
        head_dim: usize,
        pos0: usize,
        rope: &RopeParams,
        factors: Option<&GpuWeight>,
    ) -> Result<(), ModelError> {
        self.rope_rows(q, Some(k), head_dim, pos0, rope, factors)
    }

    fn glu(&mut self, gate: &GpuAct, up: &GpuAct, act: Activation) -> Result<GpuAct, ModelError> {
        if gate.n_tokens * gate.width != up.n_tokens * up.width {
            return Err(shape_err("glu", gate.n_tokens * gate.width, up.n_tokens * up.width));
        }
        let out = self.new_act(gate.n_tokens, gate.width)?;
        let n = gate.n_tokens * gate.width;
        let p = EwParams { count: n as u32, gelu: u32::from(act == Activation::GeluTanh), ..EwParams::default() };
        self.elementwise("glu", gate.buf.get(), Some(up.buf.get()), Some(out.buf.get()), &p, n)?;
        Ok(out)
    }

    fn attention(
        &mut self,
        cache: &mut GpuCache,
        cfg: &ModelConfig,
        layer: usize,
        q: &GpuAct,
        k: &GpuAct,
        v: &GpuAct,
        pos0: usize,
    ) -> Result<GpuAct, ModelError> {
        self.gpu_attention(cache, cfg, layer, q, k, v, pos0)
    }

    fn last_rows(&mut self, x: &GpuAct, n: usize) -> Result<GpuAct, ModelError> {
        let n = n.min(x.n_tokens);
        let out = self.new_act(n, x.width)?;
        let off = ((x.n_tokens - n) * x.width * 4) as u64;
        let bytes = out.bytes();
        self.encoder().copy_buffer_to_buffer(x.buf.get(), off, out.buf.get(), 0, bytes);
        Ok(out)
    }

    fn softcap(&mut self, x: &mut GpuAct, cap: f32) -> Result<(), ModelError> {
        let n = x.n_tokens * x.width;
        let p = EwParams { count: n as u32, f0: cap, ..EwParams::default() };
        self.elementwise("softcap", x.buf.get(), None, None, &p, n)?;
        Ok(())
    }

    fn read_host(&mut self, x: GpuAct) -> Result<Vec<f32>, ModelError> {
        let buf = x.buf.get().clone();
        let bytes = x.bytes();
        let out = block_on("reading logits", self.read_async(&buf, bytes))?;
        Ok(bytemuck::pod_collect_to_vec(&out))
    }

    fn argmax(&mut self, x: GpuAct) -> Result<u32, ModelError> {
        Ok(block_on("greedy argmax", self.argmax_async(&x))?)
    }

    fn argmax_on_device(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let i = &self.dev.info;
        format!(
            "gpu: {} ({}, {}), shader-f16 {}, subgroups {} (least size {}), {} kernels, {} matvec{}, max binding {} MiB, max buffer {} MiB, workgroup storage {} KiB",
            i.adapter,
            i.backend,
            i.device_type,
            i.shader_f16,
            i.subgroups,
            i.subgroup_min_size,
            self.kernels.name(),
            self.matvec.name(),
            if self.mv_shuffle() == 1 { " (lanes summed by shuffles)" } else { "" },
            i.max_storage_buffer_binding_size >> 20,
            i.max_buffer_size >> 20,
            i.max_compute_workgroup_storage_size >> 10
        )
    }
}
