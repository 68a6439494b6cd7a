//! The streaming writer of `webgguf synth`: header first, then each tensor in slabs of rows
//! (generated, quantized, written), so memory stays a few slabs whatever the model's size.
//! The output is written as `OUT.partial` and renamed when complete; with a shard size it is
//! then split by the sharder (gguf-split's layout) and the single file removed.

use super::{Init, SynthError, SynthSpec, SynthTensor};
use crate::gguf::partial_file::PartialFile;
use crate::gguf::writer::{data_layout, encode_header, TensorEntry};
use crate::gguf::{Metadata, Value, DEFAULT_ALIGNMENT};
use crate::quant::{quantize_row, GgmlType};
use crate::quantize::mix::{self, Choice, MixOptions, ModelFacts, TensorIn};
use crate::quantize::{FileType, QuantizeReport, TensorReport};
use std::path::Path;

/// f32 values generated per slab (16 MiB of f32 plus the slab's packed bytes).
const SLAB_VALUES: usize = 4 << 20;
/// `GGML_QNT_VERSION`.
const QUANTIZATION_VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub ftype: FileType,
    pub mix: MixOptions,
    /// Seeds every value: the same seed and spec give the same bytes.
    pub seed: u64,
    /// Threads generating and quantizing the rows of a slab (the bytes do not depend on it).
    pub threads: usize,
    /// `general.name`.
    pub name: String,
}

/// Writes the model `spec` describes to `output`; with `shard_max_bytes`, splits it into
/// shards of at most that many bytes in `output`'s folder (and removes the single file).
/// `progress` sees each tensor once written.
/// What a synthetic file holds before any weight is made: its metadata, tensors in write
/// order with their chosen types and byte sizes.
struct Layout {
    metadata: Metadata,
    tensors: Vec<SynthTensor>,
    choices: Vec<Choice>,
    /// Bytes of each tensor (unpadded).
    out_bytes: Vec<u64>,
    spec: SynthSpec,
}

