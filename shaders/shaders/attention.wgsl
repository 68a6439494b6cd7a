// Attention over the KV cache, reading it in its stored (possibly quantized) form; mirrors
// cpu/attention.rs. One layer's cache is one buffer KV: K rows [n_ctx][n_kv_heads][k_row_words]
// from word 0, V rows [n_ctx][n_kv_heads][v_row_words] from word v_base, and for a quantized
// cache the layer's K offset [n_kv_heads * hdk] f32 from word offset_base, and for a quantized
// cache with f16 copies (kv_cache/'s KvCache::with_recent; P.recent > 0) the copies' K rows
// [sink + recent][n_kv_heads][hdk / 2] from word copies_k and V rows from copies_v, in the
// slots of RecentRows (position p < sink in slot p, others in sink + p % recent), f16 pairs.
// X holds the pass's rows in the same form ([n][n_kv_heads][hdk / 2] K, then V from stash_v)
// for its own queries, until kv_keep moves the kept ones to their slots. Row formats by KVTYPE
// (ggml ids): 0 F32 (1 word per value), 1 F16 (2 values per word), 8 Q8_0 (per 32 values: 8 words
// of i8 quants, then the f16 scale), 2 Q4_0 (per 32 values: 4 words of nibbles, value j in the
// low nibble of byte j and j+16 in its high nibble, then the f16 scale).
// Entry points:
// - kv_offset (quantized cache, a pass from position 0): the layer's K offset, the mean K of the
//   pass's tokens after the first (kv_cache/rows.rs's k_offset, the same operations), one
//   invocation per K channel;
// - kv_store: quantizes new K/V rows into the cache, one invocation per (token, head, 32 values)
//   (quantize_row_q8_0_ref / quantize_row_q4_0_ref, f16 with round-to-nearest-even; a quantized
//   cache stores K less the offset);
// - attn_split (flash decoding): one workgroup per (token, head, split of SPLIT positions):
//   scale · q·k of the split's visible positions (in [start(pos), pos]) into workgroup memory,
//   their max m, e = exp(s - m), their sum l, then Σ e·V; no score buffer. With one split
//   (a context of at most SPLIT positions) it writes the output Σ e·V / l itself; otherwise
//   (m, l, Σ e·V) to S for
// - attn_merge: one workgroup per (token, head): M = max m, the output Σ e^(m - M)·(Σ e·V) /
//   Σ e^(m - M)·l. For a quantized cache the output is rotated back per group of 32 before it
//   leaves (by whichever of the two writes it).
// - kv_keep (cache with copies, after the pass's attention): X's rows of positions
//   pos0 + t0 .. + n to their slots, one invocation per word;
// - kv_store also prepares the queries for a quantized cache in the same dispatch (P.q_groups
//   invocations after the stores): O ← Qin as the CPU's integer dot products see them, rotated
//   per group of 32, then rounded as Q8_0 (act_quant.wgsl's ACT_Q8_0, the same operations).
// A quantized cache stores K and V rows rotated by the orthonormal Walsh–Hadamard transform of
// each group of 32 (kv_store rotates before quantizing); queries are rotated to match and the
// output rotated back (kv_cache/mod.rs says why).

override KVTYPE: u32 = 0u;

// Q8_0 or Q4_0: rows rotated, K less the offset (KvType::rotates / offsets_k on the CPU).
fn quantized() -> bool {
    return KVTYPE == 2u || KVTYPE == 8u;
}

