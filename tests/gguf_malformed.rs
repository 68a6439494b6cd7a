//! The GGUF reader against malformed input.
//!
//! - One small hand-built file per validation rule, each asserted to fail with its specific
//!   [`GgufError`] variant and offending numbers. The files are built with the writer's raw
//!   encoders so every byte is explicit.
//! - The same cases are persisted under `tests/fixtures/malformed/` (`<class>.gguf.bin`, or
//!   `<class>/shard-N.gguf.bin` for the shards of a split model) and replayed from disk through
//!   `parse_header`, `read_header` and `read_header_from_path` (what `webgguf inspect` uses).
//!   They double as the fuzz seed corpus (tests/fuzz). After changing a case, regenerate them:
//!   `WEBGGUF_REGEN_CORPUS=1 cargo test -p webgguf-tests --test gguf_malformed corpus_fixtures_are_current`
//! - Valid files round-trip through writer → parser; every prefix of a rich valid file parses
//!   to NeedMore / Header / an error, never a panic; the real models parse incrementally.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use webgguf::gguf::writer::{put_kv, put_string, put_u32, put_u64, GgufBuilder};
use webgguf::gguf::{
    self, parse_header, Array, GgufHeader, GgufModel, Limits, Parsed, ReadHeaderError, Value, ValueType, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT,
};
use webgguf::{GgmlType, GgufError};
use webgguf_tests::{fixtures_dir, model_path};

// ---------------------------------------------------------------------------------------------
// Raw building blocks
// ---------------------------------------------------------------------------------------------

const VT_U8: u32 = ValueType::U8 as u32;
const VT_F32: u32 = ValueType::F32 as u32;
const VT_BOOL: u32 = ValueType::Bool as u32;
const VT_STRING: u32 = ValueType::String as u32;
const VT_ARRAY: u32 = ValueType::Array as u32;
/// One past the last value type (F64 = 12).
const VT_UNKNOWN: u32 = 13;

/// Magic, version, tensor count, metadata count: the 24 bytes every GGUF file starts with.
fn preamble(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    put_u32(&mut out, version);
    put_u64(&mut out, n_tensors);
    put_u64(&mut out, n_kv);
    out
}

/// A metadata key and a raw value type tag (the payload follows).
fn put_key_type(out: &mut Vec<u8>, key: &str, type_id: u32) {
    put_string(out, key);
    put_u32(out, type_id);
}

/// One tensor info: name, n_dims, dims, ggml type id, data offset.
fn put_tensor(out: &mut Vec<u8>, name: &str, dims: &[u64], type_id: u32, offset: u64) {
    put_string(out, name);
    put_u32(out, dims.len() as u32);
    dims.iter().for_each(|&d| put_u64(out, d));
    put_u32(out, type_id);
    put_u64(out, offset);
}

/// Zero padding up to the default alignment (32).
fn pad32(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(32) * 32, 0);
}

/// A v3 file with one metadata entry `key` = string whose length field says `len` and whose
/// bytes are `bytes` (which may be fewer than `len`).
fn one_string_kv(key: &str, len: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = preamble(3, 0, 1);
    put_key_type(&mut out, key, VT_STRING);
    put_u64(&mut out, len);
    out.extend_from_slice(bytes);
    out
}

/// A v3 file with one metadata entry `key` = array of `elem_type` whose length field says `len`,
/// followed by `payload`.
fn one_array_kv(key: &str, elem_type: u32, len: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = preamble(3, 0, 1);
    put_key_type(&mut out, key, VT_ARRAY);
    put_u32(&mut out, elem_type);
    put_u64(&mut out, len);
    out.extend_from_slice(payload);
    out
}

/// A v3 file with one metadata entry `general.alignment` = `v`.
fn alignment_file(v: Value) -> Vec<u8> {
    let mut out = preamble(3, 0, 1);
    put_kv(&mut out, "general.alignment", &v);
    out
}

/// A v3 file without metadata holding the given tensor infos (name, dims, ggml type id,
/// offset), padded to 32, then `data` zero bytes of tensor data.
fn tensors_file(tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let mut out = preamble(3, tensors.len() as u64, 0);
    for &(name, dims, ty, offset) in tensors {
        put_tensor(&mut out, name, dims, ty, offset);
    }
    pad32(&mut out);
    out.resize(out.len() + data, 0);
    out
}

/// ggml type ids, as raw numbers in tensor infos.
const ID_F32: u32 = 0;
const ID_F64: u32 = 28;
const ID_Q8_0: u32 = 8;
const ID_Q4_K: u32 = 12;

/// A valid file (built with GgufBuilder) carrying `kvs` after `general.architecture`, and one
/// F32 [4] tensor of real data per name.
fn split_file(kvs: Vec<(&str, Value)>, tensors: &[&str]) -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.kv("general.architecture", Value::String("llama".into()));
    for (k, v) in kvs {
        b.kv(k, v);
    }
    let data: Vec<Vec<u8>> = (0..tensors.len()).map(|i| [1.0f32, -2.0, 0.5, i as f32].iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    for name in tensors {
        b.tensor(name, &[4], GgmlType::F32);
    }
    b.to_bytes(&data.iter().map(|d| d.as_slice()).collect::<Vec<_>>())
}

/// Shard `no` of `count` of a model of `total` tensors, holding `tensors`.
fn shard(no: u16, count: u16, total: i32, tensors: &[&str]) -> Vec<u8> {
    split_file(GgufModel::split_values(no, count, total).into_iter().collect(), tensors)
}

// ---------------------------------------------------------------------------------------------
// The malformed cases, one function per class
// ---------------------------------------------------------------------------------------------

mod case {
    use super::*;

    // --- framing and counts ---

