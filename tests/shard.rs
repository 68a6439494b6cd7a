//! `webgguf shard` (`webgguf::gguf::write_shards`): the shards parse as one model equal to the
//! input (metadata, tensor infos and bytes), follow gguf-split's layout and split rule, and the
//! manifest's sizes and sha256 match the files.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use webgguf::gguf::shard_writer::{self, plan_shards, ShardError};
use webgguf::gguf::writer::GgufBuilder;
use webgguf::gguf::{self, GgufHeader, Limits, Value, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use webgguf::loader::manifest::{hex, Manifest};
use webgguf::GgmlType;
use webgguf_tests::{model_path, TempDir};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn header(p: &Path) -> GgufHeader {
    gguf::read_header_from_path(p, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

fn read_at(f: &mut File, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut v = vec![0u8; (range.end - range.start) as usize];
    f.seek(SeekFrom::Start(range.start)).unwrap();
    f.read_exact(&mut v).unwrap();
    v
}

fn pad(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// ggml_n_dims: gguf-split writes shapes without trailing 1s.
fn trimmed(shape: &[u64]) -> Vec<u64> {
    let n = shape.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1).min(shape.len());
    shape[..n].to_vec()
}

/// Everything the shards in `dir` must satisfy against `input` split at `max`; returns the
/// number of tensors in each shard.
fn check_split(input: &Path, dir: &Path, m: &Manifest, max: u64) -> Vec<usize> {
    let h = header(input);
    let stem = input.file_stem().unwrap().to_str().unwrap();
    let count = m.shards.len();

    // manifest.json on disk is the returned manifest; nothing else (no .partial) was left.
    let on_disk = Manifest::parse(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
    let mut listed: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    let mut expected: Vec<String> = (1..=count).map(|k| format!("{stem}-{k:05}-of-{count:05}.gguf")).collect();
    expected.push("manifest.json".into());
    expected.sort();
    assert_eq!(listed, expected);

    // Sizes and hashes, model summary.
    let paths: Vec<PathBuf> = m.shards.iter().map(|s| dir.join(&s.file)).collect();
    for (k, (s, p)) in m.shards.iter().zip(&paths).enumerate() {
        assert_eq!(s.file, format!("{stem}-{:05}-of-{count:05}.gguf", k + 1));
        assert_eq!(s.bytes, fs::metadata(p).unwrap().len(), "{}", s.file);
        assert_eq!(s.sha256.as_deref(), Some(sha256_file(p).as_str()), "{}", s.file);
    }
    assert_eq!(m.model.bytes, m.shards.iter().map(|s| s.bytes).sum::<u64>());
    assert_eq!(m.tensors, h.tensors.len() as u64);
    assert_eq!(m.model.architecture.as_deref(), h.metadata.get_str("general.architecture").unwrap());
    assert_eq!(m.model.name.as_deref(), h.metadata.get_str("general.name").unwrap());

    // One model, given in any order.
    let mut reversed = paths.clone();
    reversed.reverse();
    let model = webgguf::loader::read_headers(&reversed).unwrap();
    assert_eq!(model.shards.len(), count);

    // Metadata: shard 0 = the input's (less split keys), in order, then the split keys as
    // gguf-split leaves them (split.no, split.tensors.count, split.count); later shards only those.
    let is_split = |k: &str| k.starts_with("split.");
    let input_md: Vec<(&str, &Value)> = h.metadata.iter().filter(|(k, _)| !is_split(k)).collect();
    for (no, s) in model.shards.iter().enumerate() {
        let md: Vec<(&str, &Value)> = s.metadata.iter().collect();
        let (model_md, split_md) = md.split_at(md.len() - 3);
        if no == 0 {
            assert_eq!(model_md, &input_md[..]);
        } else {
            assert!(model_md.is_empty(), "shard {no} carries model metadata");
        }
        let want =
            [(KEY_SPLIT_NO, Value::U16(no as u16)), (KEY_SPLIT_TENSORS_COUNT, Value::I32(h.tensors.len() as i32)), (KEY_SPLIT_COUNT, Value::U16(count as u16))];
        let want: Vec<(&str, &Value)> = want.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(split_md, &want[..], "shard {no}");
        // Shard 0 states the input's alignment; later shards use the default.
        assert_eq!(s.alignment, if no == 0 { h.alignment } else { 32 });
    }

    // Tensors: same order, infos and bytes; each shard's data is packed and padded.
    let mut files: Vec<File> = paths.iter().map(|p| File::open(p).unwrap()).collect();
    let mut src = File::open(input).unwrap();
    let out: Vec<_> = model.tensors().collect();
    assert_eq!(out.len(), h.tensors.len());
    for ((si, t), want) in out.iter().zip(&h.tensors) {
        assert_eq!((&t.name, t.ty, &t.shape, t.n_bytes), (&want.name, want.ty, &trimmed(&want.shape), want.n_bytes));
        let got = read_at(&mut files[*si], model.shards[*si].tensor_range(t));
        assert!(got == read_at(&mut src, h.tensor_range(want)), "bytes of {}", t.name);
    }
    for (s, m) in model.shards.iter().zip(&m.shards) {
        let data: u64 = s.tensors.iter().map(|t| pad(t.n_bytes, s.alignment)).sum();
        assert_eq!(s.data_offset + data, m.bytes, "{}", m.file);
        assert_eq!(s.data_offset % s.alignment, 0);
    }

    // The split rule, stated independently of plan_shards: tensor data padded to 32 fits in
    // `max` unless a shard holds a single tensor, and each shard's first tensor did not fit
    // after the previous shard's.
    let per_shard: Vec<usize> = model.shards.iter().map(|s| s.tensors.len()).collect();
    let data32 = |s: &GgufHeader| s.tensors.iter().map(|t| pad(t.n_bytes, 32)).sum::<u64>();
    for (no, s) in model.shards.iter().enumerate() {
        assert!(data32(s) <= max || s.tensors.len() == 1, "shard {no} over the limit");
        if let Some(next) = model.shards.get(no + 1) {
            assert!(data32(s) + pad(next.tensors[0].n_bytes, 32) > max, "shard {} could have held more", no);
        }
    }
    let sizes: Vec<u64> = h.tensors.iter().map(|t| t.n_bytes).collect();
    assert_eq!(per_shard, plan_shards(&sizes, max).iter().map(|r| r.len()).collect::<Vec<_>>());
    per_shard
}

#[test]
fn real_model_in_40m_shards() {
    let input = model_path(SMOL);
    let dir = TempDir::new("shard-smol");
    let max = shard_writer::parse_max_size("40M").unwrap();
    let mut seen = Vec::new();
    let m = shard_writer::write_shards_with_progress(&input, max, &dir.0, &mut |w| seen.push((w.no, w.count, w.tensors, w.shard.clone()))).unwrap();
    assert!(m.shards.len() >= 3, "{} shards", m.shards.len());
    let per_shard = check_split(&input, &dir.0, &m, max);
    assert_eq!(seen.iter().map(|s| s.2).collect::<Vec<_>>(), per_shard);
    assert_eq!(seen.iter().map(|s| s.3.clone()).collect::<Vec<_>>(), m.shards);
    assert!(seen.iter().enumerate().all(|(i, s)| s.0 == i && s.1 == m.shards.len()));
    assert_eq!(m.model.architecture.as_deref(), Some("llama"));
    assert_eq!(m.model.file_type.as_deref(), Some("Q4_1"));
    // The model's shapes need no trimming: they equal the input's exactly.
    assert!(header(&input).tensors.iter().all(|t| trimmed(&t.shape) == t.shape));
}

/// Tensors: 256 B, 8 KiB (over any small limit), 102 B Q8_0, 16 B with a trailing 1, 40 B.
fn synthetic(alignment: Option<u32>) -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", Value::String("llama".into()))
        .kv("general.name", Value::String("tiny".into()))
        .kv("general.file_type", Value::U32(7))
        .kv("tokenizer.ggml.tokens", Value::Array(gguf::Array::String(vec!["a".into(), "b".into()])));
    if let Some(a) = alignment {
        b.kv("general.alignment", Value::U32(a));
    }
    b.tensor("a", &[64], GgmlType::F32)
        .tensor("big", &[1024, 2], GgmlType::F32)
        .tensor("c", &[32, 3], GgmlType::Q8_0)
        .tensor("d", &[8, 1], GgmlType::F16)
        .tensor("e", &[10], GgmlType::F32);
    let data: Vec<Vec<u8>> =
        b.tensor_bytes().iter().enumerate().map(|(t, n)| (0..n.unwrap()).map(|i| ((i * 31 + t as u64 * 7) % 251) as u8).collect()).collect();
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    b.to_bytes(&refs)
}

fn write_input(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn synthetic_split_rule_and_big_tensors() {
    let tmp = TempDir::new("shard-synthetic");
    let input = write_input(&tmp.0, "tiny.gguf", &synthetic(None));
    // Padded to 32: a 256 | big 8192 | c 128 + d 32 + e 64 = 224 ≤ 512.
    let out = tmp.0.join("out512");
    let m = gguf::write_shards(&input, 512, &out).unwrap();
    assert_eq!(check_split(&input, &out, &m, 512), vec![1, 1, 3]);
    assert_eq!(m.model.file_type.as_deref(), Some("Q8_0"));
    // The trailing 1 of d is dropped, as ggml_n_dims does.
    let model =
        webgguf::loader::read_headers(&[out.join("tiny-00003-of-00003.gguf"), out.join("tiny-00001-of-00003.gguf"), out.join("tiny-00002-of-00003.gguf")])
            .unwrap();
    assert_eq!(model.tensor("d").unwrap().1.shape, vec![8]);

    // The first tensor over the limit gets its own shard too (gguf-split would stop with
    // "one of splits have 0 tensors").
    let out = tmp.0.join("out100");
    let m = gguf::write_shards(&input, 100, &out).unwrap();
    assert_eq!(check_split(&input, &out, &m, 100), vec![1, 1, 1, 2]);

    // A limit above the whole file: one shard, still with split keys (gguf-split does the same).
    let out = tmp.0.join("one");
    let m = gguf::write_shards(&input, 1 << 30, &out).unwrap();
    assert_eq!(check_split(&input, &out, &m, 1 << 30), vec![5]);
    let one = out.join("tiny-00001-of-00001.gguf");
    let s = header(&one).split().unwrap().unwrap();
    assert_eq!((s.no, s.count, s.tensors_total), (0, 1, 5));

    // A 1-of-1 split is a whole model and may be split again; its split keys are replaced.
    let again = tmp.0.join("again");
    let m = gguf::write_shards(&one, 512, &again).unwrap();
    assert_eq!(m.shards.len(), 3);
    assert_eq!(m.shards[0].file, "tiny-00001-of-00001-00001-of-00003.gguf");
    check_split(&one, &again, &m, 512);
}

#[test]
fn synthetic_other_alignment() {
    let tmp = TempDir::new("shard-align");
    let input = write_input(&tmp.0, "tiny64.gguf", &synthetic(Some(64)));
    assert_eq!(header(&input).alignment, 64);
    let out = tmp.0.join("out");
    let m = gguf::write_shards(&input, 512, &out).unwrap();
    assert_eq!(check_split(&input, &out, &m, 512), vec![1, 1, 3]);
}

#[test]
fn errors_are_typed() {
    let tmp = TempDir::new("shard-errors");
    let input = write_input(&tmp.0, "tiny.gguf", &synthetic(None));
    let out = tmp.0.join("out");

    let e = gguf::write_shards(&tmp.0.join("missing.gguf"), 512, &out).unwrap_err();
    assert!(matches!(e, ShardError::Input { .. }), "{e}");
    assert!(e.to_string().contains("missing.gguf"), "{e}");

    let junk = write_input(&tmp.0, "junk.gguf", b"this is not a GGUF file at all");
    let e = gguf::write_shards(&junk, 512, &out).unwrap_err();
    assert!(matches!(e, ShardError::Malformed { .. }), "{e}");

    let e = gguf::write_shards(&input, 0, &out).unwrap_err();
    assert!(matches!(e, ShardError::ZeroMaxSize), "{e}");
    for bad in ["0", "0G", "", "12T", "1.5G", "-3M", "lots"] {
        assert!(shard_writer::parse_max_size(bad).is_err(), "{bad:?}");
    }
    assert_eq!(shard_writer::parse_max_size("512M").unwrap(), 512 << 20);
    assert_eq!(shard_writer::parse_max_size("3k").unwrap(), 3072);
    assert_eq!(shard_writer::parse_max_size("1G").unwrap(), 1 << 30);
    assert_eq!(shard_writer::parse_max_size("4096").unwrap(), 4096);

    // The output "directory" is a file.
    let file = write_input(&tmp.0, "a-file", b"x");
    let e = gguf::write_shards(&input, 512, &file).unwrap_err();
    assert!(matches!(e, ShardError::OutputDir { .. }), "{e}");

    // A shard of a larger split is refused.
    let m = gguf::write_shards(&input, 512, &out).unwrap();
    let e = gguf::write_shards(&out.join(&m.shards[1].file), 512, &tmp.0.join("out2")).unwrap_err();
    assert!(matches!(e, ShardError::SplitInput { no: 1, count: 3, .. }), "{e}");
    assert!(e.to_string().contains("split model"), "{e}");
    assert!(!tmp.0.join("out2").exists(), "nothing is written for a refused input");
}
