// Greedy sampling on the device: the index of the largest logit of the last row (the lowest
// index among equal maxima, as the CPU sampler picks), so greedy decode reads back 4 bytes.
// One workgroup of 256 invocations.

struct ArgmaxParams {
    n: u32,      // logits in the row
    offset: u32, // first logit of the row
}

@group(0) @binding(0) var<storage, read> L: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;   // [1]
@group(0) @binding(2) var<uniform> P: ArgmaxParams;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_index) tid: u32) {
    var bv = -3.402823466e+38;
    var bi = 0xffffffffu;
    for (var i = tid; i < P.n; i += 256u) {
        let v = L[P.offset + i];
        if v > bv || bi == 0xffffffffu {
            bv = v;
            bi = i;
        }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if tid < s {
            let v = best_v[tid + s];
            let i = best_i[tid + s];
            if i != 0xffffffffu && (best_i[tid] == 0xffffffffu || v > best_v[tid] || (v == best_v[tid] && i < best_i[tid])) {
                best_v[tid] = v;
                best_i[tid] = i;
            }
        }
        workgroupBarrier();
    }
    if tid == 0u {
        out[0] = best_i[0];
    }
}
