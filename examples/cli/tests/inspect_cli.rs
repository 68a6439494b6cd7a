//! `webgguf inspect --json` on both real models (counts by type as the foundation issue lists
//! them, every tensor with type and shape), and a malformed file (typed error, exit status 2).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn model(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name);
    assert!(p.is_file(), "model {} is missing: run pkg-scripts/fetch-models", p.display());
    p
}

fn inspect(path: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_webgguf")).arg("inspect").arg(path).args(extra).output().expect("run webgguf");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(name: &str) -> Value {
    let (code, out, err) = inspect(&model(name), &["--json", "--ctx", "2048", "--kv", "q8"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).expect("JSON")
}

#[test]
fn gemma3_tensors_counts_and_estimate() {
    let j = json("gemma-3-270m-q4_k_m.gguf");
    assert_eq!(j["counts"], serde_json::json!({"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}));
    let tensors = j["tensors"].as_array().expect("tensors");
    assert_eq!(tensors.len(), 236);
    let embd = tensors.iter().find(|t| t["name"] == "token_embd.weight").expect("token_embd");
    assert_eq!(embd["type"], "Q8_0");
    assert_eq!(embd["shape"], serde_json::json!([640, 262144]));
    assert_eq!(embd["bytes"], 178_257_920);
    let total: u64 = tensors.iter().map(|t| t["bytes"].as_u64().expect("bytes")).sum();
    assert_eq!(j["weight_bytes"].as_u64(), Some(total));
    assert_eq!(j["metadata"]["general.architecture"], "gemma3");
    assert_eq!(j["metadata"]["tokenizer.ggml.tokens"]["len"], 262144);
    // 18 layers × 2048 positions × (K + V) of 1 head × 256 dims, q8 = 34 bytes per 32 values,
    // plus the f16 copies of 4 sink and 64 recent positions (K + V, 2 bytes per value).
    assert_eq!(j["estimate"]["kv_cache_bytes"], 18 * 2048 * 2 * (256 / 32 * 34) + 18 * (4 + 64) * 2 * 256 * 2);
    assert_eq!(j["estimate"]["kv_type"], "q8");
}

#[test]
fn smollm2_counts() {
    let j = json("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(j["counts"], serde_json::json!({"F32": 61, "Q4_1": 210, "Q8_0": 1}));
    assert_eq!(j["tensors"].as_array().expect("tensors").len(), 272);
    let (code, out, _) = inspect(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Q4_1     210"), "human-readable counts");
}

#[test]
fn malformed_file_prints_typed_error_and_exits_2() {
    let bad = std::env::temp_dir().join(format!("webgguf-inspect-bad-{}.gguf", std::process::id()));
    // A valid header start claiming 2^63 tensors.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 63).to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    std::fs::write(&bad, &bytes).expect("write");
    let (code, _, err) = inspect(&bad, &["--json"]);
    std::fs::remove_file(&bad).ok();
    assert_eq!(code, Some(2));
    assert!(err.contains("tensor count 9223372036854775808 exceeds the limit"), "{err}");
}
