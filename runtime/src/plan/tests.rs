use super::*;
use crate::gguf::writer::GgufBuilder;
use crate::gguf::{parse_header, Array, Limits, Parsed, Value};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A llama-style model's shape; tensors declared, never written (only headers are parsed).
#[derive(Clone)]
struct Shape {
    arch: &'static str,
    layers: u64,
    d: u64,
    heads: u64,
    kv_heads: u64,
    ffn: u64,
    vocab: u64,
    ctx: u32,
    ty: GgmlType,
    tied: bool,
    pre: &'static str,
}

/// Llama-3.2-1B's shape (Q4_K for every matrix).
fn llama_1b() -> Shape {
    Shape {
        arch: "llama",
        layers: 16,
        d: 2048,
        heads: 32,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128_256,
        ctx: 131_072,
        ty: GgmlType::Q4_K,
        tied: true,
        pre: "llama-bpe",
    }
}

/// Llama-3.1-8B's shape (Q4_K): 4.6 GB of weights.
fn llama_8b() -> Shape {
    Shape { layers: 32, d: 4096, kv_heads: 8, ffn: 14336, tied: false, ..llama_1b() }
}

fn metadata(s: &Shape, b: &mut GgufBuilder) {
    let a = s.arch;
    b.kv("general.architecture", Value::String(a.into()));
    b.kv(&format!("{a}.block_count"), Value::U32(s.layers as u32));
    b.kv(&format!("{a}.context_length"), Value::U32(s.ctx));
    b.kv(&format!("{a}.embedding_length"), Value::U32(s.d as u32));
    b.kv(&format!("{a}.feed_forward_length"), Value::U32(s.ffn as u32));
    b.kv(&format!("{a}.attention.head_count"), Value::U32(s.heads as u32));
    b.kv(&format!("{a}.attention.head_count_kv"), Value::U32(s.kv_heads as u32));
    b.kv(&format!("{a}.vocab_size"), Value::U32(s.vocab as u32));
    b.kv("tokenizer.ggml.model", Value::String("gpt2".into()));
    b.kv("tokenizer.ggml.pre", Value::String(s.pre.into()));
}

/// Every tensor of the shape, in llama.cpp's file order.
fn tensors(s: &Shape) -> Vec<(String, Vec<u64>, GgmlType)> {
    let hd = s.d / s.heads;
    let mut t = vec![("token_embd.weight".to_owned(), vec![s.d, s.vocab], s.ty)];
    for i in 0..s.layers {
        let n = |x: &str| format!("blk.{i}.{x}");
        t.push((n("attn_norm.weight"), vec![s.d], GgmlType::F32));
        t.push((n("attn_q.weight"), vec![s.d, s.d], s.ty));
        t.push((n("attn_k.weight"), vec![s.d, s.kv_heads * hd], s.ty));
        t.push((n("attn_v.weight"), vec![s.d, s.kv_heads * hd], s.ty));
        t.push((n("attn_output.weight"), vec![s.d, s.d], s.ty));
        t.push((n("ffn_norm.weight"), vec![s.d], GgmlType::F32));
        t.push((n("ffn_gate.weight"), vec![s.d, s.ffn], s.ty));
        t.push((n("ffn_up.weight"), vec![s.d, s.ffn], s.ty));
        t.push((n("ffn_down.weight"), vec![s.ffn, s.d], s.ty));
    }
    t.push(("output_norm.weight".to_owned(), vec![s.d], GgmlType::F32));
    if !s.tied {
        t.push(("output.weight".to_owned(), vec![s.d, s.vocab], s.ty));
    }
    t
}

fn builder(s: &Shape) -> GgufBuilder {
    let mut b = GgufBuilder::new();
    metadata(s, &mut b);
    for (name, shape, ty) in tensors(s) {
        b.tensor(&name, &shape, ty);
    }
    b
}

/// Parses a header whose tensor data is absent (file size unknown, as a stream's).
fn header(b: &GgufBuilder) -> GgufHeader {
    let (bytes, _) = b.header();
    match parse_header(&bytes, None, &Limits::default()) {
        Ok(Parsed::Header(h)) => *h,
        other => panic!("header did not parse: {other:?}"),
    }
}

