// Dequantize-matmul: Y[t, y_offset + r] = Σ_k W[r, k] · X[t, k] for weights in the GPU block
// layout (dequant.wgsl), reading the quantized words directly. Two entry points:
// - `matvec` (decode, few tokens): a workgroup computes MV_ROWS output values, MV_LANES
//   invocations per value stride the row 4 values at a time, then a shared-memory tree sum
//   over those lanes. Several values per workgroup keep the barriers per value low: software
//   adapters (SwiftShader, lavapipe) pay dearly for each barrier, and a real GPU still reads each
//   row in coalesced runs of MV_LANES vec4s;
// - `matmul_tiled` (prefill): a workgroup computes a 32-row × 32-token tile; W and X tiles of
//   32 values along k are staged in shared memory, each invocation accumulates 4 × 4 outputs.
// X holds the activations as the CPU backend's dot products see them (already rounded to the
// weight type's vec_dot_type by `act_round` in ops.wgsl). Workgroup ids are linearised over
// (x, y) so dispatches above 65,535 workgroups split into a second dimension.

struct MatParams {
    rows: u32,        // rows of this weight chunk
    cols: u32,        // k (a multiple of 4)
    n: u32,           // tokens
    row_words: u32,   // u32 words per weight row
    y_stride: u32,    // floats per output row (all chunks)
    y_offset: u32,    // first output column of this chunk
}

@group(0) @binding(0) var<storage, read> W: array<u32>;               // [rows, row_words]
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;         // [n, cols / 4]
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;         // [n, y_stride]
@group(0) @binding(3) var<uniform> P: MatParams;

const MV_LANES: u32 = 8u;            // invocations per output value
const MV_ROWS: u32 = 64u / MV_LANES; // output values per workgroup
var<workgroup> mv_part: array<f32, 64>;   // [MV_ROWS][MV_LANES] partial sums

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
        let row = r * P.row_words;
        let c4 = P.cols / 4u;
        let xb = t * c4;
        for (var i = lane; i < c4; i += MV_LANES) {
            acc += dot(deq4(row, 4u * i), X[xb + i]);
        }
    }
    // Barriers stay in uniform control flow: every invocation takes part, live or not.
    mv_part[tid] = acc;
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s = s / 2u) {
        if lane < s {
            mv_part[tid] += mv_part[tid + s];
        }
        workgroupBarrier();
    }
    if live && lane == 0u {
        Y[t * P.y_stride + P.y_offset + r] = mv_part[tid];
    }
}

// Q4_1 / Q5_1 only: Y[t, y_offset + r] += Σ_b m[r, b] · Sfix[t, b], the difference between
// ggml's Q8_1 block sums (f16-rounded) and the rounded activations' sums (act_quant.wgsl mode
// 5), so these types match the CPU to summation order too. One invocation per output value: a
// row has only cols / 32 blocks, too few to share out (and no barriers, see matvec).
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
        acc += hi_f16(W[r * P.row_words + b * block_words()]) * Sfix[t * nb + b];
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
                wv = deq4((r0 + rr) * P.row_words, kk);
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
                Y[t * P.y_stride + P.y_offset + r] = acc[j][i];
            }
        }
    }
}
