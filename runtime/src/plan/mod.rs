//! The header-time planner: from the first shard's header and a target (the GPU's buffer limits,
//! the CPU's address space) it decides the device, KV type and context length, and says why —
//! before a single weight byte is fetched. Everything that would fail later while loading fails
//! here with a typed [`PlanError`], by the same checks the loader and backends make:
//! `ModelConfig::from_metadata` (architecture, hyperparameters), the tokenizer's algorithm and
//! pre-tokenizer ([`crate::tokenizer::check_supported`]), `Weights::load` (names, shapes,
//! required tensors), the CPU's tensor types (`GgmlType::is_supported`), the GPU layout
//! (`gpu::layout`: row words, rows per binding, one KV layer per binding) and the KV byte
//! math (`kv_cache::capacity_bytes`).
//!
//! A split model's shard 0 lists only its own tensors: the others are estimated (see
//! [`WeightBytes`]), so the plan is an approximation there, and says so.

use crate::engine::SessionOptions;
use crate::error::{GgufError, GpuError, KvError, ModelError, TokenizerError};
use crate::gguf::{GgufHeader, TensorInfo};
use crate::gpu::kv::SCORES_BUDGET;
use crate::gpu::layout;
use crate::gpu::weights::UPLOAD_PIECE;
use crate::kv_cache::{self, KvType};
use crate::model::{same_shape, Arch, ModelConfig, WeightProvider, Weights};
use crate::quant::GgmlType;
use serde::Serialize;
use std::collections::HashMap;
use thiserror::Error;

/// What wasm32 can address: 2^32 bytes of linear memory.
pub const WASM32_ADDRESS_SPACE: u64 = 4 << 30;
/// The shortest context the planner reduces to.
pub const MIN_CONTEXT: usize = 512;
/// Tokens of one prefill batch assumed for activation memory (llama.cpp's default ubatch).
const PREFILL_TOKENS: u64 = 512;
/// Fixed CPU-side memory: the loader's piece and staging, code, stacks (the budget for
/// streaming: 64 MiB plus the tokenizer's tables).
const CPU_BASE_BYTES: u64 = 64 << 20;
/// Bytes of tokenizer tables per header byte (token strings, their index and merge ranks held
/// as Rust strings and hash maps: an estimate, ≈ 4× the strings' bytes in the header).
const TOKENIZER_PER_HEADER_BYTE: u64 = 4;

/// A device the model runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Gpu,
    Cpu,
}

/// The device asked for: `Auto` lets the planner choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    Auto,
    Gpu,
    Cpu,
}

impl DeviceRequest {
    /// "auto", "gpu" (or the browser's "webgpu"), "cpu".
    pub fn from_name(s: &str) -> Option<DeviceRequest> {
        Some(match s {
            "auto" => DeviceRequest::Auto,
            "gpu" | "webgpu" => DeviceRequest::Gpu,
            "cpu" => DeviceRequest::Cpu,
            _ => return None,
        })
    }
}

/// A GPU's limits (WebGPU's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GpuLimits {
    /// maxBufferSize, bytes.
    pub max_buffer_size: u64,
    /// maxStorageBufferBindingSize, bytes.
    pub max_storage_buffer_binding_size: u64,
    /// The device's memory, bytes, where the platform reports it (WebGPU does not).
    pub device_memory: Option<u64>,
}

impl GpuLimits {
    /// The largest buffer one binding covers (the GPU backend's chunk limit).
    pub fn max_binding(&self) -> u64 {
        layout::max_binding(self.max_storage_buffer_binding_size, self.max_buffer_size)
    }
}

/// What the model is planned for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanTarget {
    /// The GPU's limits; `None`: no GPU.
    pub gpu: Option<GpuLimits>,
    /// Bytes the CPU path may hold: [`WASM32_ADDRESS_SPACE`] in the browser, natively the
    /// physical memory (or u64::MAX when unknown).
    pub cpu_address_space: u64,
    pub device: DeviceRequest,
    /// KV type asked for; `None`: the session default (f16), smaller types allowed.
    pub kv: Option<KvType>,
    /// Context asked for; `None`: the session default (4096), shorter contexts allowed.
    pub n_ctx: Option<usize>,
    /// f16 copies of a quantized cache (`SessionOptions::kv_recent`).
    pub kv_recent: usize,
}