fn total_bytes(s: &Shape) -> u64 {
    tensors(s).iter().map(|(_, shape, ty)| ty.row_bytes(shape.iter().product()).unwrap()).sum()
}

/// WebGPU's spec defaults (Android's limits): 128 MiB binding, 256 MiB buffer.
fn spec_gpu() -> GpuLimits {
    GpuLimits { max_buffer_size: 256 * MIB, max_storage_buffer_binding_size: 128 * MIB, device_memory: None }
}

fn target(gpu: Option<GpuLimits>, space: u64, device: DeviceRequest) -> PlanTarget {
    PlanTarget { device, ..PlanTarget::new(gpu, space) }
}

#[test]
fn llama_1b_goes_to_the_gpu_with_exact_bytes() {
    let s = llama_1b();
    let p = plan(&header(&builder(&s)), &target(Some(spec_gpu()), WASM32_ADDRESS_SPACE, DeviceRequest::Auto)).unwrap();
    assert_eq!(p.device, Device::Gpu);
    assert_eq!((p.kv, p.n_ctx), (KvType::F16, 4096));
    assert_eq!(p.weights.file_bytes, total_bytes(&s));
    assert_eq!((p.weights.tensors, p.weights.estimated), (tensors(&s).len(), 0));
    // f16 K and V of 8 heads × 64 dims per position, 4096 positions, one buffer per layer.
    let layer = 4096 * 8 * 64 * 2 * 2;
    assert_eq!(p.kv_layer_bytes, Some(layer));
    assert_eq!(p.kv_bytes, 16 * layer);
    // Q4_K: 144-byte blocks of 256 values → 36 words; 1-D tensors as f32.
    let gpu = p.weights.gpu_bytes.unwrap();
    assert!(gpu >= p.weights.file_bytes && gpu < p.weights.file_bytes + p.weights.file_bytes / 50, "{gpu}");
    assert_eq!(p.total_bytes, gpu + p.kv_bytes + p.working_bytes);
    assert!(p.reasons.iter().any(|r| r.starts_with("GPU:")), "{:?}", p.reasons);
}

#[test]
fn no_gpu_plans_the_cpu_and_gpu_request_fails() {
    let h = header(&builder(&llama_1b()));
    let p = plan(&h, &target(None, WASM32_ADDRESS_SPACE, DeviceRequest::Auto)).unwrap();
    assert_eq!(p.device, Device::Cpu);
    assert_eq!(p.total_bytes, p.weights.file_bytes + p.kv_bytes + p.working_bytes);
    assert_eq!(p.limit_bytes, Some(WASM32_ADDRESS_SPACE));
    assert!(matches!(plan(&h, &target(None, u64::MAX, DeviceRequest::Gpu)), Err(PlanError::NoGpu)));
}

