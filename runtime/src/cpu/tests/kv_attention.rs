//! KV cache round trips and attention against an f64 reference (every cache type, sink and
//! recent copies, batching, f16 vs f32 caches, the exp approximation).

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::kv_cache::rotate_groups;

#[test]
fn kv_round_trip_within_bounds() {
    let mut rng = Rng::new(31);
    for ty in KV_TYPES {
        let (nl, nctx, nkv, dk, dv) = (2, 5, 3, 64, 96);
        let mut c = KvCache::new(ty, nl, nctx, nkv, dk, dv).expect("cache");
        let mut rows = Vec::new();
        for l in 0..nl {
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for p in 0..nctx {
                // K with a part shared by all tokens (what a Q4 cache's K offset takes out)
                let k: Vec<f32> = rng.vec(nkv * dk).iter().enumerate().map(|(i, x)| x + (i as f32 * 0.3).sin()).collect();
                let v = rng.vec(nkv * dv);
                if l == 0 {
                    c.write(l, p, &k, &v).expect("write");
                }
                ks.extend_from_slice(&k);
                vs.extend_from_slice(&v);
                rows.push((l, p, k, v));
            }
            // layer 1: one batch from position 0, which sets a Q4 cache's K offset
            if l == 1 {
                c.write_batch(l, 0, &ks, &vs).expect("write batch");
            }
        }
        assert_eq!(c.n_pos(), nctx);
        for (l, p, k, v) in &rows {
            for (src, d, is_k) in [(k, dk, true), (v, dv, false)] {
                for h in 0..nkv {
                    let mut out = padded(d);
                    if is_k {
                        c.read_k(*l, *p, h, &mut out[..d]);
                    } else {
                        c.read_v(*l, *p, h, &mut out[..d]);
                    }
                    check_pad(&out, d, "kv read");
                    let mut src = src[h * d..(h + 1) * d].to_vec();
                    let out = &mut out[..d];
                    // A type that offsets K quantizes K less the offset: bound the error there.
                    if is_k {
                        let m = c.k_offset(*l, h);
                        assert_eq!(m.len(), if ty.offsets_k() { d } else { 0 });
                        for ((s, o), m) in src.iter_mut().zip(out.iter_mut()).zip(m) {
                            *s -= m;
                            *o -= m;
                        }
                    }
                    // A rotating type quantizes the rotated row: bound the error there.
                    if ty.rotates() {
                        rotate_groups(&mut src);
                        rotate_groups(out);
                    }
                    for (g, (o, s)) in out.chunks(32).zip(src.chunks(32)).enumerate() {
                        let amax = s.iter().fold(0f32, |m, &x| m.max(x.abs()));
                        // (+ the f32 rounding of adding the offset back and taking it off)
                        let bound = 1e-6
                            + match ty {
                                KvType::F32 => 0.0,
                                KvType::F16 => amax * 2f32.powi(-11),
                                // d/2 + f16 rounding of d (≤ 2⁻¹¹·d per unit of q, |q| ≤ 127)
                                KvType::Q8 => amax / 127.0 * 0.57,
                                // the clamp of the extreme value costs a whole step d = amax/8
                                KvType::Q4 => amax / 8.0 * 1.01,
                            };
                        for (a, b) in o.iter().zip(s) {
                            assert!((a - b).abs() <= bound, "{ty:?} l{l} p{p} h{h} g{g}: {a} vs {b} (bound {bound})");
                        }
                    }
                }
            }
        }
    }
}

/// The query as the attention kernels see it: Q8_0 for quantized caches, f32 otherwise.
fn effective_q(ty: KvType, q: &[f32]) -> Vec<f32> {
    if !ty.is_quantized() {
        return q.to_vec();
    }
    // A rotating cache rounds the rotated query; rotated back it meets the rows as read_k gives them.
    let mut q = q.to_vec();
    if ty.rotates() {
        rotate_groups(&mut q);
    }
    let vt = ty.ggml_type().vec_dot_type();
    let mut bytes = vec![0u8; vt.row_bytes(q.len() as u64).expect("q row") as usize];
    quant::quantize_row(vt, &q, &mut bytes).expect("quantize q");
    let mut out = vec![0f32; q.len()];
    quant::dequantize_row(vt, &bytes, &mut out).expect("dequantize q");
    if ty.rotates() {
        rotate_groups(&mut out);
    }
    out
}

