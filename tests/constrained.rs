//! Constrained decoding on the real models' vocabularies (SmolLM2: 49,152 tokens; Gemma-3:
//! 262,144, with duplicate tokens): answers held to JSON schemas (nested objects, arrays,
//! enums, numbers, a constant with escapes) and to GBNF grammars, greedy and sampled with
//! several seeds, always complete and valid. The CPU path (the GPU reads the same logits).

use serde_json::{json, Value};
use webgguf::chat::{ChatMessage, ChatTemplate};
use webgguf::constraint::{Constraint, Grammar, Vocabulary};
use webgguf::engine::{FinishReason, Session, SessionOptions};
use webgguf::kv_cache::KvType;
use webgguf::model::CpuBackend;
use webgguf::sampler::{Sampler, SamplerConfig, StopConditions};
use webgguf::tokenizer::Tokenizer;
use webgguf_tests::{model_path, use_all_cores};

struct Chat {
    session: Session<CpuBackend>,
    tok: Tokenizer,
    template: ChatTemplate,
    vocab: Vocabulary,
}

fn open(file: &str) -> Chat {
    use_all_cores();
    let mut backend = CpuBackend::new();
    let (gguf, model) = webgguf::loader::load_files(&[model_path(file)], &mut backend).expect("load");
    let md = gguf.metadata();
    let tok = Tokenizer::from_metadata(md).expect("tokenizer");
    let template = ChatTemplate::from_metadata(md, md.architecture().unwrap_or("")).expect("template");
    let vocab = Vocabulary::new(&tok).expect("vocabulary");
    let session = Session::new(backend, model, SessionOptions { kv: KvType::F16, n_ctx: 512, ..Default::default() }).expect("session");
    Chat { session, tok, template, vocab }
}

/// The answer to `question` held to `grammar`, with `temperature` (0: greedy) and `seed`.
fn answer(c: &mut Chat, question: &str, grammar: &Grammar, temperature: f32, seed: u64) -> (String, FinishReason) {
    let prompt = c.template.apply(&[ChatMessage::new("user", question)], true).expect("template");
    let prompt = c.tok.tokenize(&prompt, false, true).expect("tokenize");
    let config = SamplerConfig { temperature, seed, ..SamplerConfig::default() };
    let mut sampler = Sampler::new(config, c.tok.n_vocab()).expect("sampler");
    let mut gen = c.session.start_text(&c.tok, &prompt, &sampler, &[]);
    gen.constrain(Constraint::new(&c.vocab, grammar).expect("compiles"));
    let stop = StopConditions { max_tokens: Some(200), ..Default::default() };
    let g = c.session.run_text(gen, &c.tok, &mut sampler, &stop, None, |_| webgguf::engine::Flow::Continue).expect("generate");
    (g.text, g.finish_reason)
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "height_m": {"type": "number"},
            "pets": {"type": "array", "items": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog", "fish"]}, "legs": {"type": "integer", "minimum": 0, "maximum": 4}}, "required": ["kind", "legs"], "additionalProperties": false}, "maxItems": 3},
            "motto": {"const": "say \"hi\"\\n\tthen\n go"}
        },
        "required": ["name", "age", "height_m", "pets", "motto"],
        "additionalProperties": false
    })
}

/// The checks `person_schema` asks for, by hand.
fn valid_person(text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    if keys != ["name", "age", "height_m", "pets", "motto"] {
        return Err(format!("keys {keys:?}"));
    }
    let name = o["name"].as_str().ok_or("name")?;
    let age = o["age"].as_f64().ok_or("age")?;
    let pets = o["pets"].as_array().ok_or("pets")?;
    let ok = name.chars().count() <= 16
        && age.fract() == 0.0
        && (0.0..=120.0).contains(&age)
        && o["height_m"].is_number()
        && pets.len() <= 3
        && pets.iter().all(|p| {
            ["cat", "dog", "fish"].contains(&p["kind"].as_str().unwrap_or(""))
                && p["legs"].as_f64().is_some_and(|l| l.fract() == 0.0 && (0.0..=4.0).contains(&l))
                && p.as_object().is_some_and(|p| p.len() == 2)
        })
        && o["motto"] == "say \"hi\"\\n\tthen\n go";
    ok.then_some(()).ok_or_else(|| "a value outside the schema".into())
}

