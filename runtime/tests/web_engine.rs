//! The engine compiled to wasm32 in headless Chromium (run by `pkg-scripts/test-wasm-browser`,
//! which serves models/ on a loopback port and passes the model URL at build time in
//! `WEBGGUF_TEST_MODEL_URL`). Greedy decoding is held against llama.cpp's tokens
//! (tests/fixtures/oracle/SmolLM2-135M-Instruct.Q4_1.json, case 0, f32 KV like the oracle).
//! `bench_decode` is ignored here; `pkg-scripts/bench-cpu` runs it. The planner's tests count
//! the bytes `pkg-scripts/serve-faults` (`WEBGGUF_TEST_SERVER`) sent: a model too large for
//! wasm32 (a header PUT to the server, served as a 4.6 GB file of zeros after it) fails before
//! its weights are fetched, and `device: "auto"` fetches the model once.
#![cfg(target_arch = "wasm32")]

use serde_json::Value;
use wasm_bindgen::prelude::{Closure, JsValue};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use webgguf::gguf::writer::{data_layout, GgufBuilder};
use webgguf::gguf::Value as GgufValue;
use webgguf::quant::GgmlType;
use webgguf::web::header::fetch_header;
use webgguf::web::load::{LoadOptions, ModelSource};
use webgguf::web::WasmEngine;

wasm_bindgen_test_configure!(run_in_browser);

const PROMPT: &str = "The capital of France is";
/// pkg-scripts/bench-cpu uses the same prompt natively.
const BENCH_PROMPT: &str = "Once upon a time, in a small village,";
const PROMPT_IDS: [u32; 5] = [504, 3575, 282, 4649, 314];
/// llama.cpp's first 8 greedy tokens (`cases[0].greedy_ids[..8]`) and its top-1 minus top-2
/// logit at each step (`greedy_margins`).
const ORACLE_GREEDY: [u32; 8] = [7042, 30, 198, 198, 504, 2988, 314, 42];
const ORACLE_MARGINS: [f64; 8] = [2.422, 1.111, 1.338, 1.749, 0.898, 0.034, 1.648, 1.936];
/// Below this oracle margin either of the top two tokens is an honest answer
/// (tests/fixtures/oracle/README.md): llama.cpp's own batched and single-token logits differ
/// by more. Step 5 (" capital" 14.468 vs " United" 14.434) is such a close call.
const CLOSE_CALL: f64 = 0.05;

fn model_url() -> &'static str {
    // Missing at build time fails the test at run time (clippy rejects `.expect` on option_env!).
    let Some(url) = option_env!("WEBGGUF_TEST_MODEL_URL") else {
        panic!("WEBGGUF_TEST_MODEL_URL was not set at build time: run pkg-scripts/test-wasm-browser")
    };
    url
}

fn options(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = js_sys::Object::new();
    for (k, v) in pairs {
        js_sys::Reflect::set(&o, &(*k).into(), v).expect("set option");
    }
    o.into()
}

/// Through the JS-facing loader (`WasmEngine.load`: options object, progress callback), uncached.
async fn load(kv: &str) -> WasmEngine {
    let events = std::rc::Rc::new(std::cell::RefCell::new(Vec::<JsValue>::new()));
    let sink = events.clone();
    let on_progress = Closure::<dyn FnMut(JsValue)>::new(move |p: JsValue| sink.borrow_mut().push(p));
    let opts = options(&[("kv", kv.into()), ("contextLength", 256.into()), ("cache", false.into()), ("device", "cpu".into())]);
    let engine =
        WasmEngine::load(model_url().into(), opts, Some(on_progress.as_ref().unchecked_ref::<js_sys::Function>().clone())).await.expect("loading the model");
    let last = events.borrow().last().cloned().expect("progress events");
    let phase = js_sys::Reflect::get(&last, &"phase".into()).ok().and_then(|v| v.as_string());
    assert_eq!(phase.as_deref(), Some("ready"));
    engine
}

