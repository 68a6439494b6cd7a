//! Unit tests on hand-built metadata: every validation rule, and the algorithms on tiny
//! vocabularies where the expected ids can be worked out by hand.

use super::*;
use crate::error::GgufError;
use crate::gguf::{Array, Value};

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

fn md(entries: Vec<(&str, Value)>) -> Metadata {
    let mut m = Metadata::with_capacity(entries.len());
    for (k, v) in entries {
        m.push(k.to_owned(), v);
    }
    m
}

/// A SentencePiece vocabulary: <unk> <s> </s>, pieces with scores, byte tokens for 'x' and
/// the bytes of "é", a user-defined "\n" and a control "<ctl>".
fn spm_entries() -> Vec<(&'static str, Value)> {
    let tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "c", "<0x78>", "<0xC3>", "<0xA9>", "\n", "<ctl>", "abc"];
    let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -3.0, -1.5, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -10.0];
    let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, 6, 4, 3, 1];
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(scores.to_vec()))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types.to_vec()))),
    ]
}

fn spm() -> Tokenizer {
    Tokenizer::from_metadata(&md(spm_entries())).expect("valid SPM metadata")
}

/// A byte-level BPE vocabulary over "a", "b", "c", "Ġ" (space) with merges a+b, Ġ+ab, ab+c.
fn bpe_entries() -> Vec<(&'static str, Value)> {
    let tokens = ["<|endoftext|>", "a", "b", "c", "Ġ", "ab", "Ġab", "abc", "<|im_end|>", "<tag>", "!", "'", "s", "'s", "Ġ!"];
    let types = [3, 1, 1, 1, 1, 1, 1, 1, 3, 4, 1, 1, 1, 1, 1];
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types.to_vec()))),
        ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab", "ab c", "' s", "Ġ !"])),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
    ]
}

fn bpe() -> Tokenizer {
    Tokenizer::from_metadata(&md(bpe_entries())).expect("valid BPE metadata")
}

