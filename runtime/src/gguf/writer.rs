//! Writing GGUF: encoders for every field, and a builder that lays out a valid header and
//! computes aligned tensor offsets. Used by the sharder, the quantizer and tests (which also
//! use the raw encoders to build deliberately malformed files).

use super::header::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::value::{Array, Value, ValueType};
use crate::quant::GgmlType;

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_string(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a value's payload (without its type tag).
pub fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => put_u32(out, *x),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => put_u64(out, *x),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Encodes an array: element type, length, elements.
pub fn put_array(out: &mut Vec<u8>, a: &Array) {
    put_u32(out, a.element_type() as u32);
    put_u64(out, a.len() as u64);
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => v.iter().for_each(|x| out.push(*x as u8)),
        Array::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => v.iter().for_each(|x| put_u32(out, *x)),
        Array::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => v.iter().for_each(|x| out.push(u8::from(*x))),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
        Array::Array(v) => v.iter().for_each(|x| put_array(out, x)),
        Array::U64(v) => v.iter().for_each(|x| put_u64(out, *x)),
        Array::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
}

/// Encodes one metadata entry: key, type tag, payload.
pub fn put_kv(out: &mut Vec<u8>, key: &str, v: &Value) {
    put_string(out, key);
    put_u32(out, v.value_type() as u32);
    put_value(out, v);
}

/// A tensor to be written: its data is supplied separately, in the same order.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order (row length first).
    pub shape: Vec<u64>,
    pub ty: GgmlType,
}

/// Lays out a GGUF v3 file: metadata in insertion order, tensors packed in order, each at
/// an offset rounded up to the alignment (as gguf-py and llama.cpp write them).
#[derive(Clone, Debug, Default)]
pub struct GgufBuilder {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.push((key.to_owned(), v));
        self
    }

    pub fn tensor(&mut self, name: &str, shape: &[u64], ty: GgmlType) -> &mut Self {
        self.tensors.push(TensorSpec { name: name.to_owned(), shape: shape.to_vec(), ty });
        self
    }

    /// `general.alignment` if set as u32 (else the default 32).
    pub fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("general.alignment", Value::U32(a)) if a.is_power_of_two() => Some(u64::from(*a)),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Bytes of each tensor (None when a shape does not fit its type).
    pub fn tensor_bytes(&self) -> Vec<Option<u64>> {
        self.tensors.iter().map(|t| t.ty.row_bytes(t.shape.iter().product())).collect()
    }

    /// The header bytes, padded to the alignment, followed by the data offset of each tensor
    /// (relative to the data section). Tensors whose shape does not fit their type get size 0.
    pub fn header(&self) -> (Vec<u8>, Vec<u64>) {
        let align = self.alignment();
        let sizes: Vec<u64> = self.tensor_bytes().into_iter().map(|b| b.unwrap_or(0)).collect();
        let (offsets, _) = data_layout(&sizes, align);
        let metadata: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let infos: Vec<TensorEntry<'_>> =
            self.tensors.iter().zip(&offsets).map(|(t, &offset)| TensorEntry { name: &t.name, shape: &t.shape, ty: t.ty, offset }).collect();
        (encode_header(&metadata, &infos, align), offsets)
    }

    /// A whole file in memory: header, then each tensor's bytes (`data[i]` for tensor i),
    /// padded to the alignment. For tests and small files; large writers stream instead.
    pub fn to_bytes(&self, data: &[&[u8]]) -> Vec<u8> {
        let align = self.alignment() as usize;
        let (mut out, offsets) = self.header();
        let base = out.len();
        for (off, d) in offsets.iter().zip(data) {
            out.resize(base + *off as usize, 0);
            out.extend_from_slice(d);
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        out
    }
}

/// One tensor info as written: offset is relative to the data section.
#[derive(Clone, Copy, Debug)]
pub struct TensorEntry<'a> {
    pub name: &'a str,
    /// ggml order (row length first).
    pub shape: &'a [u64],
    pub ty: GgmlType,
    pub offset: u64,
}

/// Offsets of tensors of `sizes` bytes packed in order, each rounded up to `alignment`
/// (ggml's `gguf_add_tensor`), and the padded size of the whole data section.
pub fn data_layout(sizes: &[u64], alignment: u64) -> (Vec<u64>, u64) {
    let mut offsets = Vec::with_capacity(sizes.len());
    let mut offset = 0u64;
    for &s in sizes {
        offsets.push(offset);
        offset = (offset + s).div_ceil(alignment) * alignment;
    }
    (offsets, offset)
}

/// A GGUF v3 header from borrowed parts: metadata in the order given, tensor infos, zeros up
/// to `alignment`. Tensor data is written after it by the caller (streamed by the sharder).
pub fn encode_header(metadata: &[(&str, &Value)], tensors: &[TensorEntry<'_>], alignment: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC);
    put_u32(&mut out, 3);
    put_u64(&mut out, tensors.len() as u64);
    put_u64(&mut out, metadata.len() as u64);
    for (k, v) in metadata {
        put_kv(&mut out, k, v);
    }
    for t in tensors {
        put_string(&mut out, t.name);
        put_u32(&mut out, t.shape.len() as u32);
        t.shape.iter().for_each(|&d| put_u64(&mut out, d));
        put_u32(&mut out, t.ty.id());
        put_u64(&mut out, t.offset);
    }
    let align = alignment.max(1) as usize;
    out.resize(out.len().div_ceil(align) * align, 0);
    out
}

/// The type tag ValueType of a value, re-exported for raw writers.
pub fn type_tag(v: &Value) -> ValueType {
    v.value_type()
}
