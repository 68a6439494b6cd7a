//! The streaming loader (`webgguf::web::load`) in headless Chromium, against
//! `pkg-scripts/serve-faults` (a loopback server with Range support and fault injection, base URL
//! in `WEBGGUF_TEST_SERVER` at build time) serving SmolLM2 as one file and as the shards +
//! manifest.json of `webgguf shard --max-size 40M` (3 shards). Run by `pkg-scripts/test-wasm-browser`.
//!
//! Loads onto WebGPU (SwiftShader) and the CPU backend must generate llama.cpp's greedy tokens;
//! a second load must come from the cache with no network bytes; each fault of the server must
//! end in its documented error or a resumed load, leaving only verified entries in the cache.
//! `bench_load_memory` (ignored; run with `--include-ignored bench_load_memory --nocapture`)
//! prints wasm memory growth while loading SmolLM2 and Gemma-3 onto the GPU.
#![cfg(target_arch = "wasm32")]

use serde_json::Value;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use webgguf::gpu::{GpuBackend, GpuDevice};
use webgguf::kv_cache::KvType;
use webgguf::loader::LoadError;
use webgguf::model::{Backend, CpuBackend, Logits, Model};
use webgguf::web::load::{cached_models, cached_shards, delete_cached, load_model, resolve, LoadOptions, LoadReport, ModelSource, Progress};
use webgguf::web::store::StoreKind;

wasm_bindgen_test_configure!(run_in_browser);

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";
/// "The capital of France is" and llama.cpp's first 4 greedy tokens after it
/// (tests/fixtures/oracle/SmolLM2-135M-Instruct.Q4_1.json, case 0; margins ≥ 1.1 logits).
const PROMPT_IDS: [u32; 5] = [504, 3575, 282, 4649, 314];
const ORACLE_GREEDY: [u32; 4] = [7042, 30, 198, 198];

fn server() -> &'static str {
    // Missing at build time fails the test at run time (clippy rejects `.expect` on option_env!).
    let Some(s) = option_env!("WEBGGUF_TEST_SERVER") else { panic!("WEBGGUF_TEST_SERVER was not set at build time: run pkg-scripts/test-wasm-browser") };
    s
}

fn manifest(fault: &str) -> ModelSource {
    let prefix = if fault.is_empty() { String::new() } else { format!("/f/{fault}") };
    ModelSource::Manifest(format!("{}{prefix}/manifest.json", server()))
}

fn opts(use_cache: bool) -> LoadOptions {
    LoadOptions { use_cache, retry_delay_ms: 20, ..LoadOptions::default() }
}

/// Removes every cached shard of `source`, so a test starts from the network.
async fn forget(source: &ModelSource) {
    let urls: Vec<String> = resolve(source, &opts(false)).await.expect("resolve").into_iter().map(|s| s.url).collect();
    delete_cached(&urls).await.expect("delete cached");
}

async fn stats() -> Value {
    let bytes = webgguf::web::fetch_bytes(&format!("{}/stats", server())).await.expect("stats");
    serde_json::from_slice(&bytes).expect("stats json")
}

/// (requests, body bytes) the server has answered for URLs whose path contains `part`.
fn served(stats: &Value, part: &str) -> (u64, u64) {
    let by_path = stats["by_path"].as_object().expect("by_path");
    by_path
        .iter()
        .filter(|(p, _)| p.contains(part))
        .fold((0, 0), |(r, b), (_, v)| (r + v["requests"].as_u64().unwrap_or(0), b + v["body_bytes"].as_u64().unwrap_or(0)))
}

async fn load<B: Backend>(source: &ModelSource, backend: &mut B, o: &LoadOptions) -> (Result<(Model<B>, LoadReport), LoadError>, Vec<Progress>) {
    let mut events = Vec::new();
    let r = load_model(source, backend, o, &mut |p| events.push(p.clone())).await.map(|(_, m, r)| (m, r));
    (r, events)
}

async fn gpu() -> GpuBackend {
    GpuBackend::new(GpuDevice::new_async().await.expect("a WebGPU adapter (Chromium needs --enable-unsafe-webgpu)"))
}

/// The first `n` greedy tokens on the GPU (SwiftShader takes ~25 s per forward pass on 2 cores).
async fn greedy_gpu(g: &mut GpuBackend, model: &Model<GpuBackend>, n: usize) -> Vec<u32> {
    let mut cache = g.new_cache(&model.config, KvType::F16, 32, 0).expect("KV cache");
    let (mut input, mut pos, mut ids) = (PROMPT_IDS.to_vec(), 0, Vec::new());
    while ids.len() < n {
        let logits = model.forward(g, &mut cache, &input, pos, Logits::Last).expect("forward");
        let tok = g.argmax_async(&logits).await.expect("argmax");
        pos += input.len();
        ids.push(tok);
        input = vec![tok];
    }
    ids
}

