// Embedding lookup (get_rows) from quantized rows: Y[t, :] = dequant(W[ids[t] - row0, :]) · scale
// for the tokens whose row lies in this weight chunk [row0, row0 + rows); one invocation per
// (token, 4 values).

struct EmbedParams {
    cols: u32,
    row_words: u32,
    n: u32,
    row0: u32,
    rows: u32,
    has_scale: u32,
    scale: f32,
    w_base: u32,   // word of the chunk's first row in W
}

@group(0) @binding(0) var<storage, read> W: array<u32>;               // [w_base + rows · row_words]
@group(0) @binding(1) var<storage, read> ids: array<u32>;             // [n]
@group(0) @binding(2) var<storage, read_write> Y: array<vec4<f32>>;   // [n, cols / 4]
@group(0) @binding(3) var<uniform> P: EmbedParams;

@compute @workgroup_size(64)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid;
    let c4 = P.cols / 4u;
    if g >= P.n * c4 {
        return;
    }
    let t = g / c4;
    let c = g % c4;
    let id = ids[t];
    if id < P.row0 || id >= P.row0 + P.rows {
        return;
    }
    var v = deq4(P.w_base + (id - P.row0) * P.row_words, 4u * c);
    if P.has_scale == 1u {
        v = v * P.scale;
    }
    Y[g] = v;
}
