//! Pre-tokenization of byte-level BPE: the text is cut into words by a sequence of regex
//! rules chosen by `tokenizer.ggml.pre`, each rule refining the pieces left by the previous one
//! (llama.cpp `unicode_regex_split`). The rules llama.cpp implements by hand
//! (`unicode_regex_split_custom_gpt2` / `_llama3` / `_qwen2`) are ported as state machines; the
//! simple character-class rules it runs through std::regex on a "collapsed" text
//! (`\p{N}`, `\p{N}+`, `[0-9][0-9][0-9]`, `[\p{P}\$\+<=>\^~\|]+`) are matched directly.

use super::unicode::{self, Flags, LETTER, NUMBER, PUNCTUATION, WHITESPACE};

/// One pre-tokenizer regex of llama.cpp's `llm_tokenizer_bpe` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SplitRule {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// As Llama3 with `\p{N}` (single digits) instead of `\p{N}{1,3}`.
    Qwen2,
    /// Runs of `class`, `min..=max` code points long, matched leftmost and greedy.
    Class { class: CharClass, min: usize, max: usize },
}

/// Character classes of the regexes llama.cpp runs on its collapsed text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CharClass {
    /// `\p{N}`
    Number,
    /// `[0-9]`
    AsciiDigit,
    /// `[\p{P}\$\+<=>\^~\|]`
    PunctOrOperator,
    /// `[\p{P}\$\+<=>\^~\|`]` (falcon's variant, with the backtick)
    PunctOrOperatorOrBacktick,
}

impl CharClass {
    fn contains(self, c: char, f: Flags) -> bool {
        match self {
            CharClass::Number => f & NUMBER != 0,
            CharClass::AsciiDigit => c.is_ascii_digit(),
            // In the collapsed text a non-ASCII white-space code point becomes \x0B, so it never
            // matches; P and white space are disjoint anyway.
            CharClass::PunctOrOperator => f & PUNCTUATION != 0 || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|'),
            CharClass::PunctOrOperatorOrBacktick => CharClass::PunctOrOperator.contains(c, f) || c == '`',
        }
    }
}

/// The regex sets of the pre-tokenizers we support (`llm_tokenizer_bpe` constructor).
pub(crate) mod sets {
    use super::{CharClass, SplitRule};
    const INF: usize = usize::MAX;

    pub const DEFAULT: &[SplitRule] = &[
        SplitRule::Class { class: CharClass::PunctOrOperator, min: 1, max: INF },
        SplitRule::Gpt2,
        SplitRule::Class { class: CharClass::Number, min: 1, max: INF },
        SplitRule::Class { class: CharClass::AsciiDigit, min: 3, max: 3 },
    ];
    pub const GPT2: &[SplitRule] = &[SplitRule::Gpt2];
    pub const LLAMA3: &[SplitRule] = &[SplitRule::Llama3];
    pub const QWEN2: &[SplitRule] = &[SplitRule::Qwen2];
    /// starcoder, refact, command-r, smollm, codeshell, exaone, minerva, mellum2.
    pub const STARCODER: &[SplitRule] = &[SplitRule::Class { class: CharClass::Number, min: 1, max: 1 }, SplitRule::Gpt2];
    pub const FALCON: &[SplitRule] = &[
        SplitRule::Class { class: CharClass::PunctOrOperatorOrBacktick, min: 1, max: INF },
        SplitRule::Gpt2,
        SplitRule::Class { class: CharClass::AsciiDigit, min: 3, max: 3 },
    ];
}

/// Splits `text` into words by applying `rules` in order (`unicode_regex_split` without the
/// byte encoding, which the BPE step does). Every rule splits each current piece on its own.
pub(crate) fn split<'t>(text: &'t str, rules: &[SplitRule]) -> Vec<&'t str> {
    let cpts: Vec<char> = text.chars().collect();
    let flags: Vec<Flags> = cpts.iter().map(|&c| unicode::flags(c)).collect();
    // Piece lengths in code points, as llama.cpp's `bpe_offsets`.
    let mut offsets = vec![cpts.len()];
    for rule in rules {
        let mut out = Vec::with_capacity(offsets.len() * 2);
        let mut start = 0;
        for &len in &offsets {
            let piece = Piece { cpts: &cpts[start..start + len], flags: &flags[start..start + len] };
            match *rule {
                SplitRule::Gpt2 => piece.split_gpt2(&mut out),
                SplitRule::Llama3 => piece.split_llama3(&mut out, 3),
                SplitRule::Qwen2 => piece.split_llama3(&mut out, 1),
                SplitRule::Class { class, min, max } => piece.split_class(&mut out, class, min, max),
            }
            start += len;
        }
        offsets = out;
    }
    // Code-point lengths back to byte slices of `text`.
    let mut words = Vec::with_capacity(offsets.len());
    let mut byte = 0;
    let mut cp = 0;
    for len in offsets {
        let end = byte + cpts[cp..cp + len].iter().map(|c| c.len_utf8()).sum::<usize>();
        words.push(&text[byte..end]);
        byte = end;
        cp += len;
    }
    words
}

