//! Incremental, hardened parse of a GGUF header: magic, version, metadata, tensor infos.
//! Format: ggml/docs/gguf.md; the checks mirror (and tighten) ggml's gguf.cpp `gguf_init_from_file_impl`.

use super::cursor::{Cursor, Stop};
use super::limits::{Limits, MAX_DIMS};
use super::metadata::Metadata;
use super::value::{Array, Value, ValueType};
use crate::error::GgufError;
use crate::quant::GgmlType;
use serde::Serialize;
use std::collections::HashSet;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent (GGUF_DEFAULT_ALIGNMENT).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Smallest possible metadata entry: 8-byte key length, 1 key byte, 4-byte type, 1 value byte.
const MIN_KV_BYTES: u64 = 14;
/// Smallest possible tensor info: name length + 1 byte, n_dims, type, offset (0 dims).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 4 + 8;

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// Sizes in ggml order: `shape[0]` is the row length (contiguous), then rows, …
    pub shape: Vec<u64>,
    #[serde(rename = "type")]
    pub ty: GgmlType,
    /// Offset of the first byte, relative to the start of the file's tensor data.
    pub offset: u64,
    #[serde(rename = "bytes")]
    pub n_bytes: u64,
    #[serde(skip)]
    pub n_elements: u64,
}

impl TensorInfo {
    /// Elements per row (`ne[0]`).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of every dimension but the first).
    pub fn n_rows(&self) -> u64 {
        // Cannot overflow: the full product was checked when the header was parsed.
        self.shape.iter().skip(1).product()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        self.n_bytes / self.n_rows().max(1)
    }
}

/// A parsed GGUF header: everything but the tensor data.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset where tensor data begins (header end rounded up to `alignment`).
    pub data_offset: u64,
}

/// Outcome of parsing a prefix of a file.
#[derive(Clone, Debug)]
pub enum Parsed {
    Header(Box<GgufHeader>),
    /// The prefix ends inside the header: supply at least `total` bytes from the file start
    /// (a lower bound; growing the prefix geometrically avoids re-parsing often).
    NeedMore {
        total: u64,
    },
}

/// Parses the header from `prefix`, the first bytes of a file of `file_size` bytes (None when
/// unknown, e.g. a stream without Content-Length). With a known size, anything that points past
/// the end is an error, and tensor extents are checked against the data section.
pub fn parse_header(prefix: &[u8], file_size: Option<u64>, limits: &Limits) -> Result<Parsed, GgufError> {
    match parse(prefix, file_size, limits) {
        Ok(h) => Ok(Parsed::Header(Box::new(h))),
        Err(Stop::Short(total)) => Ok(Parsed::NeedMore { total }),
        Err(Stop::Fail(e)) => Err(e),
    }
}

fn parse(buf: &[u8], file_size: Option<u64>, limits: &Limits) -> Result<GgufHeader, Stop> {
    let mut c = Cursor::new(buf, file_size, limits.max_header_bytes);
    let magic = c.array::<4>("magic")?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic }.into());
    }
    let version = c.u32("version")?;
    if version & 0xffff == 0 && version != 0 {
        // A small version number written big-endian reads as a multiple of 2^16.
        return Err(GgufError::BigEndian { version_le: version }.into());
    }
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version }.into());
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    if n_tensors > limits.max_tensors {
        return Err(GgufError::TooManyTensors { count: n_tensors, limit: limits.max_tensors }.into());
    }
    if n_kv > limits.max_kv {
        return Err(GgufError::TooManyKv { count: n_kv, limit: limits.max_kv }.into());
    }
    // Saturating: with permissive limits (up to u64::MAX) the product may not fit.
    let min_bytes = c.pos().saturating_add(n_kv.saturating_mul(MIN_KV_BYTES)).saturating_add(n_tensors.saturating_mul(MIN_TENSOR_INFO_BYTES));
    if let Some(fs) = file_size {
        if min_bytes > fs {
            return Err(GgufError::CountsExceedFile { n_tensors, n_kv, min_bytes, file_size: fs }.into());
        }
    }

    // Capacity for no more entries than the bytes held could encode: the counts are not yet
    // backed by data (with the size unknown not even checked against it).
    let mut metadata = Metadata::with_capacity(n_kv.min(c.remaining() / MIN_KV_BYTES) as usize);
    for index in 0..n_kv {
        let key = c.string(limits.max_string_len, "metadata key")?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index }.into());
        }
        if metadata.get(&key).is_some() {
            return Err(GgufError::DuplicateKey { key }.into());
        }
        let type_offset = c.pos();
        let type_id = c.u32("metadata value type")?;
        let ty = ValueType::from_id(type_id).ok_or(GgufError::UnknownValueType { type_id, offset: type_offset })?;
        let value = read_value(&mut c, ty, 0, limits)?;
        metadata.push(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) => {
            let a = u64::from(*a);
            if a == 0 {
                return Err(GgufError::AlignmentZero.into());
            }
            if !a.is_power_of_two() {
                return Err(GgufError::AlignmentNotPowerOfTwo { alignment: a }.into());
            }
            if a > limits.max_alignment {
                return Err(GgufError::AlignmentTooLarge { alignment: a, limit: limits.max_alignment }.into());
            }
            a
        }
        Some(v) => return Err(GgufError::AlignmentWrongType { found: v.type_name() }.into()),
    };

    let cap = n_tensors.min(c.remaining() / MIN_TENSOR_INFO_BYTES) as usize;
    let mut tensors = Vec::with_capacity(cap);
    let mut names = HashSet::with_capacity(cap);
    for index in 0..n_tensors {
        let t = read_tensor_info(&mut c, index, alignment, limits)?;
        if !names.insert(t.name.clone()) {
            return Err(GgufError::DuplicateTensor { name: t.name, shard: None }.into());
        }
        tensors.push(t);
    }

    // Header end rounded up to the alignment; alignment ≤ max_alignment so no overflow.
    let data_offset = c.pos().div_ceil(alignment) * alignment;
    let header = GgufHeader { version, metadata, tensors, alignment, data_offset };
    header.check_extents(file_size, limits)?;
    // The split keys (split.no < split.count, …) describe this file alone, so they are checked
    // here: every path (inspect, quantize, the streaming loader, the planner) rejects a bad one
    // from the header, before a tensor byte, not only when shards are assembled.
    header.split()?;
    Ok(header)
}

