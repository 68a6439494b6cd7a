//! The wgpu adapter and device: requested with the adapter's real limits (not wgpu's 128/256 MiB
//! defaults), optional features detected and reported, device loss and uncaptured errors
//! recorded so the next operation returns a typed error instead of panicking.

use crate::error::GpuError;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// What was chosen, for stats and `webgguf bench`.
#[derive(Clone, Debug, Serialize)]
pub struct GpuInfo {
    pub adapter: String,
    /// wgpu backend: vulkan, metal, dx12, gl, browser-webgpu.
    pub backend: String,
    pub device_type: String,
    /// `shader-f16` is available (reported; the kernels keep f32 arithmetic and unpack f16
    /// storage with `unpack2x16float`, which needs no feature).
    pub shader_f16: bool,
    /// Subgroup operations are available and the kernels use the subgroup reduction.
    /// (wgpu's web backend never reports subgroups, so browsers run the shared-memory variant.)
    pub subgroups: bool,
    /// The least subgroup size the adapter may run (0 when unknown): `matvec` sums a row's
    /// lanes by subgroup shuffles when they fit one subgroup.
    pub subgroup_min_size: u32,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub min_uniform_buffer_offset_alignment: u32,
}

/// Errors wgpu reported outside any call (validation, out of memory) and device loss.
#[derive(Default)]
pub(crate) struct Faults {
    pub lost: Option<String>,
    pub errors: Vec<String>,
}

pub struct GpuDevice {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub info: GpuInfo,
    pub(crate) faults: Arc<Mutex<Faults>>,
}

/// An adapter's name, kind and buffer limits, read without opening a device (what the
/// planner needs before anything is loaded).
#[derive(Clone, Debug, Serialize)]
pub struct AdapterLimits {
    pub adapter: String,
    pub device_type: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
}

impl AdapterLimits {
    /// Software rasterizers (lavapipe, SwiftShader) report device type Cpu.
    pub fn is_software(&self) -> bool {
        self.device_type == "Cpu"
    }
}

/// The high-performance adapter [`GpuDevice::new_async`] would open.
async fn request_adapter() -> Result<wgpu::Adapter, GpuError> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| GpuError::NoAdapter(e.to_string()))
}

/// The limits of the adapter a device would be opened on.
pub async fn adapter_limits_async() -> Result<AdapterLimits, GpuError> {
    let adapter = request_adapter().await?;
    let (info, limits) = (adapter.get_info(), adapter.limits());
    Ok(AdapterLimits {
        adapter: info.name,
        device_type: format!("{:?}", info.device_type),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
    })
}

/// [`adapter_limits_async`], blocking (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn adapter_limits() -> Result<AdapterLimits, GpuError> {
    pollster::block_on(adapter_limits_async())
}

/// Which limits a device is opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceLimits {
    /// Everything the adapter offers: the Gemma-3 embedding alone is 178 MB.
    Adapter,
    /// The WebGPU spec's defaults (128 MiB per binding, 256 MiB per buffer), what an adapter
    /// that offers no more gives (many Android phones): tests the paths that split tensors.
    SpecDefaults,
}

impl GpuDevice {
    /// Opens the first high-performance adapter wgpu finds, with every limit it offers.
    pub async fn new_async() -> Result<GpuDevice, GpuError> {
        Self::with_limits_async(DeviceLimits::Adapter).await
    }

    /// Opens the first high-performance adapter wgpu finds, with `which` limits.
    pub async fn with_limits_async(which: DeviceLimits) -> Result<GpuDevice, GpuError> {
        let adapter = request_adapter().await?;
        let ai = adapter.get_info();
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        for f in [wgpu::Features::SHADER_F16, wgpu::Features::SUBGROUP] {
            if available.contains(f) {
                features |= f;
            }
        }
        let limits = match which {
            DeviceLimits::Adapter => adapter.limits(),
            DeviceLimits::SpecDefaults => wgpu::Limits::default(),
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webgguf"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut g) = f.lock() {
                g.errors.push(e.to_string());
            }
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut g) = f.lock() {
                g.lost = Some(format!("{reason:?}: {msg}"));
            }
        });
        let info = GpuInfo {
            adapter: ai.name.clone(),
            backend: ai.backend.to_str().to_owned(),
            device_type: format!("{:?}", ai.device_type),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: ai.subgroup_min_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            min_uniform_buffer_offset_alignment: limits.min_uniform_buffer_offset_alignment,
        };
        Ok(GpuDevice { device, queue, info, faults })
    }

    /// [`GpuDevice::new_async`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<GpuDevice, GpuError> {
        pollster::block_on(Self::new_async())
    }

    /// [`GpuDevice::with_limits_async`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_limits(which: DeviceLimits) -> Result<GpuDevice, GpuError> {
        pollster::block_on(Self::with_limits_async(which))
    }

    /// The first recorded fault, if any: device loss first, then uncaptured errors.
    pub(crate) fn check(&self) -> Result<(), GpuError> {
        let mut g = self.faults.lock().map_err(|_| GpuError::Device("fault log poisoned".into()))?;
        if let Some(l) = &g.lost {
            return Err(GpuError::DeviceLost(l.clone()));
        }
        if !g.errors.is_empty() {
            let e = g.errors.join("; ");
            g.errors.clear();
            return Err(GpuError::Device(e));
        }
        Ok(())
    }

    /// Destroys the device on purpose (tests of device-loss recovery); later operations fail
    /// with `GpuError::DeviceLost(why)`.
    pub fn destroy(&self, why: &str) {
        if let Ok(mut g) = self.faults.lock() {
            g.lost.get_or_insert_with(|| why.to_owned());
        }
        self.device.destroy();
    }

    /// The largest buffer one binding may cover.
    pub fn max_binding(&self) -> u64 {
        super::layout::max_binding(self.info.max_storage_buffer_binding_size, self.info.max_buffer_size)
    }
}
