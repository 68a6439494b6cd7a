//! Getting model bytes to a backend. Natively: shard files on disk. (Streaming over fetch,
//! caching and resume arrive with the loader issue.)

use crate::error::ModelError;
use crate::gguf::{self, GgufModel, Limits};

/// Errors of opening model files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: malformed GGUF: {source}")]
    Gguf { path: String, source: crate::GgufError },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Parses the headers of every shard (any order) and opens them for reading.
#[cfg(not(target_arch = "wasm32"))]
pub fn open_files(paths: &[std::path::PathBuf]) -> Result<(GgufModel, crate::model::FileSource), LoadError> {
    let mut headers = Vec::with_capacity(paths.len());
    // (shard number, path), so files can be opened in shard order once the split checks out.
    let mut order = Vec::with_capacity(paths.len());
    for p in paths {
        let path = p.display().to_string();
        let h = gguf::read_header_from_path(p, &Limits::default()).map_err(|e| match e {
            gguf::ReadHeaderError::Gguf(source) => LoadError::Gguf { path: path.clone(), source },
            gguf::ReadHeaderError::Io(source) => LoadError::Io { path: path.clone(), source },
        })?;
        let no = h.split().map_err(|source| LoadError::Gguf { path: path.clone(), source })?.map_or(0, |s| s.no);
        order.push((no, p));
        headers.push(h);
    }
    let first = paths.first().map(|p| p.display().to_string()).unwrap_or_default();
    let model = GgufModel::new(headers).map_err(|source| LoadError::Gguf { path: first, source })?;
    order.sort_by_key(|(no, _)| *no);
    let mut files = Vec::with_capacity(order.len());
    for (_, p) in order {
        files.push(std::fs::File::open(p).map_err(|source| LoadError::Io { path: p.display().to_string(), source })?);
    }
    Ok((model, crate::model::FileSource(files)))
}

/// Parses a model held entirely in memory (one slice per shard, any order).
pub fn parse_bytes(shards: &[&[u8]]) -> Result<GgufModel, LoadError> {
    let mut headers = Vec::with_capacity(shards.len());
    for (i, b) in shards.iter().enumerate() {
        match gguf::parse_header(b, Some(b.len() as u64), &Limits::default()) {
            Ok(gguf::Parsed::Header(h)) => headers.push(*h),
            Ok(gguf::Parsed::NeedMore { total }) => {
                return Err(LoadError::Gguf {
                    path: format!("shard {i}"),
                    source: crate::GgufError::Truncated { what: "header", needed: total, file_size: b.len() as u64 },
                })
            }
            Err(source) => return Err(LoadError::Gguf { path: format!("shard {i}"), source }),
        }
    }
    GgufModel::new(headers).map_err(|source| LoadError::Gguf { path: "model".into(), source })
}
