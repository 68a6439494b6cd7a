//! The 32-element "legacy" block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
use half::f16;

pub const QK4_0: usize = 32;
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 { pub d: f16, pub qs: [u8; 16] }
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 { pub d: f16, pub m: f16, pub qs: [u8; 16] }
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 { pub d: f16, pub qh: [u8; 4], pub qs: [u8; 16] }
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 { pub d: f16, pub m: f16, pub qh: [u8; 4], pub qs: [u8; 16] }
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 { pub d: f16, pub qs: [i8; 32] }
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_1 { pub d: f16, pub s: f16, pub qs: [i8; 32] }
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

// TODO(helper A): implement
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) { todo!() }
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) { todo!() }
pub fn quantize_row_q4_0_ref(x: &[f32], y: &mut [BlockQ4_0]) { todo!() }
pub fn quantize_row_q4_1_ref(x: &[f32], y: &mut [BlockQ4_1]) { todo!() }
pub fn quantize_row_q5_0_ref(x: &[f32], y: &mut [BlockQ5_0]) { todo!() }
pub fn quantize_row_q5_1_ref(x: &[f32], y: &mut [BlockQ5_1]) { todo!() }
pub fn quantize_row_q8_0_ref(x: &[f32], y: &mut [BlockQ8_0]) { todo!() }
pub fn quantize_row_q8_1_ref(x: &[f32], y: &mut [BlockQ8_1]) { todo!() }
pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 { todo!() }
pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 { todo!() }
pub fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 { todo!() }
pub fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 { todo!() }
pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 { todo!() }
