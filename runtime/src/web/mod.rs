//! Browser bindings (wasm32 only): the streaming loader (`load`: fetch, resume, cache, progress;
//! `cache`: the shard cache) and a small `WasmEngine` over the CPU backend, used by the in-browser
//! tests and benchmark (`runtime/tests/web_engine.rs`, `web_loader.rs`). The OpenAI-shaped JS
//! API (workers, chat) comes with the npm package and grows out of this.

pub mod cache;
pub mod load;
pub mod opfs;
mod platform;
pub mod store;

use crate::cpu::Kernels;
use crate::engine::{Flow, Session, SessionOptions};
use crate::kv_cache::KvType;
use crate::model::CpuBackend;
use crate::sampler::{Sampler, SamplerConfig, StopConditions};
use crate::tokenizer::Tokenizer;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// One model and one conversation on the CPU kernels (SIMD128 when the build has it).
#[wasm_bindgen]
pub struct WasmEngine {
    session: Session<CpuBackend>,
    tokenizer: Tokenizer,
}

#[wasm_bindgen]
impl WasmEngine {
    /// Loads a whole GGUF file held in memory. `kv`: "f32", "f16", "q8" or "q4"; `n_ctx`:
    /// positions the KV cache holds (capped at the model's trained context).
    #[wasm_bindgen(constructor)]
    pub fn new(model_bytes: &[u8], kv: &str, n_ctx: u32) -> Result<WasmEngine, JsError> {
        console_error_panic_hook::set_once();
        let kv = KvType::from_name(kv).ok_or_else(|| JsError::new(&format!("unknown KV type {kv:?} (f32, f16, q8, q4)")))?;
        let mut backend = CpuBackend::new();
        let (gguf, model) = crate::loader::load_bytes(&[model_bytes], &mut backend).map_err(js_err)?;
        let tokenizer = Tokenizer::from_metadata(gguf.metadata()).map_err(js_err)?;
        let session = Session::new(backend, model, SessionOptions { kv, n_ctx: n_ctx as usize }).map_err(js_err)?;
        Ok(WasmEngine { session, tokenizer })
    }

    /// Streams a model onto the CPU backend. `source`: a URL string (a split's first shard's
    /// name loads every shard), an array of shard URLs, or `{ manifest: url }`. `options`:
    /// `{ kv, contextLength, cache (default true), store ("cache-storage" (default) or "opfs"),
    /// maxCacheBytes, signal (AbortSignal), maxAttempts, retryDelayMs, stallTimeoutMs }`.
    /// `on_progress` (optional) receives progress objects (see
    /// `load::Progress`); the last has `phase: "ready"` and the load report. Errors are `Error`s
    /// with a stable `code` (network, http, malformed, length, integrity, aborted, model…).
    pub async fn load(source: JsValue, options: JsValue, on_progress: Option<js_sys::Function>) -> Result<WasmEngine, JsValue> {
        console_error_panic_hook::set_once();
        let source = model_source(&source)?;
        let get = |k: &str| js_sys::Reflect::get(&options, &k.into()).ok().filter(|v| !v.is_undefined() && !v.is_null());
        let kv_name = get("kv").and_then(|v| v.as_string()).unwrap_or_else(|| "f16".into());
        let kv = KvType::from_name(&kv_name).ok_or_else(|| coded_error("options", &format!("unknown KV type {kv_name:?} (f32, f16, q8, q4)")))?;
        let n_ctx = get("contextLength").and_then(|v| v.as_f64()).unwrap_or(4096.0) as usize;
        let mut opts = load::LoadOptions::default();
        if let Some(c) = get("cache").and_then(|v| v.as_bool()) {
            opts.use_cache = c;
        }
        if let Some(n) = get("maxAttempts").and_then(|v| v.as_f64()) {
            opts.max_attempts = (n as u32).max(1);
        }
        if let Some(ms) = get("retryDelayMs").and_then(|v| v.as_f64()) {
            opts.retry_delay_ms = ms as i32;
        }
        if let Some(ms) = get("stallTimeoutMs").and_then(|v| v.as_f64()) {
            opts.stall_timeout_ms = (ms as i32).max(1);
        }
        opts.signal = get("signal").and_then(|v| v.dyn_into().ok());
        match get("store").and_then(|v| v.as_string()).as_deref() {
            None | Some("cache-storage") => {}
            Some("opfs") => opts.store = store::StoreKind::Opfs,
            Some(other) => return Err(coded_error("options", &format!("store {other:?} (cache-storage or opfs)"))),
        }
        opts.max_cache_bytes = get("maxCacheBytes").and_then(|v| v.as_f64()).map(|b| b as u64);
        let mut report = |p: &load::Progress| {
            if let Some(f) = &on_progress {
                let _ = f.call1(&JsValue::NULL, &to_js(p));
            }
        };
        let mut backend = CpuBackend::new();
        let (gguf, model, _) = load::load_model(&source, &mut backend, &opts, &mut report).await.map_err(load_error)?;
        let tokenizer = Tokenizer::from_metadata(gguf.metadata()).map_err(|e| coded_error("model", &e.to_string()))?;
        let session = Session::new(backend, model, SessionOptions { kv, n_ctx }).map_err(|e| coded_error("model", &e.to_string()))?;
        Ok(WasmEngine { session, tokenizer })
    }

    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, JsError> {
        self.tokenizer.tokenize(text, add_special, parse_special).map_err(js_err)
    }

