// Exact rounding helpers: kernels that must reproduce the CPU's f32 results bit for bit use these
// where WGSL leaves precision to the implementation.

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

// a / b correctly rounded (nearest, ties to even) for normal a, b and a normal quotient, by
// long division of the 24-bit significands: WGSL only promises 2.5 ULP for `/`, and a quotient
// one ULP off flips a quantized activation now and then. Anything else falls back to `/`.
fn div_rn(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let ea = (ua >> 23u) & 0xffu;
    let eb = (ub >> 23u) & 0xffu;
    if a == 0.0 || ea == 0u || eb == 0u || ea == 0xffu || eb == 0xffu {
        return a / b;
    }
    let sign = (ua ^ ub) & 0x80000000u;
    var num = (ua & 0x7fffffu) | 0x800000u;
    let den = (ub & 0x7fffffu) | 0x800000u;
    var e = i32(ea) - i32(eb) + 127;
    if num < den {
        num = num << 1u;
        e -= 1;
    }
    // 24 quotient bits and a rounding bit; what remains is the sticky part.
    var q = 0u;
    for (var i = 0u; i < 25u; i++) {
        q = q << 1u;
        if num >= den {
            num -= den;
            q |= 1u;
        }
        num = num << 1u;
    }
    let round_bit = q & 1u;
    q = q >> 1u;
    if round_bit == 1u && (num != 0u || (q & 1u) == 1u) {
        q += 1u;
        if q == 0x1000000u {
            q = 0x800000u;
            e += 1;
        }
    }
    if e <= 0 || e >= 255 {
        return a / b;
    }
    return bitcast<f32>(sign | (u32(e) << 23u) | (q & 0x7fffffu));
}

// round(v) with ties away from zero, as C's roundf in ggml's reference quantizers (WGSL's
// round() ties to even).
fn round_half_away(v: f32) -> f32 {
    let t = trunc(v);
    if abs(v - t) >= 0.5 {
        return t + sign(v);
    }
    return t;
}

// The step of a Q8_0 block whose largest |x| is amax, as quantize_row_q8_0_ref computes it:
// (d = amax / 127, id = 1 / d, or 0 for an all-zero block). Values quantize to
// round_half_away(x · id) and read back as that times round_f16(d).
fn q8_0_step(amax: f32) -> vec2<f32> {
    let d = div_rn(amax, 127.0);
    var id = 0.0;
    if d != 0.0 {
        id = div_rn(1.0, d);
    }
    return vec2<f32>(d, id);
}

const SQRT_2_OVER_PI: f32 = 0.79788456080286535587989211986876;
const GELU_COEF_A: f32 = 0.044715;

// ggml's GELU with GGML_GELU_FP16: the input rounded to f16, the f16-rounded tanh GELU of it.
fn gelu_f16_table(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let h = round_f16(x);
    return round_f16(0.5 * h * (1.0 + tanh(SQRT_2_OVER_PI * h * (1.0 + GELU_COEF_A * h * h))));
}

// act(a) · b: SwiGLU (silu(a) = a / (1 + e^-a)) or GeGLU (gelu_f16_table), the elementwise
// `glu` and the matmul's fused gate/up (`matvec_glu`) alike.
fn glu_value(a: f32, b: f32, gelu: bool) -> f32 {
    var g: f32;
    if gelu {
        g = gelu_f16_table(a);
    } else {
        g = a / (1.0 + exp(-a));
    }
    return g * b;
}
