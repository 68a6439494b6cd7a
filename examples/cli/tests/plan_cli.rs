//! `webgguf plan`: a header declaring Llama-3.1-8B's shapes (Q4_K, 4.5 GB of weights) in a
//! sparse file — planned onto a GPU with WebGPU's spec limits, onto a large CPU, refused for
//! wasm32's CPU with the typed error (exit status 2) — and the other early errors.

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;
use webgguf::gguf::writer::GgufBuilder;
use webgguf::gguf::Value;
use webgguf::GgmlType;

const MIB: u64 = 1 << 20;

/// Llama-3.1-8B's tensors and metadata; `arch` and `pre` vary for the error cases.
fn llama_8b(arch: &str, pre: &str) -> GgufBuilder {
    let (layers, d, kv, ffn, vocab) = (32u64, 4096u64, 1024u64, 14336u64, 128_256u64);
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", Value::String(arch.into()));
    for (k, v) in [
        ("block_count", layers),
        ("context_length", 131_072),
        ("embedding_length", d),
        ("feed_forward_length", ffn),
        ("attention.head_count", 32),
        ("attention.head_count_kv", 8),
        ("vocab_size", vocab),
    ] {
        b.kv(&format!("{arch}.{k}"), Value::U32(v as u32));
    }
    b.kv("tokenizer.ggml.model", Value::String("gpt2".into()));
    b.kv("tokenizer.ggml.pre", Value::String(pre.into()));
    let q = GgmlType::Q4_K;
    b.tensor("token_embd.weight", &[d, vocab], q);
    for i in 0..layers {
        b.tensor(&format!("blk.{i}.attn_norm.weight"), &[d], GgmlType::F32);
        b.tensor(&format!("blk.{i}.attn_q.weight"), &[d, d], q);
        b.tensor(&format!("blk.{i}.attn_k.weight"), &[d, kv], q);
        b.tensor(&format!("blk.{i}.attn_v.weight"), &[d, kv], q);
        b.tensor(&format!("blk.{i}.attn_output.weight"), &[d, d], q);
        b.tensor(&format!("blk.{i}.ffn_norm.weight"), &[d], GgmlType::F32);
        b.tensor(&format!("blk.{i}.ffn_gate.weight"), &[d, ffn], q);
        b.tensor(&format!("blk.{i}.ffn_up.weight"), &[d, ffn], q);
        b.tensor(&format!("blk.{i}.ffn_down.weight"), &[ffn, d], q);
    }
    b.tensor("output_norm.weight", &[d], GgmlType::F32);
    b.tensor("output.weight", &[d, vocab], q);
    b
}

/// The header, then a hole up to the file's full size (no data is written), and the weight bytes.
fn sparse_file(b: &GgufBuilder, tag: &str) -> (PathBuf, u64) {
    let (head, offsets) = b.header();
    let sizes = b.tensor_bytes();
    let size = head.len() as u64 + offsets.last().unwrap() + sizes.last().unwrap().unwrap();
    let path = std::env::temp_dir().join(format!("webgguf-plan-cli-{tag}-{}.gguf", std::process::id()));
    std::fs::write(&path, &head).expect("write header");
    std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(size)).expect("extend");
    (path, sizes.iter().map(|s| s.unwrap()).sum())
}

fn plan(path: &Path, extra: &[&str]) -> (Option<i32>, Json, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_webgguf")).arg("plan").arg(path).arg("--json").args(extra).output().expect("run webgguf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON ({e}): {stdout}"));
    (out.status.code(), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn llama_8b_plans() {
    let (path, weight_bytes) = sparse_file(&llama_8b("llama", "llama-bpe"), "8b");
    let spec = ["--max-binding", "134217728", "--max-buffer", "268435456"];
    let (gpu_code, gpu, gpu_err) = plan(&path, &[&spec[..], &["--wasm32"]].concat());
    let (cpu_code, cpu, cpu_err) = plan(&path, &["--device", "cpu", "--address-space", "68719476736"]);
    let (wasm_code, wasm, wasm_err) = plan(&path, &["--device", "cpu", "--wasm32"]);
    let (small_code, small, _) = plan(&path, &[&spec[..], &["--device", "gpu", "--kv", "f32", "--context", "131072"]].concat());
    std::fs::remove_file(&path).ok();

    assert_eq!(gpu_code, Some(0), "{gpu_err}");
    let p = &gpu["plan"];
    assert_eq!((p["device"].as_str(), p["kv"].as_str(), p["n_ctx"].as_u64()), (Some("gpu"), Some("f16"), Some(4096)));
    assert_eq!(p["weights"]["file_bytes"].as_u64(), Some(weight_bytes));
    assert_eq!(p["weights"]["estimated"].as_u64(), Some(0));
    // f16 K and V of 8 heads × 128 dims, 4096 positions: 16 MiB per layer, 32 layers.
    assert_eq!(p["kv_layer_bytes"].as_u64(), Some(16 * MIB));
    assert_eq!(p["kv_bytes"].as_u64(), Some(32 * 16 * MIB));
    assert_eq!(gpu["target"]["gpu"]["max_storage_buffer_binding_size"].as_u64(), Some(128 * MIB));
    assert!(p["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().starts_with("GPU:")), "{p}");

    assert_eq!(cpu_code, Some(0), "{cpu_err}");
    assert_eq!(cpu["plan"]["device"], "cpu");
    assert_eq!(cpu["plan"]["limit_bytes"].as_u64(), Some(64 << 30));

    // The typed error for wasm32's CPU: exit 2, the sizes named.
    assert_eq!(wasm_code, Some(2));
    assert_eq!(wasm["error"]["code"], "model_too_large");
    assert!(wasm_err.contains("wasm32 can address 4294967296"), "{wasm_err}");

    // 131,072 positions of f32 KV are 1 GiB per layer: over the binding, asked for explicitly.
    assert_eq!(small_code, Some(2));
    assert_eq!(small["error"]["code"], "model_too_large");
    assert!(small["error"]["message"].as_str().unwrap().contains("one layer of the f32 KV cache of 131072 positions is 1073741824 bytes"), "{small}");
}

#[test]
fn unsupported_architecture_and_pre_tokenizer_exit_2() {
    let (arch, _) = sparse_file(&llama_8b("gptneox", "llama-bpe"), "arch");
    let (pre, _) = sparse_file(&llama_8b("llama", "no-such-pre"), "pre");
    let (arch_code, arch_json, _) = plan(&arch, &["--device", "cpu"]);
    let (pre_code, pre_json, _) = plan(&pre, &["--device", "cpu"]);
    std::fs::remove_file(&arch).ok();
    std::fs::remove_file(&pre).ok();
    assert_eq!(arch_code, Some(2));
    assert_eq!(arch_json["error"]["code"], "model");
    assert!(arch_json["error"]["message"].as_str().unwrap().contains("unsupported architecture \"gptneox\""), "{arch_json}");
    assert_eq!(pre_code, Some(2));
    assert_eq!(pre_json["error"]["code"], "tokenizer");
    assert!(pre_json["error"]["message"].as_str().unwrap().contains("no-such-pre"), "{pre_json}");
}
