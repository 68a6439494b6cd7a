// Dequantization of weights in webgguf's GPU block layout (runtime/src/gpu/layout.rs), shared by
// every kernel that reads weights. Prepended to a kernel family's source; the including kernel
// declares `W: array<u32>` (the weight words) at its own binding.
//
// GPU layout: each GGUF block is copied into a whole number of u32 words with its f16 scale(s)
// moved so every field is word-aligned. Per type (QK = values per block, words per block):
//   F32   4 values / 4 words      F16, BF16  4 values / 2 words
//   Q4_0  32 / 5: qs[16] | d            Q4_1  32 / 5: d,m | qs[16]
//   Q5_0  32 / 6: qh | qs[16] | d       Q5_1  32 / 6: d,m | qh | qs[16]
//   Q8_0  32 / 9: qs[32] | d
//   Q2_K  256 / 21: scales[16] | qs[64] | d,dmin
//   Q3_K  256 / 28: hmask[32] | qs[64] | scales[12] | d
//   Q4_K  256 / 36: d,dmin | scales[12] | qs[128]
//   Q5_K  256 / 44: d,dmin | scales[12] | qh[32] | qs[128]
//   Q6_K  256 / 53: ql[128] | qh[64] | scales[16] | d
// ("d,m" = two f16 in one word, low half first; a lone f16 sits in the low half of its word.)
// Values are those of ggml's dequantize_row_* (ggml-quants.c), computed in the same order.

// The weight type: ggml's type id (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0,
// 10 Q2_K, 11 Q3_K, 12 Q4_K, 13 Q5_K, 14 Q6_K, 30 BF16).
override WTYPE: u32 = 0u;

const SHIFTS8: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

// The 4 bytes of a word.
fn bytes4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> SHIFTS8) & vec4<u32>(0xFFu);
}

// Byte `i` of the words starting at `base`.
fn byte_at(base: u32, i: u32) -> u32 {
    return (W[base + i / 4u] >> (8u * (i % 4u))) & 0xFFu;
}

fn lo_f16(w: u32) -> f32 {
    return unpack2x16float(w).x;
}

fn hi_f16(w: u32) -> f32 {
    return unpack2x16float(w).y;
}