struct AttnParams {
    n: u32,            // query rows in this dispatch
    t0: u32,           // index of the first of them among the pass's tokens
    n_heads: u32,
    n_kv_heads: u32,
    hdk: u32,
    hdv: u32,
    pos0: u32,         // position of the pass's first token
    n_kv: u32,         // positions in the cache after this pass (pos0 + tokens)
    window: u32,       // sliding window (0 = none): p is visible from pos when pos - p < window
    k_row_words: u32,
    v_row_words: u32,
    v_base: u32,
    scale: f32,
    offset_base: u32,  // word of the K offset (quantized cache)
    inv_count: f32,    // kv_offset: 1 / (tokens - 1), 0 for one token
    sink: u32,         // f16 copies (0 recent: none): RecentRows's sink and recent
    recent: u32,
    sink_n: u32,       // sink positions 0..sink_n held before this pass
    ring_lo: u32,      // recent positions ring_lo..ring_hi held before this pass
    ring_hi: u32,
    copies_k: u32,     // word of the copies' K rows in KV
    copies_v: u32,     // word of their V rows
    stash_v: u32,      // word of the pass's V rows in X
    q_groups: u32,     // kv_store: groups of 32 query values to prepare after the stores (0: none)
    keep_in_store: u32, // kv_store, one token (decode): its copies go to their slot at once, no
                        // kv_keep (the slot's old position is outside the query's copy window)
    n_splits: u32,      // attn_split / attn_merge: splits of SPLIT positions over [0, n_kv)
}

@group(0) @binding(0) var<storage, read_write> KV: array<u32>;
@group(0) @binding(1) var<storage, read> Kin: array<f32>;    // kv_store: [n, n_kv_heads * hdk]; attn_split: Q [n_all, n_heads * hdk]
@group(0) @binding(2) var<storage, read> Vin: array<f32>;    // kv_store: [n, n_kv_heads * hdv]
@group(0) @binding(3) var<storage, read_write> S: array<f32>; // attn_split's partials [n, n_heads, n_splits, 2 + hdv] (max, sum, Σ e·V)
@group(0) @binding(4) var<storage, read_write> O: array<f32>;   // the output [n_all, n_heads * hdv] (kv_store: the prepared queries)
@group(0) @binding(5) var<uniform> P: AttnParams;
@group(0) @binding(6) var<storage, read_write> X: array<u32>; // the pass's rows as f16 copies (a placeholder word without copies)
@group(0) @binding(7) var<storage, read> Qin: array<f32>;    // kv_store: the queries [n, n_heads * hdk] (prepared into O)

const NO_COPY: u32 = 0xFFFFFFFFu;

// The slot of position p among a layer's copies (RecentRows::slot).
fn copy_slot(p: u32) -> u32 {
    if p < P.sink {
        return p;
    }
    return P.sink + p % P.recent;
}

// Where the query at `pos` reads KV head kvh's K (or V) row of position p as an f16 copy: the
// row's word in KV, or in X with bit 31 set; NO_COPY for the quantized row (RecentRows's
// reads_copy and kept, and the pass's own rows first as KvCache's pending batch).
fn copy_row(p: u32, pos: u32, kvh: u32, is_k: bool) -> u32 {
    if !quantized() || P.recent == 0u || (p >= P.sink && p + P.recent <= pos) {
        return NO_COPY;
    }
    let words = select(P.hdv, P.hdk, is_k) / 2u;
    if p >= P.pos0 {
        return 0x80000000u | (select(P.stash_v, 0u, is_k) + ((p - P.pos0) * P.n_kv_heads + kvh) * words);
    }
    let held = select(p >= P.ring_lo && p < P.ring_hi, p < P.sink_n, p < P.sink);
    if !held {
        return NO_COPY;
    }
    return select(P.copies_v, P.copies_k, is_k) + (copy_slot(p) * P.n_kv_heads + kvh) * words;
}

// Values k … k+3 of the f16 copy at `row` (copy_row's answer).
fn copy_deq4(row: u32, k: u32) -> vec4<f32> {
    let r = (row & 0x7FFFFFFFu) + k / 2u;
    if (row & 0x80000000u) != 0u {
        return vec4<f32>(unpack2x16float(X[r]), unpack2x16float(X[r + 1u]));
    }
    return vec4<f32>(unpack2x16float(KV[r]), unpack2x16float(KV[r + 1u]));
}

