//! The 128-bit vector operations of `simd.rs` on x86_64 with SSE2 only (part of the x86_64
//! baseline, so no run-time detection is needed). Mirrors `simd128.rs` function for function;
//! operations SSE2 lacks (byte sign extension, unsigned compares) are composed from others.
//! Native builds thereby run the same kernels as the browser.

use core::arch::x86_64::*;

pub(super) type V = __m128i;

#[inline(always)]
fn f(a: V) -> __m128 {
    // SAFETY: a bit cast between two 128-bit vector types.
    unsafe { _mm_castsi128_ps(a) }
}
#[inline(always)]
fn i(a: __m128) -> V {
    // SAFETY: a bit cast between two 128-bit vector types.
    unsafe { _mm_castps_si128(a) }
}

/// # Safety
/// `p` must be readable for 16 bytes (any alignment).
#[inline(always)]
pub(super) unsafe fn ld(p: *const u8) -> V {
    _mm_loadu_si128(p as *const __m128i)
}
/// # Safety
/// `p` must be readable for 8 i16.
#[inline(always)]
pub(super) unsafe fn ld16(p: *const i16) -> V {
    _mm_loadu_si128(p as *const __m128i)
}
/// # Safety
/// `p` must be readable for 4 f32.
#[inline(always)]
pub(super) unsafe fn ldf(p: *const f32) -> V {
    i(_mm_loadu_ps(p))
}
/// # Safety
/// `p` must be writable for 4 f32.
#[inline(always)]
pub(super) unsafe fn stf(p: *mut f32, v: V) {
    _mm_storeu_ps(p, f(v))
}
/// Four little-endian u16 at `p`, zero-extended to u32 lanes.
/// # Safety
/// `p` must be readable for 8 bytes.
#[inline(always)]
pub(super) unsafe fn ld_u16x4(p: *const u8) -> V {
    _mm_unpacklo_epi16(_mm_loadl_epi64(p as *const __m128i), _mm_setzero_si128())
}

// SAFETY (every function below): SSE2 is part of the x86_64 baseline, so these intrinsics are
// always available; none of them touches memory.

#[inline(always)]
pub(super) fn splat_i16(v: i16) -> V {
    unsafe { _mm_set1_epi16(v) }
}
#[inline(always)]
pub(super) fn splat_i32(v: i32) -> V {
    unsafe { _mm_set1_epi32(v) }
}
#[inline(always)]
pub(super) fn splat_f32(v: f32) -> V {
    i(unsafe { _mm_set1_ps(v) })
}
#[inline(always)]
pub(super) fn set_i16(a: [i16; 8]) -> V {
    unsafe { _mm_setr_epi16(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]) }
}
#[inline(always)]
pub(super) fn zero() -> V {
    unsafe { _mm_setzero_si128() }
}

