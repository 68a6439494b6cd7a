// Dequantize-matmul: Y[t, y_offset + r] = Σ_k W[r, k] · X[t, k] for weights in the GPU block
// layout (dequant.wgsl), reading the quantized words directly. Entry points:
// - `matvec` (decode, few tokens): a workgroup computes MV_ROWS output values, MV_LANES
//   invocations per value; each invocation takes runs of 32 consecutive values (one quant block
//   or sub-block: `dot32` reads its scales once and its quants a word at a time), then the
//   lanes are summed (`lanes_sum`: subgroup shuffles where the runtime sets MV_SHUFFLE, else a
//   shared-memory tree). MV_LANES is an override constant chosen per adapter
//   (runtime/src/gpu/ops.rs, `MatvecLayout`): 4 for software adapters (SwiftShader, lavapipe),
//   which pay dearly for each barrier, so several values per workgroup keep the barriers per
//   value low; 32 for hardware GPUs, so a row is read by many lanes in coalesced runs. Rows
//   whose length is not a multiple of 32 (F32/F16/BF16 only) take 4 values a step;
// - `matvec3` and `matvec_glu`: the same for q/k/v, or gate and up with the GLU, read from one
//   buffer in one dispatch;
// - `matmul_tiled` (prefill): a workgroup computes a 32-row × 32-token tile; W and X tiles of
//   32 values along k are staged in shared memory, each invocation accumulates 4 × 4 outputs;
// - `min_fix`: Q4_1/Q5_1's Q8_1 correction after `matmul_tiled` (exact family).
// X holds the activations as the CPU backend's dot products see them: rounded to the weight
// type's vec_dot_type by `act_round` in act_quant.wgsl (the exact family), or unrounded (fast).
// Workgroup ids are linearised over (x, y) so dispatches above 65,535 workgroups split into a
// second dimension.

struct MatParams {
    rows: u32,        // rows of this weight chunk
    cols: u32,        // k (a multiple of 4)
    n: u32,           // tokens
    row_words: u32,   // u32 words per weight row
    y_stride: u32,    // floats per output row (all chunks)
    y_offset: u32,    // first output column of this chunk
    w_base: u32,      // word of the chunk's first row in W
    rows1: u32,       // matvec3: rows of the second weight (0: none), from word w_base1, into Y1
    w_base1: u32,     //   (matvec_glu: the up weight, `rows` rows)
    rows2: u32,       // matvec3: rows of the third weight (0: none), from word w_base2, into Y2
    w_base2: u32,
    row_words2: u32,  // matvec3: words per row of the third weight (of type WTYPE2)
}

@group(0) @binding(0) var<storage, read> W: array<u32>;               // [w_base + rows · row_words] (and the other parts)
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;         // [n, cols / 4]
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;         // [n, y_stride]
@group(0) @binding(3) var<uniform> P: MatParams;
@group(0) @binding(5) var<storage, read_write> Y1: array<f32>;        // matvec3: [n, rows1]
@group(0) @binding(6) var<storage, read_write> Y2: array<f32>;        // matvec3: [n, rows2]

override MV_LANES: u32 = 8u;             // invocations per output value (a power of two ≤ 64)
override MV_ROWS: u32 = 64u / MV_LANES;  // output values per workgroup
override ACCUMULATE: u32 = 0u;           // 1: Y += X · Wᵀ (the residual add fused in), 0: Y =
override MIN_FIX: u32 = 0u;              // 1: Q4_1 / Q5_1 with X rounded as Q8_1: add Sfix
override GELU: u32 = 0u;                 // matvec_glu: 1 GeGLU, 0 SwiGLU
override WTYPE2: u32 = WTYPE;            // matvec3: the third weight's type (v may differ from q/k)
override MV_SHUFFLE: u32 = 0u;           // 1: lanes summed by subgroup shuffles (reduce_subgroup.wgsl's lanes_sum)

