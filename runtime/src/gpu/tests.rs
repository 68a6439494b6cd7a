//! Kernel tests on a real adapter (Mesa lavapipe in CI): every op of the GPU backend against
//! the CPU backend (itself tested against the `quant::` oracle) on awkward shapes. Output
//! buffers are pre-filled with NaN sentinel words: every value must be written, finite, and no
//! word past the output may change. No adapter is a failure, not a skip.

use super::recorder::SENTINEL;
use super::*;
use crate::cpu::tests::Rng;
use crate::kv_cache::KvType;
use crate::model::{Activation, Backend, CpuAct, CpuBackend, CpuWeight, ModelConfig, RopeKind, RopeParams};
use crate::quant::{self, GgmlType};

fn gpu() -> GpuBackend {
    let mut g = GpuBackend::open().expect("a GPU adapter (CI installs Mesa lavapipe)");
    g.sentinel = true;
    g
}

/// Values of `x` on the host, after checking every value is finite and the tail untouched.
fn read_checked(g: &mut GpuBackend, x: &GpuAct, what: &str) -> Vec<f32> {
    let words = g.raw_words(x);
    let n = x.n_tokens * x.width;
    assert!(words.len() >= n + 16, "{what}: no room for sentinels");
    for (i, &w) in words[n..].iter().enumerate() {
        assert_eq!(w, SENTINEL, "{what}: word {} past the output was overwritten", i);
    }
    let v: Vec<f32> = words[..n].iter().map(|&w| f32::from_bits(w)).collect();
    for (i, x) in v.iter().enumerate() {
        assert!(x.is_finite(), "{what}: value {i} is {x} (unwritten or NaN)");
    }
    v
}

/// Normalized MSE of `got` against `want`.
fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| f64::from(b).powi(2)).sum::<f64>().max(1e-30);
    num / den
}

/// The CPU backend the GPU mirrors: the 128-bit kernels' numerics (reference activation
/// quantizers, no fused multiply-adds), not the x86 AVX2 arithmetic native x86 defaults to.
fn cpu() -> CpuBackend {
    CpuBackend::with_kernels(crate::cpu::Kernels::Simd).expect("the 128-bit CPU kernels")
}

/// The CPU's unrounded family, which the GPU's fast kernels follow.
fn cpu_float() -> CpuBackend {
    CpuBackend::with_kernels(crate::cpu::Kernels::Float).expect("the float CPU kernels")
}

fn assert_close(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let e = nmse(got, want);
    assert!(e <= tol, "{what}: nmse {e:e} > {tol:e}");
}

fn acts(rng: &mut Rng, n: usize, width: usize) -> Vec<f32> {
    (0..n * width).map(|_| rng.act()).collect()
}

/// A random `rows × cols` weight of `ty` as GGUF bytes.
fn weight_bytes(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let f: Vec<f32> = (0..rows * cols).map(|_| rng.f() * 0.5).collect();
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut out = vec![0u8; rb * rows];
    for (src, dst) in f.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
        quant::quantize_row(ty, src, dst).unwrap();
    }
    out
}

fn both(g: &mut GpuBackend, c: &mut CpuBackend, name: &str, ty: GgmlType, shape: &[u64], bytes: &[u8]) -> (GpuWeight, CpuWeight) {
    (g.load_weight(name, ty, shape, bytes).unwrap(), c.load_weight(name, ty, shape, bytes).unwrap())
}

fn cpu_act(data: Vec<f32>, n_tokens: usize, width: usize) -> CpuAct {
    CpuAct { data, n_tokens, width }
}

