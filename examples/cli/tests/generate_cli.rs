//! `webgguf generate` on SmolLM2: the chat prompt of tests/fixtures/oracle (chat[0]) greedily,
//! stop strings, max tokens, and a malformed model file (exit status 2).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn model() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "model {} is missing: run pkg-scripts/fetch-models", p.display());
    p
}

fn generate(extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_webgguf"))
        .args(["generate", "--model"])
        .arg(model())
        .args(["--chat", "--prompt", "What is 2+2?", "--temperature", "0", "--kv", "f32", "--ctx", "256", "--json"])
        .args(extra)
        .output()
        .expect("run webgguf");
    assert!(out.status.success(), "generate failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id")).collect()
}

#[test]
fn chat_greedy_matches_llama_cpp() {
    let oracle: Value = serde_json::from_slice(
        &std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/oracle/SmolLM2-135M-Instruct.Q4_1.json")).expect("oracle"),
    )
    .expect("oracle JSON");
    let chat = &oracle["chat"][0];
    let g = generate(&["--max-tokens", "32"]);
    assert_eq!(ids(&g["prompt_ids"]), ids(&chat["prompt_ids"]), "chat template + tokenization");
    // The oracle's ids end with EOS (2), which generate stops on and does not report.
    let want = ids(&chat["greedy_ids"]);
    assert_eq!(ids(&g["ids"]), want[..want.len() - 1]);
    assert_eq!(g["text"], chat["greedy_text"]);
    assert_eq!(g["finish_reason"], "stop");
    assert!(g["stats"]["decode_tok_s"].as_f64().expect("stats") > 0.0);
}

#[test]
fn stop_string_is_cut_and_max_tokens_limits() {
    let g = generate(&["--max-tokens", "32", "--stop", " classic"]);
    assert_eq!(g["text"], "The answer to this");
    assert_eq!(g["finish_reason"], "stop");
    let g = generate(&["--max-tokens", "3"]);
    assert_eq!(ids(&g["ids"]).len(), 3);
    assert_eq!(g["text"], "The answer to");
    assert_eq!(g["finish_reason"], "length");
}

#[test]
fn malformed_model_exits_2() {
    let bad = std::env::temp_dir().join(format!("webgguf-bad-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_webgguf")).args(["generate", "--prompt", "x", "--model"]).arg(&bad).output().expect("run webgguf");
    std::fs::remove_file(&bad).ok();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed GGUF"));
}
