//! The CPU engine against llama.cpp's outputs on the two real models (tests/fixtures/oracle):
//! greedy tokens, teacher-forced top-1 agreement, full-logit similarity, quantized KV caches.
//! Thresholds are the ones the CPU-engine issue states; measured figures are printed
//! (`cargo test --test oracle_cpu -- --nocapture`).

use serde_json::Value;
use webgguf::cpu::Kernels;
use webgguf::engine::{Session, SessionOptions};
use webgguf::kv_cache::KvType;
use webgguf::model::CpuBackend;
use webgguf_tests::{argmax, fixtures_dir, ids, model_path, top2, use_all_cores};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1";
const GEMMA: &str = "gemma-3-270m-q4_k_m";

fn oracle(name: &str) -> Value {
    let p = fixtures_dir().join("oracle").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).expect("oracle fixture")).expect("oracle JSON")
}

fn session(name: &str, kv: KvType) -> Session<CpuBackend> {
    session_on(name, kv, Kernels::best())
}

fn session_on(name: &str, kv: KvType, kernels: Kernels) -> Session<CpuBackend> {
    session_with(name, SessionOptions { kv, n_ctx: 1024, ..Default::default() }, kernels)
}

fn session_with(name: &str, options: SessionOptions, kernels: Kernels) -> Session<CpuBackend> {
    use_all_cores();
    let path = model_path(&format!("{name}.gguf"));
    let mut backend = CpuBackend::with_kernels(kernels).expect("kernel family available");
    let (_, model) = webgguf::loader::load_files(&[path], &mut backend).expect("load model");
    Session::new(backend, model, options).expect("session")
}

/// Per-position top-1 of our teacher-forced logits vs the oracle's, split by oracle margin.
struct Agreement {
    all: (usize, usize),
    confident: (usize, usize),
    /// Sum and count of |ours - llama.cpp| over the oracle's top-10 logits of every position.
    diff: (f64, usize),
    /// Positions where top-1 differs though the oracle margin is >= 0.1.
    misses: Vec<String>,
}

impl Agreement {
    fn rate(x: (usize, usize)) -> f64 {
        x.0 as f64 / x.1.max(1) as f64
    }
}

fn teacher_forced(s: &mut Session<CpuBackend>, o: &Value) -> Agreement {
    let n_vocab = o["n_vocab"].as_u64().expect("n_vocab") as usize;
    let mut a = Agreement { all: (0, 0), confident: (0, 0), diff: (0.0, 0), misses: Vec::new() };
    for case in o["cases"].as_array().expect("cases") {
        let mut seq = ids(&case["prompt_ids"]);
        seq.extend(ids(&case["greedy_ids"]));
        let tops = case["teacher_forced_top"].as_array().expect("teacher_forced_top");
        let logits = s.logits_all(&seq).expect("forward");
        assert_eq!(logits.len(), seq.len() * n_vocab);
        assert!(logits.iter().all(|x| x.is_finite()), "non-finite logits");
        for (pos, top) in tops.iter().enumerate().take(seq.len()) {
            let row = &logits[pos * n_vocab..(pos + 1) * n_vocab];
            let ours = argmax(row);
            for (id, l) in top["ids"].as_array().expect("ids").iter().zip(top["logits"].as_array().expect("logits")) {
                let ours_l = row[id.as_u64().expect("id") as usize] as f64;
                a.diff.0 += (ours_l - l.as_f64().expect("logit")).abs();
                a.diff.1 += 1;
            }
            let want = top["ids"][0].as_u64().expect("top id") as u32;
            let l = top["logits"].as_array().expect("top logits");
            let margin = l[0].as_f64().expect("logit") - l[1].as_f64().expect("logit");
            let hit = usize::from(ours == want);
            a.all.0 += hit;
            a.all.1 += 1;
            if margin >= 0.1 {
                a.confident.0 += hit;
                a.confident.1 += 1;
                if hit == 0 {
                    let t1 = top["ids"][1].as_u64().expect("id") as usize;
                    a.misses.push(format!(
                        "pos {pos}/{}: llama.cpp {want} {:.3} > {t1} {:.3}; ours {:.3} vs {:.3}, our top {ours} {:.3}",
                        seq.len(),
                        l[0],
                        l[1],
                        row[want as usize],
                        row[t1],
                        row[ours as usize]
                    ));
                }
            }
        }
    }
    a
}

