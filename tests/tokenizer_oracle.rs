//! The tokenizer against llama.cpp on the two real models (tests/fixtures/oracle/*.json, see
//! its README): every oracle string must tokenize to exactly llama.cpp's ids, every greedy
//! continuation must detokenize to llama.cpp's text, and the perplexity text must give
//! llama.cpp's token count. Beyond the oracle, tests/fixtures/tokenizer/corpus.json holds
//! llama.cpp's tokenization of a few hundred awkward strings for both models and for variants
//! of their metadata (other BPE pre-tokenizers, SentencePiece with a space prefix), made by
//! llama.cpp's own tokenizer code (see tests/fixtures/tokenizer/README.md).

use serde_json::Value;
use std::sync::OnceLock;
use std::time::Instant;
use webgguf::gguf::{read_header_from_path, Limits, Metadata, Value as GgufValue};
use webgguf::tokenizer::{pre_tokenize, Tokenizer, TokenizerKind};
use webgguf_tests::{fixtures_dir, gpl3_text, ids, model_path};

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1";
const GEMMA: &str = "gemma-3-270m-q4_k_m";
/// The oracle's GPL-3 text (Debian's common-licenses copy, in tests/fixtures/text/).
const GPL3: &str = "tests/fixtures/text/GPL-3";

struct Model {
    tok: Tokenizer,
    oracle: Value,
}

fn load(name: &str) -> Model {
    let path = model_path(&format!("{name}.gguf"));
    let header = read_header_from_path(&path, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = Tokenizer::from_metadata(&header.metadata).unwrap_or_else(|e| panic!("{name}: {e}"));
    let json = fixtures_dir().join("oracle").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let oracle = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    Model { tok, oracle }
}

fn model(name: &str) -> &'static Model {
    static SMOL: OnceLock<Model> = OnceLock::new();
    static GEM: OnceLock<Model> = OnceLock::new();
    let cell = if name == SMOLLM { &SMOL } else { &GEM };
    cell.get_or_init(|| load(name))
}

fn entries<'a>(m: &'a Model, key: &str) -> &'a [Value] {
    let a = m.oracle[key].as_array().unwrap_or_else(|| panic!("oracle has no {key}[]"));
    assert!(!a.is_empty(), "oracle {key}[] is empty");
    a
}

/// Reports every mismatch (not just the first) and fails if there is one.
fn check_all(what: &str, mismatches: Vec<String>, total: usize) {
    assert!(mismatches.is_empty(), "{what}: {} of {total} differ from llama.cpp:\n{}", mismatches.len(), mismatches.join("\n"));
    eprintln!("{what}: {total} of {total} equal to llama.cpp");
}

fn tokenize_strings(name: &str) {
    let m = model(name);
    let mut bad = Vec::new();
    let mut total = 0;
    for e in entries(m, "tokenize") {
        let text = e["text"].as_str().expect("text");
        for (add_bos, special) in [(false, false), (false, true), (true, false), (true, true)] {
            let key = format!("add_bos={},special={}", u8::from(add_bos), u8::from(special));
            let want = ids(&e[&key]);
            let got = m.tok.tokenize(text, add_bos, special).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            total += 1;
            if got != want {
                bad.push(format!("  {text:?} [{key}]\n    llama.cpp {want:?}\n    ours      {got:?}"));
            }
        }
    }
    check_all(&format!("{name} tokenize[]"), bad, total);
}

/// `cases[].prompt` with the file's BOS and no special parsing; `chat[].rendered` with special
/// parsing and no extra BOS.
fn prompts(name: &str) {
    let m = model(name);
    let mut bad = Vec::new();
    let mut total = 0;
    for (key, text_key, add_special, parse_special) in [("cases", "prompt", true, false), ("chat", "rendered", false, true)] {
        for e in entries(m, key) {
            let text = e[text_key].as_str().expect("prompt text");
            let want = ids(&e["prompt_ids"]);
            let got = m.tok.tokenize(text, add_special, parse_special).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            total += 1;
            if got != want {
                bad.push(format!("  {key}: {text:?}\n    llama.cpp {want:?}\n    ours      {got:?}"));
            }
        }
    }
    check_all(&format!("{name} prompts"), bad, total);
}