impl PlanTarget {
    /// `auto` with the session defaults.
    pub fn new(gpu: Option<GpuLimits>, cpu_address_space: u64) -> PlanTarget {
        PlanTarget { gpu, cpu_address_space, device: DeviceRequest::Auto, kv: None, n_ctx: None, kv_recent: SessionOptions::default().kv_recent }
    }
}

/// The weights' bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WeightBytes {
    /// Bytes of the tensors the model uses, as stored (what the CPU holds).
    pub file_bytes: u64,
    /// The same in the GPU layout (whole u32 words per block, 1-D tensors as f32), when the
    /// GPU was considered and takes every tensor.
    pub gpu_bytes: Option<u64>,
    /// Tensors the model uses.
    pub tensors: usize,
    /// Of those, tensors not in shard 0, estimated: the shape from the configuration, the type
    /// the widest one shard 0 uses for the same role (`blk.N.ffn_down.weight` → `ffn_down.weight`),
    /// else f32 for a vector and the widest 2-D type in shard 0 for a matrix; `output.weight` counted when `split.tensors.count`
    /// leaves room for it. An upper bound as long as other shards use no wider types.
    pub estimated: usize,
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub device: Device,
    pub kv: KvType,
    /// Positions the KV cache holds.
    pub n_ctx: usize,
    pub kv_recent: usize,
    pub arch: Arch,
    pub n_shards: u64,
    pub weights: WeightBytes,
    /// The KV cache, all layers, bytes.
    pub kv_bytes: u64,
    /// One layer's KV buffer on the GPU (one binding), bytes.
    pub kv_layer_bytes: Option<u64>,
    /// Activations, scratch and (CPU) tokenizer tables, estimated, bytes.
    pub working_bytes: u64,
    /// Weights + KV + working memory on the chosen device, bytes.
    pub total_bytes: u64,
    /// What `total_bytes` was checked against (address space or device memory); `None`: unknown.
    pub limit_bytes: Option<u64>,
    /// Why, in order: one line per decision.
    pub reasons: Vec<String>,
}

/// Why a model cannot be planned: one variant per rule, with its numbers.
#[derive(Debug, Error)]
pub enum PlanError {
    /// Split metadata (`split.*`) malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Unsupported architecture, bad hyperparameters, a missing tensor, a wrong shape, a tensor
    /// type without a CPU kernel (`ModelError`'s rules).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Unknown tokenizer algorithm or pre-tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A quantized KV type asked for with head dimensions that are not multiples of 32.
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("the model needs {size} bytes ({}), {} {limit} ({})", human_bytes(*size), address_space_name(*limit), human_bytes(*limit))]
    ModelTooLarge { size: u64, limit: u64 },
    #[error("one row of {tensor} is {bytes} bytes, over the GPU's binding limit of {limit}")]
    RowTooLarge { tensor: String, bytes: u64, limit: u64 },
    #[error("tensor {tensor:?} has type {ty}, which the GPU kernels lack")]
    GpuUnsupportedType { tensor: String, ty: GgmlType },
    #[error("the GPU's KV cache needs head dimensions that are multiples of 32, the model's are {head_dim_k}/{head_dim_v}")]
    GpuHeadDim { head_dim_k: usize, head_dim_v: usize },
    #[error("one layer of the {} KV cache of {n_ctx} positions is {bytes} bytes, over the GPU's binding limit of {limit}", kv.name())]
    KvLayerTooLarge { kv: KvType, n_ctx: usize, bytes: u64, limit: u64 },
    #[error("the model needs {size} bytes of GPU memory ({}), the device has {limit} ({})", human_bytes(*size), human_bytes(*limit))]
    GpuMemoryTooSmall { size: u64, limit: u64 },
    #[error("the GPU was asked for, but no GPU is available")]
    NoGpu,
    #[error("no device can hold the model: GPU: {gpu}; CPU: {cpu}")]
    NoDeviceFits { gpu: Box<PlanError>, cpu: Box<PlanError> },
}