/// Matvec (1 and 4 tokens) and tiled matmul (37 tokens) for every type, 1 row and 37 rows
/// (no multiple of the 32-row tile or the 64-wide workgroup), K not a multiple of 256 where the
/// type allows, in both kernel families. Exact: the GPU rounds activations exactly as the CPU's
/// 128-bit kernels quantize them (and adds Q8_1's f16 block-sum rounding for Q4_1/Q5_1); fast:
/// unrounded activations, as the CPU's `Kernels::Float`. Either way the only difference is
/// summation order. The matvec runs in both layouts (narrow: software adapters; wide: hardware
/// GPUs, whose runs of 8 vec4s overhang these rows).
#[test]
fn matmul_every_type_matches_cpu() {
    let mut g = gpu();
    let mut rng = Rng::new(1);
    for (kernels, mut c) in [(GpuKernels::Exact, cpu()), (GpuKernels::Fast, cpu_float())] {
        g.kernels = kernels;
        for ty in GgmlType::WEIGHT_TYPES {
            let cols = match ty.block_size() {
                256 => 512,
                32 => 160,
                _ => 132,
            };
            for rows in [1usize, 37] {
                let bytes = weight_bytes(&mut rng, ty, rows, cols);
                let (gw, cw) = both(&mut g, &mut c, "w", ty, &[cols as u64, rows as u64], &bytes);
                for (n, layout) in
                    [(1usize, MatvecLayout::Narrow), (1, MatvecLayout::Wide), (4, MatvecLayout::Narrow), (4, MatvecLayout::Wide), (37, MatvecLayout::Narrow)]
                {
                    g.matvec = layout;
                    let x = acts(&mut rng, n, cols);
                    let gx = g.upload(&x, n, cols).unwrap();
                    let gy = g.matmul(&gw, &gx).unwrap();
                    let what = format!("{} matmul {ty} {rows}x{cols} n={n} {}", kernels.name(), layout.name());
                    let got = read_checked(&mut g, &gy, &what);
                    let want = c.matmul(&cw, &cpu_act(x, n, cols)).unwrap().data;
                    assert_close(&got, &want, 1e-10, &what);
                }
            }
        }
    }
}

/// A weight larger than the (test-lowered) binding limit is split into row chunks; matmul and
/// embedding lookup see one matrix.
#[test]
fn chunked_weights_match_cpu() {
    let mut g = gpu();
    let mut c = cpu();
    let mut rng = Rng::new(2);
    let (rows, cols) = (300usize, 256usize);
    for ty in [GgmlType::Q8_0, GgmlType::Q6_K] {
        let bytes = weight_bytes(&mut rng, ty, rows, cols);
        g.max_chunk_bytes = Some(7 * 1024);
        let (gw, cw) = both(&mut g, &mut c, "big", ty, &[cols as u64, rows as u64], &bytes);
        assert!(GpuBackend::chunk_count(&gw) >= 3, "{ty}: {} chunks", GpuBackend::chunk_count(&gw));
        for (n, layout) in [(1usize, MatvecLayout::Narrow), (1, MatvecLayout::Wide), (40, MatvecLayout::Narrow)] {
            g.matvec = layout;
            let x = acts(&mut rng, n, cols);
            let gx = g.upload(&x, n, cols).unwrap();
            let gy = g.matmul(&gw, &gx).unwrap();
            let got = read_checked(&mut g, &gy, "chunked matmul");
            let want = c.matmul(&cw, &cpu_act(x, n, cols)).unwrap().data;
            assert_close(&got, &want, 1e-10, &format!("chunked matmul {ty} n={n}"));
        }
        let ids = [0u32, 299, 150, 17, 299, 64];
        let ge = g.embed(&gw, &ids, Some(1.5)).unwrap();
        let got = read_checked(&mut g, &ge, "chunked embed");
        let want = c.embed(&cw, &ids, Some(1.5)).unwrap().data;
        assert_eq!(got, want, "embedding rows are exact");
        assert!(matches!(g.embed(&gw, &[300], None), Err(crate::ModelError::TokenOutOfRange { id: 300, .. })));
    }
}

