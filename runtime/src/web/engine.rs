//! `WasmEngine`: one model on WebGPU or the CPU kernels, and one generation at a time, driven
//! pass by pass from JS (`start`, then `step` until `done`). The npm package (`web/`) wraps it
//! in the OpenAI-shaped API; the browser tests call it directly.
//!
//! Why pass by pass: a browser GPU can only read results back asynchronously, so a generation
//! cannot be one blocking call; and between passes the page (or worker) handles messages,
//! `interrupt()` and AbortSignals.

use super::load::{self, LoadReport};
use super::plan::{has_webgpu, plan_source, PlanRequest, Planned};
use super::{coded_error, load_error, model_source, to_js};
use crate::chat::tools::required_call_grammar;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::constraint::{Constraint, Grammar, Vocabulary};
use crate::cpu::Kernels;
use crate::engine::{Flow, Next, Session, SessionOptions, TextGen};
use crate::error::{ConstraintError, EngineError, GpuError, ModelError};
use crate::gpu::{GpuBackend, GpuDevice, GpuInfo, GpuKernels};
use crate::kv_cache::KvType;
use crate::loader::LoadError;
use crate::model::{CpuBackend, Logits};
use crate::plan::{plan, Device as PlanDevice, DeviceRequest, PlanTarget};
use crate::sampler::{Sampler, SamplerConfig, StopConditions};
use crate::tokenizer::Tokenizer;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_time::Instant;

/// The session on the device it runs on.
enum Device {
    Cpu(Session<CpuBackend>),
    Gpu(Session<GpuBackend>),
}

/// Runs `$body` with `$s` bound to the session, whichever backend it has.
macro_rules! with_session {
    ($dev:expr, $s:ident => $body:expr) => {
        match $dev {
            Device::Cpu($s) => $body,
            Device::Gpu($s) => $body,
        }
    };
}

/// The generation in progress.
struct Run {
    gen: TextGen,
    sampler: Sampler,
    stop: StopConditions,
    /// Generated tokens whose log-probabilities a step already returned.
    logprobs_sent: usize,
}

/// What a generation does beside sampling (`start`'s `options`).
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenOptions {
    /// The schema or grammar the answer is held to.
    grammar: Option<GrammarRequest>,
    /// Each token's log-probability with this many alternatives (0 to 20); absent: none.
    logprobs: Option<usize>,
    /// The request offered tools: find the answer's calls (in the chat template's format).
    #[serde(default)]
    tool_calls: bool,
    /// `tool_choice` "required" or a named function: the answer is held to one call.
    required_call: Option<RequiredCall>,
}

/// The tools an answer must call one of (`name`: that one only).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequiredCall {
    tools: serde_json::Value,
    name: Option<String>,
}

/// One of: a JSON schema, a GBNF grammar, llguidance's Lark.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrammarRequest {
    json_schema: Option<serde_json::Value>,
    gbnf: Option<String>,
    lark: Option<String>,
}

impl GrammarRequest {
    fn grammar(self) -> Result<Grammar, JsValue> {
        match (self.json_schema, self.gbnf, self.lark) {
            (Some(schema), None, None) => Ok(Grammar::JsonSchema(schema)),
            (None, Some(g), None) => Ok(Grammar::Gbnf(g)),
            (None, None, Some(l)) => Ok(Grammar::Lark(l)),
            _ => Err(options_error("grammar: one of jsonSchema, gbnf or lark")),
        }
    }
}

struct Inner {
    device: Device,
    tokenizer: Tokenizer,
    /// The vocabulary as constrained decoding sees it, built at the first request for it.
    vocabulary: Option<Vocabulary>,
    /// The model's chat template (or the architecture's fallback); an error is reported when
    /// a chat is requested.
    template: Result<ChatTemplate, String>,
    run: Option<Run>,
}

/// Where the engine runs, for `engine.stats()` and the demo's badge.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceReport {
    /// "webgpu" or "cpu".
    device: &'static str,
    /// The WebGPU adapter and its features (None on the CPU).
    adapter: Option<GpuInfo>,
    /// The CPU kernel family this build has: "simd128" or "scalar".
    kernels: String,
    /// The GPU kernel family on WebGPU ("exact" or "fast"; None on the CPU).
    gpu_kernels: Option<&'static str>,
    /// Why `device: "auto"` did not run on WebGPU.
    fallback: Option<String>,
}

