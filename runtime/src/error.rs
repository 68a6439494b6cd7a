//! Errors, one enum per layer. Every validation rule has its own variant carrying the
//! offending numbers, so tests can assert exactly which rule fired and users see why.

use crate::quant::GgmlType;
use thiserror::Error;

/// Errors of the scalar quantization layer (`quant/`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QuantError {
    #[error("{ty}: {n} elements is not a multiple of the block size {block}")]
    NotBlockMultiple { ty: GgmlType, n: usize, block: usize },
    #[error("{what} for {ty}: expected {expected} bytes, got {got}")]
    BufferSize { what: &'static str, ty: GgmlType, expected: usize, got: usize },
    #[error("{op} is not supported for tensor type {ty}")]
    Unsupported { ty: GgmlType, op: &'static str },
}