fn row_words(hd: u32) -> u32 {
    switch KVTYPE {
        case 0u: { return hd; }
        case 1u: { return hd / 2u; }
        case 8u: { return hd / 32u * 9u; }
        default: { return hd / 32u * 5u; }
    }
}

// Values k … k+3 of the cache row starting at word `row`.
fn kv_deq4(row: u32, k: u32) -> vec4<f32> {
    switch KVTYPE {
        case 0u: {
            return bitcast<vec4<f32>>(vec4<u32>(KV[row + k], KV[row + k + 1u], KV[row + k + 2u], KV[row + k + 3u]));
        }
        case 1u: {
            return vec4<f32>(unpack2x16float(KV[row + k / 2u]), unpack2x16float(KV[row + k / 2u + 1u]));
        }
        case 8u: {
            let b = row + (k / 32u) * 9u;
            let w = KV[b + (k % 32u) / 4u];
            let q = bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
            return vec4<f32>(q) * unpack2x16float(KV[b + 8u]).x;
        }
        default: {
            let b = row + (k / 32u) * 5u;
            let j = k % 32u;
            let q = (vec4<u32>(KV[b + (j % 16u) / 4u]) >> (vec4<u32>(0u, 8u, 16u, 24u) + select(0u, 4u, j >= 16u))) & vec4<u32>(0xFu);
            return (vec4<f32>(q) - 8.0) * unpack2x16float(KV[b + 4u]).x;
        }
    }
}

// H₃₂/√32 · x in place: the butterflies of kv_cache/rows.rs's rotate_groups in the same order, so
// the same f32 results.
fn rotate32(x: ptr<function, array<f32, 32>>) {
    for (var h = 1u; h < 32u; h *= 2u) {
        for (var i = 0u; i < 32u; i++) {
            if (i & h) == 0u {
                let a = (*x)[i];
                let b = (*x)[i + h];
                (*x)[i] = a + b;
                (*x)[i + h] = a - b;
            }
        }
    }
    for (var i = 0u; i < 32u; i++) {
        (*x)[i] *= 0.17677669;
    }
}

// The largest |x| of a group and the first value of that magnitude, sign kept (the `amax` and
// `max` of ggml's reference quantizers).
fn group_max(x: ptr<function, array<f32, 32>>) -> vec2<f32> {
    var amax = 0.0;
    var vmax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        let v = (*x)[i];
        if abs(v) > amax {
            amax = abs(v);
            vmax = v;
        }
    }
    return vec2<f32>(amax, vmax);
}