    /// An ELF binary is not a model.
    pub fn bad_magic() -> Vec<u8> {
        let mut out = b"\x7fELF".to_vec();
        put_u32(&mut out, 3);
        put_u64(&mut out, 0);
        put_u64(&mut out, 0);
        out
    }
    pub fn version(v: u32) -> Vec<u8> {
        preamble(v, 0, 0)
    }
    /// Version 3 and both counts written big-endian (magic bytes are the same in both orders).
    pub fn big_endian() -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&1u64.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out
    }
    pub fn empty() -> Vec<u8> {
        Vec::new()
    }
    /// The file ends inside the tensor count.
    pub fn truncated_counts() -> Vec<u8> {
        preamble(3, 0, 0)[..10].to_vec()
    }
    pub fn too_many_tensors() -> Vec<u8> {
        preamble(3, 1 << 63, 0)
    }
    pub fn too_many_kv() -> Vec<u8> {
        preamble(3, 0, 1 << 63)
    }
    /// u64::MAX tensors and entries, parsed with `permissive` limits: the minimum size they
    /// imply saturates (regression: it overflowed, a panic in debug builds).
    pub fn counts_overflow_permissive() -> Vec<u8> {
        preamble(3, u64::MAX, u64::MAX)
    }
    /// 1000 tensors and 1000 entries within the limits, in a 24-byte file.
    pub fn counts_exceed_file() -> Vec<u8> {
        preamble(3, 1000, 1000)
    }

    // --- metadata values ---

    /// `general.name` claims 1 MiB + 1 bytes (the cap is 1 MiB); value at offset 48.
    pub fn string_too_long() -> Vec<u8> {
        one_string_kv("general.name", (1 << 20) + 1, b"SmolLM2")
    }
    /// A key whose length is u64::MAX, at offset 24.
    pub fn key_too_long() -> Vec<u8> {
        let mut out = preamble(3, 0, 1);
        put_u64(&mut out, u64::MAX);
        out.extend_from_slice(b"general.");
        out
    }
    /// `general.name` claims 1000 bytes; the file ends 5 bytes later.
    pub fn string_past_end() -> Vec<u8> {
        one_string_kv("general.name", 1000, b"Smol ")
    }
    /// `general.name` = "f", 0xff, 0xfe, "o".
    pub fn invalid_utf8() -> Vec<u8> {
        one_string_kv("general.name", 4, &[b'f', 0xff, 0xfe, b'o'])
    }
    /// A vocabulary of 2^40 strings; the array starts at offset 57.
    pub fn array_too_long() -> Vec<u8> {
        one_array_kv("tokenizer.ggml.tokens", VT_STRING, 1 << 40, &[])
    }
    /// 1000 f32 scores (within the limits) but only 8 bytes of them.
    pub fn array_past_end() -> Vec<u8> {
        one_array_kv("tokenizer.ggml.scores", VT_F32, 1000, &[0; 8])
    }
    /// array of array of array of array of u8: depth 4 > 3. Arrays start at 42, 54, 66, 78.
    pub fn array_too_deep() -> Vec<u8> {
        let mut out = preamble(3, 0, 1);
        put_key_type(&mut out, "nested", VT_ARRAY);
        for _ in 0..3 {
            put_u32(&mut out, VT_ARRAY);
            put_u64(&mut out, 1);
        }
        put_u32(&mut out, VT_U8);
        put_u64(&mut out, 0);
        out
    }
    /// Array of element type 13 at offset 48.
    pub fn unknown_array_type() -> Vec<u8> {
        one_array_kv("general.tags", VT_UNKNOWN, 0, &[])
    }
    /// `tokenizer.ggml.add_bos_token` = byte 2, at offset 64.
    pub fn invalid_bool() -> Vec<u8> {
        let mut out = preamble(3, 0, 1);
        put_key_type(&mut out, "tokenizer.ggml.add_bos_token", VT_BOOL);
        out.push(2);
        out
    }
    /// Value type 13, tag at offset 44.
    pub fn unknown_value_type() -> Vec<u8> {
        let mut out = preamble(3, 0, 1);
        put_key_type(&mut out, "general.name", VT_UNKNOWN);
        put_u32(&mut out, 0);
        out
    }
    /// The second entry's key is "".
    pub fn empty_key() -> Vec<u8> {
        let mut out = preamble(3, 0, 2);
        put_kv(&mut out, "general.name", &Value::String("x".into()));
        put_kv(&mut out, "", &Value::U32(1));
        out
    }
    pub fn duplicate_key() -> Vec<u8> {
        let mut out = preamble(3, 0, 2);
        put_kv(&mut out, "general.architecture", &Value::String("llama".into()));
        put_kv(&mut out, "general.architecture", &Value::String("gemma3".into()));
        out
    }

    // --- alignment ---

    pub fn alignment_zero() -> Vec<u8> {
        alignment_file(Value::U32(0))
    }
    pub fn alignment_48() -> Vec<u8> {
        alignment_file(Value::U32(48))
    }
    pub fn alignment_u64() -> Vec<u8> {
        alignment_file(Value::U64(32))
    }
    pub fn alignment_string() -> Vec<u8> {
        alignment_file(Value::String("32".into()))
    }
    pub fn alignment_huge() -> Vec<u8> {
        alignment_file(Value::U32(1 << 30))
    }

    // --- tensor infos ---

    pub fn empty_tensor_name() -> Vec<u8> {
        tensors_file(&[("", &[8], ID_F32, 0)], 32)
    }
    pub fn too_many_dims() -> Vec<u8> {
        tensors_file(&[("blk.0.ffn_up.weight", &[1, 1, 1, 1, 1], ID_F32, 0)], 32)
    }
    pub fn zero_dimension() -> Vec<u8> {
        tensors_file(&[("token_embd.weight", &[64, 0], ID_F32, 0)], 32)
    }
    /// ne[1] = -1 as int64.
    pub fn negative_dimension() -> Vec<u8> {
        tensors_file(&[("token_embd.weight", &[64, u64::MAX], ID_F32, 0)], 32)
    }
    /// 2^32 × 2^32 overflows u64.
    pub fn element_count_overflow() -> Vec<u8> {
        tensors_file(&[("token_embd.weight", &[1 << 32, 1 << 32], ID_F32, 0)], 32)
    }
    /// 2^32 × 2^31 = 2^63 fits u64 but not ggml's int64.
    pub fn element_count_over_i64() -> Vec<u8> {
        tensors_file(&[("token_embd.weight", &[1 << 32, 1 << 31], ID_F32, 0)], 32)
    }
    /// 2^62 F64 elements (a valid count) are 2^65 bytes: overflows u64.
    pub fn byte_size_overflow() -> Vec<u8> {
        tensors_file(&[("output.weight", &[1 << 62], ID_F64, 0)], 32)
    }
    /// 2^63 − 32 Q8_0 elements (a valid count, whole blocks) are 34 × (2^58 − 1) bytes:
    /// fits u64 but not int64.
    pub fn byte_size_over_i64() -> Vec<u8> {
        tensors_file(&[("output.weight", &[(1 << 63) - 32], ID_Q8_0, 0)], 32)
    }
    /// Type 4 was Q4_2, retired from ggml.
    pub fn unknown_ggml_type_4() -> Vec<u8> {
        tensors_file(&[("output.weight", &[32], 4, 0)], 32)
    }
    pub fn unknown_ggml_type_99() -> Vec<u8> {
        tensors_file(&[("output.weight", &[32], 99, 0)], 32)
    }
    /// Q4_K rows of 640 elements (2.5 blocks of 256).
    pub fn row_not_block_multiple() -> Vec<u8> {
        tensors_file(&[("blk.0.ffn_down.weight", &[640, 2], ID_Q4_K, 0)], 32)
    }
    pub fn misaligned_offset() -> Vec<u8> {
        tensors_file(&[("output_norm.weight", &[8], ID_F32, 4)], 64)
    }

    // --- extents and limits ---

    /// a: bytes 0..64, b: bytes 32..96.
    pub fn overlapping_tensors() -> Vec<u8> {
        tensors_file(&[("a", &[16], ID_F32, 0), ("b", &[16], ID_F32, 32)], 96)
    }
    /// 256 bytes of tensor in 128 bytes of data.
    pub fn tensor_past_end() -> Vec<u8> {
        tensors_file(&[("output_norm.weight", &[64], ID_F32, 0)], 128)
    }
    pub fn duplicate_tensor_name() -> Vec<u8> {
        tensors_file(&[("blk.0.attn_q.weight", &[8], ID_F32, 0), ("blk.0.attn_q.weight", &[8], ID_F32, 32)], 64)
    }
    /// Two tensors of 48 bytes each (each under the 64-byte limit of `tight_data`, 96 together).
    pub fn total_bytes_too_large() -> Vec<u8> {
        tensors_file(&[("a", &[12], ID_F32, 0), ("b", &[12], ID_F32, 64)], 112)
    }
    /// A 100-byte name ending at byte 156, over the 64-byte limit of `tight_header`.
    pub fn header_too_large() -> Vec<u8> {
        one_string_kv("general.name", 100, &[b'x'; 100])
    }

    // --- split GGUF, one file ---

    pub fn split_no_out_of_range() -> Vec<u8> {
        shard(3, 3, 1, &["a"])
    }
    /// split.no is the i32 -1: below zero is not below split.count either.
    pub fn split_no_negative() -> Vec<u8> {
        split_file(vec![(KEY_SPLIT_NO, Value::I32(-1)), (KEY_SPLIT_COUNT, Value::U16(2)), (KEY_SPLIT_TENSORS_COUNT, Value::I32(2))], &["a"])
    }
    pub fn split_count_zero() -> Vec<u8> {
        shard(0, 0, 1, &["a"])
    }
    /// split.no and split.count without split.tensors.count.
    pub fn split_key_missing() -> Vec<u8> {
        split_file(vec![(KEY_SPLIT_NO, Value::U16(0)), (KEY_SPLIT_COUNT, Value::U16(2))], &["a"])
    }
    /// split.count is the string "2".
    pub fn split_wrong_type() -> Vec<u8> {
        split_file(vec![(KEY_SPLIT_NO, Value::U16(0)), (KEY_SPLIT_COUNT, Value::String("2".into())), (KEY_SPLIT_TENSORS_COUNT, Value::I32(2))], &["a"])
    }
    /// A shard of 2 tensors in a model of 1.
    pub fn split_shard_too_many_tensors() -> Vec<u8> {
        shard(0, 2, 1, &["a", "b"])
    }

    // --- split GGUF, several shards ---

    pub fn split_count_mismatch() -> Vec<Vec<u8>> {
        vec![shard(0, 2, 2, &["a"]), shard(1, 3, 2, &["b"])]
    }
    pub fn split_tensor_total_mismatch() -> Vec<Vec<u8>> {
        vec![shard(0, 2, 2, &["a"]), shard(1, 2, 3, &["b"])]
    }
    /// Shards 0 and 2 of 3.
    pub fn split_missing_shard() -> Vec<Vec<u8>> {
        vec![shard(0, 3, 3, &["a"]), shard(2, 3, 3, &["c"])]
    }
    /// Shards 0 and 1 of 3.
    pub fn split_missing_last_shard() -> Vec<Vec<u8>> {
        vec![shard(0, 3, 3, &["a"]), shard(1, 3, 3, &["b"])]
    }
    pub fn split_duplicate_shard() -> Vec<Vec<u8>> {
        vec![shard(0, 2, 2, &["a"]), shard(0, 2, 2, &["b"])]
    }
    /// "x" in shard 0 and again in shard 1.
    pub fn split_duplicate_tensor() -> Vec<Vec<u8>> {
        vec![shard(0, 2, 2, &["x"]), shard(1, 2, 2, &["x"])]
    }
    /// split.tensors.count says 3, the shards hold 2.
    pub fn split_tensor_count_mismatch() -> Vec<Vec<u8>> {
        vec![shard(0, 2, 3, &["a"]), shard(1, 2, 3, &["b"])]
    }
}