fn with(mut e: Vec<(&'static str, Value)>, key: &'static str, v: Value) -> Metadata {
    e.retain(|(k, _)| *k != key);
    e.push((key, v));
    md(e)
}

fn without(mut e: Vec<(&'static str, Value)>, key: &str) -> Metadata {
    e.retain(|(k, _)| *k != key);
    md(e)
}

fn err(m: &Metadata) -> TokenizerError {
    Tokenizer::from_metadata(m).expect_err("metadata must be rejected")
}

// --- validation rules ---

#[test]
fn unknown_model() {
    let e = err(&with(spm_entries(), "tokenizer.ggml.model", Value::String("bert".into())));
    assert_eq!(e, TokenizerError::UnknownModel { model: "bert".into() });
}

#[test]
fn missing_model_and_tokens() {
    let e = err(&without(spm_entries(), "tokenizer.ggml.model"));
    assert_eq!(e, TokenizerError::Metadata(GgufError::MissingKey { key: "tokenizer.ggml.model".into() }));
    let e = err(&without(spm_entries(), "tokenizer.ggml.tokens"));
    assert_eq!(e, TokenizerError::Metadata(GgufError::MissingKey { key: "tokenizer.ggml.tokens".into() }));
}

#[test]
fn wrong_value_types() {
    let e = err(&with(spm_entries(), "tokenizer.ggml.tokens", Value::Array(Array::I32(vec![1, 2]))));
    assert!(matches!(e, TokenizerError::Metadata(GgufError::WrongType { .. })), "{e:?}");
    let e = err(&with(spm_entries(), "tokenizer.ggml.scores", Value::Array(Array::U8(vec![0; 15]))));
    assert!(matches!(e, TokenizerError::Metadata(GgufError::WrongType { .. })), "{e:?}");
    let e = err(&with(spm_entries(), "tokenizer.ggml.add_bos_token", Value::U8(1)));
    assert!(matches!(e, TokenizerError::Metadata(GgufError::WrongType { .. })), "{e:?}");
    let e = err(&with(spm_entries(), "tokenizer.ggml.bos_token_id", Value::I32(-1)));
    assert!(matches!(e, TokenizerError::Metadata(GgufError::OutOfRange { .. })), "{e:?}");
}

#[test]
fn integer_scores_are_accepted() {
    let t = Tokenizer::from_metadata(&with(spm_entries(), "tokenizer.ggml.scores", Value::Array(Array::I32(vec![0; 15]))))
        .expect("i32 scores, as llama.cpp accepts");
    assert_eq!(t.token_score(4), Some(0.0));
}

#[test]
fn unknown_pre_tokenizer() {
    let e = err(&with(bpe_entries(), "tokenizer.ggml.pre", Value::String("no-such-pre".into())));
    assert_eq!(e, TokenizerError::UnknownPreTokenizer { pre: "no-such-pre".into() });
}

#[test]
fn empty_vocabulary() {
    let e = err(&md(vec![("tokenizer.ggml.model", Value::String("llama".into())), ("tokenizer.ggml.tokens", strings(&[]))]));
    assert_eq!(e, TokenizerError::EmptyVocabulary);
}

#[test]
fn array_lengths_must_match_the_vocabulary() {
    let e = err(&with(spm_entries(), "tokenizer.ggml.scores", Value::Array(Array::F32(vec![0.0; 14]))));
    assert_eq!(e, TokenizerError::ArrayLengthMismatch { key: "tokenizer.ggml.scores", len: 14, n_vocab: 15 });
    let e = err(&with(spm_entries(), "tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 16]))));
    assert_eq!(e, TokenizerError::ArrayLengthMismatch { key: "tokenizer.ggml.token_type", len: 16, n_vocab: 15 });
}

#[test]
fn duplicate_tokens() {
    let mut e = spm_entries();
    e.retain(|(k, _)| *k == "tokenizer.ggml.model");
    e.push(("tokenizer.ggml.tokens", strings(&["<unk>", "a", "b", "a"])));
    assert_eq!(err(&md(e)), TokenizerError::DuplicateToken { first: 1, again: 3, text: "a".into() });
}

#[test]
fn special_ids_outside_the_vocabulary() {
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.seperator_token_id",
    ] {
        let e = err(&with(spm_entries(), key, Value::U32(15)));
        assert_eq!(e, TokenizerError::SpecialTokenOutOfRange { key, id: 15, n_vocab: 15 }, "{key}");
    }
    // u64 ids too large for u32 are a metadata range error.
    let e = err(&with(spm_entries(), "tokenizer.ggml.eos_token_id", Value::U64(1 << 40)));
    assert!(matches!(e, TokenizerError::Metadata(GgufError::OutOfRange { .. })), "{e:?}");
}

#[test]
fn add_bos_needs_a_bos_token() {
    // BPE's default BOS (11) is outside this 3-token vocabulary, so it is dropped.
    let m = md(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ]);
    assert_eq!(err(&m), TokenizerError::MissingSpecialToken { flag: "add_bos", which: "BOS" });
    let m = md(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
    ]);
    assert_eq!(err(&m), TokenizerError::MissingSpecialToken { flag: "add_eos", which: "EOS" });
}

#[test]
fn malformed_byte_tokens() {
    for bad in ["<0xZZ>", "<0x4>", "<0x041>", "0x41", "<0X41>"] {
        let mut e = spm_entries();
        let Some((_, Value::Array(Array::String(t)))) = e.iter_mut().find(|(k, _)| *k == "tokenizer.ggml.tokens") else { panic!("tokens") };
        t[9] = bad.to_string();
        assert_eq!(err(&md(e)), TokenizerError::MalformedByteToken { id: 9, text: bad.into() }, "{bad}");
    }
}

#[test]
fn merges_rules() {
    assert_eq!(err(&without(bpe_entries(), "tokenizer.ggml.merges")), TokenizerError::MissingMerges);
    let e = err(&with(bpe_entries(), "tokenizer.ggml.merges", strings(&["a b", "ab"])));
    assert_eq!(e, TokenizerError::MalformedMerge { index: 1, merge: "ab".into() });
    // The separator is searched from the second byte on: " a" has none.
    let e = err(&with(bpe_entries(), "tokenizer.ggml.merges", strings(&[" a"])));
    assert_eq!(e, TokenizerError::MalformedMerge { index: 0, merge: " a".into() });
    let e = err(&with(bpe_entries(), "tokenizer.ggml.merges", strings(&["a b", "ab z"])));
    assert_eq!(e, TokenizerError::MergeUnknownToken { index: 1, merge: "ab z".into(), part: "z".into() });
}

#[test]
fn spm_without_byte_tokens_reports_the_byte() {
    let m = md(vec![("tokenizer.ggml.model", Value::String("llama".into())), ("tokenizer.ggml.tokens", strings(&["<unk>", "<s>", "</s>", "▁", "a"]))]);
    let t = Tokenizer::from_metadata(&m).expect("valid");
    assert_eq!(t.tokenize("a", false, false), Ok(vec![3, 4]));
    assert_eq!(t.tokenize("é", false, false), Err(TokenizerError::NoByteToken { byte: 0xC3 }));
}

#[test]
fn ids_outside_the_vocabulary() {
    let t = spm();
    assert_eq!(t.token_to_piece(15, false), Err(TokenizerError::TokenOutOfRange { id: 15, n_vocab: 15 }));
    assert_eq!(t.decode(&[4, 99]), Err(TokenizerError::TokenOutOfRange { id: 99, n_vocab: 15 }));
    let mut d = t.detokenizer();
    assert_eq!(d.push(&t, u32::MAX), Err(TokenizerError::TokenOutOfRange { id: u32::MAX, n_vocab: 15 }));
}

// --- SentencePiece ---

#[test]
fn spm_merges_by_score_with_space_prefix_and_byte_fallback() {
    let t = spm();
    assert!(t.add_bos() && t.add_space_prefix());
    assert_eq!(t.bos(), Some(1));
    // " ab" → "▁ab" (score -1.5 beats "ab" -3); "c" stays (abc scores lower than merging ▁ab first).
    assert_eq!(t.tokenize("ab", true, false), Ok(vec![1, 7]));
    assert_eq!(t.tokenize("abc", false, false), Ok(vec![7, 8]));
    // 'x' and 'é' are not pieces: bytes.
    assert_eq!(t.tokenize("xé", false, false), Ok(vec![3, 9, 10, 11]));
    // A user-defined token splits the text even without special parsing, and text after any
    // token fragment gets the space prefix again.
    assert_eq!(t.tokenize("ab\nab", false, false), Ok(vec![7, 12, 7]));
    assert_eq!(t.tokenize("a<ctl>b", false, true), Ok(vec![3, 4, 13, 3, 5]));
    // Unparsed, the control token is plain text ('<' has no piece and no byte token here).
    assert_eq!(t.tokenize("a<ctl>b", false, false), Err(TokenizerError::NoByteToken { byte: b'<' }));
    assert_eq!(t.tokenize("", true, false), Ok(vec![1]));
    assert_eq!(t.tokenize("", false, false), Ok(vec![]));
}

#[test]
fn spm_add_space_prefix_from_metadata() {
    let t = Tokenizer::from_metadata(&with(spm_entries(), "tokenizer.ggml.add_space_prefix", Value::Bool(false))).expect("valid");
    assert_eq!(t.tokenize("ab", false, false), Ok(vec![6]));
    assert_eq!(t.tokenize(" ab", false, false), Ok(vec![7]));
}

#[test]
fn spm_pieces() {
    let t = spm();
    assert_eq!(t.token_to_piece(7, false), Ok(&b" ab"[..]));
    assert_eq!(t.token_to_piece(10, false), Ok(&[0xC3u8][..]));
    assert_eq!(t.token_to_piece(12, false), Ok(&b"\n"[..]));
    assert_eq!(t.token_to_piece(13, false), Ok(&b""[..]));
    assert_eq!(t.token_to_piece(13, true), Ok(&b"<ctl>"[..]));
    assert_eq!(t.token_to_piece(0, false), Ok(&b""[..]));
    assert_eq!(t.decode(&[1, 7, 10, 11]), Ok(" abé".into()));
    // llama_detokenize drops the prefix space of the first piece and, with remove_special,
    // the BOS the model adds.
    assert_eq!(t.detokenize(&[7, 7], false, false), Ok("ab ab".into()));
    assert_eq!(t.detokenize(&[1, 7], true, false), Ok(" ab".into()));
    assert_eq!(t.detokenize(&[1, 7], false, true), Ok("<s> ab".into()));
}

#[test]
fn spm_end_of_generation() {
    let t = spm();
    assert!(t.is_eog(2));
    assert!(!t.is_eog(1) && !t.is_eog(13));
    assert_eq!(t.eog_ids(), [2]);
}

// --- BPE ---

#[test]
fn bpe_merges_by_rank() {
    let t = bpe();
    assert_eq!(t.kind(), TokenizerKind::Bpe);
    assert!(!t.add_bos());
    // "ab" → ab; " abc" → Ġ a b c → Ġ ab c → (rank 1: Ġ+ab) Ġab c.
    assert_eq!(t.tokenize("ab abc", false, false), Ok(vec![5, 6, 3]));
    assert_eq!(t.tokenize("abc", false, false), Ok(vec![7]));
    assert_eq!(t.tokenize("a's", false, false), Ok(vec![1, 13]));
    // Characters that are not tokens are dropped, as llama.cpp does (only ASCII bytes can be
    // looked up one by one).
    assert_eq!(t.tokenize("aé", false, false), Ok(vec![1]));
}

#[test]
fn bpe_special_tokens() {
    let t = bpe();
    assert_eq!(t.tokenize("a<|im_end|>b", false, true), Ok(vec![1, 8, 2]));
    let plain = t.tokenize("a<|im_end|>b", false, false).expect("tokenize");
    assert!(!plain.contains(&8));
    // User-defined: always.
    assert_eq!(t.tokenize("a<tag>b", false, false), Ok(vec![1, 9, 2]));
    assert_eq!(t.token_to_piece(9, false), Ok(&b"<tag>"[..]));
    assert_eq!(t.token_to_piece(6, false), Ok(&b" ab"[..]));
    assert_eq!(t.decode(&[1, 8, 2]), Ok("ab".into()));
    assert_eq!(t.detokenize(&[1, 8, 2], false, true), Ok("a<|im_end|>b".into()));
}

#[test]
fn bpe_end_of_generation_by_text() {
    let t = bpe();
    // <|endoftext|> (also EOS) and <|im_end|>; EOT is found by text, the lowest id first.
    assert_eq!(t.eog_ids(), [0, 8]);
    assert_eq!(t.special_tokens().eot, Some(0));
}

#[test]
fn bpe_clean_spaces_on_detokenize() {
    // gpt-2 cleans up tokenization spaces; " !" loses its space in detokenize, not in decode.
    let t = bpe();
    assert_eq!(t.decode(&[1, 14]), Ok("a !".into()));
    assert_eq!(t.detokenize(&[1, 14], false, false), Ok("a!".into()));
}

#[test]
fn clean_spaces_passes() {
    let run = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        detokenize::clean_spaces(&mut b);
        String::from_utf8(b).expect("ASCII")
    };
    assert_eq!(run("Hi , there . ok ?"), "Hi, there. ok?");
    assert_eq!(run("it ' s"), "it's");
    assert_eq!(run("he 's here , they 're ok , I 'll go"), "he's here, they're ok, I 'll go");
    assert_eq!(run(""), "");
    assert_eq!(run(" ."), ".");
}

#[test]
fn streaming_detokenizer_holds_incomplete_characters() {
    let mut d = Detokenizer::new(false);
    let e = "é€🤖".as_bytes();
    let mut out = String::new();
    for b in e {
        let c = d.push_bytes(&[*b]);
        assert!(!c.contains('\u{FFFD}'));
        out += &c;
    }
    assert_eq!(out, "é€🤖");
    // An invalid byte comes out as U+FFFD at once; a truncated character at the end on finish.
    assert_eq!(d.push_bytes(&[b'a', 0xFF, b'b', 0xE2, 0x82]), "a\u{FFFD}b");
    assert_eq!(d.pending(), [0xE2, 0x82]);
    assert_eq!(d.push_bytes(b"c"), "\u{FFFD}c");
    assert_eq!(d.push_bytes(&[0xF0, 0x9F]), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(d.finish(), "");
}