// Stores 32 values x[0..32) (from `src`, K or V input) as one group starting at word `dst`
// (for a quantized cache K less its offset from channel `chan` on, then rotated; with copies
// also as 16 f16 pairs at X's word `copy`, and at KV's word `slot_copy` unless NO_COPY).
fn store_group(dst: u32, from_v: bool, src: u32, chan: u32, copy: u32, slot_copy: u32) {
    var x: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) {
        if from_v {
            x[i] = Vin[src + i];
        } else if quantized() {
            x[i] = Kin[src + i] - bitcast<f32>(KV[P.offset_base + chan + i]);
        } else {
            x[i] = Kin[src + i];
        }
    }
    if quantized() {
        rotate32(&x);
        if P.recent > 0u {
            for (var i = 0u; i < 16u; i++) {
                X[copy + i] = pack2x16float(vec2<f32>(round_f16(x[2u * i]), round_f16(x[2u * i + 1u])));
            }
            if slot_copy != NO_COPY {
                for (var i = 0u; i < 16u; i++) {
                    KV[slot_copy + i] = X[copy + i];
                }
            }
        }
    }
    let m = group_max(&x);
    let amax = m.x;
    let vmax = m.y;
    switch KVTYPE {
        case 0u: {
            for (var i = 0u; i < 32u; i++) {
                KV[dst + i] = bitcast<u32>(x[i]);
            }
        }
        case 1u: {
            for (var i = 0u; i < 16u; i++) {
                KV[dst + i] = pack2x16float(vec2<f32>(round_f16(x[2u * i]), round_f16(x[2u * i + 1u])));
            }
        }
        case 8u: {
            let step = q8_0_step(amax);
            let d = step.x;
            let id = step.y;
            for (var w = 0u; w < 8u; w++) {
                var word = 0u;
                for (var b = 0u; b < 4u; b++) {
                    let q = i32(round_half_away(x[4u * w + b] * id));
                    word |= (bitcast<u32>(q) & 0xFFu) << (8u * b);
                }
                KV[dst + w] = word;
            }
            KV[dst + 8u] = pack2x16float(vec2<f32>(round_f16(d), 0.0));
        }
        default: {
            let d = div_rn(vmax, -8.0);
            var id = 0.0;
            if d != 0.0 {
                id = div_rn(1.0, d);
            }
            for (var w = 0u; w < 4u; w++) {
                var word = 0u;
                for (var b = 0u; b < 4u; b++) {
                    let j = 4u * w + b;
                    let q0 = u32(min(15.0, trunc(x[j] * id + 8.5)));
                    let q1 = u32(min(15.0, trunc(x[j + 16u] * id + 8.5)));
                    word |= (q0 | (q1 << 4u)) << (8u * b);
                }
                KV[dst + w] = word;
            }
            KV[dst + 4u] = pack2x16float(vec2<f32>(round_f16(d), 0.0));
        }
    }
}

fn group_words() -> u32 {
    return row_words(32u);
}

@compute @workgroup_size(64)
fn kv_offset(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let c = (wid.x + wid.y * nwg.x) * 64u + lid;
    let width = P.n_kv_heads * P.hdk;
    if c >= width {
        return;
    }
    var sum = 0.0;
    for (var t = 1u; t < P.n; t++) {
        sum += Kin[t * width + c];
    }
    KV[P.offset_base + c] = bitcast<u32>(sum * P.inv_count);
}

@compute @workgroup_size(64)
fn kv_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid;
    let gk = P.hdk / 32u;
    let gv = P.hdv / 32u;
    let per_tok = P.n_kv_heads * (gk + gv);
    if g >= P.n * per_tok {
        prepare_q(g - P.n * per_tok);
        return;
    }
    let t = g / per_tok;
    let r = g % per_tok;
    let pos = P.pos0 + P.t0 + t;
    if r < P.n_kv_heads * gk {
        let h = r / gk;
        let j = r % gk;
        let dst = (pos * P.n_kv_heads + h) * P.k_row_words + j * group_words();
        let copy = (t * P.n_kv_heads + h) * P.hdk / 2u + 16u * j;
        let slot = select(NO_COPY, P.copies_k + copy_slot(pos) * P.n_kv_heads * P.hdk / 2u + copy, P.keep_in_store == 1u);
        store_group(dst, false, t * P.n_kv_heads * P.hdk + h * P.hdk + 32u * j, h * P.hdk + 32u * j, copy, slot);
    } else {
        let r2 = r - P.n_kv_heads * gk;
        let h = r2 / gv;
        let j = r2 % gv;
        let dst = P.v_base + (pos * P.n_kv_heads + h) * P.v_row_words + j * group_words();
        let copy = (t * P.n_kv_heads + h) * P.hdv / 2u + 16u * j;
        let slot = select(NO_COPY, P.copies_v + copy_slot(pos) * P.n_kv_heads * P.hdv / 2u + copy, P.keep_in_store == 1u);
        store_group(dst, true, t * P.n_kv_heads * P.hdv + h * P.hdv + 32u * j, 0u, P.stash_v + copy, slot);
    }
}