fn tight_data() -> Limits {
    Limits { max_data_bytes: 64, ..Limits::default() }
}

fn tight_header() -> Limits {
    Limits { max_header_bytes: 64, ..Limits::default() }
}

/// Every count and length limit opened up to u64::MAX (a caller's "no limit").
fn permissive() -> Limits {
    Limits {
        max_string_len: u64::MAX,
        max_array_len: u64::MAX,
        max_kv: u64::MAX,
        max_tensors: u64::MAX,
        max_header_bytes: u64::MAX,
        max_data_bytes: u64::MAX,
        ..Limits::default()
    }
}

/// One class of the persisted corpus: its file (or shards), the limits it is parsed with and
/// the name of the `GgufError` variant it must produce.
struct Class {
    name: &'static str,
    variant: &'static str,
    build: fn() -> Vec<Vec<u8>>,
    limits: fn() -> Limits,
}

/// The mapping table: file name (class) → expected error variant.
const CORPUS: &[Class] = &[
    Class { name: "bad_magic", variant: "BadMagic", build: || vec![case::bad_magic()], limits: Limits::default },
    Class { name: "version_1", variant: "UnsupportedVersion", build: || vec![case::version(1)], limits: Limits::default },
    Class { name: "version_4", variant: "UnsupportedVersion", build: || vec![case::version(4)], limits: Limits::default },
    Class { name: "big_endian", variant: "BigEndian", build: || vec![case::big_endian()], limits: Limits::default },
    Class { name: "empty", variant: "Truncated", build: || vec![case::empty()], limits: Limits::default },
    Class { name: "truncated_counts", variant: "Truncated", build: || vec![case::truncated_counts()], limits: Limits::default },
    Class { name: "too_many_tensors", variant: "TooManyTensors", build: || vec![case::too_many_tensors()], limits: Limits::default },
    Class { name: "too_many_kv", variant: "TooManyKv", build: || vec![case::too_many_kv()], limits: Limits::default },
    Class { name: "counts_exceed_file", variant: "CountsExceedFile", build: || vec![case::counts_exceed_file()], limits: Limits::default },
    Class { name: "counts_overflow_permissive", variant: "CountsExceedFile", build: || vec![case::counts_overflow_permissive()], limits: permissive },
    Class { name: "string_too_long", variant: "StringTooLong", build: || vec![case::string_too_long()], limits: Limits::default },
    Class { name: "key_too_long", variant: "StringTooLong", build: || vec![case::key_too_long()], limits: Limits::default },
    Class { name: "string_past_end", variant: "Truncated", build: || vec![case::string_past_end()], limits: Limits::default },
    Class { name: "invalid_utf8", variant: "InvalidUtf8", build: || vec![case::invalid_utf8()], limits: Limits::default },
    Class { name: "array_too_long", variant: "ArrayTooLong", build: || vec![case::array_too_long()], limits: Limits::default },
    Class { name: "array_past_end", variant: "Truncated", build: || vec![case::array_past_end()], limits: Limits::default },
    Class { name: "array_too_deep", variant: "ArrayTooDeep", build: || vec![case::array_too_deep()], limits: Limits::default },
    Class { name: "unknown_array_type", variant: "UnknownArrayType", build: || vec![case::unknown_array_type()], limits: Limits::default },
    Class { name: "invalid_bool", variant: "InvalidBool", build: || vec![case::invalid_bool()], limits: Limits::default },
    Class { name: "unknown_value_type", variant: "UnknownValueType", build: || vec![case::unknown_value_type()], limits: Limits::default },
    Class { name: "empty_key", variant: "EmptyKey", build: || vec![case::empty_key()], limits: Limits::default },
    Class { name: "duplicate_key", variant: "DuplicateKey", build: || vec![case::duplicate_key()], limits: Limits::default },
    Class { name: "alignment_zero", variant: "AlignmentZero", build: || vec![case::alignment_zero()], limits: Limits::default },
    Class { name: "alignment_48", variant: "AlignmentNotPowerOfTwo", build: || vec![case::alignment_48()], limits: Limits::default },
    Class { name: "alignment_u64", variant: "AlignmentWrongType", build: || vec![case::alignment_u64()], limits: Limits::default },
    Class { name: "alignment_string", variant: "AlignmentWrongType", build: || vec![case::alignment_string()], limits: Limits::default },
    Class { name: "alignment_huge", variant: "AlignmentTooLarge", build: || vec![case::alignment_huge()], limits: Limits::default },
    Class { name: "empty_tensor_name", variant: "EmptyTensorName", build: || vec![case::empty_tensor_name()], limits: Limits::default },
    Class { name: "too_many_dims", variant: "TooManyDims", build: || vec![case::too_many_dims()], limits: Limits::default },
    Class { name: "zero_dimension", variant: "ZeroDimension", build: || vec![case::zero_dimension()], limits: Limits::default },
    Class { name: "negative_dimension", variant: "NegativeDimension", build: || vec![case::negative_dimension()], limits: Limits::default },
    Class { name: "element_count_overflow", variant: "ElementCountOverflow", build: || vec![case::element_count_overflow()], limits: Limits::default },
    Class { name: "element_count_over_i64", variant: "ElementCountOverflow", build: || vec![case::element_count_over_i64()], limits: Limits::default },
    Class { name: "byte_size_overflow", variant: "ByteSizeOverflow", build: || vec![case::byte_size_overflow()], limits: Limits::default },
    Class { name: "byte_size_over_i64", variant: "ByteSizeOverflow", build: || vec![case::byte_size_over_i64()], limits: Limits::default },
    Class { name: "unknown_ggml_type_4", variant: "UnknownTensorType", build: || vec![case::unknown_ggml_type_4()], limits: Limits::default },
    Class { name: "unknown_ggml_type_99", variant: "UnknownTensorType", build: || vec![case::unknown_ggml_type_99()], limits: Limits::default },
    Class { name: "row_not_block_multiple", variant: "RowNotBlockMultiple", build: || vec![case::row_not_block_multiple()], limits: Limits::default },
    Class { name: "misaligned_offset", variant: "MisalignedOffset", build: || vec![case::misaligned_offset()], limits: Limits::default },
    Class { name: "overlapping_tensors", variant: "OverlappingTensors", build: || vec![case::overlapping_tensors()], limits: Limits::default },
    Class { name: "tensor_past_end", variant: "TensorPastEnd", build: || vec![case::tensor_past_end()], limits: Limits::default },
    Class { name: "duplicate_tensor_name", variant: "DuplicateTensor", build: || vec![case::duplicate_tensor_name()], limits: Limits::default },
    Class { name: "total_bytes_too_large", variant: "TotalBytesTooLarge", build: || vec![case::total_bytes_too_large()], limits: tight_data },
    Class { name: "header_too_large", variant: "HeaderTooLarge", build: || vec![case::header_too_large()], limits: tight_header },
    Class { name: "split_no_out_of_range", variant: "SplitIndexOutOfRange", build: || vec![case::split_no_out_of_range()], limits: Limits::default },
    Class { name: "split_no_negative", variant: "SplitIndexOutOfRange", build: || vec![case::split_no_negative()], limits: Limits::default },
    Class { name: "split_count_zero", variant: "SplitCountZero", build: || vec![case::split_count_zero()], limits: Limits::default },
    Class { name: "split_key_missing", variant: "SplitKeyMissing", build: || vec![case::split_key_missing()], limits: Limits::default },
    Class { name: "split_wrong_type", variant: "SplitWrongType", build: || vec![case::split_wrong_type()], limits: Limits::default },
    Class {
        name: "split_shard_too_many_tensors",
        variant: "SplitShardTooManyTensors",
        build: || vec![case::split_shard_too_many_tensors()],
        limits: Limits::default,
    },
    Class { name: "split_count_mismatch", variant: "SplitCountMismatch", build: case::split_count_mismatch, limits: Limits::default },
    Class { name: "split_tensor_total_mismatch", variant: "SplitTensorTotalMismatch", build: case::split_tensor_total_mismatch, limits: Limits::default },
    Class { name: "split_missing_shard", variant: "MissingShard", build: case::split_missing_shard, limits: Limits::default },
    Class { name: "split_missing_last_shard", variant: "MissingShard", build: case::split_missing_last_shard, limits: Limits::default },
    Class { name: "split_duplicate_shard", variant: "DuplicateShard", build: case::split_duplicate_shard, limits: Limits::default },
    Class { name: "split_duplicate_tensor", variant: "DuplicateTensor", build: case::split_duplicate_tensor, limits: Limits::default },
    Class { name: "split_tensor_count_mismatch", variant: "SplitTensorCountMismatch", build: case::split_tensor_count_mismatch, limits: Limits::default },
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The error of a file parsed with its size known; also checks that parsing the same bytes
/// with the size unknown fails the same way (for rules that do not depend on the file size).
fn err_with(bytes: &[u8], limits: &Limits) -> GgufError {
    let known = err_known_with(bytes, limits);
    match parse_header(bytes, None, limits) {
        Err(e) => assert_eq!(e, known, "size unknown vs known"),
        Ok(p) => panic!("size unknown: expected {known:?}, got {p:?}"),
    }
    known
}

fn err(bytes: &[u8]) -> GgufError {
    err_with(bytes, &Limits::default())
}

/// The error of a file parsed with its size known (for rules that need the size).
fn err_known_with(bytes: &[u8], limits: &Limits) -> GgufError {
    match parse_header(bytes, Some(bytes.len() as u64), limits) {
        Err(e) => e,
        Ok(p) => panic!("expected an error, got {p:?}"),
    }
}

fn err_known(bytes: &[u8]) -> GgufError {
    err_known_with(bytes, &Limits::default())
}

fn header(bytes: &[u8], file_size: Option<u64>) -> GgufHeader {
    match parse_header(bytes, file_size, &Limits::default()) {
        Ok(Parsed::Header(h)) => *h,
        other => panic!("expected a header, got {other:?}"),
    }
}

fn need_more(bytes: &[u8]) -> u64 {
    match parse_header(bytes, None, &Limits::default()) {
        Ok(Parsed::NeedMore { total }) => total,
        other => panic!("expected NeedMore, got {other:?}"),
    }
}

/// Each file parses (size known) and the headers, assembled as one model, fail.
fn model_err(files: &[Vec<u8>]) -> GgufError {
    let headers = files.iter().map(|f| header(f, Some(f.len() as u64))).collect();
    match GgufModel::new(headers) {
        Err(e) => e,
        Ok(m) => panic!("expected an error, got a model of {} shards", m.shards.len()),
    }
}

macro_rules! assert_err {
    ($e:expr, $pat:pat $(if $guard:expr)?) => {{
        let e: GgufError = $e;
        assert!(matches!(e.clone(), $pat $(if $guard)?), "got {e:?}");
    }};
}

/// The variant name of an error: "TensorPastEnd" for `TensorPastEnd { .. }`.
fn variant(e: &GgufError) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Every class, with its exact variant and numbers
// ---------------------------------------------------------------------------------------------

#[test]
fn framing_and_counts() {
    assert_err!(err(&case::bad_magic()), GgufError::BadMagic { found } if found == *b"\x7fELF");
    assert_err!(err(&case::version(1)), GgufError::UnsupportedVersion { version: 1 });
    assert_err!(err(&case::version(4)), GgufError::UnsupportedVersion { version: 4 });
    assert_err!(err(&case::version(0)), GgufError::UnsupportedVersion { version: 0 });
    assert_err!(err(&case::big_endian()), GgufError::BigEndian { version_le: 0x0300_0000 });
    assert_err!(
        err(&case::too_many_tensors()),
        GgufError::TooManyTensors { count, limit: 65536 } if count == 1 << 63
    );
    assert_err!(err(&case::too_many_kv()), GgufError::TooManyKv { count, limit: 65536 } if count == 1 << 63);

    // Size-dependent: with the size known they fail, unknown they ask for more.
    assert_err!(err_known(&case::empty()), GgufError::Truncated { what: "magic", needed: 4, file_size: 0 });
    assert_eq!(need_more(&case::empty()), 4);
    assert_err!(err_known(&case::truncated_counts()), GgufError::Truncated { what: "tensor count", needed: 16, file_size: 10 });
    assert_eq!(need_more(&case::truncated_counts()), 16);
    assert_err!(
        err_known(&case::counts_exceed_file()),
        GgufError::CountsExceedFile { n_tensors: 1000, n_kv: 1000, min_bytes, file_size: 24 }
            if min_bytes == 24 + 1000 * 14 + 1000 * 25
    );
    assert!(need_more(&case::counts_exceed_file()) > 24);
}

#[test]
fn metadata_values() {
    assert_err!(
        err(&case::string_too_long()),
        GgufError::StringTooLong { len, limit, offset: 48 } if len == (1 << 20) + 1 && limit == 1 << 20
    );
    assert_err!(
        err(&case::key_too_long()),
        GgufError::StringTooLong { len: u64::MAX, limit, offset: 24 } if limit == 1 << 20
    );
    // The string runs past the end: 8-byte length at 48, bytes from 56.
    assert_err!(err_known(&case::string_past_end()), GgufError::Truncated { what: "string value", needed: 1056, file_size: 61 });
    assert_eq!(need_more(&case::string_past_end()), 1056);
    assert_err!(err(&case::invalid_utf8()), GgufError::InvalidUtf8 { offset: 48 });
    assert_err!(
        err(&case::array_too_long()),
        GgufError::ArrayTooLong { len, limit, offset: 57 } if len == 1 << 40 && limit == 1 << 22
    );
    // Elements start at 69 and need 1000 × 4 bytes.
    assert_err!(err_known(&case::array_past_end()), GgufError::Truncated { what: "array elements", needed: 4069, file_size: 77 });
    assert_eq!(need_more(&case::array_past_end()), 4069);
    assert_err!(err(&case::array_too_deep()), GgufError::ArrayTooDeep { depth: 4, limit: 3, offset: 78 });
    assert_err!(err(&case::unknown_array_type()), GgufError::UnknownArrayType { type_id: 13, offset: 48 });
    assert_err!(err(&case::invalid_bool()), GgufError::InvalidBool { byte: 2, offset: 64 });
    assert_err!(err(&case::unknown_value_type()), GgufError::UnknownValueType { type_id: 13, offset: 44 });
    assert_err!(err(&case::empty_key()), GgufError::EmptyKey { index: 1 });
    assert_err!(err(&case::duplicate_key()), GgufError::DuplicateKey { key } if key == "general.architecture");

    // A stricter depth limit rejects what the default admits (array of array, depth 2).
    let mut two_deep = preamble(3, 0, 1);
    put_kv(&mut two_deep, "nested", &Value::Array(Array::Array(vec![Array::U8(vec![1])])));
    header(&two_deep, Some(two_deep.len() as u64));
    let strict = Limits { max_array_depth: 1, ..Limits::default() };
    assert_err!(err_with(&two_deep, &strict), GgufError::ArrayTooDeep { depth: 2, limit: 1, offset: 54 });
}

#[test]
fn alignment() {
    assert_err!(err(&case::alignment_zero()), GgufError::AlignmentZero);
    assert_err!(err(&case::alignment_48()), GgufError::AlignmentNotPowerOfTwo { alignment: 48 });
    assert_err!(err(&case::alignment_u64()), GgufError::AlignmentWrongType { found: "u64" });
    assert_err!(err(&case::alignment_string()), GgufError::AlignmentWrongType { found: "string" });
    assert_err!(
        err(&case::alignment_huge()),
        GgufError::AlignmentTooLarge { alignment, limit: 65536 } if alignment == 1 << 30
    );
    // The largest allowed alignment is fine.
    let ok = alignment_file(Value::U32(1 << 16));
    assert_eq!(header(&ok, Some(ok.len() as u64)).alignment, 1 << 16);
}

#[test]
fn tensor_infos() {
    assert_err!(err(&case::empty_tensor_name()), GgufError::EmptyTensorName { index: 0 });
    assert_err!(
        err(&case::too_many_dims()),
        GgufError::TooManyDims { tensor, n_dims: 5, limit: 4 } if tensor == "blk.0.ffn_up.weight"
    );
    assert_err!(
        err(&case::zero_dimension()),
        GgufError::ZeroDimension { tensor, dim: 1 } if tensor == "token_embd.weight"
    );
    assert_err!(err(&case::negative_dimension()), GgufError::NegativeDimension { dim: 1, value: -1, .. });
    assert_err!(
        err(&case::element_count_overflow()),
        GgufError::ElementCountOverflow { shape, .. } if shape == [1 << 32, 1 << 32]
    );
    assert_err!(
        err(&case::element_count_over_i64()),
        GgufError::ElementCountOverflow { shape, .. } if shape == [1 << 32, 1 << 31]
    );
    assert_err!(
        err(&case::byte_size_overflow()),
        GgufError::ByteSizeOverflow { n_elements, ty: GgmlType::F64, .. } if n_elements == 1 << 62
    );
    assert_err!(
        err(&case::byte_size_over_i64()),
        GgufError::ByteSizeOverflow { n_elements, ty: GgmlType::Q8_0, .. } if n_elements == (1 << 63) - 32
    );
    assert_err!(
        err(&case::unknown_ggml_type_4()),
        GgufError::UnknownTensorType { tensor, type_id: 4 } if tensor == "output.weight"
    );
    assert_err!(err(&case::unknown_ggml_type_99()), GgufError::UnknownTensorType { type_id: 99, .. });
    assert_err!(err(&case::row_not_block_multiple()), GgufError::RowNotBlockMultiple { ty: GgmlType::Q4_K, row: 640, block: 256, .. });
    assert_err!(
        err(&case::misaligned_offset()),
        GgufError::MisalignedOffset { tensor, offset: 4, alignment: 32 } if tensor == "output_norm.weight"
    );
}

#[test]
fn extents_and_limits() {
    assert_err!(
        err(&case::overlapping_tensors()),
        GgufError::OverlappingTensors { first, first_start: 0, first_end: 64, second, second_start: 32 }
            if first == "a" && second == "b"
    );
    assert_err!(
        err(&case::duplicate_tensor_name()),
        GgufError::DuplicateTensor { name, shard: None } if name == "blk.0.attn_q.weight"
    );
    // Past the end needs the file size; unknown, the header is fine.
    let past = case::tensor_past_end();
    assert_err!(
        err_known(&past),
        GgufError::TensorPastEnd { tensor, end: 256, data_size: 128 } if tensor == "output_norm.weight"
    );
    assert_eq!(header(&past, None).data_bytes(), 256);
    // A file that ends before its data section even starts.
    let no_data = tensors_file(&[("output_norm.weight", &[64], ID_F32, 0)], 0);
    let no_data = &no_data[..no_data.len() - 1];
    assert_err!(err_known(no_data), GgufError::TensorPastEnd { end: 256, data_size: 0, .. });

    assert_err!(err_with(&case::total_bytes_too_large(), &tight_data()), GgufError::TotalBytesTooLarge { bytes: 96, limit: 64 });
    header(&case::total_bytes_too_large(), Some(case::total_bytes_too_large().len() as u64));
    assert_err!(err_with(&case::header_too_large(), &tight_header()), GgufError::HeaderTooLarge { needed: 156, limit: 64 });
    header(&case::header_too_large(), Some(156));
}

/// Limits opened up to u64::MAX (a caller's "no limit") must not turn hostile counts and
/// lengths into arithmetic overflow or huge up-front allocations.
#[test]
fn permissive_limits_do_not_overflow() {
    let open = permissive();
    let counts = case::counts_overflow_permissive();
    assert_err!(err_known_with(&counts, &open), GgufError::CountsExceedFile { min_bytes: u64::MAX, file_size: 24, .. });
    assert!(matches!(parse_header(&counts, None, &open), Ok(Parsed::NeedMore { total: 32 })));
    // Tensor infos: the count is not backed by bytes; no capacity is reserved for it.
    let mut tensors = preamble(3, u64::MAX, 0);
    put_tensor(&mut tensors, "a", &[8], ID_F32, 0);
    assert!(matches!(parse_header(&tensors, None, &open), Ok(Parsed::NeedMore { .. })));
    let huge_array = one_array_kv("a.u64", ValueType::U64 as u32, 1 << 62, &[]);
    assert_err!(err_known_with(&huge_array, &open), GgufError::Truncated { what: "array elements", needed: u64::MAX, .. });
    assert!(matches!(parse_header(&huge_array, None, &open), Ok(Parsed::NeedMore { total: u64::MAX })));
    let huge_string = one_string_kv("general.name", u64::MAX - 8, b"x");
    assert_err!(err_known_with(&huge_string, &open), GgufError::Truncated { needed: u64::MAX, .. });
}

#[test]
fn split_single_file() {
    // The split keys describe one file, so their rules fail in the header itself (every path
    // parses one: inspect, quantize, the loaders, the planner), size known or not.
    assert_err!(err(&case::split_no_out_of_range()), GgufError::SplitIndexOutOfRange { no: 3, count: 3 });
    assert_err!(err(&case::split_count_zero()), GgufError::SplitCountZero);
    assert_err!(err(&case::split_key_missing()), GgufError::SplitKeyMissing { key: "split.tensors.count" });
    assert_err!(err(&case::split_wrong_type()), GgufError::SplitWrongType { key: "split.count", expected: "u16", found: "string" });
    assert_err!(err(&case::split_shard_too_many_tensors()), GgufError::SplitShardTooManyTensors { shard: 0, count: 2, total: 1 });
    // split.no past split.count by more than one, and split.count 1 with split.no 1.
    assert_err!(err(&shard(5, 2, 1, &["a"])), GgufError::SplitIndexOutOfRange { no: 5, count: 2 });
    assert_err!(err(&shard(1, 1, 1, &["a"])), GgufError::SplitIndexOutOfRange { no: 1, count: 1 });
    // Negative numbers (i32 split.no) are out of range too.
    assert_err!(err(&case::split_no_negative()), GgufError::SplitIndexOutOfRange { count: 2, .. });
    // The last shard number parses; the header's accessor gives its place.
    let last = shard(2, 3, 3, &["a"]);
    assert_eq!(header(&last, None).split(), Ok(Some(webgguf::gguf::SplitInfo { no: 2, count: 3, tensors_total: 3 })));
    // A shard alone is missing its siblings.
    assert_err!(model_err(&[shard(0, 2, 2, &["a"])]), GgufError::MissingShard { no: 1, count: 2 });
    assert_err!(model_err(&[shard(1, 2, 2, &["b"])]), GgufError::MissingShard { no: 0, count: 2 });
    assert_err!(model_err(&[]), GgufError::MissingShard { no: 0, count: 1 });
}

#[test]
fn split_shards() {
    assert_err!(model_err(&case::split_count_mismatch()), GgufError::SplitCountMismatch { shard: 1, expected: 2, found: 3 });
    assert_err!(model_err(&case::split_tensor_total_mismatch()), GgufError::SplitTensorTotalMismatch { shard: 1, expected: 2, found: 3 });
    assert_err!(model_err(&case::split_missing_shard()), GgufError::MissingShard { no: 1, count: 3 });
    assert_err!(model_err(&case::split_missing_last_shard()), GgufError::MissingShard { no: 2, count: 3 });
    assert_err!(model_err(&case::split_duplicate_shard()), GgufError::DuplicateShard { no: 0 });
    assert_err!(
        model_err(&case::split_duplicate_tensor()),
        GgufError::DuplicateTensor { name, shard: Some(1) } if name == "x"
    );
    assert_err!(model_err(&case::split_tensor_count_mismatch()), GgufError::SplitTensorCountMismatch { expected: 3, found: 2 });
    // A plain file mixed into a split.
    let plain = split_file(vec![], &["b"]);
    assert_err!(model_err(&[shard(0, 2, 2, &["a"]), plain]), GgufError::SplitCountMismatch { shard: 0, expected: 2, found: 1 });
}

// ---------------------------------------------------------------------------------------------
// The persisted corpus
// ---------------------------------------------------------------------------------------------

fn corpus_dir() -> PathBuf {
    fixtures_dir().join("malformed")
}

/// Where a class lives on disk: `<class>.gguf.bin`, or `<class>/shard-N.gguf.bin` for several shards
/// (`.bin` so no fixture looks like a model file).
fn class_paths(class: &Class, n_files: usize) -> Vec<PathBuf> {
    if n_files == 1 {
        vec![corpus_dir().join(format!("{}.gguf.bin", class.name))]
    } else {
        (0..n_files).map(|i| corpus_dir().join(class.name).join(format!("shard-{i}.gguf.bin"))).collect()
    }
}

/// Valid files kept next to the corpus as fuzz seeds (tests/fixtures/valid/).
fn valid_seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("rich_v3.gguf.bin", rich_file().0),
        ("split_shard0.gguf.bin", shard(0, 2, 3, &["token_embd.weight", "output.weight"])),
        ("plain_tiny.gguf.bin", split_file(vec![("general.alignment", Value::U32(64))], &["a"])),
    ]
}