fn layout(spec: &SynthSpec, tokenizer_from: Option<&Metadata>, ftype: FileType, mix_opts: &MixOptions, name: &str) -> Result<Layout, SynthError> {
    let (mut metadata, tensors, spec) = spec.plan(name, tokenizer_from)?;
    let facts = ModelFacts { arch: super::arch_name(spec.arch).into(), n_layer: spec.n_layers, n_gqa: spec.n_heads / spec.n_kv_heads, n_expert: 0 };
    // The rules see F32 input, as when quantizing a converted F32 model.
    let ins: Vec<TensorIn<'_>> = tensors.iter().map(|t| TensorIn { name: &t.name, shape: &t.shape, ty: GgmlType::F32 }).collect();
    let choices = mix::choose_types(&ins, &facts, ftype, mix_opts)?;
    metadata.push("general.quantization_version".into(), Value::U32(QUANTIZATION_VERSION));
    metadata.push("general.file_type".into(), Value::U32(ftype.id()));
    let out_bytes: Vec<u64> = tensors
        .iter()
        .zip(&choices)
        .map(|(t, c)| {
            let size = c.ty.row_bytes(t.shape[0]).and_then(|b| b.checked_mul(t.shape[1..].iter().product()));
            size.ok_or_else(|| SynthError::BadSpec {
                what: "tensor shape",
                rule: "whole blocks of its type",
                value: format!("{} {:?} as {}", t.name, t.shape, c.ty),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Layout { metadata, tensors, choices, out_bytes, spec })
}

/// Tensor data bytes of `spec` as `ftype` (the file less its header), without writing.
pub fn tensor_bytes(spec: &SynthSpec, ftype: FileType) -> Result<u64, SynthError> {
    Ok(layout(spec, None, ftype, &MixOptions::default(), "")?.out_bytes.iter().sum())
}

/// Writes the model `spec` describes to `output`; with `shard_max_bytes`, splits it into
/// shards of at most that many bytes in `output`'s folder (and removes the single file).
/// `progress` sees each tensor once written. Returns the report and the spec as written
/// (the vocabulary grows to a larger tokenizer's).
pub fn synth_file(
    spec: &SynthSpec,
    tokenizer_from: Option<&Metadata>,
    opts: &SynthOptions,
    output: &Path,
    shard_max_bytes: Option<u64>,
    progress: &mut dyn FnMut(&TensorReport),
) -> Result<(QuantizeReport, SynthSpec), SynthError> {
    let Layout { metadata, tensors, choices, out_bytes, spec } = layout(spec, tokenizer_from, opts.ftype, &opts.mix, &opts.name)?;
    let (offsets, _) = data_layout(&out_bytes, DEFAULT_ALIGNMENT);
    let entries: Vec<TensorEntry<'_>> =
        tensors.iter().zip(&choices).zip(&offsets).map(|((t, c), &offset)| TensorEntry { name: &t.name, shape: &t.shape, ty: c.ty, offset }).collect();
    let kv: Vec<(&str, &Value)> = metadata.iter().collect();

    let mut out = PartialFile::create(output)?;
    out.write(&encode_header(&kv, &entries, DEFAULT_ALIGNMENT))?;
    let rope_factors = spec.rope_factors();
    let mut reports = Vec::with_capacity(tensors.len());
    let mut packed = Vec::new();
    for (index, ((t, c), &size)) in tensors.iter().zip(&choices).zip(&out_bytes).enumerate() {
        let n = t.shape[0] as usize;
        let rows: u64 = t.shape[1..].iter().product();
        let row_out = (size / rows.max(1)) as usize;
        let slab_rows = (SLAB_VALUES / n.max(1)).max(1) as u64;
        let stream = Stream { seed: opts.seed, tensor: index as u64, init: t.init, rope_factors: &rope_factors };
        let mut row = 0;
        while row < rows {
            let k = slab_rows.min(rows - row) as usize;
            packed.resize(k * row_out, 0);
            fill_rows(&stream, c.ty, row, n, &mut packed, row_out, opts.threads).map_err(|source| SynthError::Quant { tensor: t.name.clone(), source })?;
            out.write(&packed)?;
            row += k as u64;
        }
        out.zeros((size.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - size) as usize)?;
        let elements = t.shape.iter().product::<u64>();
        let r = TensorReport {
            name: t.name.clone(),
            from: GgmlType::F32,
            to: c.ty,
            fell_back_from: c.fell_back_from,
            elements,
            bytes_in: elements * 4,
            bytes_out: size,
        };
        progress(&r);
        reports.push(r);
    }
    let (file_bytes, _) = out.finish()?;
    if let Some(max) = shard_max_bytes {
        let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::gguf::write_shards(output, max, dir)?;
        std::fs::remove_file(output).map_err(|source| crate::gguf::partial_file::WriteError { path: output.display().to_string(), source })?;
    }
    let bytes_out: u64 = reports.iter().map(|r| r.bytes_out).sum();
    let elements: u64 = reports.iter().map(|r| r.elements).sum();
    let report = QuantizeReport {
        ftype: opts.ftype.name().to_owned(),
        bytes_in: elements * 4,
        bytes_out,
        file_bytes,
        bits_per_weight: if elements == 0 { 0.0 } else { bytes_out as f64 * 8.0 / elements as f64 },
        warnings: tensors_fell_back(&reports),
        tensors: reports,
    };
    Ok((report, spec))
}

fn tensors_fell_back(reports: &[TensorReport]) -> Vec<String> {
    let n = reports.iter().filter(|r| r.fell_back_from.is_some()).count();
    if n == 0 {
        return Vec::new();
    }
    vec![format!("{n} of {} tensors took a 32-block type: their row length is not a multiple of 256", reports.len())]
}

/// The values of one tensor: value `j` of row `r` depends only on (seed, tensor, r, j).
struct Stream<'a> {
    seed: u64,
    tensor: u64,
    init: Init,
    rope_factors: &'a [f32],
}

impl Stream<'_> {
    fn row(&self, r: u64, out: &mut [f32]) {
        match self.init {
            Init::RopeFactors => out.copy_from_slice(&self.rope_factors[..out.len()]),
            Init::Norm => {
                let mut g = Rng::new(self.seed, self.tensor, r);
                out.iter_mut().for_each(|v| *v = 1.0 + 0.1 * g.uniform());
            }
            Init::Uniform { std } => {
                // Uniform on [-1, 1) has standard deviation 1/√3.
                let a = std * 3f32.sqrt();
                let mut g = Rng::new(self.seed, self.tensor, r);
                out.iter_mut().for_each(|v| *v = a * g.uniform());
            }
        }
    }
}

/// SplitMix64 (Steele et al., the JDK's SplittableRandom): one 64-bit state, a seed per row,
/// so threads can make any row alone.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, tensor: u64, row: u64) -> Rng {
        let mut g = Rng(seed ^ tensor.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        g.next();
        g
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [-1, 1), 24 bits.
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0
    }
}

/// Generates and quantizes rows `first..` of the stream into `packed` (`[rows, row_out]`),
/// rows split between `threads` threads.
fn fill_rows(s: &Stream<'_>, ty: GgmlType, first: u64, n: usize, packed: &mut [u8], row_out: usize, threads: usize) -> Result<(), crate::QuantError> {
    let rows = packed.len() / row_out.max(1);
    let per = rows.div_ceil(threads.max(1)).max(1);
    let work = |start: u64, p: &mut [u8]| -> Result<(), crate::QuantError> {
        // `[n]`: one row's values.
        let mut vals = vec![0f32; n];
        for (i, y) in p.chunks_exact_mut(row_out).enumerate() {
            s.row(start + i as u64, &mut vals);
            quantize_row(ty, &vals, y)?;
        }
        Ok(())
    };
    if threads <= 1 || rows <= 1 {
        return work(first, packed);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = packed.chunks_mut(per * row_out).enumerate().map(|(c, p)| scope.spawn(move || work(first + (c * per) as u64, p))).collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap_or(Err(crate::QuantError::Unsupported { ty, op: "quantize (a worker thread panicked)" })))
    })
}