@compute @workgroup_size(64)
fn kv_keep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lid;
    let wk = P.n_kv_heads * P.hdk / 2u;
    let wv = P.n_kv_heads * P.hdv / 2u;
    if g >= P.n * (wk + wv) {
        return;
    }
    let t = P.t0 + g / (wk + wv);
    let w = g % (wk + wv);
    let slot = copy_slot(P.pos0 + t);
    if w < wk {
        KV[P.copies_k + slot * wk + w] = X[t * wk + w];
    } else {
        KV[P.copies_v + slot * wv + w - wk] = X[P.stash_v + t * wv + w - wk];
    }
}

fn first_visible(pos: u32) -> u32 {
    if P.window > 0u && pos + 1u > P.window {
        return pos + 1u - P.window;
    }
    return 0u;
}

// Scale · q·k of the query at row `qb` of Kin with K head kvh's row of position p (the query
// at `pos` reads it from an f16 copy where RecentRows says so).
fn score(qb: u32, p: u32, pos: u32, kvh: u32) -> f32 {
    let krow = (p * P.n_kv_heads + kvh) * P.k_row_words;
    let copy = copy_row(p, pos, kvh, true);
    var s = 0.0;
    for (var k = 0u; k < P.hdk; k += 4u) {
        let q = vec4<f32>(Kin[qb + k], Kin[qb + k + 1u], Kin[qb + k + 2u], Kin[qb + k + 3u]);
        if copy != NO_COPY {
            s += dot(q, copy_deq4(copy, k));
        } else {
            s += dot(q, kv_deq4(krow, k));
        }
    }
    return P.scale * s;
}

// Values d … d+3 of V head kvh's row of position p, as the query at `pos` reads it.
fn v_deq4(p: u32, pos: u32, kvh: u32, d: u32) -> vec4<f32> {
    let copy = copy_row(p, pos, kvh, false);
    if copy != NO_COPY {
        return copy_deq4(copy, d);
    }
    return kv_deq4(P.v_base + (p * P.n_kv_heads + kvh) * P.v_row_words, d);
}

var<workgroup> max_buf: array<f32, 64>;

// The workgroup's max of m (every invocation gets it); uniform control flow.
fn wg_max(v: f32, tid: u32) -> f32 {
    max_buf[tid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if tid < s {
            max_buf[tid] = max(max_buf[tid], max_buf[tid + s]);
        }
        workgroupBarrier();
    }
    let m = max_buf[0];
    workgroupBarrier();
    return m;
}

// A head's output O[ob .. ob + hdv] rotated back in place (a quantized cache stores rotated
// rows): one invocation per group of 32. Uniform control flow.
fn rotate_back(ob: u32, tid: u32) {
    storageBarrier();
    if 32u * tid < P.hdv {
        var x: array<f32, 32>;
        let gb = ob + 32u * tid;
        for (var i = 0u; i < 32u; i++) {
            x[i] = O[gb + i];
        }
        rotate32(&x);
        for (var i = 0u; i < 32u; i++) {
            O[gb + i] = x[i];
        }
    }
}

// SPLIT (positions per attn_split workgroup) is prepended by shaders/src/lib.rs (ATTN_SPLIT).
var<workgroup> split_e: array<f32, SPLIT>;    // the split's scores, then exp(score - split max)

