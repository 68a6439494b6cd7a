//! Unit tests of the sampler: PRNG, exp, chain steps, [`Sampler`], config and stop conditions.

use super::chain::by_logit_desc;
use super::*;

fn cands(logits: &[f32]) -> Vec<Candidate> {
    logits.iter().enumerate().map(|(i, &l)| Candidate { id: i as u32, logit: l }).collect()
}

fn ids(c: &[Candidate]) -> Vec<u32> {
    c.iter().map(|x| x.id).collect()
}

fn softmax(l: &[f32], t: f32) -> Vec<f64> {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = l.iter().map(|&x| ((x as f64 - m) / t as f64).exp()).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|x| x / s).collect()
}

#[test]
fn xoshiro_reference_vectors() {
    // From the reference implementation with state {1, 2, 3, 4}.
    let mut r = Xoshiro256StarStar::from_state([1, 2, 3, 4]);
    let got: Vec<u64> = (0..6).map(|_| r.next_u64()).collect();
    assert_eq!(got, [11520, 0, 1509978240, 1215971899390074240, 1216172134540287360, 607988272756665600]);
    // SplitMix64 from 0.
    let mut s = 0u64;
    assert_eq!([splitmix64(&mut s), splitmix64(&mut s)], [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4]);
    let mut r = Xoshiro256StarStar::seed_from_u64(42);
    assert_eq!(r.next_u64(), 1546998764402558742);
    assert_eq!(r.next_u64(), 6990951692964543102);
    let u = r.next_f64();
    assert!((0.0..1.0).contains(&u));
}

#[test]
fn det_exp_is_accurate() {
    let mut x = -700.0f64;
    while x < 700.0 {
        let (a, b) = (det_exp(x), x.exp());
        assert!(((a - b) / b).abs() < 4e-16, "x={x}: {a} vs {b}");
        x += 0.137;
    }
    assert_eq!(det_exp(0.0), 1.0);
    assert_eq!(det_exp(-1000.0), 0.0);
    assert_eq!(det_exp(f64::NEG_INFINITY), 0.0);
    assert_eq!(det_exp(1000.0), f64::INFINITY);
    // Bit patterns pinned so a platform difference would show (IEEE basic arithmetic
    // gives exactly these everywhere; e is within one ulp).
    assert_eq!(det_exp(1.0).to_bits(), 4613303445314885482);
    assert!(det_exp(1.0).to_bits().abs_diff(std::f64::consts::E.to_bits()) <= 1);
}

#[test]
fn logit_bias_adds_and_bans() {
    let mut l = vec![1.0, 2.0, 3.0];
    apply_logit_bias(&mut l, &[(0, 5.0), (2, f32::NEG_INFINITY)]);
    assert_eq!(l, [6.0, 2.0, f32::NEG_INFINITY]);
}

#[test]
fn penalties_as_llama_cpp() {
    let mut scratch = Vec::new();
    // Repetition: positive divided, negative multiplied, only within the window.
    let mut l = vec![2.0, -1.0, 4.0, 1.0];
    apply_penalties(&mut l, &[3, 0, 1, 0], 3, 2.0, 0.0, 0.0, &mut scratch);
    assert_eq!(l, [1.0, -2.0, 4.0, 1.0]); // token 3 fell out of the window
                                          // Frequency and presence: count·freq + present subtracted after repetition.
    let mut l = vec![2.0, -1.0, 4.0, 1.0];
    apply_penalties(&mut l, &[0, 0, 2], -1, 1.0, 0.5, 0.25, &mut scratch);
    assert_eq!(l, [2.0 - 1.0 - 0.25, -1.0, 4.0 - 0.5 - 0.25, 1.0]);
    // Off when last_n == 0; out-of-vocabulary history ignored.
    let mut l = vec![2.0, 3.0];
    apply_penalties(&mut l, &[0, 1], 0, 2.0, 1.0, 1.0, &mut scratch);
    assert_eq!(l, [2.0, 3.0]);
    apply_penalties(&mut l, &[7], -1, 2.0, 1.0, 1.0, &mut scratch);
    assert_eq!(l, [2.0, 3.0]);
}

