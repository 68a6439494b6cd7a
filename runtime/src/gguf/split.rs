//! Split GGUF (llama.cpp's gguf-split): a model spread over shards `…-0000k-of-0000n.gguf`,
//! each a complete GGUF file whose metadata carries `split.no`, `split.count` and
//! `split.tensors.count`. Shard 0 carries the model metadata.

use super::header::{GgufHeader, TensorInfo};
use super::value::Value;
use crate::error::GgufError;
use std::collections::HashMap;

pub const KEY_SPLIT_NO: &str = "split.no";
pub const KEY_SPLIT_COUNT: &str = "split.count";
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// Where one shard sits in its split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitInfo {
    pub no: u64,
    pub count: u64,
    /// Tensors across all shards.
    pub tensors_total: i64,
}

fn int_key(h: &GgufHeader, key: &'static str, expected: &'static str) -> Result<Option<i128>, GgufError> {
    match h.metadata.get(key) {
        None => Ok(None),
        // gguf-split writes u16/u16/i32; accept any integer type as llama.cpp's getters do.
        Some(v) => v.as_i128().map(Some).ok_or(GgufError::SplitWrongType { key, expected, found: v.type_name() }),
    }
}

impl GgufHeader {
    /// The split metadata of this file: None for an ordinary single file. `parse_header`
    /// already applied these rules, so on a parsed header this only reads the numbers.
    pub fn split(&self) -> Result<Option<SplitInfo>, GgufError> {
        let no = int_key(self, KEY_SPLIT_NO, "u16")?;
        let count = int_key(self, KEY_SPLIT_COUNT, "u16")?;
        let total = int_key(self, KEY_SPLIT_TENSORS_COUNT, "i32")?;
        let (no, count, total) = match (no, count, total) {
            (None, None, None) => return Ok(None),
            (Some(a), Some(b), Some(c)) => (a, b, c),
            (None, _, _) => return Err(GgufError::SplitKeyMissing { key: KEY_SPLIT_NO }),
            (_, None, _) => return Err(GgufError::SplitKeyMissing { key: KEY_SPLIT_COUNT }),
            (_, _, None) => return Err(GgufError::SplitKeyMissing { key: KEY_SPLIT_TENSORS_COUNT }),
        };
        let count = u64::try_from(count).map_err(|_| GgufError::SplitCountZero)?;
        if count == 0 {
            return Err(GgufError::SplitCountZero);
        }
        let no_u = u64::try_from(no).map_err(|_| GgufError::SplitIndexOutOfRange { no: u64::MAX, count })?;
        if no_u >= count {
            return Err(GgufError::SplitIndexOutOfRange { no: no_u, count });
        }
        let total = i64::try_from(total).unwrap_or(i64::MIN);
        let here = self.tensors.len() as u64;
        if total < 0 || (total as u64) < here {
            return Err(GgufError::SplitShardTooManyTensors { shard: no_u, count: here, total });
        }
        Ok(Some(SplitInfo { no: no_u, count, tensors_total: total }))
    }
}

/// A whole model: one header per shard (a plain file is a model of one shard), with tensor
/// names unique across shards.
#[derive(Clone, Debug)]
pub struct GgufModel {
    /// Headers in shard order.
    pub shards: Vec<GgufHeader>,
    index: HashMap<String, (usize, usize)>,
}

