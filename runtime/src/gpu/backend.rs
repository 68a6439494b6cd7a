//! The WebGPU implementation of [`Backend`]: weights in the GPU block layout (`layout.rs`),
//! activations and the KV cache in device buffers, every op one or a few compute dispatches
//! recorded into one command encoder. Nothing is submitted until something is read back
//! (logits, or the 4-byte argmax), so a decode step is one submission.
//!
//! Numerics follow the CPU backend: activations entering a weight matmul are first rounded to
//! the weight type's `vec_dot_type` (Q8_0 / Q8_K / F16 / BF16, `act_quant.wgsl`), queries for
//! quantized caches to Q8_0, GELU through the f16 table, rope angles built by repeated
//! multiplication. The GPU then differs from the CPU only in summation order.

use super::device::GpuDevice;
use super::layout;
use super::readback::MapFuture;
use crate::error::{GpuError, ModelError};
use crate::kv_cache::{KvType, RecentRows};
use crate::model::{Activation, Backend, ModelConfig, RopeKind, RopeParams};
use crate::quant::GgmlType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use webgguf_shaders::{Family, Reduce};
use wgpu::util::DeviceExt;

/// Slots of 256 bytes in the uniform buffer per submission; more ops than this flush early.
const PARAM_SLOTS: usize = 2048;
const PARAM_SLOT: u64 = 256;
/// Uniform structs are at most this big (AttnParams: 23 words, padded).
const PARAM_BIND: u64 = 128;
/// At most this many bytes of attention scores per dispatch group (prefill is chunked).
pub(crate) const SCORES_BUDGET: u64 = 64 << 20;
/// Matmuls with at most this many tokens use the matvec kernel.
const MATVEC_MAX_TOKENS: usize = 4;
/// Output values per `matvec` workgroup (MV_ROWS in matmul.wgsl).
const MATVEC_ROWS: usize = 8;
/// Host staging when uploading a weight: repacked in pieces of about this many bytes.
pub(crate) const UPLOAD_PIECE: usize = 8 << 20;

/// A row-aligned piece of a weight matrix in one buffer (`[rows, row_words]` u32).
pub struct WeightChunk {
    buf: wgpu::Buffer,
    row0: usize,
    rows: usize,
}

/// A weight on the device: 1-D tensors (norms, biases, rope factors) as f32, matrices in the GPU
/// block layout, split into chunks no larger than the binding limit.
pub enum GpuWeight {
    /// `[len]` f32, with a host copy (rope frequency factors are read on the host)
    Vector {
        buf: wgpu::Buffer,
        len: usize,
        host: Vec<f32>,
    },
    Matrix {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        row_words: usize,
        chunks: Vec<WeightChunk>,
    },
}

/// A weight seen as a matrix: a vector is one F32 row.
struct MatrixView<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_words: usize,
    /// (buffer, first row, rows)
    chunks: Vec<(&'a wgpu::Buffer, usize, usize)>,
}

impl GpuWeight {
    fn view(&self) -> Result<MatrixView<'_>, GpuError> {
        Ok(match self {
            GpuWeight::Vector { buf, len, .. } => {
                MatrixView { ty: GgmlType::F32, rows: 1, cols: *len, row_words: layout::row_words(GgmlType::F32, *len)?, chunks: vec![(buf, 0, 1)] }
            }
            GpuWeight::Matrix { ty, rows, cols, row_words, chunks } => {
                MatrixView { ty: *ty, rows: *rows, cols: *cols, row_words: *row_words, chunks: chunks.iter().map(|c| (&c.buf, c.row0, c.rows)).collect() }
            }
        })
    }
}

/// A pooled storage buffer that goes back to its pool when dropped (`wgpu::Buffer` is a shared
/// handle: the pool keeps a clone).
pub struct PooledBuffer {
    buf: wgpu::Buffer,
    pool: Rc<RefCell<Pool>>,
}

impl PooledBuffer {
    fn get(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pool.try_borrow_mut() {
            p.free.entry(self.buf.size()).or_default().push(self.buf.clone());
        }
    }
}

/// Free buffers by size (sizes are powers of two). Reusing a buffer inside one command encoder is
/// safe: wgpu orders dispatches that touch the same buffer.
#[derive(Default)]
struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
}

/// Activations `[n_tokens, width]` f32 on the device.
pub struct GpuAct {
    /// `[n_tokens * width]` f32 (the buffer may be larger)
    buf: PooledBuffer,
    pub n_tokens: usize,
    pub width: usize,
}

impl GpuAct {
    fn bytes(&self) -> u64 {
        (self.n_tokens * self.width * 4) as u64
    }
}

/// The KV cache of one session: per layer one buffer, K rows then V rows (`attention.wgsl`).
pub struct GpuCache {
    ty: KvType,
    n_ctx: usize,
    n_kv_heads: usize,
    head_dim_k: usize,
    head_dim_v: usize,
    k_row_words: usize,
    v_row_words: usize,
    /// per layer: `[n_ctx, n_kv_heads, k_row_words]` then `[n_ctx, n_kv_heads, v_row_words]` u32,
    /// then for a type that offsets K the layer's K offset `[n_kv_heads · head_dim_k]` f32,
    /// then with f16 copies `[copies.slots(), n_kv_heads, head_dim_k / 2]` and
    /// `[copies.slots(), n_kv_heads, head_dim_v / 2]` u32 (f16 pairs)
    layers: Vec<wgpu::Buffer>,
    /// Which positions' rows the f16 copies hold (kv_cache.rs's bookkeeping; none unless
    /// quantized).
    copies: RecentRows,
}