#[test]
fn embed_every_type_is_exact() {
    let mut g = gpu();
    let mut c = cpu();
    let mut rng = Rng::new(3);
    for ty in GgmlType::WEIGHT_TYPES {
        let cols = if ty.block_size() == 256 { 256 } else { 64 };
        let bytes = weight_bytes(&mut rng, ty, 5, cols);
        let (gw, cw) = both(&mut g, &mut c, "emb", ty, &[cols as u64, 5], &bytes);
        let ids = [4u32, 0, 2];
        let ge = g.embed(&gw, &ids, None).unwrap();
        let got = read_checked(&mut g, &ge, "embed");
        assert_eq!(got, c.embed(&cw, &ids, None).unwrap().data, "{ty}");
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let mut g = gpu();
    let mut c = cpu();
    let mut rng = Rng::new(4);
    let (n, width) = (3usize, 96usize);
    let x = acts(&mut rng, n, width);
    let y = acts(&mut rng, n, width);
    let norm: Vec<f32> = (0..width).map(|_| 1.0 + rng.f()).collect();
    let head_norm: Vec<f32> = (0..32).map(|_| 1.0 + rng.f()).collect();
    let (gn, cn) = both(&mut g, &mut c, "n", GgmlType::F32, &[width as u64], bytemuck::cast_slice(&norm));
    let (ghn, chn) = both(&mut g, &mut c, "hn", GgmlType::F32, &[32], bytemuck::cast_slice(&head_norm));
    let gx = g.upload(&x, n, width).unwrap();
    let gy = g.upload(&y, n, width).unwrap();
    let cx = cpu_act(x.clone(), n, width);
    let cy = cpu_act(y.clone(), n, width);

    for (w_g, w_c, what) in [(&gn, &cn, "rms_norm row"), (&ghn, &chn, "rms_norm per head")] {
        let o = g.rms_norm(&gx, w_g, 1e-6).unwrap();
        let got = read_checked(&mut g, &o, what);
        assert_close(&got, &c.rms_norm(&cx, w_c, 1e-6).unwrap().data, 1e-11, what);
    }
    for act in [Activation::Silu, Activation::GeluTanh] {
        let o = g.glu(&gx, &gy, act).unwrap();
        let got = read_checked(&mut g, &o, "glu");
        assert_close(&got, &c.glu(&cx, &cy, act).unwrap().data, 1e-10, &format!("glu {act:?}"));
    }
    {
        let mut a = g.upload(&x, n, width).unwrap();
        let mut b = cx.clone();
        g.add(&mut a, &gy).unwrap();
        c.add(&mut b, &cy).unwrap();
        g.add_bias(&mut a, &gn).unwrap();
        c.add_bias(&mut b, &cn).unwrap();
        g.softcap(&mut a, 2.5).unwrap();
        c.softcap(&mut b, 2.5).unwrap();
        let got = read_checked(&mut g, &a, "add/bias/softcap");
        assert_close(&got, &b.data, 1e-12, "add/bias/softcap");
        let last = g.last_rows(&a, 1).unwrap();
        assert_eq!(read_checked(&mut g, &last, "last_rows"), got[(n - 1) * width..], "last_rows");
    }
    let factors: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 * 0.25).collect();
    let (gf, cf) = both(&mut g, &mut c, "ff", GgmlType::F32, &[16], bytemuck::cast_slice(&factors));
    for kind in [RopeKind::Normal, RopeKind::Neox] {
        for (n_dims, ff) in [(32usize, false), (24, false), (32, true)] {
            let rope = RopeParams { kind, n_dims, freq_base: 10000.0, freq_scale: 0.5 };
            let mut a = g.upload(&x, n, width).unwrap();
            let mut b = cx.clone();
            g.rope(&mut a, 32, 1000, &rope, ff.then_some(&gf)).unwrap();
            c.rope(&mut b, 32, 1000, &rope, ff.then_some(&cf)).unwrap();
            assert_close(&read_checked(&mut g, &a, "rope"), &b.data, 1e-9, &format!("rope {kind:?} {n_dims} ff={ff}"));
            // queries and keys (another width) in one dispatch: each as roped alone
            let kx: Vec<f32> = x[..n * 64].to_vec();
            let (mut q, mut k) = (g.upload(&x, n, width).unwrap(), g.upload(&kx, n, 64).unwrap());
            let mut ck = cpu_act(kx, n, 64);
            let d = g.dispatch_count();
            g.rope_qk(&mut q, &mut k, 32, 1000, &rope, ff.then_some(&gf)).unwrap();
            assert_eq!(g.dispatch_count() - d, 1, "rope_qk: one dispatch");
            c.rope(&mut ck, 32, 1000, &rope, ff.then_some(&cf)).unwrap();
            assert_eq!(read_checked(&mut g, &q, "rope_qk q"), read_checked(&mut g, &a, "rope"), "rope_qk: queries as roped alone");
            assert_close(&read_checked(&mut g, &k, "rope_qk k"), &ck.data, 1e-9, &format!("rope_qk keys {kind:?} {n_dims} ff={ff}"));
        }
    }
}