#[test]
fn top_k_keeps_best_sorted_with_id_ties() {
    let mut c = cands(&[0.5, 3.0, 1.0, 3.0, -2.0, 2.0]);
    assert!(top_k(&mut c, 3, 1, false));
    assert_eq!(ids(&c), [1, 3, 5]);
    let mut c = cands(&[0.5, 3.0, 1.0]);
    assert!(!top_k(&mut c, 0, 1, false)); // disabled
    assert_eq!(ids(&c), [0, 1, 2]);
    let mut c = cands(&[0.5, 3.0, 1.0]);
    top_k(&mut c, 1, 2, false); // min_keep wins
    assert_eq!(ids(&c), [1, 2]);
    let mut c = cands(&[0.5, 3.0]);
    top_k(&mut c, 10, 1, false);
    assert_eq!(ids(&c), [1, 0]);
}

#[test]
fn top_p_cuts_at_cumulative_probability() {
    // ln-probabilities: p = [0.5, 0.25, 0.125, 0.125] for ids [2, 0, 1, 3].
    let l = [0.25f32.ln(), 0.125f32.ln(), 0.5f32.ln(), 0.125f32.ln()];
    let mut c = cands(&l);
    top_p(&mut c, 0.6, 1, false);
    assert_eq!(ids(&c), [2, 0]);
    let mut c = cands(&l);
    top_p(&mut c, 0.4, 1, false);
    assert_eq!(ids(&c), [2]);
    let mut c = cands(&l);
    top_p(&mut c, 0.4, 3, false); // min_keep
    assert_eq!(ids(&c), [2, 0, 1]);
    let mut c = cands(&l);
    assert!(!top_p(&mut c, 1.0, 1, false)); // disabled
    assert_eq!(ids(&c), [0, 1, 2, 3]);
    // Large vocabulary: the adaptive partial sort gives the same prefix as a full sort.
    let big: Vec<f32> = (0..5000u32).map(|i| ((i * 7919) % 5000) as f32 * 0.002).collect();
    let mut c = cands(&big);
    top_p(&mut c, 0.9, 1, false);
    let mut full = cands(&big);
    full.sort_by(by_logit_desc);
    assert_eq!(c, full[..c.len()].to_vec());
    assert!(c.len() > 256, "needed several growth steps: {}", c.len());
}

#[test]
fn min_p_relative_to_best() {
    // Relative probabilities exp(l - max): [1, 0.5, 0.04, 0.2].
    let l = [0.0f32, 0.5f32.ln(), 0.04f32.ln(), 0.2f32.ln()];
    let mut c = cands(&l);
    min_p(&mut c, 0.1, 1, false);
    assert_eq!(ids(&c), [0, 1, 3]);
    let mut c = cands(&l);
    min_p(&mut c, 0.6, 1, false);
    assert_eq!(ids(&c), [0]);
    let mut c = cands(&l);
    min_p(&mut c, 0.6, 3, false); // min_keep: best three, sorted
    assert_eq!(ids(&c), [0, 1, 3]);
    let mut c = cands(&l);
    min_p(&mut c, 0.0, 1, false);
    assert_eq!(c.len(), 4);
}

#[test]
fn greedy_is_argmax_lowest_id_and_deterministic() {
    let mut s = Sampler::new(SamplerConfig::greedy(), 5).unwrap();
    let logits = [1.0, 4.0, -2.0, 4.0, 3.9];
    for _ in 0..3 {
        assert_eq!(s.sample(&mut logits.clone(), &[]).unwrap(), 1);
    }
    // Bias and penalties apply before the argmax.
    let cfg = SamplerConfig { logit_bias: vec![(1, -1.0)], ..SamplerConfig::greedy() };
    let mut s = Sampler::new(cfg, 5).unwrap();
    assert_eq!(s.sample(&mut logits.clone(), &[]).unwrap(), 3);
    let cfg = SamplerConfig { repetition_penalty: 2.0, ..SamplerConfig::greedy() };
    let mut s = Sampler::new(cfg, 5).unwrap();
    assert_eq!(s.sample(&mut logits.clone(), &[1, 3]).unwrap(), 4);
    // Errors, not panics.
    assert_eq!(s.sample(&mut [1.0, f32::NAN, 0.0, 0.0, 0.0], &[]), Err(SamplerError::NanLogit { token: 1 }));
    assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 5], &[]), Err(SamplerError::NoCandidates));
    assert_eq!(s.sample(&mut [0.0; 4], &[]), Err(SamplerError::LogitsLength { expected: 5, got: 4 }));
    assert_eq!(argmax(&[f32::NEG_INFINITY, 0.0]), Ok(1));
}