impl PlanError {
    /// The stable code the browser bindings give this error (errors.ts's `ErrorCode`).
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::ModelTooLarge { .. }
            | PlanError::RowTooLarge { .. }
            | PlanError::KvLayerTooLarge { .. }
            | PlanError::GpuMemoryTooSmall { .. }
            | PlanError::NoDeviceFits { .. } => "model_too_large",
            PlanError::NoGpu => "no_webgpu",
            PlanError::Tokenizer(_) => "tokenizer",
            PlanError::Gguf(_) => "malformed",
            PlanError::Model(_) | PlanError::Kv(_) | PlanError::GpuUnsupportedType { .. } | PlanError::GpuHeadDim { .. } => "model",
        }
    }
}

fn address_space_name(limit: u64) -> &'static str {
    if limit == WASM32_ADDRESS_SPACE {
        "wasm32 can address"
    } else {
        "the CPU can hold"
    }
}

/// `1.50 GiB`-style sizes for the reasons.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (b as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// One tensor the model uses, as stored.
#[derive(Clone, Debug)]
struct UsedTensor {
    name: String,
    ty: GgmlType,
    /// Values per row (`shape[0]`).
    cols: u64,
    /// Rows (the product of the other dimensions).
    rows: u64,
    /// Bytes as stored.
    bytes: u64,
}

/// `blk.N.attn_q.weight` → `attn_q.weight`; other names are their own role.
fn role(name: &str) -> &str {
    match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((_, rest)) => rest,
        None => name,
    }
}

/// Whether `a` takes more bytes per value than `b`.
fn wider(a: GgmlType, b: GgmlType) -> bool {
    (a.type_size() * b.block_size()) > (b.type_size() * a.block_size())
}

/// Answers `Weights::load` from one header: tensors it lists are checked (shape, CPU type)
/// and counted; of a split model's others, required ones and those whose role shard 0 has are
/// estimated, the rest taken as absent.
struct HeaderWeights<'h> {
    seen: HashMap<&'h str, &'h TensorInfo>,
    /// A split model of several shards: tensors absent here may be in the others.
    partial: bool,
    /// Per role, the widest type shard 0 uses.
    role_types: HashMap<&'h str, GgmlType>,
    /// The widest type of shard 0's 2-D tensors (F32 if it has none).
    widest: GgmlType,
    used: Vec<UsedTensor>,
    estimated: usize,
}

impl<'h> HeaderWeights<'h> {
    fn new(h: &'h GgufHeader, partial: bool) -> HeaderWeights<'h> {
        let mut role_types: HashMap<&str, GgmlType> = HashMap::new();
        let mut widest: Option<GgmlType> = None;
        for t in &h.tensors {
            let e = role_types.entry(role(&t.name)).or_insert(t.ty);
            if wider(t.ty, *e) {
                *e = t.ty;
            }
            if t.n_rows() > 1 && widest.is_none_or(|w| wider(t.ty, w)) {
                widest = Some(t.ty);
            }
        }
        let widest = widest.unwrap_or(GgmlType::F32);
        HeaderWeights { seen: h.tensors.iter().map(|t| (t.name.as_str(), t)).collect(), partial, role_types, widest, used: Vec::new(), estimated: 0 }
    }

    /// A tensor the header lists: the loader's shape check and the CPU backend's type check.
    fn listed(&mut self, t: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
        if !same_shape(&t.shape, expected) {
            return Err(ModelError::TensorShape { name: t.name.clone(), expected: expected.to_vec(), found: t.shape.clone() });
        }
        if !t.ty.is_supported() {
            return Err(ModelError::UnsupportedTensorType { name: t.name.clone(), ty: t.ty });
        }
        self.used.push(UsedTensor { name: t.name.clone(), ty: t.ty, cols: t.row_len(), rows: t.n_rows(), bytes: t.n_bytes });
        Ok(())
    }

    /// A tensor of another shard: the configuration's shape, an estimated type.
    fn estimate(&mut self, name: &str, shape: &[u64]) {
        let cols = shape.first().copied().unwrap_or(1);
        let rows = shape.iter().skip(1).fold(1u64, |a, &d| a.saturating_mul(d));
        // Vectors (norms, biases) are f32 in llama.cpp's files.
        let unseen = if rows == 1 { GgmlType::F32 } else { self.widest };
        let ty = self.role_types.get(role(name)).copied().unwrap_or(unseen);
        // A row that is not whole blocks of the guessed type: count it as f32 (an upper bound).
        let row = ty.row_bytes(cols).unwrap_or(cols.saturating_mul(4));
        self.used.push(UsedTensor { name: name.to_owned(), ty, cols, rows, bytes: row.saturating_mul(rows) });
        self.estimated += 1;
    }
}

impl WeightProvider<()> for HeaderWeights<'_> {
    fn take(&mut self, name: &str, expected: &[u64]) -> Result<Option<()>, ModelError> {
        if let Some(t) = self.seen.get(name).copied() {
            self.listed(t, expected)?;
            return Ok(Some(()));
        }
        // Optional: present in other shards when shard 0 has the same role (a layer's bias).
        if self.partial && self.role_types.contains_key(role(name)) {
            self.estimate(name, expected);
            return Ok(Some(()));
        }
        Ok(None)
    }