fn read_value(c: &mut Cursor, ty: ValueType, depth: u32, limits: &Limits) -> Result<Value, Stop> {
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8("u8 value")?),
        ValueType::I8 => Value::I8(c.u8("i8 value")? as i8),
        ValueType::U16 => Value::U16(c.u16("u16 value")?),
        ValueType::I16 => Value::I16(c.u16("i16 value")? as i16),
        ValueType::U32 => Value::U32(c.u32("u32 value")?),
        ValueType::I32 => Value::I32(c.u32("i32 value")? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32("f32 value")?)),
        ValueType::U64 => Value::U64(c.u64("u64 value")?),
        ValueType::I64 => Value::I64(c.u64("i64 value")? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64("f64 value")?)),
        ValueType::Bool => Value::Bool(read_bool(c)?),
        ValueType::String => Value::String(c.string(limits.max_string_len, "string value")?),
        ValueType::Array => Value::Array(read_array(c, depth + 1, limits)?),
    })
}

fn read_bool(c: &mut Cursor) -> Result<bool, Stop> {
    let offset = c.pos();
    match c.u8("bool value")? {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(GgufError::InvalidBool { byte, offset }.into()),
    }
}

fn read_array(c: &mut Cursor, depth: u32, limits: &Limits) -> Result<Array, Stop> {
    let offset = c.pos();
    if depth > limits.max_array_depth {
        return Err(GgufError::ArrayTooDeep { depth, limit: limits.max_array_depth, offset }.into());
    }
    let type_id = c.u32("array element type")?;
    let ty = ValueType::from_id(type_id).ok_or(GgufError::UnknownArrayType { type_id, offset })?;
    let len = c.u64("array length")?;
    if len > limits.max_array_len {
        return Err(GgufError::ArrayTooLong { len, limit: limits.max_array_len, offset }.into());
    }
    // Before allocating, the bytes the elements need at minimum must exist: a hostile length
    // can then only cost as much memory as the file itself holds.
    c.ensure(len.saturating_mul(ty.min_size()), "array elements")?;
    let n = len as usize;

    fn many<T>(n: usize, mut f: impl FnMut() -> Result<T, Stop>) -> Result<Vec<T>, Stop> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(f()?);
        }
        Ok(v)
    }
    Ok(match ty {
        ValueType::U8 => Array::U8(c.take(len, "u8 array")?.to_vec()),
        ValueType::I8 => Array::I8(c.take(len, "i8 array")?.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => Array::U16(many(n, || c.u16("u16 array"))?),
        ValueType::I16 => Array::I16(many(n, || Ok(c.u16("i16 array")? as i16))?),
        ValueType::U32 => Array::U32(many(n, || c.u32("u32 array"))?),
        ValueType::I32 => Array::I32(many(n, || Ok(c.u32("i32 array")? as i32))?),
        ValueType::F32 => Array::F32(many(n, || Ok(f32::from_bits(c.u32("f32 array")?)))?),
        ValueType::U64 => Array::U64(many(n, || c.u64("u64 array"))?),
        ValueType::I64 => Array::I64(many(n, || Ok(c.u64("i64 array")? as i64))?),
        ValueType::F64 => Array::F64(many(n, || Ok(f64::from_bits(c.u64("f64 array")?)))?),
        ValueType::Bool => Array::Bool(many(n, || read_bool(c))?),
        ValueType::String => Array::String(many(n, || c.string(limits.max_string_len, "string array"))?),
        ValueType::Array => Array::Array(many(n, || read_array(c, depth + 1, limits))?),
    })
}

