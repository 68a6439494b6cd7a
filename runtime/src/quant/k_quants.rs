//! The 256-element "K-quant" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the
//! activation format Q8_K.
use half::f16;

pub const QK_K: usize = 256;
pub const K_SCALE_SIZE: usize = 12;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K { pub scales: [u8; QK_K / 16], pub qs: [u8; QK_K / 4], pub d: f16, pub dmin: f16 }
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K { pub hmask: [u8; QK_K / 8], pub qs: [u8; QK_K / 4], pub scales: [u8; 12], pub d: f16 }
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K { pub d: f16, pub dmin: f16, pub scales: [u8; K_SCALE_SIZE], pub qs: [u8; QK_K / 2] }
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K { pub d: f16, pub dmin: f16, pub scales: [u8; K_SCALE_SIZE], pub qh: [u8; QK_K / 8], pub qs: [u8; QK_K / 2] }
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K { pub ql: [u8; QK_K / 2], pub qh: [u8; QK_K / 4], pub scales: [i8; QK_K / 16], pub d: f16 }
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8K { pub d: f32, pub qs: [i8; QK_K], pub bsums: [i16; QK_K / 16] }
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

// TODO(helper B): implement
pub fn dequantize_row_q2_k(x: &[BlockQ2K], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q3_k(x: &[BlockQ3K], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) { todo!() }
pub fn quantize_row_q2_k_ref(x: &[f32], y: &mut [BlockQ2K]) { todo!() }
pub fn quantize_row_q3_k_ref(x: &[f32], y: &mut [BlockQ3K]) { todo!() }
pub fn quantize_row_q4_k_ref(x: &[f32], y: &mut [BlockQ4K]) { todo!() }
pub fn quantize_row_q5_k_ref(x: &[f32], y: &mut [BlockQ5K]) { todo!() }
pub fn quantize_row_q6_k_ref(x: &[f32], y: &mut [BlockQ6K]) { todo!() }
pub fn quantize_row_q8_k_ref(x: &[f32], y: &mut [BlockQ8K]) { todo!() }
pub fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 { todo!() }
pub fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 { todo!() }
pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 { todo!() }
pub fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 { todo!() }
pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 { todo!() }
