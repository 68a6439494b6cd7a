//! The ops of the forward pass on the GPU: the [`Backend`] implementation (weights, the KV
//! cache and the matmuls delegate to `weights.rs`, `kv.rs` and `matmul.rs`), element-wise ops.
//!
//! Numerics follow the CPU backend: activations entering a weight matmul are first rounded to
//! the weight type's `vec_dot_type` (Q8_0 / Q8_K / F16 / BF16, `act_quant.wgsl`), queries for
//! quantized caches to Q8_0, GELU through the f16 table, rope angles built by repeated
//! multiplication. The GPU then differs from the CPU only in summation order.

use super::recorder::{bytes_of, GpuAct, GpuBackend, PARAM_BIND};
use super::{GpuCache, GpuWeight, PendingGpuWeight};
use crate::error::{GpuError, ModelError};
use crate::kv_cache::KvType;
use crate::model::{Activation, Backend, ModelConfig, RopeKind, RopeParams};
use crate::quant::GgmlType;
use webgguf_shaders::Family;
use wgpu::util::DeviceExt;

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

    fn resumable(&self, cache: &GpuCache, n: usize) -> usize {
        cache.copies.resume_point(n)
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
        self.gpu_matmuls(ws, x)
    }

    fn gate_up_glu(&mut self, gate: &GpuWeight, up: &GpuWeight, x: &GpuAct, act: Activation) -> Result<GpuAct, ModelError> {
        self.gpu_gate_up_glu(gate, up, x, act)
    }

    fn matmul_add(&mut self, w: &GpuWeight, x: &GpuAct, acc: &mut GpuAct) -> Result<(), ModelError> {
        self.gpu_matmul_add(w, x, acc)
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
