//! Bounded, incremental GGUF reader (v2 and v3, little-endian).
//!
//! Hand-written rather than taken from a crate because every field must be validated before
//! use against explicit [`Limits`] and the bytes actually present, and because the loader
//! parses from a growing prefix of a network stream ([`parse_header`] answers
//! [`Parsed::NeedMore`]) without ever holding the whole file.
//!
//! - `cursor`: bounds-checked little-endian reads over a prefix
//! - `header`: magic, version, metadata, tensor infos and their validation
//! - `metadata`: the key/value map and typed accessors
//! - `split`: split-GGUF shards assembled into one model
//! - `writer`: encoders and a builder for writing files
//! - `shard_writer`: splitting a file into llama.cpp split shards + manifest.json (native)
//! - `partial_file`: output written under a temporary name, renamed when complete (native)

mod cursor;
mod header;
mod limits;
mod metadata;
#[cfg(not(target_arch = "wasm32"))]
pub mod partial_file;
#[cfg(not(target_arch = "wasm32"))]
pub mod shard_writer;
mod split;
mod value;
pub mod writer;

pub use header::{parse_header, GgufHeader, Parsed, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC};
pub use limits::{Limits, MAX_DIMS};
pub use metadata::{Hyperparameters, Metadata, TokenizerMetadata};
#[cfg(not(target_arch = "wasm32"))]
pub use shard_writer::{write_shards, ShardError};
pub use split::{GgufModel, SplitInfo, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
pub use value::{Array, Value, ValueType};

use crate::error::GgufError;

/// Errors from reading a header out of a byte stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadHeaderError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads just enough of `reader` (a file of `file_size` bytes, if known) to parse its header,
/// growing the buffer from 1 MiB (doubling, by at most 1 MiB a step), so at most the header + 1
/// MiB is read. Memory stays within the header size limit.
pub fn read_header<R: std::io::Read>(mut reader: R, file_size: Option<u64>, limits: &Limits) -> Result<GgufHeader, ReadHeaderError> {
    let mut buf = Vec::new();
    let mut want: u64 = 1 << 20;
    loop {
        let cap = file_size.unwrap_or(u64::MAX).min(limits.max_header_bytes);
        let target = want.min(cap).max(buf.len() as u64 + 1);
        let have = buf.len() as u64;
        let got = std::io::Read::read_to_end(&mut std::io::Read::take(&mut reader, target - have), &mut buf)? as u64;
        let eof = got < target - have;
        // A prefix that ends at EOF is the whole file: its size is now known.
        let size = if eof { Some(buf.len() as u64) } else { file_size };
        match parse_header(&buf, size, limits)? {
            Parsed::Header(h) => return Ok(*h),
            Parsed::NeedMore { total } => {
                // Doubling, but by at most 1 MiB: `total` never passes the header's end, so
                // the bytes read stay within the header + 1 MiB (the planner's promise before
                // an early error), at the cost of more re-parses of headers over 2 MiB.
                let have = buf.len() as u64;
                want = total.max(have + have.min(1 << 20));
            }
        }
    }
}

/// Opens a GGUF file and parses its header (native only).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_header_from_path(path: &std::path::Path, limits: &Limits) -> Result<GgufHeader, ReadHeaderError> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    read_header(std::io::BufReader::new(f), Some(size), limits)
}