// Σ_{k0 ≤ k < k0+32} W[row, k] · X[k] for k0 a multiple of 32, with X's vec4 `x0` = k0 / 4, for
// a row of type `ty` (WTYPE, or matvec3's WTYPE2 for its third weight, a type with its own case):
// per type the block's (or sub-block's) scales once, the quants a word (4 values) at a time,
// and the scales applied to the run's sums (the same values as deq4's, summed in another order).
fn dot32(ty: u32, row: u32, k0: u32, x0: u32) -> f32 {
    switch ty {
        case 2u, 3u: {
            // Q4_0 / Q4_1: qs word w holds values 4w.. in its low nibbles, 16 + 4w.. in its high
            let b = row + (k0 / 32u) * 5u;
            let qs = b + select(0u, 1u, ty == 3u);
            let off = select(0.0, 8.0, ty == 2u);
            var sq = 0.0;
            var sx = 0.0;
            for (var w = 0u; w < 4u; w++) {
                let q = vec4<u32>(W[qs + w]) >> SHIFTS8;
                let xl = X[x0 + w];
                let xh = X[x0 + 4u + w];
                sq += dot(vec4<f32>(q & vec4<u32>(0xFu)) - off, xl) + dot(vec4<f32>((q >> vec4<u32>(4u)) & vec4<u32>(0xFu)) - off, xh);
                sx += dot(xl, vec4<f32>(1.0)) + dot(xh, vec4<f32>(1.0));
            }
            if ty == 2u {
                return lo_f16(W[b + 4u]) * sq;
            }
            let dm = unpack2x16float(W[b]);
            return dm.x * sq + dm.y * sx;
        }
        case 6u, 7u: {
            // Q5_0 / Q5_1: as Q4, the fifth bit of value j is bit j of qh
            let b = row + (k0 / 32u) * 6u;
            let qh = W[b + select(0u, 1u, ty == 7u)];
            let qs = b + select(1u, 2u, ty == 7u);
            let off = select(0.0, 16.0, ty == 6u);
            var sq = 0.0;
            var sx = 0.0;
            for (var w = 0u; w < 4u; w++) {
                let q = vec4<u32>(W[qs + w]) >> SHIFTS8;
                let hl = ((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + 4u * w)) & vec4<u32>(1u)) << vec4<u32>(4u);
                let hh = ((vec4<u32>(qh) >> (vec4<u32>(16u, 17u, 18u, 19u) + 4u * w)) & vec4<u32>(1u)) << vec4<u32>(4u);
                let xl = X[x0 + w];
                let xh = X[x0 + 4u + w];
                sq += dot(vec4<f32>((q & vec4<u32>(0xFu)) | hl) - off, xl) + dot(vec4<f32>(((q >> vec4<u32>(4u)) & vec4<u32>(0xFu)) | hh) - off, xh);
                sx += dot(xl, vec4<f32>(1.0)) + dot(xh, vec4<f32>(1.0));
            }
            if ty == 6u {
                return lo_f16(W[b + 5u]) * sq;
            }
            let dm = unpack2x16float(W[b]);
            return dm.x * sq + dm.y * sx;
        }
        case 8u: {
            // Q8_0
            let b = row + (k0 / 32u) * 9u;
            var sq = 0.0;
            for (var w = 0u; w < 8u; w++) {
                sq += dot(sbytes4(W[b + w]), X[x0 + w]);
            }
            return lo_f16(W[b + 8u]) * sq;
        }
        case 12u, 13u: {
            // Q4_K / Q5_K: the run is sub-block 2j + hi of 64-value chunk j: one scale and min
            let b = row + (k0 / 256u) * select(36u, 44u, ty == 13u);
            let e = k0 % 256u;
            let j = e / 64u;
            let hi = (e % 64u) / 32u;
            let dm = unpack2x16float(W[b]);
            let sm = scale_min_k4(b + 1u, 2u * j + hi);
            let qs = b + select(4u, 12u, ty == 13u) + 8u * j;
            var sq = 0.0;
            var sx = 0.0;
            for (var w = 0u; w < 8u; w++) {
                var q = (vec4<u32>(W[qs + w]) >> (SHIFTS8 + 4u * hi)) & vec4<u32>(0xFu);
                if ty == 13u {
                    q |= ((vec4<u32>(W[b + 4u + w]) >> (SHIFTS8 + 2u * j + hi)) & vec4<u32>(1u)) << vec4<u32>(4u);
                }
                let xv = X[x0 + w];
                sq += dot(vec4<f32>(q), xv);
                sx += dot(xv, vec4<f32>(1.0));
            }
            return dm.x * sm.x * sq - dm.y * sm.y * sx;
        }
        case 14u: {
            // Q6_K: the run is group g of 128-value half n: two scales of 16 values each
            let b = row + (k0 / 256u) * 53u;
            let e = k0 % 256u;
            let n = e / 128u;
            let g = (e % 128u) / 32u;
            let lo = b + (64u * n + 32u * (g & 1u)) / 4u;
            let hb = b + 32u + 8u * n;
            var s0 = 0.0;
            var s1 = 0.0;
            for (var w = 0u; w < 8u; w++) {
                let l4 = (vec4<u32>(W[lo + w]) >> (SHIFTS8 + 4u * (g / 2u))) & vec4<u32>(0xFu);
                let h4 = (vec4<u32>(W[hb + w]) >> (SHIFTS8 + 2u * g)) & vec4<u32>(3u);
                let q = vec4<f32>(bitcast<vec4<i32>>(l4 | (h4 << vec4<u32>(4u))) - vec4<i32>(32));
                let d = dot(q, X[x0 + w]);
                if w < 4u {
                    s0 += d;
                } else {
                    s1 += d;
                }
            }
            let sc0 = f32((i32(byte_at(b + 48u, 8u * n + 2u * g)) << 24u) >> 24u);
            let sc1 = f32((i32(byte_at(b + 48u, 8u * n + 1u + 2u * g)) << 24u) >> 24u);
            return lo_f16(W[b + 52u]) * (sc0 * s0 + sc1 * s1);
        }
        default: {
            // F32, F16, BF16, Q2_K, Q3_K (ty is WTYPE: deq4 reads WTYPE): value by value
            var acc = 0.0;
            for (var w = 0u; w < 8u; w++) {
                acc += dot(deq4(row, k0 + 4u * w), X[x0 + w]);
            }
            return acc;
        }
    }
}

