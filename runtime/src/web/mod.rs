//! Browser bindings (wasm32 only): the streaming loader (`load`: fetch, resume, cache, progress;
//! `cache`: the shard cache; `catalogue`: the cached models), the planner's inputs (`header`: the
//! first shard's header alone; `plan`: the adapter's limits and the JS plan) and `WasmEngine`
//! (`engine`: a model on WebGPU or the CPU, generation pass by pass), which the npm package
//! (`web/`) wraps in its OpenAI-shaped API and the in-browser tests call directly.

mod body;
pub mod cache;
mod catalogue;
mod engine;
pub mod header;
pub mod load;
pub mod opfs;
mod plan;
mod platform;
pub mod store;

pub use engine::WasmEngine;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

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
    let list = catalogue::cached_shards().await.map_err(load_error)?;
    Ok(to_js(&list))
}

/// The cached models: `[{ model, shards, bytes, urls }]` (`model`: the manifest URL or the
/// first shard's URL it was loaded by).
#[wasm_bindgen(js_name = cachedModels)]
pub async fn cached_models() -> Result<JsValue, JsValue> {
    let list = catalogue::cached_models().await.map_err(load_error)?;
    Ok(to_js(&list))
}

/// Deletes the cached shards of a model (`source` as for `WasmEngine.load`).
#[wasm_bindgen(js_name = deleteCachedModel)]
pub async fn delete_cached_model(source: JsValue) -> Result<(), JsValue> {
    let source = model_source(&source)?;
    let specs = load::resolve(&source, &load::LoadOptions { use_cache: false, ..Default::default() }).await.map_err(load_error)?;
    let urls: Vec<String> = specs.into_iter().map(|s| s.url).collect();
    catalogue::delete_cached(&urls).await.map_err(load_error)
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
