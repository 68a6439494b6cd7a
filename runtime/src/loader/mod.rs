//! Getting model bytes to a backend: one streaming path ([`ModelStream`]) fed from files
//! natively, from memory, or from fetch in the browser (`web/`), plus the shard manifest.

pub mod manifest;
mod stream;

pub use stream::ModelStream;

use crate::error::ModelError;
use crate::gguf::GgufModel;
#[cfg(not(target_arch = "wasm32"))]
use crate::gguf::{self, Limits};
use crate::model::{Backend, Model};

/// Errors of loading a model. `code()` gives a stable name for each kind (the JS API's codes).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: malformed GGUF: {source}")]
    Gguf { path: String, source: crate::GgufError },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// Shards must arrive in order: shard k carries `split.no = k`.
    #[error("{shard}: expected shard {expected} of the split here, the file says split.no = {found}")]
    ShardOrder { shard: String, expected: usize, found: usize },
    #[error("{shard}: the model has only {count} shards")]
    ExtraShard { shard: String, count: usize },
    #[error("{shard}: ended after {got} bytes; {what} needs {needed}")]
    ShardTruncated { shard: String, got: u64, what: String, needed: u64 },
    #[error("{shard}: more than the {expected} bytes announced")]
    ShardTooLong { shard: String, expected: u64 },
    /// A response that is not the file: 404, 500, or 200 where a range was asked for and the
    /// server's answer cannot be used.
    #[error("{url}: HTTP {status}{detail}")]
    Http { url: String, status: u16, detail: String },
    /// The body does not start with the GGUF magic (an HTML error page served with 200…).
    #[error("{url}: not a GGUF file (starts with {start:?}, content-type {content_type:?})")]
    NotGguf { url: String, start: String, content_type: String },
    /// Length announced by the server disagrees with the manifest or with Content-Range.
    #[error("{url}: {what}: expected {expected}, the server says {found}")]
    Length { url: String, what: String, expected: u64, found: u64 },
    /// The connection failed and retries (resuming with Range) did not get the rest.
    #[error("{url}: network error after {attempts} attempts at byte {at}: {message}")]
    Network { url: String, attempts: u32, at: u64, message: String },
    /// sha256 of the bytes received differs from the manifest's.
    #[error("{url}: sha256 {found} does not match the manifest's {expected}")]
    Integrity { url: String, expected: String, found: String },
    /// The caller's AbortSignal fired.
    #[error("loading was aborted")]
    Aborted,
    /// Browser storage failed in a way that is not "full" (that only disables caching).
    #[error("cache: {0}")]
    Cache(String),
    /// The model could not be cached (storage full, over `maxCacheBytes`) and the caller
    /// required it to be (`requireCache`, e.g. for offline use).
    #[error("the model could not be stored: {0}")]
    Quota(String),
    /// Loader API misuse (feeding bytes with no shard begun…).
    #[error("loader: {0}")]
    Sequence(String),
}

impl LoadError {
    /// A stable code per kind of failure.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io",
            LoadError::Gguf { .. } | LoadError::NotGguf { .. } => "malformed",
            LoadError::Model(ModelError::Gpu(_)) => "gpu",
            LoadError::Model(_) => "model",
            LoadError::Manifest(_) => "manifest",
            LoadError::ShardOrder { .. } | LoadError::ExtraShard { .. } => "shards",
            LoadError::ShardTruncated { .. } | LoadError::ShardTooLong { .. } | LoadError::Length { .. } => "length",
            LoadError::Http { .. } => "http",
            LoadError::Network { .. } => "network",
            LoadError::Integrity { .. } => "integrity",
            LoadError::Aborted => "aborted",
            LoadError::Cache(_) => "cache",
            LoadError::Quota(_) => "quota",
            LoadError::Sequence(_) => "internal",
        }
    }
}

/// Reads the headers of every shard (any order) and assembles them: what `inspect` shows.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_headers(paths: &[std::path::PathBuf]) -> Result<GgufModel, LoadError> {
    let mut headers = Vec::with_capacity(paths.len());
    for p in paths {
        headers.push(read_header(p)?);
    }
    let first = paths.first().map(|p| p.display().to_string()).unwrap_or_default();
    GgufModel::new(headers).map_err(|source| LoadError::Gguf { path: first, source })
}

#[cfg(not(target_arch = "wasm32"))]
fn read_header(p: &std::path::Path) -> Result<gguf::GgufHeader, LoadError> {
    let path = p.display().to_string();
    gguf::read_header_from_path(p, &Limits::default()).map_err(|e| match e {
        gguf::ReadHeaderError::Gguf(source) => LoadError::Gguf { path, source },
        gguf::ReadHeaderError::Io(source) => LoadError::Io { path, source },
    })
}

/// Bytes read from a file per piece fed to the stream.
#[cfg(not(target_arch = "wasm32"))]
const READ_PIECE: usize = 4 << 20;

/// Loads a model from its shard files (any order) onto `backend`, streaming each file through
/// [`ModelStream`] in pieces of 4 MiB.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_files<B: Backend>(paths: &[std::path::PathBuf], backend: &mut B) -> Result<(GgufModel, Model<B>), LoadError> {
    use std::io::Read;
    // The stream takes shards in split order: the headers say which is which.
    let mut order = Vec::with_capacity(paths.len());
    for p in paths {
        let split = read_header(p)?.split().map_err(|source| LoadError::Gguf { path: p.display().to_string(), source })?;
        order.push((split.map_or(0, |s| s.no), p));
    }
    order.sort_by_key(|(no, _)| *no);
    let mut stream = ModelStream::default();
    let mut buf = vec![0u8; READ_PIECE];
    for (_, p) in order {
        let path = p.display().to_string();
        let io = |source| LoadError::Io { path: path.clone(), source };
        let mut f = std::fs::File::open(p).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        stream.begin_shard(&path, Some(size))?;
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            stream.feed(backend, &buf[..n])?;
        }
        stream.end_shard(backend)?;
    }
    stream.finish()
}

/// Loads a model held in memory (one slice per shard, in split order) onto `backend`.
pub fn load_bytes<B: Backend>(shards: &[&[u8]], backend: &mut B) -> Result<(GgufModel, Model<B>), LoadError> {
    let mut stream = ModelStream::default();
    for (i, b) in shards.iter().enumerate() {
        stream.begin_shard(&format!("shard {i}"), Some(b.len() as u64))?;
        stream.feed(backend, b)?;
        stream.end_shard(backend)?;
    }
    stream.finish()
}
