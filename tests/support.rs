//! Shared helpers of the webgguf integration tests.

use std::path::PathBuf;

/// `tests/fixtures/`, the committed test data (independent of the working directory).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The GPL-3 text the oracle's perplexity, tokenizer and KV checks ran on: Debian's
/// /usr/share/common-licenses/GPL-3, copied into tests/fixtures/text/ so no test reads outside
/// the repository (sha256 in tests/fixtures/README.md).
pub fn gpl3_text() -> String {
    let p = fixtures_dir().join("text").join("GPL-3");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The workspace root (the directory holding `models/`, `tests/`, `runtime/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Path of a real model under the workspace's `models/`. Panics when it is missing: tests that
/// need a real model fail rather than skip (fetch them with `pkg-scripts/fetch-models`).
pub fn model_path(name: &str) -> PathBuf {
    let p = workspace_root().join("models").join(name);
    assert!(p.is_file(), "model {} is missing: run pkg-scripts/fetch-models (tests never skip a missing model)", p.display());
    p
}

/// Lets the CPU kernels use every core (native matmuls split rows over threads); the heavy
/// real-model tests call it so CI's two cores both work.
pub fn use_all_cores() {
    webgguf::cpu::set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
}

/// Token ids of a JSON array (oracle files).
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id array").iter().map(|x| u32::try_from(x.as_u64().expect("an id")).expect("an id fits u32")).collect()
}

/// The top token of a row of logits (lowest id among ties) and its margin over the runner-up.
pub fn top2(row: &[f32]) -> (u32, f32) {
    let id = argmax(row);
    let second = row.iter().enumerate().filter(|&(i, _)| i as u32 != id).map(|(_, &x)| x).fold(f32::MIN, f32::max);
    (id, row[id as usize] - second)
}

/// Index of the largest of `row` (lowest among ties).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// A fresh directory under the system temp dir (named after `tag` and the process), removed on
/// drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("webgguf-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A seeded xorshift stream of floats in [-1, 1): the same data on every platform.
pub fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}
