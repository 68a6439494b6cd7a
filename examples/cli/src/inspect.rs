//! `webgguf inspect MODEL.gguf [--json] [--ctx N] [--kv f16|q8|q4]`
//!
//! JSON shape (stable):
//! ```text
//! { "file", "file_bytes", "version", "alignment", "data_offset",
//!   "metadata": { key: value, … },        // arrays longer than --max-array are summarized as
//!                                         // {"array": "<element type>", "len": N, "head": [first 8]}
//!   "tensors": [ { "name", "type", "shape", "bytes", "offset" } ],   // offset: absolute in the file
//!   "counts": { "Q4_K": 27, … },          // tensors per ggml type name
//!   "weight_bytes",                       // sum of tensor bytes
//!   "estimate": { "ctx", "kv_type", "n_layers", "n_kv_heads", "head_dim_k", "head_dim_v",
//!                 "weights_bytes", "kv_cache_bytes", "total_bytes" } }  // null without hyperparameters
//! ```

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use webgguf::gguf::{Array, GgufHeader, Value};
use webgguf::kv_cache::KvType;
use webgguf::plan::human_bytes;

/// println! that ignores a closed stdout (e.g. piped into `head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{ let _ = writeln!(std::io::stdout().lock(), $($t)*); }};
}

#[derive(clap::Args)]
pub struct Args {
    /// Path to a .gguf file (a single file or one shard of a split model).
    model: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Context length for the memory estimate (default: the model's trained context, max 4096).
    #[arg(long)]
    ctx: Option<u64>,
    /// KV-cache storage type for the memory estimate.
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    kv: KvType,
    /// Arrays longer than this are summarized (length and first elements).
    #[arg(long, default_value_t = 32)]
    max_array: usize,
}

fn parse_kv(s: &str) -> Result<KvType, String> {
    KvType::from_name(s).ok_or_else(|| format!("unknown KV type {s:?} (f32, f16, q8, q4)"))
}

#[derive(Serialize)]
struct Estimate {
    ctx: u64,
    kv_type: KvType,
    n_layers: u64,
    n_kv_heads: u64,
    head_dim_k: u64,
    head_dim_v: u64,
    weights_bytes: u64,
    kv_cache_bytes: u64,
    total_bytes: u64,
}

/// Weights plus a full-context KV cache for every layer (an upper bound for sliding-window
/// models, whose local layers need only the window), with a quantized cache's default f16
/// copies ([`KV_RECENT`](webgguf::kv_cache::KV_RECENT)).
fn estimate(h: &GgufHeader, ctx: Option<u64>, kv: KvType) -> Option<Estimate> {
    let hp = h.metadata.hyperparameters().ok()?;
    let ctx = ctx.unwrap_or_else(|| u64::from(hp.context_length).min(4096));
    let n_layers = u64::from(hp.block_count);
    let n_kv_heads = u64::from(hp.head_count_kv);
    let default_dim = u64::from(hp.embedding_length) / u64::from(hp.head_count.max(1));
    let head_dim_k = hp.key_length.map(u64::from).unwrap_or(default_dim);
    let head_dim_v = hp.value_length.map(u64::from).unwrap_or(default_dim);
    let per_token = kv.bytes_for(n_kv_heads * head_dim_k).checked_add(kv.bytes_for(n_kv_heads * head_dim_v))?;
    let copies = webgguf::kv_cache::RecentRows::bytes(kv, n_layers, ctx, webgguf::kv_cache::KV_RECENT as u64, n_kv_heads * head_dim_k, n_kv_heads * head_dim_v);
    let kv_cache_bytes = per_token.checked_mul(ctx)?.checked_mul(n_layers)?.checked_add(copies)?;
    let weights_bytes = h.tensors.iter().map(|t| t.n_bytes).sum::<u64>();
    Some(Estimate {
        ctx,
        kv_type: kv,
        n_layers,
        n_kv_heads,
        head_dim_k,
        head_dim_v,
        weights_bytes,
        kv_cache_bytes,
        total_bytes: weights_bytes.checked_add(kv_cache_bytes)?,
    })
}

fn summarize_array(a: &Array, max: usize) -> Json {
    if a.len() <= max {
        return serde_json::to_value(a).unwrap_or(Json::Null);
    }
    let head: Vec<Json> = match a {
        Array::String(v) => v.iter().take(8).map(|s| json!(s)).collect(),
        other => match serde_json::to_value(other) {
            Ok(Json::Array(v)) => v.into_iter().take(8).collect(),
            _ => Vec::new(),
        },
    };
    let elem = a.type_name().trim_start_matches("array[").trim_end_matches(']');
    json!({ "array": elem, "len": a.len(), "head": head })
}

fn metadata_json(h: &GgufHeader, max: usize) -> Map<String, Json> {
    h.metadata
        .iter()
        .map(|(k, v)| {
            let j = match v {
                Value::Array(a) => summarize_array(a, max),
                // NaN/Inf floats have no JSON form: print them as strings.
                Value::F32(f) if !f.is_finite() => json!(f.to_string()),
                Value::F64(f) if !f.is_finite() => json!(f.to_string()),
                v => serde_json::to_value(v).unwrap_or(Json::Null),
            };
            (k.to_owned(), j)
        })
        .collect()
}

fn short_value(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 80 => {
            format!("{:?}… ({} bytes)", s.chars().take(77).collect::<String>(), s.len())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => {
            let j = summarize_array(a, 8);
            match j.get("len") {
                Some(len) => format!("{} × {} {}", len, a.type_name(), j["head"]),
                None => j.to_string(),
            }
        }
        v => serde_json::to_value(v).map(|j| j.to_string()).unwrap_or_default(),
    }
}

pub fn run(args: Args) -> ExitCode {
    let header = match crate::common::read_header_or_exit(&args.model) {
        Ok(h) => h,
        Err(code) => return code,
    };
    let file_bytes = std::fs::metadata(&args.model).map(|m| m.len()).unwrap_or(0);
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &header.tensors {
        *counts.entry(t.ty.name()).or_default() += 1;
    }
    let weight_bytes: u64 = header.tensors.iter().map(|t| t.n_bytes).sum();
    let est = estimate(&header, args.ctx, args.kv);

    if args.json {
        let tensors: Vec<Json> = header
            .tensors
            .iter()
            .map(|t| {
                json!({ "name": t.name, "type": t.ty.name(), "shape": t.shape,
                        "bytes": t.n_bytes, "offset": header.data_offset + t.offset })
            })
            .collect();
        let out = json!({
            "file": args.model.display().to_string(),
            "file_bytes": file_bytes,
            "version": header.version,
            "alignment": header.alignment,
            "data_offset": header.data_offset,
            "metadata": metadata_json(&header, args.max_array),
            "tensors": tensors,
            "counts": counts,
            "weight_bytes": weight_bytes,
            "estimate": est,
        });
        match serde_json::to_string_pretty(&out) {
            Ok(s) => out!("{s}"),
            Err(e) => {
                eprintln!("error: encoding JSON: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }

    out!("{}: GGUF v{}, {} ({} bytes)", args.model.display(), header.version, human_bytes(file_bytes), file_bytes);
    out!("alignment {}, tensor data at byte {}", header.alignment, header.data_offset);
    out!("\nmetadata ({} entries):", header.metadata.len());
    for (k, v) in header.metadata.iter() {
        out!("  {k:<44} {:<14} {}", v.type_name(), short_value(v));
    }
    out!("\ntensors ({}):", header.tensors.len());
    out!("  {:<40} {:<6} {:>24} {:>12} {:>12}", "name", "type", "shape", "bytes", "offset");
    for t in &header.tensors {
        let shape = t.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(" × ");
        out!("  {:<40} {:<6} {:>24} {:>12} {:>12}", t.name, t.ty.name(), shape, t.n_bytes, header.data_offset + t.offset);
    }
    out!("\ncounts by type:");
    for (ty, n) in &counts {
        out!("  {ty:<8} {n}");
    }
    out!("\nweight bytes: {weight_bytes} ({})", human_bytes(weight_bytes));
    match est {
        Some(e) => out!(
            "estimate at ctx {} with {:?} KV cache: weights {} + KV cache {} ({} layers × {} KV heads × {}/{} dims) = {}",
            e.ctx,
            e.kv_type,
            human_bytes(e.weights_bytes),
            human_bytes(e.kv_cache_bytes),
            e.n_layers,
            e.n_kv_heads,
            e.head_dim_k,
            e.head_dim_v,
            human_bytes(e.total_bytes)
        ),
        None => out!("estimate: not available (hyperparameters missing from metadata)"),
    }
    ExitCode::SUCCESS
}
