// Element-wise ops over activation matrices [n, width] (f32), one invocation per value (or per
// rotated pair), workgroup ids linearised over (x, y) so large dispatches split. Each mirrors the
// CPU op in runtime/src/cpu/ops.rs, in the same arithmetic order.

struct EwParams {
    count: u32,       // invocations doing work
    width: u32,       // values per row
    head_dim: u32,    // rope: values per head
    n_dims: u32,      // rope: rotated dims per head
    neox: u32,        // rope: 1 = NeoX pairs (i, i + n_dims/2), 0 = adjacent pairs
    gelu: u32,        // glu: 1 = GeGLU (tanh GELU), 0 = SwiGLU
    f0: f32,          // softcap: cap
    count2: u32,      // rope: pairs of C (the keys, roped in the same dispatch; 0: none)
    width2: u32,      // rope: values per row of C
}

@group(0) @binding(0) var<storage, read_write> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> P: EwParams;

fn gid(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// A += B
@compute @workgroup_size(64)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = gid(wid, nwg, lid);
    if i < P.count {
        A[i] = A[i] + B[i];
    }
}

// A[t, i] += B[i]
@compute @workgroup_size(64)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = gid(wid, nwg, lid);
    if i < P.count {
        A[i] = A[i] + B[i % P.width];
    }
}

// A = cap · tanh(A / cap)
@compute @workgroup_size(64)
fn softcap(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = gid(wid, nwg, lid);
    if i < P.count {
        A[i] = P.f0 * tanh(A[i] / P.f0);
    }
}

// C = act(A) · B  (f16.wgsl's glu_value)
@compute @workgroup_size(64)
fn glu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = gid(wid, nwg, lid);
    if i < P.count {
        C[i] = glu_value(A[i], B[i], P.gelu == 1u);
    }
}

// Rotary embedding in place, one invocation per (row, head, pair): of A (the queries, P.count
// pairs), then of C (the keys, P.count2 pairs, rows of P.width2). B holds the cos and sin of
// every (row, pair) angle, [n, n_dims/2, 2], computed on the host by the CPU's own code
// (cpu::ops::Rope::for_each_angle): WGSL's cos/sin are only accurate to 2^-11 absolute.
@compute @workgroup_size(64)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var g = gid(wid, nwg, lid);
    var width = P.width;
    let keys = g >= P.count;
    if keys {
        g -= P.count;
        width = P.width2;
        if g >= P.count2 {
            return;
        }
    }
    let half = P.n_dims / 2u;
    let heads = width / P.head_dim;
    let i = g % half;
    let h = (g / half) % heads;
    let t = g / (half * heads);
    let c = B[2u * (t * half + i)];
    let s = B[2u * (t * half + i) + 1u];
    let base = t * width + h * P.head_dim;
    var i0 = base + 2u * i;
    var i1 = i0 + 1u;
    if P.neox == 1u {
        i0 = base + i;
        i1 = base + i + half;
    }
    if keys {
        let x0 = C[i0];
        let x1 = C[i1];
        C[i0] = x0 * c - x1 * s;
        C[i1] = x0 * s + x1 * c;
    } else {
        let x0 = A[i0];
        let x1 = A[i1];
        A[i0] = x0 * c - x1 * s;
        A[i1] = x0 * s + x1 * c;
    }
}

// The bandwidth baseline of `webgguf bench`: C4 = A4, one vec4 per invocation (count: vec4s).
@group(0) @binding(4) var<storage, read> A4: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> C4: array<vec4<u32>>;

@compute @workgroup_size(64)
fn copy4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = gid(wid, nwg, lid);
    if i < P.count {
        C4[i] = A4[i];
    }
}
