use super::*;
use crate::quantize::FileType;

#[test]
fn every_preset_makes_a_model_the_loader_accepts() {
    for p in presets() {
        let (md, tensors, spec) = p.spec.plan(p.name, None).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let cfg = ModelConfig::from_metadata(&md).expect("config");
        assert_eq!((cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads), (spec.n_layers, spec.d_model, spec.n_heads, spec.n_kv_heads), "{}", p.name);
        assert_eq!((cfg.head_dim_k, cfg.ffn_dim, cfg.n_vocab), (spec.head_dim, spec.ffn_dim, spec.n_vocab), "{}", p.name);
        // Every tensor written is one the model uses, with the shape it expects.
        let wanted = Weights::wanted(&cfg).expect("wanted");
        for t in &tensors {
            let w = wanted.iter().find(|(n, _)| *n == t.name).unwrap_or_else(|| panic!("{}: {} is not used", p.name, t.name));
            assert!(crate::model::same_shape(&w.1, &t.shape), "{}: {}", p.name, t.name);
        }
        assert_eq!(cfg.sliding_window, spec.sliding_window, "{}", p.name);
        if spec.arch == Arch::Gemma3 {
            assert_eq!(cfg.layer_is_swa.iter().filter(|s| !**s).count(), spec.n_layers / 6, "{}: global layers", p.name);
        }
    }
    assert!(matches!(SynthSpec::from_preset("llama-9z"), Err(SynthError::UnknownPreset { .. })));
}

/// The presets' Q4_K_M files against the sizes of the published llama.cpp conversions of the
/// same models (bytes as the model hubs list them): a wrong dimension or a missing tensor
/// moves the size by far more than the 2 % allowed for metadata and tokenizer differences.
#[test]
fn preset_sizes_match_published_q4_k_m_files() {
    let published: [(&str, u64); 5] = [
        ("llama-3.2-1b", 807_694_464),
        ("llama-3.2-3b", 2_019_377_696),
        ("llama-3.1-8b", 4_920_734_016),
        ("qwen2.5-7b", 4_683_073_888),
        ("qwen3-4b", 2_497_280_256),
    ];
    for (name, bytes) in published {
        let spec = SynthSpec::from_preset(name).expect("preset");
        let ours = write::tensor_bytes(&spec, FileType::Q4_K_M).expect("layout");
        let ratio = ours as f64 / bytes as f64;
        println!("{name}: {ours} tensor bytes, {ratio:.4} of the published file");
        assert!((0.98..=1.0).contains(&ratio), "{name}: {ours} bytes against {bytes} published ({ratio:.4})");
    }
}

#[test]
fn bad_specs_are_typed_errors() {
    let mut s = SynthSpec::from_preset("qwen3-0.6b").expect("preset");
    s.n_kv_heads = 5; // 16 heads do not group over 5
    assert!(matches!(s.plan("x", None), Err(SynthError::Config(_))));
    let mut s = SynthSpec::from_preset("qwen3-0.6b").expect("preset");
    s.head_dim = 63;
    assert!(matches!(s.plan("x", None), Err(SynthError::BadSpec { what: "head_dim", .. })));
    let mut s = SynthSpec::from_preset("qwen3-0.6b").expect("preset");
    s.n_layers = 0;
    assert!(matches!(s.plan("x", None), Err(SynthError::BadSpec { what: "layers", .. })));
    s.n_layers = 1 << 30;
    assert!(matches!(s.plan("x", None), Err(SynthError::BadSpec { what: "layers", .. })));
}

#[test]
fn llama3_rope_factors_follow_the_converter() {
    let s = SynthSpec::from_preset("llama-3.2-1b").expect("preset");
    let f = s.rope_factors();
    assert_eq!(f.len(), 32);
    // Highest frequencies untouched, lowest divided by the factor, smooth between.
    assert_eq!(f[0], 1.0);
    assert_eq!(f[31], 32.0);
    assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
    assert!(f.iter().any(|&x| x > 1.0 && x < 32.0));
}