    fn take_required(&mut self, name: &str, expected: &[u64]) -> Result<(), ModelError> {
        if let Some(t) = self.seen.get(name).copied() {
            return self.listed(t, expected);
        }
        if !self.partial {
            return Err(ModelError::MissingTensor(name.to_owned()));
        }
        self.estimate(name, expected);
        Ok(())
    }
}

/// What the model needs, device aside.
struct ModelNeeds {
    config: ModelConfig,
    used: Vec<UsedTensor>,
    weights: WeightBytes,
    n_shards: u64,
    /// Activations of a prefill batch and one row of logits, bytes.
    activation_bytes: u64,
    /// Tokenizer tables (CPU memory on either path), bytes.
    tokenizer_bytes: u64,
    reasons: Vec<String>,
}

impl ModelNeeds {
    fn from_header(h: &GgufHeader) -> Result<ModelNeeds, PlanError> {
        let config = ModelConfig::from_metadata(&h.metadata)?;
        crate::tokenizer::check_supported(&h.metadata)?;
        let split = h.split()?;
        let n_shards = split.map_or(1, |s| s.count);
        let mut hw = HeaderWeights::new(h, n_shards > 1);
        Weights::load(&config, &mut hw)?;
        let mut reasons = Vec::new();
        if let Some(s) = split.filter(|_| n_shards > 1) {
            // The tensors not accounted for: an untied output projection is the usual one.
            let unused_here = h.tensors.iter().filter(|t| !hw.used.iter().any(|u| u.name == t.name)).count();
            let accounted = (hw.used.len() + unused_here) as u64;
            let untied = !hw.used.iter().any(|u| u.name == "output.weight") && u64::try_from(s.tensors_total).unwrap_or(0) > accounted;
            if untied {
                let shape = [config.d_model as u64, config.n_vocab as u64];
                hw.estimate("output.weight", &shape);
            }
            reasons.push(format!(
                "split model: shard 0 of {n_shards} lists {} of the {} tensors used; the other {} estimated from shard 0's types per role{}",
                hw.used.len() - hw.estimated,
                hw.used.len(),
                hw.estimated,
                if untied { " (output.weight assumed untied: split.tensors.count leaves room for it)" } else { "" }
            ));
        }
        let file_bytes = hw.used.iter().fold(0u64, |a, u| a.saturating_add(u.bytes));
        let weights = WeightBytes { file_bytes, gpu_bytes: None, tensors: hw.used.len(), estimated: hw.estimated };
        let c = &config;
        // [PREFILL_TOKENS, width] f32 for the residual, norms, q/k/v, attention output and
        // the three FFN activations at once, plus one row of logits.
        let width = 3 * c.d_model + c.n_heads * c.head_dim_k + c.n_kv_heads * (c.head_dim_k + c.head_dim_v) + c.n_heads * c.head_dim_v + 3 * c.ffn_dim;
        let activation_bytes = PREFILL_TOKENS * width as u64 * 4 + c.n_vocab as u64 * 4;
        let tokenizer_bytes = h.data_offset.saturating_mul(TOKENIZER_PER_HEADER_BYTE);
        let used = std::mem::take(&mut hw.used);
        Ok(ModelNeeds { config, used, weights, n_shards, activation_bytes, tokenizer_bytes, reasons })
    }