// The 4 bytes of a word as signed values.
fn sbytes4(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Scale and min `j` (0..8) of a Q4_K/Q5_K block whose 12 scale bytes start at word `s`
// (get_scale_min_k4).
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2<f32>(f32(byte_at(s, j) & 63u), f32(byte_at(s, j + 4u) & 63u));
    }
    let a = byte_at(s, j + 4u);
    let sc = (a & 0xFu) | ((byte_at(s, j - 4u) >> 6u) << 4u);
    let m = (a >> 4u) | ((byte_at(s, j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// Words per block and values per block of WTYPE.
fn block_words() -> u32 {
    switch WTYPE {
        case 0u: { return 4u; }
        case 1u, 30u: { return 2u; }
        case 2u, 3u: { return 5u; }
        case 6u, 7u: { return 6u; }
        case 8u: { return 9u; }
        case 10u: { return 21u; }
        case 11u: { return 28u; }
        case 12u: { return 36u; }
        case 13u: { return 44u; }
        case 14u: { return 53u; }
        default: { return 0u; }
    }
}

fn block_values() -> u32 {
    switch WTYPE {
        case 0u, 1u, 30u: { return 4u; }
        case 2u, 3u, 6u, 7u, 8u: { return 32u; }
        default: { return 256u; }
    }
}

// Values k … k+3 (k a multiple of 4) of the row whose first word is `row`.
fn deq4(row: u32, k: u32) -> vec4<f32> {
    let b = row + (k / block_values()) * block_words();
    switch WTYPE {
        case 0u: {
            return bitcast<vec4<f32>>(vec4<u32>(W[b], W[b + 1u], W[b + 2u], W[b + 3u]));
        }
        case 1u: {
            return vec4<f32>(unpack2x16float(W[b]), unpack2x16float(W[b + 1u]));
        }
        case 30u: {
            let a = W[b];
            let c = W[b + 1u];
            return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xFFFF0000u, c << 16u, c & 0xFFFF0000u));
        }
        case 2u: {
            // Q4_0: value j < 16 in the low nibble of qs[j], j >= 16 in the high nibble of qs[j-16].
            let j = k % 32u;
            let q = (vec4<u32>(W[b + (j % 16u) / 4u]) >> (SHIFTS8 + select(0u, 4u, j >= 16u))) & vec4<u32>(0xFu);
            return (vec4<f32>(q) - 8.0) * lo_f16(W[b + 4u]);
        }
        case 3u: {
            let j = k % 32u;
            let dm = unpack2x16float(W[b]);
            let q = (vec4<u32>(W[b + 1u + (j % 16u) / 4u]) >> (SHIFTS8 + select(0u, 4u, j >= 16u))) & vec4<u32>(0xFu);
            return vec4<f32>(q) * dm.x + dm.y;
        }
        case 6u: {
            // Q5_0: the fifth bit of value j is bit j of qh.
            let j = k % 32u;
            let qh = W[b];
            let lo = (vec4<u32>(W[b + 1u + (j % 16u) / 4u]) >> (SHIFTS8 + select(0u, 4u, j >= 16u))) & vec4<u32>(0xFu);
            let hi = ((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + j)) & vec4<u32>(1u)) << vec4<u32>(4u);
            return (vec4<f32>(lo | hi) - 16.0) * lo_f16(W[b + 5u]);
        }
        case 7u: {
            let j = k % 32u;
            let dm = unpack2x16float(W[b]);
            let qh = W[b + 1u];
            let lo = (vec4<u32>(W[b + 2u + (j % 16u) / 4u]) >> (SHIFTS8 + select(0u, 4u, j >= 16u))) & vec4<u32>(0xFu);
            let hi = ((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + j)) & vec4<u32>(1u)) << vec4<u32>(4u);
            return vec4<f32>(lo | hi) * dm.x + dm.y;
        }
        case 8u: {
            let j = k % 32u;
            return sbytes4(W[b + j / 4u]) * lo_f16(W[b + 8u]);
        }
        case 10u: {
            // Q2_K: 128-value halves n; in each, 4 shifts j of 32 values, 2 scales of 16 each.
            let e = k % 256u;
            let n = e / 128u;
            let r = e % 128u;
            let j = r / 32u;
            let half = (r % 32u) / 16u;
            let l = r % 16u;
            let q = (vec4<u32>(W[b + 4u + (32u * n + 16u * half + l) / 4u]) >> (SHIFTS8 + 2u * j)) & vec4<u32>(3u);
            let sc = byte_at(b, 8u * n + 2u * j + half);
            let dm = unpack2x16float(W[b + 20u]);
            let dl = dm.x * f32(sc & 0xFu);
            let ml = dm.y * f32(sc >> 4u);
            return dl * vec4<f32>(q) - ml;
        }
        case 11u: {
            // Q3_K: like Q2_K, high bit from hmask (bit 4n+j), 6-bit scales unpacked as in
            // dequantize_row_q3_K's kmask shuffle.
            let e = k % 256u;
            let n = e / 128u;
            let r = e % 128u;
            let j = r / 32u;
            let half = (r % 32u) / 16u;
            let l = r % 16u;
            let q = (vec4<u32>(W[b + 8u + (32u * n + 16u * half + l) / 4u]) >> (SHIFTS8 + 2u * j)) & vec4<u32>(3u);
            let hm = (vec4<u32>(W[b + (16u * half + l) / 4u]) >> (SHIFTS8 + 4u * n + j)) & vec4<u32>(1u);
            let is = 8u * n + 2u * j + half;
            let g = is / 4u;
            let i = is % 4u;
            let low = (byte_at(b + 24u, (g % 2u) * 4u + i) >> (4u * (g / 2u))) & 0xFu;
            let high = (byte_at(b + 24u, 8u + i) >> (2u * g)) & 3u;
            let dl = lo_f16(W[b + 27u]) * f32(i32(low | (high << 4u)) - 32);
            let qv = vec4<f32>(bitcast<vec4<i32>>(q) - bitcast<vec4<i32>>(select(vec4<u32>(4u), vec4<u32>(0u), hm == vec4<u32>(1u))));
            return dl * qv;
        }
        case 12u: {
            // Q4_K: 64-value chunks j; low nibbles are values 0..31, high nibbles 32..63.
            let e = k % 256u;
            let j = e / 64u;
            let hi = (e % 64u) / 32u;
            let l = e % 32u;
            let dm = unpack2x16float(W[b]);
            let sm = scale_min_k4(b + 1u, 2u * j + hi);
            let q = (vec4<u32>(W[b + 4u + (32u * j + l) / 4u]) >> (SHIFTS8 + 4u * hi)) & vec4<u32>(0xFu);
            let d1 = dm.x * sm.x;
            let m1 = dm.y * sm.y;
            return d1 * vec4<f32>(q) - m1;
        }
        case 13u: {
            let e = k % 256u;
            let j = e / 64u;
            let hi = (e % 64u) / 32u;
            let l = e % 32u;
            let dm = unpack2x16float(W[b]);
            let sm = scale_min_k4(b + 1u, 2u * j + hi);
            let q = (vec4<u32>(W[b + 12u + (32u * j + l) / 4u]) >> (SHIFTS8 + 4u * hi)) & vec4<u32>(0xFu);
            let h = ((vec4<u32>(W[b + 4u + l / 4u]) >> (SHIFTS8 + 2u * j + hi)) & vec4<u32>(1u)) << vec4<u32>(4u);
            let d1 = dm.x * sm.x;
            let m1 = dm.y * sm.y;
            return d1 * vec4<f32>(q + h) - m1;
        }
        case 14u: {
            // Q6_K: 128-value halves n; group g of 32 takes ql[64n + l + 32(g&1)] (low nibble
            // for g < 2), 2 bits of qh[32n + l] at 2g, scale sc[8n + l/16 + 2g].
            let e = k % 256u;
            let n = e / 128u;
            let r = e % 128u;
            let g = r / 32u;
            let l = r % 32u;
            let lo = (vec4<u32>(W[b + (64u * n + l + 32u * (g & 1u)) / 4u]) >> (SHIFTS8 + 4u * (g / 2u))) & vec4<u32>(0xFu);
            let hb = (vec4<u32>(W[b + 32u + (32u * n + l) / 4u]) >> (SHIFTS8 + 2u * g)) & vec4<u32>(3u);
            let sb = byte_at(b + 48u, 8u * n + l / 16u + 2u * g);
            let sc = f32((i32(sb) << 24u) >> 24u);
            let q = vec4<f32>(bitcast<vec4<i32>>(lo | (hb << vec4<u32>(4u))) - vec4<i32>(32));
            return lo_f16(W[b + 52u]) * sc * q;
        }
        default: {
            return vec4<f32>(0.0);
        }
    }
}
