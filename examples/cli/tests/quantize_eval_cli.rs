//! `webgguf quantize` and `webgguf eval` on SmolLM2: a Q8_0 file that generates, the eval
//! pipeline against the source's own reference (KL 0, top-1 100 %) and against Q8_0, and the
//! refusals (mismatched reference, unknown type).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "model {} is missing: run pkg-scripts/fetch-models", p.display());
    p
}

fn webgguf(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_webgguf"));
    c.args(args);
    for (flag, p) in paths {
        if !flag.is_empty() {
            c.arg(flag);
        }
        c.arg(p);
    }
    c.output().expect("run webgguf")
}

fn ok_json(o: &Output) -> Value {
    assert!(o.status.success(), "webgguf failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn quantize_then_eval_against_the_source() {
    let dir = TempDir(std::env::temp_dir().join(format!("webgguf-qe-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let q8 = dir.0.join("q8.gguf");
    let text = dir.0.join("text.txt");
    std::fs::write(&text, "The GNU General Public License is a free, copyleft license for software and other kinds of works. ".repeat(8)).unwrap();
    let r = ok_json(&webgguf(&["quantize", "--type", "Q8_0", "--json"], &[("", &model()), ("", &q8)]));
    assert_eq!(r["ftype"], "Q8_0");
    assert!(r["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("requantizing")));
    let bpw = r["bits_per_weight"].as_f64().unwrap();
    assert!((8.4..8.7).contains(&bpw), "{bpw}");

    // The Q8_0 file generates.
    let g = ok_json(&webgguf(
        &["generate", "--prompt", "The capital of France is", "--max-tokens", "4", "--temperature", "0", "--device", "cpu", "--json"],
        &[("--model", &q8)],
    ));
    assert_eq!(g["ids"].as_array().unwrap().len(), 4);

    let reference = dir.0.join("ref.bin");
    let common = ["eval", "--device", "cpu", "--tokens", "96", "--window", "48", "--decode-tokens", "4", "--json"];
    let src = ok_json(&webgguf(&common, &[("--model", &model()), ("--file", &text), ("--write-reference", &reference)]));
    assert!(src["kl_mean"].is_null());
    // Written under a temporary name and renamed when complete.
    assert!(reference.exists() && !dir.0.join("ref.bin.partial").exists());
    let nowhere = dir.0.join("missing-dir").join("ref.bin");
    let bad = webgguf(&common, &[("--model", &model()), ("--file", &text), ("--write-reference", &nowhere)]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ref.bin.partial"), "{}", String::from_utf8_lossy(&bad.stderr));
    let self_cmp = ok_json(&webgguf(&common, &[("--model", &model()), ("--file", &text), ("--reference", &reference)]));
    assert_eq!(self_cmp["top1_agreement"].as_f64(), Some(1.0));
    assert_eq!(self_cmp["top1_agreement_confident"].as_f64(), Some(1.0));
    let confident = self_cmp["confident_positions"].as_u64().unwrap();
    assert!((1..=94).contains(&confident), "{confident} positions with a reference margin >= 0.1");
    assert!(self_cmp["kl_mean"].as_f64().unwrap() < 1e-4, "{}", self_cmp["kl_mean"]);
    assert_eq!(self_cmp["ppl"], src["ppl"], "the same model, the same perplexity");
    assert_eq!(self_cmp["predictions"].as_u64(), Some(94), "96 tokens in windows of 48 with BOS: 47 + 47");
    let q = ok_json(&webgguf(&common, &[("--model", &q8), ("--file", &text), ("--reference", &reference)]));
    let kl = q["kl_mean"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 0.1, "Q8_0 of a Q4_1 model stays close: KL {kl}");
    assert!(q["top1_agreement"].as_f64().unwrap() > 0.8, "{}", q["top1_agreement"]);
    assert!(q["top1_agreement_confident"].as_f64().unwrap() > 0.8, "{}", q["top1_agreement_confident"]);
    assert_eq!(q["confident_positions"].as_u64(), Some(confident), "confidence is the reference's");
    assert!(q["decode_tok_s"].as_f64().unwrap() > 0.0 && q["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert!(q["kv_bytes_4k"]["q4"].as_u64().unwrap() < q["kv_bytes_4k"]["f16"].as_u64().unwrap());

    // A reference for another token count is refused, as is an unknown file type.
    let mut other = common.to_vec();
    other[4] = "64";
    let bad = webgguf(&other, &[("--model", &q8), ("--file", &text), ("--reference", &reference)]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("predictions"), "{}", String::from_utf8_lossy(&bad.stderr));
    let bad = webgguf(&["quantize", "--type", "Q4_K"], &[("", &model()), ("", &dir.0.join("x.gguf"))]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Q4_K_M"));
    assert!(!dir.0.join("x.gguf").exists());
}
