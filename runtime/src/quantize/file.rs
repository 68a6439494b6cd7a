//! The streaming converter: reads the input's header, chooses every tensor's type
//! ([`super::mix`]), writes the new header, then each tensor in llama.cpp's order, in slabs of
//! rows (read, dequantize to f32, quantize, write). Memory stays within a few slabs whatever
//! the model size; the output is written as `OUT.partial` and renamed when complete.

use super::mix::{self, Choice, MixError, MixOptions, ModelFacts, TensorIn};
use super::FileType;
use crate::error::{GgufError, QuantError};
use crate::gguf::partial_file::{PartialFile, WriteError};
use crate::gguf::writer::{data_layout, encode_header, TensorEntry};
use crate::gguf::{read_header_from_path, GgufHeader, Limits, ReadHeaderError, TensorInfo, Value};
use crate::gguf::{KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use crate::quant::{dequantize_row, quantize_row, GgmlType};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// f32 values converted per slab (16 MiB of f32, plus the slab's input and output bytes).
const SLAB_VALUES: usize = 4 << 20;
/// `GGML_QNT_VERSION`, written to `general.quantization_version`.
const QUANTIZATION_VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub ftype: FileType,
    pub mix: MixOptions,
    /// Threads quantizing the rows of a slab (1 = this thread only).
    pub threads: usize,
}

/// One tensor as written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorReport {
    pub name: String,
    #[serde(serialize_with = "ser_type")]
    pub from: GgmlType,
    #[serde(serialize_with = "ser_type")]
    pub to: GgmlType,
    /// The type the rules wanted when the row length forced another.
    #[serde(serialize_with = "ser_opt_type")]
    pub fell_back_from: Option<GgmlType>,
    pub elements: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

