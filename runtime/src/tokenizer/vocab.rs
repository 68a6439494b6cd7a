//! The vocabulary: token texts, scores and attributes, the text → id index, the special token
//! ids and the end-of-generation set, read and validated from GGUF metadata
//! (port of llama.cpp `llama_vocab::impl::load`).

use super::attr::{self, TokenAttr};
use crate::error::TokenizerError;
use crate::gguf::{Array, Metadata, Value};

/// Which tokenizer algorithm the vocabulary belongs to (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// `"llama"`: SentencePiece, merges by score, byte fallback.
    Spm,
    /// `"gpt2"`: byte-level BPE with ranked merges and a regex pre-tokenizer.
    Bpe,
}

/// Largest vocabulary accepted: llama.cpp allows i32 ids; a lower bound keeps the index
/// arithmetic (2 slots per token) far from overflow on 32-bit wasm. Real vocabularies are < 1M.
const MAX_VOCAB: usize = 1 << 26;

/// The special token ids llama.cpp tracks (`special_*_id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// Text → id, open addressing over the token texts (no second copy of 262k strings).
#[derive(Clone, Debug)]
struct TextIndex {
    slots: Vec<u32>,
    mask: usize,
}

const EMPTY_SLOT: u32 = u32::MAX;

fn hash_bytes(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

impl TextIndex {
    /// Indexes `texts`; on a repeated text returns (first id, repeated id).
    fn build(texts: &[String]) -> Result<TextIndex, (u32, u32)> {
        let cap = (texts.len() * 2).next_power_of_two().max(16);
        let mut idx = TextIndex { slots: vec![EMPTY_SLOT; cap], mask: cap - 1 };
        for (id, t) in texts.iter().enumerate() {
            let mut i = hash_bytes(t.as_bytes()) as usize & idx.mask;
            loop {
                let s = idx.slots[i];
                if s == EMPTY_SLOT {
                    idx.slots[i] = id as u32;
                    break;
                }
                if texts[s as usize] == *t {
                    return Err((s, id as u32));
                }
                i = (i + 1) & idx.mask;
            }
        }
        Ok(idx)
    }

    fn get(&self, texts: &[String], key: &str) -> Option<u32> {
        let mut i = hash_bytes(key.as_bytes()) as usize & self.mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY_SLOT {
                return None;
            }
            if texts[s as usize] == key {
                return Some(s);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// The validated vocabulary and flags of one model.
#[derive(Clone, Debug)]
pub(crate) struct Vocab {
    pub kind: TokenizerKind,
    pub pre: Option<String>,
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<TokenAttr>,
    index: TextIndex,
    pub special: SpecialTokens,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub clean_spaces: bool,
    pub ignore_merges: bool,
    /// End-of-generation ids, ascending (`special_eog_ids`).
    pub eog: Vec<u32>,
    /// CONTROL / USER_DEFINED / UNKNOWN tokens, longest text first (`cache_special_tokens`).
    pub special_cache: Vec<u32>,
    /// Token id of each byte for SentencePiece byte fallback (`byte_to_token`).
    pub byte_fallback: [Option<u32>; 256],
}

/// The algorithm `tokenizer.ggml.model` names and, for byte-level BPE, the settings of the
/// pre-tokenizer `tokenizer.ggml.pre` names (`None` for SentencePiece): the checks that need
/// no vocabulary, so the planner can run them on a header before anything is built.
pub(crate) fn algorithm(md: &Metadata) -> Result<(TokenizerKind, Option<PreSettings>), TokenizerError> {
    let model = md.require_str("tokenizer.ggml.model")?;
    match model {
        "llama" => Ok((TokenizerKind::Spm, None)),
        "gpt2" => {
            let pre = md.get_str("tokenizer.ggml.pre")?;
            let ps = pre_settings(pre).ok_or_else(|| TokenizerError::UnknownPreTokenizer { pre: pre.unwrap_or("").to_owned() })?;
            Ok((TokenizerKind::Bpe, Some(ps)))
        }
        _ => Err(TokenizerError::UnknownModel { model: model.to_owned() }),
    }
}

/// Settings of a BPE pre-tokenizer name (the `tokenizer_pre` branch of `load`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreSettings {
    pub rules: &'static [super::pretokenize::SplitRule],
    pub clean_spaces: bool,
    pub ignore_merges: bool,
    pub add_bos: bool,
    pub no_bos: bool,
}

/// The pre-tokenizer names we support, with llama.cpp's settings for each.
pub(crate) fn pre_settings(pre: Option<&str>) -> Option<PreSettings> {
    use super::pretokenize::sets;
    let s = |rules, clean_spaces| PreSettings { rules, clean_spaces, ignore_merges: false, add_bos: false, no_bos: false };
    Some(match pre.unwrap_or("") {
        // A missing pre-tokenizer falls back to "default" (llama.cpp warns).
        "" | "default" => s(sets::DEFAULT, true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
            PreSettings { ignore_merges: true, add_bos: true, ..s(sets::LLAMA3, true) }
        }
        "dbrx" | "smaug-bpe" => s(sets::LLAMA3, true),
        "chatglm-bpe" => PreSettings { no_bos: true, ..s(sets::LLAMA3, true) },
        "glm4" | "glm5" => PreSettings { no_bos: true, ignore_merges: true, ..s(sets::LLAMA3, true) },
        "falcon" => s(sets::FALCON, true),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo"
        | "jais" | "exaone4" => s(sets::GPT2, true),
        "trillion" | "granite-docling" => s(sets::GPT2, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => s(sets::STARCODER, true),
        "command-r" | "smollm" => s(sets::STARCODER, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" | "grok-2" => s(sets::QWEN2, false),
        "stablelm2" | "megrez" => s(sets::QWEN2, true),
        _ => return None,
    })
}

/// Metadata keys of the special token ids, in llama.cpp's order (a later key for the same id
/// wins: the deprecated prefix/suffix/middle keys come last).
const SPECIAL_KEYS: [&str; 17] = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.fim_pre_token_id",
    "tokenizer.ggml.fim_suf_token_id",
    "tokenizer.ggml.fim_mid_token_id",
    "tokenizer.ggml.fim_pad_token_id",
    "tokenizer.ggml.fim_rep_token_id",
    "tokenizer.ggml.fim_sep_token_id",
    "tokenizer.ggml.prefix_token_id",
    "tokenizer.ggml.suffix_token_id",
    "tokenizer.ggml.middle_token_id",
];

fn special_slot(s: &mut SpecialTokens, key_index: usize) -> &mut Option<u32> {
    match key_index {
        0 => &mut s.bos,
        1 => &mut s.eos,
        2 => &mut s.eot,
        3 => &mut s.eom,
        4 => &mut s.unk,
        5 => &mut s.sep,
        6 => &mut s.pad,
        7 => &mut s.mask,
        8 | 14 => &mut s.fim_pre,
        9 | 15 => &mut s.fim_suf,
        10 | 16 => &mut s.fim_mid,
        11 => &mut s.fim_pad,
        12 => &mut s.fim_rep,
        _ => &mut s.fim_sep,
    }
}

/// Parses `<0xXX>` (the byte token format); `None` if `text` is anything else.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let b = text.as_bytes();
    if b.len() != 6 || &b[..3] != b"<0x" || b[5] != b'>' {
        return None;
    }
    let hex = |c: u8| (c as char).to_digit(16);
    Some((hex(b[3])? * 16 + hex(b[4])?) as u8)
}

impl Vocab {
    pub fn n_vocab(&self) -> usize {
        self.texts.len()
    }

    pub fn text_to_token(&self, text: &str) -> Option<u32> {
        self.index.get(&self.texts, text)
    }

    pub fn attr(&self, id: u32) -> TokenAttr {
        self.attrs.get(id as usize).copied().unwrap_or(TokenAttr(attr::UNDEFINED))
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Reads and validates the vocabulary (llama.cpp `llama_vocab::impl::load`).
    pub fn from_metadata(md: &Metadata) -> Result<Vocab, TokenizerError> {
        let (kind, pre_set) = algorithm(md)?;
        let pre = md.get_str("tokenizer.ggml.pre")?;

        // Defaults per model type, then per pre-tokenizer.
        let mut special = SpecialTokens::default();
        let (mut add_bos, mut add_space_prefix, clean_spaces, ignore_merges);
        match pre_set {
            None => {
                special.bos = Some(1);
                special.eos = Some(2);
                special.unk = Some(0);
                add_bos = true;
                add_space_prefix = true;
                clean_spaces = false;
                ignore_merges = false;
            }
            Some(ps) => {
                special.bos = if ps.no_bos { None } else { Some(11) };
                special.eos = Some(11);
                add_bos = ps.add_bos;
                add_space_prefix = false;
                clean_spaces = ps.clean_spaces;
                ignore_merges = ps.ignore_merges;
            }
        }
        let mut add_eos = false;
        if let Some(v) = md.get_bool("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }

        // Tokens, scores, types.
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?.ok_or_else(|| crate::error::GgufError::MissingKey { key: "tokenizer.ggml.tokens".into() })?;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocabulary);
        }
        if n > MAX_VOCAB {
            return Err(TokenizerError::VocabularyTooLarge { n_vocab: n, limit: MAX_VOCAB });
        }
        let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(Value::Array(Array::F32(v))) => check_len("tokenizer.ggml.scores", v.len(), n).map(|_| v.clone())?,
            Some(Value::Array(Array::I32(v))) => check_len("tokenizer.ggml.scores", v.len(), n).map(|_| v.iter().map(|&x| x as f32).collect())?,
            Some(v) => {
                return Err(crate::error::GgufError::WrongType { key: "tokenizer.ggml.scores".into(), expected: "array[f32]", found: v.type_name() }.into())
            }
        };
        let types = md.get_i32_array("tokenizer.ggml.token_type")?;
        if let Some(t) = types {
            check_len("tokenizer.ggml.token_type", t.len(), n)?;
        }

        let mut texts = Vec::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // llama.cpp renames empty tokens so that every text is unique and non-empty.
            texts.push(if t.is_empty() { format!("[EMPTY_{i}]") } else { t.clone() });
            attrs.push(TokenAttr(types.map_or(attr::NORMAL, |ty| attr::from_token_type(ty[i]))));
        }
        let index = TextIndex::build(&texts).map_err(|(first, again)| TokenizerError::DuplicateToken { first, again, text: texts[again as usize].clone() })?;
        for (i, a) in attrs.iter().enumerate() {
            if a.has(attr::BYTE) && parse_byte_token(&texts[i]).is_none() {
                return Err(TokenizerError::MalformedByteToken { id: i as u32, text: texts[i].clone() });
            }
        }

        // Special ids: defaults outside the vocabulary are dropped, explicit ones must fit.
        for i in 0..SPECIAL_KEYS.len() {
            let slot = special_slot(&mut special, i);
            if slot.is_some_and(|id| id as usize >= n) {
                *slot = None;
            }
        }
        for (i, key) in SPECIAL_KEYS.iter().enumerate() {
            if let Some(id) = md.get_u32(key)? {
                if id as usize >= n {
                    return Err(TokenizerError::SpecialTokenOutOfRange { key, id, n_vocab: n });
                }
                *special_slot(&mut special, i) = Some(id);
            }
        }
        if let Some(v) = md.get_bool("tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        if let Some(v) = md.get_bool("tokenizer.ggml.add_eos_token")? {
            add_eos = v;
        }
        if add_bos && special.bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { flag: "add_bos", which: "BOS" });
        }
        if add_eos && special.eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { flag: "add_eos", which: "EOS" });
        }

        let mut v = Vocab {
            kind,
            pre: pre.map(str::to_owned),
            texts,
            scores,
            attrs,
            index,
            special,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            ignore_merges,
            eog: Vec::new(),
            special_cache: Vec::new(),
            byte_fallback: [None; 256],
        };
        v.detect_special_by_text();
        v.build_eog();
        v.build_special_cache();
        v.byte_fallback = std::array::from_fn(|b| v.byte_to_token(b as u8));
        let name = md.get_str("general.name")?.unwrap_or("").to_ascii_lowercase();
        v.set_model_attrs(&name);
        Ok(v)
    }

    /// Finds EOT / EOM / FIM tokens by their text when the metadata does not name them, and
    /// marks such tokens CONTROL (the "auto-detect special tokens by text" block). llama.cpp
    /// walks a hash map; we walk ids in order, so the lowest matching id wins.
    fn detect_special_by_text(&mut self) {
        const EOT: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "<｜end▁of▁sentence｜>",
            "<end_of_utterance>",
        ];
        const EOM: &[&str] = &["<|eom_id|>"];
        const FIM_PRE: &[&str] = &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"];
        const FIM_SUF: &[&str] = &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"];
        const FIM_MID: &[&str] = &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"];
        const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
        const FIM_REP: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
        const FIM_SEP: &[&str] = &["<|file_sep|>"];

        let n = self.texts.len();
        for id in 0..n {
            let text = self.texts[id].as_str();
            let s = &mut self.special;
            let mut hit = false;
            for (slot, names) in [
                (&mut s.eot, EOT),
                (&mut s.eom, EOM),
                (&mut s.fim_pre, FIM_PRE),
                (&mut s.fim_suf, FIM_SUF),
                (&mut s.fim_mid, FIM_MID),
                (&mut s.fim_pad, FIM_PAD),
                (&mut s.fim_rep, FIM_REP),
                (&mut s.fim_sep, FIM_SEP),
            ] {
                if slot.is_none() && names.contains(&text) {
                    *slot = Some(id as u32);
                    hit = true;
                }
            }
            if hit {
                self.attrs[id].0 |= attr::CONTROL;
            }
        }

        // Control tokens with "unused" in their text are unused.
        for id in 0..n {
            if self.attrs[id].has(attr::CONTROL) && self.texts[id].contains("unused") {
                self.attrs[id].0 |= attr::UNUSED;
            }
        }
    }

    /// The end-of-generation set (`special_eog_ids`), with llama.cpp's corrections.
    fn build_eog(&mut self) {
        const EOG: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<|return|>",
            "<|call|>",
            "<|flush|>",
            "<|calls|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "</s>",
            "<|eom_id|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "[EOS]",
            "<|end_of_text|>",
            "<end_of_utterance>",
            "<eos>",
            "<turn|>",
            "<|tool_response>",
            "<｜end▁of▁sentence｜>",
            "[e~[",
        ];
        let s = &self.special;
        let mut eog: Vec<u32> = [s.fim_pad, s.fim_rep, s.fim_sep].into_iter().flatten().collect();
        for (id, text) in self.texts.iter().enumerate() {
            if EOG.contains(&text.as_str()) {
                eog.push(id as u32);
                self.attrs[id].0 |= attr::CONTROL;
            }
        }
        // gpt-oss: these always render.
        for (id, text) in self.texts.iter().enumerate() {
            if matches!(text.as_str(), "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
                self.attrs[id] = TokenAttr(attr::USER_DEFINED);
            }
        }
        eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let has = |eog: &[u32], t: &str| eog.iter().find(|&&id| self.texts[id as usize] == t).copied();
        // o200k_harmony / solar-open: "<|end|>" is not end of generation there.
        let (ret, call, flush, end) = (
            has(&eog, "<|return|>").is_some(),
            has(&eog, "<|call|>").or(has(&eog, "<|calls|>")).is_some(),
            has(&eog, "<|flush|>").is_some(),
            has(&eog, "<|end|>"),
        );
        if let Some(end_id) = end {
            if call && (ret || flush) {
                eog.retain(|&id| id != end_id);
                self.attrs[end_id as usize] = TokenAttr(attr::USER_DEFINED);
            }
        }
        // gemma4 / plamo: "</s>" is a normal token there.
        let marker = has(&eog, "<|tool_response>").is_some() || has(&eog, "<|plamo:eos|>").is_some();
        if let (true, Some(s_id)) = (marker, has(&eog, "</s>")) {
            eog.retain(|&id| id != s_id);
            self.attrs[s_id as usize] = TokenAttr(attr::NORMAL);
        }
        self.eog = eog;
    }

    /// Tokens the special-token partition looks for, longest first (llama.cpp sorts by length
    /// with an unstable sort; ties are ordered by id here).
    fn build_special_cache(&mut self) {
        let mut cache: Vec<u32> =
            (0..self.texts.len() as u32).filter(|&id| self.attrs[id as usize].has(attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN)).collect();
        cache.sort_by_key(|&id| std::cmp::Reverse(self.texts[id as usize].len()));
        self.special_cache = cache;
    }

    /// Per-model attributes llama.cpp sets by name: Phi-3 strips white space to the right of
    /// its special tokens.
    fn set_model_attrs(&mut self, name_lower: &str) {
        if name_lower.contains("phi-3") || name_lower.contains("phi3") {
            for &id in &self.special_cache {
                self.attrs[id as usize].0 |= attr::RSTRIP;
            }
            if let Some(id) = self.text_to_token("</s>") {
                self.attrs[id as usize].0 |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = self.text_to_token(t) {
                    self.attrs[id as usize].0 &= !attr::RSTRIP;
                }
            }
        }
    }

    /// The token of one byte for SentencePiece byte fallback (`llama_vocab::byte_to_token`):
    /// `<0xXX>`, else the byte itself as a one-character token.
    fn byte_to_token(&self, b: u8) -> Option<u32> {
        self.text_to_token(&format!("<0x{b:02X}>")).or_else(|| if b.is_ascii() { self.text_to_token(&char::from(b).to_string()) } else { None })
    }
}

fn check_len(key: &'static str, len: usize, n_vocab: usize) -> Result<(), TokenizerError> {
    if len == n_vocab {
        Ok(())
    } else {
        Err(TokenizerError::ArrayLengthMismatch { key, len, n_vocab })
    }
}