/// `q·m` in f64.
fn q_dot(q: &[f32], m: &[f32]) -> f64 {
    q.iter().zip(m).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// f64 attention of `q` over K/V rows given by `kv(p, kv_head) -> (k, v)`, with `shifts[h]`
/// (when given) added to head `h`'s dot products before they are scaled.
#[allow(clippy::too_many_arguments)]
fn attention_reference(
    kv: &dyn Fn(usize, usize) -> (Vec<f32>, Vec<f32>),
    dk: usize,
    dv: usize,
    nkv: usize,
    q: &[f32],
    n_heads: usize,
    start: usize,
    end: usize,
    scale: f32,
    softcap: Option<f32>,
    shifts: &[f64],
) -> Vec<f64> {
    let group = n_heads / nkv;
    let mut out = vec![0f64; n_heads * dv];
    for h in 0..n_heads {
        let g = h / group;
        let mut s = Vec::new();
        for p in start..end {
            let (k, _) = kv(p, g);
            let mut d = q_dot(&q[h * dk..(h + 1) * dk], &k) + shifts.get(h).copied().unwrap_or(0.0);
            d *= f64::from(scale);
            if let Some(cap) = softcap {
                d = f64::from(cap) * (d / f64::from(cap)).tanh();
            }
            s.push(d);
        }
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (i, p) in (start..end).enumerate() {
            let (_, v) = kv(p, g);
            for j in 0..dv {
                out[h * dv + j] += e[i] / sum * f64::from(v[j]);
            }
        }
    }
    out
}

/// Largest |a − b| over max |b|.
fn max_rel_err(a: &[f32], b: &[f64]) -> f64 {
    let m = b.iter().fold(0f64, |m, &x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).abs()).fold(0.0, f64::max) / m
}

#[test]
fn attention_matches_reference() {
    for &kernels in Kernels::available() {
        for ty in KV_TYPES {
            for (n_heads, nkv, dk, dv) in [(9usize, 3usize, 64usize, 64usize), (4, 1, 256, 256), (6, 6, 32, 64), (4, 2, 64, 32)] {
                let mut rng = Rng::new((n_heads * 31 + dk) as u64);
                let (nl, nctx) = (2, 40);
                let q_all: Vec<f32> = rng.vec(n_heads * dk);
                let mut c = KvCache::new(ty, nl, nctx, nkv, dk, dv).expect("cache");
                let mut orig = Vec::new();
                for p in 0..nctx {
                    let (k, v) = (rng.vec(nkv * dk), rng.vec(nkv * dv));
                    c.write(0, p, &k, &v).expect("write");
                }
                // layer 1 (the one attended): one batch from position 0, K with a part shared
                // by all tokens, so that a Q4 cache stores it less an offset
                for _ in 0..nctx {
                    let k: Vec<f32> = rng.vec(nkv * dk).iter().enumerate().map(|(i, x)| x + 0.5 * (i as f32 * 0.7).sin()).collect();
                    orig.push((k, rng.vec(nkv * dv)));
                }
                let ks: Vec<f32> = orig.iter().flat_map(|(k, _)| k.clone()).collect();
                let vs: Vec<f32> = orig.iter().flat_map(|(_, v)| v.clone()).collect();
                c.write_batch(1, 0, &ks, &vs).expect("write batch");
                assert_eq!(c.k_offset(1, 0).iter().any(|m| m.abs() > 0.1), ty.offsets_k());
                // the stored rows (K less the offset, which moves no softmax)
                let stored = |p: usize, g: usize| {
                    let (mut k, mut v) = (vec![0f32; dk], vec![0f32; dv]);
                    c.read_k(1, p, g, &mut k);
                    c.read_v(1, p, g, &mut v);
                    for (k, m) in k.iter_mut().zip(c.k_offset(1, g)) {
                        *k -= m;
                    }
                    (k, v)
                };
                // what a softcap needs added back: q·m per head
                let shifts: Vec<f64> = (0..n_heads)
                    .map(|h| {
                        let m = c.k_offset(1, h / (n_heads / nkv));
                        q_dot(&q_all[h * dk..(h + 1) * dk], m)
                    })
                    .collect();
                let original = |p: usize, g: usize| (orig[p].0[g * dk..(g + 1) * dk].to_vec(), orig[p].1[g * dv..(g + 1) * dv].to_vec());
                let q = q_all.clone();
                let scale = 1.0 / (dk as f32).sqrt();
                for ((start, end, cap), batch) in [(0usize, 1usize, None), (0, 40, None), (13, 29, None), (0, 33, Some(5.0f32))]
                    .into_iter()
                    // a query of a batch, and one alone (`Avx2` sums p·V in another order then)
                    .flat_map(|r| [(r, BATCH), (r, 1)])
                {
                    let mut out = padded(n_heads * dv);
                    let mut s = AttnScratch::default();
                    attention(kernels, &c, 1, &q, n_heads, start, end, scale, cap, batch, &mut out[..n_heads * dv], &mut s);
                    let what = format!("{} {ty:?} {n_heads}/{nkv} dk{dk} dv{dv} {start}..{end} cap {cap:?} batch {batch}", kernels.name());
                    check_pad(&out, n_heads * dv, &what);
                    check_finite(&out[..n_heads * dv], &what);
                    let out = &out[..n_heads * dv];
                    // Tight: the stored rows and the query as converted for the K dot product.
                    let q_eff = effective_q(ty, &q);
                    let shift: &[f64] = if cap.is_some() { &shifts } else { &[] };
                    let tight = attention_reference(&stored, dk, dv, nkv, &q_eff, n_heads, start, end, scale, cap, shift);
                    let e = max_rel_err(out, &tight);
                    assert!(e <= 2e-5, "{what}: {e:e} off the f64 reference on the stored rows");
                    // Loose: the original f32 rows and query (the cost of the cache format).
                    let loose = attention_reference(&original, dk, dv, nkv, &q, n_heads, start, end, scale, cap, &[]);
                    let bound = match ty {
                        KvType::F32 => 2e-5,
                        KvType::F16 => 5e-3,
                        KvType::Q8 => 6e-2,
                        KvType::Q4 => 0.5,
                    };
                    let e = max_rel_err(out, &loose);
                    assert!(e <= bound, "{what}: {e:e} off the f64 reference on the original rows (bound {bound:e})");
                }
                // An empty range writes zeros.
                let mut out = vec![1f32; n_heads * dv];
                attention(kernels, &c, 0, &q, n_heads, 5, 5, scale, None, BATCH, &mut out, &mut AttnScratch::default());
                assert!(out.iter().all(|&v| v == 0.0));
            }
        }
    }
}

