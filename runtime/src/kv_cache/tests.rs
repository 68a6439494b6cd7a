//! Tests of the KV cache: sizes, the f16-copy bookkeeping, the rotation, the K offset and
//! range checks.

use super::*;
use crate::quant::{self, quantize_row_q4_0_ref};
use bytemuck::Zeroable;

#[test]
fn new_checks_sizes_before_allocating() {
    assert_eq!(KvCache::new(KvType::F32, 0, 8, 1, 64, 64).err(), Some(KvError::ZeroSize { what: "layer count" }));
    assert!(matches!(KvCache::new(KvType::Q8, 1, 8, 1, 48, 64), Err(KvError::HeadDimNotGroupMultiple { head_dim: 48, .. })));
    assert!(matches!(KvCache::new(KvType::F32, usize::MAX / 2, 3, 1, 64, 64), Err(KvError::SizeOverflow { .. })));
    assert!(matches!(KvCache::new(KvType::F32, 1 << 20, 1 << 20, 64, 256, 256), Err(KvError::SizeOverflow { .. }) | Err(KvError::AllocFailed { .. })));
    let c = KvCache::new(KvType::Q4, 2, 16, 3, 64, 32).expect("small cache");
    assert_eq!(c.bytes() as u64, KvType::Q4.bytes_for(2 * 16 * 3 * 64) + KvType::Q4.bytes_for(2 * 16 * 3 * 32));
}

/// The bookkeeping of the f16 copies: which positions a batch hands to the slots, what is
/// held after batches, a rewrite from an earlier position, a gap, and a truncation.
#[test]
fn recent_rows_track_sinks_and_last_positions() {
    assert_eq!(RecentRows::new(KvType::Q4, 2, 100, 0).keep(0, 0, 10), [0..0, 0..0]);
    assert_eq!(RecentRows::new(KvType::F16, 2, 100, 5).slots(), 0);
    let mut r = RecentRows::new(KvType::Q4, 2, 100, 5);
    assert_eq!((r.sink, r.recent, r.slots()), (4, 5, 9));
    let held = |r: &RecentRows, layer| (0..100).filter(|&p| r.kept(layer, p).is_some()).collect::<Vec<_>>();
    // a prompt of 12: sinks 0..4 and its last 5
    assert_eq!(r.keep(0, 0, 12), [0..4, 7..12]);
    assert_eq!(held(&r, 0), [0, 1, 2, 3, 7, 8, 9, 10, 11]);
    assert!(held(&r, 1).is_empty());
    // one token at a time: the window slides, each in slot 4 + p % 5
    assert_eq!(r.keep(0, 12, 1), [4..4, 12..13]);
    assert_eq!(held(&r, 0), [0, 1, 2, 3, 8, 9, 10, 11, 12]);
    assert_eq!((r.kept(0, 12), r.kept(0, 7), r.kept(0, 2)), (Some(6), None, Some(2)));
    assert!(r.reads_copy(2, 12) && r.reads_copy(8, 12) && !r.reads_copy(7, 12) && !r.reads_copy(5, 12));
    // rewriting from 10 (a rewound conversation): 10 and later are the new batch's
    assert_eq!(r.keep(0, 10, 2), [4..4, 10..12]);
    assert_eq!(held(&r, 0), [0, 1, 2, 3, 8, 9, 10, 11]);
    // a batch that leaves a gap after what is held: only its own rows
    assert_eq!(r.keep(0, 30, 2), [4..4, 30..32]);
    assert_eq!(held(&r, 0), [0, 1, 2, 3, 30, 31]);
    // a new sequence of 2, then 2 more: the sinks fill as it goes
    r.clear();
    assert!(held(&r, 0).is_empty());
    assert_eq!(r.keep(0, 0, 2), [0..2, 2..2]);
    assert_eq!(r.keep(0, 2, 5), [2..4, 4..7]);
    assert_eq!(held(&r, 0), [0, 1, 2, 3, 4, 5, 6]);
    r.truncate(3);
    assert_eq!(held(&r, 0), [0, 1, 2]);
}