fn greedy_cpu(b: &mut CpuBackend, model: &Model<CpuBackend>) -> Vec<u32> {
    let mut cache = b.new_cache(&model.config, KvType::F16, 32, 0).expect("KV cache");
    let (mut input, mut pos, mut ids) = (PROMPT_IDS.to_vec(), 0, Vec::new());
    while ids.len() < ORACLE_GREEDY.len() {
        let logits = model.forward(b, &mut cache, &input, pos, Logits::Last).expect("forward");
        let tok = b.argmax(logits).expect("argmax");
        pos += input.len();
        ids.push(tok);
        input = vec![tok];
    }
    ids
}

/// The phases of a load's events, each once, in order of first appearance.
fn phases(events: &[Progress]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for p in events {
        if !out.contains(&p.phase) {
            out.push(p.phase);
        }
    }
    out
}

/// Each shard's events start with "shard", then come only from `source` ("download" or
/// "cache"), at least one per shard; the load ends with "ready".
fn check_phases(events: &[Progress], shards: usize, source: &str) {
    for i in 0..shards {
        let of: Vec<_> = events.iter().filter(|p| p.shard == i && p.phase != "ready").map(|p| p.phase).collect();
        assert_eq!(of.first(), Some(&"shard"), "shard {i}: {of:?}");
        assert!(of.len() >= 2 && of[1..].iter().all(|&p| p == source), "shard {i}: {of:?}, expected {source} after shard");
    }
    assert_eq!(phases(events), ["shard", source, "ready"], "{source} load");
}

fn check_progress(events: &[Progress], total: u64) {
    assert!(events.len() >= 3, "{} progress events", events.len());
    let last = events.last().expect("events");
    assert_eq!(last.phase, "ready");
    assert_eq!(last.loaded, total);
    let report = last.report.as_ref().expect("ready carries the report");
    assert_eq!(report.bytes, total);
    assert!(events.windows(2).all(|w| w[0].loaded <= w[1].loaded), "loaded never goes back");
}

/// On one WebGPU device (its pipelines compiled once): the 3-shard manifest (sha256 verified),
/// then the single file from the network into the cache; then onto the CPU the single file from
/// the cache with no network bytes, and the split by its first shard's name. Every load generates
/// llama.cpp's greedy tokens.
#[wasm_bindgen_test]
async fn file_and_shards_on_gpu_and_cpu_then_from_cache() {
    let t0 = web_time::Instant::now();
    let shards = manifest("");
    let specs = resolve(&shards, &opts(false)).await.expect("manifest");
    assert!(specs.len() >= 3 && specs.iter().all(|s| s.sha256.is_some() && s.bytes.is_some()), "{specs:?}");
    let mut g = gpu().await;
    let (r, events) = load(&shards, &mut g, &opts(false)).await;
    let (model, report) = r.expect("shards onto the GPU");
    check_progress(&events, report.bytes);
    let shards_seen: std::collections::BTreeSet<usize> = events.iter().map(|p| p.shard).collect();
    assert_eq!(shards_seen.len(), specs.len(), "progress for every shard");
    check_phases(&events, specs.len(), "download");
    assert!(events.iter().all(|p| p.total == Some(report.bytes)), "the manifest gives the total up front");
    assert_eq!(greedy_gpu(&mut g, &model, ORACLE_GREEDY.len()).await, ORACLE_GREEDY, "GPU greedy (shards) vs llama.cpp");
    drop(model);
    console_log!("shards on the GPU: {:.1?}", t0.elapsed());

    let file = ModelSource::Url(format!("{}/{MODEL}.gguf", server()));
    forget(&file).await;
    let (r, events) = load(&file, &mut g, &opts(true)).await;
    let (model, report) = r.expect("file onto the GPU");
    console_log!("network load: {report:?}");
    check_progress(&events, report.bytes);
    assert_eq!((report.from_network, report.from_cache, report.cached_now), (report.bytes, 0, 1), "{report:?}");
    check_phases(&events, 1, "download");
    // The same path as the shards: one token keeps SwiftShader's time down.
    assert_eq!(greedy_gpu(&mut g, &model, 1).await, ORACLE_GREEDY[..1], "GPU greedy (file) vs llama.cpp");
    drop(model);
    console_log!("file on the GPU: {:.1?}", t0.elapsed());

    let before = served(&stats().await, MODEL);
    let mut b = CpuBackend::new();
    let (r, events) = load(&file, &mut b, &opts(true)).await;
    let (model, report) = r.expect("file onto the CPU from the cache");
    console_log!("cache load: {report:?}");
    check_progress(&events, report.bytes);
    assert_eq!((report.from_network, report.from_cache), (0, report.bytes), "{report:?}");
    // The second load of a cached model: its bytes are reported as "cache", none as "download".
    check_phases(&events, 1, "cache");
    assert_eq!(served(&stats().await, MODEL), before, "the server saw no request");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY, "CPU greedy (cached file) vs llama.cpp");
    drop(model);

    let first = specs[0].url.clone();
    assert!(first.ends_with(&format!("-00001-of-{:05}.gguf", specs.len())), "{first}");
    let mut b = CpuBackend::new();
    let (r, _) = load(&ModelSource::Url(first), &mut b, &opts(false)).await;
    let (model, _) = r.expect("split by name onto the CPU");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY, "CPU greedy (split by name) vs llama.cpp");
    console_log!("all: {:.1?}", t0.elapsed());
}