/// The files on disk equal what the cases build; with WEBGGUF_REGEN_CORPUS=1, rewrites them.
#[test]
fn corpus_fixtures_are_current() {
    let regen = std::env::var("WEBGGUF_REGEN_CORPUS").is_ok_and(|v| v == "1");
    let valid_dir = fixtures_dir().join("valid");
    if regen {
        let _ = std::fs::remove_dir_all(corpus_dir());
        std::fs::create_dir_all(&valid_dir).unwrap();
    }
    for (name, bytes) in valid_seeds() {
        let path = valid_dir.join(name);
        header(&bytes, Some(bytes.len() as u64));
        if regen {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; regenerate with WEBGGUF_REGEN_CORPUS=1", path.display()));
            assert!(on_disk == bytes, "{} is stale; regenerate with WEBGGUF_REGEN_CORPUS=1", path.display());
        }
    }
    let mut names = std::collections::HashSet::new();
    for class in CORPUS {
        assert!(names.insert(class.name), "class {} listed twice", class.name);
        let files = (class.build)();
        for (path, bytes) in class_paths(class, files.len()).iter().zip(&files) {
            if regen {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            } else {
                let on_disk = std::fs::read(path)
                    .unwrap_or_else(|e| panic!("{}: {e}; regenerate with WEBGGUF_REGEN_CORPUS=1 (see the top of this file)", path.display()));
                assert!(on_disk == *bytes, "{} is stale; regenerate with WEBGGUF_REGEN_CORPUS=1 (see the top of this file)", path.display());
            }
        }
    }
}

