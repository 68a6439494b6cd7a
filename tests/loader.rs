//! The streaming loader (`loader::ModelStream`) natively: the same model whatever the piece sizes
//! the bytes arrive in, on the CPU and on the GPU (lavapipe), from one file or from shards; and
//! a typed error, never a panic, for every way a stream can be wrong.

use webgguf::engine::{Session, SessionOptions};
use webgguf::gpu::GpuBackend;
use webgguf::kv_cache::KvType;
use webgguf::loader::{load_bytes, LoadError, ModelStream};
use webgguf::model::{Backend, CpuBackend, Logits, Model};
use webgguf::GgufError;
use webgguf_tests::{fixtures_dir, model_path};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PROMPT: [u32; 4] = [1, 504, 3458, 28];

fn smol() -> Vec<u8> {
    std::fs::read(model_path(SMOL)).expect("read SmolLM2")
}

/// Feeds `shards` in pieces whose sizes cycle through `pieces`.
fn stream<B: Backend>(backend: &mut B, shards: &[&[u8]], pieces: &[usize]) -> Result<Model<B>, LoadError> {
    let mut s = ModelStream::default();
    let mut k = 0;
    for (i, bytes) in shards.iter().enumerate() {
        s.begin_shard(&format!("shard {i}"), Some(bytes.len() as u64))?;
        let mut at = 0;
        while at < bytes.len() {
            let n = pieces[k % pieces.len()].min(bytes.len() - at);
            k += 1;
            s.feed(backend, &bytes[at..at + n])?;
            at += n;
        }
        s.end_shard(backend)?;
    }
    Ok(s.finish()?.1)
}

fn logits<B: Backend>(backend: B, model: Model<B>) -> Vec<f32> {
    let mut s = Session::new(backend, model, SessionOptions { kv: KvType::F32, n_ctx: 16, ..Default::default() }).expect("session");
    s.eval(&PROMPT, Logits::Last).expect("eval")
}

#[test]
fn piece_sizes_do_not_change_the_model() {
    let bytes = smol();
    let mut b = CpuBackend::new();
    let (_, whole) = load_bytes(&[&bytes], &mut b).expect("whole");
    let want = logits(b, whole);
    // Odd sizes: rows and blocks straddle pieces; one byte at a time through part of the header.
    let mut b = CpuBackend::new();
    let m = stream(&mut b, &[&bytes], &[1, 3, 4093, 65_536, 7, 1 << 20]).expect("pieces");
    assert_eq!(logits(b, m), want);
    // From the file, in 4 MiB reads.
    let mut b = CpuBackend::new();
    let (_, m) = webgguf::loader::load_files(&[model_path(SMOL)], &mut b).expect("file");
    assert_eq!(logits(b, m), want);
}

#[test]
fn gpu_upload_in_pieces_equals_whole() {
    let bytes = smol();
    let mut g = GpuBackend::open().expect("a Vulkan adapter (lavapipe in CI)");
    let (_, m) = load_bytes(&[&bytes], &mut g).expect("whole");
    let want = logits(g, m);
    let mut g = GpuBackend::open().expect("adapter");
    let m = stream(&mut g, &[&bytes], &[5, 99_991, 1 << 16, 333]).expect("pieces");
    assert_eq!(logits(g, m), want);
}

/// A copy of the header's bytes with `find` replaced by `replace` (same length).
fn patched(bytes: &[u8], find: &[u8], replace: &[u8]) -> Vec<u8> {
    let at = bytes.windows(find.len()).position(|w| w == find).expect("pattern in the header");
    let mut v = bytes.to_vec();
    v[at..at + find.len()].copy_from_slice(replace);
    v
}