/// A connection dropped at half of shard 2: resumed with Range, only the rest transferred.
#[wasm_bindgen_test]
async fn dropped_connection_resumes_with_range() {
    let source = manifest("drop@00002-of");
    forget(&source).await;
    let mut b = CpuBackend::new();
    let (r, _) = load(&source, &mut b, &opts(true)).await;
    let (model, report) = r.expect("resumed load");
    assert_eq!(report.resumes, 1, "{report:?}");
    // Every byte received once (the server may have written more before the drop than arrived).
    assert_eq!((report.from_network, report.discarded), (report.bytes, 0), "no byte twice: {report:?}");
    let stats = stats().await;
    let (path, shard) = stats["by_path"]
        .as_object()
        .expect("by_path")
        .iter()
        .find(|(p, _)| p.starts_with("/f/drop@") && p.ends_with("-00002-of-00003.gguf"))
        .expect("shard 2 served");
    let starts: Vec<u64> = shard["ranges"].as_array().expect("ranges").iter().filter_map(|v| v.as_u64()).collect();
    let size = resolve(&source, &opts(false)).await.expect("resolve")[1].bytes.expect("size");
    assert!(starts.len() == 2 && starts[0] == 0 && starts[1] > 0 && starts[1] <= size / 2, "{path}: requests from {starts:?}");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY);
    assert_cache_verified(&source, 3).await;
    // Listed as one model under its manifest URL, then deleted as one.
    let ModelSource::Manifest(manifest_url) = &source else { panic!("a manifest") };
    let models = cached_models().await.expect("cached models");
    let m = models.iter().find(|m| &m.model == manifest_url).unwrap_or_else(|| panic!("{models:?}"));
    assert_eq!((m.shards, m.bytes), (3, report.bytes));
    let urls: Vec<String> = resolve(&source, &opts(false)).await.expect("resolve").into_iter().map(|s| s.url).collect();
    delete_cached(&urls).await.expect("delete");
    assert!(cached_models().await.expect("cached models").iter().all(|m| &m.model != manifest_url));
}

/// Every cached entry of `source` carries the manifest's size and hash; `n` of them exist.
async fn assert_cache_verified(source: &ModelSource, n: usize) {
    let specs = resolve(source, &opts(false)).await.expect("resolve");
    let cached = cached_shards().await.expect("list cache");
    let mine: Vec<_> = cached.iter().filter(|c| specs.iter().any(|s| s.url == c.url)).collect();
    assert_eq!(mine.len(), n, "cached entries: {mine:?}");
    for c in mine {
        let s = specs.iter().find(|s| s.url == c.url).expect("spec");
        assert_eq!((Some(c.bytes), &c.sha256), (s.bytes, &s.sha256), "{c:?}");
    }
}

/// A server that ignores Range: the resumed request gets the whole shard again, the bytes
/// already held are discarded, and the load succeeds.
#[wasm_bindgen_test]
async fn server_ignoring_range_still_loads() {
    let source = manifest("drop+ignorerange@00002-of");
    let mut b = CpuBackend::new();
    let (r, _) = load(&source, &mut b, &opts(false)).await;
    let (model, report) = r.expect("load");
    assert_eq!(report.resumes, 1);
    assert!(report.discarded > 0 && report.from_network == report.bytes + report.discarded, "{report:?}");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY);
}