/// One piece of the text being split: its code points and their flags.
struct Piece<'a> {
    cpts: &'a [char],
    flags: &'a [Flags],
}

/// Sentinel code point for positions outside the piece (llama.cpp's OUT_OF_RANGE).
const OUT: u32 = u32::MAX;

impl Piece<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        self.cpts.get(pos).map_or(OUT, |&c| c as u32)
    }

    /// Flags at `pos`, 0 outside the piece.
    fn fl(&self, pos: usize) -> Flags {
        self.flags.get(pos).copied().unwrap_or(0)
    }

    /// Emits `[prev, end)` when non-empty (llama.cpp `_add_token`); returns its length.
    fn add(out: &mut Vec<usize>, prev: &mut usize, end: usize) -> usize {
        let len = end - *prev;
        if len > 0 {
            out.push(len);
        }
        *prev = end;
        len
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (case-sensitive for gpt2, ASCII-case-insensitive for
    /// llama3/qwen2 — llama.cpp's `unicode_tolower` maps no other code point to these letters).
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        let end = self.cpts.len();
        if self.cpt(pos) != u32::from(b'\'') || pos + 1 >= end {
            return None;
        }
        let low = |c: u32| if fold && (u32::from(b'A')..=u32::from(b'Z')).contains(&c) { c + 32 } else { c };
        let n1 = low(self.cpt(pos + 1));
        if [b's', b't', b'm', b'd'].iter().any(|&b| n1 == u32::from(b)) {
            return Some(2);
        }
        if pos + 2 < end {
            let n2 = low(self.cpt(pos + 2));
            let pair = |a: u8, b: u8| n1 == u32::from(a) && n2 == u32::from(b);
            if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
                return Some(3);
            }
        }
        None
    }

    /// Port of `unicode_regex_split_custom_gpt2`.
    fn split_gpt2(&self, out: &mut Vec<usize>) {
        let end = self.cpts.len();
        let mut prev = 0;
        let mut pos = 0;
        let is_space = |c: u32| c == u32::from(b' ');
        while pos < end {
            let cpt = self.cpt(pos);
            let flags = self.fl(pos);

            if let Some(n) = self.contraction(pos, false) {
                pos += Self::add(out, &mut prev, pos + n);
                continue;
            }

            let mut f2 = if is_space(cpt) { self.fl(pos + 1) } else { flags };
            // <space>?\p{L}+
            if f2 & LETTER != 0 {
                pos += usize::from(is_space(cpt));
                while f2 & LETTER != 0 {
                    pos += 1;
                    f2 = self.fl(pos);
                }
                Self::add(out, &mut prev, pos);
                continue;
            }
            // <space>?\p{N}+
            if f2 & NUMBER != 0 {
                pos += usize::from(is_space(cpt));
                while f2 & NUMBER != 0 {
                    pos += 1;
                    f2 = self.fl(pos);
                }
                Self::add(out, &mut prev, pos);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+
            if f2 & (WHITESPACE | LETTER | NUMBER) == 0 && f2 != 0 {
                pos += usize::from(is_space(cpt));
                while f2 & (WHITESPACE | LETTER | NUMBER) == 0 && f2 != 0 {
                    pos += 1;
                    f2 = self.fl(pos);
                }
                Self::add(out, &mut prev, pos);
                continue;
            }

            let mut n_ws = 0;
            while self.fl(pos + n_ws) & WHITESPACE != 0 {
                n_ws += 1;
            }
            // \s+(?!\S)
            if n_ws > 1 && self.cpt(pos + n_ws) != OUT {
                pos += n_ws - 1;
                Self::add(out, &mut prev, pos);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                Self::add(out, &mut prev, pos);
                continue;
            }
            // no match
            pos += 1;
            Self::add(out, &mut prev, pos);
        }
    }

    /// Port of `unicode_regex_split_custom_llama3` (`max_digits` 3) and
    /// `unicode_regex_split_custom_qwen2` (`max_digits` 1).
    fn split_llama3(&self, out: &mut Vec<usize>, max_digits: usize) {
        let end = self.cpts.len();
        let mut prev = 0;
        let mut pos = 0;
        let is_crlf = |c: u32| c == u32::from(b'\r') || c == u32::from(b'\n');
        while pos < end {
            let cpt = self.cpt(pos);
            let flags = self.fl(pos);

            if let Some(n) = self.contraction(pos, true) {
                pos += Self::add(out, &mut prev, pos + n);
                continue;
            }

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(is_crlf(cpt) || flags & NUMBER != 0) && (flags & LETTER != 0 || self.fl(pos + 1) & LETTER != 0) {
                pos += 1;
                while self.fl(pos) & LETTER != 0 {
                    pos += 1;
                }
                Self::add(out, &mut prev, pos);
                continue;
            }

            // \p{N}{1,max_digits}
            if flags & NUMBER != 0 {
                let mut ini = pos;
                while self.fl(pos) & NUMBER != 0 {
                    pos += 1;
                    if pos - ini >= max_digits {
                        Self::add(out, &mut prev, pos);
                        ini = pos;
                    }
                }
                Self::add(out, &mut prev, pos);
                continue;
            }

            // <space>?[^\s\p{L}\p{N}]+[\r\n]*  (llama.cpp tests the first code point's flags for
            // "inside the piece", not those after the optional space)
            let mut f2 = if cpt == u32::from(b' ') { self.fl(pos + 1) } else { flags };
            if f2 & (WHITESPACE | LETTER | NUMBER) == 0 && flags != 0 {
                pos += usize::from(cpt == u32::from(b' '));
                while f2 & (WHITESPACE | LETTER | NUMBER) == 0 && f2 != 0 {
                    pos += 1;
                    f2 = self.fl(pos);
                }
                while is_crlf(self.cpt(pos)) {
                    pos += 1;
                }
                Self::add(out, &mut prev, pos);
                continue;
            }

            let mut n_ws = 0;
            let mut last_crlf_end = 0;
            while self.fl(pos + n_ws) & WHITESPACE != 0 {
                if is_crlf(self.cpt(pos + n_ws)) {
                    last_crlf_end = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            // \s*[\r\n]+
            if last_crlf_end > 0 {
                pos = last_crlf_end;
                Self::add(out, &mut prev, pos);
                continue;
            }
            // \s+(?!\S)
            if n_ws > 1 && self.cpt(pos + n_ws) != OUT {
                pos += n_ws - 1;
                Self::add(out, &mut prev, pos);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                Self::add(out, &mut prev, pos);
                continue;
            }
            // no match
            pos += 1;
            Self::add(out, &mut prev, pos);
        }
    }

    /// A `class{min,max}` regex run through llama.cpp's `unicode_regex_split_stl`: every match
    /// is a piece and so is every gap between matches.
    fn split_class(&self, out: &mut Vec<usize>, class: CharClass, min: usize, max: usize) {
        let end = self.cpts.len();
        let mut prev = 0;
        let mut pos = 0;
        while pos < end {
            let mut run = 0;
            while pos + run < end && run < max && class.contains(self.cpts[pos + run], self.flags[pos + run]) {
                run += 1;
            }
            if run >= min && run > 0 {
                Self::add(out, &mut prev, pos);
                pos += run;
                Self::add(out, &mut prev, pos);
            } else {
                // No match can start inside a run shorter than `min`: skip past it.
                pos += run.max(1);
            }
        }
        Self::add(out, &mut prev, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_rules() {
        let w = split("Hello world's  test\n\n  x 123", sets::GPT2);
        assert_eq!(w, ["Hello", " world", "'s", " ", " test", "\n\n ", " x", " 123"]);
        assert_eq!(split("a   ", sets::GPT2), ["a", "   "]);
        assert_eq!(split("", sets::GPT2), Vec::<&str>::new());
    }

    #[test]
    fn starcoder_splits_single_digits() {
        assert_eq!(split("x 1234 3.14", sets::STARCODER), ["x", " ", "1", "2", "3", "4", " ", "3", ".", "1", "4"]);
    }

    #[test]
    fn llama3_rules() {
        assert_eq!(split("Hello 12345 world!!\n\n  ok", sets::LLAMA3), ["Hello", " ", "123", "45", " world", "!!\n\n", " ", " ok"]);
        assert_eq!(split("I'M here", sets::LLAMA3), ["I", "'M", " here"]);
        assert_eq!(split("12345", sets::QWEN2), ["1", "2", "3", "4", "5"]);
    }

    #[test]
    fn default_rules() {
        // The punctuation rule runs first, then gpt2 within each piece, then digit rules.
        assert_eq!(split("a+=b 12345", sets::DEFAULT), ["a", "+=", "b", " ", "123", "45"]);
    }

    #[test]
    fn class_rule_with_minimum() {
        assert_eq!(split("12a1234", &[SplitRule::Class { class: CharClass::AsciiDigit, min: 3, max: 3 }]), ["12a", "123", "4"]);
    }
}