#[test]
fn argmax_matches_cpu() {
    let mut g = gpu();
    let mut rng = Rng::new(5);
    for width in [1usize, 7, 1000, 49_153] {
        let mut x = acts(&mut rng, 2, width);
        // ties: the lowest index wins
        let m = x[width..].iter().cloned().fold(f32::MIN, f32::max) + 1.0;
        x[width + width / 2] = m;
        x[2 * width - 1] = m;
        let gx = g.upload(&x, 2, width).unwrap();
        let got = g.argmax(gx).unwrap();
        assert_eq!(got as usize, width / 2, "width {width}");
    }
}

/// Prefill of 6 tokens then 2 single-token steps, every cache type (the quantized ones without
/// and with f16 copies of 4 sink positions and a query's last 3), grouped-query heads, a
/// sliding-window layer, head dims 64 and 256 (one KV head, large peaked scores as real models
/// have): outputs equal the CPU's attention over its own cache, stored rows and copies its bytes.
#[test]
fn attention_every_cache_type_matches_cpu() {
    let mut g = gpu();
    let mut c = cpu();
    let mut rng = Rng::new(6);
    for (nh, nkv, hd, big) in [(4usize, 2usize, 64usize, 1.0f32), (4, 1, 256, 8.0)] {
        let cfg = ModelConfig::attention_test(nh, nkv, hd, Some(3));
        for (kv, recent) in [(KvType::F32, 0), (KvType::F16, 0), (KvType::Q8, 0), (KvType::Q8, 3), (KvType::Q4, 0), (KvType::Q4, 3)] {
            let mut gc = g.new_cache(&cfg, kv, 16, recent).unwrap();
            let mut cc = c.new_cache(&cfg, kv, 16, recent).unwrap();
            let mut pos = 0;
            for n in [6usize, 1, 1] {
                // big: large attention logits (peaked softmax), as real models have
                let q: Vec<f32> = acts(&mut rng, n, nh * hd).iter().map(|x| x * big).collect();
                // K with a part common to all tokens, as real models' K has (what a Q4
                // cache's K offset takes out)
                let k: Vec<f32> = acts(&mut rng, n, nkv * hd).iter().enumerate().map(|(i, x)| x + 3.0 * ((i % (nkv * hd)) as f32 * 0.37).sin()).collect();
                let v = acts(&mut rng, n, nkv * hd);
                for layer in 0..2 {
                    let gq = g.upload(&q, n, nh * hd).unwrap();
                    let gk = g.upload(&k, n, nkv * hd).unwrap();
                    let gv = g.upload(&v, n, nkv * hd).unwrap();
                    let go = g.attention(&mut gc, &cfg, layer, &gq, &gk, &gv, pos).unwrap();
                    let got = read_checked(&mut g, &go, "attention");
                    let want = c
                        .attention(
                            &mut cc,
                            &cfg,
                            layer,
                            &cpu_act(q.clone(), n, nh * hd),
                            &cpu_act(k.clone(), n, nkv * hd),
                            &cpu_act(v.clone(), n, nkv * hd),
                            pos,
                        )
                        .unwrap()
                        .data;
                    assert_close(&got, &want, 1e-9, &format!("attention {kv:?} recent {recent} hd {hd} layer {layer} pos {pos} n {n}"));
                }
                pos += n;
            }
            // The stored rows themselves: the same bytes (the q4 rows rotated by the same
            // butterflies, then rounded as quantize_row_q4_0_ref does).
            for layer in 0..2 {
                let offset = g.cache_k_offset(&gc, layer);
                let want: Vec<f32> = (0..nkv).flat_map(|h| cc.k_offset(layer, h).to_vec()).collect();
                assert_eq!(
                    offset.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{kv:?} hd {hd} layer {layer}: K offset"
                );
                assert_eq!(want.iter().any(|v| v.abs() > 0.5), kv.offsets_k(), "{kv:?}: an offset only where the type takes one");
                let rows = g.cache_rows_as_ggml(&gc, layer);
                let copies = g.cache_copies(&gc, layer);
                let mut compared = 0;
                for p in 0..pos {
                    for h in 0..nkv {
                        let (gk, gv) = &rows[p * nkv + h];
                        let what = format!("{kv:?} recent {recent} hd {hd} layer {layer} pos {p} head {h}");
                        assert_eq!(gk, cc.k_row(layer, p, h), "K row bytes, {what}");
                        assert_eq!(gv, cc.v_row(layer, p, h), "V row bytes, {what}");
                        // the f16 copies both hold (the CPU's last layer's are still its pending batch)
                        if let (Some((ck, cv)), Some(k), Some(v)) = (copies.get(&(p, h)), cc.recent_k_row(layer, p, h), cc.recent_v_row(layer, p, h)) {
                            assert_eq!((&ck[..], &cv[..]), (k, v), "copies' bytes, {what}");
                            compared += 1;
                        }
                    }
                }
                // sinks 0..4 and the last 3 of 8 positions
                assert_eq!(compared, if recent > 0 { 7 * nkv } else { 0 }, "{kv:?} recent {recent} layer {layer}: copies compared");
            }
            let q = acts(&mut rng, 1, nh * hd);
            let gq = g.upload(&q, 1, nh * hd).unwrap();
            let full = g.attention(&mut gc, &cfg, 0, &gq, &gq, &gq, 16);
            assert!(matches!(full, Err(crate::ModelError::ContextFull { .. })), "{kv:?}: position past the cache");
        }
    }
}

