//! The `tojson` filter of chat templates, with Python's JSON and float formatting.

// tojson, as transformers defines it: json.dumps(x, ensure_ascii=False, indent=indent,
// separators=separators, sort_keys=sort_keys). Python's formatting, not minijinja's
// (which is compact and HTML-escapes `<`, `>`, `&`, `'`).

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{ErrorKind, State};
use std::fmt::Write as _;

/// Deepest nesting `tojson` serializes (guards against self-referencing namespaces).
const JSON_MAX_DEPTH: usize = 128;

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

pub(super) fn tojson(state: &State, value: &Value, positional: Option<Value>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let bad = |what: &str| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {what}"));
    let mut ensure_ascii = false;
    let mut indent_v: Option<Value> = kwargs.get("indent")?;
    if let Some(p) = positional {
        // Python's first positional parameter is ensure_ascii; accept an integer as the
        // indent too, as Jinja2's own tojson does.
        if p.kind() == ValueKind::Bool {
            ensure_ascii = p.is_true();
        } else {
            indent_v = Some(p);
        }
    }
    if let Some(e) = kwargs.get::<Option<bool>>("ensure_ascii")? {
        ensure_ascii = e;
    }
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent_v {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                let n = i64::try_from(v).map_err(|_| bad("indent must be an integer or a string"))?;
                Some(" ".repeat(usize::try_from(n.clamp(0, 64)).unwrap_or(0)))
            }
        },
    };
    let (mut item_sep, mut key_sep) = if indent.is_some() { (",".to_owned(), ": ".to_owned()) } else { (", ".to_owned(), ": ".to_owned()) };
    if let Some(seps) = separators.filter(|s| !s.is_none() && !s.is_undefined()) {
        let a = seps.get_item_by_index(0)?;
        let b = seps.get_item_by_index(1)?;
        match (a.as_str(), b.as_str()) {
            (Some(a), Some(b)) => {
                item_sep = a.to_owned();
                key_sep = b.to_owned();
            }
            _ => return Err(bad("separators must be two strings")),
        }
    }
    let opts = JsonOpts { indent, item_sep, key_sep, sort_keys, ensure_ascii };
    let mut out = String::new();
    let mut meter = Meter::default();
    write_json(state, &mut out, &mut meter, value, &opts, 0)?;
    Ok(Value::from(out))
}

/// Fuel accounting of `tojson`: one unit per value visited plus one per 64 bytes written,
/// charged in batches, so a value that is small in memory but references the same big list
/// many times cannot run long or blow up memory.
#[derive(Default)]
struct Meter {
    nodes: u64,
    charged_bytes: usize,
}

fn charge(state: &State, out: &str, m: &mut Meter) -> Result<(), minijinja::Error> {
    m.nodes += 1;
    if m.nodes >= 256 {
        let bytes = out.len() - m.charged_bytes;
        state.consume_fuel(m.nodes + (bytes / 64) as u64)?;
        m.nodes = 0;
        m.charged_bytes = out.len() - bytes % 64;
    }
    Ok(())
}

fn write_json(state: &State, out: &mut String, meter: &mut Meter, v: &Value, o: &JsonOpts, depth: usize) -> Result<(), minijinja::Error> {
    if depth > JSON_MAX_DEPTH {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply (circular?)"));
    }
    charge(state, out, meter)?;
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                out.push_str(&python_float_repr(f));
            }
        }
        ValueKind::String => json_string(out, v.as_str().unwrap_or(""), o.ensure_ascii),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline_indent(out, o, depth + 1);
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or("").to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).to_owned(),
                    ValueKind::Number if !k.is_integer() => python_float_repr(f64::try_from(k.clone()).unwrap_or(f64::NAN)),
                    ValueKind::Number => k.to_string(),
                    _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: keys must be str, int, float, bool or None")),
                };
                json_string(out, &key, o.ensure_ascii);
                out.push_str(&o.key_sep);
                let item = v.get_item(k)?;
                write_json(state, out, meter, &item, o, depth + 1)?;
            }
            newline_indent(out, o, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline_indent(out, o, depth + 1);
                write_json(state, out, meter, item, o, depth + 1)?;
            }
            newline_indent(out, o, depth);
            out.push(']');
        }
        _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: object of kind {} is not JSON serializable", v.kind()))),
    }
    Ok(())
}

fn newline_indent(out: &mut String, o: &JsonOpts, level: usize) {
    if let Some(ind) = &o.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

/// A JSON string as Python's json module writes it.
fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// [-4, 16), else `d.ddde±XX`; `NaN`, `Infinity`, `-Infinity` as json.dumps writes them.
pub(super) fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "1.2345e-5".
    let sci = format!("{:e}", f);
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            for _ in 0..(-exp - 1) {
                s.push('0');
            }
            s.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                for _ in digits.len()..int_len {
                    s.push('0');
                }
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    s
}
