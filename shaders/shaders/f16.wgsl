// f32 → nearest f16 (ties to even) → f32, as ggml_fp32_to_fp16 rounds. WGSL leaves the rounding
// of quantizeToF16 / pack2x16float to the implementation, so kernels that must match the CPU
// round with this first (packing an exactly representable value is then exact everywhere).
fn round_f16(x: f32) -> f32 {
    let u = bitcast<u32>(x);
    let a = u & 0x7fffffffu;
    let sign = u & 0x80000000u;
    if a > 0x7f800000u {
        return x;  // NaN
    }
    if a >= 0x477ff000u {
        return bitcast<f32>(sign | 0x7f800000u);  // at or past the midpoint above 65504: inf
    }
    if a < 0x38800000u {
        // f16 subnormals: multiples of 2^-24 (scaling by powers of two is exact; round() ties
        // to even; a multiply, not a division, whose accuracy WGSL does not pin down)
        return round(x * 16777216.0) * 5.9604644775390625e-8;
    }
    let r = (a + 0xfffu + ((a >> 13u) & 1u)) & 0xffffe000u;
    return bitcast<f32>(sign | r);
}