#[test]
fn malformed_streams_are_typed_errors() {
    let bytes = smol();
    let mut b = CpuBackend::new();

    // An HTML page where the model should be.
    let html = b"<!DOCTYPE html><html><body>Not found</body></html>".repeat(100);
    let e = stream(&mut b, &[&html], &[4096]).err().expect("html");
    assert!(matches!(e, LoadError::Gguf { source: GgufError::BadMagic { .. }, .. }), "{e}");

    // Cut in the middle of a tensor: the error names the tensor and the bytes missing.
    let half = &bytes[..bytes.len() / 2];
    let mut s = ModelStream::<CpuBackend>::default();
    s.begin_shard("half", None).expect("begin");
    s.feed(&mut b, half).expect("feed");
    let e = s.end_shard(&mut b).expect_err("truncated");
    match &e {
        LoadError::ShardTruncated { shard, got, what, needed } => {
            assert_eq!((shard.as_str(), *got), ("half", half.len() as u64));
            assert!(what.starts_with("blk.") || what.contains("weight"), "{what}");
            assert!(*needed > *got);
        }
        other => panic!("{other}"),
    }
    assert_eq!(e.code(), "length");

    // Cut inside the header, with no size announced.
    let mut s = ModelStream::<CpuBackend>::default();
    s.begin_shard("head", None).expect("begin");
    s.feed(&mut b, &bytes[..1000]).expect("feed");
    let e = s.end_shard(&mut b).expect_err("header cut");
    assert!(matches!(&e, LoadError::Gguf { path, .. } if path == "head"), "{e:?}");

    // More bytes than announced.
    let mut s = ModelStream::<CpuBackend>::default();
    s.begin_shard("short", Some(100)).expect("begin");
    assert!(matches!(s.feed(&mut b, &bytes[..101]), Err(LoadError::ShardTooLong { expected: 100, .. })));

    // A tensor whose shape disagrees with the configuration: refused when the header arrives,
    // before any weight is uploaded. (Patches the n_embd metadata value 576 → 577.)
    let key = b"llama.embedding_length";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("key") + key.len();
    let mut bad = bytes.clone();
    // value type (u32 = 4) then the value
    assert_eq!(u32::from_le_bytes(bad[at..at + 4].try_into().unwrap()), 4);
    bad[at + 4..at + 8].copy_from_slice(&577u32.to_le_bytes());
    let e = stream(&mut b, &[&bad], &[1 << 20]).err().expect("shape");
    assert!(matches!(e, LoadError::Model(webgguf::ModelError::TensorShape { .. })), "{e}");

    // A required tensor renamed away: named in the error.
    let bad = patched(&bytes, b"output_norm.weight", b"output_norx.weight");
    let e = stream(&mut b, &[&bad], &[1 << 20]).err().expect("missing");
    assert!(matches!(&e, LoadError::Model(webgguf::ModelError::MissingTensor(n)) if n == "output_norm.weight"), "{e}");

    // API misuse is an error too.
    let mut s = ModelStream::<CpuBackend>::default();
    assert!(matches!(s.feed(&mut b, &bytes[..10]), Err(LoadError::Sequence(_))));
    assert!(matches!(ModelStream::<CpuBackend>::default().finish(), Err(LoadError::Sequence(_))));
}

/// A file whose split.no is not below its split.count (3 of 3, and -1 of 2) is refused by both
/// loaders from its header: the stream when the header parses (the feed, not the shard's end),
/// the files before any is streamed.
#[test]
fn split_no_out_of_range_is_refused_from_the_header() {
    for (class, no) in [("split_no_out_of_range", 3), ("split_no_negative", u64::MAX)] {
        let path = fixtures_dir().join("malformed").join(format!("{class}.gguf.bin"));
        let bytes = std::fs::read(&path).expect("corpus fixture");
        let count = if no == 3 { 3 } else { 2 };
        let want = |e: &LoadError| matches!(e, LoadError::Gguf { source: GgufError::SplitIndexOutOfRange { no: n, count: c }, .. } if *n == no && *c == count);
        // (A file this small is parsed once it has all arrived: its size is the first prefix.)
        let mut b = CpuBackend::new();
        let mut s = ModelStream::<CpuBackend>::default();
        s.begin_shard(class, Some(bytes.len() as u64)).expect("begin");
        let e = s.feed(&mut b, &bytes).expect_err(class);
        assert!(want(&e), "{class}: {e:?}");
        let Err(e) = webgguf::loader::load_files(std::slice::from_ref(&path), &mut b) else { panic!("{class}: loaded") };
        assert!(want(&e), "{class}: {e:?}");
        let e = webgguf::loader::read_headers(&[path]).expect_err(class);
        assert!(want(&e), "{class}: {e:?}");
    }
}

#[test]
fn shards_load_like_the_file_and_must_come_in_order() {
    let dir = std::env::temp_dir().join(format!("webgguf-loader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let manifest = webgguf::gguf::write_shards(&model_path(SMOL), 40 << 20, &dir).expect("shard");
    assert!(manifest.shards.len() >= 3, "{} shards", manifest.shards.len());
    let files: Vec<Vec<u8>> = manifest.shards.iter().map(|s| std::fs::read(dir.join(&s.file)).expect("shard file")).collect();
    let parts: Vec<&[u8]> = files.iter().map(|f| f.as_slice()).collect();

    let bytes = smol();
    let mut b = CpuBackend::new();
    let (_, whole) = load_bytes(&[&bytes], &mut b).expect("whole");
    let want = logits(b, whole);
    let mut b = CpuBackend::new();
    let m = stream(&mut b, &parts, &[77_777, 1 << 20]).expect("shards");
    assert_eq!(logits(b, m), want);

    // Files given to the CLI in any order.
    let mut paths: Vec<_> = manifest.shards.iter().map(|s| dir.join(&s.file)).collect();
    paths.reverse();
    let mut b = CpuBackend::new();
    let (_, m) = webgguf::loader::load_files(&paths, &mut b).expect("files");
    assert_eq!(logits(b, m), want);

    // Out of order in a stream, one missing, one too many.
    let mut b = CpuBackend::new();
    let e = stream(&mut b, &[parts[1], parts[0]], &[1 << 20]).err().expect("order");
    assert!(matches!(e, LoadError::ShardOrder { expected: 0, found: 1, .. }), "{e}");
    let e = stream(&mut b, &parts[..parts.len() - 1], &[1 << 20]).err().expect("missing");
    assert!(matches!(e, LoadError::Gguf { source: GgufError::MissingShard { .. }, .. }), "{e}");
    let mut extra = parts.clone();
    extra.push(parts[0]);
    let e = stream(&mut b, &extra, &[1 << 20]).err().expect("extra");
    assert!(matches!(e, LoadError::ExtraShard { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