impl GpuCache {
    /// Word offset of the V rows in a layer's buffer (after `[n_ctx][n_kv_heads]` K rows).
    fn v_base_words(&self) -> usize {
        self.n_ctx * self.n_kv_heads * self.k_row_words
    }

    /// Word offset of the K offset in a layer's buffer (after the V rows).
    fn offset_base_words(&self) -> usize {
        self.v_base_words() + self.n_ctx * self.n_kv_heads * self.v_row_words
    }

    /// Word offset of the copies' K rows (after the K offset).
    fn copies_k_words(&self) -> usize {
        self.offset_base_words() + if self.ty.offsets_k() { self.n_kv_heads * self.head_dim_k } else { 0 }
    }

    /// Word offset of the copies' V rows.
    fn copies_v_words(&self) -> usize {
        self.copies_k_words() + self.copies.slots() * self.n_kv_heads * self.head_dim_k / 2
    }
}

fn kv_type_id(ty: KvType) -> u32 {
    ty.ggml_type().id()
}

/// How activations are rounded before a matmul with a weight of type `ty` (act_quant.wgsl modes).
fn act_mode(ty: GgmlType) -> u32 {
    match ty.vec_dot_type() {
        GgmlType::F16 => 1,
        GgmlType::BF16 => 2,
        GgmlType::Q8_0 => 3,
        GgmlType::Q8_K => 4,
        GgmlType::Q8_1 => 5,
        _ => 0,
    }
}

type PipelineKey = (Family, &'static str, &'static str, u32);

pub struct GpuBackend {
    dev: GpuDevice,
    reduce: Reduce,
    modules: HashMap<Family, wgpu::ShaderModule>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
    encoder: Option<wgpu::CommandEncoder>,
    /// Uniform structs of the ops recorded since the last submission, 256 bytes apart.
    params: Vec<u8>,
    params_buf: wgpu::Buffer,
    pool: Rc<RefCell<Pool>>,
    staging: Option<wgpu::Buffer>,
    /// `[1]` u32, the argmax result
    argmax_out: wgpu::Buffer,
    dispatches: u64,
    /// Tests: fill every new activation buffer with [`SENTINEL`] words (checked after each op).
    pub(crate) sentinel: bool,
    /// Tests: a smaller binding limit, so weights split into several chunks.
    pub(crate) max_chunk_bytes: Option<u64>,
    /// `[<= UPLOAD_PIECE]` repacked words of the weight piece being uploaded
    upload_staged: Vec<u8>,
    /// Bytes written to weight buffers since the last submission.
    unsubmitted_upload: u64,
    /// The latest rope cos/sin tables (`[n_tokens, n_dims/2, 2]` f32), oldest first.
    rope_tables: Vec<(RopeKey, wgpu::Buffer)>,
}

/// Fill word of activation buffers in sentinel mode (a NaN: an unwritten output shows).
pub(crate) const SENTINEL: u32 = 0x7FC0_DEAD;