/// Greedy decoding token by token should reproduce llama.cpp's tokens up to the first step whose
/// recorded top-2 margin is under 0.05 (the target). We reach it on most sequences; the
/// rest diverge at a step where both llama.cpp's and our top-2 margins are under 0.3, which is
/// tolerated (and printed). A divergence at a clearer margin is a failure.
/// Returns (tokens matched, tokens compared, failures).
fn greedy(s: &mut Session<CpuBackend>, o: &Value, key: &str) -> (usize, usize, Vec<String>) {
    let (mut matched, mut compared, mut failures) = (0, 0, Vec::new());
    for (ci, case) in o[key].as_array().expect("cases").iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        let margins: Vec<f64> = case["greedy_margins"].as_array().expect("margins").iter().map(|m| m.as_f64().expect("m")).collect();
        // Compare through the first low-margin step, where either answer is acceptable.
        let low = margins.iter().position(|&m| m < 0.05);
        let n_cmp = low.map_or(want.len(), |i| i + 1).min(want.len());
        s.reset();
        let mut got = Vec::new();
        let mut our_margins = Vec::new();
        let mut logits = s.prefill(&prompt).expect("prefill");
        while got.len() < n_cmp {
            let (id, margin) = top2(&logits);
            our_margins.push(margin);
            got.push(id);
            if got.len() < n_cmp {
                logits = s.step(id).expect("step");
            }
        }
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        matched += same;
        compared += n_cmp;
        let must = if low.is_some_and(|i| i < n_cmp) { n_cmp - 1 } else { n_cmp };
        if same < must {
            // A divergence where both sides were nearly undecided is the arithmetic-order noise
            // llama.cpp shows against itself; one at a clear margin is a bug.
            let close_call = margins[same] < 0.3 && our_margins[same] < 0.3;
            println!(
                "{key}[{ci}]: diverges at step {same} (ours {} margin {:.3}, llama.cpp {} margin {:.3})",
                got[same], our_margins[same], want[same], margins[same]
            );
            if close_call {
                continue;
            }
            failures.push(format!(
                "{key}[{ci}]: first difference at step {same} (ours {} margin {:.3}, llama.cpp {} margin {:.3})",
                got[same], our_margins[same], want[same], margins[same]
            ));
        }
    }
    (matched, compared, failures)
}

fn check_model(name: &str) {
    let o = oracle(name);
    let mut s = session(name, KvType::F32);
    let (m, c, mut failures) = greedy(&mut s, &o, "cases");
    let (mc, cc, f2) = greedy(&mut s, &o, "chat");
    failures.extend(f2);
    println!("{name}: greedy tokens matched {m}/{c} (raw cases), {mc}/{cc} (chat)");

    let a = teacher_forced(&mut s, &o);
    let (all, conf) = (Agreement::rate(a.all), Agreement::rate(a.confident));
    println!("{name}: teacher-forced top-1 agreement {:.4} over all {} positions, {:.4} over {} with margin >= 0.1", all, a.all.1, conf, a.confident.1);
    println!("{name}: mean |logit difference| over the oracle's top-10: {:.5}", a.diff.0 / a.diff.1.max(1) as f64);
    for m in &a.misses {
        println!("{name}: miss at {m}");
    }
    // The targets. The oracle is llama.cpp's x86 AVX2 build, whose arithmetic the
    // default kernels on such a CPU (`Kernels::Avx2`) reproduce bit for bit: 100 % here. The
    // 128-bit kernels the browser runs reach 98.0–98.3 % (as llama.cpp's own AVX-512 build
    // does: docs/oracle-agreement-llama-cpp.md), so on a CPU without AVX2 this fails.
    println!("{name}: CPU kernels {}", Kernels::best().name());
    assert!(conf >= 0.99, "{name}: top-1 agreement {conf:.4} < 0.99 where the oracle margin >= 0.1");
    assert!(all >= 0.95, "{name}: top-1 agreement {all:.4} < 0.95 over all positions");
    assert!(failures.is_empty(), "{name}: greedy tokens differ before a low-margin step: {failures:#?}");
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model(SMOL);
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_model(GEMMA);
}