fn run(cfg: &SamplerConfig, logits: &[f32], n: usize) -> Vec<u32> {
    let mut s = Sampler::new(cfg.clone(), logits.len()).unwrap();
    (0..n).map(|_| s.sample(&mut logits.to_vec(), &[]).unwrap()).collect()
}

#[test]
fn seeded_reproducibility() {
    let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) * 0.05).collect();
    let cfg = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..Default::default() };
    let a = run(&cfg, &logits, 200);
    assert_eq!(a, run(&cfg, &logits, 200));
    let b = run(&SamplerConfig { seed: 8, ..cfg.clone() }, &logits, 200);
    assert_ne!(a, b);
    // Pinned: the same tokens must come out on wasm32 (see tests of the wasm build).
    let pinned = run(&SamplerConfig { seed: 42, ..Default::default() }, &logits, 8);
    assert_eq!(pinned, run(&SamplerConfig { seed: 42, ..Default::default() }, &logits, 8));
    let mut s = Sampler::new(cfg.clone(), logits.len()).unwrap();
    let first: Vec<u32> = (0..5).map(|_| s.sample(&mut logits.clone(), &[]).unwrap()).collect();
    s.reseed(7);
    let again: Vec<u32> = (0..5).map(|_| s.sample(&mut logits.clone(), &[]).unwrap()).collect();
    assert_eq!(first, again);
}

#[test]
fn pinned_stream_for_cross_platform_check() {
    // Fixed logits and seed: this exact sequence is what every platform must produce.
    let logits: Vec<f32> = (0..64).map(|i| ((i * 13 % 17) as f32) * 0.3 - 2.0).collect();
    let cfg = SamplerConfig { temperature: 0.9, top_k: 20, top_p: 0.9, min_p: 0.02, seed: 1234, ..Default::default() };
    let got = run(&cfg, &logits, 16);
    assert_eq!(got, PINNED_STREAM, "{got:?}");
}

const PINNED_STREAM: [u32; 16] = [13, 1, 22, 18, 13, 18, 26, 30, 60, 5, 43, 47, 30, 5, 9, 1];

#[test]
fn temperature_sampling_matches_probabilities() {
    let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0];
    for t in [1.0f32, 0.5] {
        let cfg = SamplerConfig { temperature: t, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 99, ..Default::default() };
        let n = 20_000;
        let draws = run(&cfg, &logits, n);
        let want = softmax(&logits, t);
        for (i, p) in want.iter().enumerate() {
            let f = draws.iter().filter(|&&d| d == i as u32).count() as f64 / n as f64;
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((f - p).abs() < 5.0 * sigma + 1e-4, "t={t} token {i}: {f} vs {p}");
        }
    }
}

#[test]
fn chain_filters_before_drawing() {
    // top_k 2 leaves ids 3 and 1; nothing else may ever be drawn.
    let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0];
    let cfg = SamplerConfig { temperature: 1.5, top_k: 2, top_p: 1.0, min_p: 0.0, ..Default::default() };
    let d = run(&cfg, &logits, 2000);
    assert!(d.iter().all(|&x| x == 3 || x == 1));
    assert!(d.contains(&1) && d.contains(&3));
    // min_p 0.5: only tokens within ln 2 of the best (just id 3 here).
    let cfg = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, ..Default::default() };
    assert!(run(&cfg, &logits, 500).iter().all(|&x| x == 3));
    // A banned token is never drawn.
    let cfg = SamplerConfig { temperature: 2.0, top_k: 0, top_p: 1.0, min_p: 0.0, logit_bias: vec![(3, f32::NEG_INFINITY)], ..Default::default() };
    assert!(!run(&cfg, &logits, 2000).contains(&3));
    // +inf forces a token.
    let mut s = Sampler::new(SamplerConfig { temperature: 1.0, ..Default::default() }, 3).unwrap();
    assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 1.0], &[]).unwrap(), 1);
}

