//! KV cache storage types. (The cache itself arrives with the CPU engine; for now the
//! storage formats and their sizes, used by memory estimates.)

use serde::Serialize;

/// How K and V rows are stored: plain floats, or quantized in groups of 32 values per
/// (token, head) with one f16 scale per group (the Q8_0 / Q4_0 block layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    F32,
    F16,
    Q8,
    Q4,
}

impl KvType {
    pub fn from_name(s: &str) -> Option<KvType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            "q8" => KvType::Q8,
            "q4" => KvType::Q4,
            _ => return None,
        })
    }

    /// Bytes for `n` values (n a multiple of 32 for the quantized types; rounded up otherwise).
    pub fn bytes_for(self, n: u64) -> u64 {
        let groups = n.div_ceil(32);
        match self {
            KvType::F32 => n * 4,
            KvType::F16 => n * 2,
            KvType::Q8 => groups * 34,
            KvType::Q4 => groups * 18,
        }
    }
}
