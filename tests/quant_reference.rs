//! The scalar quant oracle (`webgguf::quant`) against gguf-py, bit for bit.
//!
//! Fixtures: tests/fixtures/quant/, made by tests/fixtures/gen_quant_fixtures.py (see
//! tests/fixtures/README.md). Each case in index.json is either
//! - `dequantize`: `<case>.bin` packed blocks → must dequantize to exactly `<case>.f32`, or
//! - `quantize`: `<case>.f32` floats → must quantize to exactly the bytes of `<case>.bin`.
//!
//! One test per (type, op), so a type whose code is wrong or missing fails on its own; each
//! also fails when the index has no case for it, so a lost fixture cannot pass silently.

use serde_json::Value;
use std::path::PathBuf;
use webgguf::quant::{dequantize_row, quantize_row, GgmlType};
use webgguf_tests::fixtures_dir;

struct Case {
    name: String,
    op: String,
    ty: GgmlType,
    n: usize,
    source: String,
}

fn quant_dir() -> PathBuf {
    fixtures_dir().join("quant")
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_f32(path: PathBuf) -> Vec<f32> {
    let bytes = read(path);
    assert_eq!(bytes.len() % 4, 0);
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn cases() -> Vec<Case> {
    let index: Value = serde_json::from_slice(&read(quant_dir().join("index.json"))).expect("index.json parses");
    let list = index["cases"].as_array().expect("index.json has a cases array");
    list.iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_else(|| panic!("case {c}: no string {k}")).to_string();
            let ty_name = field("type");
            Case {
                name: field("case"),
                op: field("op"),
                ty: GgmlType::from_name(&ty_name).unwrap_or_else(|| panic!("unknown type {ty_name}")),
                n: c["n_elements"].as_u64().expect("n_elements") as usize,
                source: field("source"),
            }
        })
        .collect()
}

fn packed_len(ty: GgmlType, n: usize) -> usize {
    assert_eq!(n % ty.block_size(), 0);
    n / ty.block_size() * ty.type_size()
}

/// Describes the first few differing elements.
fn diff_f32(got: &[f32], want: &[f32]) -> Option<String> {
    let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
    if bad.is_empty() {
        return None;
    }
    let shown: Vec<String> =
        bad.iter().take(6).map(|&i| format!("[{i}] got {:e} ({:#010x}) want {:e} ({:#010x})", got[i], got[i].to_bits(), want[i], want[i].to_bits())).collect();
    Some(format!("{} of {} elements differ: {}", bad.len(), want.len(), shown.join(", ")))
}

fn diff_bytes(ty: GgmlType, got: &[u8], want: &[u8]) -> Option<String> {
    let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    if bad.is_empty() {
        return None;
    }
    let shown: Vec<String> =
        bad.iter().take(6).map(|&i| format!("block {} byte {}: got {:#04x} want {:#04x}", i / ty.type_size(), i % ty.type_size(), got[i], want[i])).collect();
    Some(format!("{} of {} bytes differ: {}", bad.len(), want.len(), shown.join(", ")))
}

fn check(ty: GgmlType, op: &str) {
    let dir = quant_dir();
    let selected: Vec<Case> = cases().into_iter().filter(|c| c.ty == ty && c.op == op).collect();
    assert!(!selected.is_empty(), "tests/fixtures/quant has no {op} case for {ty}");
    let mut failures = Vec::new();
    for c in &selected {
        let blob = read(dir.join(format!("{}.bin", c.name)));
        let floats = read_f32(dir.join(format!("{}.f32", c.name)));
        assert_eq!(floats.len(), c.n, "{}: .f32 length", c.name);
        assert_eq!(blob.len(), packed_len(ty, c.n), "{}: .bin length", c.name);
        let problem = match op {
            "dequantize" => {
                // a NaN sentinel no fixture value has: elements left unwritten show up
                let mut out = vec![f32::from_bits(0x7FA5_A5A5); c.n];
                match dequantize_row(ty, &blob, &mut out) {
                    Ok(()) => diff_f32(&out, &floats),
                    Err(e) => Some(format!("error: {e}")),
                }
            }
            "quantize" => {
                let mut out = vec![0xA5u8; blob.len()];
                match quantize_row(ty, &floats, &mut out) {
                    Ok(()) => diff_bytes(ty, &out, &blob),
                    Err(e) => Some(format!("error: {e}")),
                }
            }
            other => panic!("{}: unknown op {other}", c.name),
        };
        if let Some(p) = problem {
            failures.push(format!("{} ({}): {p}", c.name, c.source));
        }
    }
    assert!(failures.is_empty(), "{ty} {op} differs from gguf-py:\n  {}", failures.join("\n  "));
}

macro_rules! per_type {
    ($($test:ident => $ty:ident $op:literal;)*) => {
        $( #[test] fn $test() { check(GgmlType::$ty, $op) } )*
        const COVERED: &[(GgmlType, &str)] = &[$((GgmlType::$ty, $op)),*];
    };
}

per_type! {
    dequantize_f32 => F32 "dequantize";
    dequantize_f16 => F16 "dequantize";
    dequantize_bf16 => BF16 "dequantize";
    dequantize_q4_0 => Q4_0 "dequantize";
    dequantize_q4_1 => Q4_1 "dequantize";
    dequantize_q5_0 => Q5_0 "dequantize";
    dequantize_q5_1 => Q5_1 "dequantize";
    dequantize_q8_0 => Q8_0 "dequantize";
    dequantize_q2_k => Q2_K "dequantize";
    dequantize_q3_k => Q3_K "dequantize";
    dequantize_q4_k => Q4_K "dequantize";
    dequantize_q5_k => Q5_K "dequantize";
    dequantize_q6_k => Q6_K "dequantize";
    quantize_f16 => F16 "quantize";
    quantize_bf16 => BF16 "quantize";
    quantize_q4_0 => Q4_0 "quantize";
    quantize_q4_1 => Q4_1 "quantize";
    quantize_q5_0 => Q5_0 "quantize";
    quantize_q5_1 => Q5_1 "quantize";
    quantize_q8_0 => Q8_0 "quantize";
}

/// Every case in the index is run by one of the tests above, its files exist with the sizes
/// its type implies, and the case names are unique.
#[test]
fn index_is_fully_covered() {
    let all = cases();
    let mut names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len(), "duplicate case names");
    for c in &all {
        assert!(COVERED.contains(&(c.ty, c.op.as_str())), "{}: no test runs {} {}", c.name, c.ty, c.op);
        let dir = quant_dir();
        let bin = std::fs::metadata(dir.join(format!("{}.bin", c.name))).expect("bin exists").len();
        let f32s = std::fs::metadata(dir.join(format!("{}.f32", c.name))).expect("f32 exists").len();
        assert_eq!(bin as usize, packed_len(c.ty, c.n), "{}", c.name);
        assert_eq!(f32s as usize, 4 * c.n, "{}", c.name);
    }
}
