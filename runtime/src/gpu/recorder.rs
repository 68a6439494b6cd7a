//! The GPU context and command recorder: pipelines (built once per kernel and override
//! constants), the activation buffer pool, the uniform buffer, bind groups (cached), and the
//! one command encoder every op records into, with dispatches sharing one compute pass until a
//! copy or a submission needs the encoder. Nothing is submitted until something is read back
//! (logits, or the 4-byte argmax), so a decode step is one submission and one compute pass.

use super::device::GpuDevice;
use super::ops::{EwParams, GpuKernels, MatvecLayout, RopeKey};
use super::readback::MapFuture;
use crate::error::GpuError;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use webgguf_shaders::{Family, Reduce};
use wgpu::util::DeviceExt;

/// Slots of 256 bytes in the uniform buffer per submission; more ops than this flush early.
pub(super) const PARAM_SLOTS: usize = 2048;
pub(super) const PARAM_SLOT: u64 = 256;
/// Uniform structs are at most this big (AttnParams: 23 words, padded).
pub(super) const PARAM_BIND: u64 = 128;

/// A pooled storage buffer that goes back to its pool when dropped (`wgpu::Buffer` is a shared
/// handle: the pool keeps a clone).
pub struct PooledBuffer {
    pub(super) buf: wgpu::Buffer,
    pub(super) pool: Rc<RefCell<Pool>>,
}

