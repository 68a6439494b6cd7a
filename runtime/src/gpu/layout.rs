//! The GPU weight layout: every GGUF block copied into whole u32 words with its fields
//! word-aligned (GGUF blocks are 18/22/34/110/210 bytes, so words would straddle fields).
//! Three cases: blocks already a multiple of 4 bytes with aligned fields are copied as they are;
//! Q4_0/Q5_0/Q8_0 move their leading f16 scale to the end; Q3_K/Q6_K gain 2 bytes of padding.
//! `shaders/dequant.wgsl` reads this layout; the table there lists every type's words.

use crate::error::GpuError;
use crate::kv_cache::{KvType, RecentRows};
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

/// The largest buffer one binding may cover: a binding never exceeds its buffer.
pub fn max_binding(max_storage_buffer_binding_size: u64, max_buffer_size: u64) -> u64 {
    max_storage_buffer_binding_size.min(max_buffer_size)
}

/// Rows of `row_words` words per buffer when a matrix of `rows` rows is split at `limit` bytes
/// (whole rows per chunk). Only a single row larger than the limit is fatal.
pub fn rows_per_chunk(name: &str, row_words: usize, rows: usize, limit: u64) -> Result<usize, GpuError> {
    let row_bytes = row_words as u64 * 4;
    let n = (limit / row_bytes.max(1)).min(rows as u64) as usize;
    if n == 0 {
        return Err(GpuError::TooLarge { what: format!("one row of {name}"), bytes: row_bytes, limit });
    }
    Ok(n)
}

/// u32 words of one KV-cache row of `hd` values (`attention.wgsl`: f32, f16 pairs, or groups of
/// 32 with the scale word-aligned at the end: Q8_0 9 words, Q4_0 5 words).
pub fn kv_row_words(ty: KvType, hd: usize) -> usize {
    match ty {
        KvType::F32 => hd,
        KvType::F16 => hd / 2,
        KvType::Q8 => hd / 32 * 9,
        KvType::Q4 => hd / 32 * 5,
    }
}

/// Bytes of one layer's KV buffer: `[n_ctx, n_kv_heads]` K rows then V rows, the K offset of a
/// quantized type (`n_kv_heads · hdk` f32), then the f16 copies of [`RecentRows`]. The kernels
/// read groups of 32 (head dims multiples of 32), and a layer must fit one binding whose
/// size in words fits u32 (the shaders index words with u32).
pub fn kv_layer_bytes(ty: KvType, n_kv_heads: usize, hdk: usize, hdv: usize, n_ctx: usize, recent: usize, max_binding: u64) -> Result<u64, GpuError> {
    if hdk % 32 != 0 || hdv % 32 != 0 || n_ctx == 0 {
        return Err(GpuError::Shape(format!("KV cache with head dims {hdk}/{hdv} (need multiples of 32) and {n_ctx} positions")));
    }
    let (k_row, v_row) = (kv_row_words(ty, hdk) as u64, kv_row_words(ty, hdv) as u64);
    let offset_words = if ty.offsets_k() { (n_kv_heads * hdk) as u64 } else { 0 };
    let slots = RecentRows::new(ty, 0, n_ctx, recent).slots() as u64;
    let copy_words = slots * n_kv_heads as u64 * (hdk + hdv) as u64 / 2;
    let words = (n_ctx as u64).saturating_mul(n_kv_heads as u64).saturating_mul(k_row + v_row).saturating_add(offset_words + copy_words);
    let bytes = words.saturating_mul(4);
    if bytes > max_binding || words > u64::from(u32::MAX) {
        return Err(GpuError::TooLarge { what: "the KV cache of one layer".into(), bytes, limit: max_binding });
    }
    Ok(bytes)
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
