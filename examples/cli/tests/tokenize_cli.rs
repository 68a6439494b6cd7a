//! `webgguf tokenize` on the real models: ids as llama.cpp gives them (values from
//! tests/fixtures/oracle), BOS only where the file asks for it and never with `--no-bos`,
//! special-token text parsed only with `--special`.

use std::path::PathBuf;
use std::process::Command;

fn model(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name);
    assert!(p.is_file(), "model {} is missing: run pkg-scripts/fetch-models", p.display());
    p
}

fn tokenize(model_name: &str, text: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_webgguf"))
        .arg("tokenize")
        .arg("--model")
        .arg(model(model_name))
        .args(["--text", text])
        .args(extra)
        .output()
        .expect("run webgguf");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

#[test]
fn json_ids_with_and_without_special_parsing() {
    let chat = "<|im_start|>user\nHi<|im_end|>";
    assert_eq!(tokenize(SMOLLM, chat, &["--special", "--json"]), (0, r#"{"ids":[1,4093,198,26843,2]}"#.into()));
    assert_eq!(tokenize(SMOLLM, chat, &["--json"]), (0, r#"{"ids":[44,108,306,79,3738,108,46,4093,198,26843,44,108,306,79,486,108,46]}"#.into()));
}

#[test]
fn bos_follows_the_file_unless_no_bos() {
    // Gemma's file adds BOS, SmolLM2's does not.
    assert_eq!(tokenize(GEMMA, "Hello, world!", &["--json"]), (0, r#"{"ids":[2,9259,236764,1902,236888]}"#.into()));
    assert_eq!(tokenize(GEMMA, "Hello, world!", &["--json", "--no-bos"]), (0, r#"{"ids":[9259,236764,1902,236888]}"#.into()));
    assert_eq!(tokenize(SMOLLM, "Hello, world!", &["--json"]), (0, r#"{"ids":[19556,28,905,17]}"#.into()));
}

#[test]
fn text_output_lists_pieces() {
    let (code, out) = tokenize(GEMMA, "Hello, world!", &[]);
    assert_eq!(code, 0);
    assert_eq!(out, "2\t\"<bos>\"\n9259\t\"Hello\"\n236764\t\",\"\n1902\t\" world\"\n236888\t\"!\"");
}

#[test]
fn not_a_gguf_file_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_webgguf"))
        .args(["tokenize", "--model", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"), "--text", "x"])
        .output()
        .expect("run webgguf");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