/// Reads a little-endian float16 C-order .npy file as f32: (shape, data).
fn read_npy_f16(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY");
    let (hlen, start) = if b[6] == 1 { (u16::from_le_bytes([b[8], b[9]]) as usize, 10) } else { (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12) };
    let header = std::str::from_utf8(&b[start..start + hlen]).expect("npy header");
    assert!(header.contains("'<f2'") && header.contains("'fortran_order': False"), "{header}");
    let shape_txt = &header[header.find('(').expect("(") + 1..header.find(')').expect(")")];
    let shape: Vec<usize> = shape_txt.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().expect("dim")).collect();
    let data: Vec<f32> = b[start + hlen..].chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{}", path.display());
    (shape, data)
}

/// sha256 of a row of logits as little-endian f32 bytes (how the oracle's .npy stores them).
fn row_sha256(row: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for x in row {
        h.update(x.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Cosine similarity and normalized MSE of our case-0 logits against llama.cpp's full logits,
/// from the compact in-repo reference (tests/fixtures/gen_oracle_logits.py): the logits rounded
/// to f16 (every `column_stride`-th vocabulary column), and the sha256 of each exact f32 row. The f16 rounding adds an NMSE of 4.3e-8
/// (SmolLM2) / 4.6e-8 (Gemma) and takes the cosine down by < 3e-8 (recorded in the JSON): five
/// orders of magnitude under the 5e-3 and 1 - 0.995 bounds, so they measure our kernels alone.
fn full_logits(name: &str, min_cos: f64, max_nmse: f64) {
    let dir = fixtures_dir().join("oracle");
    let (shape, want) = read_npy_f16(&dir.join(format!("{name}.case0.logits.f16.npy")));
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.case0.logits.json"))).expect("logits JSON")).expect("JSON");
    let rows: Vec<&str> = meta["row_sha256"].as_array().expect("row_sha256").iter().map(|v| v.as_str().expect("hex")).collect();
    assert_eq!(rows.len(), shape[0]);
    // The rounding must stay negligible against the bounds, or they would measure it.
    let rounding = meta["f16_rounding_nmse"].as_f64().expect("f16_rounding_nmse");
    assert!(rounding < max_nmse * 1e-3, "{name}: f16 rounding NMSE {rounding} is not negligible against {max_nmse}");
    let o = oracle(name);
    let case = &o["cases"][0];
    let mut seq = ids(&case["prompt_ids"]);
    seq.extend(ids(&case["greedy_ids"]).into_iter().take(shape[0] - seq.len()));
    assert_eq!(seq.len(), shape[0]);
    let mut s = session(name, KvType::F32);
    let got = s.logits_all(&seq).expect("forward");
    // Every `stride`-th column is in the f16 file (Gemma: every 4th, to stay under 2 MiB); the
    // row hashes below cover every column.
    let n = meta["shape"][1].as_u64().expect("shape") as usize;
    let stride = meta["column_stride"].as_u64().expect("column_stride") as usize;
    assert_eq!(got.len(), shape[0] * n);
    assert_eq!(shape[1], n.div_ceil(stride));
    let (mut worst_cos, mut sum_nmse) = (1.0f64, 0.0f64);
    for (g, w) in got.chunks_exact(n).zip(want.chunks_exact(shape[1])) {
        let (mut dot, mut gg, mut ww, mut err) = (0f64, 0f64, 0f64, 0f64);
        for (&a, &b) in g.iter().step_by(stride).zip(w) {
            let (a, b) = (a as f64, b as f64);
            dot += a * b;
            gg += a * a;
            ww += b * b;
            err += (a - b) * (a - b);
        }
        worst_cos = worst_cos.min(dot / (gg.sqrt() * ww.sqrt()));
        sum_nmse += err / ww;
    }
    let nmse = sum_nmse / shape[0] as f64;
    let same = got.chunks_exact(n).zip(&rows).filter(|(g, want)| row_sha256(g) == **want).count();
    let kernels = Kernels::best();
    println!(
        "{name}: full logits over {} positions: worst cosine {worst_cos:.6}, mean NMSE {nmse:.2e} (f16 reference), {same} of {} rows bit for bit ({} kernels)",
        shape[0],
        shape[0],
        kernels.name()
    );
    assert!(worst_cos >= min_cos, "{name}: cosine {worst_cos} < {min_cos}");
    assert!(nmse <= max_nmse, "{name}: NMSE {nmse} > {max_nmse}");
    if kernels == Kernels::Avx2 {
        // The oracle's own build: every logit equal, checked as each f32 row's sha256.
        assert_eq!(same, shape[0], "{name}: logits differ from llama.cpp's x86 AVX2 build");
        println!("{name}: bit-exact check ran: all {same} rows' sha256 equal llama.cpp's");
    }
}

#[test]
fn smollm2_full_logits_close_to_llama_cpp() {
    full_logits(SMOL, 0.995, 5e-3);
}

#[test]
fn gemma3_full_logits_close_to_llama_cpp() {
    full_logits(GEMMA, 0.995, 5e-3);
}

/// Quantized KV caches against the f32 cache on kernel family `kernels`: teacher-forced top-1
/// agreement over the oracle sequences, over all positions and over those where the f32 run's
/// top-2 margin is ≥ 0.1. The gates hold what we measured (docs/results.md). With llama.cpp's
/// arithmetic (the default kernels) any perturbation of K or V flips ~4 % of positions — two
/// f32 runs differing only in rounding order do too — so the targets (q8 ≥ 98 %,
/// q4 ≥ 95 %) are out of reach there, for llama.cpp as well (pkg-scripts/kv-agreement-llama-cpp.py);
/// `Kernels::Float`, without the 8-bit activation rounding behind that floor, measures the
/// cache alone (docs/kv-cache-llama-cpp.md).
fn kv_agreement(name: &str, kernels: Kernels, gates: &[(KvType, usize, f64, f64)]) {
    let o = oracle(name);
    let seqs: Vec<Vec<u32>> = o["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let mut s = ids(&c["prompt_ids"]);
            s.extend(ids(&c["greedy_ids"]));
            s
        })
        .collect();
    kv_agreement_on(name, "oracle sequences", &seqs, kernels, gates);
}

/// Top-1 agreement of each `(cache type, recent copies)` of `gates` with the f32 cache over
/// `seqs`, each teacher-forced from an empty cache in one batch, against its gates (all
/// positions, those with the f32 run's margin ≥ 0.1).
fn kv_agreement_on(name: &str, what: &str, seqs: &[Vec<u32>], kernels: Kernels, gates: &[(KvType, usize, f64, f64)]) {
    // (top-1 id, top-2 margin) per position.
    let tops = |kv, kv_recent| {
        let mut s = session_with(name, SessionOptions { kv, n_ctx: 1024, kv_recent, ..Default::default() }, kernels);
        let n_vocab = s.model.config.n_vocab;
        seqs.iter().flat_map(|seq| s.logits_all(seq).expect("forward").chunks_exact(n_vocab).map(top2).collect::<Vec<_>>()).collect::<Vec<(u32, f32)>>()
    };
    let base = tops(KvType::F32, 0);
    let mut failures = Vec::new();
    for &(kv, recent, min_all, min_confident) in gates {
        let t = tops(kv, recent);
        let all = base.iter().zip(&t).filter(|(a, b)| a.0 == b.0).count() as f64 / base.len() as f64;
        let conf: Vec<_> = base.iter().zip(&t).filter(|(a, _)| a.1 >= 0.1).collect();
        let confident = conf.iter().filter(|(a, b)| a.0 == b.0).count() as f64 / conf.len().max(1) as f64;
        println!(
            "{name}: {kv:?} KV (recent copies {recent}) top-1 agreement with f32 KV, {what} ({} kernels): {all:.4} over {} positions, {confident:.4} over {} with f32 margin >= 0.1",
            kernels.name(),
            base.len(),
            conf.len()
        );
        if all < min_all || confident < min_confident {
            failures.push(format!("{kv:?} recent {recent}: {all:.4} (gate {min_all}), {confident:.4} where confident (gate {min_confident})"));
        }
    }
    assert!(failures.is_empty(), "{name}: quantized KV agreement on {what} below the gates: {failures:?}");
}

// Gates: (cache, recent f16 copies, all positions, margin >= 0.1). The oracle sequences are
// short (most under 50 positions): with the default 64 recent copies a quantized cache reads
// most of them from copies, so the plain formats (no copies) are gated as well; the GPL-3
// tests below measure the copies over windows of 512.
const R: usize = webgguf::kv_cache::KV_RECENT;

#[test]
fn smollm2_quantized_kv_agrees_with_f32() {
    kv_agreement(SMOL, Kernels::best(), &[(KvType::F16, 0, 0.94, 0.96), (KvType::Q8, R, 0.94, 0.96), (KvType::Q4, R, 0.94, 0.96), (KvType::Q4, 0, 0.86, 0.89)]);
}

#[test]
fn gemma3_quantized_kv_agrees_with_f32() {
    kv_agreement(
        GEMMA,
        Kernels::best(),
        &[(KvType::F16, 0, 0.94, 0.96), (KvType::Q8, R, 0.94, 0.96), (KvType::Q4, R, 0.94, 0.96), (KvType::Q4, 0, 0.91, 0.93)],
    );
}

/// The targets (q8 ≥ 98 %, q4 ≥ 95 % over all positions) on the arithmetic without
/// activation rounding, where the f16 cache agrees on every position (plain q8 measured
/// 2026-12-03: 99.1 % of all positions and 100 % of those with margin ≥ 0.1, both models;
/// plain q4 87.7 / 91.2 %).
#[test]
fn smollm2_quantized_kv_agrees_with_f32_float_kernels() {
    kv_agreement(SMOL, Kernels::Float, &[(KvType::F16, 0, 0.99, 0.99), (KvType::Q8, 0, 0.98, 0.995), (KvType::Q4, R, 0.95, 0.97), (KvType::Q4, 0, 0.86, 0.88)]);
}

#[test]
fn gemma3_quantized_kv_agrees_with_f32_float_kernels() {
    kv_agreement(
        GEMMA,
        Kernels::Float,
        &[(KvType::F16, 0, 0.99, 0.99), (KvType::Q8, 0, 0.98, 0.995), (KvType::Q4, R, 0.95, 0.97), (KvType::Q4, 0, 0.90, 0.93)],
    );
}

/// The same on text longer than the copies: GPL-3's first 1024 tokens in two windows of 512
/// (each from an empty cache, BOS first where the model adds one), float kernels, the session
/// defaults (64 recent copies, 4 sinks) against the targets; plain q4 reported and
/// held at its level.
fn kv_agreement_gpl3(name: &str, gates: &[(KvType, usize, f64, f64)]) {
    let mut backend = CpuBackend::new();
    let (gguf, _) = webgguf::loader::load_files(&[model_path(&format!("{name}.gguf"))], &mut backend).expect("load");
    let tok = webgguf::tokenizer::Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer");
    let text = webgguf_tests::gpl3_text();
    let tokens = tok.tokenize(&text, false, false).expect("tokenize");
    let bos: Vec<u32> = if tok.add_bos() { tok.bos().into_iter().collect() } else { Vec::new() };
    let windows: Vec<Vec<u32>> = tokens.chunks(512 - bos.len()).take(2).map(|c| bos.iter().chain(c).copied().collect()).collect();
    kv_agreement_on(name, "GPL-3, 2 windows of 512", &windows, Kernels::Float, gates);
}

#[test]
fn smollm2_quantized_kv_agrees_with_f32_on_gpl3() {
    kv_agreement_gpl3(SMOL, &[(KvType::Q8, R, 0.98, 0.995), (KvType::Q4, R, 0.95, 0.98), (KvType::Q4, 0, 0.85, 0.88)]);
}

#[test]
fn gemma3_quantized_kv_agrees_with_f32_on_gpl3() {
    kv_agreement_gpl3(GEMMA, &[(KvType::Q8, R, 0.98, 0.995), (KvType::Q4, R, 0.95, 0.98), (KvType::Q4, 0, 0.87, 0.90)]);
}