/// A quantized cache with f16 copies (4 sink positions, a query's last 5): every query reads
/// the copies of the positions RecentRows names and the quantized rows of the others — within
/// 2e-5 of the f64 reference on exactly those rows (the copies rotated back, the query as the
/// quantized rows meet it), with and without a softcap and a sliding window; and, summed over
/// the cases, clearly closer to the original f32 rows than the same cache without copies.
#[test]
fn attention_reads_sink_and_recent_copies() {
    for &kernels in Kernels::available() {
        for ty in [KvType::Q8, KvType::Q4] {
            // summed over the cases: [with copies, without]
            let mut sq_err = [0f64; 2];
            for (n_heads, nkv, dk, dv) in [(9usize, 3usize, 64usize, 64usize), (4, 1, 256, 256), (4, 2, 64, 32)] {
                let mut rng = Rng::new((n_heads * 7 + dk) as u64);
                let nctx = 40;
                let q: Vec<f32> = rng.vec(n_heads * dk);
                let orig: Vec<(Vec<f32>, Vec<f32>)> = (0..nctx)
                    .map(|_| (rng.vec(nkv * dk).iter().enumerate().map(|(i, x)| x + 0.5 * (i as f32 * 0.7).sin()).collect(), rng.vec(nkv * dv)))
                    .collect();
                let ks: Vec<f32> = orig.iter().flat_map(|(k, _)| k.clone()).collect();
                let vs: Vec<f32> = orig.iter().flat_map(|(_, v)| v.clone()).collect();
                let mut plain = KvCache::new(ty, 1, nctx, nkv, dk, dv).expect("cache");
                let mut c = KvCache::new(ty, 1, nctx, nkv, dk, dv).expect("cache").with_recent(5).expect("copies");
                assert_eq!((c.copies().sink, c.copies().recent), (4, 5));
                // positions 0..24 in one batch (the K offset), then 24..40 a further batch, so
                // that queries read copies both kept from the first and pending from the second
                for cache in [&mut plain, &mut c] {
                    cache.write_batch(0, 0, &ks[..24 * nkv * dk], &vs[..24 * nkv * dv]).expect("write");
                    cache.write_batch(0, 24, &ks[24 * nkv * dk..], &vs[24 * nkv * dv..]).expect("write");
                }
                let half_row = |row: &[u8]| -> Vec<f32> {
                    let mut x: Vec<f32> =
                        row.chunks_exact(2).map(|b| quant::ggml_fp16_to_fp32(half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])))).collect();
                    rotate_groups(&mut x);
                    x
                };
                let original = |p: usize, g: usize| (orig[p].0[g * dk..(g + 1) * dk].to_vec(), orig[p].1[g * dv..(g + 1) * dv].to_vec());
                let shifts: Vec<f64> = (0..n_heads).map(|h| q_dot(&q[h * dk..(h + 1) * dk], c.k_offset(0, h / (n_heads / nkv)))).collect();
                let scale = 1.0 / (dk as f32).sqrt();
                for (start, end, cap) in [(0usize, 40usize, None), (0, 30, None), (0, 3, None), (13, 36, Some(5.0f32)), (0, 22, Some(5.0))] {
                    let what = format!("{} {ty:?} {n_heads}/{nkv} dk{dk} dv{dv} {start}..{end} cap {cap:?}", kernels.name());
                    // the rows this query reads, less the K offset
                    let read = |p: usize, g: usize| {
                        // (a query at 21 finds no copies of 17 and 18: of the first batch only
                        // its last 5 positions are kept, and the sinks)
                        if let (true, Some(k), Some(v)) = (c.copies().reads_copy(p, end - 1), c.recent_k_row(0, p, g), c.recent_v_row(0, p, g)) {
                            return (half_row(k), half_row(v));
                        }
                        let (mut k, mut v) = (vec![0f32; dk], vec![0f32; dv]);
                        c.read_k(0, p, g, &mut k);
                        c.read_v(0, p, g, &mut v);
                        for (k, m) in k.iter_mut().zip(c.k_offset(0, g)) {
                            *k -= m;
                        }
                        (k, v)
                    };
                    let mut outs = Vec::new();
                    for cache in [&c, &plain] {
                        let mut out = padded(n_heads * dv);
                        attention(kernels, cache, 0, &q, n_heads, start, end, scale, cap, BATCH, &mut out[..n_heads * dv], &mut AttnScratch::default());
                        check_pad(&out, n_heads * dv, &what);
                        check_finite(&out[..n_heads * dv], &what);
                        out.truncate(n_heads * dv);
                        outs.push(out);
                    }
                    let shift: &[f64] = if cap.is_some() { &shifts } else { &[] };
                    let tight = attention_reference(&read, dk, dv, nkv, &effective_q(ty, &q), n_heads, start, end, scale, cap, shift);
                    let e = max_rel_err(&outs[0], &tight);
                    assert!(e <= 2e-5, "{what}: {e:e} off the f64 reference on the rows read");
                    let loose = attention_reference(&original, dk, dv, nkv, &q, n_heads, start, end, scale, cap, &[]);
                    for (sq, out) in sq_err.iter_mut().zip(&outs) {
                        *sq += out.iter().zip(&loose).map(|(a, b)| (f64::from(*a) - b).powi(2)).sum::<f64>();
                    }
                }
            }
            let [with, without] = sq_err;
            assert!(with < 0.8 * without, "{} {ty:?}: squared error from the f32 rows with copies {with:e}, without {without:e}", kernels.name());
        }
    }
}

