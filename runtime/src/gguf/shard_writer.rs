//! Splitting a single-file GGUF into llama.cpp split shards plus `manifest.json` (`webgguf shard`).
//!
//! The output equals llama.cpp's `gguf-split --split-max-size` (tools/gguf-split/gguf-split.cpp,
//! `split_strategy`), except where noted:
//! - names `{stem}-{no+1:05}-of-{count:05}.gguf` (`llama_split_path`);
//! - shard 0 carries every metadata entry of the input, later shards none; each then ends with
//!   `split.no` (u16), `split.tensors.count` (i32), `split.count` (u16), in that order (ggml's
//!   `gguf_set_val_*` removes and re-appends a key, and gguf-split sets `split.count` last);
//! - tensors in input order; `n_dims` drops trailing dimensions of 1 (`ggml_n_dims`); each
//!   tensor's data is padded with zeros to the alignment, the last one too;
//! - split rule (`should_split`): a running total of tensor data bytes, each padded to 32
//!   (GGUF_DEFAULT_ALIGNMENT), headers not counted; a tensor that would take it past
//!   `max_bytes` starts a new shard. So a shard may exceed `max_bytes` by its header, and a tensor
//!   larger than `max_bytes` gets a shard of its own. Difference: gguf-split fails ("one of
//!   splits have 0 tensors") when the *first* tensor is larger; here it also gets its own shard;
//! - alignment: gguf-split lays every shard out at 32 even when shard 0 copies a different
//!   `general.alignment` (inconsistent). Here shard 0 uses the input's alignment, which its
//!   metadata states, and later shards (no alignment key) 32: identical for the usual 32.
//!
//! Memory stays bounded: the header is parsed incrementally, tensor data is copied in
//! [`COPY_CHUNK`] pieces and hashed on the way. Each shard is written to `NAME.partial`, synced
//! and renamed, so an interrupted run never leaves a partial file under a final name.

use super::header::{GgufHeader, DEFAULT_ALIGNMENT};
use super::partial_file::{PartialFile, WriteError};
use super::split::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use super::value::Value;
use super::writer::{data_layout, encode_header, TensorEntry};
use super::{read_header_from_path, Limits, ReadHeaderError};
use crate::error::GgufError;
use crate::loader::manifest::{Manifest, ManifestError, ManifestModel, ManifestShard, MAX_SHARDS};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

/// Bytes copied per read/write while streaming tensor data.
pub const COPY_CHUNK: usize = 4 << 20;
/// File name of the manifest written next to the shards.
pub const MANIFEST_FILE: &str = "manifest.json";
/// gguf-split pads sizes to this when planning, whatever the file's alignment.
const PLAN_ALIGNMENT: u64 = 32;

/// Why sharding failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("max size {0:?}: expected a positive number of bytes, optionally with K, M or G (KiB, MiB, GiB), e.g. 512M")]
    BadMaxSize(String),
    #[error("max size must be greater than 0")]
    ZeroMaxSize,
    #[error("{path}: {source}")]
    Input { path: String, source: std::io::Error },
    #[error("{path}: malformed GGUF: {source}")]
    Malformed { path: String, source: GgufError },
    /// `no` is 0-based (the message counts from 1, as the file names do).
    #[error("{path} is shard {} of {count} of a split model; give a single-file model (llama.cpp's `gguf-split --merge` joins shards)", .no + 1)]
    SplitInput { path: String, no: u64, count: u64 },
    #[error("{path}: {tensors} tensors is more than split.tensors.count (i32) can hold")]
    TooManyTensors { path: String, tensors: usize },
    #[error("max size gives {count} shards (at most {MAX_SHARDS}); raise --max-size")]
    TooManyShards { count: usize },
    #[error("{path}: shard names from this file name would not be valid in a manifest: {source}")]
    BadName { path: String, source: ManifestError },
    #[error("output directory {path}: {source}")]
    OutputDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// One finished shard, reported as it is written.
#[derive(Clone, Copy, Debug)]
pub struct ShardWritten<'a> {
    /// 0-based.
    pub no: usize,
    pub count: usize,
    pub tensors: usize,
    pub shard: &'a ManifestShard,
}