    fn kv_widths(&self) -> (u64, u64) {
        let c = &self.config;
        ((c.n_kv_heads * c.head_dim_k) as u64, (c.n_kv_heads * c.head_dim_v) as u64)
    }
}

/// One device's fit at one KV type and context.
#[derive(Clone, Copy, Debug)]
struct Fit {
    kv: KvType,
    n_ctx: usize,
    kv_bytes: u64,
    kv_layer_bytes: Option<u64>,
    working_bytes: u64,
    total_bytes: u64,
    limit_bytes: Option<u64>,
}

/// The (KV type, context) pairs to try, best first. A KV type or context asked for is kept;
/// otherwise the context halves (powers of two, ≥ [`MIN_CONTEXT`]) before the KV type shrinks
/// (q8 then q4 cost accuracy; a shorter context costs only length).
fn candidates(target: &PlanTarget, n_ctx_train: usize) -> Vec<(KvType, usize)> {
    let defaults = SessionOptions::default();
    // Session::new caps the context at the trained one.
    let ctx0 = target.n_ctx.unwrap_or(defaults.n_ctx).min(n_ctx_train.max(1)).max(1);
    let kv0 = target.kv.unwrap_or(defaults.kv);
    let mut contexts = vec![ctx0];
    if target.n_ctx.is_none() {
        let mut p = if ctx0.is_power_of_two() { ctx0 / 2 } else { 1 << ctx0.ilog2() };
        while p >= MIN_CONTEXT {
            contexts.push(p);
            p /= 2;
        }
    }
    let mut out: Vec<(KvType, usize)> = contexts.iter().map(|&c| (kv0, c)).collect();
    if target.kv.is_none() {
        let last = *contexts.last().unwrap_or(&ctx0);
        let order = [KvType::F32, KvType::F16, KvType::Q8, KvType::Q4];
        let smaller = order.iter().skip_while(|&&k| k != kv0).skip(1);
        out.extend(smaller.map(|&k| (k, last)));
    }
    out
}

/// The first candidate `fits`, with a reason when it is not the first; else the error of the
/// last candidate that failed for its size (the smallest tried).
fn choose(
    target: &PlanTarget,
    needs: &ModelNeeds,
    reasons: &mut Vec<String>,
    fits: impl Fn(KvType, usize) -> Result<Fit, PlanError>,
) -> Result<Fit, PlanError> {
    let cands = candidates(target, needs.config.n_ctx_train);
    let mut first_failure: Option<String> = None;
    let (mut size_err, mut other_err) = (None, None);
    for &(kv, n_ctx) in &cands {
        match fits(kv, n_ctx) {
            Ok(fit) => {
                if let Some(why) = first_failure {
                    let (kv0, ctx0) = cands[0];
                    reasons.push(format!(
                        "the {} KV cache of {ctx0} positions does not fit ({why}): {} KV cache of {n_ctx} positions instead",
                        kv0.name(),
                        kv.name()
                    ));
                }
                return Ok(fit);
            }
            Err(e) => {
                first_failure.get_or_insert_with(|| e.to_string());
                // A quantized type the head dims cannot take says nothing of size.
                if matches!(e, PlanError::Kv(_)) {
                    other_err = Some(e);
                } else {
                    size_err = Some(e);
                }
            }
        }
    }
    // `cands` always holds the asked-for pair, so one of the two is set.
    Err(size_err.or(other_err).unwrap_or(PlanError::Kv(KvError::ZeroSize { what: "context length" })))
}