/// Queries read the same rows, and give the same bits, whether their positions were written in
/// one batch, in batches of other sizes, or one at a time with each query right after its
/// write (as a forward pass does): the copies of a query's last positions come from the
/// pending batch or the kept slots alike, across the slots' wrap-around.
#[test]
fn attention_with_copies_is_the_same_batched_or_not() {
    for &kernels in Kernels::available() {
        for ty in [KvType::Q8, KvType::Q4] {
            let (n_heads, nkv, dk, dv, nctx) = (6usize, 2usize, 64usize, 32usize, 40usize);
            let mut rng = Rng::new(11);
            let q: Vec<f32> = rng.vec(nctx * n_heads * dk);
            let ks: Vec<f32> = rng.vec(nctx * nkv * dk);
            let vs: Vec<f32> = rng.vec(nctx * nkv * dv);
            let scale = 0.2;
            let mut runs: Vec<Vec<f32>> = Vec::new();
            // every split starts with the same batch 0..8 (which sets the K offset); the last
            // run is the first without copies
            for (splits, recent) in
                [(vec![0usize, 8, 40], 6), (vec![0, 8, 9, 25, 40], 6), ((0..=40).filter(|&p| p == 0 || p >= 8).collect(), 6), (vec![0, 8, 40], 0)]
            {
                let mut c = KvCache::new(ty, 2, nctx, nkv, dk, dv).expect("cache").with_recent(recent).expect("copies");
                let mut out = vec![0f32; nctx * n_heads * dv];
                for w in splits.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    for layer in 0..2 {
                        c.write_batch(layer, a, &ks[a * nkv * dk..b * nkv * dk], &vs[a * nkv * dv..b * nkv * dv]).expect("write");
                        for pos in a..b {
                            let o = &mut out[pos * n_heads * dv..(pos + 1) * n_heads * dv];
                            attention(
                                kernels,
                                &c,
                                layer,
                                &q[pos * n_heads * dk..(pos + 1) * n_heads * dk],
                                n_heads,
                                0,
                                pos + 1,
                                scale,
                                None,
                                b - a,
                                o,
                                &mut AttnScratch::default(),
                            );
                        }
                    }
                }
                runs.push(out);
            }
            let same = |r: &[f32]| r.iter().zip(&runs[0]).all(|(a, b)| a.to_bits() == b.to_bits());
            for (i, r) in runs.iter().enumerate().take(3).skip(1) {
                assert!(same(r), "{} {ty:?}: split {i} differs from one batch", kernels.name());
            }
            // (not vacuous: the copies change what the queries read)
            assert!(!same(&runs[3]), "{} {ty:?}: the same bits without copies", kernels.name());
        }
    }
}