/// One model and one conversation, on WebGPU or the CPU.
#[wasm_bindgen]
pub struct WasmEngine {
    inner: Rc<RefCell<Inner>>,
    /// Raised by `interrupt()`, read before every sampling step (outside `inner`: a step holds
    /// that borrow while it awaits the GPU).
    abort: Rc<Cell<bool>>,
    report: DeviceReport,
    load: Option<LoadReport>,
    n_vocab: usize,
    n_ctx: usize,
}

fn options_error(message: &str) -> JsValue {
    coded_error("options", message)
}

/// The stable `code` of a model/engine error (the npm package maps codes to error classes).
fn model_code(e: &ModelError) -> &'static str {
    match e {
        ModelError::Gpu(GpuError::DeviceLost(_)) => "device_lost",
        ModelError::Gpu(GpuError::TooLarge { .. }) => "model_too_large",
        ModelError::Gpu(GpuError::NoAdapter(_) | GpuError::RequestDevice(_)) => "no_webgpu",
        ModelError::Gpu(_) => "gpu",
        ModelError::ContextFull { .. } => "context_length",
        _ => "model",
    }
}

fn model_error(e: ModelError) -> JsValue {
    coded_error(model_code(&e), &e.to_string())
}

fn engine_error(e: EngineError) -> JsValue {
    match e {
        EngineError::Model(m) => model_error(m),
        EngineError::Tokenizer(t) => coded_error("tokenizer", &t.to_string()),
        EngineError::Sampler(s) => coded_error("options", &s.to_string()),
        EngineError::Chat(c) => coded_error("template", &c.to_string()),
        EngineError::Constraint(c) => constraint_error(c),
    }
}

fn constraint_error(e: ConstraintError) -> JsValue {
    let code = match e {
        ConstraintError::Grammar(_) => "options",
        ConstraintError::Vocabulary(_) => "model",
        ConstraintError::Failed(_) => "internal",
    };
    coded_error(code, &e.to_string())
}

fn load_error_coded(e: LoadError) -> JsValue {
    match e {
        LoadError::Model(m) => model_error(m),
        e => load_error(e),
    }
}

/// A load failure that WebGPU caused (the CPU may still take the model).
fn gpu_caused(e: &LoadError) -> bool {
    matches!(e, LoadError::Model(ModelError::Gpu(_)))
}

async fn open_gpu() -> Result<GpuDevice, GpuError> {
    if !has_webgpu() {
        return Err(GpuError::NoAdapter("this browser exposes no WebGPU (navigator.gpu is missing)".into()));
    }
    GpuDevice::new_async().await
}

