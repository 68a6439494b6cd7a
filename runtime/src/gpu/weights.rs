//! Weights on the GPU: matrices in the block layout (`layout.rs`) split into row chunks under
//! the binding limit, streamed in bounded pieces; 1-D tensors as f32.

use super::layout;
use super::recorder::{bytes_of, GpuBackend};
use crate::error::{GpuError, ModelError};
use crate::quant::GgmlType;
use wgpu::util::DeviceExt;

/// Host staging when uploading a weight: repacked in pieces of about this many bytes.
pub(crate) const UPLOAD_PIECE: usize = 8 << 20;

/// A row-aligned piece of a weight matrix in one buffer (`[rows, row_words]` u32 from word
/// `word0`: weights read by one kernel share a buffer, see [`GpuBackend::expect_gpu_weights`]).
pub struct WeightChunk {
    pub(super) buf: wgpu::Buffer,
    pub(super) word0: usize,
    pub(super) row0: usize,
    pub(super) rows: usize,
}

/// Where an expected weight will live: its place in a buffer shared with the weights it is
/// read with, reserved before its bytes arrive.
pub(super) struct SlabPlace {
    buf: wgpu::Buffer,
    word0: usize,
    ty: GgmlType,
    rows: usize,
    row_words: usize,
}

/// Weights one kernel reads together (`matvec3`, `matvec_glu`), by tensor-name suffix within
/// a layer; members after the first join only with the first's type and width (v also with a
/// type `matvec3` can pair with q/k's).
const FUSED_GROUPS: [&[&str]; 2] = [&[".attn_q.weight", ".attn_k.weight", ".attn_v.weight"], &[".ffn_gate.weight", ".ffn_up.weight"]];

/// A weight on the device: 1-D tensors (norms, biases, rope factors) as f32, matrices in the GPU
/// block layout, split into chunks no larger than the binding limit.
pub enum GpuWeight {
    /// `[len]` f32, with a host copy (rope frequency factors are read on the host)
    Vector {
        buf: wgpu::Buffer,
        len: usize,
        host: Vec<f32>,
    },
    Matrix {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        row_words: usize,
        chunks: Vec<WeightChunk>,
    },
}

/// A weight seen as a matrix: a vector is one F32 row.
pub(super) struct MatrixView<'a> {
    pub(super) ty: GgmlType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_words: usize,
    pub(super) chunks: Vec<ChunkView<'a>>,
}

/// One chunk of a [`MatrixView`]: rows `row0..row0 + rows` from word `word0` of `buf`.
#[derive(Clone, Copy)]
pub(super) struct ChunkView<'a> {
    pub(super) buf: &'a wgpu::Buffer,
    pub(super) word0: usize,
    pub(super) row0: usize,
    pub(super) rows: usize,
}

impl GpuWeight {
    pub(super) fn view(&self) -> Result<MatrixView<'_>, GpuError> {
        Ok(match self {
            GpuWeight::Vector { buf, len, .. } => {
                let chunks = vec![ChunkView { buf, word0: 0, row0: 0, rows: 1 }];
                MatrixView { ty: GgmlType::F32, rows: 1, cols: *len, row_words: layout::row_words(GgmlType::F32, *len)?, chunks }
            }
            GpuWeight::Matrix { ty, rows, cols, row_words, chunks } => {
                let chunks = chunks.iter().map(|c| ChunkView { buf: &c.buf, word0: c.word0, row0: c.row0, rows: c.rows }).collect();
                MatrixView { ty: *ty, rows: *rows, cols: *cols, row_words: *row_words, chunks }
            }
        })
    }
}

/// A matrix being uploaded: its buffers exist; rows arrive in order. Host memory held: the
/// part of one row not yet complete (`carry`), plus [`UPLOAD_PIECE`] of repacked words while a
/// piece is written. 1-D tensors keep their (small) bytes in `carry` until finished.
pub struct PendingGpuWeight {
    pub(super) name: String,
    pub(super) ty: GgmlType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_bytes: usize,
    pub(super) row_words: usize,
    /// Tensor bytes (GGUF layout) expected and received so far.
    pub(super) bytes: u64,
    pub(super) written: u64,
    /// Empty for a 1-D tensor.
    pub(super) chunks: Vec<WeightChunk>,
    /// `[< row_bytes]` the start of the next row (a whole 1-D tensor)
    pub(super) carry: Vec<u8>,
}