fn bytes_of<T: bytemuck::NoUninit>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl GpuBackend {
    pub fn new(dev: GpuDevice) -> GpuBackend {
        // Native wgpu enables subgroup operations through the device feature alone; browsers
        // would also need the directive, but wgpu's web backend never reports the feature.
        let reduce = if dev.info.subgroups { Reduce::Subgroup { directive: cfg!(target_arch = "wasm32") } } else { Reduce::Shared };
        let params_buf = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: PARAM_SLOTS as u64 * PARAM_SLOT,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let argmax_out = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("argmax"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        GpuBackend {
            dev,
            reduce,
            modules: HashMap::new(),
            pipelines: HashMap::new(),
            encoder: None,
            params: Vec::new(),
            params_buf,
            pool: Rc::default(),
            staging: None,
            argmax_out,
            dispatches: 0,
            sentinel: false,
            max_chunk_bytes: None,
            upload_staged: Vec::new(),
            unsubmitted_upload: 0,
            rope_tables: Vec::new(),
        }
    }

    /// Opens the default adapter (native only; use `GpuDevice::new_async` in the browser).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open() -> Result<GpuBackend, GpuError> {
        Ok(GpuBackend::new(GpuDevice::new()?))
    }

    pub fn device(&self) -> &GpuDevice {
        &self.dev
    }

    /// Compute dispatches recorded so far.
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches
    }

    fn pipeline(&mut self, family: Family, entry: &'static str, constant: &'static str, value: u32) -> wgpu::ComputePipeline {
        let key = (family, entry, constant, value);
        if let Some(p) = self.pipelines.get(&key) {
            return p.clone();
        }
        let reduce = self.reduce;
        let dev = &self.dev.device;
        let module = self.modules.entry(family).or_insert_with(|| {
            dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(family.name()),
                source: wgpu::ShaderSource::Wgsl(webgguf_shaders::source(family, reduce).into()),
            })
        });
        let constants = [(constant, f64::from(value))];
        let p = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: if constant.is_empty() { &[] } else { &constants },
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.pipelines.insert(key, p.clone());
        p
    }

    /// A storage buffer of at least `bytes` from the pool.
    fn alloc(&mut self, bytes: u64) -> Result<PooledBuffer, GpuError> {
        let size = bytes.max(256).next_power_of_two();
        if size > self.dev.max_binding() {
            return Err(GpuError::TooLarge { what: "activation buffer".into(), bytes, limit: self.dev.max_binding() });
        }
        if self.sentinel {
            // At least 16 sentinel words after the values.
            let words = vec![SENTINEL; ((bytes + 64).next_power_of_two() / 4) as usize];
            let buf = self.dev.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("act (sentinel)"),
                contents: bytes_of(&words),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            });
            return Ok(PooledBuffer { buf, pool: Rc::default() });
        }
        let reused = self.pool.borrow_mut().free.get_mut(&size).and_then(Vec::pop);
        let buf = match reused {
            Some(b) => b,
            None => self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("act"),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        Ok(PooledBuffer { buf, pool: self.pool.clone() })
    }

    fn new_act(&mut self, n_tokens: usize, width: usize) -> Result<GpuAct, GpuError> {
        let buf = self.alloc((n_tokens * width * 4) as u64)?;
        Ok(GpuAct { buf, n_tokens, width })
    }

    /// Uploads host activations (tests, and the CPU → GPU handover).
    pub fn upload(&mut self, data: &[f32], n_tokens: usize, width: usize) -> Result<GpuAct, GpuError> {
        if data.len() != n_tokens * width {
            return Err(GpuError::Shape(format!("{} values for {n_tokens}×{width}", data.len())));
        }
        // A new buffer initialised at creation: never touched by commands already recorded
        // (a queue write into a pooled buffer would land before them).
        let mut words: Vec<u32> = bytemuck::cast_slice(data).to_vec();
        if self.sentinel {
            words.resize(((data.len() * 4 + 64).next_power_of_two() / 4).max(64), SENTINEL);
        }
        let buf = self.dev.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("upload"),
            contents: bytes_of(&words),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        });
        Ok(GpuAct { buf: PooledBuffer { buf, pool: self.pool.clone() }, n_tokens, width })
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        let dev = &self.dev.device;
        self.encoder.get_or_insert_with(|| dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") }))
    }

    /// Writes the staged uniforms and submits everything recorded.
    pub fn flush(&mut self) {
        if !self.params.is_empty() {
            self.dev.queue.write_buffer(&self.params_buf, 0, &self.params);
            self.params.clear();
        }
        if let Some(e) = self.encoder.take() {
            self.dev.queue.submit([e.finish()]);
        }
    }

    /// Records one dispatch of `groups` workgroups (split over x and y above the per-dimension
    /// limit; kernels linearise the id and bounds-check). `bindings` pairs binding numbers with
    /// buffers; the uniform struct `params` goes to binding `param_binding`.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        family: Family,
        entry: &'static str,
        constant: (&'static str, u32),
        bindings: &[(u32, &wgpu::Buffer)],
        param_binding: u32,
        params: &[u8],
        groups: usize,
    ) -> Result<(), GpuError> {
        self.dev.check()?;
        if groups == 0 {
            return Ok(());
        }
        if self.params.len() as u64 >= PARAM_SLOTS as u64 * PARAM_SLOT {
            self.flush();
        }
        let pipeline = self.pipeline(family, entry, constant.0, constant.1);
        let offset = self.params.len() as u64;
        self.params.extend_from_slice(params);
        self.params.resize((offset + PARAM_SLOT) as usize, 0);
        let mut entries: Vec<wgpu::BindGroupEntry<'_>> =
            bindings.iter().map(|&(b, buf)| wgpu::BindGroupEntry { binding: b, resource: buf.as_entire_binding() }).collect();
        entries.push(wgpu::BindGroupEntry {
            binding: param_binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.params_buf, offset, size: wgpu::BufferSize::new(PARAM_BIND) }),
        });
        let bg =
            self.dev.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(entry), layout: &pipeline.get_bind_group_layout(0), entries: &entries });
        let max_x = self.dev.info.max_compute_workgroups_per_dimension.max(1) as usize;
        let x = groups.min(max_x);
        let y = groups.div_ceil(x);
        if y > max_x {
            return Err(GpuError::TooLarge { what: format!("{entry} dispatch"), bytes: groups as u64, limit: (max_x * max_x) as u64 });
        }
        let enc = self.encoder();
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x as u32, y as u32, 1);
        drop(pass);
        self.dispatches += 1;
        Ok(())
    }

    /// Copies `x` into a fresh activation buffer.
    fn copy_act(&mut self, x: &GpuAct) -> Result<GpuAct, GpuError> {
        let out = self.new_act(x.n_tokens, x.width)?;
        let bytes = x.bytes();
        self.encoder().copy_buffer_to_buffer(x.buf.get(), 0, out.buf.get(), 0, bytes);
        Ok(out)
    }

    /// Rounds `x` in place as ggml rounds activations for `mode` (act_quant.wgsl). Mode 5 (Q8_1)
    /// also returns each block's sum correction (`[n_tokens, width / 32]`) for `min_fix`.
    fn act_round(&mut self, x: &GpuAct, mode: u32) -> Result<Option<PooledBuffer>, GpuError> {
        let n = x.n_tokens * x.width;
        let block = match mode {
            3 | 5 => 32,
            4 => 256,
            _ => 64,
        };
        if mode >= 3 && x.width % block != 0 {
            return Err(GpuError::Shape(format!("rows of {} values are not whole blocks of {block}", x.width)));
        }
        // Every mode binds the correction buffer (the entry point uses it in mode 5).
        let sfix = self.alloc((n / 32 * 4) as u64)?;
        let params = [n as u32, mode];
        self.dispatch(Family::ActQuant, "act_round", ("", 0), &[(0, x.buf.get()), (2, sfix.get())], 1, bytes_of(&params), n.div_ceil(block))?;
        Ok((mode == 5).then_some(sfix))
    }

    /// Adds the Q8_1 block-sum corrections of `act_round` mode 5 to `y = x · Wᵀ` (Q4_1, Q5_1).
    fn min_fix(&mut self, w: &GpuWeight, n_tokens: usize, sfix: &PooledBuffer, y: &GpuAct) -> Result<(), GpuError> {
        let m = w.view()?;
        for (buf, row0, rows) in m.chunks {
            let params = [rows as u32, m.cols as u32, n_tokens as u32, m.row_words as u32, m.rows as u32, row0 as u32];
            self.dispatch(
                Family::Matmul,
                "min_fix",
                ("WTYPE", m.ty.id()),
                &[(0, buf), (2, y.buf.get()), (4, sfix.get())],
                3,
                bytes_of(&params),
                (rows * n_tokens).div_ceil(64),
            )?;
        }
        Ok(())
    }

    /// Records the matmul of `w` with activations `x` (already rounded) into `y`.
    fn matmul_into(&mut self, w: &GpuWeight, x: &GpuAct, y: &GpuAct) -> Result<(), GpuError> {
        let m = w.view()?;
        let (entry, tiled) = if x.n_tokens <= MATVEC_MAX_TOKENS { ("matvec", false) } else { ("matmul_tiled", true) };
        for (buf, row0, rows) in m.chunks {
            let params = [rows as u32, m.cols as u32, x.n_tokens as u32, m.row_words as u32, m.rows as u32, row0 as u32];
            let groups = if tiled { rows.div_ceil(32) * x.n_tokens.div_ceil(32) } else { (rows * x.n_tokens).div_ceil(MATVEC_ROWS) };
            self.dispatch(Family::Matmul, entry, ("WTYPE", m.ty.id()), &[(0, buf), (1, x.buf.get()), (2, y.buf.get())], 3, bytes_of(&params), groups)?;
        }
        Ok(())
    }

    fn elementwise(
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
        self.dispatch(Family::Elementwise, entry, ("", 0), &bindings, 3, bytemuck::bytes_of(params), count.div_ceil(64))
    }

    /// Reads `bytes` bytes of `buf` back (submitting everything recorded), awaiting the map.
    pub async fn read_async(&mut self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
        let size = bytes.div_ceil(4) * 4;
        if self.staging.as_ref().is_none_or(|s| s.size() < size) {
            self.staging = Some(self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: size.next_power_of_two(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let staging = self.staging.clone().ok_or_else(|| GpuError::Readback("no staging buffer".into()))?;
        self.encoder().copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        self.flush();
        let slice = staging.slice(..size);
        let fut = MapFuture::new(&slice);
        #[cfg(not(target_arch = "wasm32"))]
        self.dev
            .device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(std::time::Duration::from_secs(600)) })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        // A failed map is most often the symptom of a lost device: report the cause.
        if let Err(e) = fut.await {
            self.dev.check()?;
            return Err(e);
        }
        self.dev.check()?;
        let out = slice.get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?.to_vec();
        staging.unmap();
        Ok(out[..bytes as usize].to_vec())
    }

    /// Every stored K and V row of `layer`, `[pos][kv_head]` for all `n_ctx` positions, read back
    /// once and converted from the GPU's word layout to ggml's block bytes (as `KvCache::k_row`
    /// holds them): per 32 values a quantized group is its quant words then the f16 scale, a
    /// ggml block the scale then the quants (tests).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn cache_rows_as_ggml(&mut self, cache: &GpuCache, layer: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let buf = cache.layers[layer].clone();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(self.read_async(&buf, buf.size())).expect("readback"));
        let q = match cache.ty {
            KvType::F32 | KvType::F16 => None,
            KvType::Q8 => Some(8),
            KvType::Q4 => Some(4),
        };
        let as_ggml = |w: &[u32]| -> Vec<u8> {
            let Some(q) = q else { return bytemuck::cast_slice(w).to_vec() };
            w.chunks_exact(q + 1)
                .flat_map(|g| (g[q] as u16).to_le_bytes().into_iter().chain(bytemuck::cast_slice::<u32, u8>(&g[..q]).iter().copied()))
                .collect()
        };
        let (k, v) = words.split_at(cache.v_base_words());
        k.chunks_exact(cache.k_row_words)
            .zip(v.chunks_exact(cache.v_row_words))
            .take(cache.n_ctx * cache.n_kv_heads)
            .map(|(k, v)| (as_ggml(k), as_ggml(v)))
            .collect()
    }

    /// The f16 copies of `layer` the cache holds, by (position, KV head): K and V row bytes
    /// as `KvCache::recent_k_row` holds them (tests).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn cache_copies(&mut self, cache: &GpuCache, layer: usize) -> std::collections::HashMap<(usize, usize), (Vec<u8>, Vec<u8>)> {
        let buf = cache.layers[layer].clone();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(self.read_async(&buf, buf.size())).expect("readback"));
        let (wk, wv) = (cache.head_dim_k / 2, cache.head_dim_v / 2);
        let mut out = std::collections::HashMap::new();
        for p in 0..cache.n_ctx {
            let Some(slot) = cache.copies.kept(layer, p) else { continue };
            for h in 0..cache.n_kv_heads {
                let k = cache.copies_k_words() + (slot * cache.n_kv_heads + h) * wk;
                let v = cache.copies_v_words() + (slot * cache.n_kv_heads + h) * wv;
                out.insert((p, h), (bytemuck::cast_slice(&words[k..k + wk]).to_vec(), bytemuck::cast_slice(&words[v..v + wv]).to_vec()));
            }
        }
        out
    }

    /// The K offset of `layer` as stored (tests; empty for a type that does not offset K).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn cache_k_offset(&mut self, cache: &GpuCache, layer: usize) -> Vec<f32> {
        let buf = cache.layers[layer].clone();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&pollster::block_on(self.read_async(&buf, buf.size())).expect("readback"));
        words[cache.offset_base_words()..cache.copies_k_words()].iter().map(|w| f32::from_bits(*w)).collect()
    }

    /// Every word of the buffer behind `x`, including the tail past its values (tests).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn raw_words(&mut self, x: &GpuAct) -> Vec<u32> {
        let buf = x.buf.get().clone();
        let bytes = pollster::block_on(self.read_async(&buf, buf.size())).expect("readback");
        bytemuck::pod_collect_to_vec(&bytes)
    }

    /// Chunks a matrix weight was split into.
    pub fn chunk_count(w: &GpuWeight) -> usize {
        match w {
            GpuWeight::Vector { .. } => 1,
            GpuWeight::Matrix { chunks, .. } => chunks.len(),
        }
    }

    /// An activation matrix back on the host.
    pub async fn to_host_async(&mut self, x: &GpuAct) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_async(&x.buf.get().clone(), x.bytes()).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Index of the largest value of the last row of `x` (lowest index among ties), computed on
    /// the device: 4 bytes come back.
    pub async fn argmax_async(&mut self, x: &GpuAct) -> Result<u32, GpuError> {
        let params = [x.width as u32, ((x.n_tokens.max(1) - 1) * x.width) as u32];
        let out = self.argmax_out.clone();
        self.dispatch(Family::Argmax, "argmax", ("", 0), &[(0, x.buf.get()), (1, &out)], 2, bytes_of(&params), 1)?;
        let b = self.read_async(&out, 4).await?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Records one pass of the plain copy kernel over `words` u32 words (`webgguf bench`'s baseline).
    pub fn record_copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, words: usize) -> Result<(), GpuError> {
        let p = EwParams { count: words as u32, ..EwParams::default() };
        self.elementwise("copy", src, None, Some(dst), &p, words)
    }

    /// Waits for all submitted work (native); for timing.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish(&mut self) -> Result<(), GpuError> {
        self.flush();
        self.dev
            .device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(std::time::Duration::from_secs(600)) })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        self.dev.check()
    }

    /// A bare storage buffer (bench).
    pub fn storage_buffer(&self, bytes: u64) -> wgpu::Buffer {
        self.dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}