/// `greedy_ids` → `greedy_text`, in one go and streamed one id at a time.
fn greedy_text(name: &str) {
    let m = model(name);
    let mut bad = Vec::new();
    let mut total = 0;
    for key in ["cases", "chat"] {
        for e in entries(m, key) {
            let g = ids(&e["greedy_ids"]);
            let want = e["greedy_text"].as_str().expect("greedy_text");
            let got = m.tok.decode(&g).expect("ids in the vocabulary");
            let mut d = m.tok.detokenizer();
            let mut streamed = String::new();
            for &id in &g {
                streamed += &d.push(&m.tok, id).expect("id in the vocabulary");
            }
            streamed += &d.finish();
            total += 1;
            if got != want || streamed != want {
                bad.push(format!("  {key} {g:?}\n    llama.cpp {want:?}\n    decode    {got:?}\n    streamed  {streamed:?}"));
            }
        }
    }
    check_all(&format!("{name} greedy_text"), bad, total);
}

/// The whole GPL-3 text, no BOS, no special parsing: llama.cpp's token count.
fn perplexity_count(name: &str) {
    let m = model(name);
    let want = m.oracle["perplexity"]["tokens"].as_u64().expect("perplexity.tokens") as usize;
    let text = gpl3_text();
    let t = Instant::now();
    let got = m.tok.tokenize(&text, false, false).expect("tokenize");
    let dt = t.elapsed();
    eprintln!("{name}: GPL-3 ({} bytes) → {} tokens in {dt:?}", text.len(), got.len());
    assert_eq!(got.len(), want, "{name}: token count of {GPL3}");
    // Detokenizing gives the text back (neither model cleans up spaces).
    assert_eq!(m.tok.decode(&got).expect("decode"), text);
}

#[test]
fn smollm_tokenize_strings() {
    tokenize_strings(SMOLLM);
}

#[test]
fn gemma_tokenize_strings() {
    tokenize_strings(GEMMA);
}

#[test]
fn smollm_prompts() {
    prompts(SMOLLM);
}

#[test]
fn gemma_prompts() {
    prompts(GEMMA);
}

#[test]
fn smollm_greedy_text() {
    greedy_text(SMOLLM);
}

#[test]
fn gemma_greedy_text() {
    greedy_text(GEMMA);
}

#[test]
fn smollm_perplexity_token_count() {
    perplexity_count(SMOLLM);
}

#[test]
fn gemma_perplexity_token_count() {
    perplexity_count(GEMMA);
}

#[test]
fn special_ids_and_flags_match_the_oracle() {
    for name in [SMOLLM, GEMMA] {
        let m = model(name);
        let o = &m.oracle;
        assert_eq!(m.tok.n_vocab() as u64, o["n_vocab"].as_u64().expect("n_vocab"), "{name}");
        assert_eq!(m.tok.bos().map(u64::from), o["bos"].as_u64(), "{name} bos");
        assert_eq!(m.tok.eos().map(u64::from), o["eos"].as_u64(), "{name} eos");
        assert_eq!(Some(m.tok.add_bos()), o["add_bos"].as_bool(), "{name} add_bos");
    }
    let smol = &model(SMOLLM).tok;
    assert_eq!(smol.kind(), TokenizerKind::Bpe);
    assert_eq!(smol.pre(), Some("smollm"));
    // <|endoftext|>, <|im_end|>, and <reponame> (a FIM repo token, which llama.cpp ends on).
    assert_eq!(smol.eog_ids(), [0, 2, 4]);
    let gemma = &model(GEMMA).tok;
    assert_eq!(gemma.kind(), TokenizerKind::Spm);
    assert!(!gemma.add_space_prefix());
    let eot = gemma.token_id("<end_of_turn>").expect("<end_of_turn>");
    assert!(gemma.is_eog(eot) && gemma.is_eog(1));
    assert!(!gemma.is_eog(gemma.token_id("<start_of_turn>").expect("<start_of_turn>")));
}

