//! The quantization mixes `webgguf quantize --type` offers: llama.cpp's `llama_ftype` values
//! (written to `general.file_type`) and their base tensor type
//! (`llama_ftype_get_default_type` in llama-quant.cpp).

use crate::quant::GgmlType;

/// A file type: the base type for quantizable tensors plus, for the `_S`/`_M` variants, the
/// per-tensor rules of [`super::mix`].
// Named as llama.cpp spells them (Q4_K_M), like GgmlType.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6_K,
    Q5_K_M,
    Q5_K_S,
    Q5_1,
    Q5_0,
    Q4_K_M,
    Q4_K_S,
    Q4_1,
    Q4_0,
    Q3_K_L,
    Q3_K_M,
    Q3_K_S,
    Q2_K,
}

/// (file type, llama_ftype id, name, base type); most bits first.
const TABLE: [(FileType, u32, &str, GgmlType); 17] = [
    (FileType::F32, 0, "F32", GgmlType::F32),
    (FileType::F16, 1, "F16", GgmlType::F16),
    (FileType::BF16, 32, "BF16", GgmlType::BF16),
    (FileType::Q8_0, 7, "Q8_0", GgmlType::Q8_0),
    (FileType::Q6_K, 18, "Q6_K", GgmlType::Q6_K),
    (FileType::Q5_K_M, 17, "Q5_K_M", GgmlType::Q5_K),
    (FileType::Q5_K_S, 16, "Q5_K_S", GgmlType::Q5_K),
    (FileType::Q5_1, 9, "Q5_1", GgmlType::Q5_1),
    (FileType::Q5_0, 8, "Q5_0", GgmlType::Q5_0),
    (FileType::Q4_K_M, 15, "Q4_K_M", GgmlType::Q4_K),
    (FileType::Q4_K_S, 14, "Q4_K_S", GgmlType::Q4_K),
    (FileType::Q4_1, 3, "Q4_1", GgmlType::Q4_1),
    (FileType::Q4_0, 2, "Q4_0", GgmlType::Q4_0),
    (FileType::Q3_K_L, 13, "Q3_K_L", GgmlType::Q3_K),
    (FileType::Q3_K_M, 12, "Q3_K_M", GgmlType::Q3_K),
    (FileType::Q3_K_S, 11, "Q3_K_S", GgmlType::Q3_K),
    (FileType::Q2_K, 10, "Q2_K", GgmlType::Q2_K),
];

impl FileType {
    fn row(self) -> &'static (FileType, u32, &'static str, GgmlType) {
        // Every variant is in TABLE once (unit test).
        let mut i = 0;
        while TABLE[i].0 != self {
            i += 1;
        }
        &TABLE[i]
    }

    /// Every file type, most bits first.
    pub fn all() -> impl Iterator<Item = FileType> {
        TABLE.iter().map(|r| r.0)
    }

    /// The type named `name` ("Q4_K_M"), case-insensitive.
    pub fn from_name(name: &str) -> Option<FileType> {
        TABLE.iter().find(|r| r.2.eq_ignore_ascii_case(name)).map(|r| r.0)
    }

    /// The value written to `general.file_type` (`llama_ftype`).
    pub fn id(self) -> u32 {
        self.row().1
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// The type quantizable tensors get unless a rule says otherwise.
    pub fn base_type(self) -> GgmlType {
        self.row().3
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_consistent() {
        for (i, r) in TABLE.iter().enumerate() {
            assert_eq!(r.0.row().1, r.1);
            assert_eq!(FileType::from_name(&r.2.to_lowercase()), Some(r.0));
            assert!(TABLE[..i].iter().all(|o| o.0 != r.0 && o.1 != r.1), "{} twice", r.2);
            // The same ids and names as the sharder's manifest uses (native only).
            #[cfg(not(target_arch = "wasm32"))]
            assert_eq!(crate::gguf::shard_writer::file_type_name(r.1), Some(r.2));
        }
        assert_eq!(FileType::from_name("Q4_K"), None);
    }
}