/// A server that stops sending with the connection open: after the stall timeout the body is
/// cancelled and the shard resumed from the last byte received.
#[wasm_bindgen_test]
async fn stalled_connection_times_out_and_resumes() {
    let source = manifest("stall@00002-of");
    let o = LoadOptions { stall_timeout_ms: 1000, ..opts(false) };
    let mut b = CpuBackend::new();
    let (r, _) = load(&source, &mut b, &o).await;
    let (model, report) = r.expect("resumed after the stall");
    assert_eq!((report.resumes, report.from_network, report.discarded), (1, report.bytes, 0), "{report:?}");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY);
}

async fn expect_error(fault: &str, use_cache: bool) -> LoadError {
    let source = manifest(fault);
    forget(&source).await;
    let mut b = CpuBackend::new();
    let (r, _) = load(&source, &mut b, &opts(use_cache)).await;
    let e = r.err().unwrap_or_else(|| panic!("{fault}: the load should fail"));
    console_log!("{fault}: {e}");
    e
}

#[wasm_bindgen_test]
async fn html_page_is_not_a_model() {
    let e = expect_error("html@00002-of", true).await;
    assert!(matches!(&e, LoadError::NotGguf { content_type, start, .. } if content_type.starts_with("text/html") && start.starts_with("<!DOCTYPE")), "{e}");
    assert_eq!(e.code(), "malformed");
    // Shard 1 was verified and cached; the page was not.
    assert_cache_verified(&manifest("html@00002-of"), 1).await;
}

/// The file changed between the dropped request and the resume (another ETag): refused, never
/// spliced.
#[wasm_bindgen_test]
async fn file_changed_during_resume_is_refused() {
    let e = expect_error("drop+newetag@00002-of", false).await;
    assert!(matches!(&e, LoadError::Http { detail, .. } if detail.contains("changed during the download")), "{e}");
}

#[wasm_bindgen_test]
async fn missing_shard_is_http_404() {
    let e = expect_error("404@00003-of", false).await;
    assert!(matches!(&e, LoadError::Http { status: 404, url, .. } if url.contains("00003-of")), "{e}");
}

#[wasm_bindgen_test]
async fn wrong_length_is_refused() {
    let e = expect_error("short@00002-of", false).await;
    assert!(matches!(&e, LoadError::Length { .. }), "{e}");
}

#[wasm_bindgen_test]
async fn wrong_bytes_fail_the_hash_and_are_not_cached() {
    let e = expect_error("wrongbytes@00002-of", true).await;
    assert!(matches!(&e, LoadError::Integrity { url, .. } if url.contains("00002-of")), "{e}");
    assert_cache_verified(&manifest("wrongbytes@00002-of"), 1).await;
}

#[wasm_bindgen_test]
async fn connection_that_never_recovers_gives_up() {
    let e = expect_error("dropall@00002-of", false).await;
    assert!(matches!(&e, LoadError::Network { attempts: 5, .. }), "{e}");
}

/// A slow server: many progress events with a rate and an ETA, and the right model.
#[wasm_bindgen_test]
async fn slow_trickle_completes_with_progress() {
    let source = manifest("trickle@00001-of");
    let mut b = CpuBackend::new();
    let (r, events) = load(&source, &mut b, &opts(false)).await;
    let (model, report) = r.expect("trickled load");
    check_progress(&events, report.bytes);
    let during: Vec<_> = events.iter().filter(|p| p.shard == 0 && p.phase == "download").collect();
    assert!(during.len() >= 10, "{} progress events during the slow shard", during.len());
    assert!(during.iter().any(|p| p.rate_bytes_per_s > 0.0 && p.eta_s.is_some()), "rate and ETA reported");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY);
}

/// AbortSignal stops the load with `Aborted` (and the partly loaded weights are dropped).
#[wasm_bindgen_test]
async fn abort_signal_cancels() {
    let controller = web_sys::AbortController::new().expect("AbortController");
    let o = LoadOptions { signal: Some(controller.signal()), ..opts(false) };
    let mut b = CpuBackend::new();
    let mut n = 0;
    let r = load_model(&manifest("trickle@00001-of"), &mut b, &o, &mut |p| {
        n += 1;
        if p.loaded > 1 << 20 {
            controller.abort();
        }
    })
    .await;
    assert!(matches!(r, Err(LoadError::Aborted)), "{:?}", r.err());
    assert!(n >= 2);
}

