//! `manifest.json`: the list of a sharded model's files, written by `webgguf shard` next to the
//! split GGUF files (llama.cpp's `…-0000k-of-0000n.gguf`) and read by the loaders.
//!
//! ```json
//! {"shards":[{"file":"m-00001-of-00003.gguf","bytes":123,"sha256":"ab…"}, …],
//!  "tensors":272, "model":{"architecture":"llama","name":"SmolLM2","file_type":"Q4_1","bytes":98362432}}
//! ```
//! File names are relative to the manifest. `sha256` is optional (lowercase hex); when present
//! the loader verifies every byte of the shard against it.

use serde::{Deserialize, Serialize};

/// Largest manifest accepted: a manifest lists shards, it is never large.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// More shards than this is not a model anybody ships (llama.cpp's names allow 99,999).
pub const MAX_SHARDS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestShard {
    /// Relative to the manifest's location.
    pub file: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What the model is, for pickers and cache listings (informational: the GGUF metadata rules).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
    /// Sum of the shards' sizes.
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub shards: Vec<ManifestShard>,
    /// Tensors across all shards.
    pub tensors: u64,
    #[serde(default)]
    pub model: ManifestModel,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes (at most {MAX_MANIFEST_BYTES})")]
    TooLarge(usize),
    #[error("manifest is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("manifest lists no shards")]
    Empty,
    #[error("manifest lists {0} shards (at most {MAX_SHARDS})")]
    TooManyShards(usize),
    #[error("manifest shard {index}: file name {file:?} must be a plain relative path (no '/', '\\\\', '..', scheme or query)")]
    BadFileName { index: usize, file: String },
    #[error("manifest shard {index} ({file}): sha256 {sha256:?} is not 64 lowercase hex digits")]
    BadSha256 { index: usize, file: String, sha256: String },
    #[error("manifest shard {index} ({file}) has 0 bytes")]
    EmptyShard { index: usize, file: String },
}

impl Manifest {
    /// Parses and validates a manifest's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.shards.is_empty() {
            return Err(ManifestError::Empty);
        }
        if self.shards.len() > MAX_SHARDS {
            return Err(ManifestError::TooManyShards(self.shards.len()));
        }
        for (index, s) in self.shards.iter().enumerate() {
            // Names resolve against the manifest's URL or folder: keep them inside it.
            let bad = s.file.is_empty() || s.file == "." || s.file.contains(['/', '\\', '?', '#', ':']) || s.file.starts_with("..");
            if bad {
                return Err(ManifestError::BadFileName { index, file: s.file.clone() });
            }
            if s.bytes == 0 {
                return Err(ManifestError::EmptyShard { index, file: s.file.clone() });
            }
            if let Some(h) = &s.sha256 {
                if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
                    return Err(ManifestError::BadSha256 { index, file: s.file.clone(), sha256: h.clone() });
                }
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(file: &str) -> ManifestShard {
        ManifestShard { file: file.into(), bytes: 10, sha256: None }
    }

    #[test]
    fn round_trip_and_validation() {
        let m = Manifest { shards: vec![shard("a-00001-of-00002.gguf"), shard("a-00002-of-00002.gguf")], tensors: 3, model: ManifestModel::default() };
        assert_eq!(Manifest::parse(m.to_json().as_bytes()).unwrap(), m);
        for bad in ["../x.gguf", "dir/x.gguf", "http://h/x", "x?y", ""] {
            let m = Manifest { shards: vec![shard(bad)], tensors: 1, model: ManifestModel::default() };
            assert!(matches!(Manifest::parse(m.to_json().as_bytes()), Err(ManifestError::BadFileName { .. })), "{bad}");
        }
        let mut s = shard("x.gguf");
        s.sha256 = Some("AB".into());
        let m = Manifest { shards: vec![s], tensors: 1, model: ManifestModel::default() };
        assert!(matches!(Manifest::parse(m.to_json().as_bytes()), Err(ManifestError::BadSha256 { .. })));
        assert!(matches!(Manifest::parse(b"{\"shards\":[],\"tensors\":0}"), Err(ManifestError::Empty)));
        assert!(matches!(Manifest::parse(b"<html>"), Err(ManifestError::Json(_))));
    }
}