/// Parses one file of the corpus every way the runtime can and returns the first error, with
/// a header that parses assembled into a one-shard model. Checks that every way agrees.
fn replay_one(path: &Path, limits: &Limits) -> Result<GgufHeader, GgufError> {
    let bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    let parsed = match parse_header(&bytes, Some(len), limits) {
        Ok(Parsed::Header(h)) => Ok(*h),
        Ok(Parsed::NeedMore { total }) => panic!("{}: NeedMore {{ total: {total} }} with the size known", path.display()),
        Err(e) => Err(e),
    };
    let readers: [(&str, Result<GgufHeader, ReadHeaderError>); 3] = [
        ("read_header, size known", gguf::read_header(Cursor::new(&bytes), Some(len), limits)),
        ("read_header, size unknown", gguf::read_header(Cursor::new(&bytes), None, limits)),
        ("read_header_from_path", gguf::read_header_from_path(path, limits)),
    ];
    for (how, r) in readers {
        match (&parsed, r) {
            (Ok(_), Ok(_)) => {}
            (Err(e), Err(ReadHeaderError::Gguf(e2))) => assert_eq!(*e, e2, "{}: {how}", path.display()),
            (p, r) => panic!("{}: parse_header gave {p:?}, {how} gave {r:?}", path.display()),
        }
    }
    parsed
}