/// Parses a size: plain bytes, or a number with K, M or G (powers of 1024; `KiB`/`MiB`/`GiB`
/// and lowercase accepted). gguf-split's own parser reads M and G as powers of 1000.
pub fn parse_max_size(s: &str) -> Result<u64, ShardError> {
    let bad = || ShardError::BadMaxSize(s.to_owned());
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(ShardError::ZeroMaxSize);
    }
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// gguf-split's plan: tensor index ranges of each shard (see the module notes for the rule).
/// Always at least one shard, empty only for a file without tensors.
pub fn plan_shards(tensor_bytes: &[u64], max_bytes: u64) -> Vec<Range<usize>> {
    let mut shards = Vec::new();
    let mut start = 0;
    let mut current = 0u64;
    for (i, &b) in tensor_bytes.iter().enumerate() {
        let padded = b.div_ceil(PLAN_ALIGNMENT).saturating_mul(PLAN_ALIGNMENT);
        let next = current.saturating_add(padded);
        if next > max_bytes && i > start {
            shards.push(start..i);
            start = i;
            current = padded;
        } else {
            current = next;
        }
    }
    shards.push(start..tensor_bytes.len());
    shards
}

/// Human name of a `general.file_type` value (llama.cpp's `llama_ftype`, as `llama-quantize`
/// names them); None for unknown values.
pub fn file_type_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// `{stem}-{no+1:05}-of-{count:05}.gguf` (llama.cpp's `llama_split_path`).
pub fn shard_file_name(stem: &str, no: usize, count: usize) -> String {
    format!("{stem}-{:05}-of-{count:05}.gguf", no + 1)
}

/// Splits the single-file model `input` into shards of at most `max_bytes` of tensor data each,
/// written into `out_dir` (created if missing) with `manifest.json`; returns the manifest.
pub fn write_shards(input: &Path, max_bytes: u64, out_dir: &Path) -> Result<Manifest, ShardError> {
    write_shards_with_progress(input, max_bytes, out_dir, &mut |_| {})
}

/// [`write_shards`], calling `progress` after each shard is complete under its final name.
pub fn write_shards_with_progress(input: &Path, max_bytes: u64, out_dir: &Path, progress: &mut dyn FnMut(ShardWritten<'_>)) -> Result<Manifest, ShardError> {
    if max_bytes == 0 {
        return Err(ShardError::ZeroMaxSize);
    }
    let in_path = input.display().to_string();
    let header = read_header_from_path(input, &Limits::default()).map_err(|e| match e {
        ReadHeaderError::Gguf(source) => ShardError::Malformed { path: in_path.clone(), source },
        ReadHeaderError::Io(source) => ShardError::Input { path: in_path.clone(), source },
    })?;
    let split = header.split().map_err(|source| ShardError::Malformed { path: in_path.clone(), source })?;
    // A 1-of-1 split is a whole model: its split keys are replaced below.
    if let Some(s) = split.filter(|s| s.count > 1) {
        return Err(ShardError::SplitInput { path: in_path, no: s.no, count: s.count });
    }
    let total_tensors = i32::try_from(header.tensors.len()).map_err(|_| ShardError::TooManyTensors { path: in_path.clone(), tensors: header.tensors.len() })?;

    let sizes: Vec<u64> = header.tensors.iter().map(|t| t.n_bytes).collect();
    let plan = plan_shards(&sizes, max_bytes);
    let count = plan.len();
    let count_u16 = u16::try_from(count).ok().filter(|_| count <= MAX_SHARDS).ok_or(ShardError::TooManyShards { count })?;

    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| ShardError::Input { path: in_path.clone(), source: std::io::ErrorKind::InvalidInput.into() })?;
    let names: Vec<String> = (0..count).map(|no| shard_file_name(&stem, no, count)).collect();
    // Refuse names the manifest could not carry before writing anything.
    let probe = Manifest {
        shards: names.iter().map(|f| ManifestShard { file: f.clone(), bytes: 1, sha256: None }).collect(),
        tensors: 0,
        model: ManifestModel::default(),
    };
    probe.validate().map_err(|source| ShardError::BadName { path: in_path.clone(), source })?;

    std::fs::create_dir_all(out_dir).map_err(|source| ShardError::OutputDir { path: out_dir.display().to_string(), source })?;
    let mut src = File::open(input).map_err(|source| ShardError::Input { path: in_path.clone(), source })?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut shards = Vec::with_capacity(count);
    for (no, range) in plan.iter().enumerate() {
        let split_keys =
            [(KEY_SPLIT_NO, Value::U16(no as u16)), (KEY_SPLIT_TENSORS_COUNT, Value::I32(total_tensors)), (KEY_SPLIT_COUNT, Value::U16(count_u16))];
        let (bytes, sha256) =
            write_one(&header, &mut src, &in_path, ShardSpec { no, range: range.clone(), split_keys: &split_keys }, &out_dir.join(&names[no]), &mut buf)?;
        let shard = ManifestShard { file: names[no].clone(), bytes, sha256: Some(sha256) };
        progress(ShardWritten { no, count, tensors: range.len(), shard: &shard });
        shards.push(shard);
    }

    let md = &header.metadata;
    let model = ManifestModel {
        architecture: md.get_str("general.architecture").ok().flatten().map(str::to_owned),
        name: md.get_str("general.name").ok().flatten().map(str::to_owned),
        file_type: md.get_u32("general.file_type").ok().flatten().and_then(file_type_name).map(str::to_owned),
        bytes: shards.iter().map(|s| s.bytes).sum(),
    };
    let manifest = Manifest { shards, tensors: header.tensors.len() as u64, model };
    let path = out_dir.join(MANIFEST_FILE);
    let mut out = PartialFile::create(&path)?;
    out.write(manifest.to_json().as_bytes())?;
    out.write(b"\n")?;
    out.finish()?;
    Ok(manifest)
}