#[test]
fn tokenizer_from_another_model_is_copied_and_padded() {
    let mut src = Metadata::with_capacity(4);
    src.push("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    src.push("tokenizer.ggml.pre".into(), Value::String("smollm".into()));
    src.push("tokenizer.ggml.tokens".into(), Value::Array(Array::String(vec!["a".into(), "b".into(), "ab".into()])));
    src.push("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(vec![1, 1, 1])));
    src.push("tokenizer.ggml.merges".into(), Value::Array(Array::String(vec!["a b".into()])));
    src.push("tokenizer.chat_template".into(), Value::String("{{ messages }}".into()));
    src.push("general.name".into(), Value::String("not copied".into()));
    let mut spec = SynthSpec::from_preset("qwen3-0.6b").expect("preset");
    spec.n_vocab = 300;
    let (md, _, out) = spec.plan("synth", Some(&src)).expect("plan");
    assert_eq!(out.n_vocab, 300);
    let tokens = md.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 300);
    assert_eq!(&tokens[..3], ["a", "b", "ab"]);
    assert_eq!(md.get_i32_array("tokenizer.ggml.token_type").unwrap().unwrap()[299], attr::TYPE_UNUSED);
    assert_eq!(md.get_str("tokenizer.chat_template").unwrap(), Some("{{ messages }}"));
    assert_eq!(md.get_str("general.name").unwrap(), Some("synth"));
    // A larger tokenizer grows the vocabulary instead of being cut.
    spec.n_vocab = 259;
    let big: Vec<String> = (0..400).map(|i| format!("t{i}")).collect();
    src = Metadata::with_capacity(1);
    src.push("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    src.push("tokenizer.ggml.tokens".into(), Value::Array(Array::String(big)));
    let (_, tensors, out) = spec.plan("synth", Some(&src)).expect("plan");
    assert_eq!(out.n_vocab, 400);
    assert_eq!(tensors.iter().find(|t| t.name == "token_embd.weight").unwrap().shape, [1024, 400]);
    // No tokens at all is a typed error.
    assert!(matches!(spec.plan("synth", Some(&Metadata::with_capacity(0))), Err(SynthError::Tokenizer(_))));
}

/// A small model of `arch`'s flags (every tensor kind of the preset, tiny dimensions).
pub(crate) fn tiny(preset: &str) -> SynthSpec {
    let mut s = SynthSpec::from_preset(preset).expect("preset");
    (s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.head_dim, s.ffn_dim, s.n_vocab) = (2, 256, 4, 2, 64, 512, 300);
    s
}

#[test]
fn the_bytes_depend_on_the_seed_only() {
    let dir = std::env::temp_dir().join(format!("webgguf-synth-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |seed: u64, threads: usize, file: &str| {
        let opts = SynthOptions { ftype: FileType::Q4_K_M, mix: Default::default(), seed, threads, name: "tiny".into() };
        let path = dir.join(file);
        synth_file(&tiny("llama-3.2-1b"), None, &opts, &path, None, &mut |_| {}).expect("synth");
        std::fs::read(&path).expect("read")
    };
    let a = write(1, 1, "a.gguf");
    let b = write(1, 3, "b.gguf");
    let c = write(2, 1, "c.gguf");
    assert_eq!(a, b, "the thread count changed the bytes");
    assert_ne!(a, c, "the seed changed nothing");
    let h = crate::gguf::read_header(&a[..], Some(a.len() as u64), &crate::gguf::Limits::default()).expect("header");
    let end = h.tensors.iter().map(|t| t.offset + t.n_bytes).max().unwrap();
    assert_eq!(h.data_offset + end.div_ceil(h.alignment) * h.alignment, a.len() as u64);
    assert!(h.tensors.iter().any(|t| t.name == "rope_freqs.weight"));
    std::fs::remove_dir_all(&dir).ok();
}