/// Every file in tests/fixtures/malformed fails (never Ok, never NeedMore, never a panic) with
/// the variant its class names.
#[test]
fn replay_malformed_corpus() {
    let mut entries: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("tests/fixtures/malformed is missing; regenerate with WEBGGUF_REGEN_CORPUS=1")
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut seen = 0;
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap();
        let stem = name.strip_suffix(".gguf.bin").unwrap_or(name).to_owned();
        let class = CORPUS.iter().find(|c| c.name == stem).unwrap_or_else(|| panic!("{}: no class named {stem:?} in the mapping table", path.display()));
        let limits = (class.limits)();
        let shards: Vec<PathBuf> = if path.is_dir() {
            let mut s: Vec<_> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()).collect();
            s.sort();
            s
        } else {
            assert!(path.to_str().is_some_and(|p| p.ends_with(".gguf.bin")), "{}", path.display());
            vec![path.clone()]
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut headers = Vec::new();
            for s in &shards {
                headers.push(replay_one(s, &limits)?);
            }
            if headers.len() > 1 {
                // Order must not matter to which rule fires.
                let mut reversed = headers.clone();
                reversed.reverse();
                let r = GgufModel::new(reversed).err().map(|e| variant(&e));
                assert_eq!(r.as_deref(), Some(class.variant), "{} (shards reversed)", path.display());
            }
            GgufModel::new(headers).map(|_| ())
        }));
        match outcome {
            Err(_) => panic!("{}: the reader panicked", path.display()),
            Ok(Ok(())) => panic!("{}: parsed and assembled without an error", path.display()),
            Ok(Err(e)) => assert_eq!(variant(&e), class.variant, "{}: {e}", path.display()),
        }
        seen += 1;
    }
    assert_eq!(seen, CORPUS.len(), "every class has its file (regenerate with WEBGGUF_REGEN_CORPUS=1)");
}