impl GgufModel {
    /// Assembles the shards of a model, given in any order, checking that they form exactly
    /// one complete, consistent split.
    pub fn new(headers: Vec<GgufHeader>) -> Result<GgufModel, GgufError> {
        let mut infos = Vec::with_capacity(headers.len());
        for h in &headers {
            infos.push(h.split()?.unwrap_or(SplitInfo { no: 0, count: 1, tensors_total: h.tensors.len() as i64 }));
        }
        let Some(&f) = infos.first() else {
            return Err(GgufError::MissingShard { no: 0, count: 1 });
        };
        for i in &infos {
            if i.count != f.count {
                return Err(GgufError::SplitCountMismatch { shard: i.no, expected: f.count, found: i.count });
            }
            if i.tensors_total != f.tensors_total {
                return Err(GgufError::SplitTensorTotalMismatch { shard: i.no, expected: f.tensors_total, found: i.tensors_total });
            }
        }
        // Slots only for shards actually given: a hostile split.count allocates nothing.
        let mut slots: Vec<Option<GgufHeader>> = Vec::new();
        slots.resize_with(headers.len(), || None);
        for (info, h) in infos.iter().zip(headers) {
            match slots.get_mut(info.no as usize) {
                Some(Some(_)) => return Err(GgufError::DuplicateShard { no: info.no }),
                Some(slot) => *slot = Some(h),
                // A shard numbered past the number given means some lower number is absent.
                None => {}
            }
        }
        let mut shards = Vec::with_capacity(slots.len());
        for (no, s) in slots.into_iter().enumerate() {
            shards.push(s.ok_or(GgufError::MissingShard { no: no as u64, count: f.count })?);
        }
        if (shards.len() as u64) < f.count {
            return Err(GgufError::MissingShard { no: shards.len() as u64, count: f.count });
        }
        let mut index = HashMap::new();
        for (si, h) in shards.iter().enumerate() {
            for (ti, t) in h.tensors.iter().enumerate() {
                if index.insert(t.name.clone(), (si, ti)).is_some() {
                    return Err(GgufError::DuplicateTensor { name: t.name.clone(), shard: Some(si as u32) });
                }
            }
        }
        let found = index.len() as u64;
        if found != f.tensors_total as u64 {
            return Err(GgufError::SplitTensorCountMismatch { expected: f.tensors_total, found });
        }
        Ok(GgufModel { shards, index })
    }

    /// Model metadata (from shard 0).
    pub fn metadata(&self) -> &super::Metadata {
        &self.shards[0].metadata
    }

    /// Looks a tensor up by name: its shard index and info.
    pub fn tensor(&self, name: &str) -> Option<(usize, &TensorInfo)> {
        self.index.get(name).map(|&(s, t)| (s, &self.shards[s].tensors[t]))
    }

    /// Every tensor with its shard index, shard by shard in file order.
    pub fn tensors(&self) -> impl Iterator<Item = (usize, &TensorInfo)> {
        self.shards.iter().enumerate().flat_map(|(s, h)| h.tensors.iter().map(move |t| (s, t)))
    }

    /// The split value of shard `no` in `count`, for writers (`split.no` etc. as gguf-split types).
    pub fn split_values(no: u16, count: u16, tensors_total: i32) -> [(&'static str, Value); 3] {
        [(KEY_SPLIT_NO, Value::U16(no)), (KEY_SPLIT_COUNT, Value::U16(count)), (KEY_SPLIT_TENSORS_COUNT, Value::I32(tensors_total))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufBuilder;
    use crate::gguf::{parse_header, Limits, Parsed};
    use crate::quant::GgmlType;

    /// A one-tensor file carrying `split.no = no`, `split.count = count`.
    fn file(no: u16, count: u16) -> Vec<u8> {
        let mut b = GgufBuilder::new();
        b.kv("general.architecture", Value::String("llama".into()));
        for (k, v) in GgufModel::split_values(no, count, 1) {
            b.kv(k, v);
        }
        b.tensor("a", &[4], GgmlType::F32);
        b.to_bytes(&[&[0u8; 16]])
    }

    fn parsed(bytes: &[u8], size: Option<u64>) -> Result<Parsed, GgufError> {
        parse_header(bytes, size, &Limits::default())
    }

    #[test]
    fn split_no_not_below_count_fails_in_the_header() {
        for (no, count) in [(1, 1), (3, 3), (7, 2), (u16::MAX, 1)] {
            let f = file(no, count);
            let want = GgufError::SplitIndexOutOfRange { no: u64::from(no), count: u64::from(count) };
            // With the size known or not: the rule needs the header only.
            assert_eq!(parsed(&f, Some(f.len() as u64)).err(), Some(want.clone()), "{no} of {count}");
            assert_eq!(parsed(&f, None).err(), Some(want), "{no} of {count}, size unknown");
        }
        // The last valid number parses, and says where it sits.
        let f = file(2, 3);
        match parsed(&f, Some(f.len() as u64)) {
            Ok(Parsed::Header(h)) => assert_eq!(h.split(), Ok(Some(SplitInfo { no: 2, count: 3, tensors_total: 1 }))),
            other => panic!("2 of 3: {other:?}"),
        }
    }
}
