//! WGSL kernels of webgguf. One `.wgsl` file per kernel family lives in `shaders/`;
//! this crate exposes them by name so the runtime and naga validation tests see the same text.
//! (Kernels arrive with the WebGPU backend; the table starts empty.)

/// A WGSL source with the name of its kernel family.
pub struct ShaderSource {
    pub family: &'static str,
    pub wgsl: &'static str,
}

/// Every kernel family shipped.
pub const SHADERS: &[ShaderSource] = &[];