// ---------------------------------------------------------------------------------------------
// Valid files
// ---------------------------------------------------------------------------------------------

/// Deterministic bytes (xorshift).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Every value type, empty and nested arrays (up to the default depth limit of 3).
fn every_value_type() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.bool", Value::Bool(true)),
        ("t.string", Value::String("héllo ✓ \u{1F600}".into())),
        ("t.empty_string", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-1, 1]))),
        ("a.u32", Value::Array(Array::U32(vec![7]))),
        ("a.i32", Value::Array(Array::I32(vec![-7, 0, 7]))),
        ("a.f32", Value::Array(Array::F32(vec![0.0, -0.0, f32::INFINITY, 1e-40]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        ("a.string", Value::Array(Array::String(vec!["<s>".into(), String::new(), "▁the".into()]))),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
        ("a.f64", Value::Array(Array::F64(vec![1.0, -2.5]))),
        ("a.empty", Value::Array(Array::F32(vec![]))),
        ("a.nested2", Value::Array(Array::Array(vec![Array::U32(vec![1, 2, 3]), Array::String(vec!["a".into(), "bc".into()]), Array::Bool(vec![])]))),
        ("a.nested3", Value::Array(Array::Array(vec![Array::Array(vec![Array::I64(vec![-1]), Array::Array(vec![])])]))),
        ("a.empty_nested", Value::Array(Array::Array(vec![]))),
    ]
}

/// A valid file with every value type and three tensors; returns it and its builder.
fn rich_file() -> (Vec<u8>, GgufBuilder) {
    let mut b = GgufBuilder::new();
    for (k, v) in every_value_type() {
        b.kv(k, v);
    }
    b.tensor("token_embd.weight", &[256, 2], GgmlType::Q4_K);
    b.tensor("blk.0.attn_q.weight", &[64, 2], GgmlType::Q8_0);
    b.tensor("output_norm.weight", &[16], GgmlType::F32);
    b.tensor("blk.0.ffn_up.weight", &[8, 4], GgmlType::F16);
    let data: Vec<Vec<u8>> = b.tensor_bytes().iter().enumerate().map(|(i, n)| noise(n.unwrap() as usize, i as u64 + 1)).collect();
    let bytes = b.to_bytes(&data.iter().map(|d| d.as_slice()).collect::<Vec<_>>());
    (bytes, b)
}

fn assert_round_trip(h: &GgufHeader, b: &GgufBuilder, bytes: &[u8]) {
    let parsed: Vec<(&str, &Value)> = h.metadata.iter().collect();
    let written: Vec<(&str, &Value)> = b.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(parsed, written);
    assert_eq!(h.alignment, b.alignment());
    let (hdr, offsets) = b.header();
    assert_eq!(h.data_offset, hdr.len() as u64);
    assert_eq!(h.tensors.len(), b.tensors.len());
    for ((t, spec), (off, n)) in h.tensors.iter().zip(&b.tensors).zip(offsets.iter().zip(b.tensor_bytes())) {
        assert_eq!((&t.name, &t.shape, t.ty, t.offset, Some(t.n_bytes)), (&spec.name, &spec.shape, spec.ty, *off, n));
        assert!(h.tensor_range(t).end <= bytes.len() as u64);
    }
}

#[test]
fn valid_v3_and_v2_round_trip() {
    let (bytes, b) = rich_file();
    let h = header(&bytes, Some(bytes.len() as u64));
    assert_eq!(h.version, 3);
    assert_round_trip(&h, &b, &bytes);
    // The same with the size unknown.
    assert_round_trip(&header(&bytes, None), &b, &bytes);

    // Version 2 has the same layout (64-bit counts and lengths).
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let h2 = header(&v2, Some(v2.len() as u64));
    assert_eq!(h2.version, 2);
    assert_round_trip(&h2, &b, &v2);

    // A non-default alignment moves the data section and the offsets.
    let mut b64 = b.clone();
    b64.kv("general.alignment", Value::U32(64));
    let data: Vec<Vec<u8>> = b64.tensor_bytes().iter().map(|n| vec![7; n.unwrap() as usize]).collect();
    let bytes64 = b64.to_bytes(&data.iter().map(|d| d.as_slice()).collect::<Vec<_>>());
    let h64 = header(&bytes64, Some(bytes64.len() as u64));
    assert_eq!(h64.alignment, 64);
    assert_eq!(h64.data_offset % 64, 0);
    assert_round_trip(&h64, &b64, &bytes64);
}

#[test]
fn valid_split_assembles() {
    let shards = [
        shard(0, 3, 5, &["token_embd.weight", "blk.0.attn_q.weight"]),
        shard(1, 3, 5, &["blk.0.ffn_up.weight"]),
        shard(2, 3, 5, &["blk.1.attn_q.weight", "output.weight"]),
    ];
    // Given in any order.
    let headers = [2, 0, 1].iter().map(|&i| header(&shards[i], Some(shards[i].len() as u64))).collect();
    let model = GgufModel::new(headers).unwrap();
    assert_eq!(model.shards.len(), 3);
    assert_eq!(model.metadata().get_u64(KEY_SPLIT_NO).unwrap(), Some(0));
    for (name, want) in [("token_embd.weight", 0), ("blk.0.attn_q.weight", 0), ("blk.0.ffn_up.weight", 1), ("blk.1.attn_q.weight", 2), ("output.weight", 2)] {
        let (s, t) = model.tensor(name).unwrap_or_else(|| panic!("{name} not found"));
        assert_eq!((s, t.name.as_str(), t.shape.as_slice()), (want, name, &[4u64][..]));
        // The tensor's bytes are inside its own shard.
        assert!(model.shards[s].tensor_range(t).end <= shards[want].len() as u64);
    }
    assert!(model.tensor("blk.2.attn_q.weight").is_none());
    assert_eq!(model.tensors().count(), 5);
    // A plain file is a model of one shard.
    let plain = split_file(vec![], &["a", "b"]);
    let m = GgufModel::new(vec![header(&plain, Some(plain.len() as u64))]).unwrap();
    assert_eq!(m.tensor("b").map(|(s, t)| (s, t.offset)), Some((0, 32)));
}

#[test]
fn need_more_then_complete() {
    let (bytes, b) = rich_file();
    let mut n = 20;
    let mut steps = 0;
    let h = loop {
        match parse_header(&bytes[..n], None, &Limits::default()).unwrap() {
            Parsed::Header(h) => break *h,
            Parsed::NeedMore { total } => {
                assert!(total > n as u64 && total <= bytes.len() as u64, "NeedMore {total} at {n}");
                n = total as usize;
                steps += 1;
            }
        }
    };
    assert!(steps > 1);
    assert_round_trip(&h, &b, &bytes);
    assert_round_trip(&header(&bytes, Some(bytes.len() as u64)), &b, &bytes);
}

// ---------------------------------------------------------------------------------------------
// Truncation sweep
// ---------------------------------------------------------------------------------------------

#[test]
fn every_prefix_of_a_valid_file() {
    let (bytes, _) = rich_file();
    let full = header(&bytes, Some(bytes.len() as u64));
    let data_end = full.data_offset + full.data_bytes();
    let limits = Limits::default();
    let mut first_header = None;
    let mut max_need = 0;
    for n in 0..=bytes.len() {
        let prefix = &bytes[..n];
        let r = catch_unwind(|| (parse_header(prefix, None, &limits), parse_header(prefix, Some(n as u64), &limits)));
        let (unknown, known) = r.unwrap_or_else(|_| panic!("panic at prefix {n}"));

        // Size unknown: NeedMore beyond the prefix until the header is complete, then Header.
        match unknown {
            Ok(Parsed::NeedMore { total }) => {
                assert!(first_header.is_none(), "NeedMore at {n} after a header at {first_header:?}");
                assert!(total > n as u64, "NeedMore {{ total: {total} }} at {n}");
                max_need = max_need.max(total);
            }
            Ok(Parsed::Header(h)) => {
                first_header.get_or_insert(n);
                assert_eq!((h.metadata.len(), &h.tensors, h.data_offset), (full.metadata.len(), &full.tensors, full.data_offset));
            }
            Err(e) => panic!("size unknown, prefix {n}: {e:?}"),
        }

        // Size known (= the prefix): a file cut short is an error, never NeedMore.
        match known {
            Ok(Parsed::Header(h)) => {
                assert!(n as u64 >= data_end, "prefix {n} ends before the data ({data_end})");
                assert_eq!(h.tensors, full.tensors);
            }
            Ok(Parsed::NeedMore { total }) => panic!("size known, prefix {n}: NeedMore {{ total: {total} }}"),
            Err(e) => {
                assert!((n as u64) < data_end, "prefix {n} holds all data but fails: {e:?}");
                assert!(matches!(e, GgufError::Truncated { .. } | GgufError::CountsExceedFile { .. } | GgufError::TensorPastEnd { .. }), "prefix {n}: {e:?}");
            }
        }
    }
    let first_header = first_header.expect("the full file parses") as u64;
    // NeedMore is a lower bound: it never asks for bytes past the header's end.
    assert!(max_need <= first_header, "asked for {max_need}, header ends at {first_header}");
    assert!(first_header <= full.data_offset && full.data_offset < first_header + 32);
}

// ---------------------------------------------------------------------------------------------
// Real models
// ---------------------------------------------------------------------------------------------

/// Parses a real model from a 64 KiB prefix, growing it as NeedMore asks (at least doubling,
/// as a streaming loader does), with the file size known. Returns the header and the steps.
fn parse_incrementally(path: &Path) -> (GgufHeader, usize) {
    let mut f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut buf = Vec::new();
    (&mut f).take(64 << 10).read_to_end(&mut buf).unwrap();
    let mut steps = 0;
    loop {
        match parse_header(&buf, Some(size), &Limits::default()).unwrap() {
            Parsed::Header(h) => {
                // The same prefix parses to the same header with the size unknown.
                let h2 = header(&buf, None);
                assert_eq!(h2.tensors, h.tensors);
                return (*h, steps);
            }
            Parsed::NeedMore { total } => {
                let have = buf.len() as u64;
                assert!(total > have && total <= size, "NeedMore {total} with {have} of {size}");
                let want = total.max(2 * have).min(size);
                (&mut f).take(want - have).read_to_end(&mut buf).unwrap();
                assert_eq!(buf.len() as u64, want);
                steps += 1;
                assert!(steps < 32, "too many steps");
            }
        }
    }
}

fn counts(h: &GgufHeader) -> BTreeMap<GgmlType, usize> {
    let mut m = BTreeMap::new();
    for t in &h.tensors {
        *m.entry(t.ty).or_default() += 1;
    }
    m
}

#[test]
fn real_models_need_more_then_parse() {
    use GgmlType::*;
    for (name, want) in [
        ("gemma-3-270m-q4_k_m.gguf", vec![(F32, 109), (Q5_0, 81), (Q8_0, 10), (Q4_K, 27), (Q6_K, 9)]),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", vec![(F32, 61), (Q4_1, 210), (Q8_0, 1)]),
    ] {
        let path = model_path(name);
        let (h, steps) = parse_incrementally(&path);
        assert!(steps >= 1, "{name}: the header does not fit 64 KiB, NeedMore is expected");
        assert_eq!(counts(&h), want.into_iter().collect::<BTreeMap<_, _>>(), "{name}");
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(h.data_offset + h.data_bytes() <= size);
        assert_eq!(h.split(), Ok(None));
        let model = GgufModel::new(vec![h]).unwrap();
        let md = model.metadata();
        let hp = md.hyperparameters().unwrap();
        assert!(hp.block_count > 0 && hp.embedding_length > 0, "{name}: {hp:?}");
        let tok = md.tokenizer().unwrap();
        assert!(tok.tokens.len() > 1000, "{name}");
        assert!(model.tensor("token_embd.weight").is_some(), "{name}");
    }
}