#[test]
fn unsupported_shapes_are_typed_errors() {
    let mut g = gpu();
    let cfg = ModelConfig::attention_test(2, 1, 48, None);
    assert!(matches!(g.new_cache(&cfg, KvType::F16, 8, 0), Err(crate::ModelError::Gpu(crate::GpuError::Shape(_)))));
    // 6 columns: not a whole number of 4-value GPU blocks
    let r = g.load_weight("odd", GgmlType::F32, &[6, 2], &[0u8; 48]);
    assert!(matches!(r, Err(crate::ModelError::UnsupportedTensorType { .. })), "{:?}", r.err());
    let r = g.load_weight("short", GgmlType::Q8_0, &[32, 2], &[0u8; 34]);
    assert!(r.is_err());
}

/// A lost device (here destroyed on purpose) turns the next operations into typed errors, not
/// panics or hangs.
#[test]
fn lost_device_is_a_typed_error() {
    let mut g = gpu();
    let mut x = g.upload(&[1.0; 8], 1, 8).unwrap();
    g.device().device.destroy();
    let r = g.softcap(&mut x, 2.0).and_then(|()| g.read_host(x));
    match r {
        Err(crate::ModelError::Gpu(crate::GpuError::DeviceLost(m))) => {
            println!("after destroy: {m}")
        }
        other => panic!("expected a GPU error after losing the device, got {other:?}"),
    }
    let again = g.load_weight("w", GgmlType::F32, &[4, 2], &[0u8; 32]);
    assert!(matches!(again, Err(crate::ModelError::Gpu(_))), "{:?}", again.err());
}

