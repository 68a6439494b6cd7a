//! The GPU weight layout: every GGUF block copied into whole u32 words with its fields
//! word-aligned (GGUF blocks are 18/22/34/110/210 bytes, so words would straddle fields).
//! Three cases: blocks already a multiple of 4 bytes with aligned fields are copied as they are;
//! Q4_0/Q5_0/Q8_0 move their leading f16 scale to the end; Q3_K/Q6_K gain 2 bytes of padding.
//! `shaders/dequant.wgsl` reads this layout; the table there lists every type's words.

use crate::error::GpuError;
use crate::quant::GgmlType;

/// Values per GPU block and u32 words per GPU block, or `None` for types the kernels lack.
pub fn block_geometry(ty: GgmlType) -> Option<(usize, usize)> {
    use GgmlType::*;
    Some(match ty {
        F32 => (4, 4),
        F16 | BF16 => (4, 2),
        Q4_0 | Q4_1 => (32, 5),
        Q5_0 | Q5_1 => (32, 6),
        Q8_0 => (32, 9),
        Q2_K => (256, 21),
        Q3_K => (256, 28),
        Q4_K => (256, 36),
        Q5_K => (256, 44),
        Q6_K => (256, 53),
        _ => return None,
    })
}

/// u32 words of one row of `cols` values.
pub fn row_words(ty: GgmlType, cols: usize) -> Result<usize, GpuError> {
    let (qk, words) = block_geometry(ty).ok_or_else(|| GpuError::Shape(format!("no GPU kernels for {ty}")))?;
    if cols % qk != 0 {
        return Err(GpuError::Shape(format!("rows of {cols} {ty} values (GPU blocks hold {qk})")));
    }
    Ok(cols / qk * words)
}

/// Appends the GPU layout of `src` (whole GGUF rows of `ty`) to `dst` as little-endian words.
pub fn repack(ty: GgmlType, src: &[u8], dst: &mut Vec<u8>) -> Result<(), GpuError> {
    use GgmlType::*;
    let (qk, words) = block_geometry(ty).ok_or_else(|| GpuError::Shape(format!("no GPU kernels for {ty}")))?;
    let gguf_block = ty.type_size() * qk / ty.block_size();
    if src.len() % gguf_block != 0 {
        return Err(GpuError::Shape(format!("{} bytes is not whole {ty} blocks", src.len())));
    }
    dst.reserve(src.len() / gguf_block * words * 4);
    for b in src.chunks_exact(gguf_block) {
        match ty {
            // leading f16 d moved behind the quants, then 2 bytes of padding
            Q4_0 | Q5_0 | Q8_0 => {
                dst.extend_from_slice(&b[2..]);
                dst.extend_from_slice(&b[..2]);
                dst.extend_from_slice(&[0, 0]);
            }
            Q3_K | Q6_K => {
                dst.extend_from_slice(b);
                dst.extend_from_slice(&[0, 0]);
            }
            _ => dst.extend_from_slice(b),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_gguf_block_sizes() {
        for ty in GgmlType::all() {
            if let Some((qk, words)) = block_geometry(ty) {
                let gguf = ty.type_size() * qk / ty.block_size();
                assert!(words * 4 >= gguf && words * 4 - gguf <= 2, "{ty}: {gguf} bytes into {words} words");
                let mut out = Vec::new();
                repack(ty, &vec![7u8; gguf * 3], &mut out).unwrap();
                assert_eq!(out.len(), words * 4 * 3, "{ty}");
            }
        }
    }
}