/// Reads a JS option that is neither undefined nor null.
fn get(options: &JsValue, key: &str) -> Option<JsValue> {
    if !options.is_object() {
        return None;
    }
    js_sys::Reflect::get(options, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `device`, `kv`, `contextLength` and `kvRecent`: what the plan must honour (an absent `kv`
/// or `contextLength` lets the planner choose, from f16 and 4096 down).
fn plan_request(options: &JsValue) -> Result<PlanRequest, JsValue> {
    let device_name = get(options, "device").and_then(|v| v.as_string()).unwrap_or_else(|| "auto".into());
    let device = match device_name.as_str() {
        "auto" | "webgpu" | "cpu" => DeviceRequest::from_name(&device_name),
        _ => None,
    }
    .ok_or_else(|| options_error(&format!("device {device_name:?} (auto, webgpu or cpu)")))?;
    let kv = match get(options, "kv").map(|v| v.as_string()) {
        None => None,
        Some(name) => {
            let name = name.unwrap_or_default();
            Some(KvType::from_name(&name).ok_or_else(|| options_error(&format!("unknown KV type {name:?} (f32, f16, q8, q4)")))?)
        }
    };
    let n_ctx = get(options, "contextLength").and_then(|v| v.as_f64()).map(|n| n.max(1.0) as usize);
    let kv_recent = match get(options, "kvRecent").map(|v| v.as_f64()) {
        None => crate::kv_cache::KV_RECENT,
        Some(Some(r)) if r >= 0.0 && r.fract() == 0.0 && r <= 1e9 => r as usize,
        Some(_) => return Err(options_error("kvRecent must be a whole number >= 0")),
    };
    Ok(PlanRequest { device, kv, n_ctx, kv_recent })
}

fn load_options(options: &JsValue) -> Result<load::LoadOptions, JsValue> {
    let mut opts = load::LoadOptions::default();
    if let Some(c) = get(options, "cache").and_then(|v| v.as_bool()) {
        opts.use_cache = c;
    }
    if let Some(c) = get(options, "requireCache").and_then(|v| v.as_bool()) {
        opts.require_cache = c;
    }
    if let Some(n) = get(options, "maxAttempts").and_then(|v| v.as_f64()) {
        opts.max_attempts = (n as u32).max(1);
    }
    if let Some(ms) = get(options, "retryDelayMs").and_then(|v| v.as_f64()) {
        opts.retry_delay_ms = ms as i32;
    }
    if let Some(ms) = get(options, "stallTimeoutMs").and_then(|v| v.as_f64()) {
        opts.stall_timeout_ms = (ms as i32).max(1);
    }
    opts.signal = get(options, "signal").and_then(|v| v.dyn_into().ok());
    match get(options, "store").and_then(|v| v.as_string()).as_deref() {
        None | Some("cache-storage") => {}
        Some("opfs") => opts.store = super::store::StoreKind::Opfs,
        Some(other) => return Err(options_error(&format!("store {other:?} (cache-storage or opfs)"))),
    }
    opts.max_cache_bytes = get(options, "maxCacheBytes").and_then(|v| v.as_f64()).map(|b| b as u64);
    Ok(opts)
}

#[wasm_bindgen]
impl WasmEngine {
    /// Loads a whole GGUF file held in memory onto the CPU. `kv`: "f32", "f16", "q8" or "q4";
    /// `n_ctx`: positions the KV cache holds (capped at the model's trained context).
    #[wasm_bindgen(constructor)]
    pub fn new(model_bytes: &[u8], kv: &str, n_ctx: u32) -> Result<WasmEngine, JsError> {
        console_error_panic_hook::set_once();
        let kv = KvType::from_name(kv).ok_or_else(|| JsError::new(&format!("unknown KV type {kv:?} (f32, f16, q8, q4)")))?;
        let mut backend = CpuBackend::new();
        let (gguf, model) = crate::loader::load_bytes(&[model_bytes], &mut backend).map_err(|e| JsError::new(&e.to_string()))?;
        let session =
            Session::new(backend, model, SessionOptions { kv, n_ctx: n_ctx as usize, ..Default::default() }).map_err(|e| JsError::new(&e.to_string()))?;
        WasmEngine::assemble(
            Device::Cpu(session),
            &gguf,
            DeviceReport { device: "cpu", adapter: None, kernels: Kernels::best().name().into(), gpu_kernels: None, fallback: None },
            None,
        )
        .map_err(|e| JsError::new(&e.as_string().unwrap_or_default()))
    }

    /// Plans a model from its first shard's header (at most the header + 1 MiB fetched, or
    /// read from the cache): `source` as for `load`, `options`: `device`, `kv`, `contextLength`,
    /// `kvRecent` and the fetch options of `load` (cache, store, signal, maxAttempts,
    /// retryDelayMs, stallTimeoutMs). Resolves to `{ device ("webgpu" | "cpu"), kv,
    /// contextLength, kvRecent, arch, shards, bytes: { weights, gpuWeights, kv, kvLayer, working,
    /// total, limit }, tensors, estimatedTensors, reasons, adapter, headerBytes, headerFromCache }`;
    /// a model that cannot run rejects with the code `load` would give (model_too_large,
    /// no_webgpu, model, tokenizer, malformed, network…).
    pub async fn plan(source: JsValue, options: JsValue) -> Result<JsValue, JsValue> {
        console_error_panic_hook::set_once();
        let source = model_source(&source)?;
        let req = plan_request(&options)?;
        let opts = load_options(&options)?;
        let planned = plan_source(&source, req, &opts).await?;
        Ok(to_js(&planned.to_js()))
    }

    /// Streams a model onto WebGPU or the CPU. `source`: a URL string (a split's first shard's
    /// name loads every shard), an array of shard URLs, or `{ manifest: url }`. `options`:
    /// `{ device ("auto" (default) | "webgpu" | "cpu"), kv ("f32" | "f16" | "q8" | "q4"),
    /// kvRecent (q8 / q4: positions before and including each query's own read from f16
    /// copies, with the first 4; default 64, 0 for none), contextLength, cache (default true), requireCache, store ("cache-storage" (default) or
    /// "opfs"), maxCacheBytes, signal (AbortSignal), maxAttempts, retryDelayMs, stallTimeoutMs,
    /// gpuKernels ("exact" or "fast", [`GpuKernels`]; default: the adapter's,
    /// [`GpuKernels::for_device`]), reusePrefix (default true: a generation keeps the cached
    /// positions its prompt shares with the previous one, [`Session::reusable_prefix`])) }`.
    /// First the model is planned from its first shard's header (`plan`): what cannot run fails
    /// then, before any weight byte is fetched; an absent `kv` / `contextLength` is chosen by the
    /// plan (f16 and 4096 when they fit). `"auto"` runs on WebGPU when the browser has it and
    /// the plan fits the adapter, else on the CPU (`deviceInfo().fallback` says why); the model
    /// is streamed once, to that device. `on_progress` (optional) receives progress
    /// objects (`load::Progress`); the last has `phase: "ready"` and the load report. Errors
    /// are `Error`s with a stable `code` (network, http, malformed, length, integrity, quota,
    /// aborted, no_webgpu, model_too_large, device_lost, options, model…).
    pub async fn load(source: JsValue, options: JsValue, on_progress: Option<js_sys::Function>) -> Result<WasmEngine, JsValue> {
        console_error_panic_hook::set_once();
        let source = model_source(&source)?;
        let req = plan_request(&options)?;
        let gpu_kernels = match get(&options, "gpuKernels").map(|v| v.as_string()) {
            None => None,
            Some(name) => {
                let name = name.unwrap_or_default();
                Some(GpuKernels::from_name(&name).ok_or_else(|| options_error(&format!("gpuKernels {name:?} (exact or fast)")))?)
            }
        };
        let opts = load_options(&options)?;
        let mut report_progress = |p: &load::Progress| {
            if let Some(f) = &on_progress {
                let _ = f.call1(&JsValue::NULL, &to_js(p));
            }
        };
        let planned = plan_source(&source, req, &opts).await?;
        let reuse_prefix = match get(&options, "reusePrefix").map(|v| v.as_bool()) {
            None => true,
            Some(Some(b)) => b,
            Some(None) => return Err(options_error("reusePrefix must be a boolean")),
        };
        let session_options = SessionOptions { kv: planned.plan.kv, n_ctx: planned.plan.n_ctx, kv_recent: req.kv_recent, reuse_prefix };
        let kernels: String = Kernels::best().name().into();
        let mut fallback = (req.device == DeviceRequest::Auto && planned.plan.device == PlanDevice::Cpu).then(|| planned.cpu_reason()).flatten();
        let mut session_options = session_options;
        if planned.plan.device == PlanDevice::Gpu {
            // The plan fits the adapter's limits; what it cannot foresee — the device refused
            // (requestDevice failing, a device lost at once) or an allocation failing while
            // loading — falls back to the CPU under "auto". Only the latter streams twice
            // (from the cache, when the model was cached).
            let gpu_failed = match open_gpu().await {
                Ok(dev) => {
                    let info = dev.info.clone();
                    let mut backend = GpuBackend::new(dev);
                    let gpu_kernels = gpu_kernels.unwrap_or(backend.kernels);
                    backend.kernels = gpu_kernels;
                    let loaded = load::load_model(&source, &mut backend, &opts, &mut report_progress).await;
                    let loaded = loaded.and_then(|(gguf, model, report)| {
                        let session = Session::new(backend, model, session_options).map_err(LoadError::Model)?;
                        Ok((gguf, session, report))
                    });
                    match loaded {
                        Ok((gguf, session, report)) => {
                            let r = DeviceReport { device: "webgpu", adapter: Some(info), kernels, gpu_kernels: Some(gpu_kernels.name()), fallback: None };
                            return WasmEngine::assemble(Device::Gpu(session), &gguf, r, Some(report));
                        }
                        Err(e) if req.device == DeviceRequest::Auto && gpu_caused(&e) => format!("WebGPU could not hold the model: {e}"),
                        Err(e) => return Err(load_error_coded(e)),
                    }
                }
                Err(e) if req.device == DeviceRequest::Auto => e.to_string(),
                Err(e) => return Err(model_error(ModelError::Gpu(e))),
            };
            // The CPU must fit too: planned again for it (same header, no fetch).
            let cpu = cpu_plan(&planned, req).map_err(|e| coded_error(e.code(), &format!("{e} (and {gpu_failed})")))?;
            session_options = SessionOptions { kv: cpu.kv, n_ctx: cpu.n_ctx, ..session_options };
            fallback = Some(gpu_failed);
        }
        let mut backend = CpuBackend::new();
        let (gguf, model, report) = load::load_model(&source, &mut backend, &opts, &mut report_progress).await.map_err(load_error_coded)?;
        let session = Session::new(backend, model, session_options).map_err(model_error)?;
        WasmEngine::assemble(Device::Cpu(session), &gguf, DeviceReport { device: "cpu", adapter: None, kernels, gpu_kernels: None, fallback }, Some(report))
    }

    fn assemble(device: Device, gguf: &crate::gguf::GgufModel, report: DeviceReport, load: Option<LoadReport>) -> Result<WasmEngine, JsValue> {
        let md = gguf.metadata();
        let tokenizer = Tokenizer::from_metadata(md).map_err(|e| coded_error("model", &e.to_string()))?;
        let template = ChatTemplate::from_metadata(md, md.architecture().unwrap_or("")).map_err(|e| e.to_string());
        let (n_vocab, n_ctx) = with_session!(&device, s => (s.model.config.n_vocab, s.options().n_ctx));
        let inner = Inner { device, tokenizer, vocabulary: None, template, run: None };
        Ok(WasmEngine { inner: Rc::new(RefCell::new(inner)), abort: Rc::new(Cell::new(false)), report, load, n_vocab, n_ctx })
    }

    fn borrow(&self) -> Result<std::cell::RefMut<'_, Inner>, JsValue> {
        self.inner.try_borrow_mut().map_err(|_| busy())
    }

    /// Where the model runs: `{ device: "webgpu" | "cpu", adapter, kernels, fallback }`.
    #[wasm_bindgen(js_name = deviceInfo)]
    pub fn device_info(&self) -> JsValue {
        to_js(&self.report)
    }

    /// The load's report (bytes from network and cache, timings, cache note); null for `new`.
    #[wasm_bindgen(js_name = loadReport)]
    pub fn load_report(&self) -> JsValue {
        self.load.as_ref().map(to_js).unwrap_or(JsValue::NULL)
    }

    /// Positions the KV cache holds.
    #[wasm_bindgen(js_name = contextLength)]
    pub fn context_length(&self) -> u32 {
        self.n_ctx as u32
    }

    /// Renders `messages` (`[{ role, content, tool_calls?, tool_call_id?, name? }]`) with the
    /// model's chat template; `tools` (OpenAI's array, or undefined) as the template takes them
    /// ([`ChatTemplate::apply_with_tools`]).
    #[wasm_bindgen(js_name = applyChatTemplate)]
    pub fn apply_chat_template(&self, messages: JsValue, add_generation_prompt: bool, tools: JsValue) -> Result<String, JsValue> {
        let json = js_sys::JSON::stringify(&messages).ok().and_then(|s| s.as_string()).unwrap_or_default();
        let messages: Vec<ChatMessage> =
            serde_json::from_str(&json).map_err(|e| options_error(&format!("messages: an array of {{ role, content }} with string content ({e})")))?;
        // (undefined / null read as JSON null: no tools)
        let tools: serde_json::Value = from_js(&tools, "tools")?;
        let tools = match tools {
            serde_json::Value::Null => None,
            serde_json::Value::Array(_) => Some(tools),
            _ => return Err(options_error("tools must be an array")),
        };
        let inner = self.borrow()?;
        let template = inner.template.as_ref().map_err(|e| coded_error("template", e))?;
        template.apply_with_tools(&messages, tools.as_ref(), add_generation_prompt).map_err(|e| coded_error("template", &e.to_string()))
    }

    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, JsValue> {
        let inner = self.borrow()?;
        inner.tokenizer.tokenize(text, add_special, parse_special).map_err(|e| coded_error("tokenizer", &e.to_string()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, JsValue> {
        let inner = self.borrow()?;
        inner.tokenizer.decode(ids).map_err(|e| coded_error("tokenizer", &e.to_string()))
    }

    /// Starts a generation after `prompt_ids`, keeping the cached positions the prompt shares
    /// with the conversation so far (unless loaded with `reusePrefix: false`). `sampling`: the
    /// sampler's fields (`temperature` (0 = greedy), `topK`, `topP`, `minP`,
    /// `repetitionPenalty`, `presencePenalty`, `frequencyPenalty`, `logitBias`, `seed`, …);
    /// `stop`: `{ maxTokens, stopStrings, stopTokens }`. `forced`: tokens taken first whatever
    /// is sampled (replaying a generation cut off by a lost device; the sampler still draws).
    /// `options`: `{ logprobs, toolCalls, requiredCall, grammar }`: `logprobs` (alternatives
    /// per token, 0 to 20): each step then returns its tokens' log-probabilities; `toolCalls:
    /// true`: the answer's tool calls are found (in the chat template's format) and returned by
    /// the last step; `requiredCall: { tools, name? }`: the answer is held to one call of
    /// `tools` (of `name` only), [`required_call_grammar`]; `grammar`: `{ jsonSchema }`,
    /// `{ gbnf }` or `{ lark }`, the answer held to it ([`crate::constraint`]; one that does
    /// not compile is an `options` error here).
    pub fn start(&self, prompt_ids: &[u32], sampling: JsValue, stop: JsValue, forced: &[u32], options: JsValue) -> Result<(), JsValue> {
        let config: SamplerConfig = from_js(&sampling, "sampling")?;
        let stop: StopConditions = from_js(&stop, "stop")?;
        let opts: GenOptions = from_js(&options, "options")?;
        let mut grammar = opts.grammar.map(GrammarRequest::grammar).transpose()?;
        if opts.required_call.is_some() && grammar.is_some() {
            return Err(options_error("a required tool call cannot also be held to a grammar or schema"));
        }
        if opts.logprobs.is_some_and(|n| n > crate::engine::MAX_TOP_LOGPROBS) {
            return Err(options_error(&format!("top_logprobs must be between 0 and {}", crate::engine::MAX_TOP_LOGPROBS)));
        }
        if prompt_ids.is_empty() {
            return Err(options_error("the prompt has no tokens"));
        }
        if prompt_ids.len() + forced.len() >= self.n_ctx {
            return Err(coded_error("context_length", &format!("the prompt has {} tokens; the context holds {}", prompt_ids.len() + forced.len(), self.n_ctx)));
        }
        let sampler = Sampler::new(config, self.n_vocab).map_err(|e| options_error(&e.to_string()))?;
        let mut guard = self.borrow()?;
        let inner = &mut *guard;
        // Everything that may fail comes before the conversation is touched.
        let tool_format = match opts.tool_calls || opts.required_call.is_some() {
            true => Some(inner.template.as_ref().map_err(|e| coded_error("template", e))?.tool_call_format()),
            false => None,
        };
        if let (Some(required), Some(format)) = (&opts.required_call, tool_format) {
            let lark = required_call_grammar(format, &required.tools, required.name.as_deref()).map_err(|e| options_error(&e))?;
            grammar = Some(Grammar::Lark(lark));
        }
        let constraint = match grammar {
            Some(grammar) => {
                let vocab = match &mut inner.vocabulary {
                    Some(v) => v,
                    slot => slot.insert(Vocabulary::new(&inner.tokenizer).map_err(constraint_error)?),
                };
                Some(Constraint::new(vocab, &grammar).map_err(constraint_error)?)
            }
            None => None,
        };
        let mut gen = with_session!(&mut inner.device, s => s.start_text(&inner.tokenizer, prompt_ids, &sampler, forced));
        if let Some(top) = opts.logprobs {
            gen.want_logprobs(top);
        }
        if let Some(format) = tool_format {
            gen.want_tool_calls(format);
        }
        if let Some(c) = constraint {
            gen.constrain(c);
        }
        inner.run = Some(Run { gen, sampler, stop, logprobs_sent: 0 });
        self.abort.set(false);
        Ok(())
    }

    /// Runs one pass of the generation: resolves to `{ text, done, finishReason,
    /// promptTokens, reusedTokens, completionTokens, logprobs }` (`text`: what is now safe to
    /// show; `finishReason`: "stop", "length" (max_tokens, or the context is full) or "abort"
    /// once `done`, or "tool_calls"; `logprobs`: the step's new tokens as OpenAI's `{ token,
    /// logprob, bytes, top_logprobs }`, when `start` asked for them; `toolCalls`: `[{ name,
    /// arguments }]`, the answer's calls once done). Calls while a step is pending reject with
    /// code `busy`.
    // The borrow is held across the GPU read on purpose: one pass at a time; a call arriving
    // meanwhile fails with `busy` instead of interleaving with the pass.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn step(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        let abort = self.abort.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = inner.try_borrow_mut().map_err(|_| busy())?;
            let Inner { device, tokenizer, run, .. } = &mut *guard;
            let run = run.as_mut().ok_or_else(|| coded_error("state", "no generation in progress (call start first)"))?;
            let mut text = String::new();
            if !run.gen.is_done() {
                let next = match device {
                    Device::Cpu(s) => s.run_pass(&run.gen),
                    Device::Gpu(s) => gpu_pass(s, &run.gen).await,
                }
                .map_err(model_error)?;
                text = with_session!(device, s => s.take(&mut run.gen, next, tokenizer, &mut run.sampler, &run.stop, abort.get())).map_err(engine_error)?;
            }
            let logprobs = logprob_entries(tokenizer, run.gen.logprobs_from(run.logprobs_sent));
            run.logprobs_sent = run.gen.ids().len();
            Ok(step_result(&text, &run.gen, logprobs))
        })
    }

    /// Tokens the current (or last) generation produced so far: what a replay after a lost
    /// device passes back to `start` as `forced`.
    #[wasm_bindgen(js_name = generatedIds)]
    pub fn generated_ids(&self) -> Result<Vec<u32>, JsValue> {
        let inner = self.borrow()?;
        Ok(inner.run.as_ref().map(|r| r.gen.ids().to_vec()).unwrap_or_default())
    }

    /// Ends the generation in progress at its next step (finish reason "abort").
    pub fn interrupt(&self) {
        self.abort.set(true);
    }

    /// Timings of the current/last generation (`engine::Stats`) plus memory: wasm memory
    /// bytes and the load report's model bytes.
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let inner = self.borrow()?;
        let stats = with_session!(&inner.device, s => s.stats());
        let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
        let wasm_bytes = memory.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as f64;
        let out = to_js(&stats);
        let _ = js_sys::Reflect::set(&out, &"wasmMemoryBytes".into(), &wasm_bytes.into());
        let model_bytes = self.load.as_ref().map(|r| r.bytes as f64);
        let _ = js_sys::Reflect::set(&out, &"modelBytes".into(), &model_bytes.map(JsValue::from).unwrap_or(JsValue::NULL));
        Ok(out)
    }

    /// The last generation's timings (`engine::Stats`) as JSON.
    pub fn stats_json(&self) -> Result<String, JsValue> {
        let inner = self.borrow()?;
        serde_json::to_string(&with_session!(&inner.device, s => s.stats())).map_err(|e| coded_error("internal", &e.to_string()))
    }

    /// Greedy tokens after `prompt_ids` (from an empty conversation), at most `max_tokens`,
    /// stopping early at an end-of-generation token. CPU only (a GPU reads back asynchronously:
    /// use `start`/`step`).
    pub fn generate_greedy(&mut self, prompt_ids: &[u32], max_tokens: u32) -> Result<Vec<u32>, JsValue> {
        let mut guard = self.borrow()?;
        let inner = &mut *guard;
        let Device::Cpu(session) = &mut inner.device else {
            return Err(coded_error("state", "generate_greedy runs on the CPU engine; use start/step on WebGPU"));
        };
        let mut sampler = Sampler::new(SamplerConfig::greedy(), self.n_vocab).map_err(|e| options_error(&e.to_string()))?;
        let stop = StopConditions { max_tokens: Some(max_tokens as usize), ..StopConditions::default() };
        session.reset();
        let generation = session.generate_text(&inner.tokenizer, prompt_ids, &mut sampler, &stop, None, |_| Flow::Continue).map_err(engine_error)?;
        Ok(generation.ids)
    }

    /// Destroys the WebGPU device, as a driver reset or GPU-process crash would (tests of the
    /// recovery path). No effect on the CPU.
    #[wasm_bindgen(js_name = loseDeviceForTesting)]
    pub fn lose_device_for_testing(&self) -> Result<(), JsValue> {
        let inner = self.borrow()?;
        if let Device::Gpu(s) = &inner.device {
            s.backend.device().destroy("destroyed by loseDeviceForTesting");
        }
        Ok(())
    }

    /// The CPU kernel family this build runs: "simd128" or "scalar".
    pub fn kernels() -> String {
        Kernels::best().name().to_owned()
    }
}

/// A pass on the browser GPU: record and submit it, then await the read-back (the token when
/// the device picks it, else the logits).
async fn gpu_pass(s: &mut Session<GpuBackend>, gen: &TextGen) -> Result<Next, ModelError> {
    let t0 = Instant::now();
    let act = s.pass(gen.pending(), Logits::Last)?;
    let next = if gen.argmax_on_device() { Next::Id(s.backend.argmax_async(&act).await?) } else { Next::Logits(s.backend.to_host_async(&act).await?) };
    s.count_pass(gen.pending(), t0.elapsed().as_secs_f64() * 1e3, gen.is_prefill());
    Ok(next)
}

/// A token as OpenAI's `logprobs.content` entries show it (and, without `top_logprobs`, its
/// alternatives).
#[derive(Serialize)]
struct LogprobEntry {
    token: String,
    logprob: f32,
    bytes: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<LogprobEntry>>,
}

fn logprob_entries(tokenizer: &Tokenizer, lps: &[crate::engine::TokenLogprob]) -> Vec<LogprobEntry> {
    let entry = |id: u32, logprob: f32, top| {
        let bytes = tokenizer.token_to_piece(id, true).map(<[u8]>::to_vec).unwrap_or_default();
        LogprobEntry { token: String::from_utf8_lossy(&bytes).into_owned(), logprob, bytes, top_logprobs: top }
    };
    lps.iter().map(|t| entry(t.id, t.logprob, Some(t.top.iter().map(|&(id, lp)| entry(id, lp, None)).collect()))).collect()
}

fn step_result(text: &str, gen: &TextGen, logprobs: Vec<LogprobEntry>) -> JsValue {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Step<'a> {
        text: &'a str,
        done: bool,
        finish_reason: Option<crate::engine::FinishReason>,
        prompt_tokens: usize,
        reused_tokens: usize,
        completion_tokens: usize,
        logprobs: Vec<LogprobEntry>,
        tool_calls: &'a [crate::chat::tools::ToolCall],
    }
    to_js(&Step {
        text,
        done: gen.is_done(),
        finish_reason: gen.finish_reason(),
        prompt_tokens: gen.prompt_len(),
        reused_tokens: gen.reused(),
        completion_tokens: gen.ids().len(),
        logprobs,
        tool_calls: gen.tool_calls(),
    })
}

/// The plan for the CPU after the GPU the plan chose failed.
fn cpu_plan(planned: &Planned, req: PlanRequest) -> Result<crate::plan::Plan, crate::plan::PlanError> {
    let target = PlanTarget {
        gpu: None,
        cpu_address_space: crate::plan::WASM32_ADDRESS_SPACE,
        device: DeviceRequest::Cpu,
        kv: req.kv,
        n_ctx: req.n_ctx,
        kv_recent: req.kv_recent,
    };
    plan(&planned.header.header, &target)
}

fn busy() -> JsValue {
    coded_error("busy", "the engine is busy with another call (await each call before the next)")
}

fn from_js<T: serde::de::DeserializeOwned + Default>(v: &JsValue, what: &str) -> Result<T, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(T::default());
    }
    let json = js_sys::JSON::stringify(v).ok().and_then(|s| s.as_string()).unwrap_or_default();
    serde_json::from_str(&json).map_err(|e| options_error(&format!("{what}: {e}")))
}