#[test]
fn unsupported_architecture() {
    let s = Shape { arch: "gptneox", ..llama_1b() };
    match plan(&header(&builder(&s)), &PlanTarget::new(None, u64::MAX)) {
        Err(PlanError::Model(ModelError::UnsupportedArchitecture(a))) => assert_eq!(a, "gptneox"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_pre_tokenizer() {
    let s = Shape { pre: "no-such-pre", ..llama_1b() };
    match plan(&header(&builder(&s)), &PlanTarget::new(None, u64::MAX)) {
        Err(PlanError::Tokenizer(TokenizerError::UnknownPreTokenizer { pre })) => assert_eq!(pre, "no-such-pre"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_tensor_type_is_fatal_only_when_used() {
    let s = llama_1b();
    let mut b = builder(&s);
    // An unused tensor of a type without kernels is skipped, as the loader skips it.
    b.tensor("unused.weight", &[256, 4], GgmlType::IQ2_XXS);
    assert!(plan(&header(&b), &PlanTarget::new(None, u64::MAX)).is_ok());
    let i = b.tensors.iter().position(|t| t.name == "blk.3.ffn_up.weight").unwrap();
    b.tensors[i].ty = GgmlType::IQ2_XXS;
    match plan(&header(&b), &PlanTarget::new(Some(spec_gpu()), u64::MAX)) {
        Err(PlanError::Model(ModelError::UnsupportedTensorType { name, ty })) => {
            assert_eq!((name.as_str(), ty), ("blk.3.ffn_up.weight", GgmlType::IQ2_XXS))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_tensor_and_wrong_shape() {
    let s = llama_1b();
    let mut b = builder(&s);
    b.tensors.retain(|t| t.name != "blk.7.attn_k.weight");
    match plan(&header(&b), &PlanTarget::new(None, u64::MAX)) {
        Err(PlanError::Model(ModelError::MissingTensor(n))) => assert_eq!(n, "blk.7.attn_k.weight"),
        other => panic!("{other:?}"),
    }
    let mut b = builder(&s);
    let i = b.tensors.iter().position(|t| t.name == "blk.2.ffn_down.weight").unwrap();
    b.tensors[i].shape = vec![2048, 8192];
    match plan(&header(&b), &PlanTarget::new(None, u64::MAX)) {
        Err(PlanError::Model(ModelError::TensorShape { name, found, .. })) => {
            assert_eq!((name.as_str(), found), ("blk.2.ffn_down.weight", vec![2048, 8192]))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_row_over_the_binding_rules_out_the_gpu_only() {
    let h = header(&builder(&llama_1b()));
    // One Q4_K row of 8192 values is 32 blocks × 36 words × 4 = 4608 bytes.
    let gpu = GpuLimits { max_buffer_size: 4096, max_storage_buffer_binding_size: 4096, device_memory: None };
    match plan(&h, &target(Some(gpu), u64::MAX, DeviceRequest::Gpu)) {
        Err(PlanError::RowTooLarge { tensor, bytes, limit }) => {
            assert!(tensor.ends_with("ffn_down.weight"), "{tensor}");
            assert_eq!((bytes, limit), (4608, 4096));
        }
        other => panic!("{other:?}"),
    }
    let p = plan(&h, &target(Some(gpu), u64::MAX, DeviceRequest::Auto)).unwrap();
    assert_eq!(p.device, Device::Cpu);
    assert!(p.reasons.iter().any(|r| r.starts_with("not the GPU: one row of")), "{:?}", p.reasons);
}

#[test]
fn a_kv_layer_over_the_binding_shortens_the_context() {
    let h = header(&builder(&llama_1b()));
    // An f16 layer of 4096 positions is 8 MiB; 3 MiB takes 1024 positions (2 MiB).
    let gpu = GpuLimits { max_buffer_size: 3 * MIB, max_storage_buffer_binding_size: 3 * MIB, device_memory: None };
    let p = plan(&h, &target(Some(gpu), u64::MAX, DeviceRequest::Gpu)).unwrap();
    assert_eq!((p.device, p.kv, p.n_ctx), (Device::Gpu, KvType::F16, 1024));
    assert!(
        p.reasons.iter().any(|r| r.contains("f16 KV cache of 4096 positions does not fit (one layer of the f16 KV cache of 4096 positions is 8388608 bytes")),
        "{:?}",
        p.reasons
    );
    // Asked for a context and a KV type: no reduction, the typed error.
    let asked = PlanTarget { kv: Some(KvType::F16), n_ctx: Some(4096), ..target(Some(gpu), u64::MAX, DeviceRequest::Gpu) };
    match plan(&h, &asked) {
        Err(PlanError::KvLayerTooLarge { kv, n_ctx, bytes, limit }) => assert_eq!((kv, n_ctx, bytes, limit), (KvType::F16, 4096, 8 * MIB, 3 * MIB)),
        other => panic!("{other:?}"),
    }
    // A context asked for: a smaller KV type instead. q8 (9 words per 32 values) needs
    // 4.5 MiB; q4 (5 words per 32) K and V rows, the K offset and the f16 copies of 4 + 64
    // positions fit.
    let ctx = PlanTarget { n_ctx: Some(4096), ..target(Some(gpu), u64::MAX, DeviceRequest::Gpu) };
    let p = plan(&h, &ctx).unwrap();
    assert_eq!((p.kv, p.n_ctx), (KvType::Q4, 4096));
    assert_eq!(p.kv_layer_bytes, Some(4096 * 8 * (10 + 10) * 4 + 8 * 64 * 4 + 68 * 8 * (64 + 64) / 2 * 4));
}

#[test]
fn an_8b_model_is_too_large_for_wasm32() {
    let s = llama_8b();
    let h = header(&builder(&s));
    let cpu = target(None, WASM32_ADDRESS_SPACE, DeviceRequest::Cpu);
    match plan(&h, &cpu) {
        Err(e @ PlanError::ModelTooLarge { size, limit }) => {
            assert_eq!(limit, WASM32_ADDRESS_SPACE);
            assert!(size > total_bytes(&s) && total_bytes(&s) > 4 * GIB, "{size}");
            assert!(e.to_string().contains("wasm32 can address 4294967296"), "{e}");
            assert_eq!(e.code(), "model_too_large");
        }
        other => panic!("{other:?}"),
    }
    // The same model natively with 64 GiB fits the CPU.
    assert_eq!(plan(&h, &target(None, 64 * GIB, DeviceRequest::Cpu)).unwrap().device, Device::Cpu);
    // On a GPU with the spec limits it fits (tensors split at the binding); with 4 GiB of
    // device memory reported, no device holds it.
    assert_eq!(plan(&h, &target(Some(spec_gpu()), WASM32_ADDRESS_SPACE, DeviceRequest::Auto)).unwrap().device, Device::Gpu);
    let small = GpuLimits { device_memory: Some(4 * GIB), ..spec_gpu() };
    match plan(&h, &target(Some(small), WASM32_ADDRESS_SPACE, DeviceRequest::Auto)) {
        Err(PlanError::NoDeviceFits { gpu, cpu }) => {
            assert!(matches!(*gpu, PlanError::GpuMemoryTooSmall { limit, .. } if limit == 4 * GIB), "{gpu}");
            assert!(matches!(*cpu, PlanError::ModelTooLarge { .. }), "{cpu}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_cpu_trades_context_for_room() {
    let s = llama_1b();
    let h = header(&builder(&s));
    let p = plan(&h, &target(None, u64::MAX, DeviceRequest::Cpu)).unwrap();
    let need_4096 = p.total_bytes;
    // Room for everything but 1 byte: the context halves to 2048.
    let p = plan(&h, &target(None, need_4096 - 1, DeviceRequest::Cpu)).unwrap();
    assert_eq!((p.kv, p.n_ctx), (KvType::F16, 2048));
    assert!(p.total_bytes < need_4096);
    // With the context fixed, the KV type shrinks instead.
    let fixed = PlanTarget { n_ctx: Some(4096), ..target(None, need_4096 - 1, DeviceRequest::Cpu) };
    assert_eq!(plan(&h, &fixed).unwrap().kv, KvType::Q8);
}

#[test]
fn trained_context_caps_the_default() {
    let s = Shape { ctx: 2048, ..llama_1b() };
    let p = plan(&header(&builder(&s)), &PlanTarget::new(None, u64::MAX)).unwrap();
    assert_eq!(p.n_ctx, 2048);
    assert!(p.reasons.iter().any(|r| r == "context 4096 capped at the model's trained context 2048"), "{:?}", p.reasons);
}

#[test]
fn split_shard_0_estimates_the_rest() {
    let s = llama_8b();
    let all = tensors(&s);
    // Shard 0 of 3 holds the embedding and the first two layers.
    let shard0 = 1 + 2 * 9;
    let mut b = GgufBuilder::new();
    metadata(&s, &mut b);
    for (k, v) in crate::gguf::GgufModel::split_values(0, 3, all.len() as i32) {
        b.kv(k, v);
    }
    for (name, shape, ty) in &all[..shard0] {
        b.tensor(name, shape, *ty);
    }
    let p = plan(&header(&b), &target(None, u64::MAX, DeviceRequest::Cpu)).unwrap();
    assert_eq!(p.n_shards, 3);
    // Same type per role everywhere: the estimate is exact, output.weight included.
    assert_eq!(p.weights.file_bytes, total_bytes(&s));
    assert_eq!((p.weights.tensors, p.weights.estimated), (all.len(), all.len() - shard0));
    assert!(p.reasons[0].contains("output.weight assumed untied"), "{:?}", p.reasons);
    // A count without room for it: tied.
    let mut b2 = b.clone();
    b2.metadata.retain(|(k, _)| k != crate::gguf::KEY_SPLIT_TENSORS_COUNT);
    b2.kv(crate::gguf::KEY_SPLIT_TENSORS_COUNT, Value::I32(all.len() as i32 - 1));
    let p = plan(&header(&b2), &target(None, u64::MAX, DeviceRequest::Cpu)).unwrap();
    assert_eq!(p.weights.file_bytes, total_bytes(&Shape { tied: true, ..s.clone() }));
    assert!(matches!(plan(&header(&b), &target(None, WASM32_ADDRESS_SPACE, DeviceRequest::Cpu)), Err(PlanError::ModelTooLarge { .. })));
}

#[test]
fn quantized_kv_needs_group_multiples() {
    // Head dim 48: q8 asked for is a typed KV error on the CPU, and the GPU's kernels
    // cannot take it at all.
    let s = Shape { d: 768, heads: 16, kv_heads: 4, ffn: 2048, vocab: 1024, ..llama_1b() };
    let h = header(&builder(&s));
    let q8 = PlanTarget { kv: Some(KvType::Q8), ..target(None, u64::MAX, DeviceRequest::Cpu) };
    assert!(matches!(plan(&h, &q8), Err(PlanError::Kv(KvError::HeadDimNotGroupMultiple { head_dim: 48, .. }))));
    match plan(&h, &target(Some(spec_gpu()), u64::MAX, DeviceRequest::Gpu)) {
        Err(PlanError::GpuHeadDim { head_dim_k: 48, head_dim_v: 48 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(plan(&h, &target(Some(spec_gpu()), u64::MAX, DeviceRequest::Auto)).unwrap().device, Device::Cpu);
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Writes the header and extends the file to its full size without writing the data (a
/// sparse file), reads the header back through a counting reader and plans it for wasm32's
/// CPU: the typed error, after at most the header + 1 MiB.
fn bytes_read_before_error(b: &GgufBuilder, tag: &str) -> (u64, u64, PlanError) {
    let (head, offsets) = b.header();
    let last = b.tensor_bytes().last().copied().flatten().unwrap();
    let size = head.len() as u64 + offsets.last().unwrap() + last;
    let path = std::env::temp_dir().join(format!("webgguf-plan-{tag}-{}.gguf", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &f, &head).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let reader = Counting { inner: std::fs::File::open(&path).unwrap(), read: read.clone() };
    let h = crate::gguf::read_header(reader, Some(size), &Limits::default());
    std::fs::remove_file(&path).ok();
    let h = h.unwrap();
    let e = plan(&h, &target(None, WASM32_ADDRESS_SPACE, DeviceRequest::Cpu)).unwrap_err();
    (read.get(), h.data_offset, e)
}

#[test]
fn early_errors_read_at_most_the_header_and_1_mib() {
    // A small header: the first 1 MiB holds it.
    let (read, header, e) = bytes_read_before_error(&builder(&llama_8b()), "small");
    assert!(matches!(e, PlanError::ModelTooLarge { .. }), "{e}");
    assert!(header < MIB && read <= header + MIB, "read {read} for a header of {header}");
    // A 4.6 MiB header (a 160,000-token vocabulary): doubling from 1 MiB would read 8 MiB.
    let mut b = builder(&llama_8b());
    let tokens: Vec<String> = (0..160_000).map(|i| format!("token-number-{i:012}")).collect();
    b.kv("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    let (read, header, e) = bytes_read_before_error(&b, "large");
    assert!(matches!(e, PlanError::ModelTooLarge { .. }), "{e}");
    assert!(header > 4 * MIB && read <= header + MIB, "read {read} for a header of {header}");
    // Each early error of the rules above, the same way.
    let mut b = builder(&Shape { pre: "no-such-pre", ..llama_8b() });
    b.kv("tokenizer.ggml.tokens", Value::Array(Array::String((0..160_000).map(|i| format!("t{i:020}")).collect())));
    let (read, header, e) = bytes_read_before_error(&b, "pre");
    assert!(matches!(e, PlanError::Tokenizer(_)), "{e}");
    assert!(read <= header + MIB, "read {read} for a header of {header}");
}