@compute @workgroup_size(64)
fn attn_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) tid: u32) {
    let g = wid.x + wid.y * nwg.x;   // over (token, head, split)
    if g >= P.n * P.n_heads * P.n_splits {
        return;
    }
    let sp = g % P.n_splits;
    let h = (g / P.n_splits) % P.n_heads;
    let t = g / (P.n_splits * P.n_heads);
    let pos = P.pos0 + P.t0 + t;
    let p0 = sp * SPLIT;
    let lo = max(first_visible(pos), p0);
    let hi = min(pos + 1u, p0 + SPLIT);   // visible positions of the split: [lo, hi)
    let kvh = h / (P.n_heads / P.n_kv_heads);
    let qb = (P.t0 + t) * P.n_heads * P.hdk + h * P.hdk;
    var m = -3.402823466e+38;
    for (var i = tid; i < SPLIT; i += 64u) {
        var s = -3.402823466e+38;
        if p0 + i >= lo && p0 + i < hi {
            s = score(qb, p0 + i, pos, kvh);
        }
        split_e[i] = s;
        m = max(m, s);
    }
    m = wg_max(m, tid);   // its barriers also publish split_e
    var sum = 0.0;
    for (var i = tid; i < SPLIT; i += 64u) {
        var e = 0.0;
        if p0 + i >= lo && p0 + i < hi {
            e = exp(split_e[i] - m);
        }
        split_e[i] = e;
        sum += e;
    }
    let total = wg_sum(sum, tid);   // its barriers also publish split_e
    let one = P.n_splits == 1u;
    let ob = (P.t0 + t) * P.n_heads * P.hdv + h * P.hdv;
    let pb = g * (P.hdv + 2u);   // this split's partial in S: max, sum, hdv values
    for (var d = 4u * tid; d < P.hdv; d += 256u) {
        var acc = vec4<f32>(0.0);
        for (var p = lo; p < hi; p++) {
            acc += split_e[p - p0] * v_deq4(p, pos, kvh, d);
        }
        if one {
            let o = acc / total;
            O[ob + d] = o.x;
            O[ob + d + 1u] = o.y;
            O[ob + d + 2u] = o.z;
            O[ob + d + 3u] = o.w;
        } else {
            S[pb + 2u + d] = acc.x;
            S[pb + 3u + d] = acc.y;
            S[pb + 4u + d] = acc.z;
            S[pb + 5u + d] = acc.w;
        }
    }
    if !one && tid == 0u {
        S[pb] = m;
        S[pb + 1u] = total;
    }
    if one && quantized() {
        rotate_back(ob, tid);
    }
}

@compute @workgroup_size(64)
fn attn_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) tid: u32) {
    let g = wid.x + wid.y * nwg.x;   // over (token, head)
    if g >= P.n * P.n_heads {
        return;
    }
    let h = g % P.n_heads;
    let t = g / P.n_heads;
    let stride = P.hdv + 2u;
    let pb = g * P.n_splits * stride;
    var m = -3.402823466e+38;
    for (var sp = 0u; sp < P.n_splits; sp++) {
        m = max(m, S[pb + sp * stride]);
    }
    var total = 0.0;
    for (var sp = 0u; sp < P.n_splits; sp++) {
        total += S[pb + sp * stride + 1u] * exp(S[pb + sp * stride] - m);
    }
    let ob = (P.t0 + t) * P.n_heads * P.hdv + h * P.hdv;
    for (var d = tid; d < P.hdv; d += 64u) {
        var acc = 0.0;
        for (var sp = 0u; sp < P.n_splits; sp++) {
            acc += S[pb + sp * stride + 2u + d] * exp(S[pb + sp * stride] - m);
        }
        O[ob + d] = acc / total;
    }
    if quantized() {
        rotate_back(ob, tid);
    }
}

// The queries' group g of 32 values (of P.q_groups) from Qin into O as the CPU's integer dot
// products see them: rotated (a quantized cache), then rounded as Q8_0.
fn prepare_q(g: u32) {
    if g >= P.q_groups {
        return;
    }
    var x: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) {
        x[i] = Qin[32u * g + i];
    }
    if quantized() {
        rotate32(&x);
    }
    // quantize_row_q8_0_ref's rounding (act_quant.wgsl's ACT_Q8_0)
    let step = q8_0_step(group_max(&x).x);
    let dh = round_f16(step.x);
    for (var i = 0u; i < 32u; i++) {
        O[32u * g + i] = round_half_away(x[i] * step.y) * dh;
    }
}
