// Workgroup sum through shared memory (the variant every adapter runs). Called by all 64
// invocations of a workgroup in uniform control flow; every invocation gets the sum.
const RED_WG: u32 = 64u;
var<workgroup> red_buf: array<f32, 64>;

fn wg_sum(v: f32, tid: u32) -> f32 {
    red_buf[tid] = v;
    workgroupBarrier();
    for (var s = RED_WG / 2u; s > 0u; s = s / 2u) {
        if tid < s {
            red_buf[tid] += red_buf[tid + s];
        }
        workgroupBarrier();
    }
    let r = red_buf[0];
    workgroupBarrier();
    return r;
}

// The sum of v over each aligned run of `lanes` invocations (a power of two ≤ 64), valid in
// the run's first; called by all 64 invocations in uniform control flow (`shuffle`: the
// subgroup variant's choice, unused here).
var<workgroup> lanes_buf: array<f32, 64>;

fn lanes_sum(v: f32, tid: u32, lanes: u32, shuffle: bool) -> f32 {
    lanes_buf[tid] = v;
    workgroupBarrier();
    let lane = tid % lanes;
    for (var s = lanes / 2u; s > 0u; s = s / 2u) {
        if lane < s {
            lanes_buf[tid] += lanes_buf[tid + s];
        }
        workgroupBarrier();
    }
    return lanes_buf[tid];
}