#[test]
fn large_vocab_top_k_path() {
    let n = 262_144;
    let logits: Vec<f32> = (0..n as u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 12) % 1000) as f32 * 0.01).collect();
    let cfg = SamplerConfig::default();
    let mut s = Sampler::new(cfg, n).unwrap();
    for _ in 0..5 {
        let t = s.sample(&mut logits.clone(), &[]).unwrap() as usize;
        assert!(logits[t] >= 9.5, "drew a token outside the top: {}", logits[t]);
    }
}

#[test]
fn validation_rules() {
    let ok = SamplerConfig::default();
    let v = |c: SamplerConfig| c.validate(10);
    assert_eq!(v(ok.clone()), Ok(()));
    assert!(matches!(v(SamplerConfig { temperature: f32::NAN, ..ok.clone() }), Err(SamplerError::Temperature { .. })));
    assert!(matches!(v(SamplerConfig { temperature: -0.1, ..ok.clone() }), Err(SamplerError::Temperature { .. })));
    assert!(matches!(v(SamplerConfig { top_p: 0.0, ..ok.clone() }), Err(SamplerError::TopP { .. })));
    assert!(matches!(v(SamplerConfig { top_p: 1.01, ..ok.clone() }), Err(SamplerError::TopP { .. })));
    assert!(matches!(v(SamplerConfig { top_p: f32::NAN, ..ok.clone() }), Err(SamplerError::TopP { .. })));
    assert!(matches!(v(SamplerConfig { min_p: -0.5, ..ok.clone() }), Err(SamplerError::MinP { .. })));
    assert!(matches!(v(SamplerConfig { repetition_penalty: 0.0, ..ok.clone() }), Err(SamplerError::RepetitionPenalty { .. })));
    assert!(matches!(v(SamplerConfig { presence_penalty: f32::INFINITY, ..ok.clone() }), Err(SamplerError::PresencePenalty { .. })));
    assert!(matches!(v(SamplerConfig { frequency_penalty: f32::NAN, ..ok.clone() }), Err(SamplerError::FrequencyPenalty { .. })));
    assert_eq!(v(SamplerConfig { penalty_last_n: -2, ..ok.clone() }), Err(SamplerError::PenaltyLastN { value: -2 }));
    assert_eq!(v(SamplerConfig { logit_bias: vec![(10, 1.0)], ..ok.clone() }), Err(SamplerError::LogitBiasToken { token: 10, n_vocab: 10 }));
    assert!(matches!(v(SamplerConfig { logit_bias: vec![(1, f32::NAN)], ..ok.clone() }), Err(SamplerError::LogitBiasValue { token: 1, .. })));
    assert_eq!(ok.validate(0), Err(SamplerError::EmptyVocab));
    assert!(Sampler::new(SamplerConfig { temperature: -1.0, ..ok }, 10).is_err());
}

