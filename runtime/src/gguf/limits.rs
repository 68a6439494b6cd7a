//! Explicit bounds on everything a GGUF header may ask the reader to allocate or walk.

/// Bounds checked against every count and length read from a file before it is used.
/// The defaults admit every real model we know of (a 262,144-token vocabulary, 5,000-tensor
/// MoE models, 16 KiB chat templates) while keeping a hostile header's allocations small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest string (key, value, tensor name), bytes.
    pub max_string_len: u64,
    /// Most elements in one metadata array.
    pub max_array_len: u64,
    /// Deepest nesting of arrays (an array of scalars has depth 1).
    pub max_array_depth: u32,
    /// Most metadata entries.
    pub max_kv: u64,
    /// Most tensor infos in one file.
    pub max_tensors: u64,
    /// Most bytes the whole header (magic … tensor infos + padding) may span.
    pub max_header_bytes: u64,
    /// Largest `general.alignment`.
    pub max_alignment: u64,
    /// Most bytes of tensor data one file may describe.
    pub max_data_bytes: u64,
}

/// ggml tensors have at most four dimensions (GGML_MAX_DIMS); not configurable.
pub const MAX_DIMS: u32 = 4;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string_len: 1 << 20,
            max_array_len: 1 << 22,
            max_array_depth: 3,
            max_kv: 1 << 16,
            max_tensors: 1 << 16,
            max_header_bytes: 256 << 20,
            max_alignment: 1 << 16,
            max_data_bytes: 1 << 40,
        }
    }
}
