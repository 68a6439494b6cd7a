//! GBNF (llama.cpp's grammar format, grammars/README.md there) rewritten into llguidance's
//! Lark syntax, which llguidance compiles.
//!
//! Written by hand: the two notations differ only on the surface. GBNF rules (`name ::= …`,
//! continuing over lines until the next `name ::=`) become one-line Lark rules named
//! `g_<name>` (lowercase; `start: g_root` added); string literals are re-encoded as JSON
//! strings (Lark's literal syntax); character classes and `.` become regular expressions with
//! every character written `\x{…}`; `* + ?`, `{m,n}`, groups and `|` carry over. Token
//! references (`<[id]>`, `<name>`) are refused with a typed error.

use crate::error::ConstraintError;
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Define,
    Literal(String),
    /// Negated, and the (first, last) character ranges.
    Class(bool, Vec<(char, char)>),
    Any,
    Op(char),
    Repeat(String),
    Open,
    Close,
    Pipe,
}

fn bad(what: impl Into<String>) -> ConstraintError {
    ConstraintError::Grammar(format!("GBNF: {}", what.into()))
}

/// Reads one escape after `\` (the backslash already taken).
fn escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, ConstraintError> {
    let c = chars.next().ok_or_else(|| bad("a backslash at the end"))?;
    let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Result<char, ConstraintError> {
        let digits: String = (0..n).filter_map(|_| chars.next()).collect();
        let v = u32::from_str_radix(&digits, 16).map_err(|_| bad(format!("bad hex escape {digits:?}")))?;
        char::from_u32(v).ok_or_else(|| bad(format!("U+{v:X} is not a character")))
    };
    Ok(match c {
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'x' => hex(chars, 2)?,
        'u' => hex(chars, 4)?,
        'U' => hex(chars, 8)?,
        '\\' | '"' | '[' | ']' | '-' | '^' | '/' => c,
        _ => return Err(bad(format!("unknown escape \\{c}"))),
    })
}

fn lex(src: &str) -> Result<Vec<Tok>, ConstraintError> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            ':' => {
                if chars.next() != Some(':') || chars.next() != Some('=') {
                    return Err(bad("':' outside '::='"));
                }
                out.push(Tok::Define);
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next().ok_or_else(|| bad("an unterminated string"))? {
                        '"' => break,
                        '\\' => s.push(escape(&mut chars)?),
                        c => s.push(c),
                    }
                }
                out.push(Tok::Literal(s));
            }
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    let first = match chars.next().ok_or_else(|| bad("an unterminated character class"))? {
                        ']' => break,
                        '\\' => escape(&mut chars)?,
                        c => c,
                    };
                    let mut last = first;
                    if chars.peek() == Some(&'-') {
                        let mut ahead = chars.clone();
                        ahead.next();
                        if ahead.peek().is_some_and(|&c| c != ']') {
                            chars.next();
                            last = match chars.next().ok_or_else(|| bad("an unterminated range"))? {
                                '\\' => escape(&mut chars)?,
                                c => c,
                            };
                        }
                    }
                    if last < first {
                        return Err(bad(format!("the range {first:?}-{last:?} is empty")));
                    }
                    ranges.push((first, last));
                }
                out.push(Tok::Class(negated, ranges));
            }
            '.' => out.push(Tok::Any),
            '*' | '+' | '?' => out.push(Tok::Op(c)),
            '{' => {
                let mut body = String::new();
                loop {
                    match chars.next().ok_or_else(|| bad("an unterminated {m,n}"))? {
                        '}' => break,
                        c if c.is_ascii_digit() || c == ',' || c == ' ' => body.push(c),
                        c => return Err(bad(format!("{c:?} inside {{m,n}}"))),
                    }
                }
                out.push(Tok::Repeat(body.replace(' ', "")));
            }
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            '|' => out.push(Tok::Pipe),
            '<' => return Err(bad("token references (<...>) are not supported")),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let mut name = c.to_string();
                while let Some(c) = chars.next_if(|&c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    name.push(c);
                }
                out.push(Tok::Name(name));
            }
            c => return Err(bad(format!("unexpected {c:?}"))),
        }
    }
    Ok(out)
}

/// A character inside a Lark regular expression.
fn regex_char(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\x{{{:X}}}", c as u32)
    }
}

/// A Lark string literal (JSON syntax, DEL escaped too: Lark's lexer refuses it raw).
fn literal(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default().replace('\u{7f}', "\\u007f")
}

/// The Lark grammar for GBNF `src` (see the module docs).
pub fn to_lark(src: &str) -> Result<String, ConstraintError> {
    let toks = lex(src)?;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut rule = |name: &str| -> Result<String, ConstraintError> {
        let lark = format!("g_{}", name.to_ascii_lowercase().replace('-', "_"));
        match names.insert(lark.clone(), name.to_owned()) {
            Some(other) if other != name => Err(bad(format!("rules {other:?} and {name:?} have the same Lark name"))),
            _ => Ok(lark),
        }
    };
    let mut lines: Vec<String> = Vec::new();
    let mut defined = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (Tok::Name(name), Some(Tok::Define)) = (&toks[i], toks.get(i + 1)) else {
            return Err(bad("expected a rule: name ::= ..."));
        };
        let head = rule(name)?;
        defined.push(head.clone());
        i += 2;
        let mut body = Vec::new();
        while i < toks.len() && !matches!((&toks[i], toks.get(i + 1)), (Tok::Name(_), Some(Tok::Define))) {
            body.push(match &toks[i] {
                Tok::Name(n) => rule(n)?,
                Tok::Define => return Err(bad("'::=' without a rule name")),
                Tok::Literal(s) => literal(s),
                Tok::Class(negated, ranges) => {
                    let items: String =
                        ranges.iter().map(|&(a, b)| if a == b { regex_char(a) } else { format!("{}-{}", regex_char(a), regex_char(b)) }).collect();
                    format!("/[{}{items}]/", if *negated { "^" } else { "" })
                }
                Tok::Any => "/(?s:.)/".to_owned(),
                Tok::Op(c) => c.to_string(),
                Tok::Repeat(r) => format!("{{{r}}}"),
                Tok::Open => "(".to_owned(),
                Tok::Close => ")".to_owned(),
                Tok::Pipe => "|".to_owned(),
            });
            i += 1;
        }
        if body.is_empty() {
            return Err(bad(format!("the rule {name:?} is empty")));
        }
        lines.push(format!("{head}: {}", body.join(" ")));
    }
    if !defined.iter().any(|d| d == "g_root") {
        return Err(bad("no root rule"));
    }
    if let Some(name) = names.iter().find(|(lark, _)| !defined.contains(lark)).map(|(_, name)| name) {
        return Err(bad(format!("the rule {name:?} is used but not defined")));
    }
    Ok(format!("start: g_root\n{}\n", lines.join("\n")))
}