/// Uniforms of elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct EwParams {
    count: u32,
    width: u32,
    head_dim: u32,
    n_dims: u32,
    neox: u32,
    gelu: u32,
    f0: f32,
}

/// Uniforms of attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnParams {
    n: u32,
    t0: u32,
    n_heads: u32,
    n_kv_heads: u32,
    hdk: u32,
    hdv: u32,
    pos0: u32,
    n_kv: u32,
    window: u32,
    k_row_words: u32,
    v_row_words: u32,
    v_base: u32,
    scale: f32,
    offset_base: u32,
    inv_count: f32,
    sink: u32,
    recent: u32,
    sink_n: u32,
    ring_lo: u32,
    ring_hi: u32,
    copies_k: u32,
    copies_v: u32,
    stash_v: u32,
}

const _: () = assert!(std::mem::size_of::<AttnParams>() as u64 <= PARAM_BIND);
const _: () = assert!(std::mem::size_of::<EwParams>() as u64 <= PARAM_BIND);

/// Runs a GPU future to completion natively; the browser cannot block.
fn block_on<T>(what: &'static str, f: impl std::future::Future<Output = Result<T, GpuError>>) -> Result<T, GpuError> {
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

fn shape_err(what: &str, a: usize, b: usize) -> ModelError {
    ModelError::BadHyperparameter { what: what.to_owned(), value: format!("{a} vs {b}") }
}

/// A matrix being uploaded: its buffers exist; rows arrive in order. Host memory held: the
/// part of one row not yet complete (`carry`), plus [`UPLOAD_PIECE`] of repacked words while a
/// piece is written. 1-D tensors keep their (small) bytes in `carry` until finished.
pub struct PendingGpuWeight {
    name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    row_words: usize,
    /// Tensor bytes (GGUF layout) expected and received so far.
    bytes: u64,
    written: u64,
    /// Empty for a 1-D tensor.
    chunks: Vec<WeightChunk>,
    /// `[< row_bytes]` the start of the next row (a whole 1-D tensor)
    carry: Vec<u8>,
}

/// What a rope cos/sin table depends on (`factors`: the frequency-factor weight's address).
#[derive(Clone, Copy, PartialEq, Eq)]
struct RopeKey {
    pos0: usize,
    n_tokens: usize,
    n_dims: usize,
    freq_base: u32,
    freq_scale: u32,
    factors: Option<usize>,
}

/// Rope tables kept: a pass uses one per rope base (Gemma-3: local and global).
const ROPE_TABLES: usize = 4;

/// Uploads written but not yet submitted, above which a submission lets wgpu free its staging
/// copies (natively they are held until the next submit; the browser copies at writeBuffer).
const UNSUBMITTED_UPLOAD_LIMIT: u64 = 64 << 20;

impl GpuBackend {
    /// Repacks whole rows `src` (`[n, row_bytes]`, starting at row `row`) into `w`'s buffers in
    /// pieces of at most [`UPLOAD_PIECE`].
    fn upload_rows(&mut self, w: &PendingGpuWeight, mut row: usize, mut src: &[u8]) -> Result<(), ModelError> {
        let piece_rows = (UPLOAD_PIECE / (w.row_words * 4)).max(1);
        while !src.is_empty() {
            let Some(chunk) = w.chunks.iter().find(|c| row >= c.row0 && row < c.row0 + c.rows) else {
                return Err(ModelError::TensorRead { name: w.name.clone(), message: format!("row {row} is past the {} rows", w.rows) });
            };
            let n = piece_rows.min(chunk.row0 + chunk.rows - row).min(src.len() / w.row_bytes);
            let (piece, rest) = src.split_at(n * w.row_bytes);
            self.upload_staged.clear();
            layout::repack(w.ty, piece, &mut self.upload_staged)?;
            self.dev.queue.write_buffer(&chunk.buf, ((row - chunk.row0) * w.row_words * 4) as u64, &self.upload_staged);
            self.unsubmitted_upload += self.upload_staged.len() as u64;
            if self.unsubmitted_upload > UNSUBMITTED_UPLOAD_LIMIT {
                self.dev.queue.submit(std::iter::empty());
                self.unsubmitted_upload = 0;
            }
            row += n;
            src = rest;
        }
        Ok(())
    }

    fn upload_vector(&mut self, name: &str, v: &[f32]) -> GpuWeight {
        let buf = self.dev.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents: bytes_of(v),
            usage: wgpu::BufferUsages::STORAGE,
        });
        GpuWeight::Vector { buf, len: v.len(), host: v.to_vec() }
    }
}

