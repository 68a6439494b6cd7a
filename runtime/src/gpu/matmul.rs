//! The weight products on the GPU (matmul.wgsl, act_quant.wgsl): activations rounded as ggml
//! rounds them (`act_round`), `matvec` / `matmul_tiled` of one weight, `matvec3` and `matvec_glu`
//! for weights placed in one buffer (q/k/v, gate/up), and the Q4_1/Q5_1 `min_fix`. The
//! [`Backend`] matmul methods in `ops.rs` call the `gpu_*` methods here.

use super::ops::{shape_err, GpuKernels};
use super::recorder::{bytes_of, GpuAct, GpuBackend, PooledBuffer, PARAM_BIND};
use super::weights::{ChunkView, MatrixView};
use super::GpuWeight;
use crate::error::{GpuError, ModelError};
use crate::model::{Activation, Backend};
use crate::quant::GgmlType;
use webgguf_shaders::{ActRound, Family};

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

impl GpuBackend {
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

    /// `x` rounded as ggml rounds activations for `mode` (act_quant.wgsl), into a new buffer.
    /// Mode 5 (Q8_1) also returns each block's sum correction (`[n_tokens, width / 32]`) for
    /// `min_fix`.
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

    /// [`Backend::matmuls`]: one `act_round` per distinct rounding, runs of weights sharing a
    /// buffer as one `matvec3` in decode, the rest one matmul each.
    pub(super) fn gpu_matmuls<const N: usize>(&mut self, ws: [&GpuWeight; N], x: &GpuAct) -> Result<[GpuAct; N], ModelError> {
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

    /// [`Backend::gate_up_glu`]: one `matvec_glu` in decode when gate and up share a buffer.
    pub(super) fn gpu_gate_up_glu(&mut self, gate: &GpuWeight, up: &GpuWeight, x: &GpuAct, act: Activation) -> Result<GpuAct, ModelError> {
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

    /// [`Backend::matmul_add`]: the product accumulated into `acc` by the matmul itself.
    pub(super) fn gpu_matmul_add(&mut self, w: &GpuWeight, x: &GpuAct, acc: &mut GpuAct) -> Result<(), ModelError> {
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
}