/// Errors reach JS as `Error`s with a stable `code`.
#[wasm_bindgen_test]
async fn load_errors_carry_codes() {
    let code = |e: JsValue| js_sys::Reflect::get(&e, &"code".into()).ok().and_then(|v| v.as_string()).unwrap_or_default();
    let missing = model_url().replace(".gguf", "-missing.gguf");
    let e = WasmEngine::load(missing.into(), options(&[]), None).await.err().expect("404");
    assert_eq!(code(e), "http");
    let e = WasmEngine::load(model_url().into(), options(&[("kv", "q3".into())]), None).await.err().expect("bad kv");
    assert_eq!(code(e), "options");
    let e = WasmEngine::load(JsValue::from(7), options(&[]), None).await.err().expect("bad source");
    assert_eq!(code(e), "options");
    let e = WasmEngine::new(b"GGUF", "f16", 16).map(|_| ()).map_err(JsValue::from).expect_err("4 bytes");
    assert!(e.is_object());
}

fn expected_kernels() -> &'static str {
    if cfg!(target_feature = "simd128") {
        "simd128"
    } else {
        "scalar"
    }
}

#[wasm_bindgen_test]
async fn smollm2_greedy_matches_llama_cpp() {
    assert_eq!(WasmEngine::kernels(), expected_kernels());
    let mut engine = load("f32").await;
    let prompt = engine.tokenize(PROMPT, false, false).expect("tokenize");
    assert_eq!(prompt, PROMPT_IDS);
    // Greedy from the prompt must follow llama.cpp up to a close call; where it takes the
    // other answer there, force llama.cpp's token and check the rest the same way, so every
    // one of the 8 tokens is checked.
    let mut forced = 0;
    while forced < ORACLE_GREEDY.len() {
        let context = [&PROMPT_IDS[..], &ORACLE_GREEDY[..forced]].concat();
        let want = &ORACLE_GREEDY[forced..];
        let ids = engine.generate_greedy(&context, want.len() as u32).expect("generate");
        let text = engine.decode(&ids).expect("decode");
        console_log!("kernels {}, {forced} oracle tokens forced: {ids:?} {text:?}", WasmEngine::kernels());
        assert_eq!(ids.len(), want.len(), "stopped early: {ids:?}");
        let Some(d) = ids.iter().zip(want).position(|(a, b)| a != b) else { break };
        let step = forced + d;
        assert!(ORACLE_MARGINS[step] < CLOSE_CALL, "step {step}: {} where llama.cpp says {} by a clear margin {}", ids[d], want[d], ORACLE_MARGINS[step]);
        forced = step + 1;
    }
}

