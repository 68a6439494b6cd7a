//! Tests of constrained decoding: GBNF → Lark, and the matcher over a byte vocabulary (the
//! synthetic models' built-in tokenizer): what it allows, that walking it gives valid output,
//! and typed errors for bad grammars. Real vocabularies: tests/constrained.rs.

use super::gbnf::to_lark;
use super::*;

fn byte_vocab() -> (Tokenizer, Vocabulary) {
    let (md, _, _) = crate::synth::SynthSpec::from_preset("llama-3.2-1b").expect("preset").plan("t", None).expect("plan");
    let tok = Tokenizer::from_metadata(&md).expect("tokenizer");
    let vocab = Vocabulary::new(&tok).expect("vocabulary");
    (tok, vocab)
}

/// Walks the grammar greedily by a fixed preference: the allowed token of the highest score
/// (`score(id)`), until it stops or ends; returns the text.
fn walk(tok: &Tokenizer, c: &mut Constraint, score: impl Fn(u32) -> f32) -> String {
    let eos = tok.eos().expect("eos");
    let mut out = Vec::new();
    for _ in 0..200 {
        let mut logits: Vec<f32> = (0..tok.n_vocab() as u32).map(&score).collect();
        c.mask(&mut logits).expect("mask");
        let id = crate::sampler::argmax(&logits).expect("a token is allowed");
        if id == eos {
            break;
        }
        out.extend_from_slice(tok.token_to_piece(id, false).expect("piece"));
        if c.accept(id).expect("accept") {
            break;
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

#[test]
fn gbnf_becomes_lark() {
    let g = "root ::= \"yes\" | \"no\" ws-tail  # a comment\nws-tail ::= [ \\t\\n]{0,3} [^a-z\\]] .\n";
    assert_eq!(to_lark(g).unwrap(), "start: g_root\ng_root: \"yes\" | \"no\" g_ws_tail\ng_ws_tail: /[\\x{20}\\x{9}\\x{A}]/ {0,3} /[^a-z\\x{5D}]/ /(?s:.)/\n");
    // Strings keep their characters (escapes decoded, re-encoded as JSON).
    assert_eq!(to_lark("root ::= \"\\x41\\u00e9\\\"q\\\"\"").unwrap(), "start: g_root\ng_root: \"Aé\\\"q\\\"\"\n");
    for (bad, why) in [
        ("rot ::= \"a\"", "no root rule"),
        ("root ::= x", "\"x\" is used but not defined"),
        ("root ::= \"a", "unterminated string"),
        ("root ::= [z-a]", "is empty"),
        ("root ::= <[42]>", "token references"),
        ("root ::= \"\\q\"", "unknown escape"),
        ("root ::= ", "is empty"),
        ("root : \"a\"", "':' outside"),
    ] {
        let e = to_lark(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn a_schema_holds_the_output() {
    let (tok, vocab) = byte_vocab();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 3}, "n": {"type": "integer", "minimum": -5, "maximum": 999}, "tag": {"enum": ["a", "b\"c"]}},
        "required": ["name", "n", "tag"],
        "additionalProperties": false
    });
    // Two preferences: the highest and the lowest byte, so different paths are taken.
    for pref in [1.0f32, -1.0] {
        let mut c = Constraint::new(&vocab, &Grammar::JsonSchema(schema.clone())).expect("compiles");
        let text = walk(&tok, &mut c, |id| pref * id as f32);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["name"].as_str().is_some_and(|s| s.chars().count() <= 3), "{text}");
        // (-0 is a JSON integer too; serde_json reads it as a float)
        assert!(v["n"].as_f64().is_some_and(|n| n.fract() == 0.0 && (-5.0..=999.0).contains(&n)), "{text}");
        assert!(["a", "b\"c"].contains(&v["tag"].as_str().unwrap()), "{text}");
    }
}

#[test]
fn grammars_hold_the_output_and_bad_ones_are_typed_errors() {
    let (tok, vocab) = byte_vocab();
    let mut c = Constraint::new(&vocab, &Grammar::Gbnf("root ::= (\"yes\" | \"no\") \"!\"{1,2}".into())).expect("compiles");
    let text = walk(&tok, &mut c, |id| id as f32);
    assert!(["yes!", "yes!!", "no!", "no!!"].contains(&text.as_str()), "{text:?}");
    let mut c = Constraint::new(&vocab, &Grammar::Lark("start: /[0-9]{4}/".into())).expect("compiles");
    assert_eq!(walk(&tok, &mut c, |id| -(id as f32)).len(), 4);
    // Only what the grammar allows is left; the end token once it is complete.
    let mut c = Constraint::new(&vocab, &Grammar::Gbnf("root ::= \"a\"".into())).unwrap();
    let mut logits = vec![0.0f32; tok.n_vocab()];
    c.mask(&mut logits).unwrap();
    let allowed: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize] == 0.0).collect();
    let a: Vec<u32> = (0..tok.n_vocab() as u32).filter(|&i| tok.token_to_piece(i, false).unwrap() == b"a").collect();
    assert_eq!(allowed, a);
    for bad in [Grammar::Lark("start: (".into()), Grammar::Gbnf("root ::= \"a".into()), Grammar::JsonSchema(serde_json::json!({"type": "no-such-type"}))] {
        assert!(matches!(Constraint::new(&vocab, &bad), Err(ConstraintError::Grammar(_))), "{bad:?}");
    }
    // A token the mask refused is an error, not a panic.
    assert!(matches!(c.accept(a[0] + 1), Err(ConstraintError::Failed(_))));
}