/// Weights placed in one buffer at load (`expect_weights`: a layer's q/k/v, its gate/up; v
/// of another type where `matvec3` pairs them, as Q4_K_M's Q6_K v) are read by one dispatch in
/// decode (`matvec3`, `matvec_glu`): the same bits as one dispatch
/// per weight (the same per-row code and summation order), in both kernel families and
/// layouts, the GLU fused too; prefill (37 tokens) takes the tiled path per weight. Against
/// the CPU's matching family within the matmul tolerance (the GELU's f16 rounding may flip
/// where the two differ by summation order: a looser bound there).
#[test]
fn fused_products_match_one_dispatch_per_weight() {
    let mut g = gpu();
    let mut rng = Rng::new(11);
    for (kernels, mut c) in [(GpuKernels::Exact, cpu()), (GpuKernels::Fast, cpu_float())] {
        g.kernels = kernels;
        // (q/k and gate/up type, v type): v may differ where matvec3 pairs the two (Q4_K_M)
        let types = [
            (GgmlType::Q4_K, GgmlType::Q4_K),
            (GgmlType::Q4_K, GgmlType::Q6_K),
            (GgmlType::Q6_K, GgmlType::Q6_K),
            (GgmlType::Q4_1, GgmlType::Q4_1),
            (GgmlType::Q4_0, GgmlType::Q8_0),
            (GgmlType::F16, GgmlType::F16),
        ];
        for (ty, ty_v) in types {
            let cols = match ty.block_size() {
                256 => 512,
                32 => 160,
                _ => 132,
            };
            let shape = |rows: usize| [cols as u64, rows as u64];
            let names = ["blk.3.attn_q.weight", "blk.3.attn_k.weight", "blk.3.attn_v.weight", "blk.3.ffn_gate.weight", "blk.3.ffn_up.weight"];
            let rows = [37usize, 5, 5, 21, 21];
            let shapes: Vec<[u64; 2]> = rows.iter().map(|&r| shape(r)).collect();
            let tys = [ty, ty, ty_v, ty, ty];
            let expected: Vec<(&str, GgmlType, &[u64])> = names.iter().zip(&shapes).zip(tys).map(|((n, s), t)| (*n, t, s.as_slice())).collect();
            g.expect_weights(&expected).unwrap();
            let bytes: Vec<Vec<u8>> = rows.iter().zip(tys).map(|(&r, t)| weight_bytes(&mut rng, t, r, cols)).collect();
            let fused: Vec<GpuWeight> = (0..5).map(|i| g.load_weight(names[i], tys[i], &shape(rows[i]), &bytes[i]).unwrap()).collect();
            let apart: Vec<GpuWeight> = (0..5).map(|i| g.load_weight(names[i], tys[i], &shape(rows[i]), &bytes[i]).unwrap()).collect();
            let cw: Vec<CpuWeight> = (0..5).map(|i| c.load_weight(names[i], tys[i], &shape(rows[i]), &bytes[i]).unwrap()).collect();
            assert!(
                super::matmul::shares_buffer(&[&fused[0], &fused[1], &fused[2]]) && super::matmul::shares_buffer(&[&fused[3], &fused[4]]),
                "{ty}: not placed together"
            );
            assert!(!super::matmul::shares_buffer(&[&apart[0], &apart[1]]), "{ty}: weights loaded without expect_weights share a buffer");
            for (n, layout) in
                [(1usize, MatvecLayout::Narrow), (1, MatvecLayout::Wide), (4, MatvecLayout::Narrow), (4, MatvecLayout::Wide), (37, MatvecLayout::Narrow)]
            {
                g.matvec = layout;
                let what = format!("{} {ty} (v {ty_v}) n={n} {}", kernels.name(), layout.name());
                let x = acts(&mut rng, n, cols);
                let gx = g.upload(&x, n, cols).unwrap();
                let cx = cpu_act(x, n, cols);
                let d0 = g.dispatch_count();
                let qkv = g.matmuls([&fused[0], &fused[1], &fused[2]], &gx).unwrap();
                let d1 = g.dispatch_count();
                let one = g.matmuls([&apart[0], &apart[1], &apart[2]], &gx).unwrap();
                let d2 = g.dispatch_count();
                if n <= 4 {
                    assert!(d1 - d0 < d2 - d1, "{what}: q/k/v fused in {} dispatches, apart in {}", d1 - d0, d2 - d1);
                }
                let want = c.matmuls([&cw[0], &cw[1], &cw[2]], &cx).unwrap();
                for i in 0..3 {
                    let got = read_checked(&mut g, &qkv[i], &what);
                    assert_eq!(got, read_checked(&mut g, &one[i], &what), "{what}: q/k/v part {i} fused differs");
                    assert_close(&got, &want[i].data, 1e-10, &format!("{what} part {i}"));
                }
                for act in [Activation::Silu, Activation::GeluTanh] {
                    let got = g.gate_up_glu(&fused[3], &fused[4], &gx, act).unwrap();
                    let one = g.gate_up_glu(&apart[3], &apart[4], &gx, act).unwrap();
                    let got = read_checked(&mut g, &got, &what);
                    assert_eq!(got, read_checked(&mut g, &one, &what), "{what} {act:?}: gate/up/glu fused differs");
                    let want = c.gate_up_glu(&cw[3], &cw[4], &cx, act).unwrap();
                    let tol = if act == Activation::GeluTanh { 1e-6 } else { 1e-10 };
                    assert_close(&got, &want.data, tol, &format!("{what} {act:?}"));
                }
            }
        }
    }
}

