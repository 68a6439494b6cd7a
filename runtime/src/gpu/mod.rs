//! The WebGPU backend (wgpu: the browser's WebGPU, or Vulkan/Metal/DX12 natively): device
//! negotiation, the GPU weight layout, and the [`Backend`](crate::model::Backend) implementation
//! whose kernels live in the `webgguf-shaders` crate.

pub(crate) mod backend;
mod device;
pub mod layout;
mod readback;

pub use backend::{GpuAct, GpuBackend, GpuCache, GpuWeight};
#[cfg(not(target_arch = "wasm32"))]
pub use device::adapter_limits;
pub use device::{adapter_limits_async, AdapterLimits, DeviceLimits, GpuDevice, GpuInfo};

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
