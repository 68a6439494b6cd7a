//! `webgguf quantize`: GGUF in, GGUF of another file type out (llama-quantize without
//! importance matrices).
//!
//! - `ftype`: the file types offered and their `general.file_type` ids
//! - `mix`: which type each tensor gets (llama.cpp's per-tensor rules)
//! - `file`: the streaming converter (native)
//!
//! Rows are quantized with `quant::quantize_row`, the ports of ggml's `quantize_row_*_ref`,
//! which is what llama-quantize runs when no importance matrix is given: from the same f32
//! input the bytes are ggml's.

#[cfg(not(target_arch = "wasm32"))]
mod file;
mod ftype;
pub mod mix;

#[cfg(not(target_arch = "wasm32"))]
pub use file::{quantize_file, QuantizeError, QuantizeOptions, QuantizeReport, TensorReport};
pub use ftype::FileType;
pub use mix::{Choice, MixOptions, ModelFacts};