/// Contexts longer than one `attn_split` workgroup's positions: a 300-token prefill, a token at
/// position 300, 210 tokens, then a 2-token pass over the split boundary at 511/512,
/// every cache type (the quantized ones also with f16 copies), full attention and a sliding
/// window of 3 (layer 1, whose early splits see nothing): the splits' partials merged equal the
/// CPU's one softmax over all positions to summation order.
#[test]
fn attention_over_several_splits_matches_cpu() {
    let mut g = gpu();
    let mut c = cpu();
    let mut rng = Rng::new(12);
    let (nh, nkv, hd) = (2usize, 1usize, 64usize);
    let cfg = ModelConfig::attention_test(nh, nkv, hd, Some(3));
    for (kv, recent) in [(KvType::F32, 0), (KvType::F16, 0), (KvType::Q8, 0), (KvType::Q8, 3), (KvType::Q4, 3)] {
        let mut gc = g.new_cache(&cfg, kv, 520, recent).unwrap();
        let mut cc = c.new_cache(&cfg, kv, 520, recent).unwrap();
        for (pos, n) in [(0usize, 300usize), (300, 1), (301, 210), (511, 2)] {
            let q = acts(&mut rng, n, nh * hd);
            let k: Vec<f32> = acts(&mut rng, n, nkv * hd).iter().enumerate().map(|(i, x)| x + 3.0 * ((i % (nkv * hd)) as f32 * 0.37).sin()).collect();
            let v = acts(&mut rng, n, nkv * hd);
            for layer in 0..2 {
                let gq = g.upload(&q, n, nh * hd).unwrap();
                let gk = g.upload(&k, n, nkv * hd).unwrap();
                let gv = g.upload(&v, n, nkv * hd).unwrap();
                let go = g.attention(&mut gc, &cfg, layer, &gq, &gk, &gv, pos).unwrap();
                let got = read_checked(&mut g, &go, "attention");
                let (cq, ck, cv) = (cpu_act(q.clone(), n, nh * hd), cpu_act(k.clone(), n, nkv * hd), cpu_act(v.clone(), n, nkv * hd));
                let want = c.attention(&mut cc, &cfg, layer, &cq, &ck, &cv, pos).unwrap().data;
                assert_close(&got, &want, 1e-9, &format!("attention {kv:?} recent {recent} layer {layer} pos {pos} n {n}"));
            }
        }
    }
}
