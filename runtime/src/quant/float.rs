//! Plain float types: F32, F16, BF16 (ggml's fp16/bf16 conversions via `half`).
use half::{bf16, f16};

// TODO(helper A): implement
pub fn dequantize_row_f32(x: &[f32], y: &mut [f32]) { todo!() }
pub fn dequantize_row_f16(x: &[f16], y: &mut [f32]) { todo!() }
pub fn dequantize_row_bf16(x: &[bf16], y: &mut [f32]) { todo!() }
pub fn quantize_row_f32(x: &[f32], y: &mut [f32]) { todo!() }
pub fn quantize_row_f16(x: &[f32], y: &mut [f16]) { todo!() }
pub fn quantize_row_bf16(x: &[f32], y: &mut [bf16]) { todo!() }
pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 { todo!() }
pub fn vec_dot_f16(x: &[f16], y: &[f16]) -> f32 { todo!() }
pub fn vec_dot_bf16(x: &[bf16], y: &[bf16]) -> f32 { todo!() }
