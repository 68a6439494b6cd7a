//! Perplexity of both real models on GPL-3 (Debian's common-licenses text, in tests/fixtures/text/),
//! computed as tests/fixtures/oracle/README.md defines it, within 1 % of llama.cpp's figure.

use webgguf::engine::{Session, SessionOptions};
use webgguf::kv_cache::KvType;
use webgguf::model::CpuBackend;
use webgguf::tokenizer::Tokenizer;
use webgguf_tests::{fixtures_dir, gpl3_text, model_path, use_all_cores};

fn check(name: &str) {
    use_all_cores();
    let o: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("oracle").join(format!("{name}.json"))).expect("oracle")).expect("json");
    let want = &o["perplexity"];
    // The oracle names the file it read; the repository holds a copy of it.
    assert!(want["text"].as_str().expect("text path").ends_with("/GPL-3"), "{name}: {}", want["text"]);
    let text = gpl3_text();
    let ctx = want["ctx"].as_u64().expect("ctx") as usize;

    let mut backend = CpuBackend::new();
    let (gguf, model) = webgguf::loader::load_files(&[model_path(&format!("{name}.gguf"))], &mut backend).expect("load");
    let tok = Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer");
    let tokens = tok.tokenize(&text, false, false).expect("tokenize");
    assert_eq!(tokens.len() as u64, want["tokens"].as_u64().expect("tokens"), "{name}: token count differs from llama.cpp");

    let mut s = Session::new(backend, model, SessionOptions { kv: KvType::F32, n_ctx: ctx, ..Default::default() }).expect("session");
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let p = s.perplexity(&tokens, ctx, bos).expect("perplexity");
    let ref_ppl = want["ppl"].as_f64().expect("ppl");
    let rel = (p.ppl - ref_ppl).abs() / ref_ppl;
    println!("{name}: perplexity {:.4} vs llama.cpp {ref_ppl:.4} ({:+.3} %), {} predictions", p.ppl, 100.0 * (p.ppl - ref_ppl) / ref_ppl, p.predictions);
    assert_eq!(p.predictions as u64, want["predictions"].as_u64().expect("predictions"), "{name}: prediction count");
    assert!(rel <= 0.01, "{name}: perplexity {} is not within 1 % of llama.cpp's {ref_ppl}", p.ppl);
}

#[test]
fn smollm2_perplexity_within_1_percent_of_llama_cpp() {
    check("SmolLM2-135M-Instruct.Q4_1");
}

#[test]
fn gemma3_perplexity_within_1_percent_of_llama_cpp() {
    check("gemma-3-270m-q4_k_m");
}