fn ser_type<S: serde::Serializer>(t: &GgmlType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

fn ser_opt_type<S: serde::Serializer>(t: &Option<GgmlType>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(t.name()),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct QuantizeReport {
    pub ftype: String,
    pub tensors: Vec<TensorReport>,
    /// Tensor data bytes in and out (headers not counted).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The output file's size.
    pub file_bytes: u64,
    /// Bits per weight of the output's tensor data.
    pub bits_per_weight: f64,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("{path}: {source}")]
    Input { path: String, source: std::io::Error },
    #[error("{path}: malformed GGUF: {source}")]
    Malformed { path: String, source: GgufError },
    #[error("{path} is shard {} of {count} of a split model; give a single-file model (webgguf shard splits the output again)", .no + 1)]
    SplitInput { path: String, no: u64, count: u64 },
    #[error("{path}: metadata: {source}")]
    Metadata { path: String, source: GgufError },
    #[error("the output would overwrite the input ({0})")]
    SameFile(String),
    #[error(transparent)]
    Mix(#[from] MixError),
    #[error("tensor {tensor}: {source}")]
    Quant { tensor: String, source: QuantError },
    #[error("tensor {tensor} cannot be read: its type {ty} has no dequantizer here")]
    UnsupportedInput { tensor: String, ty: GgmlType },
    #[error("tensor {tensor}, row {row}: the weights hold {value} (NaN or infinite); refusing to write it")]
    NonFinite { tensor: String, row: u64, value: f32 },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What the mixing rules need, from the metadata.
fn model_facts(h: &GgufHeader) -> Result<ModelFacts, GgufError> {
    let md = &h.metadata;
    let arch = md.architecture()?.to_owned();
    let n_layer = md.require_u32(&md.arch_key("block_count")?)? as usize;
    let per_layer = |k: &str| -> Result<u32, GgufError> { Ok(md.get_per_layer_u32(&md.arch_key(k)?, n_layer)?.and_then(|v| v.into_iter().max()).unwrap_or(0)) };
    let n_head = per_layer("attention.head_count")?;
    let n_head_kv = per_layer("attention.head_count_kv")?;
    let n_gqa = n_head.checked_div(n_head_kv).map_or(1, |g| g.max(1) as usize);
    let n_expert = md.get_u32(&md.arch_key("expert_count")?)?.unwrap_or(0) as usize;
    Ok(ModelFacts { arch, n_layer, n_gqa, n_expert })
}

/// Converts `input` to `output` as `opts` says; `progress` sees each tensor once written.
pub fn quantize_file(input: &Path, output: &Path, opts: &QuantizeOptions, progress: &mut dyn FnMut(&TensorReport)) -> Result<QuantizeReport, QuantizeError> {
    let in_path = input.display().to_string();
    let h = read_header_from_path(input, &Limits::default()).map_err(|e| match e {
        ReadHeaderError::Gguf(source) => QuantizeError::Malformed { path: in_path.clone(), source },
        ReadHeaderError::Io(source) => QuantizeError::Input { path: in_path.clone(), source },
    })?;
    if let Some(s) = h.split().map_err(|source| QuantizeError::Malformed { path: in_path.clone(), source })?.filter(|s| s.count > 1) {
        return Err(QuantizeError::SplitInput { path: in_path, no: s.no, count: s.count });
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(QuantizeError::SameFile(in_path));
        }
    }
    let facts = model_facts(&h).map_err(|source| QuantizeError::Metadata { path: in_path.clone(), source })?;

    // Types, in the order llama.cpp writes tensors.
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    let order = mix::llama_order(&names);
    let ins: Vec<TensorIn<'_>> = order.iter().map(|&i| TensorIn { name: &h.tensors[i].name, shape: &h.tensors[i].shape, ty: h.tensors[i].ty }).collect();
    let choices = mix::choose_types(&ins, &facts, opts.ftype, &opts.mix)?;
    let tensors: Vec<&TensorInfo> = order.iter().map(|&i| &h.tensors[i]).collect();

    let mut warnings = Vec::new();
    for (t, c) in tensors.iter().zip(&choices) {
        if c.ty != t.ty && !t.ty.is_supported() {
            return Err(QuantizeError::UnsupportedInput { tensor: t.name.clone(), ty: t.ty });
        }
        if c.ty != t.ty && t.ty.block_size() > 1 {
            // Quantized input is dequantized first: the output is no better than it, and a
            // second quantization adds its own error.
            let effect = if c.ty.block_size() > 1 { "their errors add up" } else { "the output is no more precise than they are" };
            warnings.push(format!(
                "requantizing: the input's tensors are already quantized ({} first), so {effect}; quantize from F32/F16/BF16 for the best quality",
                t.ty
            ));
            break;
        }
    }
    let n_fallback = choices.iter().filter(|c| c.fell_back_from.is_some()).count();
    if n_fallback > 0 {
        warnings.push(format!("{n_fallback} of {} tensors took a 32-block type: their row length is not a multiple of 256", tensors.len()));
    }

    // The new header: the input's metadata (split keys dropped), then the version and file
    // type, replaced and appended as llama.cpp's gguf_set_val does.
    let replaced = [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT, "general.quantization_version", "general.file_type"];
    let version = Value::U32(QUANTIZATION_VERSION);
    let file_type = Value::U32(opts.ftype.id());
    let mut metadata: Vec<(&str, &Value)> = h.metadata.iter().filter(|(k, _)| !replaced.contains(k)).collect();
    metadata.push(("general.quantization_version", &version));
    metadata.push(("general.file_type", &file_type));
    let out_bytes: Vec<u64> = tensors
        .iter()
        .zip(&choices)
        .map(|(t, c)| {
            out_size(t, c.ty).ok_or_else(|| QuantizeError::Quant {
                tensor: t.name.clone(),
                source: QuantError::NotBlockMultiple { ty: c.ty, n: t.row_len() as usize, block: c.ty.block_size() },
            })
        })
        .collect::<Result<_, _>>()?;
    let (offsets, _) = data_layout(&out_bytes, h.alignment);
    let entries: Vec<TensorEntry<'_>> = tensors
        .iter()
        .zip(&choices)
        .zip(&offsets)
        .map(|((t, c), &offset)| TensorEntry { name: &t.name, shape: &t.shape[..mix::n_dims(&t.shape).min(t.shape.len())], ty: c.ty, offset })
        .collect();

    let mut out = PartialFile::create(output)?;
    out.write(&encode_header(&metadata, &entries, h.alignment))?;
    let mut src = File::open(input).map_err(|source| QuantizeError::Input { path: in_path.clone(), source })?;
    let mut reports = Vec::with_capacity(tensors.len());
    let mut bufs = Buffers::default();
    for ((t, c), &size) in tensors.iter().zip(&choices).zip(&out_bytes) {
        src.seek(SeekFrom::Start(h.data_offset + t.offset)).map_err(|source| QuantizeError::Input { path: in_path.clone(), source })?;
        convert(&mut src, &in_path, t, *c, opts.threads.max(1), &mut out, &mut bufs)?;
        out.zeros((size.div_ceil(h.alignment) * h.alignment - size) as usize)?;
        let r = TensorReport {
            name: t.name.clone(),
            from: t.ty,
            to: c.ty,
            fell_back_from: c.fell_back_from,
            elements: t.n_elements,
            bytes_in: t.n_bytes,
            bytes_out: size,
        };
        progress(&r);
        reports.push(r);
    }
    let (file_bytes, _) = out.finish()?;
    let bytes_in = reports.iter().map(|r| r.bytes_in).sum();
    let bytes_out: u64 = reports.iter().map(|r| r.bytes_out).sum();
    let elements: u64 = reports.iter().map(|r| r.elements).sum();
    Ok(QuantizeReport {
        ftype: opts.ftype.name().to_owned(),
        tensors: reports,
        bytes_in,
        bytes_out,
        file_bytes,
        bits_per_weight: if elements == 0 { 0.0 } else { bytes_out as f64 * 8.0 / elements as f64 },
        warnings,
    })
}

/// Bytes of `t` stored as `ty` (None when its rows are not whole blocks of `ty`).
fn out_size(t: &TensorInfo, ty: GgmlType) -> Option<u64> {
    ty.row_bytes(t.row_len())?.checked_mul(t.n_rows())
}

/// Scratch reused across tensors.
#[derive(Default)]
struct Buffers {
    /// `[slab rows, row bytes in]`
    raw: Vec<u8>,
    /// `[slab rows, row length]`
    f32: Vec<f32>,
    /// `[slab rows, row bytes out]`
    packed: Vec<u8>,
}

/// Copies (same type) or converts one tensor from `src` (positioned at its data) to `out`.
fn convert(src: &mut File, in_path: &str, t: &TensorInfo, c: Choice, threads: usize, out: &mut PartialFile, b: &mut Buffers) -> Result<(), QuantizeError> {
    let read_err = |source| QuantizeError::Input { path: in_path.to_owned(), source };
    let n = t.row_len() as usize;
    let rows = t.n_rows();
    let row_in = t.row_bytes() as usize;
    if c.ty == t.ty {
        let slab_rows = (crate::gguf::shard_writer::COPY_CHUNK / row_in.max(1)).max(1) as u64;
        let mut row = 0;
        while row < rows {
            let k = slab_rows.min(rows - row) as usize;
            b.raw.resize(k * row_in, 0);
            src.read_exact(&mut b.raw).map_err(read_err)?;
            out.write(&b.raw)?;
            row += k as u64;
        }
        return Ok(());
    }
    let quant_err = |source| QuantizeError::Quant { tensor: t.name.clone(), source };
    let row_out = c.ty.row_bytes(n as u64).ok_or_else(|| quant_err(QuantError::NotBlockMultiple { ty: c.ty, n, block: c.ty.block_size() }))? as usize;
    let slab_rows = (SLAB_VALUES / n.max(1)).max(1) as u64;
    let mut row = 0u64;
    while row < rows {
        let k = slab_rows.min(rows - row) as usize;
        b.raw.resize(k * row_in, 0);
        b.f32.resize(k * n, 0.0);
        b.packed.resize(k * row_out, 0);
        src.read_exact(&mut b.raw).map_err(read_err)?;
        for (r, (raw, vals)) in b.raw.chunks_exact(row_in).zip(b.f32.chunks_exact_mut(n)).enumerate() {
            dequantize_row(t.ty, raw, vals).map_err(quant_err)?;
            if let Some(&value) = vals.iter().find(|v| !v.is_finite()) {
                return Err(QuantizeError::NonFinite { tensor: t.name.clone(), row: row + r as u64, value });
            }
        }
        quantize_rows(c.ty, &b.f32, n, &mut b.packed, row_out, threads).map_err(quant_err)?;
        out.write(&b.packed)?;
        row += k as u64;
    }
    Ok(())
}

/// Quantizes the rows of `vals` (`[rows, n]`) into `packed` (`[rows, row_out]`), rows split
/// between `threads` threads (each row is independent, so the bytes do not depend on it).
fn quantize_rows(ty: GgmlType, vals: &[f32], n: usize, packed: &mut [u8], row_out: usize, threads: usize) -> Result<(), QuantError> {
    let rows = vals.len() / n.max(1);
    let per = rows.div_ceil(threads.max(1)).max(1);
    let work = |v: &[f32], p: &mut [u8]| -> Result<(), QuantError> {
        for (x, y) in v.chunks_exact(n).zip(p.chunks_exact_mut(row_out)) {
            quantize_row(ty, x, y)?;
        }
        Ok(())
    };
    if threads <= 1 || rows <= 1 {
        return work(vals, packed);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = vals.chunks(per * n).zip(packed.chunks_mut(per * row_out)).map(|(v, p)| s.spawn(move || work(v, p))).collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or(Err(QuantError::Unsupported { ty, op: "quantize (a worker thread panicked)" })))
    })
}