impl PooledBuffer {
    pub(super) fn get(&self) -> &wgpu::Buffer {
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
pub(super) struct Pool {
    pub(super) free: HashMap<u64, Vec<wgpu::Buffer>>,
}

/// Activations `[n_tokens, width]` f32 on the device.
pub struct GpuAct {
    /// `[n_tokens * width]` f32 (the buffer may be larger)
    pub(super) buf: PooledBuffer,
    pub n_tokens: usize,
    pub width: usize,
}

impl GpuAct {
    pub(super) fn bytes(&self) -> u64 {
        (self.n_tokens * self.width * 4) as u64
    }
}

/// Override constants of a pipeline: up to six (name, value) pairs, unused ones `("", 0)`.
pub(super) type Constants = [(&'static str, u32); 6];
pub(super) type PipelineKey = (Family, &'static str, Constants);

/// A bind group's identity: pipeline, (binding, buffer) pairs, uniform offset.
pub(super) type BindKey = (wgpu::ComputePipeline, Vec<(u32, wgpu::Buffer)>, u64);

/// Bind groups cached before the cache is emptied (a decode step of a 32-layer model records
/// about 800 dispatches).
pub(super) const BIND_GROUPS_KEPT: usize = 4096;

pub struct GpuBackend {
    pub(super) dev: GpuDevice,
    pub(super) reduce: Reduce,
    pub(super) modules: HashMap<Family, wgpu::ShaderModule>,
    pub(super) pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
    pub(super) encoder: Option<wgpu::CommandEncoder>,
    /// The compute pass open on `encoder`: dispatches go into one pass until a copy or a
    /// submission needs the encoder (wgpu orders the dispatches inside it by their bindings).
    pub(super) pass: Option<wgpu::ComputePass<'static>>,
    /// Bind groups by pipeline, buffers and uniform slot: a decode step records the same
    /// dispatches on the same pooled buffers every token. Cleared at [`BIND_GROUPS_KEPT`] and
    /// when a model starts loading (entries keep their buffers alive).
    pub(super) bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    /// Uniform structs of the ops recorded since the last submission, 256 bytes apart.
    pub(super) params: Vec<u8>,
    pub(super) params_buf: wgpu::Buffer,
    pub(super) pool: Rc<RefCell<Pool>>,
    pub(super) staging: Option<wgpu::Buffer>,
    /// `[4]` f32, bound where a kernel declares a buffer the dispatch does not read
    pub(super) placeholder: wgpu::Buffer,
    /// `[4]` f32, bound where a kernel declares an output the dispatch does not write (one
    /// buffer may not be bound read-only and writable in one dispatch)
    pub(super) placeholder_out: wgpu::Buffer,
    /// `[1]` u32, the argmax result
    pub(super) argmax_out: wgpu::Buffer,
    pub(super) dispatches: u64,
    pub(super) passes: u64,
    /// The `matvec` shape used ([`MatvecLayout::for_device`] unless set).
    pub matvec: MatvecLayout,
    /// The weight products' arithmetic ([`GpuKernels::for_device`] unless set).
    pub kernels: GpuKernels,
    /// Tests: fill every new activation buffer with [`SENTINEL`] words (checked after each op).
    pub(crate) sentinel: bool,
    /// Tests: a smaller binding limit, so weights split into several chunks.
    pub(crate) max_chunk_bytes: Option<u64>,
    /// `[<= UPLOAD_PIECE]` repacked words of the weight piece being uploaded
    pub(super) upload_staged: Vec<u8>,
    /// Bytes written to weight buffers since the last submission.
    pub(super) unsubmitted_upload: u64,
    /// Places reserved for expected weights in buffers shared with the weights they are read
    /// with, by tensor name (`expect_gpu_weights`).
    pub(super) slab_places: HashMap<String, super::weights::SlabPlace>,
    /// The latest rope cos/sin tables (`[n_tokens, n_dims/2, 2]` f32), oldest first.
    pub(super) rope_tables: Vec<(RopeKey, wgpu::Buffer)>,
}

/// Fill word of activation buffers in sentinel mode (a NaN: an unwritten output shows).
pub(crate) const SENTINEL: u32 = 0x7FC0_DEAD;

pub(super) fn bytes_of<T: bytemuck::NoUninit>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl GpuBackend {
    pub fn new(dev: GpuDevice) -> GpuBackend {
        let matvec = MatvecLayout::for_device(&dev.info.device_type);
        let kernels = GpuKernels::for_device(&dev.info.device_type);
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
        let placeholder = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let placeholder_out = dev.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("placeholder out"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        GpuBackend {
            placeholder,
            placeholder_out,
            dev,
            reduce,
            modules: HashMap::new(),
            pipelines: HashMap::new(),
            encoder: None,
            pass: None,
            bind_groups: HashMap::new(),
            params: Vec::new(),
            params_buf,
            pool: Rc::default(),
            staging: None,
            argmax_out,
            dispatches: 0,
            passes: 0,
            matvec,
            kernels,
            sentinel: false,
            max_chunk_bytes: None,
            upload_staged: Vec::new(),
            unsubmitted_upload: 0,
            rope_tables: Vec::new(),
            slab_places: HashMap::new(),
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

    /// Compute passes recorded so far.
    pub fn pass_count(&self) -> u64 {
        self.passes
    }

    pub(super) fn pipeline(&mut self, family: Family, entry: &'static str, constants: &[(&'static str, u32)]) -> Result<wgpu::ComputePipeline, GpuError> {
        let mut fixed: Constants = [("", 0); 6];
        if constants.len() > fixed.len() {
            return Err(GpuError::Shape(format!("{entry}: {} override constants", constants.len())));
        }
        fixed[..constants.len()].copy_from_slice(constants);
        let key = (family, entry, fixed);
        if let Some(p) = self.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let reduce = self.reduce;
        let dev = &self.dev.device;
        let module = self.modules.entry(family).or_insert_with(|| {
            dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(family.name()),
                source: wgpu::ShaderSource::Wgsl(webgguf_shaders::source(family, reduce).into()),
            })
        });
        let values: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, f64::from(v))).collect();
        let p = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &values, zero_initialize_workgroup_memory: false },
            cache: None,
        });
        self.pipelines.insert(key, p.clone());
        Ok(p)
    }

    /// A storage buffer of at least `bytes` from the pool.
    pub(super) fn alloc(&mut self, bytes: u64) -> Result<PooledBuffer, GpuError> {
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

    pub(super) fn new_act(&mut self, n_tokens: usize, width: usize) -> Result<GpuAct, GpuError> {
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

    /// The encoder, for commands outside compute passes (the open pass ends).
    pub(super) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        let dev = &self.dev.device;
        self.encoder.get_or_insert_with(|| dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") }))
    }

    /// Writes the staged uniforms and submits everything recorded.
    pub fn flush(&mut self) {
        if !self.params.is_empty() {
            self.dev.queue.write_buffer(&self.params_buf, 0, &self.params);
            self.params.clear();
        }
        self.pass = None;
        if let Some(e) = self.encoder.take() {
            self.dev.queue.submit([e.finish()]);
        }
    }

    /// Records one dispatch of `groups` workgroups (split over x and y above the per-dimension
    /// limit; kernels linearise the id and bounds-check). `bindings` pairs binding numbers with
    /// buffers; the uniform struct `params` goes to binding `param_binding`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch(
        &mut self,
        family: Family,
        entry: &'static str,
        constants: &[(&'static str, u32)],
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
        let pipeline = self.pipeline(family, entry, constants)?;
        let offset = self.params.len() as u64;
        self.params.extend_from_slice(params);
        self.params.resize((offset + PARAM_SLOT) as usize, 0);
        let key: BindKey = (pipeline.clone(), bindings.iter().map(|&(b, buf)| (b, buf.clone())).collect(), offset);
        let bg = match self.bind_groups.get(&key) {
            Some(bg) => bg.clone(),
            None => {
                let mut entries: Vec<wgpu::BindGroupEntry<'_>> =
                    bindings.iter().map(|&(b, buf)| wgpu::BindGroupEntry { binding: b, resource: buf.as_entire_binding() }).collect();
                entries.push(wgpu::BindGroupEntry {
                    binding: param_binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.params_buf, offset, size: wgpu::BufferSize::new(PARAM_BIND) }),
                });
                let bg = self.dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(entry),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                });
                if self.bind_groups.len() >= BIND_GROUPS_KEPT {
                    self.bind_groups.clear();
                }
                self.bind_groups.insert(key, bg.clone());
                bg
            }
        };
        let max_x = self.dev.info.max_compute_workgroups_per_dimension.max(1) as usize;
        let x = groups.min(max_x);
        let y = groups.div_ceil(x);
        if y > max_x {
            return Err(GpuError::TooLarge { what: format!("{entry} dispatch"), bytes: groups as u64, limit: (max_x * max_x) as u64 });
        }
        if self.pass.is_none() {
            let dev = &self.dev.device;
            let enc = self.encoder.get_or_insert_with(|| dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ops") }));
            self.pass = Some(enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("ops"), timestamp_writes: None }).forget_lifetime());
            self.passes += 1;
        }
        let pass = self.pass.as_mut().expect("a compute pass is open");
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x as u32, y as u32, 1);
        self.dispatches += 1;
        Ok(())
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

    /// Every word of the buffer behind `x`, including the tail past its values (tests).
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn raw_words(&mut self, x: &GpuAct) -> Vec<u32> {
        let buf = x.buf.get().clone();
        let bytes = pollster::block_on(self.read_async(&buf, buf.size())).expect("readback");
        bytemuck::pod_collect_to_vec(&bytes)
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
        self.dispatch(Family::Argmax, "argmax", &[], &[(0, x.buf.get()), (1, &out)], 2, bytes_of(&params), 1)?;
        let b = self.read_async(&out, 4).await?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Records one pass of the vec4 copy kernel over `words` u32 words (a multiple of 4; `webgguf
    /// bench`'s bandwidth baseline).
    pub fn record_copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, words: usize) -> Result<(), GpuError> {
        if words % 4 != 0 {
            return Err(GpuError::Shape(format!("copy of {words} words (a multiple of 4)")));
        }
        let p = EwParams { count: (words / 4) as u32, ..EwParams::default() };
        self.dispatch(Family::Elementwise, "copy4", &[], &[(4, src), (5, dst)], 3, bytemuck::bytes_of(&p), (words / 4).div_ceil(64))
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