fn check_model(file: &str) {
    let mut c = open(file);
    let schema = Grammar::JsonSchema(person_schema());
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2), (1.0, 3)] {
        let (text, finish) = answer(&mut c, "Describe a person and their pets as JSON.", &schema, temperature, seed);
        println!("{file} t={temperature} seed={seed}: {text}");
        assert_eq!(finish, FinishReason::Stop, "{file}: the answer ended complete: {text}");
        valid_person(&text).unwrap_or_else(|e| panic!("{file} t={temperature} seed={seed}: {e}: {text}"));
    }
    // An open object (what response_format json_object asks, bounded here: an unbounded
    // string lets a small model write until max_tokens), and a GBNF grammar.
    let open_object = json!({"type": "object", "additionalProperties": {"type": "string", "maxLength": 12}, "maxProperties": 2});
    let (text, finish) = answer(&mut c, "Give me a JSON object with one key.", &Grammar::JsonSchema(open_object), 0.0, 0);
    assert!(finish == FinishReason::Stop && serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()), "{file}: {text}");
    let date = Grammar::Gbnf(
        "root ::= year \"-\" month \"-\" day\nyear ::= [12] [0-9]{3}\nmonth ::= \"0\" [1-9] | \"1\" [0-2]\nday ::= [0-2] [0-9] | \"3\" [01]".into(),
    );
    for seed in [0, 5] {
        let (text, finish) = answer(&mut c, "When did the Berlin wall fall?", &date, if seed == 0 { 0.0 } else { 1.0 }, seed);
        let b = text.as_bytes();
        let ok = b.len() == 10 && b[4] == b'-' && b[7] == b'-' && text.chars().enumerate().all(|(i, ch)| i == 4 || i == 7 || ch.is_ascii_digit());
        assert!(finish == FinishReason::Stop && ok, "{file}: {text:?}");
    }
}

#[test]
fn smollm2_answers_follow_schemas_and_grammars() {
    check_model("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_answers_follow_schemas_and_grammars() {
    check_model("gemma-3-270m-q4_k_m.gguf");
}

/// `tool_choice: "required"` and a named function: the answer is held to a call of the tools
/// in each format (the grammar `required_call_grammar` builds) and parsed back as that call,
/// with arguments that follow the tool's schema. Greedy and sampled.
#[test]
fn required_tool_calls_follow_the_tools() {
    use webgguf::chat::tools::{required_call_grammar, ToolCallFormat};
    let mut c = open("SmolLM2-135M-Instruct.Q4_1.gguf");
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "now", "description": "The time"}}
    ]);
    let prompt = c.template.apply_with_tools(&[ChatMessage::new("user", "What is the weather in Paris?")], Some(&tools), true).expect("template");
    let prompt = c.tok.tokenize(&prompt, false, true).expect("tokenize");
    for format in [ToolCallFormat::Generic, ToolCallFormat::Llama3, ToolCallFormat::Hermes] {
        for (only, temperature, seed) in [(None, 0.0, 0), (None, 1.0, 7), (Some("get_weather"), 1.0, 3), (Some("now"), 0.0, 0)] {
            let lark = required_call_grammar(format, &tools, only).expect("grammar");
            let config = SamplerConfig { temperature, seed, ..SamplerConfig::default() };
            let mut sampler = Sampler::new(config, c.tok.n_vocab()).expect("sampler");
            let mut gen = c.session.start_text(&c.tok, &prompt, &sampler, &[]);
            gen.want_tool_calls(format);
            gen.constrain(Constraint::new(&c.vocab, &Grammar::Lark(lark)).expect("compiles"));
            let stop = StopConditions { max_tokens: Some(120), ..Default::default() };
            let g = c.session.run_text(gen, &c.tok, &mut sampler, &stop, None, |_| webgguf::engine::Flow::Continue).expect("generate");
            let what = format!("{format:?} only={only:?} t={temperature} seed={seed}: {:?} {:?}", g.text, g.tool_calls);
            println!("{what}");
            assert_eq!(g.finish_reason, FinishReason::ToolCalls, "{what}");
            assert!(g.tool_calls.len() == 1 && g.text.is_empty(), "{what}");
            for call in &g.tool_calls {
                assert!(only.is_none_or(|n| n == call.name) && ["get_weather", "now"].contains(&call.name.as_str()), "{what}");
                let args: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|e| panic!("{what}: {e}"));
                if call.name == "get_weather" {
                    let ok = args["city"].as_str().is_some_and(|c| c.chars().count() <= 20)
                        && ["C", "F"].contains(&args["unit"].as_str().unwrap_or(""))
                        && args.as_object().is_some_and(|o| o.len() == 2);
                    assert!(ok, "{what}");
                } else {
                    assert_eq!(args, json!({}), "{what}");
                }
            }
        }
    }
}
