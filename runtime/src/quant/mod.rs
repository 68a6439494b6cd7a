//! Block formats of ggml and their scalar reference code: the oracle every fast kernel
//! (SIMD128, WGSL) is tested against.
//!
//! Each submodule holds the `#[repr(C)]` block structs of one family (with compile-time size
//! asserts) and ports of ggml's reference functions (`dequantize_row_*`, `quantize_row_*_ref`,
//! `ggml_vec_dot_*` generic versions), named after the function they port.
//! This module only checks sizes and dispatches on the runtime type.

mod float;
mod ggml_type;
mod k_quants;
mod k_quants_helpers;
#[cfg(target_arch = "x86_64")]
pub(crate) use k_quants_helpers::get_scale_min_k4;
mod legacy;

pub use float::*;
pub use ggml_type::GgmlType;
pub use k_quants::*;
pub use legacy::*;

use crate::error::QuantError;
use std::borrow::Cow;

/// Reinterprets packed little-endian block bytes as blocks, copying only when `src` is not
/// aligned for `T` (GGUF blocks are byte-packed, so file slices often are not).
pub fn blocks<T: bytemuck::AnyBitPattern + bytemuck::NoUninit>(src: &[u8]) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice::<u8, T>(src) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec::<u8, T>(src)),
    }
}

fn check_len(ty: GgmlType, n: usize, bytes: usize, what: &'static str) -> Result<(), QuantError> {
    let bs = ty.block_size();
    if n % bs != 0 {
        return Err(QuantError::NotBlockMultiple { ty, n, block: bs });
    }
    let expected = n / bs * ty.type_size();
    if bytes != expected {
        return Err(QuantError::BufferSize { what, ty, expected, got: bytes });
    }
    Ok(())
}

/// Dequantizes one row: `src` holds `dst.len()` elements of type `ty` as packed blocks.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    check_len(ty, dst.len(), src.len(), "dequantize source")?;
    match ty {
        F32 => dequantize_row_f32(&blocks(src), dst),
        F16 => dequantize_row_f16(&blocks(src), dst),
        BF16 => dequantize_row_bf16(&blocks(src), dst),
        Q4_0 => dequantize_row_q4_0(&blocks(src), dst),
        Q4_1 => dequantize_row_q4_1(&blocks(src), dst),
        Q5_0 => dequantize_row_q5_0(&blocks(src), dst),
        Q5_1 => dequantize_row_q5_1(&blocks(src), dst),
        Q8_0 => dequantize_row_q8_0(&blocks(src), dst),
        Q8_1 => dequantize_row_q8_1(&blocks(src), dst),
        Q2_K => dequantize_row_q2_k(&blocks(src), dst),
        Q3_K => dequantize_row_q3_k(&blocks(src), dst),
        Q4_K => dequantize_row_q4_k(&blocks(src), dst),
        Q5_K => dequantize_row_q5_k(&blocks(src), dst),
        Q6_K => dequantize_row_q6_k(&blocks(src), dst),
        Q8_K => dequantize_row_q8_k(&blocks(src), dst),
        _ => return Err(QuantError::Unsupported { ty, op: "dequantize" }),
    }
    Ok(())
}

/// Quantizes one row of `src.len()` floats into packed blocks of type `ty` in `dst`,
/// with ggml's reference algorithm (`quantize_row_*_ref`).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    use GgmlType::*;
    check_len(ty, src.len(), dst.len(), "quantize destination")?;
    fn out<T: bytemuck::Pod>(dst: &mut [u8], f: impl FnOnce(&mut [T])) {
        let mut tmp: Vec<T> = vec![T::zeroed(); dst.len() / std::mem::size_of::<T>()];
        f(&mut tmp);
        dst.copy_from_slice(bytemuck::cast_slice(&tmp));
    }
    match ty {
        F32 => out(dst, |y| quantize_row_f32(src, y)),
        F16 => out(dst, |y| quantize_row_f16(src, y)),
        BF16 => out(dst, |y| quantize_row_bf16(src, y)),
        Q4_0 => out(dst, |y| quantize_row_q4_0_ref(src, y)),
        Q4_1 => out(dst, |y| quantize_row_q4_1_ref(src, y)),
        Q5_0 => out(dst, |y| quantize_row_q5_0_ref(src, y)),
        Q5_1 => out(dst, |y| quantize_row_q5_1_ref(src, y)),
        Q8_0 => out(dst, |y| quantize_row_q8_0_ref(src, y)),
        Q8_1 => out(dst, |y| quantize_row_q8_1_ref(src, y)),
        Q2_K => out(dst, |y| quantize_row_q2_k_ref(src, y)),
        Q3_K => out(dst, |y| quantize_row_q3_k_ref(src, y)),
        Q4_K => out(dst, |y| quantize_row_q4_k_ref(src, y)),
        Q5_K => out(dst, |y| quantize_row_q5_k_ref(src, y)),
        Q6_K => out(dst, |y| quantize_row_q6_k_ref(src, y)),
        Q8_K => out(dst, |y| quantize_row_q8_k_ref(src, y)),
        _ => return Err(QuantError::Unsupported { ty, op: "quantize" }),
    }
    Ok(())
}

/// Dot product of `n` weights of type `ty` (packed in `x`) with `n` activations already
/// quantized to `ty.vec_dot_type()` (packed in `y`), as ggml's generic `ggml_vec_dot_*` does.
pub fn vec_dot(ty: GgmlType, n: usize, x: &[u8], y: &[u8]) -> Result<f32, QuantError> {
    use GgmlType::*;
    check_len(ty, n, x.len(), "vec_dot weights")?;
    check_len(ty.vec_dot_type(), n, y.len(), "vec_dot activations")?;
    Ok(match ty {
        F32 => vec_dot_f32(&blocks(x), &blocks(y)),
        F16 => vec_dot_f16(&blocks(x), &blocks(y)),
        BF16 => vec_dot_bf16(&blocks(x), &blocks(y)),
        Q4_0 => vec_dot_q4_0_q8_0(&blocks(x), &blocks(y)),
        Q4_1 => vec_dot_q4_1_q8_1(&blocks(x), &blocks(y)),
        Q5_0 => vec_dot_q5_0_q8_0(&blocks(x), &blocks(y)),
        Q5_1 => vec_dot_q5_1_q8_1(&blocks(x), &blocks(y)),
        Q8_0 => vec_dot_q8_0_q8_0(&blocks(x), &blocks(y)),
        Q2_K => vec_dot_q2_k_q8_k(&blocks(x), &blocks(y)),
        Q3_K => vec_dot_q3_k_q8_k(&blocks(x), &blocks(y)),
        Q4_K => vec_dot_q4_k_q8_k(&blocks(x), &blocks(y)),
        Q5_K => vec_dot_q5_k_q8_k(&blocks(x), &blocks(y)),
        Q6_K => vec_dot_q6_k_q8_k(&blocks(x), &blocks(y)),
        _ => return Err(QuantError::Unsupported { ty, op: "vec_dot" }),
    })
}