impl Backend for GpuBackend {
    type Weight = GpuWeight;
    type Act = GpuAct;
    type Cache = GpuCache;

    type Pending = PendingGpuWeight;

    fn begin_weight(&mut self, name: &str, ty: GgmlType, shape: &[u64]) -> Result<PendingGpuWeight, ModelError> {
        // A new model may place its rope factors where an old one's were.
        self.rope_tables.clear();
        let bytes = crate::model::tensor_bytes(name, ty, shape)?;
        let cols = shape.first().copied().unwrap_or(1) as usize;
        let rows = shape.iter().skip(1).product::<u64>() as usize;
        let unsupported = || ModelError::UnsupportedTensorType { name: name.to_owned(), ty };
        let row_bytes = ty.row_bytes(cols as u64).map(|b| b as usize).ok_or_else(unsupported)?;
        if rows == 1 {
            // 1-D tensors (norms, biases) are dequantized to f32 at the end: keep their bytes.
            if !ty.is_supported() {
                return Err(unsupported());
            }
            return Ok(PendingGpuWeight {
                name: name.to_owned(),
                ty,
                rows,
                cols,
                row_bytes,
                bytes,
                written: 0,
                row_words: 0,
                chunks: Vec::new(),
                carry: Vec::new(),
            });
        }
        let row_words = layout::row_words(ty, cols).map_err(|_| unsupported())?;
        let limit = self.max_chunk_bytes.unwrap_or(self.dev.max_binding()).min(self.dev.max_binding());
        let rows_per_chunk = layout::rows_per_chunk(name, row_words, rows, limit)?;
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let buf = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size: (n * row_words * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            chunks.push(WeightChunk { buf, row0, rows: n });
            row0 += n;
        }
        // An allocation the device refused shows here rather than at the first op.
        self.dev.check()?;
        Ok(PendingGpuWeight { name: name.to_owned(), ty, rows, cols, row_bytes, bytes, written: 0, row_words, chunks, carry: Vec::new() })
    }

