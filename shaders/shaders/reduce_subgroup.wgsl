// Workgroup sum with subgroup operations (adapters with the subgroups feature): one subgroupAdd
// per subgroup, then one shared slot per subgroup. Slots are handed out by an atomic counter so
// nothing assumes how invocations are laid out in subgroups. Same contract as reduce_shared.wgsl.
var<workgroup> red_buf: array<f32, 64>;
var<workgroup> red_slots: atomic<u32>;

fn wg_sum(v: f32, tid: u32) -> f32 {
    if tid == 0u {
        atomicStore(&red_slots, 0u);
    }
    workgroupBarrier();
    let s = subgroupAdd(v);
    let lane = subgroupExclusiveAdd(1u);
    if lane == 0u {
        red_buf[atomicAdd(&red_slots, 1u)] = s;
    }
    workgroupBarrier();
    let n = atomicLoad(&red_slots);
    var r = 0.0;
    for (var i = 0u; i < n; i++) {
        r += red_buf[i];
    }
    workgroupBarrier();
    return r;
}

// The sum of v over each aligned run of `lanes` invocations, valid in the run's first; called
// by all 64 invocations in uniform control flow. With `shuffle` (the runtime sets it when
// `lanes` ≤ the adapter's least subgroup size) by subgroup shuffles, without barriers: this
// assumes a subgroup holds consecutive invocations from a multiple of its size, as Vulkan,
// Metal and D3D12 drivers lay out a 1-D workgroup (the GPU tests check the sums). Otherwise
// through shared memory, as reduce_shared.wgsl (the same summation order either way).
var<workgroup> lanes_buf: array<f32, 64>;

fn lanes_sum(v: f32, tid: u32, lanes: u32, shuffle: bool) -> f32 {
    if shuffle {
        var s = v;
        for (var m = lanes / 2u; m > 0u; m = m / 2u) {
            s += subgroupShuffleXor(s, m);
        }
        return s;
    }
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