fn read_tensor_info(c: &mut Cursor, index: u64, alignment: u64, limits: &Limits) -> Result<TensorInfo, Stop> {
    let name = c.string(limits.max_string_len, "tensor name")?;
    if name.is_empty() {
        return Err(GgufError::EmptyTensorName { index }.into());
    }
    let n_dims = c.u32("tensor dimension count")?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims { tensor: name, n_dims, limit: MAX_DIMS }.into());
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    for dim in 0..n_dims as usize {
        let raw = c.u64("tensor dimension")?;
        // ggml stores sizes as int64: a set top bit is a negative size.
        if raw > i64::MAX as u64 {
            return Err(GgufError::NegativeDimension { tensor: name, dim, value: raw as i64 }.into());
        }
        if raw == 0 {
            return Err(GgufError::ZeroDimension { tensor: name, dim }.into());
        }
        shape.push(raw);
    }
    let type_id = c.u32("tensor type")?;
    let offset = c.u64("tensor offset")?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), type_id })?;

    // ggml also requires the element count to fit in int64.
    let n_elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
        .ok_or_else(|| GgufError::ElementCountOverflow { tensor: name.clone(), shape: shape.clone() })?;
    let row = shape.first().copied().unwrap_or(1);
    let block = ty.block_size();
    if row % block as u64 != 0 {
        return Err(GgufError::RowNotBlockMultiple { tensor: name, ty, row, block }.into());
    }
    let n_bytes =
        ty.row_bytes(n_elements).filter(|&b| b <= i64::MAX as u64).ok_or_else(|| GgufError::ByteSizeOverflow { tensor: name.clone(), n_elements, ty })?;
    if offset % alignment != 0 {
        return Err(GgufError::MisalignedOffset { tensor: name, offset, alignment }.into());
    }
    Ok(TensorInfo { name, shape, ty, offset, n_bytes, n_elements })
}

impl GgufHeader {
    /// Bytes of tensor data the header describes (end of the furthest tensor).
    pub fn data_bytes(&self) -> u64 {
        // Each offset + size was checked not to overflow by check_extents.
        self.tensors.iter().map(|t| t.offset + t.n_bytes).max().unwrap_or(0)
    }

    /// Checks that tensors do not overlap, that their total stays within the limit and, when
    /// the file size is known, that every tensor lies inside the file.
    pub fn check_extents(&self, file_size: Option<u64>, limits: &Limits) -> Result<(), GgufError> {
        let mut order: Vec<&TensorInfo> = self.tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        let mut total: u64 = 0;
        let data_size = file_size.map(|fs| fs.saturating_sub(self.data_offset));
        for (i, t) in order.iter().enumerate() {
            // The absolute end (data_offset + offset + bytes) must be representable too.
            let end = t.offset.checked_add(t.n_bytes).filter(|e| e.checked_add(self.data_offset).is_some());
            let end = end.ok_or_else(|| GgufError::TensorPastEnd { tensor: t.name.clone(), end: u64::MAX, data_size: data_size.unwrap_or(0) })?;
            if let Some(next) = order.get(i + 1) {
                if next.offset < end {
                    return Err(GgufError::OverlappingTensors {
                        first: t.name.clone(),
                        first_start: t.offset,
                        first_end: end,
                        second: next.name.clone(),
                        second_start: next.offset,
                    });
                }
            }
            total = total.saturating_add(t.n_bytes);
            if total > limits.max_data_bytes {
                return Err(GgufError::TotalBytesTooLarge { bytes: total, limit: limits.max_data_bytes });
            }
            if let Some(ds) = data_size {
                if end > ds {
                    return Err(GgufError::TensorPastEnd { tensor: t.name.clone(), end, data_size: ds });
                }
            }
        }
        Ok(())
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Absolute file range of a tensor's bytes.
    pub fn tensor_range(&self, t: &TensorInfo) -> std::ops::Range<u64> {
        let start = self.data_offset + t.offset;
        start..start + t.n_bytes
    }
}
