//! Chat templates against llama.cpp's oracle: every `chat[]` entry of the oracle files,
//! rendered with `add_generation_prompt = true`, must equal its `rendered` text exactly.
//! SmolLM2's template comes from the real model file's metadata (run
//! `pkg-scripts/fetch-models` first; a missing model fails, never skips); Gemma-3-270M has
//! no template in its file, so the built-in Gemma fallback is what is checked there.

use webgguf::chat::{ChatMessage, ChatTemplate, TemplateOrigin};
use webgguf::gguf::{read_header_from_path, Limits};
use webgguf_tests::{fixtures_dir, model_path};

fn oracle(name: &str) -> serde_json::Value {
    let path = fixtures_dir().join("oracle").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn template_of(model: &str) -> ChatTemplate {
    let header = read_header_from_path(&model_path(model), &Limits::default()).expect("model header parses");
    let arch = header.metadata.architecture().expect("general.architecture").to_owned();
    ChatTemplate::from_metadata(&header.metadata, &arch).expect("chat template builds")
}

fn check_all(oracle_file: &str, template: &ChatTemplate) {
    let o = oracle(oracle_file);
    let cases = o["chat"].as_array().expect("oracle has chat[]");
    assert!(!cases.is_empty(), "{oracle_file}: no chat cases");
    for (i, case) in cases.iter().enumerate() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).expect("messages are {role, content}");
        let expected = case["rendered"].as_str().expect("rendered is a string");
        let got = template.apply(&messages, true).unwrap_or_else(|e| panic!("{oracle_file} case {i}: {e}"));
        assert_eq!(got, expected, "{oracle_file} case {i}");
        let from_file = case["template_from_file"].as_bool().expect("template_from_file");
        assert_eq!(template.origin() == TemplateOrigin::File, from_file, "{oracle_file} case {i}: template origin");
    }
}

#[test]
fn smollm2_template_from_file_matches_oracle() {
    let t = template_of("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(t.origin(), TemplateOrigin::File);
    check_all("SmolLM2-135M-Instruct.Q4_1.json", &t);
}

#[test]
fn gemma3_fallback_matches_oracle() {
    let t = template_of("gemma-3-270m-q4_k_m.gguf");
    assert_eq!(t.origin(), TemplateOrigin::GemmaFallback);
    assert_eq!(t.bos_token(), Some("<bos>"));
    check_all("gemma-3-270m-q4_k_m.json", &t);
}
