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