/// A data entry without its commit record (a write cut short) is never used, and is deleted;
/// a committed entry whose bytes are wrong is deleted and the shard fetched again.
#[wasm_bindgen_test]
async fn torn_and_corrupt_cache_entries_are_not_used() {
    let source = manifest("404@never-matches");
    forget(&source).await;
    let specs = resolve(&source, &opts(false)).await.expect("resolve");
    let cache = webgguf::web::load::open_cache().await.expect("cache");
    // Torn: shard 1's data with no record.
    let garbage = vec![0x47u8; specs[0].bytes.expect("size") as usize];
    assert!(cache.store_uncommitted(&specs[0].url, &garbage[..1000]).await.is_ok());
    // Corrupt: shard 2 committed with the manifest's hash but wrong bytes.
    let bytes = specs[1].bytes.expect("size") as usize;
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(&vec![0u8; bytes][..]));
    let record = webgguf::web::cache::CommitRecord::new(&specs[1].url, bytes as u64, specs[1].sha256.as_deref(), None, None);
    assert!(cache.store(record, &parts).await.is_ok());

    let mut b = CpuBackend::new();
    let (r, _) = load(&source, &mut b, &opts(true)).await;
    let (model, report) = r.expect("load past the bad entries");
    // The corrupt entry failed the first attempt, which had cached shard 1 from the network;
    // the second attempt read shard 1 from the cache and the rest from the network.
    let note = report.cache_note.clone().unwrap_or_default();
    assert!(note.contains("00002-of") && note.contains("cached copy"), "{report:?}");
    assert_eq!((report.from_cache, report.from_network), (specs[0].bytes.expect("size"), report.bytes - specs[0].bytes.expect("size")), "{report:?}");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY);
    assert_cache_verified(&source, specs.len()).await;
}

/// A model that does not fit the cache budget (as when storage is short) still loads; the
/// report says why it was not cached, and nothing of it is in the cache.
#[wasm_bindgen_test]
async fn model_over_the_cache_budget_loads_uncached() {
    let source = manifest("404@budget");
    forget(&source).await;
    let o = LoadOptions { max_cache_bytes: Some(1 << 20), ..opts(true) };
    let mut b = CpuBackend::new();
    let (r, _) = load(&source, &mut b, &o).await;
    let (model, report) = r.expect("uncached load");
    assert_eq!(report.cached_now, 0);
    assert!(report.cache_note.as_deref().is_some_and(|n| n.starts_with("not cached")), "{report:?}");
    assert_cache_verified(&source, 0).await;
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY);
}

/// The OPFS store: shards written to disk as they arrive, committed after verification, read
/// back with no network byte.
#[wasm_bindgen_test]
async fn opfs_store_caches_and_serves() {
    let source = manifest("404@opfs");
    forget(&source).await;
    let o = LoadOptions { store: StoreKind::Opfs, ..opts(true) };
    let mut b = CpuBackend::new();
    let (r, _) = load(&source, &mut b, &o).await;
    let (model, report) = r.expect("load into OPFS");
    assert_eq!((report.cached_now, report.cache_note.as_deref()), (3, None), "{report:?}");
    drop(model);
    assert_cache_verified(&source, 3).await;
    let mut b = CpuBackend::new();
    let (r, events) = load(&source, &mut b, &o).await;
    let (model, report) = r.expect("load from OPFS");
    assert_eq!((report.from_network, report.from_cache), (0, report.bytes), "{report:?}");
    check_phases(&events, 3, "cache");
    assert_eq!(greedy_cpu(&mut b, &model), ORACLE_GREEDY);
}

fn wasm_memory_bytes() -> f64 {
    use wasm_bindgen::JsCast;
    let mem: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    mem.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as f64
}

/// Wasm linear memory before and after streaming each model onto the GPU (memory only grows,
/// so "after" is the peak), uncached, in one fresh page.
#[wasm_bindgen_test]
#[ignore]
async fn bench_load_memory() {
    for name in [MODEL, "gemma-3-270m-q4_k_m"] {
        let source = ModelSource::Url(format!("{}/{name}.gguf", server()));
        let before = wasm_memory_bytes();
        let mut g = gpu().await;
        let (gguf, model, report) = load_model(&source, &mut g, &opts(false), &mut |_| {}).await.expect("load");
        let after = wasm_memory_bytes();
        console_log!(
            "{name}: {:.1} MB file ({:.1} MB header), wasm memory {:.1} → {:.1} MiB (+{:.1}), load {:.0} ms (network {:.0}, upload {:.0})",
            report.bytes as f64 / 1e6,
            gguf.shards[0].data_offset as f64 / 1e6,
            before / 1048576.0,
            after / 1048576.0,
            (after - before) / 1048576.0,
            report.ms_total,
            report.ms_network,
            report.ms_upload
        );
        drop(model);
    }
}