/// A chat answer that calls a tool reaches JS as `toolCalls` with finish reason "tool_calls",
/// and a second request reuses the cache (`reusedTokens`). SmolLM2's template does not render
/// tools, so they are described in the system message. The answer is forced, as a lost
/// device's replay forces it: a 135 M model calls nothing reliably.
#[wasm_bindgen_test]
async fn tool_calls_and_prefix_reuse_reach_js() {
    let engine = load("f16").await;
    let json = |s: &str| js_sys::JSON::parse(s).expect("JSON");
    let tools = json(r#"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]"#);
    let messages = json(r#"[{"role": "user", "content": "Weather in Paris?"}]"#);
    let prompt = engine.apply_chat_template(messages, true, tools).expect("template");
    assert!(prompt.contains("You can call these tools") && prompt.contains("get_weather"), "{prompt}");
    let ids = engine.tokenize(&prompt, false, true).expect("tokenize");
    let answer = engine.tokenize(r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#, false, false).expect("tokenize");
    let forced = [answer, engine.tokenize("<|im_end|>", false, true).expect("tokenize")].concat();
    let run = |forced: &[u32]| {
        engine.start(&ids, json(r#"{"temperature": 0}"#), json(r#"{"maxTokens": 40}"#), forced, json(r#"{"toolCalls": true}"#)).expect("start");
        async {
            let mut text = String::new();
            loop {
                let step = JsFuture::from(engine.step()).await.expect("step");
                text += &field(&step, &["text"]).as_string().unwrap_or_default();
                if field(&step, &["done"]).as_bool() == Some(true) {
                    return (text, step);
                }
            }
        }
    };
    let (text, last) = run(&forced).await;
    assert_eq!(text, "", "the call is not shown as text");
    assert_eq!(field(&last, &["finishReason"]).as_string().as_deref(), Some("tool_calls"));
    let call = js_sys::JSON::stringify(&field(&last, &["toolCalls"])).ok().and_then(|s| s.as_string()).unwrap_or_default();
    assert_eq!(call, r#"[{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}]"#);
    assert_eq!(field(&last, &["reusedTokens"]).as_f64(), Some(0.0));
    let (_, again) = run(&forced).await;
    assert_eq!(field(&again, &["reusedTokens"]).as_f64(), Some((ids.len() - 1) as f64), "the same prompt again comes from the cache");
}

/// Decode throughput: 32 greedy tokens after a warm-up generation, f16 KV, on a prompt whose
/// greedy continuation runs past 32 tokens (the France prompt ends at 29). Prints one line
/// `BENCH {json}` that pkg-scripts/bench-cpu reads; asserts nothing about speed.
#[wasm_bindgen_test]
#[ignore = "benchmark: pkg-scripts/bench-cpu"]
async fn bench_decode() {
    let mut engine = load("f16").await;
    let prompt = engine.tokenize(BENCH_PROMPT, false, false).expect("tokenize");
    engine.generate_greedy(&prompt, 8).expect("warm-up");
    engine.generate_greedy(&prompt, 32).expect("generate");
    let stats = engine.stats_json().expect("stats");
    console_log!("BENCH {{\"kernels\":\"{}\",\"stats\":{stats}}}", WasmEngine::kernels());
}

fn server() -> &'static str {
    let Some(s) = option_env!("WEBGGUF_TEST_SERVER") else { panic!("WEBGGUF_TEST_SERVER was not set at build time: run pkg-scripts/test-wasm-browser") };
    s
}

fn code(e: &JsValue) -> String {
    js_sys::Reflect::get(e, &"code".into()).ok().and_then(|v| v.as_string()).unwrap_or_default()
}

fn field(o: &JsValue, path: &[&str]) -> JsValue {
    path.iter().fold(o.clone(), |o, k| js_sys::Reflect::get(&o, &(*k).into()).unwrap_or(JsValue::UNDEFINED))
}

/// Body bytes the server has sent for `path` (exactly that path) so far.
async fn served(path: &str) -> u64 {
    let bytes = webgguf::web::fetch_bytes(&format!("{}/stats", server())).await.expect("stats");
    let stats: Value = serde_json::from_slice(&bytes).expect("stats json");
    stats["by_path"][path]["body_bytes"].as_u64().unwrap_or(0)
}

/// Requests the server has answered for `path`.
async fn stats_requests(path: &str) -> u64 {
    let bytes = webgguf::web::fetch_bytes(&format!("{}/stats", server())).await.expect("stats");
    let stats: Value = serde_json::from_slice(&bytes).expect("stats json");
    stats["by_path"][path]["requests"].as_u64().unwrap_or(0)
}

/// Llama-3.1-8B's header (Q4_K matrices: 4.6 GB, over wasm32's 4 GiB) and the size of the file
/// it heads.
fn llama_8b_header() -> (Vec<u8>, u64) {
    let (layers, d, kv, ffn, vocab) = (32u64, 4096u64, 1024u64, 14336u64, 128_256u64);
    let mut b = GgufBuilder::new();
    for (k, v) in [
        ("block_count", 32),
        ("context_length", 131_072),
        ("embedding_length", 4096),
        ("feed_forward_length", 14336),
        ("attention.head_count", 32),
        ("attention.head_count_kv", 8),
        ("vocab_size", 128_256),
    ] {
        b.kv(&format!("llama.{k}"), GgufValue::U32(v));
    }
    b.kv("general.architecture", GgufValue::String("llama".into()));
    b.kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()));
    b.kv("tokenizer.ggml.pre", GgufValue::String("llama-bpe".into()));
    b.tensor("token_embd.weight", &[d, vocab], GgmlType::Q4_K);
    for i in 0..layers {
        let n = |x: &str| format!("blk.{i}.{x}");
        b.tensor(&n("attn_norm.weight"), &[d], GgmlType::F32);
        b.tensor(&n("attn_q.weight"), &[d, d], GgmlType::Q4_K);
        b.tensor(&n("attn_k.weight"), &[d, kv], GgmlType::Q4_K);
        b.tensor(&n("attn_v.weight"), &[d, kv], GgmlType::Q4_K);
        b.tensor(&n("attn_output.weight"), &[d, d], GgmlType::Q4_K);
        b.tensor(&n("ffn_norm.weight"), &[d], GgmlType::F32);
        b.tensor(&n("ffn_gate.weight"), &[d, ffn], GgmlType::Q4_K);
        b.tensor(&n("ffn_up.weight"), &[d, ffn], GgmlType::Q4_K);
        b.tensor(&n("ffn_down.weight"), &[ffn, d], GgmlType::Q4_K);
    }
    b.tensor("output_norm.weight", &[d], GgmlType::F32);
    b.tensor("output.weight", &[d, vocab], GgmlType::Q4_K);
    let sizes: Vec<u64> = b.tensor_bytes().into_iter().map(|s| s.expect("tensor size")).collect();
    let (_, data) = data_layout(&sizes, b.alignment());
    let (header, _) = b.header();
    let size = header.len() as u64 + data;
    (header, size)
}

/// Stores `bytes` on the server as `/upload/NAME`, served as a file of `size` bytes.
async fn upload(name: &str, bytes: &[u8], size: u64) {
    let init = web_sys::RequestInit::new();
    init.set_method("PUT");
    init.set_body(&js_sys::Uint8Array::from(bytes));
    let req = web_sys::Request::new_with_str_and_init(&format!("{}/upload/{name}?size={size}", server()), &init).expect("request");
    let window = web_sys::window().expect("a window");
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_request(&req)).await.expect("PUT").unchecked_into();
    assert_eq!(resp.status(), 200, "PUT /upload/{name}");
}

/// A model larger than wasm32 can address, asked for on the CPU, fails with `model_too_large`
/// (naming the limit) before its weights are fetched: the server sends at most the header + 1
/// MiB. Also when the server ignores Range: the body is cancelled once the header is read.
#[wasm_bindgen_test]
async fn model_too_large_for_wasm32_fails_from_the_header() {
    let (header, size) = llama_8b_header();
    assert!(size > 4 << 30, "{size}");
    upload("llama-8b-shape.gguf", &header, size).await;
    let cpu = || options(&[("device", "cpu".into()), ("cache", false.into())]);
    for (path, bound) in [
        ("/upload/llama-8b-shape.gguf", header.len() as u64 + (1 << 20)),
        // The server writes into the socket buffers (several MiB on loopback) before the
        // browser cancels: far below the model, not exact.
        ("/f/ignorerange/upload/llama-8b-shape.gguf", 64 << 20),
    ] {
        let url = format!("{}{path}", server());
        let before = served(path).await;
        let e = WasmEngine::load(url.clone().into(), cpu(), None).await.err().expect("refused");
        assert_eq!(code(&e), "model_too_large", "{e:?}");
        let message = field(&e, &["message"]).as_string().unwrap_or_default();
        assert!(message.contains("wasm32"), "{message}");
        let e = WasmEngine::plan(url.clone().into(), cpu()).await.expect_err("plan refused");
        assert_eq!(code(&e), "model_too_large");
        let sent = served(path).await - before;
        console_log!("{path}: {sent} bytes served for two refusals (header {} bytes)", header.len());
        assert!(sent <= 2 * bound, "{path}: {sent} bytes served, over 2 × {bound}");
        // What the client read is bounded either way.
        let h = fetch_header(&ModelSource::Url(url), &LoadOptions { use_cache: false, ..LoadOptions::default() }).await.expect("header");
        assert!(h.network_bytes <= header.len() as u64 + (2 << 20), "{path}: read {}", h.network_bytes);
        assert_eq!(h.header.tensors.len(), 2 + 9 * 32 + 1);
    }
}

/// `plan` on SmolLM2: the device, KV type and context, the bytes and the reasons; the header
/// costs at most the header + 1 MiB of network.
#[wasm_bindgen_test]
async fn plan_smollm2() {
    let no_cache = || [("cache", JsValue::from(false))];
    let p = WasmEngine::plan(model_url().into(), options(&no_cache())).await.expect("plan");
    console_log!("plan: {}", js_sys::JSON::stringify(&p).ok().and_then(|s| s.as_string()).unwrap_or_default());
    // Chromium exposes SwiftShader's adapter, whose limits take SmolLM2.
    assert_eq!(field(&p, &["device"]).as_string().as_deref(), Some("webgpu"));
    assert_eq!(field(&p, &["kv"]).as_string().as_deref(), Some("f16"));
    assert_eq!(field(&p, &["contextLength"]).as_f64(), Some(4096.0));
    let weights = field(&p, &["bytes", "weights"]).as_f64().expect("weights");
    assert!((50e6..110e6).contains(&weights), "{weights}");
    assert!(field(&p, &["bytes", "total"]).as_f64().expect("total") > weights);
    assert!(js_sys::Array::from(&field(&p, &["reasons"])).length() > 0);
    let h = fetch_header(&ModelSource::Url(model_url().into()), &LoadOptions { use_cache: false, ..LoadOptions::default() }).await.expect("header");
    let header_bytes = field(&p, &["headerBytes"]).as_f64().expect("headerBytes") as u64;
    assert!(header_bytes >= h.header.data_offset.min(1 << 20) && header_bytes <= h.header.data_offset + (1 << 20), "{header_bytes}");

    let opts = options(&[("cache", false.into()), ("device", "cpu".into()), ("kv", "q8".into()), ("contextLength", 100_000.into())]);
    let p = WasmEngine::plan(model_url().into(), opts).await.expect("cpu plan");
    assert_eq!(field(&p, &["device"]).as_string().as_deref(), Some("cpu"));
    assert_eq!(field(&p, &["kv"]).as_string().as_deref(), Some("q8"));
    // Capped at the trained context (8192).
    assert_eq!(field(&p, &["contextLength"]).as_f64(), Some(8192.0));
    assert_eq!(field(&p, &["bytes", "limit"]).as_f64(), Some((4u64 << 30) as f64));

    // SmolLM2's header spans more than 1 MiB: two steps. A server that ignores Range is read
    // on across them (one request); a connection dropped mid-range is resumed from the bytes held.
    for fault in ["ignorerange", "drop"] {
        let url = model_url().replacen(server(), &format!("{}/f/{fault}", server()), 1);
        let path = url.strip_prefix(server()).expect("under the server").to_owned();
        let before = stats_requests(&path).await;
        let p = WasmEngine::plan(url.into(), options(&no_cache())).await.expect(fault);
        assert_eq!(field(&p, &["contextLength"]).as_f64(), Some(4096.0), "{fault}");
        let requests = stats_requests(&path).await - before;
        console_log!("{fault}: {requests} requests, header bytes {:?}", field(&p, &["headerBytes"]).as_f64());
        // drop: the first range cut at half, its resume, the second step (3); Chromium may
        // also retry a request on its own when a kept-alive connection closes under it (seen
        // once on a loaded machine: 4).
        let expected = if fault == "ignorerange" { 1..=1 } else { 3..=4 };
        assert!(expected.contains(&requests), "{fault}: {requests} requests");
    }

    let html = model_url().replacen(server(), &format!("{}/f/html", server()), 1);
    let e = WasmEngine::plan(html.into(), options(&no_cache())).await.expect_err("html");
    assert_eq!(code(&e), "malformed");
}

/// `device: "auto"` plans, then streams the model once, to the planned device.
#[wasm_bindgen_test]
async fn auto_streams_the_model_once() {
    let path = model_url().strip_prefix(server()).expect("model under the server");
    let before = served(path).await;
    let engine = WasmEngine::load(model_url().into(), options(&[("cache", false.into()), ("contextLength", 64.into())]), None).await.expect("auto load");
    let sent = served(path).await - before;
    let device = field(&engine.device_info(), &["device"]).as_string();
    let model = field(&engine.load_report(), &["bytes"]).as_f64().expect("report bytes") as u64;
    console_log!("auto: {device:?}, {sent} bytes served for a {model}-byte model");
    assert_eq!(device.as_deref(), Some("webgpu"), "SwiftShader's adapter takes SmolLM2");
    assert!(sent >= model && sent <= model + (3 << 20), "{sent} bytes served for a {model}-byte model");
    assert_eq!(engine.context_length(), 64);
}

/// A model in the cache is planned from the cache: no network byte (an offline app plans too).
#[wasm_bindgen_test]
async fn plan_reads_a_cached_header_from_the_cache() {
    let path = model_url().strip_prefix(server()).expect("model under the server");
    let cached = || options(&[("cache", true.into()), ("device", "cpu".into()), ("contextLength", 64.into())]);
    WasmEngine::load(model_url().into(), cached(), None).await.expect("load into the cache");
    let before = served(path).await;
    let p = WasmEngine::plan(model_url().into(), cached()).await.expect("plan");
    assert_eq!(served(path).await, before, "the server saw no request");
    assert_eq!(field(&p, &["headerFromCache"]).as_bool(), Some(true));
    assert_eq!(field(&p, &["headerBytes"]).as_f64(), Some(0.0));
    assert_eq!(field(&p, &["device"]).as_string().as_deref(), Some("cpu"));
    webgguf::web::delete_cached_model(model_url().into()).await.expect("delete the cached copy");
}

/// An adapter too small for the model (a 4 KiB binding limit, as web/test/small-adapter.js
/// sets): `auto` plans the CPU from the header and streams the model once. (Before the planner,
/// the model went to the GPU, failed there, and was streamed again to the CPU.)
#[wasm_bindgen_test]
async fn auto_with_a_too_small_adapter_streams_once_to_the_cpu() {
    let eval = |src: &str| js_sys::Function::new_no_args(src).call0(&JsValue::NULL).expect("script");
    eval(
        "globalThis.__limit = Object.getOwnPropertyDescriptor(GPUSupportedLimits.prototype, 'maxStorageBufferBindingSize');
         Object.defineProperty(GPUSupportedLimits.prototype, 'maxStorageBufferBindingSize', { get: () => 4096, configurable: true });",
    );
    let path = model_url().strip_prefix(server()).expect("model under the server");
    let before = served(path).await;
    let loaded = WasmEngine::load(model_url().into(), options(&[("cache", false.into()), ("contextLength", 64.into())]), None).await;
    let sent = served(path).await - before;
    eval("Object.defineProperty(GPUSupportedLimits.prototype, 'maxStorageBufferBindingSize', globalThis.__limit);");
    let engine = loaded.expect("auto load");
    let info = engine.device_info();
    let model = field(&engine.load_report(), &["bytes"]).as_f64().expect("report bytes") as u64;
    console_log!("small adapter: {sent} bytes served for a {model}-byte model; fallback {:?}", field(&info, &["fallback"]).as_string());
    assert_eq!(field(&info, &["device"]).as_string().as_deref(), Some("cpu"));
    assert!(field(&info, &["fallback"]).as_string().unwrap_or_default().starts_with("not the GPU: "));
    assert!(sent >= model && sent <= model + (3 << 20), "{sent} bytes served for a {model}-byte model");
}
