//! The planner in the browser: the first shard's header ([`super::header`]) and the target —
//! the WebGPU adapter's limits, read without opening a device, and wasm32's 4 GiB for the CPU
//! path — give a [`Plan`] before any weight byte is fetched. `WasmEngine.plan` returns it as a
//! JS object ([`JsPlan`]); `WasmEngine.load` streams the model to the device it names.

use super::header::{fetch_header, FetchedHeader};
use super::load::{LoadOptions, ModelSource};
use super::{coded_error, load_error};
use crate::gpu::adapter_limits_async;
use crate::kv_cache::KvType;
use crate::plan::{plan, Device, DeviceRequest, GpuLimits, Plan, PlanError, PlanTarget, WASM32_ADDRESS_SPACE};
use serde::Serialize;
use wasm_bindgen::prelude::*;

/// What the caller asked for (`None`: the planner may choose, from the session defaults down).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanRequest {
    pub device: DeviceRequest,
    pub kv: Option<KvType>,
    pub n_ctx: Option<usize>,
    pub kv_recent: usize,
}

/// A plan and what it was made from.
pub(crate) struct Planned {
    pub plan: Plan,
    pub header: FetchedHeader,
    /// The adapter the GPU limits came from.
    pub adapter: Option<String>,
    /// Why no GPU was considered (no WebGPU, no adapter), when none was.
    pub no_gpu: Option<String>,
}

impl Planned {
    /// Why `device: "auto"` runs on the CPU: no GPU, or the planner's reason against it.
    pub fn cpu_reason(&self) -> Option<String> {
        self.no_gpu.clone().or_else(|| self.plan.reasons.iter().find(|r| r.starts_with("not the GPU")).cloned())
    }
}

/// WebGPU is exposed to this page or worker (`navigator.gpu`).
pub(crate) fn has_webgpu() -> bool {
    let nav = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
    !nav.is_undefined() && js_sys::Reflect::get(&nav, &"gpu".into()).is_ok_and(|g| !g.is_undefined() && !g.is_null())
}

/// The adapter's limits (and name), or why there is no GPU. Skipped for `device: "cpu"`.
async fn gpu_limits(device: DeviceRequest) -> Result<(GpuLimits, String), String> {
    if device == DeviceRequest::Cpu {
        return Err("the CPU was asked for".into());
    }
    if !has_webgpu() {
        return Err("this browser exposes no WebGPU (navigator.gpu is missing)".into());
    }
    let a = adapter_limits_async().await.map_err(|e| e.to_string())?;
    // WebGPU does not tell the device's memory.
    let limits = GpuLimits { max_buffer_size: a.max_buffer_size, max_storage_buffer_binding_size: a.max_storage_buffer_binding_size, device_memory: None };
    Ok((limits, a.adapter))
}

/// A planner error as a JS error with its stable code (errors.ts's `ErrorCode`).
pub(crate) fn plan_error(e: &PlanError) -> JsValue {
    coded_error(e.code(), &e.to_string())
}

/// Reads the header of `source` and plans it: errors are coded JS errors (a loader error's
/// code for the header's fetch, a [`PlanError`]'s for the plan).
pub(crate) async fn plan_source(source: &ModelSource, req: PlanRequest, opts: &LoadOptions) -> Result<Planned, JsValue> {
    let header = fetch_header(source, opts).await.map_err(load_error)?;
    let (gpu, adapter, no_gpu) = match gpu_limits(req.device).await {
        Ok((l, name)) => (Some(l), Some(name), None),
        Err(why) => (None, None, Some(why)),
    };
    let target = PlanTarget { gpu, cpu_address_space: WASM32_ADDRESS_SPACE, device: req.device, kv: req.kv, n_ctx: req.n_ctx, kv_recent: req.kv_recent };
    let plan = plan(&header.header, &target).map_err(|e| match (&e, &no_gpu) {
        // Say why there is no GPU, not only that there is none.
        (PlanError::NoGpu, Some(why)) => coded_error(e.code(), &format!("{e}: {why}")),
        _ => plan_error(&e),
    })?;
    Ok(Planned { plan, header, adapter, no_gpu })
}

/// The plan as JS sees it (`ModelPlan` in web/src/types.ts).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsPlan<'a> {
    /// "webgpu" or "cpu" (the names of `device` and `deviceInfo().device`).
    device: &'static str,
    kv: &'static str,
    context_length: usize,
    kv_recent: usize,
    arch: crate::model::Arch,
    shards: u64,
    bytes: JsBytes,
    /// Tensors the model uses, and of those how many (not in the first shard) were estimated.
    tensors: usize,
    estimated_tensors: usize,
    reasons: &'a [String],
    /// The WebGPU adapter whose limits were used; null when no GPU was considered.
    adapter: Option<&'a str>,
    /// Bytes fetched to read the header (0 when it came from the cache).
    header_bytes: u64,
    header_from_cache: bool,
}

/// Byte counts of the plan.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsBytes {
    /// The weights as stored; in the GPU's layout (when the GPU was considered).
    weights: u64,
    gpu_weights: Option<u64>,
    kv: u64,
    kv_layer: Option<u64>,
    working: u64,
    /// Weights + KV + working memory on the chosen device, and what that was checked against.
    total: u64,
    limit: Option<u64>,
}

impl Planned {
    pub fn to_js(&self) -> JsPlan<'_> {
        let p = &self.plan;
        JsPlan {
            device: match p.device {
                Device::Gpu => "webgpu",
                Device::Cpu => "cpu",
            },
            kv: p.kv.name(),
            context_length: p.n_ctx,
            kv_recent: p.kv_recent,
            arch: p.arch,
            shards: p.n_shards,
            bytes: JsBytes {
                weights: p.weights.file_bytes,
                gpu_weights: p.weights.gpu_bytes,
                kv: p.kv_bytes,
                kv_layer: p.kv_layer_bytes,
                working: p.working_bytes,
                total: p.total_bytes,
                limit: p.limit_bytes,
            },
            tensors: p.weights.tensors,
            estimated_tensors: p.weights.estimated,
            reasons: &p.reasons,
            adapter: self.adapter.as_deref(),
            header_bytes: self.header.network_bytes,
            header_from_cache: self.header.from_cache,
        }
    }
}