/// Uploads written but not yet submitted, above which a submission lets wgpu free its staging
/// copies (natively they are held until the next submit; the browser copies at writeBuffer).
pub(super) const UNSUBMITTED_UPLOAD_LIMIT: u64 = 64 << 20;

impl GpuBackend {
    /// Repacks whole rows `src` (`[n, row_bytes]`, starting at row `row`) into `w`'s buffers in
    /// pieces of at most [`UPLOAD_PIECE`].
    pub(super) fn upload_rows(&mut self, w: &PendingGpuWeight, mut row: usize, mut src: &[u8]) -> Result<(), ModelError> {
        let piece_rows = (UPLOAD_PIECE / (w.row_words * 4)).max(1);
        while !src.is_empty() {
            let Some(chunk) = w.chunks.iter().find(|c| row >= c.row0 && row < c.row0 + c.rows) else {
                return Err(ModelError::TensorRead { name: w.name.clone(), message: format!("row {row} is past the {} rows", w.rows) });
            };
            let n = piece_rows.min(chunk.row0 + chunk.rows - row).min(src.len() / w.row_bytes);
            let (piece, rest) = src.split_at(n * w.row_bytes);
            self.upload_staged.clear();
            layout::repack(w.ty, piece, &mut self.upload_staged)?;
            self.dev.queue.write_buffer(&chunk.buf, ((chunk.word0 + (row - chunk.row0) * w.row_words) * 4) as u64, &self.upload_staged);
            self.unsubmitted_upload += self.upload_staged.len() as u64;
            if self.unsubmitted_upload > UNSUBMITTED_UPLOAD_LIMIT {
                self.dev.queue.submit(std::iter::empty());
                self.unsubmitted_upload = 0;
            }
            row += n;
            src = rest;
        }
        Ok(())
    }

    pub(super) fn upload_vector(&mut self, name: &str, v: &[f32]) -> GpuWeight {
        let buf = self.dev.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents: bytes_of(v),
            usage: wgpu::BufferUsages::STORAGE,
        });
        GpuWeight::Vector { buf, len: v.len(), host: v.to_vec() }
    }
}

impl GpuBackend {
    /// Chunks a matrix weight was split into.
    pub fn chunk_count(w: &GpuWeight) -> usize {
        match w {
            GpuWeight::Vector { .. } => 1,
            GpuWeight::Matrix { chunks, .. } => chunks.len(),
        }
    }

    /// Reserves one buffer for each group of expected weights a kernel reads together (a
    /// layer's q/k/v of one type, its gate/up), when the group fits one binding; the others get
    /// their own buffers as they arrive.
    pub(crate) fn expect_gpu_weights(&mut self, tensors: &[(&str, GgmlType, &[u64])]) -> Result<(), ModelError> {
        let limit = self.max_chunk_bytes.unwrap_or(self.dev.max_binding()).min(self.dev.max_binding());
        // Places left from an earlier shard or a failed load are stale (a shard's tensors all
        // arrive before the next shard's list).
        self.slab_places.clear();
        let by_name: std::collections::HashMap<&str, (GgmlType, &[u64])> = tensors.iter().map(|&(n, ty, shape)| (n, (ty, shape))).collect();
        for &(name, ty, shape) in tensors {
            for group in FUSED_GROUPS {
                let Some(prefix) = name.strip_suffix(group[0]) else { continue };
                let Some(&cols) = shape.first() else { continue };
                // (name, type, rows, row words) of the members that match the first's type (or,
                // for v, mix with it in matvec3) and width
                let members: Vec<(String, GgmlType, usize, usize)> = group
                    .iter()
                    .filter_map(|suffix| {
                        let n = format!("{prefix}{suffix}");
                        let &(t, sh) = by_name.get(n.as_str())?;
                        let third_mixes = n.ends_with(".attn_v.weight") && super::matmul::mixes_in_matvec3(ty, t);
                        let same = (t == ty || third_mixes) && sh.len() == 2 && sh[0] == cols && sh[1] > 1;
                        Some((n, t, sh.get(1).copied()? as usize, layout::row_words(t, cols as usize).ok()?)).filter(|_| same)
                    })
                    .collect();
                let bytes: u64 = members.iter().map(|m| (m.2 as u64).saturating_mul(m.3 as u64 * 4)).fold(0, u64::saturating_add);
                if members.len() < 2 || members.first().is_none_or(|m| m.0 != name) || bytes > limit {
                    continue;
                }
                let buf = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(name),
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut word0 = 0;
                for (n, ty, rows, row_words) in members {
                    self.slab_places.insert(n, SlabPlace { buf: buf.clone(), word0, ty, rows, row_words });
                    word0 += rows * row_words;
                }
            }
        }
        self.dev.check()?;
        Ok(())
    }