// This invocation's share of Σ_k W[row, k] · X[t, k] (`row`: the row's first word in W, of type
// `ty`): the runs of 32 values lane, lane + MV_LANES, …
fn row_dot(ty: u32, row: u32, t: u32, lane: u32) -> f32 {
    var acc = 0.0;
    let c4 = P.cols / 4u;
    let xb = t * c4;
    if P.cols % 32u == 0u {
        let nb = P.cols / 32u;
        let q8_1 = MIN_FIX == 1u && (ty == 3u || ty == 7u);
        for (var i = lane; i < nb; i += MV_LANES) {
            acc += dot32(ty, row, 32u * i, xb + 8u * i);
            if q8_1 {
                // Q4_1 / Q5_1: the block's min times its Q8_1 sum correction (min_fix)
                acc += hi_f16(W[row + i * block_words()]) * Sfix[t * nb + i];
            }
        }
    } else {
        for (var i = lane; i < c4; i += MV_LANES) {
            acc += dot(deq4(row, 4u * i), X[xb + i]);
        }
    }
    return acc;
}

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) tid: u32) {
    let lane = tid % MV_LANES;
    let o = (wid.x + wid.y * nwg.x) * MV_ROWS + tid / MV_LANES;   // output index over (t, r)
    let live = o < P.rows * P.n;
    let r = o % P.rows;
    let t = o / P.rows;
    var acc = 0.0;
    if live {
        acc = row_dot(WTYPE, P.w_base + r * P.row_words, t, lane);
    }
    let sum = lanes_sum(acc, tid, MV_LANES, MV_SHUFFLE == 1u);
    if live && lane == 0u {
        let i = t * P.y_stride + P.y_offset + r;
        if ACCUMULATE == 1u {
            Y[i] = Y[i] + sum;
        } else {
            Y[i] = sum;
        }
    }
}

// Up to three weights of one width, stored in one buffer, times the same X in one dispatch (q, k
// and v): rows [0, rows) from w_base into Y, then rows1 from w_base1 into Y1 (both WTYPE), then
// rows2 from w_base2 into Y2 (WTYPE2: Q4_K_M's v may be Q6_K; the runtime pairs only types
// with their own dot32 case and widths a multiple of 32). Each output is [n, its rows].
@compute @workgroup_size(64)
fn matvec3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let lane = tid % MV_LANES;
    let all = P.rows + P.rows1 + P.rows2;
    let o = (wid.x + wid.y * nwg.x) * MV_ROWS + tid / MV_LANES;   // output index over (t, row of all)
    let live = o < all * P.n;
    let ra = o % all;
    let t = o / all;
    var part = 0u;
    var r = ra;
    var base = P.w_base;
    if ra >= P.rows + P.rows1 {
        part = 2u;
        r = ra - P.rows - P.rows1;
        base = P.w_base2;
    } else if ra >= P.rows {
        part = 1u;
        r = ra - P.rows;
        base = P.w_base1;
    }
    var acc = 0.0;
    if live {
        if part == 2u {
            acc = row_dot(WTYPE2, base + r * P.row_words2, t, lane);
        } else {
            acc = row_dot(WTYPE, base + r * P.row_words, t, lane);
        }
    }
    let sum = lanes_sum(acc, tid, MV_LANES, MV_SHUFFLE == 1u);
    if live && lane == 0u {
        if part == 0u {
            Y[t * P.rows + r] = sum;
        } else if part == 1u {
            Y1[t * P.rows1 + r] = sum;
        } else {
            Y2[t * P.rows2 + r] = sum;
        }
    }
}

