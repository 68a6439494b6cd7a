//! Weights on the GPU: matrices in the block layout (`layout.rs`) split into row chunks under
//! the binding limit, streamed in bounded pieces; 1-D tensors as f32.

use super::layout;
use super::recorder::{bytes_of, GpuBackend};
use crate::error::{GpuError, ModelError};
use crate::quant::GgmlType;
use wgpu::util::DeviceExt;

/// Host staging when uploading a weight: repacked in pieces of about this many bytes.
pub(crate) const UPLOAD_PIECE: usize = 8 << 20;

/// A row-aligned piece of a weight matrix in one buffer (`[rows, row_words]` u32).
pub struct WeightChunk {
    pub(super) buf: wgpu::Buffer,
    pub(super) row0: usize,
    pub(super) rows: usize,
}

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
    /// (buffer, first row, rows)
    pub(super) chunks: Vec<(&'a wgpu::Buffer, usize, usize)>,
}

impl GpuWeight {
    pub(super) fn view(&self) -> Result<MatrixView<'_>, GpuError> {
        Ok(match self {
            GpuWeight::Vector { buf, len, .. } => {
                MatrixView { ty: GgmlType::F32, rows: 1, cols: *len, row_words: layout::row_words(GgmlType::F32, *len)?, chunks: vec![(buf, 0, 1)] }
            }
            GpuWeight::Matrix { ty, rows, cols, row_words, chunks } => {
                MatrixView { ty: *ty, rows: *rows, cols: *cols, row_words: *row_words, chunks: chunks.iter().map(|c| (&c.buf, c.row0, c.rows)).collect() }
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
            self.dev.queue.write_buffer(&chunk.buf, ((row - chunk.row0) * w.row_words * 4) as u64, &self.upload_staged);
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
            chunks.push(WeightChunk { buf, row0, rows: n });
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
