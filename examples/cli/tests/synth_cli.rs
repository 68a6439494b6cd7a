//! `webgguf synth`: a preset's shapes (real widths, fewer layers) written, inspected and run
//! by `generate` on the CPU and the GPU (lavapipe in CI); the tokenizer and chat template
//! copied from SmolLM2; sharding; the typed refusals.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("webgguf-synth-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn smollm2() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "model {} is missing: run pkg-scripts/fetch-models", p.display());
    p
}

#[test]
fn preset_with_a_copied_tokenizer_generates_on_cpu_and_gpu() {
    let dir = TempDir::new("gen");
    let out = dir.0.join("qwen3.gguf");
    let r = ok_json(&webgguf(&["synth", "--preset", "qwen3-0.6b", "--layers", "2", "--seed", "3", "--json"], &[("", &out), ("--tokenizer-from", &smollm2())]));
    // The preset's widths, SmolLM2's 49,152 tokens grown to the preset's 151,936.
    assert_eq!((r["arch"].as_str(), r["layers"].as_u64(), r["d_model"].as_u64(), r["head_dim"].as_u64()), (Some("qwen3"), Some(2), Some(1024), Some(128)));
    assert_eq!(r["vocab"], 151_936);
    let types: Vec<&str> = r["report"]["tensors"].as_array().unwrap().iter().map(|t| t["to"].as_str().unwrap()).collect();
    assert!(types.contains(&"Q4_K") && types.contains(&"Q6_K"), "{types:?}");

    let i = ok_json(&webgguf(&["inspect", "--json"], &[("", &out)]));
    let md = &i["metadata"];
    assert!(md.to_string().contains("im_start"), "the chat template was not copied");

    for device in ["cpu", "gpu"] {
        let g = ok_json(&webgguf(
            &["generate", "--chat", "--prompt", "Hello", "--max-tokens", "3", "--temperature", "0", "--device", device, "--ctx", "128", "--json"],
            &[("--model", &out)],
        ));
        assert_eq!(g["ids"].as_array().unwrap().len(), 3, "{device}: {g}");
    }
}

#[test]
fn split_output_loads_from_its_shards() {
    let dir = TempDir::new("split");
    let out = dir.0.join("gemma.gguf");
    ok_json(&webgguf(
        &["synth", "--preset", "gemma-3-1b", "--layers", "2", "--vocab", "4096", "--type", "Q8_0", "--split-max-size", "16M", "--json"],
        &[("", &out)],
    ));
    assert!(!out.exists(), "the single file stays after sharding");
    let mut shards: Vec<PathBuf> =
        std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "gguf")).collect();
    shards.sort();
    assert!(shards.len() >= 3, "{shards:?}");
    assert!(dir.0.join("manifest.json").is_file());
    let mut args: Vec<(&str, &Path)> = shards.iter().map(|p| ("--model", p.as_path())).collect();
    args.push(("", Path::new("--json")));
    let g = ok_json(&webgguf(&["generate", "--prompt", "Hi", "--max-tokens", "2", "--temperature", "0", "--device", "cpu", "--ctx", "64"], &args));
    assert_eq!(g["ids"].as_array().unwrap().len(), 2);
}

#[test]
fn refusals_are_typed() {
    let dir = TempDir::new("bad");
    let out = dir.0.join("x.gguf");
    let fails = |o: Output, code: i32, what: &str| {
        assert_eq!(o.status.code(), Some(code), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(what), "{err}");
    };
    fails(webgguf(&["synth", "--preset", "llama-99b"], &[("", &out)]), 1, "unknown preset");
    fails(webgguf(&["synth", "--arch", "llama", "--layers", "2"], &[("", &out)]), 1, "--arch needs --d-model");
    fails(webgguf(&["synth", "--preset", "qwen3-0.6b", "--kv-heads", "5"], &[("", &out)]), 1, "head_count_kv");
    fails(webgguf(&["synth", "--preset", "qwen3-0.6b", "--head-dim", "63"], &[("", &out)]), 1, "head_dim must be even");
    let junk = dir.0.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00junk").unwrap();
    fails(webgguf(&["synth", "--preset", "qwen3-0.6b"], &[("", &out), ("--tokenizer-from", &junk)]), 2, "--tokenizer-from");
    assert!(!out.exists() && !dir.0.join("x.gguf.partial").exists(), "a refused synth left a file");
    // --list prints every preset.
    let l = webgguf(&["synth", "--list"], &[]);
    let text = String::from_utf8_lossy(&l.stdout);
    for p in ["llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen3-0.6b", "qwen3-4b", "gemma-3-1b", "gemma-3-4b"] {
        assert!(text.contains(p), "{p} missing from --list");
    }
}
