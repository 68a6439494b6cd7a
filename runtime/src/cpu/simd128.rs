//! The 128-bit vector operations of `simd.rs` on wasm SIMD128 (`core::arch::wasm32`,
//! compiled for wasm32 with `+simd128`, see .cargo/config.toml). `sse2.rs` provides the same
//! functions for x86_64; the kernels are written once over either.
//!
//! Lowering notes (V8 / SpiderMonkey on x86): `i32x4.dot_i16x8_s` is one `pmaddwd`,
//! 16-bit shifts and bitwise ops are single instructions, whereas `i8x16` shifts and
//! `i32x4.mul` are emulated or slow, which is why the kernels avoid them.

use core::arch::wasm32::*;

pub(super) type V = v128;

/// # Safety
/// `p` must be readable for 16 bytes (any alignment).
#[inline(always)]
pub(super) unsafe fn ld(p: *const u8) -> V {
    v128_load(p as *const v128)
}
/// # Safety
/// `p` must be readable for 8 i16.
#[inline(always)]
pub(super) unsafe fn ld16(p: *const i16) -> V {
    v128_load(p as *const v128)
}
/// # Safety
/// `p` must be readable for 4 f32.
#[inline(always)]
pub(super) unsafe fn ldf(p: *const f32) -> V {
    v128_load(p as *const v128)
}
/// # Safety
/// `p` must be writable for 4 f32.
#[inline(always)]
pub(super) unsafe fn stf(p: *mut f32, v: V) {
    v128_store(p as *mut v128, v)
}
/// Four little-endian u16 at `p`, zero-extended to u32 lanes.
/// # Safety
/// `p` must be readable for 8 bytes.
#[inline(always)]
pub(super) unsafe fn ld_u16x4(p: *const u8) -> V {
    u32x4_load_extend_u16x4(p as *const u16)
}

#[inline(always)]
pub(super) fn splat_i16(v: i16) -> V {
    i16x8_splat(v)
}
#[inline(always)]
pub(super) fn splat_i32(v: i32) -> V {
    i32x4_splat(v)
}
#[inline(always)]
pub(super) fn splat_f32(v: f32) -> V {
    f32x4_splat(v)
}
#[inline(always)]
pub(super) fn set_i16(a: [i16; 8]) -> V {
    i16x8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])
}
#[inline(always)]
pub(super) fn zero() -> V {
    i32x4_splat(0)
}

#[inline(always)]
pub(super) fn and(a: V, b: V) -> V {
    v128_and(a, b)
}
#[inline(always)]
pub(super) fn or(a: V, b: V) -> V {
    v128_or(a, b)
}
/// `mask ? a : b` bitwise.
#[inline(always)]
pub(super) fn select(a: V, b: V, mask: V) -> V {
    v128_bitselect(a, b, mask)
}
#[inline(always)]
pub(super) fn shr_u16(a: V, n: u32) -> V {
    u16x8_shr(a, n)
}
#[inline(always)]
pub(super) fn shl_i16(a: V, n: u32) -> V {
    i16x8_shl(a, n)
}
#[inline(always)]
pub(super) fn shr_u32(a: V, n: u32) -> V {
    u32x4_shr(a, n)
}
#[inline(always)]
pub(super) fn shl_i32(a: V, n: u32) -> V {
    i32x4_shl(a, n)
}
#[inline(always)]
pub(super) fn eq_i16(a: V, b: V) -> V {
    i16x8_eq(a, b)
}
/// Unsigned `a < b` per u32 lane (all ones / zero).
#[inline(always)]
pub(super) fn lt_u32(a: V, b: V) -> V {
    u32x4_lt(a, b)
}
#[inline(always)]
pub(super) fn sub_i16(a: V, b: V) -> V {
    i16x8_sub(a, b)
}
#[inline(always)]
pub(super) fn add_i32(a: V, b: V) -> V {
    i32x4_add(a, b)
}
#[inline(always)]
pub(super) fn sub_i32(a: V, b: V) -> V {
    i32x4_sub(a, b)
}
/// `i32x4.dot_i16x8_s`: lane i = a[2i]·b[2i] + a[2i+1]·b[2i+1].
#[inline(always)]
pub(super) fn dot_i16(a: V, b: V) -> V {
    i32x4_dot_i16x8(a, b)
}
#[inline(always)]
pub(super) fn add_f32(a: V, b: V) -> V {
    f32x4_add(a, b)
}
#[inline(always)]
pub(super) fn sub_f32(a: V, b: V) -> V {
    f32x4_sub(a, b)
}
#[inline(always)]
pub(super) fn mul_f32(a: V, b: V) -> V {
    f32x4_mul(a, b)
}
#[inline(always)]
pub(super) fn cvt_i32_f32(a: V) -> V {
    f32x4_convert_i32x4(a)
}
/// Sign-extends bytes 0–7 / 8–15 to i16.
#[inline(always)]
pub(super) fn ext_lo_i8(a: V) -> V {
    i16x8_extend_low_i8x16(a)
}
#[inline(always)]
pub(super) fn ext_hi_i8(a: V) -> V {
    i16x8_extend_high_i8x16(a)
}
/// Zero-extends bytes 0–7 / 8–15 to u16.
#[inline(always)]
pub(super) fn ext_lo_u8(a: V) -> V {
    u16x8_extend_low_u8x16(a)
}
#[inline(always)]
pub(super) fn ext_hi_u8(a: V) -> V {
    u16x8_extend_high_u8x16(a)
}
/// Sign-extends i16 lanes 0–3 / 4–7 to i32.
#[inline(always)]
pub(super) fn ext_lo_i16(a: V) -> V {
    i32x4_extend_low_i16x8(a)
}
#[inline(always)]
pub(super) fn ext_hi_i16(a: V) -> V {
    i32x4_extend_high_i16x8(a)
}
#[inline(always)]
pub(super) fn hsum_f32(v: V) -> f32 {
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v)) + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}
#[inline(always)]
pub(super) fn hsum_i32(v: V) -> i32 {
    let s = i32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let s = i32x4_add(s, i32x4_shuffle::<1, 0, 3, 2>(s, s));
    i32x4_extract_lane::<0>(s)
}