    fn write_weight(&mut self, w: &mut PendingGpuWeight, mut bytes: &[u8]) -> Result<(), ModelError> {
        let total = w.written + bytes.len() as u64;
        if total > w.bytes {
            return Err(ModelError::TensorRead { name: w.name.clone(), message: format!("{total} bytes written, the tensor has {}", w.bytes) });
        }
        let before = w.written;
        w.written = total;
        if w.chunks.is_empty() {
            w.carry.extend_from_slice(bytes);
            return Ok(());
        }
        // Rows are repacked whole: complete the row held back from the last piece first.
        let mut row = ((before - w.carry.len() as u64) / w.row_bytes as u64) as usize;
        if !w.carry.is_empty() {
            let take = (w.row_bytes - w.carry.len()).min(bytes.len());
            w.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if w.carry.len() == w.row_bytes {
                self.upload_rows(w, row, &w.carry)?;
                w.carry.clear();
                row += 1;
            }
        }
        let whole = bytes.len() / w.row_bytes * w.row_bytes;
        self.upload_rows(w, row, &bytes[..whole])?;
        w.carry.extend_from_slice(&bytes[whole..]);
        Ok(())
    }

    fn finish_weight(&mut self, w: PendingGpuWeight) -> Result<GpuWeight, ModelError> {
        if w.written != w.bytes {
            return Err(ModelError::TensorRead { name: w.name, message: format!("{} of {} bytes arrived", w.written, w.bytes) });
        }
        if w.chunks.is_empty() {
            let mut v = vec![0f32; w.cols];
            crate::quant::dequantize_row(w.ty, &w.carry, &mut v)?;
            return Ok(self.upload_vector(&w.name, &v));
        }
        self.dev.check()?;
        Ok(GpuWeight::Matrix { ty: w.ty, rows: w.rows, cols: w.cols, row_words: w.row_words, chunks: w.chunks })
    }