/// The GPU: every used tensor in the GPU layout with no row over a binding, one KV layer per
/// binding, and (when the device reports its memory) weights + KV + working memory within it.
fn fit_gpu(needs: &mut ModelNeeds, target: &PlanTarget, g: &GpuLimits, reasons: &mut Vec<String>) -> Result<Fit, PlanError> {
    let limit = g.max_binding();
    let mut gpu_bytes = 0u64;
    let mut largest_row = (String::new(), 0u64);
    for u in &needs.used {
        let rows = usize::try_from(u.rows).unwrap_or(usize::MAX);
        let cols = usize::try_from(u.cols).unwrap_or(usize::MAX);
        let bytes = if u.rows == 1 {
            // 1-D tensors (norms, biases) are dequantized to f32 (GpuBackend::finish_weight).
            u.cols.saturating_mul(4)
        } else {
            let row_words = layout::row_words(u.ty, cols).map_err(|_| PlanError::GpuUnsupportedType { tensor: u.name.clone(), ty: u.ty })?;
            if let Err(GpuError::TooLarge { bytes, limit, .. }) = layout::rows_per_chunk(&u.name, row_words, rows, limit) {
                return Err(PlanError::RowTooLarge { tensor: u.name.clone(), bytes, limit });
            }
            let row_bytes = row_words as u64 * 4;
            if row_bytes > largest_row.1 {
                largest_row = (u.name.clone(), row_bytes);
            }
            row_bytes.saturating_mul(u.rows)
        };
        gpu_bytes = gpu_bytes.saturating_add(bytes);
    }
    let c = &needs.config;
    let (hdk, hdv) = (c.head_dim_k, c.head_dim_v);
    if hdk % 32 != 0 || hdv % 32 != 0 {
        return Err(PlanError::GpuHeadDim { head_dim_k: hdk, head_dim_v: hdv });
    }
    needs.weights.gpu_bytes = Some(gpu_bytes);
    // Scores of a prefill chunk and the upload staging (gpu/backend.rs), activations.
    let working_bytes = SCORES_BUDGET + UPLOAD_PIECE as u64 + needs.activation_bytes;
    let n_layers = c.n_layers as u64;
    let fit = choose(target, needs, reasons, |kv, n_ctx| {
        let layer = layout::kv_layer_bytes(kv, c.n_kv_heads, hdk, hdv, n_ctx, target.kv_recent, limit).map_err(|e| match e {
            GpuError::TooLarge { bytes, limit, .. } => PlanError::KvLayerTooLarge { kv, n_ctx, bytes, limit },
            _ => PlanError::GpuHeadDim { head_dim_k: hdk, head_dim_v: hdv },
        })?;
        let kv_bytes = layer.saturating_mul(n_layers);
        let total_bytes = gpu_bytes.saturating_add(kv_bytes).saturating_add(working_bytes);
        if let Some(mem) = g.device_memory.filter(|&m| total_bytes > m) {
            return Err(PlanError::GpuMemoryTooSmall { size: total_bytes, limit: mem });
        }
        Ok(Fit { kv, n_ctx, kv_bytes, kv_layer_bytes: Some(layer), working_bytes, total_bytes, limit_bytes: g.device_memory })
    })?;
    reasons.push(format!(
        "GPU: weights {} + KV {} + working {} = {}{}; largest row {} ({}) and one KV layer ({}) within the binding limit of {}",
        human_bytes(gpu_bytes),
        human_bytes(fit.kv_bytes),
        human_bytes(fit.working_bytes),
        human_bytes(fit.total_bytes),
        match g.device_memory {
            Some(m) => format!(" of the device's {}", human_bytes(m)),
            None => " (the device's memory is not reported)".into(),
        },
        human_bytes(largest_row.1),
        largest_row.0,
        human_bytes(fit.kv_layer_bytes.unwrap_or(0)),
        human_bytes(limit),
    ));
    Ok(fit)
}

