//! Code-point classes as llama.cpp's `unicode.cpp` sees them, and the GPT-2 byte ↔ unicode map.
//!
//! llama.cpp classifies code points with tables generated from Unicode 15.1
//! (`unicode_cpt_flags_from_cpt`). We take the general category from the
//! `unicode-general-category` crate (Unicode 16.0) and treat the code points first assigned in
//! 16.0 as unassigned, which reproduces llama.cpp's table exactly (checked code point by code
//! point against llama.cpp's unicode-data.cpp: the only differences are these ranges).
//! White space is Unicode's White_Space property (`char::is_whitespace`), the same 25 code
//! points as llama.cpp's `unicode_set_whitespace`.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// Bit flags of one code point, with llama.cpp's values (`unicode_cpt_flags`).
/// 0 means "outside the fragment being split" (llama.cpp's empty flags).
pub(crate) type Flags = u16;
pub(crate) const UNDEFINED: Flags = 0x0001;
pub(crate) const NUMBER: Flags = 0x0002;
pub(crate) const LETTER: Flags = 0x0004;
pub(crate) const SEPARATOR: Flags = 0x0008;
pub(crate) const ACCENT_MARK: Flags = 0x0010;
pub(crate) const PUNCTUATION: Flags = 0x0020;
pub(crate) const SYMBOL: Flags = 0x0040;
pub(crate) const CONTROL: Flags = 0x0080;
pub(crate) const WHITESPACE: Flags = 0x0100;

/// Code points assigned in Unicode 16.0 (DerivedAge.txt, Age=16.0): unassigned in the
/// Unicode 15.1 tables llama.cpp was generated from.
const NEW_IN_UNICODE_16: [(u32, u32); 47] = [
    (0x00897, 0x00897),
    (0x01B4E, 0x01B4F),
    (0x01B7F, 0x01B7F),
    (0x01C89, 0x01C8A),
    (0x02427, 0x02429),
    (0x031E4, 0x031E5),
    (0x0A7CB, 0x0A7CD),
    (0x0A7DA, 0x0A7DC),
    (0x105C0, 0x105F3),
    (0x10D40, 0x10D65),
    (0x10D69, 0x10D85),
    (0x10D8E, 0x10D8F),
    (0x10EC2, 0x10EC4),
    (0x10EFC, 0x10EFC),
    (0x11380, 0x11389),
    (0x1138B, 0x1138B),
    (0x1138E, 0x1138E),
    (0x11390, 0x113B5),
    (0x113B7, 0x113C0),
    (0x113C2, 0x113C2),
    (0x113C5, 0x113C5),
    (0x113C7, 0x113CA),
    (0x113CC, 0x113D5),
    (0x113D7, 0x113D8),
    (0x113E1, 0x113E2),
    (0x116D0, 0x116E3),
    (0x11BC0, 0x11BE1),
    (0x11BF0, 0x11BF9),
    (0x11F5A, 0x11F5A),
    (0x13460, 0x143FA),
    (0x16100, 0x16139),
    (0x16D40, 0x16D79),
    (0x18CFF, 0x18CFF),
    (0x1CC00, 0x1CCF9),
    (0x1CD00, 0x1CEB3),
    (0x1E5D0, 0x1E5FA),
    (0x1E5FF, 0x1E5FF),
    (0x1F8B2, 0x1F8BB),
    (0x1F8C0, 0x1F8C1),
    (0x1FA89, 0x1FA89),
    (0x1FA8F, 0x1FA8F),
    (0x1FABE, 0x1FABE),
    (0x1FAC6, 0x1FAC6),
    (0x1FADC, 0x1FADC),
    (0x1FADF, 0x1FADF),
    (0x1FAE9, 0x1FAE9),
    (0x1FBCB, 0x1FBEF),
];

fn new_in_unicode_16(cp: u32) -> bool {
    // Binary search over the sorted, disjoint ranges.
    let i = NEW_IN_UNICODE_16.partition_point(|&(_, last)| last < cp);
    NEW_IN_UNICODE_16.get(i).is_some_and(|&(first, _)| first <= cp)
}