#[test]
fn deserialize_camel_and_snake_case() {
    let a: SamplerConfig = serde_json::from_str(r#"{"temperature":0.7,"topK":10,"top_p":0.9,"minP":0.1,"repeat_penalty":1.1,"presencePenalty":0.5,"frequency_penalty":0.25,"penaltyLastN":-1,"logitBias":{"5":-100,"7":2.5},"seed":3,"minKeep":2}"#).unwrap();
    assert_eq!(
        a,
        SamplerConfig {
            temperature: 0.7,
            top_k: 10,
            top_p: 0.9,
            min_p: 0.1,
            repetition_penalty: 1.1,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            penalty_last_n: -1,
            logit_bias: vec![(5, -100.0), (7, 2.5)],
            seed: 3,
            min_keep: 2,
        }
    );
    let b: SamplerConfig = serde_json::from_str(r#"{"logit_bias":[[1,0.5],[2,-1]]}"#).unwrap();
    assert_eq!(b.logit_bias, vec![(1, 0.5), (2, -1.0)]);
    assert_eq!(b.top_k, 40); // defaults fill the rest
    let s: StopConditions = serde_json::from_str(r#"{"maxTokens":5,"stop":["\n\n"],"stopTokens":[2]}"#).unwrap();
    assert_eq!(s, StopConditions { max_tokens: Some(5), stop_tokens: vec![2], stop_strings: vec!["\n\n".into()] });
}

#[test]
fn stop_tokens_and_max_tokens() {
    let s = StopConditions { max_tokens: Some(3), stop_tokens: vec![2, 106], stop_strings: vec![] };
    assert_eq!(s.check_token(106, 1), Some(StopReason::StopToken(106)));
    assert_eq!(s.check_token(5, 2), None);
    assert_eq!(s.check_token(5, 3), Some(StopReason::MaxTokens));
    assert_eq!(StopConditions::default().check_token(5, 1_000_000), None);
}

#[test]
fn stop_strings_cut_and_hold_back() {
    let s = StopConditions { stop_strings: vec!["</answer>".into(), "\n\nUser:".into()], ..Default::default() };
    // Nothing suspicious: emit everything.
    assert_eq!(s.scan_text("Hello world", 0), TextScan::Continue { safe_len: 11 });
    // Ends with a prefix of a stop string: hold it back.
    assert_eq!(s.scan_text("Hello </ans", 0), TextScan::Continue { safe_len: 6 });
    assert_eq!(s.scan_text("Hello\n\nUs", 0), TextScan::Continue { safe_len: 5 });
    assert_eq!(s.scan_text("Hello\n", 0), TextScan::Continue { safe_len: 5 });
    // The prefix turned out not to be a stop string: released.
    assert_eq!(s.scan_text("Hello </and more", 6), TextScan::Continue { safe_len: 16 });
    // Complete stop string: cut before it (earliest of several).
    assert_eq!(s.scan_text("4</answer> trailing", 0), TextScan::Stop { cut: 1, stop_index: 0 });
    assert_eq!(s.scan_text("a\n\nUser: x </answer>", 1), TextScan::Stop { cut: 1, stop_index: 1 });
    // Multi-byte: the held-back part and the cut stay on char boundaries.
    let u = StopConditions { stop_strings: vec!["éé!".into()], ..Default::default() };
    assert_eq!(u.scan_text("café", 0), TextScan::Continue { safe_len: 3 });
    assert_eq!(u.scan_text("caféé!", 0), TextScan::Stop { cut: 3, stop_index: 0 });
    assert_eq!(u.scan_text("café", 4), TextScan::Continue { safe_len: 3 }); // `from` mid-char is rounded down
                                                                            // Empty stop strings are ignored.
    let e = StopConditions { stop_strings: vec![String::new()], ..Default::default() };
    assert_eq!(e.scan_text("abc", 0), TextScan::Continue { safe_len: 3 });
}

#[test]
fn streaming_never_emits_part_of_a_stop_string() {
    let s = StopConditions { stop_strings: vec!["<|end|>".into()], ..Default::default() };
    let pieces = ["Hi", " <", "|", "en", "d", "|", "> after"];
    let mut text = String::new();
    let mut emitted = 0;
    let mut out = String::new();
    let mut stopped = false;
    for p in pieces {
        text.push_str(p);
        match s.scan_text(&text, emitted) {
            TextScan::Continue { safe_len } => {
                out.push_str(&text[emitted..safe_len]);
                emitted = safe_len;
            }
            TextScan::Stop { cut, .. } => {
                out.push_str(&text[emitted..cut]);
                stopped = true;
                break;
            }
        }
    }
    assert!(stopped);
    assert_eq!(out, "Hi ");
}
