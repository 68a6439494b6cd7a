//! A file written as `NAME.partial`, hashed as it goes, synced and renamed to `NAME` when
//! finished and removed if dropped before that: an interrupted writer (sharder, quantizer)
//! never leaves a short file under a final name.

use crate::loader::manifest::hex;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writing or renaming the output failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct WriteError {
    pub path: String,
    pub source: std::io::Error,
}

pub struct PartialFile {
    file: Option<File>,
    partial: PathBuf,
    path: PathBuf,
    hasher: Sha256,
    bytes: u64,
    finished: bool,
}

impl PartialFile {
    pub fn create(path: &Path) -> Result<PartialFile, WriteError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = path.with_file_name(name);
        let file = File::create(&partial).map_err(|e| Self::err(&partial, e))?;
        Ok(PartialFile { file: Some(file), partial, path: path.to_owned(), hasher: Sha256::new(), bytes: 0, finished: false })
    }

    fn err(partial: &Path, source: std::io::Error) -> WriteError {
        WriteError { path: partial.display().to_string(), source }
    }

    pub fn write(&mut self, b: &[u8]) -> Result<(), WriteError> {
        let f = self.file.as_mut().ok_or_else(|| Self::err(&self.partial, std::io::ErrorKind::NotConnected.into()))?;
        f.write_all(b).map_err(|e| Self::err(&self.partial, e))?;
        self.hasher.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// Writes `n` zero bytes (alignment padding).
    pub fn zeros(&mut self, mut n: usize) -> Result<(), WriteError> {
        let zeros = [0u8; 256];
        while n > 0 {
            let k = n.min(zeros.len());
            self.write(&zeros[..k])?;
            n -= k;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Syncs (so a crash after the rename cannot expose a short file), closes, renames, and
    /// returns the size and sha256 (hex).
    pub fn finish(mut self) -> Result<(u64, String), WriteError> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| Self::err(&self.partial, e))?;
        }
        std::fs::rename(&self.partial, &self.path).map_err(|e| Self::err(&self.partial, e))?;
        self.finished = true;
        let digest = std::mem::take(&mut self.hasher).finalize();
        Ok((self.bytes, hex(&digest)))
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        // Not finished (an error on the way): leave no partial file behind.
        if !self.finished {
            self.file = None;
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
