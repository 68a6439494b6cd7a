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