    /// Greedy tokens after `prompt_ids` (from an empty conversation), at most `max_tokens`,
    /// stopping early at an end-of-generation token.
    pub fn generate_greedy(&mut self, prompt_ids: &[u32], max_tokens: u32) -> Result<Vec<u32>, JsError> {
        let mut sampler = Sampler::new(SamplerConfig::greedy(), self.session.model.config.n_vocab).map_err(js_err)?;
        let stop = StopConditions { max_tokens: Some(max_tokens as usize), ..StopConditions::default() };
        let generation = self
            .session
            .generate_text(&self.tokenizer, prompt_ids, &mut sampler, &stop, None, |_| Flow::Continue)
            .map_err(js_err)?;
        Ok(generation.ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, JsError> {
        self.tokenizer.decode(ids).map_err(js_err)
    }

    /// The last generation's timings (`engine::Stats`) as JSON.
    pub fn stats_json(&self) -> Result<String, JsError> {
        serde_json::to_string(&self.session.stats()).map_err(js_err)
    }

    /// The CPU kernel family this build runs: "simd128" or "scalar".
    pub fn kernels() -> String {
        Kernels::best().name().to_owned()
    }
}

/// A JS `Error` with a stable `code` property.
fn coded_error(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name("WebggufError");
    let _ = js_sys::Reflect::set(&e, &"code".into(), &code.into());
    e.into()
}

fn load_error(e: crate::loader::LoadError) -> JsValue {
    coded_error(e.code(), &e.to_string())
}

fn to_js<T: serde::Serialize>(v: &T) -> JsValue {
    serde_json::to_string(v).ok().and_then(|s| js_sys::JSON::parse(&s).ok()).unwrap_or(JsValue::NULL)
}

/// A URL string, an array of URLs, or `{ manifest: url }`.
fn model_source(v: &JsValue) -> Result<load::ModelSource, JsValue> {
    if let Some(url) = v.as_string() {
        return Ok(load::ModelSource::Url(url));
    }
    if js_sys::Array::is_array(v) {
        let urls: Option<Vec<String>> = js_sys::Array::from(v).iter().map(|u| u.as_string()).collect();
        return urls.filter(|u| !u.is_empty()).map(load::ModelSource::Urls).ok_or_else(|| coded_error("options", "model: an array of URL strings"));
    }
    if let Some(m) = js_sys::Reflect::get(v, &"manifest".into()).ok().and_then(|m| m.as_string()) {
        return Ok(load::ModelSource::Manifest(m));
    }
    Err(coded_error("options", "model: a URL, an array of shard URLs, or { manifest: url }"))
}

/// Every shard in the browser's cache: `[{ url, bytes, sha256, etag, committed_ms }]`.
#[wasm_bindgen(js_name = cachedShards)]
pub async fn cached_shards() -> Result<JsValue, JsValue> {
    let list = load::cached_shards().await.map_err(load_error)?;
    Ok(to_js(&list))
}

/// The cached models: `[{ model, shards, bytes, urls }]` (`model`: the manifest URL or the
/// first shard's URL it was loaded by).
#[wasm_bindgen(js_name = cachedModels)]
pub async fn cached_models() -> Result<JsValue, JsValue> {
    let list = load::cached_models().await.map_err(load_error)?;
    Ok(to_js(&list))
}

/// Deletes the cached shards of a model (`source` as for `WasmEngine.load`).
#[wasm_bindgen(js_name = deleteCachedModel)]
pub async fn delete_cached_model(source: JsValue) -> Result<(), JsValue> {
    let source = model_source(&source)?;
    let specs = load::resolve(&source, &load::LoadOptions { use_cache: false, ..Default::default() }).await.map_err(load_error)?;
    let urls: Vec<String> = specs.into_iter().map(|s| s.url).collect();
    load::delete_cached(&urls).await.map_err(load_error)
}

/// Fetches `url` whole, from a window or a worker; a non-2xx status is an error.
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, JsValue> {
    let global = js_sys::global();
    let promise = if let Some(window) = global.dyn_ref::<web_sys::Window>() {
        window.fetch_with_str(url)
    } else if let Some(worker) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        worker.fetch_with_str(url)
    } else {
        return Err(JsError::new("fetch: neither a window nor a worker").into());
    };
    let response: web_sys::Response = JsFuture::from(promise).await?.dyn_into()?;
    if !response.ok() {
        return Err(JsError::new(&format!("GET {url}: HTTP {}", response.status())).into());
    }
    let body = JsFuture::from(response.array_buffer()?).await?;
    Ok(js_sys::Uint8Array::new(&body).to_vec())
}
