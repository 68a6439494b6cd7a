//! Browser bindings (wasm32 only): a minimal `WasmEngine` over the CPU backend, used by the
//! in-browser test and benchmark (`runtime/tests/web_engine.rs`). The full JS API (streaming
//! fetch loader, workers, OpenAI-shaped chat) comes later and grows out of this.

pub mod cache;
pub mod load;
mod platform;

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
