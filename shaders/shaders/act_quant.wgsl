// Activation rounding: Y = X as the values ggml's CPU dot products see after quantizing
// it to the weight type's vec_dot_type (cpu/act_quant.rs), so GPU matmuls compute the same
// products as the CPU backend up to summation order:
//   ACT_F16   per value, round to f16 (ggml_fp32_to_fp16, nearest even)
//   ACT_BF16  per value, ggml_fp32_to_bf16
//   ACT_Q8_0  blocks of 32: d = amax/127, q = round-half-away(x/d), value q · f16(d)
//             (quantize_row_q8_0_ref)
//   ACT_Q8_1  as Q8_0, and Sfix[block] = s − f16(d)·Σq, where s = f16(d·Σq) is the block sum
//             ggml's Q4_1/Q5_1 dot products multiply the weight minimum with
//             (quantize_row_q8_1_ref); `matvec` / `min_fix` in matmul.wgsl add m · Sfix per block
//   ACT_Q8_K  blocks of 256: max = first value of largest |x|, iscale = -127/max,
//             q = min(127, nearest-even(iscale·x)), value q · (1/iscale) (quantize_row_q8_K_ref)
// One workgroup per block (the Q8 modes) or per 64 values (F16, BF16). The ACT_* constants are
// prepended by shaders/src/lib.rs from its `ActRound` enum.

struct QuantParams {
    n: u32,        // values in X
    mode: u32,     // an ACT_* constant
}

@group(0) @binding(0) var<storage, read> X: array<f32>;            // [n]
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;      // [n], X rounded
@group(0) @binding(1) var<uniform> P: QuantParams;
@group(0) @binding(2) var<storage, read_write> Sfix: array<f32>;   // ACT_Q8_1: [n / 32]

var<workgroup> amax_buf: array<f32, 64>;
var<workgroup> idx_buf: array<u32, 64>;

fn bf16_round(x: f32) -> f32 {
    let u = bitcast<u32>(x);
    if (u & 0x7fffffffu) > 0x7f800000u {
        return bitcast<f32>((u | 0x00400000u) & 0xffff0000u);
    }
    return bitcast<f32>(((u + (0x7fffu + ((u >> 16u) & 1u))) >> 16u) << 16u);
}

@compute @workgroup_size(64)
fn act_round(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) tid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if P.mode == ACT_F16 || P.mode == ACT_BF16 {
        let i = g * 64u + tid;
        if i < P.n {
            if P.mode == ACT_F16 {
                Y[i] = round_f16(X[i]);
            } else {
                Y[i] = bf16_round(X[i]);
            }
        }
        return;
    }
    let bs = select(32u, 256u, P.mode == ACT_Q8_K);

    let base = g * bs;
    if base >= P.n {
        return;
    }
    // Largest |x| and the first index holding it.
    var am = 0.0;
    var ai = 0xffffffffu;
    for (var i = tid; i < bs; i += 64u) {
        let a = abs(X[base + i]);
        if a > am {
            am = a;
            ai = i;
        }
    }
    amax_buf[tid] = am;
    idx_buf[tid] = ai;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if tid < s {
            let a = amax_buf[tid + s];
            let i = idx_buf[tid + s];
            if a > amax_buf[tid] || (a == amax_buf[tid] && i < idx_buf[tid]) {
                amax_buf[tid] = a;
                idx_buf[tid] = i;
            }
        }
        workgroupBarrier();
    }
    let amax = amax_buf[0];
    let imax = idx_buf[0];
    var vmax = 0.0;
    if amax != 0.0 {
        vmax = X[base + imax];
    }
    workgroupBarrier();   // amax_buf is reused for ACT_Q8_1's sums
    if P.mode == ACT_Q8_0 || P.mode == ACT_Q8_1 {
        let step = q8_0_step(amax);
        let d = step.x;
        let id = step.y;
        let dh = round_f16(d);
        var qsum = 0.0;
        for (var i = tid; i < bs; i += 64u) {
            let q = round_half_away(X[base + i] * id);
            qsum += q;
            Y[base + i] = q * dh;
        }
        if P.mode == ACT_Q8_1 {
            // Σq is an integer below 2^13: exact in f32 in any order.
            amax_buf[tid] = qsum;
            workgroupBarrier();
            if tid == 0u {
                var total = 0.0;
                for (var i = 0u; i < 64u; i++) {
                    total += amax_buf[i];
                }
                Sfix[g] = round_f16(total * d) - dh * total;
            }
        }
    } else {
        if amax == 0.0 {
            for (var i = tid; i < bs; i += 64u) {
                Y[base + i] = 0.0;
            }
            return;
        }
        let iscale = div_rn(-127.0, vmax);
        let d = div_rn(1.0, iscale);
        for (var i = tid; i < bs; i += 64u) {
            Y[base + i] = min(round(iscale * X[base + i]), 127.0) * d;
        }
    }
}
