//! The WebGPU backend (wgpu: the browser's WebGPU, or Vulkan/Metal/DX12 natively): device
//! negotiation, the GPU weight layout, and the [`Backend`](crate::model::Backend) implementation
//! whose kernels live in the `webgguf-shaders` crate.

mod device;
pub(crate) mod kv;
pub mod layout;
mod matmul;
mod ops;
mod readback;
pub(crate) mod recorder;
pub(crate) mod weights;

#[cfg(not(target_arch = "wasm32"))]
pub use device::adapter_limits;
pub use device::{adapter_limits_async, AdapterLimits, DeviceLimits, GpuDevice, GpuInfo};
pub use kv::GpuCache;
pub use ops::{GpuKernels, MatvecLayout};
pub use recorder::{GpuAct, GpuBackend};
pub use weights::{GpuWeight, PendingGpuWeight};

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