#[inline(always)]
pub(super) fn and(a: V, b: V) -> V {
    unsafe { _mm_and_si128(a, b) }
}
#[inline(always)]
pub(super) fn or(a: V, b: V) -> V {
    unsafe { _mm_or_si128(a, b) }
}
/// `mask ? a : b` bitwise.
#[inline(always)]
pub(super) fn select(a: V, b: V, mask: V) -> V {
    unsafe { _mm_or_si128(_mm_and_si128(mask, a), _mm_andnot_si128(mask, b)) }
}
#[inline(always)]
pub(super) fn shr_u16(a: V, n: u32) -> V {
    unsafe { _mm_srl_epi16(a, _mm_cvtsi32_si128(n as i32)) }
}
#[inline(always)]
pub(super) fn shl_i16(a: V, n: u32) -> V {
    unsafe { _mm_sll_epi16(a, _mm_cvtsi32_si128(n as i32)) }
}
#[inline(always)]
pub(super) fn shr_u32(a: V, n: u32) -> V {
    unsafe { _mm_srl_epi32(a, _mm_cvtsi32_si128(n as i32)) }
}
#[inline(always)]
pub(super) fn shl_i32(a: V, n: u32) -> V {
    unsafe { _mm_sll_epi32(a, _mm_cvtsi32_si128(n as i32)) }
}
#[inline(always)]
pub(super) fn eq_i16(a: V, b: V) -> V {
    unsafe { _mm_cmpeq_epi16(a, b) }
}
/// Unsigned `a < b` per u32 lane (all ones / zero): signed compare after flipping sign bits.
#[inline(always)]
pub(super) fn lt_u32(a: V, b: V) -> V {
    unsafe {
        let s = _mm_set1_epi32(i32::MIN);
        _mm_cmplt_epi32(_mm_xor_si128(a, s), _mm_xor_si128(b, s))
    }
}
#[inline(always)]
pub(super) fn sub_i16(a: V, b: V) -> V {
    unsafe { _mm_sub_epi16(a, b) }
}
#[inline(always)]
pub(super) fn add_i32(a: V, b: V) -> V {
    unsafe { _mm_add_epi32(a, b) }
}
#[inline(always)]
pub(super) fn sub_i32(a: V, b: V) -> V {
    unsafe { _mm_sub_epi32(a, b) }
}
/// `pmaddwd`: lane i = a[2i]·b[2i] + a[2i+1]·b[2i+1].
#[inline(always)]
pub(super) fn dot_i16(a: V, b: V) -> V {
    unsafe { _mm_madd_epi16(a, b) }
}
#[inline(always)]
pub(super) fn add_f32(a: V, b: V) -> V {
    i(unsafe { _mm_add_ps(f(a), f(b)) })
}
#[inline(always)]
pub(super) fn sub_f32(a: V, b: V) -> V {
    i(unsafe { _mm_sub_ps(f(a), f(b)) })
}
#[inline(always)]
pub(super) fn mul_f32(a: V, b: V) -> V {
    i(unsafe { _mm_mul_ps(f(a), f(b)) })
}
#[inline(always)]
pub(super) fn cvt_i32_f32(a: V) -> V {
    i(unsafe { _mm_cvtepi32_ps(a) })
}
/// Sign-extends bytes 0–7 / 8–15 to i16 (byte into the high half, arithmetic shift down).
#[inline(always)]
pub(super) fn ext_lo_i8(a: V) -> V {
    unsafe { _mm_srai_epi16::<8>(_mm_unpacklo_epi8(a, a)) }
}
#[inline(always)]
pub(super) fn ext_hi_i8(a: V) -> V {
    unsafe { _mm_srai_epi16::<8>(_mm_unpackhi_epi8(a, a)) }
}
/// Zero-extends bytes 0–7 / 8–15 to u16.
#[inline(always)]
pub(super) fn ext_lo_u8(a: V) -> V {
    unsafe { _mm_unpacklo_epi8(a, _mm_setzero_si128()) }
}
#[inline(always)]
pub(super) fn ext_hi_u8(a: V) -> V {
    unsafe { _mm_unpackhi_epi8(a, _mm_setzero_si128()) }
}
/// Sign-extends i16 lanes 0–3 / 4–7 to i32.
#[inline(always)]
pub(super) fn ext_lo_i16(a: V) -> V {
    unsafe { _mm_srai_epi32::<16>(_mm_unpacklo_epi16(a, a)) }
}
#[inline(always)]
pub(super) fn ext_hi_i16(a: V) -> V {
    unsafe { _mm_srai_epi32::<16>(_mm_unpackhi_epi16(a, a)) }
}
#[inline(always)]
pub(super) fn hsum_f32(v: V) -> f32 {
    unsafe {
        let x = f(v);
        let hi = _mm_movehl_ps(x, x); // lanes 2, 3
        let s = _mm_add_ps(x, hi); // 0+2, 1+3
        let s1 = _mm_shuffle_ps::<0b01>(s, s);
        _mm_cvtss_f32(_mm_add_ss(s, s1))
    }
}
#[inline(always)]
pub(super) fn hsum_i32(v: V) -> i32 {
    unsafe {
        let s = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}