struct ShardSpec<'a> {
    no: usize,
    range: Range<usize>,
    split_keys: &'a [(&'static str, Value)],
}

/// Writes one shard; returns its size and sha256 (hex).
fn write_one(header: &GgufHeader, src: &mut File, in_path: &str, spec: ShardSpec<'_>, path: &Path, buf: &mut [u8]) -> Result<(u64, String), ShardError> {
    let tensors = &header.tensors[spec.range];
    let mut metadata: Vec<(&str, &Value)> = Vec::new();
    if spec.no == 0 {
        let is_split_key = |k: &str| [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT].contains(&k);
        metadata.extend(header.metadata.iter().filter(|(k, _)| !is_split_key(k)));
    }
    metadata.extend(spec.split_keys.iter().map(|(k, v)| (*k, v)));
    // Shard 0 states the input's alignment (if any) in its metadata; the others have none.
    let alignment = if spec.no == 0 { header.alignment } else { DEFAULT_ALIGNMENT };
    let sizes: Vec<u64> = tensors.iter().map(|t| t.n_bytes).collect();
    let (offsets, _) = data_layout(&sizes, alignment);
    let entries: Vec<TensorEntry<'_>> = tensors
        .iter()
        .zip(&offsets)
        .map(|(t, &offset)| {
            // ggml_n_dims: trailing 1s are implied, at least one dimension is written (a shape
            // of none stays empty).
            let n_dims = t.shape.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1).min(t.shape.len());
            TensorEntry { name: &t.name, shape: &t.shape[..n_dims], ty: t.ty, offset }
        })
        .collect();
    let head = encode_header(&metadata, &entries, alignment);

    // Dropping `out` on an error below removes the partial file.
    let mut out = PartialFile::create(path)?;
    out.write(&head)?;
    let read_err = |source| ShardError::Input { path: in_path.to_owned(), source };
    for t in tensors {
        src.seek(SeekFrom::Start(header.data_offset + t.offset)).map_err(read_err)?;
        let mut left = t.n_bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            src.read_exact(&mut buf[..n]).map_err(read_err)?;
            out.write(&buf[..n])?;
            left -= n as u64;
        }
        out.zeros((t.n_bytes.div_ceil(alignment) * alignment - t.n_bytes) as usize)?;
    }
    Ok(out.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_max_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_max_size("40m").unwrap(), 40 << 20);
        assert_eq!(parse_max_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_max_size("3KiB").unwrap(), 3 << 10);
        assert_eq!(parse_max_size("1000").unwrap(), 1000);
        assert!(matches!(parse_max_size("0M"), Err(ShardError::ZeroMaxSize)));
        for bad in ["", "M", "1.5G", "-1", "12T", "1 G x", "99999999999999999999G"] {
            assert!(matches!(parse_max_size(bad), Err(ShardError::BadMaxSize(_))), "{bad}");
        }
    }

    #[test]
    fn plan_follows_gguf_split() {
        // Padded to 32: 32 + 64 + 32 | 96 + 32 (reaching the limit exactly still fits).
        assert_eq!(plan_shards(&[10, 64, 1, 96, 5], 128), vec![0..3, 3..5]);
        assert_eq!(plan_shards(&[10, 64, 1, 96, 5], 127), vec![0..2, 2..3, 3..4, 4..5]);
        // A tensor over the limit gets a shard of its own, first or not.
        assert_eq!(plan_shards(&[500, 10, 500, 10], 100), vec![0..1, 1..2, 2..3, 3..4]);
        assert_eq!(plan_shards(&[10, 10], 1 << 20), vec![0..2]);
        assert_eq!(plan_shards(&[], 100), vec![0..0]);
    }
}