/// Byte-fallback tokens of one emoji, fed one at a time: nothing comes out until the
/// character is complete, and never a replacement character.
#[test]
fn streaming_never_splits_a_character() {
    let gemma = &model(GEMMA).tok;
    let emoji = "🫠"; // not a Gemma token: must come out of byte fallback
    let ids = gemma.tokenize(emoji, false, false).expect("tokenize");
    let bytes: Vec<u32> = emoji.bytes().map(|b| gemma.token_id(&format!("<0x{b:02X}>")).expect("byte token")).collect();
    let mut d = gemma.detokenizer();
    let mut chunks = Vec::new();
    for &id in &bytes {
        chunks.push(d.push(gemma, id).expect("byte token"));
    }
    assert_eq!(chunks, ["", "", "", emoji]);
    assert_eq!(d.finish(), "");
    assert_eq!(gemma.decode(&bytes).expect("decode"), emoji);
    assert_eq!(gemma.decode(&ids).expect("decode"), emoji);

    // Every oracle string, streamed id by id through both tokenizers: the chunks never hold
    // U+FFFD and add up to the full text.
    for name in [SMOLLM, GEMMA] {
        let m = model(name);
        for e in entries(m, "tokenize") {
            let text = e["text"].as_str().expect("text");
            let ids = m.tok.tokenize(text, false, false).expect("tokenize");
            let mut d = m.tok.detokenizer();
            let mut out = String::new();
            for &id in &ids {
                let c = d.push(&m.tok, id).expect("id");
                assert!(!c.contains('\u{FFFD}'), "{name}: chunk {c:?} of {text:?}");
                out += &c;
            }
            assert!(d.pending().is_empty());
            assert_eq!(out, text, "{name}");
        }
    }

    // A stream cut inside a character flushes it lossy at the end.
    let mut d = gemma.detokenizer();
    assert_eq!(d.push(gemma, bytes[0]).expect("byte token"), "");
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn timings() {
    for name in [SMOLLM, GEMMA] {
        let path = model_path(&format!("{name}.gguf"));
        let header = read_header_from_path(&path, &Limits::default()).expect("header");
        let t = Instant::now();
        let tok = Tokenizer::from_metadata(&header.metadata).expect("tokenizer");
        let build = t.elapsed();
        let text = gpl3_text();
        let t = Instant::now();
        let plain = tok.tokenize(&text, false, false).expect("tokenize").len();
        let tok_plain = t.elapsed();
        let t = Instant::now();
        let special = tok.tokenize(&text, false, true).expect("tokenize").len();
        let tok_special = t.elapsed();
        eprintln!("{name}: build {build:?}; GPL-3 {plain} tokens in {tok_plain:?}, with special parsing {special} tokens in {tok_special:?}");
        // Generous bounds for a loaded shared machine; the numbers above are the measurement.
        assert!(build.as_secs_f64() < 5.0 && tok_plain.as_secs_f64() < 5.0 && tok_special.as_secs_f64() < 5.0);
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

/// Every string of corpus.json, four ways, plus llama.cpp's detokenization, for every variant.
#[test]
fn llama_cpp_corpus() {
    let path = fixtures_dir().join("tokenizer").join("corpus.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let corpus: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let texts: Vec<&str> = corpus["texts"].as_array().expect("texts").iter().map(|t| t.as_str().expect("text")).collect();
    let mut headers: Vec<(String, Metadata)> = Vec::new();
    let mut bad = Vec::new();
    let mut total = 0;
    for v in corpus["variants"].as_array().expect("variants") {
        let file = v["model"].as_str().expect("model");
        if !headers.iter().any(|(f, _)| f == file) {
            let h = read_header_from_path(&model_path(file), &Limits::default()).expect("header");
            headers.push((file.to_owned(), h.metadata));
        }
        let mut md = headers.iter().find(|(f, _)| f == file).expect("read above").1.clone();
        let overrides = v["overrides"].as_object().expect("overrides");
        for (k, x) in overrides {
            let val = match x {
                Value::String(s) => GgufValue::String(s.clone()),
                Value::Bool(b) => GgufValue::Bool(*b),
                _ => panic!("override {k}: {x}"),
            };
            md.push(k.clone(), val);
        }
        let name = format!("{file} {}", serde_json::to_string(overrides).expect("json"));
        let tok = Tokenizer::from_metadata(&md).unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = &v["info"];
        let id = |x: Option<u32>| x.map_or(-1, i64::from);
        assert_eq!(id(tok.bos()), info["bos"].as_i64().expect("bos"), "{name} bos");
        assert_eq!(id(tok.eos()), info["eos"].as_i64().expect("eos"), "{name} eos");
        assert_eq!(id(tok.special_tokens().eot), info["eot"].as_i64().expect("eot"), "{name} eot");
        assert_eq!(i64::from(tok.add_bos()), info["add_bos"].as_i64().expect("add_bos"), "{name} add_bos");
        assert_eq!(i64::from(tok.add_eos()), info["add_eos"].as_i64().expect("add_eos"), "{name} add_eos");
        assert_eq!(tok.eog_ids(), ids(&v["eog"]), "{name} eog");
        let rows = v["results"].as_array().expect("results");
        assert_eq!(rows.len(), texts.len(), "{name}");
        for (text, row) in texts.iter().zip(rows) {
            let first = ids(&row[0]);
            for (k, (add_special, parse_special)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
                let want = if row[k].is_null() { first.clone() } else { ids(&row[k]) };
                let got = tok.tokenize(text, add_special, parse_special).unwrap_or_else(|e| panic!("{name} {text:?}: {e}"));
                total += 1;
                if got != want {
                    bad.push(format!(
                        "  {name} {text:?} add_special={add_special} parse_special={parse_special}\n    llama.cpp {want:?}\n    ours      {got:?}"
                    ));
                }
            }
            let want = match row[4].as_str() {
                None => text.to_string(),
                Some(h) => String::from_utf8_lossy(&unhex(h)).into_owned(),
            };
            let got = tok.detokenize(&first, false, false).expect("ids in the vocabulary");
            total += 1;
            if got != want {
                bad.push(format!("  {name} detokenize {text:?}\n    llama.cpp {want:?}\n    ours      {got:?}"));
            }
        }
    }
    check_all("corpus.json", bad, total);
}

/// The BPE pre-tokenizers word for word against llama.cpp's `unicode_regex_split`
/// (tests/fixtures/tokenizer/splits.txt): independent of any vocabulary, so digit grouping and
/// white-space rules are checked even where a vocabulary would hide them.
#[test]
fn llama_cpp_pre_tokenizer_splits() {
    let path = fixtures_dir().join("tokenizer").join("splits.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bad = Vec::new();
    let mut total = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split('|');
        let input = String::from_utf8(unhex(fields.next().expect("text"))).expect("UTF-8 text");
        for f in fields {
            let (pre, lens) = f.split_once('=').expect("pre=lengths");
            let want: Vec<usize> = lens.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().expect("length")).collect();
            let got: Vec<usize> = pre_tokenize(Some(pre), &input).expect("known pre-tokenizer").iter().map(|w| w.len()).collect();
            total += 1;
            if got != want {
                bad.push(format!("  {pre} {input:?}\n    llama.cpp {want:?}\n    ours      {got:?}"));
            }
        }
    }
    assert!(total >= 6 * 300, "splits.txt has only {total} cases");
    check_all("splits.txt", bad, total);
}