    pub(super) fn begin_gpu_weight(&mut self, name: &str, ty: GgmlType, shape: &[u64]) -> Result<PendingGpuWeight, ModelError> {
        // A new model may place its rope factors where an old one's were; cached bind groups
        // would keep an old model's buffers alive.
        self.rope_tables.clear();
        self.bind_groups.clear();
        let bytes = crate::model::tensor_bytes(name, ty, shape)?;
        let cols = shape.first().copied().unwrap_or(1) as usize;
        let rows = shape.iter().skip(1).product::<u64>() as usize;
        let unsupported = || ModelError::UnsupportedTensorType { name: name.to_owned(), ty };
        let row_bytes = ty.row_bytes(cols as u64).map(|b| b as usize).ok_or_else(unsupported)?;
        if rows == 1 {
            // 1-D tensors (norms, biases) are dequantized to f32 at the end: keep their bytes.
            if !ty.is_supported() {
                return Err(unsupported());
            }
            return Ok(PendingGpuWeight {
                name: name.to_owned(),
                ty,
                rows,
                cols,
                row_bytes,
                bytes,
                written: 0,
                row_words: 0,
                chunks: Vec::new(),
                carry: Vec::new(),
            });
        }
        let row_words = layout::row_words(ty, cols).map_err(|_| unsupported())?;
        let limit = self.max_chunk_bytes.unwrap_or(self.dev.max_binding()).min(self.dev.max_binding());
        let rows_per_chunk = layout::rows_per_chunk(name, row_words, rows, limit)?;
        if let Some(place) = self.slab_places.remove(name) {
            if place.ty == ty && place.rows == rows && place.row_words == row_words {
                let chunks = vec![WeightChunk { buf: place.buf, word0: place.word0, row0: 0, rows }];
                return Ok(PendingGpuWeight { name: name.to_owned(), ty, rows, cols, row_bytes, bytes, written: 0, row_words, chunks, carry: Vec::new() });
            }
        }
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let buf = self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size: (n * row_words * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            chunks.push(WeightChunk { buf, word0: 0, row0, rows: n });
            row0 += n;
        }
        // An allocation the device refused shows here rather than at the first op.
        self.dev.check()?;
        Ok(PendingGpuWeight { name: name.to_owned(), ty, rows, cols, row_bytes, bytes, written: 0, row_words, chunks, carry: Vec::new() })
    }

    pub(super) fn write_gpu_weight(&mut self, w: &mut PendingGpuWeight, mut bytes: &[u8]) -> Result<(), ModelError> {
        let total = w.written + bytes.len() as u64;
        if total > w.bytes {
            return Err(ModelError::TensorRead { name: w.name.clone(), message: format!("{total} bytes written, the tensor has {}", w.bytes) });
        }
        let before = w.written;
        w.written = total;
        if w.chunks.is_empty() {
            w.carry.extend_from_slice(bytes);
            return Ok(());
        }
        // Rows are repacked whole: complete the row held back from the last piece first.
        let mut row = ((before - w.carry.len() as u64) / w.row_bytes as u64) as usize;
        if !w.carry.is_empty() {
            let take = (w.row_bytes - w.carry.len()).min(bytes.len());
            w.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if w.carry.len() == w.row_bytes {
                self.upload_rows(w, row, &w.carry)?;
                w.carry.clear();
                row += 1;
            }
        }
        let whole = bytes.len() / w.row_bytes * w.row_bytes;
        self.upload_rows(w, row, &bytes[..whole])?;
        w.carry.extend_from_slice(&bytes[whole..]);
        Ok(())
    }

    pub(super) fn finish_gpu_weight(&mut self, w: PendingGpuWeight) -> Result<GpuWeight, ModelError> {
        if w.written != w.bytes {
            return Err(ModelError::TensorRead { name: w.name, message: format!("{} of {} bytes arrived", w.written, w.bytes) });
        }
        if w.chunks.is_empty() {
            let mut v = vec![0f32; w.cols];
            crate::quant::dequantize_row(w.ty, &w.carry, &mut v)?;
            return Ok(self.upload_vector(&w.name, &v));
        }
        self.dev.check()?;
        Ok(GpuWeight::Matrix { ty: w.ty, rows: w.rows, cols: w.cols, row_words: w.row_words, chunks: w.chunks })
    }
}