/// The category bit of `c` (exactly one of UNDEFINED … CONTROL).
fn category(c: char) -> Flags {
    if (c as u32) < 0x80 {
        return ascii_category(c as u8);
    }
    if new_in_unicode_16(c as u32) {
        return UNDEFINED;
    }
    match get_general_category(c) {
        G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter => LETTER,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => NUMBER,
        G::SpaceSeparator | G::LineSeparator | G::ParagraphSeparator => SEPARATOR,
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark => ACCENT_MARK,
        G::ConnectorPunctuation
        | G::DashPunctuation
        | G::OpenPunctuation
        | G::ClosePunctuation
        | G::InitialPunctuation
        | G::FinalPunctuation
        | G::OtherPunctuation => PUNCTUATION,
        G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol => SYMBOL,
        G::Control | G::Format | G::Surrogate | G::PrivateUse => CONTROL,
        _ => UNDEFINED,
    }
}

/// ASCII categories (the hot path of every English text).
fn ascii_category(b: u8) -> Flags {
    match b {
        b'0'..=b'9' => NUMBER,
        b'A'..=b'Z' | b'a'..=b'z' => LETTER,
        b' ' => SEPARATOR,
        0..=0x1F | 0x7F => CONTROL,
        b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~' => SYMBOL,
        _ => PUNCTUATION,
    }
}

/// Flags of a code point: its category plus the WHITESPACE bit (`unicode_cpt_flags_from_cpt`).
pub(crate) fn flags(c: char) -> Flags {
    let ws = if c.is_whitespace() { WHITESPACE } else { 0 };
    category(c) | ws
}

/// The byte → code point table of GPT-2's `bytes_to_unicode` (`unicode_byte_to_utf8_map`):
/// printable Latin-1 bytes map to themselves, the other 68 to U+0100, U+0101, … in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            u32::from(b)
        } else {
            n += 1;
            255 + n
        };
        // Every value is below 0x144, a valid scalar value.
        table[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// Inverse of [`byte_to_char_table`] (`unicode_utf8_to_byte`): the byte a code point stands for.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(cp as u8),
        0x100..=0x143 => {
            // The n-th non-printable byte, in increasing byte order.
            let n = cp - 0x100;
            (0u8..=255).filter(|b| !matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)).nth(n as usize)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        let t = byte_to_char_table();
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[usize::from(b)]), Some(b), "byte {b:#x}");
        }
        assert_eq!(t[usize::from(b' ')], 'Ġ');
        assert_eq!(t[usize::from(b'\n')], 'Ċ');
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn categories_follow_llama_cpp() {
        assert_eq!(flags('a'), LETTER);
        assert_eq!(flags('7'), NUMBER);
        assert_eq!(flags(' '), SEPARATOR | WHITESPACE);
        assert_eq!(flags('\n'), CONTROL | WHITESPACE);
        assert_eq!(flags('$'), SYMBOL);
        assert_eq!(flags('_'), PUNCTUATION);
        assert_eq!(flags('é'), LETTER);
        assert_eq!(flags('\u{0301}'), ACCENT_MARK);
        assert_eq!(flags('²'), NUMBER);
        assert_eq!(flags('\u{3000}'), SEPARATOR | WHITESPACE);
        assert_eq!(flags('\u{85}'), CONTROL | WHITESPACE);
        assert_eq!(flags('🤖'), SYMBOL);
        // New in Unicode 16.0: unassigned for llama.cpp.
        assert_eq!(flags('\u{1C89}'), UNDEFINED);
        assert_eq!(flags('\u{1FBEF}'), UNDEFINED);
        assert_eq!(flags('\u{1FBF0}'), NUMBER);
        // Unassigned and private use.
        assert_eq!(flags('\u{0378}'), UNDEFINED);
        assert_eq!(flags('\u{E000}'), CONTROL);
    }
}
