// RMS norm: Y[g] = (X[g] · 1/sqrt(mean(X[g]²) + eps)) · Wn for each group g of `n` consecutive
// values (a whole row, or one head for Q/K norms); one workgroup per group. Mirrors
// cpu::ops::rms_norm (which sums in f64 as ggml does; here the sum is f32, tree-ordered).

struct NormParams {
    n: u32,
    groups: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> Wn: array<f32>;      // [n]
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: NormParams;

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= P.groups {
        return;
    }
    let base = g * P.n;
    var s = 0.0;
    for (var i = tid; i < P.n; i += 64u) {
        let v = X[base + i];
        s += v * v;
    }
    let sum = wg_sum(s, tid);
    let scale = 1.0 / sqrt(sum / f32(P.n) + P.eps);
    for (var i = tid; i < P.n; i += 64u) {
        Y[base + i] = (X[base + i] * scale) * Wn[i];
    }
}
