//! Fuzzes `parse_header` on arbitrary bytes as a whole file (size known) and as a stream
//! prefix (size unknown), then everything a caller does with a header: split metadata, model
//! assembly, typed accessors, tensor geometry. Checks the NeedMore contract and that the two
//! sizes agree on every rule that does not depend on the size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webgguf::gguf::{parse_header, GgufHeader, GgufModel, Limits, Parsed};
use webgguf::GgufError;

fn exercise(h: &GgufHeader) {
    let _ = h.split();
    let _ = h.data_bytes();
    for t in &h.tensors {
        let _ = (t.row_len(), t.n_rows(), t.row_bytes(), h.tensor_range(t));
        assert_eq!(h.tensor(&t.name).map(|x| x.offset), Some(t.offset));
    }
    let _ = h.metadata.iter().map(|(k, v)| (k.len(), v.type_name())).count();
    // One shard, and the same shard twice (duplicate / mismatch paths).
    for shards in [vec![h.clone()], vec![h.clone(), h.clone()]] {
        if let Ok(model) = GgufModel::new(shards) {
            let md = model.metadata();
            let _ = md.architecture();
            let _ = md.model_name();
            if let Ok(hp) = md.hyperparameters() {
                let _ = md.arch_key("attention.head_count_kv").map(|k| md.get_per_layer_u32(&k, hp.block_count.min(4096) as usize));
            }
            let _ = md.tokenizer();
            for (_, t) in model.tensors() {
                assert!(model.tensor(&t.name).is_some());
            }
        }
    }
}

/// Errors that only a known file size can produce.
fn size_dependent(e: &GgufError) -> bool {
    matches!(e, GgufError::Truncated { .. } | GgufError::CountsExceedFile { .. } | GgufError::TensorPastEnd { .. })
}

fn check(data: &[u8], limits: &Limits) {
    let len = data.len() as u64;
    let unknown = parse_header(data, None, limits);
    let known = parse_header(data, Some(len), limits);
    match &unknown {
        Ok(Parsed::NeedMore { total }) => assert!(*total > len, "NeedMore {total} for {len} bytes"),
        Ok(Parsed::Header(h)) => exercise(h),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match (&known, &unknown) {
        (Ok(Parsed::NeedMore { total }), _) => panic!("NeedMore {total} with the whole file of {len}"),
        (Ok(Parsed::Header(k)), Ok(Parsed::Header(u))) => {
            assert_eq!(k.tensors, u.tensors);
            assert_eq!(k.data_offset, u.data_offset);
            exercise(k);
        }
        (Ok(Parsed::Header(_)), u) => panic!("size known parses, size unknown gives {u:?}"),
        (Err(e), u) if !size_dependent(e) => {
            assert!(matches!(u, Err(e2) if e2 == e), "size known: {e:?}, unknown: {u:?}");
            let _ = e.to_string();
        }
        (Err(e), _) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    // Tight limits reach the limit checks with small inputs.
    let tight = Limits {
        max_string_len: 64,
        max_array_len: 64,
        max_array_depth: 2,
        max_kv: 16,
        max_tensors: 16,
        max_header_bytes: 2048,
        max_alignment: 256,
        max_data_bytes: 1 << 16,
    };
    check(data, &tight);
});
