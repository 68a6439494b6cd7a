//! `webgguf::quantize` end to end on random-weight llama models written as F32 GGUF: every
//! file type, each output tensor's bytes rebuilt independently (ggml's reference quantizer on
//! the source rows), the file read back by our reader, by gguf-py (the Python `gguf` package,
//! as llama.cpp's Python tooling reads files; its dequantized values must equal ours) and run
//! by the CPU engine; and the typed errors.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use webgguf::engine::{Session, SessionOptions};
use webgguf::gguf::writer::GgufBuilder;
use webgguf::gguf::{self, Array, GgufHeader, Limits, Value};
use webgguf::kv_cache::KvType;
use webgguf::model::CpuBackend;
use webgguf::quant::{dequantize_row, quantize_row, GgmlType};
use webgguf::quantize::{quantize_file, FileType, MixOptions, QuantizeError, QuantizeOptions};
use webgguf_tests::{rng, TempDir};

/// A llama with random F32 weights: `d` wide, `ff` hidden, 4 heads over 2 KV heads, 2 layers,
/// 300 tokens; `tied`: no output.weight (the embedding is the output). Returns the file and
/// each tensor's values by name.
fn random_llama(d: u64, ff: u64, tied: bool, seed: u64) -> (Vec<u8>, Vec<(String, Vec<f32>)>) {
    let n_vocab = 300u64;
    let kv = d / 2;
    let mut b = GgufBuilder::new();
    let tokens: Vec<String> = (0..n_vocab).map(|i| format!("t{i}")).collect();
    b.kv("general.architecture", Value::String("llama".into()))
        .kv("general.name", Value::String("random llama".into()))
        .kv("general.file_type", Value::U32(0))
        .kv("llama.context_length", Value::U32(128))
        .kv("llama.embedding_length", Value::U32(d as u32))
        .kv("llama.block_count", Value::U32(2))
        .kv("llama.feed_forward_length", Value::U32(ff as u32))
        .kv("llama.attention.head_count", Value::U32(4))
        .kv("llama.attention.head_count_kv", Value::U32(2))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    let mut shapes: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![d, n_vocab])];
    for i in 0..2 {
        for (n, s) in [
            ("attn_norm.weight", vec![d]),
            ("attn_q.weight", vec![d, d]),
            ("attn_k.weight", vec![d, kv]),
            ("attn_v.weight", vec![d, kv]),
            ("attn_output.weight", vec![d, d]),
            ("ffn_norm.weight", vec![d]),
            ("ffn_gate.weight", vec![d, ff]),
            ("ffn_up.weight", vec![d, ff]),
            ("ffn_down.weight", vec![ff, d]),
        ] {
            shapes.push((format!("blk.{i}.{n}"), s));
        }
    }
    shapes.push(("output_norm.weight".into(), vec![d]));
    if !tied {
        shapes.push(("output.weight".into(), vec![d, n_vocab]));
    }
    let mut r = rng(seed);
    let mut values = Vec::new();
    for (name, shape) in &shapes {
        b.tensor(name, shape, GgmlType::F32);
        let n: u64 = shape.iter().product();
        let v: Vec<f32> = if name.contains("norm") { (0..n).map(|_| 1.0 + 0.1 * r()).collect() } else { (0..n).map(|_| 0.08 * r()).collect() };
        values.push((name.clone(), v));
    }
    let bytes: Vec<Vec<u8>> = values.iter().map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(|v| v.as_slice()).collect();
    (b.to_bytes(&refs), values)
}