#[test]
fn rotation_is_orthonormal_and_its_own_inverse() {
    let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
    let y: Vec<f32> = (0..96).map(|i| ((i * 11 % 17) as f32 - 8.0) * 1.3).collect();
    let (mut rx, mut ry) = (x.clone(), y.clone());
    rotate_groups(&mut rx);
    rotate_groups(&mut ry);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>();
    assert!((dot(&rx, &ry) - dot(&x, &y)).abs() < 1e-3 * dot(&x, &x).sqrt() * dot(&y, &y).sqrt());
    // each group is transformed on its own: group 1 of rx depends only on group 1 of x
    let mut g1 = x[32..64].to_vec();
    rotate_groups(&mut g1);
    assert_eq!(&rx[32..64], &g1[..]);
    rotate_groups(&mut rx);
    for (a, b) in rx.iter().zip(&x) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // one large channel is spread evenly over its group
    let mut spike = vec![0.0f32; 32];
    spike[5] = 32.0;
    rotate_groups(&mut spike);
    assert!(spike.iter().all(|v| (v.abs() - 32.0 / 32f32.sqrt()).abs() < 1e-4));
}

#[test]
fn q4_rows_are_stored_rotated_and_read_back_in_place() {
    // A row with one outlier value per group.
    let k: Vec<f32> = (0..64).map(|i| if i % 32 == 3 { 40.0 } else { ((i * 7 % 13) as f32 - 6.0) * 0.25 }).collect();
    let mut c = KvCache::new(KvType::Q4, 1, 2, 1, 64, 64).expect("cache");
    c.write(0, 0, &k, &k).expect("write");
    let mut plain = vec![0.0f32; 64];
    quant::dequantize_row(GgmlType::Q4_0, c.k_row(0, 0, 0), &mut plain).expect("row");
    let mut rot = k.clone();
    rotate_groups(&mut rot);
    let mut direct = vec![0.0f32; 64];
    let mut blocks = vec![BlockQ4_0::zeroed(); 2];
    quantize_row_q4_0_ref(&rot, &mut blocks);
    quant::dequantize_row(GgmlType::Q4_0, bytemuck::cast_slice(&blocks), &mut direct).expect("row");
    assert_eq!(plain, direct, "the stored bytes are Q4_0 of the rotated row");
    let (mut rk, mut rv) = (vec![0.0f32; 64], vec![0.0f32; 64]);
    c.read_k(0, 0, 0, &mut rk);
    c.read_v(0, 0, 0, &mut rv);
    assert_eq!(rk, rv);
    // Rotated, the small channels keep their values to about a tenth; unrotated Q4_0 of this
    // row (scale 40/8 = 5) rounds every one of them to 0.
    let err = |r: &[f32]| r.iter().zip(&k).enumerate().filter(|(i, _)| i % 32 != 3).map(|(_, (a, b))| (a - b).abs()).fold(0.0f32, f32::max);
    let mut unrotated = vec![BlockQ4_0::zeroed(); 2];
    quantize_row_q4_0_ref(&k, &mut unrotated);
    let mut back = vec![0.0f32; 64];
    quant::dequantize_row(GgmlType::Q4_0, bytemuck::cast_slice(&unrotated), &mut back).expect("row");
    assert!(err(&rk) < 0.6 * err(&back), "rotated error {} vs plain {}", err(&rk), err(&back));
}

#[test]
fn quantized_k_offset_is_set_by_a_batch_from_position_0() {
    for ty in [KvType::Q8, KvType::Q4] {
        k_offset_case(ty);
    }
    // Float types store K as it is.
    let (nkv, hd, n) = (2, 64, 6);
    let k: Vec<f32> = (0..n * nkv * hd).map(|i| 4.0 + (i % 7) as f32).collect();
    for ty in [KvType::F32, KvType::F16] {
        let mut c = KvCache::new(ty, 2, 16, nkv, hd, hd).expect("cache");
        c.write_batch(1, 0, &k, &k).expect("batch");
        assert!(c.k_offset(1, 0).is_empty(), "{ty:?}");
    }
}