/// The CPU: weights as stored + KV + working memory (with the tokenizer's tables) within the
/// address space.
fn fit_cpu(needs: &ModelNeeds, target: &PlanTarget, reasons: &mut Vec<String>) -> Result<Fit, PlanError> {
    let c = &needs.config;
    let (width_k, width_v) = needs.kv_widths();
    let working_bytes = CPU_BASE_BYTES + needs.activation_bytes + needs.tokenizer_bytes;
    let fixed = needs.weights.file_bytes.saturating_add(working_bytes);
    let space = target.cpu_address_space;
    let fit = choose(target, needs, reasons, |kv, n_ctx| {
        kv_cache::check_head_dims(kv, c.head_dim_k, c.head_dim_v)?;
        let kv_bytes = kv_cache::capacity_bytes(kv, c.n_layers as u64, n_ctx as u64, target.kv_recent as u64, width_k, width_v);
        let total_bytes = fixed.saturating_add(kv_bytes);
        if total_bytes > space {
            return Err(PlanError::ModelTooLarge { size: total_bytes, limit: space });
        }
        Ok(Fit { kv, n_ctx, kv_bytes, kv_layer_bytes: None, working_bytes, total_bytes, limit_bytes: (space != u64::MAX).then_some(space) })
    })?;
    reasons.push(format!(
        "CPU: weights {} + KV {} + working {} = {}{}",
        human_bytes(needs.weights.file_bytes),
        human_bytes(fit.kv_bytes),
        human_bytes(fit.working_bytes),
        human_bytes(fit.total_bytes),
        if space == u64::MAX { String::new() } else { format!(" of {} addressable", human_bytes(space)) },
    ));
    Ok(fit)
}

/// Plans the model whose first shard's header is `header` for `target`.
pub fn plan(header: &GgufHeader, target: &PlanTarget) -> Result<Plan, PlanError> {
    let mut needs = ModelNeeds::from_header(header)?;
    let mut reasons = std::mem::take(&mut needs.reasons);
    let asked = target.n_ctx.unwrap_or(SessionOptions::default().n_ctx);
    if asked > needs.config.n_ctx_train.max(1) {
        reasons.push(format!("context {asked} capped at the model's trained context {}", needs.config.n_ctx_train));
    }
    let (device, fit) = match (target.device, target.gpu) {
        (DeviceRequest::Cpu, _) => (Device::Cpu, fit_cpu(&needs, target, &mut reasons)?),
        (DeviceRequest::Gpu, None) => return Err(PlanError::NoGpu),
        (DeviceRequest::Gpu, Some(g)) => (Device::Gpu, fit_gpu(&mut needs, target, &g, &mut reasons)?),
        (DeviceRequest::Auto, None) => {
            reasons.push("no GPU: the CPU".into());
            (Device::Cpu, fit_cpu(&needs, target, &mut reasons)?)
        }
        (DeviceRequest::Auto, Some(g)) => {
            // Reasons of a failed GPU attempt (a reduced context it tried) are not kept.
            let mut gpu_reasons = Vec::new();
            match fit_gpu(&mut needs, target, &g, &mut gpu_reasons) {
                Ok(fit) => {
                    reasons.extend(gpu_reasons);
                    (Device::Gpu, fit)
                }
                Err(gpu) => {
                    reasons.push(format!("not the GPU: {gpu}"));
                    match fit_cpu(&needs, target, &mut reasons) {
                        Ok(fit) => (Device::Cpu, fit),
                        Err(cpu) => return Err(PlanError::NoDeviceFits { gpu: Box::new(gpu), cpu: Box::new(cpu) }),
                    }
                }
            }
        }
    };
    Ok(Plan {
        device,
        kv: fit.kv,
        n_ctx: fit.n_ctx,
        kv_recent: target.kv_recent,
        arch: needs.config.arch,
        n_shards: needs.n_shards,
        weights: needs.weights,
        kv_bytes: fit.kv_bytes,
        kv_layer_bytes: fit.kv_layer_bytes,
        working_bytes: fit.working_bytes,
        total_bytes: fit.total_bytes,
        limit_bytes: fit.limit_bytes,
        reasons,
    })
}

// Native: the tests parse headers of sparse files and count the bytes read.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
