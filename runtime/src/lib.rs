//! webgguf: run quantized GGUF language models natively and in the browser.
//!
//! Data flows one way: bytes → [`gguf`] (what is where) → loader → model → sampler →
//! tokenizer → engine. See ARCHITECTURE.md.

// GGUF and every block format are little-endian; so are x86, ARM and wasm32 hosts.
#[cfg(target_endian = "big")]
compile_error!("webgguf reads little-endian GGUF blocks in place and supports little-endian hosts only");

pub mod chat;
pub mod constraint;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod gpu;
pub mod kv_cache;
pub mod loader;
pub mod model;
pub mod plan;
pub mod quant;
pub mod quantize;
pub mod sampler;
pub mod synth;
pub mod tokenizer;

pub use error::{GgufError, GpuError, ModelError, QuantError};
pub use quant::GgmlType;

#[cfg(target_arch = "wasm32")]
pub mod web;