fn k_offset_case(ty: KvType) {
    let (nkv, hd, n) = (2, 64, 6);
    let width = nkv * hd;
    // K rows: a large part shared by all tokens, a small part that varies
    let shared: Vec<f32> = (0..width).map(|i| 4.0 * (i as f32 * 0.37).sin()).collect();
    let k: Vec<f32> = (0..n * width).map(|i| shared[i % width] + 0.1 * (((i * 13) % 17) as f32 - 8.0) / 8.0).collect();
    let v = vec![0.25f32; n * width];
    let mut c = KvCache::new(ty, 2, 16, nkv, hd, hd).expect("cache");
    c.write_batch(1, 0, &k, &v).expect("batch");
    // the mean of tokens 1..n, summed in token order in f32, times 1/(n−1)
    for h in 0..nkv {
        for j in 0..hd {
            let sum = (1..n).fold(0f32, |s, t| s + k[t * width + h * hd + j]);
            assert_eq!(c.k_offset(1, h)[j].to_bits(), (sum * (1.0 / (n - 1) as f32)).to_bits());
        }
    }
    assert!(c.k_offset(0, 1).iter().all(|&m| m == 0.0), "other layers keep theirs");
    // The same rows written token by token: a one-token batch from position 0 sets a zero
    // offset, so they are stored whole, and read back far less exactly.
    let mut whole = KvCache::new(ty, 2, 16, nkv, hd, hd).expect("cache");
    for t in 0..n {
        whole.write(1, t, &k[t * width..(t + 1) * width], &v[..width]).expect("write");
    }
    assert!(whole.k_offset(1, 0).iter().all(|&m| m == 0.0));
    let max_err = |c: &KvCache| {
        let mut out = vec![0f32; hd];
        let mut e = 0f32;
        for t in 0..n {
            for h in 0..nkv {
                c.read_k(1, t, h, &mut out);
                for (o, x) in out.iter().zip(&k[t * width + h * hd..]) {
                    e = e.max((o - x).abs());
                }
            }
        }
        e
    };
    let (with, without) = (max_err(&c), max_err(&whole));
    assert!(with < 0.2 * without, "{ty:?}: K error with the offset {with}, stored whole {without}");
    // A later batch keeps the offset; a new sequence from position 0 replaces it.
    let before = c.k_offset(1, 0).to_vec();
    c.write_batch(1, n, &k[..2 * width], &v[..2 * width]).expect("batch");
    assert_eq!(c.k_offset(1, 0), &before[..]);
    c.write(1, 0, &k[..width], &v[..width]).expect("write");
    assert!(c.k_offset(1, 0).iter().all(|&m| m == 0.0));
}

#[test]
fn write_checks_ranges() {
    let mut c = KvCache::new(KvType::F16, 2, 4, 2, 32, 32).expect("cache");
    let r = vec![0.5f32; 64];
    assert_eq!(c.write(2, 0, &r, &r), Err(KvError::LayerOutOfRange { layer: 2, n_layers: 2 }));
    assert_eq!(c.write(0, 4, &r, &r), Err(KvError::PositionOutOfRange { pos: 4, n_ctx: 4 }));
    assert_eq!(c.write(0, 0, &r[..32], &r), Err(KvError::RowLength { what: "K", expected: 64, got: 32 }));
    assert_eq!(c.write_batch(0, 0, &r, &r[..32]), Err(KvError::RowLength { what: "V", expected: 64, got: 32 }));
    assert_eq!(c.write_batch(0, 0, &[], &[]), Err(KvError::RowLength { what: "K", expected: 64, got: 0 }));
    assert_eq!(c.write(0, usize::MAX, &r, &r), Err(KvError::PositionOutOfRange { pos: usize::MAX, n_ctx: 4 }));
    let three = vec![0.5f32; 3 * 64];
    assert_eq!(c.write_batch(0, 2, &three, &three), Err(KvError::PositionOutOfRange { pos: 4, n_ctx: 4 }));
    c.write(1, 2, &r, &r).expect("write");
    assert_eq!(c.n_pos(), 3);
    c.truncate(1);
    assert_eq!(c.n_pos(), 1);
    c.clear();
    assert_eq!(c.n_pos(), 0);
}

/// Where a continuation may resume: anywhere without copies; with them, where the next query
/// finds every copy it reads, else at the sink.
#[test]
fn resume_point_needs_the_copies_the_next_query_reads() {
    let plain = RecentRows::new(KvType::F16, 2, 100, 5);
    assert_eq!(plain.resume_point(37), 37);
    let mut r = RecentRows::new(KvType::Q8, 2, 100, 5);
    for layer in 0..2 {
        r.keep(layer, 0, 12); // sinks 0..4, copies of 7..12
        r.keep(layer, 12, 1); // 8..13
        r.keep(layer, 13, 1); // 9..14
    }
    // A query at 14 reads 10..14, at 13 reads 9..13: held. At 12 it would read 8..12, but
    // position 13 replaced 8's slot.
    assert_eq!((r.resume_point(14), r.resume_point(13)), (14, 13));
    assert_eq!(r.resume_point(12), 4);
    assert_eq!((r.resume_point(3), r.resume_point(4)), (3, 4));
    // A layer behind the others (a pass cut short) is not resumed from.
    r.keep(1, 14, 1);
    r.keep(0, 14, 1);
    r.keep(0, 15, 1);
    assert_eq!(r.resume_point(16), 4);
}