    fn new_cache(&mut self, cfg: &ModelConfig, kv: KvType, n_ctx: usize, recent: usize) -> Result<GpuCache, ModelError> {
        let (hdk, hdv) = (cfg.head_dim_k, cfg.head_dim_v);
        let bytes = layout::kv_layer_bytes(kv, cfg.n_kv_heads, hdk, hdv, n_ctx, recent, self.dev.max_binding())?;
        let k_row_words = layout::kv_row_words(kv, hdk);
        let v_row_words = layout::kv_row_words(kv, hdv);
        let copies = RecentRows::new(kv, cfg.n_layers, n_ctx, recent);
        let layers = (0..cfg.n_layers)
            .map(|_| {
                self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kv"),
                    size: bytes,
                    // COPY_SRC: tests read the stored rows back (cache_rows_as_ggml)
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            })
            .collect();
        self.dev.check()?;
        Ok(GpuCache { ty: kv, n_ctx, n_kv_heads: cfg.n_kv_heads, head_dim_k: hdk, head_dim_v: hdv, k_row_words, v_row_words, layers, copies })
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
            let params: [u32; 7] =
                [*cols as u32, *row_words as u32, ids.len() as u32, c.row0 as u32, c.rows as u32, u32::from(scale.is_some()), scale.unwrap_or(1.0).to_bits()];
            self.dispatch(
                Family::Embed,
                "embed",
                ("WTYPE", ty.id()),
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
        self.dispatch(Family::Norm, "rms_norm", ("", 0), &[(0, x.buf.get()), (1, &buf), (2, out.buf.get())], 3, bytes_of(&params), groups)?;
        Ok(out)
    }

    fn matmul(&mut self, w: &GpuWeight, x: &GpuAct) -> Result<GpuAct, ModelError> {
        let (ty, rows, cols) = {
            let m = w.view()?;
            (m.ty, m.rows, m.cols)
        };
        if cols != x.width {
            return Err(shape_err("matmul inner dimension", cols, x.width));
        }
        let mode = act_mode(ty);
        let y = self.new_act(x.n_tokens, rows)?;
        if mode == 0 {
            self.matmul_into(w, x, &y)?;
        } else {
            let xr = self.copy_act(x)?;
            let sfix = self.act_round(&xr, mode)?;
            self.matmul_into(w, &xr, &y)?;
            if let Some(sfix) = sfix {
                self.min_fix(w, x.n_tokens, &sfix, &y)?;
            }
        }
        Ok(y)
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
        if head_dim == 0 || x.width % head_dim != 0 || rope.n_dims % 2 != 0 || rope.n_dims > head_dim {
            return Err(shape_err("rope head_dim", x.width, head_dim));
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
        let count = x.n_tokens * (x.width / head_dim) * (rope.n_dims / 2);
        let p = EwParams {
            count: count as u32,
            width: x.width as u32,
            head_dim: head_dim as u32,
            n_dims: rope.n_dims as u32,
            neox: u32::from(rope.kind == RopeKind::Neox),
            ..EwParams::default()
        };
        self.elementwise("rope", x.buf.get(), Some(&b), None, &p, count)?;
        Ok(())
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
        let n = q.n_tokens;
        if pos0 + n > cache.n_ctx {
            return Err(ModelError::ContextFull { pos: pos0 + n, n_ctx: cache.n_ctx });
        }
        let (hdk, hdv, nkv) = (cache.head_dim_k, cache.head_dim_v, cache.n_kv_heads);
        if q.width != cfg.n_heads * hdk || k.width != nkv * hdk || v.width != nkv * hdv || cfg.n_heads % nkv != 0 {
            return Err(shape_err("attention widths", q.width, cfg.n_heads * hdk));
        }
        let kv = cache.layers.get(layer).ok_or_else(|| shape_err("attention layer", layer, cache.layers.len()))?.clone();
        if cache.ty.rotates() && hdv > 64 * 32 {
            // attn_softmax_v rotates a head's output back with one invocation per group of 32
            return Err(shape_err("attention head_dim_v for a rotated cache (at most 2048)", hdv, 64 * 32));
        }
        let ty = kv_type_id(cache.ty);
        let window = if cfg.layer_is_swa.get(layer).copied().unwrap_or(false) { cfg.sliding_window.unwrap_or(0) } else { 0 };
        let mut p = AttnParams {
            n: n as u32,
            t0: 0,
            n_heads: cfg.n_heads as u32,
            n_kv_heads: nkv as u32,
            hdk: hdk as u32,
            hdv: hdv as u32,
            pos0: pos0 as u32,
            n_kv: (pos0 + n) as u32,
            window: window as u32,
            k_row_words: cache.k_row_words as u32,
            v_row_words: cache.v_row_words as u32,
            v_base: cache.v_base_words() as u32,
            scale: cfg.attn_scale,
            offset_base: cache.offset_base_words() as u32,
            inv_count: if n > 1 { 1.0 / (n - 1) as f32 } else { 0.0 },
            ..AttnParams::default()
        };
        // f16 copies: what the layer holds before this pass, and the pass's own rows in `stash`
        // ([n][nkv][hdk / 2] then [n][nkv][hdv / 2] words; one placeholder word without copies)
        let copies = cache.copies.recent > 0;
        let (sink_n, (ring_lo, ring_hi)) = cache.copies.held(layer);
        (p.sink, p.recent, p.sink_n, p.ring_lo, p.ring_hi) =
            (cache.copies.sink as u32, cache.copies.recent as u32, sink_n as u32, ring_lo as u32, ring_hi as u32);
        (p.copies_k, p.copies_v, p.stash_v) = (cache.copies_k_words() as u32, cache.copies_v_words() as u32, (n * nkv * hdk / 2) as u32);
        let stash = self.alloc(if copies { (n * nkv * (hdk + hdv) / 2 * 4) as u64 } else { 4 })?;
        if cache.ty.offsets_k() && pos0 == 0 {
            // a pass from position 0 starts a sequence: its K offset first (kv_cache::k_offset)
            self.dispatch(Family::Attention, "kv_offset", ("KVTYPE", ty), &[(0, &kv), (1, k.buf.get())], 5, bytemuck::bytes_of(&p), (nkv * hdk).div_ceil(64))?;
        }
        let groups_per_tok = nkv * (hdk / 32 + hdv / 32);
        self.dispatch(
            Family::Attention,
            "kv_store",
            ("KVTYPE", ty),
            &[(0, &kv), (1, k.buf.get()), (2, v.buf.get()), (6, stash.get())],
            5,
            bytemuck::bytes_of(&p),
            (n * groups_per_tok).div_ceil(64),
        )?;
        // Queries as the CPU's integer dot products see them for a quantized cache (rotated
        // first when the cache stores rotated rows), in one pass.
        let qr;
        let q = if cache.ty.is_quantized() {
            qr = self.new_act(n, q.width)?;
            let groups = n * q.width / 32;
            let mut pq = p;
            pq.n = groups as u32;
            self.dispatch(
                Family::Attention,
                "attn_prepare_q",
                ("KVTYPE", ty),
                &[(1, q.buf.get()), (4, qr.buf.get())],
                5,
                bytemuck::bytes_of(&pq),
                groups.div_ceil(64),
            )?;
            &qr
        } else {
            q
        };
        let out = self.new_act(n, cfg.n_heads * hdv)?;
        let n_kv = pos0 + n;
        let per_token = (cfg.n_heads * n_kv * 4) as u64;
        let chunk = ((SCORES_BUDGET.min(self.dev.max_binding()) / per_token) as usize).clamp(1, n);
        let scores = self.alloc(per_token * chunk as u64)?;
        let mut t0 = 0;
        while t0 < n {
            let m = chunk.min(n - t0);
            p.n = m as u32;
            p.t0 = t0 as u32;
            self.dispatch(
                Family::Attention,
                "attn_scores",
                ("KVTYPE", ty),
                &[(0, &kv), (1, q.buf.get()), (3, scores.get()), (6, stash.get())],
                5,
                bytemuck::bytes_of(&p),
                (m * cfg.n_heads * n_kv).div_ceil(64),
            )?;
            self.dispatch(
                Family::Attention,
                "attn_softmax_v",
                ("KVTYPE", ty),
                &[(0, &kv), (3, scores.get()), (4, out.buf.get()), (6, stash.get())],
                5,
                bytemuck::bytes_of(&p),
                m * cfg.n_heads,
            )?;
            t0 += m;
        }
        // the rows the copies keep move to their slots (after the pass's queries read them)
        for range in cache.copies.keep(layer, pos0, n) {
            if !range.is_empty() {
                (p.t0, p.n) = ((range.start - pos0) as u32, range.len() as u32);
                let words = range.len() * nkv * (hdk + hdv) / 2;
                self.dispatch(Family::Attention, "kv_keep", ("KVTYPE", ty), &[(0, &kv), (6, stash.get())], 5, bytemuck::bytes_of(&p), words.div_ceil(64))?;
            }
        }
        // (a rotating cache's output left attn_softmax_v rotated back)
        Ok(out)
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
            "gpu: {} ({}, {}), shader-f16 {}, subgroups {}, max binding {} MiB, max buffer {} MiB, workgroup storage {} KiB",
            i.adapter,
            i.backend,
            i.device_type,
            i.shader_f16,
            i.subgroups,
            i.max_storage_buffer_binding_size >> 20,
            i.max_buffer_size >> 20,
            i.max_compute_workgroup_storage_size >> 10
        )
    }
}