// Gate and up weights of one type and shape, stored in one buffer (gate rows from w_base, up
// rows from w_base1), times the same X, with the GLU applied: Y[t, r] = act(gate · x) · (up · x)
// (f16.wgsl's glu_value, as the elementwise `glu`).
@compute @workgroup_size(64)
fn matvec_glu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) tid: u32) {
    let lane = tid % MV_LANES;
    let o = (wid.x + wid.y * nwg.x) * MV_ROWS + tid / MV_LANES;   // output index over (t, r)
    let live = o < P.rows * P.n;
    let r = o % P.rows;
    let t = o / P.rows;
    var acc_gate = 0.0;
    var acc_up = 0.0;
    if live {
        acc_gate = row_dot(WTYPE, P.w_base + r * P.row_words, t, lane);
        acc_up = row_dot(WTYPE, P.w_base1 + r * P.row_words, t, lane);
    }
    let gate = lanes_sum(acc_gate, tid, MV_LANES, MV_SHUFFLE == 1u);
    let up = lanes_sum(acc_up, tid, MV_LANES, MV_SHUFFLE == 1u);
    if live && lane == 0u {
        Y[t * P.rows + r] = glu_value(gate, up, GELU == 1u);
    }
}

// Q4_1 / Q5_1 only: Y[t, y_offset + r] += Σ_b m[r, b] · Sfix[t, b], the difference between
// ggml's Q8_1 block sums (f16-rounded) and the rounded activations' sums (act_quant.wgsl's
// ACT_Q8_1), so these types match the CPU to summation order too. `matvec` adds it per block itself;
// this entry follows `matmul_tiled`. One invocation per output value: a row has only cols / 32
// blocks, too few to share out (and no barriers, see matvec).
@group(0) @binding(4) var<storage, read> Sfix: array<f32>;             // [n, cols / 32]

@compute @workgroup_size(64)
fn min_fix(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
    let o = (wid.x + wid.y * nwg.x) * 64u + tid;
    if o >= P.rows * P.n {
        return;
    }
    let r = o % P.rows;
    let t = o / P.rows;
    let nb = P.cols / 32u;
    var acc = 0.0;
    for (var b = 0u; b < nb; b++) {
        acc += hi_f16(W[P.w_base + r * P.row_words + b * block_words()]) * Sfix[t * nb + b];
    }
    let i = t * P.y_stride + P.y_offset + r;
    Y[i] = Y[i] + acc;
}

const TILE: u32 = 32u;
var<workgroup> w_tile: array<vec4<f32>, 256>;   // [32 rows][8 vec4 along k]
var<workgroup> x_tile: array<vec4<f32>, 256>;   // [32 tokens][8 vec4 along k]

@compute @workgroup_size(64)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
    let tiles_r = (P.rows + TILE - 1u) / TILE;
    let g = wid.x + wid.y * nwg.x;
    let r0 = (g % tiles_r) * TILE;
    let t0 = (g / tiles_r) * TILE;
    if t0 >= P.n {
        return;
    }
    let tr = (tid % 8u) * 4u;   // this invocation's 4 rows
    let tt = (tid / 8u) * 4u;   // and 4 tokens
    let c4 = P.cols / 4u;
    var acc: array<vec4<f32>, 4>;  // acc[token] = 4 rows
    for (var k0 = 0u; k0 < P.cols; k0 += TILE) {
        for (var i = tid; i < 256u; i += 64u) {
            let rr = i / 8u;
            let kk = k0 + (i % 8u) * 4u;
            var wv = vec4<f32>(0.0);
            if r0 + rr < P.rows && kk < P.cols {
                wv = deq4(P.w_base + (r0 + rr) * P.row_words, kk);
            }
            w_tile[i] = wv;
            var xv = vec4<f32>(0.0);
            if t0 + rr < P.n && kk < P.cols {
                xv = X[(t0 + rr) * c4 + kk / 4u];
            }
            x_tile[i] = xv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 8u; kk++) {
            let w0 = w_tile[(tr + 0u) * 8u + kk];
            let w1 = w_tile[(tr + 1u) * 8u + kk];
            let w2 = w_tile[(tr + 2u) * 8u + kk];
            let w3 = w_tile[(tr + 3u) * 8u + kk];
            for (var j = 0u; j < 4u; j++) {
                let xv = x_tile[(tt + j) * 8u + kk];
                acc[j] += vec4<f32>(dot(w0, xv), dot(w1, xv), dot(w2, xv), dot(w3, xv));
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let t = t0 + tt + j;
        for (var i = 0u; i < 4u; i++) {
            let r = r0 + tr + i;
            if t < P.n && r < P.rows {
                let o = t * P.y_stride + P.y_offset + r;
                if ACCUMULATE == 1u {
                    Y[o] = Y[o] + acc[j][i];
                } else {
                    Y[o] = acc[j][i];
                }
            }
        }
    }
}
