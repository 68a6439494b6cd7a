//! `webgguf plan MODEL`: the header-time planner (runtime/src/plan.rs) on a file's header —
//! device, KV type, context and why, or the typed error a load would end in — without reading
//! a weight byte.

use crate::common::parse_kv;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::kv_cache::KvType;
use webgguf::plan::{self, DeviceRequest, GpuLimits, PlanTarget, WASM32_ADDRESS_SPACE};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF file (of a split model, the first shard: only its header is read).
    model: PathBuf,
    /// `auto` (the GPU when everything fits, else the CPU), `gpu` or `cpu`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "gpu", "cpu"])]
    device: String,
    /// The GPU's maxBufferSize in bytes (with --max-binding: plan for that GPU instead of this
    /// machine's adapter).
    #[arg(long)]
    max_buffer: Option<u64>,
    /// The GPU's maxStorageBufferBindingSize in bytes.
    #[arg(long)]
    max_binding: Option<u64>,
    /// The GPU's memory in bytes (WebGPU does not report it; unchecked when absent).
    #[arg(long)]
    device_memory: Option<u64>,
    /// Bytes the CPU path may hold (default: this machine's physical memory).
    #[arg(long, conflicts_with = "wasm32")]
    address_space: Option<u64>,
    /// Plan for the browser's CPU path: wasm32's 4 GiB address space.
    #[arg(long)]
    wasm32: bool,
    /// KV-cache type (default: f16, smaller types allowed when it does not fit).
    #[arg(long, value_parser = parse_kv)]
    kv: Option<KvType>,
    /// Context length (default: 4096, halved down to 512 when it does not fit).
    #[arg(long)]
    context: Option<usize>,
    /// f16 copies of a quantized cache (as generate's --kv-recent).
    #[arg(long, default_value_t = webgguf::kv_cache::KV_RECENT)]
    kv_recent: usize,
    #[arg(long)]
    json: bool,
}

/// Physical memory from /proc/meminfo (Linux), else unbounded.
fn physical_memory() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/meminfo") else { return u64::MAX };
    s.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kib| kib.saturating_mul(1024))
}

/// The GPU to plan for and a note on where its limits came from: the flags, else this
/// machine's adapter (a software one only when `--device gpu` asks, as `generate` does).
fn gpu_limits(args: &Args) -> (Option<GpuLimits>, String) {
    if args.max_buffer.is_some() || args.max_binding.is_some() {
        let (buffer, binding) = (args.max_buffer.or(args.max_binding), args.max_binding.or(args.max_buffer));
        let g = GpuLimits { max_buffer_size: buffer.unwrap_or(0), max_storage_buffer_binding_size: binding.unwrap_or(0), device_memory: args.device_memory };
        return (Some(g), "GPU limits from the command line".into());
    }
    if args.device == "cpu" {
        return (None, "CPU asked for".into());
    }
    match webgguf::gpu::adapter_limits() {
        Ok(a) if a.is_software() && args.device == "auto" => (None, format!("{} is a software adapter (--device gpu to plan for it)", a.adapter)),
        Ok(a) => {
            let g = GpuLimits {
                max_buffer_size: a.max_buffer_size,
                max_storage_buffer_binding_size: a.max_storage_buffer_binding_size,
                device_memory: args.device_memory,
            };
            (Some(g), format!("GPU limits of the adapter {}", a.adapter))
        }
        Err(e) => (None, e.to_string()),
    }
}

pub fn run(args: Args) -> ExitCode {
    let header = match crate::common::read_header_or_exit(&args.model) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let (gpu, source) = gpu_limits(&args);
    let cpu_address_space = if args.wasm32 { WASM32_ADDRESS_SPACE } else { args.address_space.unwrap_or_else(physical_memory) };
    let device = DeviceRequest::from_name(&args.device).unwrap_or(DeviceRequest::Auto);
    let target = PlanTarget { device, kv: args.kv, n_ctx: args.context, kv_recent: args.kv_recent, ..PlanTarget::new(gpu, cpu_address_space) };
    let p = match plan::plan(&header, &target) {
        Ok(p) => p,
        Err(e) => {
            if args.json {
                println!("{}", json!({ "error": { "code": e.code(), "message": e.to_string() }, "target": target, "limits_from": source }));
            }
            eprintln!("error: {}: {e}", args.model.display());
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", json!({ "plan": p, "target": target, "limits_from": source }));
        return ExitCode::SUCCESS;
    }
    let device = match p.device {
        plan::Device::Gpu => "gpu",
        plan::Device::Cpu => "cpu",
    };
    println!("device   {device}");
    println!("kv       {}", p.kv.name());
    println!("context  {}", p.n_ctx);
    println!("weights  {} ({} tensors, {} estimated)", plan::human_bytes(p.weights.file_bytes), p.weights.tensors, p.weights.estimated);
    println!("kv cache {}", plan::human_bytes(p.kv_bytes));
    println!("working  {}", plan::human_bytes(p.working_bytes));
    println!("total    {}", plan::human_bytes(p.total_bytes));
    println!("why:");
    println!("  - {source}");
    for r in &p.reasons {
        println!("  - {r}");
    }
    ExitCode::SUCCESS
}