fn header(p: &Path) -> GgufHeader {
    gguf::read_header_from_path(p, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn opts(ftype: FileType) -> QuantizeOptions {
    QuantizeOptions { ftype, mix: MixOptions::default(), threads: 2 }
}

/// Every output tensor's bytes equal ggml's reference quantization of the source rows (or the
/// source bytes when the type is unchanged); returns the number of tensors checked.
fn check_bytes(out: &Path, source: &[(String, Vec<f32>)]) -> usize {
    let h = header(out);
    let file = fs::read(out).unwrap();
    for t in &h.tensors {
        let (_, vals) = source.iter().find(|(n, _)| *n == t.name).unwrap_or_else(|| panic!("{} not in the source", t.name));
        let start = (h.data_offset + t.offset) as usize;
        let got = &file[start..start + t.n_bytes as usize];
        let n = t.row_len() as usize;
        let rb = t.ty.row_bytes(n as u64).unwrap() as usize;
        let mut want = vec![0u8; rb * (vals.len() / n)];
        for (x, y) in vals.chunks_exact(n).zip(want.chunks_exact_mut(rb)) {
            quantize_row(t.ty, x, y).unwrap();
        }
        assert!(got == want.as_slice(), "{}: {} bytes differ from the reference quantization ({})", out.display(), t.name, t.ty);
    }
    h.tensors.len()
}

/// Runs gguf-py over `files`: per tensor, its type name, shape and dequantized values.
fn gguf_py(files: &[PathBuf]) -> serde_json::Value {
    let script = r#"
import json, sys
import numpy as np
import gguf
out = {}
for path in sys.argv[1:]:
    r = gguf.GGUFReader(path)
    ts = {}
    for t in r.tensors:
        v = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        # A spread sample and whole-tensor sums keep the JSON small.
        idx = np.linspace(0, v.size - 1, min(v.size, 1024)).astype(np.int64)
        ts[t.name] = {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape], "n": int(v.size),
                      "idx": idx.tolist(), "sample": v[idx].tolist(),
                      "sum": float(v.astype(np.float64).sum()), "abs_sum": float(np.abs(v.astype(np.float64)).sum())}
    ft = r.fields["general.file_type"]
    out[path] = {"file_type": int(ft.parts[ft.data[0]][0]), "tensors": ts}
json.dump(out, sys.stdout)
"#;
    let o = Command::new("python3").arg("-c").arg(script).args(files).output().expect("python3 (with the `gguf` package: pip install gguf, as .ci/run does)");
    assert!(o.status.success(), "gguf-py failed (pip install gguf, as .ci/run does):\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("gguf-py output")
}

/// Our reader's dequantized values equal gguf-py's, type names and shapes agree.
fn check_gguf_py(path: &Path, ftype: FileType, py: &serde_json::Value) {
    let p = &py[path.display().to_string()];
    assert_eq!(p["file_type"].as_u64(), Some(u64::from(ftype.id())), "{}", path.display());
    let h = header(path);
    let file = fs::read(path).unwrap();
    for t in &h.tensors {
        let pt = &p["tensors"][&t.name];
        assert_eq!(pt["type"].as_str(), Some(t.ty.name()), "{}: {}", path.display(), t.name);
        let shape: Vec<u64> = pt["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        assert_eq!(shape, t.shape[..shape.len()], "{}", t.name);
        let start = (h.data_offset + t.offset) as usize;
        let mut ours = vec![0f32; t.n_elements as usize];
        dequantize_row(t.ty, &file[start..start + t.n_bytes as usize], &mut ours).unwrap();
        assert_eq!(pt["n"].as_u64(), Some(t.n_elements), "{}", t.name);
        let f = |v: &serde_json::Value| v.as_f64().unwrap();
        for (i, b) in pt["idx"].as_array().unwrap().iter().zip(pt["sample"].as_array().unwrap()) {
            let (a, b) = (f64::from(ours[i.as_u64().unwrap() as usize]), f(b));
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{} {} value {i}: ours {a}, gguf-py {b}", path.display(), t.name);
        }
        let sum: f64 = ours.iter().map(|&x| f64::from(x)).sum();
        let abs_sum: f64 = ours.iter().map(|&x| f64::from(x).abs()).sum();
        assert!((sum - f(&pt["sum"])).abs() <= 1e-6 * abs_sum.max(1.0), "{} {}: sum {sum} vs gguf-py {}", path.display(), t.name, pt["sum"]);
        assert!((abs_sum - f(&pt["abs_sum"])).abs() <= 1e-6 * abs_sum.max(1.0), "{} {}: abs sum", path.display(), t.name);
    }
}

/// The CPU engine loads the file and computes finite logits.
fn runs(path: &Path) {
    let mut backend = CpuBackend::new();
    let (_, model) = webgguf::loader::load_files(&[path.to_path_buf()], &mut backend).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut s = Session::new(backend, model, SessionOptions { kv: KvType::F32, n_ctx: 32, ..Default::default() }).unwrap();
    let logits = s.logits_all(&[1, 2, 3, 4]).unwrap();
    assert_eq!(logits.len(), 4 * 300);
    assert!(logits.iter().all(|x| x.is_finite()), "{}: non-finite logits", path.display());
}

#[test]
fn every_file_type_writes_reference_bytes_that_gguf_py_and_the_engine_read() {
    let dir = TempDir::new("quantize-all");
    // 256-wide with an output matrix (the K-quant rules apply as written) and 160-wide with a
    // tied embedding (rows of 160: K-quants fall back to 32-block types, F16 where even that fails).
    let models = [("d256", random_llama(256, 512, false, 1)), ("d160", random_llama(160, 256, true, 2))];
    let mut outputs = Vec::new();
    for (tag, (bytes, values)) in &models {
        let src = dir.0.join(format!("{tag}.f32.gguf"));
        fs::write(&src, bytes).unwrap();
        for ftype in FileType::all() {
            let out = dir.0.join(format!("{tag}.{ftype}.gguf"));
            let mut seen = 0;
            let report = quantize_file(&src, &out, &opts(ftype), &mut |_| seen += 1).unwrap_or_else(|e| panic!("{tag} {ftype}: {e}"));
            assert_eq!(seen, report.tensors.len());
            assert_eq!(report.file_bytes, fs::metadata(&out).unwrap().len());
            assert!(!dir.0.join(format!("{tag}.{ftype}.gguf.partial")).exists());
            assert_eq!(check_bytes(&out, values), values.len(), "{tag} {ftype}");
            let h = header(&out);
            assert_eq!(h.metadata.get_u32("general.file_type").unwrap(), Some(ftype.id()));
            assert_eq!(h.metadata.get_u32("general.quantization_version").unwrap(), Some(2));
            // Norms stay F32; quantizable tensors never stay F32 unless asked.
            for t in &h.tensors {
                if t.name.contains("norm") {
                    assert_eq!(t.ty, GgmlType::F32, "{tag} {ftype} {}", t.name);
                } else if ftype != FileType::F32 {
                    assert_ne!(t.ty, GgmlType::F32, "{tag} {ftype} {}", t.name);
                }
            }
            runs(&out);
            outputs.push((out, ftype, report));
        }
    }
    let py = gguf_py(&outputs.iter().map(|(p, _, _)| p.clone()).collect::<Vec<_>>());
    for (p, ftype, _) in &outputs {
        check_gguf_py(p, *ftype, &py);
    }
    // Sizes shrink with the file type (within one model), and the mixes are what llama.cpp gives.
    let size = |tag: &str, f: FileType| outputs.iter().find(|(p, ft, _)| *ft == f && p.to_string_lossy().contains(tag)).unwrap().2.bytes_out;
    let ladder = [FileType::F32, FileType::F16, FileType::Q8_0, FileType::Q6_K, FileType::Q5_K_M, FileType::Q4_K_M, FileType::Q3_K_M, FileType::Q2_K];
    for w in ladder.windows(2) {
        assert!(size("d256", w[1]) < size("d256", w[0]), "{} !< {}", w[1], w[0]);
    }
    let ty = |tag: &str, f: FileType, name: &str| -> GgmlType {
        let (p, _, _) = outputs.iter().find(|(p, ft, _)| *ft == f && p.to_string_lossy().contains(tag)).unwrap();
        header(p).tensors.iter().find(|t| t.name == name).unwrap().ty
    };
    assert_eq!(ty("d256", FileType::Q4_K_M, "output.weight"), GgmlType::Q6_K);
    // Two layers: use_more_bits picks the last (1 >= 7 * 2 / 8), not the first.
    assert_eq!(ty("d256", FileType::Q4_K_M, "blk.0.attn_v.weight"), GgmlType::Q4_K);
    assert_eq!(ty("d256", FileType::Q4_K_M, "blk.1.attn_v.weight"), GgmlType::Q6_K);
    assert_eq!(ty("d256", FileType::Q4_K_M, "blk.1.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty("d256", FileType::Q4_K_S, "blk.0.attn_v.weight"), GgmlType::Q5_K);
    assert_eq!(ty("d256", FileType::Q4_K_M, "blk.0.attn_q.weight"), GgmlType::Q4_K);
    assert_eq!(ty("d160", FileType::Q4_K_M, "blk.0.attn_q.weight"), GgmlType::Q5_0, "160 % 256 != 0: Q4_K falls back to Q5_0");
    assert_eq!(ty("d160", FileType::Q4_K_M, "token_embd.weight"), GgmlType::Q8_0, "tied embedding with rows off 256");
    assert_eq!(ty("d160", FileType::Q2_K, "blk.1.ffn_gate.weight"), GgmlType::Q4_0);
}

#[test]
fn options_keep_embedding_and_output_in_higher_precision() {
    let dir = TempDir::new("quantize-opts");
    let (bytes, values) = random_llama(256, 512, false, 3);
    let src = dir.0.join("m.gguf");
    fs::write(&src, bytes).unwrap();
    let out = dir.0.join("m.q4km.gguf");
    let o = QuantizeOptions {
        ftype: FileType::Q4_K_M,
        mix: MixOptions { token_embedding_type: Some(GgmlType::F16), output_tensor_type: Some(GgmlType::Q8_0), pure: false },
        threads: 1,
    };
    quantize_file(&src, &out, &o, &mut |_| {}).unwrap();
    check_bytes(&out, &values);
    let h = header(&out);
    let ty = |n: &str| h.tensors.iter().find(|t| t.name == n).unwrap().ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::F16);
    assert_eq!(ty("output.weight"), GgmlType::Q8_0);
    // Threads do not change the bytes.
    let out4 = dir.0.join("m.q4km.t4.gguf");
    quantize_file(&src, &out4, &QuantizeOptions { threads: 4, ..o }, &mut |_| {}).unwrap();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&out4).unwrap());
}

#[test]
fn quantized_input_is_dequantized_first_with_a_warning() {
    let dir = TempDir::new("quantize-requant");
    let (bytes, values) = random_llama(256, 512, false, 4);
    let src = dir.0.join("m.gguf");
    fs::write(&src, bytes).unwrap();
    let q8 = dir.0.join("m.q8.gguf");
    let r = quantize_file(&src, &q8, &opts(FileType::Q8_0), &mut |_| {}).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let q4 = dir.0.join("m.q4.gguf");
    let r = quantize_file(&q8, &q4, &opts(FileType::Q4_0), &mut |_| {}).unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("requantizing")), "{:?}", r.warnings);
    let f16 = dir.0.join("m.f16.gguf");
    let r = quantize_file(&q8, &f16, &opts(FileType::F16), &mut |_| {}).unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("no more precise")), "{:?}", r.warnings);
    // Q8_0 → Q4_0 is Q4_0 of the Q8_0-dequantized values.
    let h8 = header(&q8);
    let f8 = fs::read(&q8).unwrap();
    let deq: Vec<(String, Vec<f32>)> = h8
        .tensors
        .iter()
        .map(|t| {
            let s = (h8.data_offset + t.offset) as usize;
            let mut v = vec![0f32; t.n_elements as usize];
            dequantize_row(t.ty, &f8[s..s + t.n_bytes as usize], &mut v).unwrap();
            (t.name.clone(), v)
        })
        .collect();
    assert_eq!(check_bytes(&q4, &deq), values.len());
    runs(&q4);
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_no_output() {
    let dir = TempDir::new("quantize-errors");
    let (bytes, _) = random_llama(256, 512, false, 5);
    let src = dir.0.join("m.gguf");
    fs::write(&src, &bytes).unwrap();
    let out = dir.0.join("out.gguf");
    let gone = |what: &str| {
        assert!(!out.exists(), "{what}: output left behind");
        assert!(!dir.0.join("out.gguf.partial").exists(), "{what}: partial file left behind");
    };

    let trunc = dir.0.join("trunc.gguf");
    fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let e = quantize_file(&trunc, &out, &opts(FileType::Q8_0), &mut |_| {}).unwrap_err();
    assert!(matches!(e, QuantizeError::Malformed { .. }), "{e}");
    gone("truncated");

    let e = quantize_file(&dir.0.join("missing.gguf"), &out, &opts(FileType::Q8_0), &mut |_| {}).unwrap_err();
    assert!(matches!(e, QuantizeError::Input { .. }), "{e}");
    gone("missing");

    let e = quantize_file(&src, &src, &opts(FileType::Q8_0), &mut |_| {}).unwrap_err();
    assert!(matches!(e, QuantizeError::SameFile(_)), "{e}");
    assert_eq!(fs::read(&src).unwrap(), bytes, "the input is untouched");

    // A NaN in the last tensor: found after most of the file is written; nothing remains.
    let mut nan = bytes.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan_src = dir.0.join("nan.gguf");
    fs::write(&nan_src, &nan).unwrap();
    let e = quantize_file(&nan_src, &out, &opts(FileType::Q4_K_M), &mut |_| {}).unwrap_err();
    assert!(matches!(&e, QuantizeError::NonFinite { tensor, .. } if tensor == "output.weight"), "{e}");
    gone("NaN");

    // Shard 1 of 2 of a split model.
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(1))
        .kv("split.no", Value::U16(0))
        .kv("split.count", Value::U16(2))
        .kv("split.tensors.count", Value::I32(2))
        .tensor("a.weight", &[32, 2], GgmlType::F32);
    let split = dir.0.join("split.gguf");
    fs::write(&split, b.to_bytes(&[&[0u8; 256]])).unwrap();
    let e = quantize_file(&split, &out, &opts(FileType::Q8_0), &mut |_| {}).unwrap_err();
    assert!(matches!(e, QuantizeError::SplitInput { count: 2, .. }), "{e}");
    gone("split");

    // No block_count: the rules cannot place layers.
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", Value::String("llama".into())).tensor("a.weight", &[32, 2], GgmlType::F32);
    let nometa = dir.0.join("nometa.gguf");
    fs::write(&nometa, b.to_bytes(&[&[0u8; 256]])).unwrap();
    let e = quantize_file(&nometa, &out, &opts(FileType::Q8_0), &mut |_| {}).unwrap_err();
    assert!(matches!(e, QuantizeError::Metadata { .. }), "{e}");
    gone("metadata");
}