/// An f16 cache gives bit for bit what an f32 cache holding the same (f16-representable) values
/// gives: with several heads per KV head its rows are widened once and the f32 kernels run;
/// with one, the f16 kernels read them in place. Rows widened once for a batch
/// (`widen_batch_rows`, where they cover the query's range; a range they do not cover, another
/// layer, or after `forget_batch_rows`: widened per query) give the same bits.
#[test]
fn attention_f16_cache_equals_f32_cache_of_same_values() {
    for &kernels in Kernels::available() {
        for (n_heads, nkv, dk, dv) in [(9usize, 3usize, 64usize, 64usize), (4, 4, 36, 68)] {
            let mut rng = Rng::new((n_heads + dk) as u64);
            let (nl, nctx) = (1, 23);
            let mut c16 = KvCache::new(KvType::F16, nl, nctx, nkv, dk, dv).expect("cache");
            let mut c32 = KvCache::new(KvType::F32, nl, nctx, nkv, dk, dv).expect("cache");
            let halve = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::f16::from_f32(x * 4.0).to_f32()).collect() };
            for p in 0..nctx {
                let (k, v) = (halve(rng.vec(nkv * dk)), halve(rng.vec(nkv * dv)));
                c16.write(0, p, &k, &v).expect("write");
                c32.write(0, p, &k, &v).expect("write");
            }
            let q = rng.vec(n_heads * dk);
            for (start, end, cap) in [(0usize, 23usize, None), (5, 17, Some(3.0f32))] {
                let mut o16 = vec![0f32; n_heads * dv];
                let mut o32 = vec![0f32; n_heads * dv];
                let mut s = AttnScratch::default();
                attention(kernels, &c16, 0, &q, n_heads, start, end, 0.125, cap, BATCH, &mut o16, &mut s);
                attention(kernels, &c32, 0, &q, n_heads, start, end, 0.125, cap, BATCH, &mut o32, &mut s);
                check_finite(&o16, "f16 cache");
                for (i, (a, b)) in o16.iter().zip(&o32).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{} {n_heads}/{nkv} {start}..{end}: output {i}: f16 cache {a}, f32 cache {b}", kernels.name());
                }
                for (lo, hi, forget) in [(0usize, 23usize, false), (start, end, false), (3, 20, false), (0, 23, true)] {
                    let mut ob = vec![f32::NAN; n_heads * dv];
                    s.widen_batch_rows(kernels, &c16, 0, n_heads, lo, hi);
                    if forget {
                        s.forget_batch_rows();
                    }
                    attention(kernels, &c16, 0, &q, n_heads, start, end, 0.125, cap, BATCH, &mut ob, &mut s);
                    s.forget_batch_rows();
                    for (i, (a, b)) in ob.iter().zip(&o32).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{} {n_heads}/{nkv} {start}..{end}, batch rows {lo}..{hi} (forgotten: {forget}): output {i}: {a} vs {b}",
                            kernels.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn attention_exp_is_accurate() {
    let mut x = 0.0f32;
    while x > -90.0 {
        let got = f64::from(attention::exp_nonpositive(x));
        let want = f64::from(x).exp();
        if x >= -87.0 {
            assert!((got - want).abs() <= 3.0 * f64::from(f32::EPSILON) * want, "exp({x}) = {got}, want {want}");
        } else {
            assert!(got <= 1.7e-38, "exp({x}) = {got}");
        }
        x -= 0.0137;
    }
    assert_eq!(attention::exp_nonpositive(0.0), 1.0);
    assert!(attention::exp_nonpositive(f32::NAN).is_nan());
}
