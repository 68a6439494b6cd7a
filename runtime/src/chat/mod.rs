//! Chat templates: turn a conversation into the prompt text a model was trained on.
//!
//! The template comes from the file's `tokenizer.chat_template` (a Hugging Face Jinja2
//! template) and is rendered with minijinja configured the way `transformers` renders it:
//! `trim_blocks` and `lstrip_blocks` on, `loopcontrols`, `namespace`, `raise_exception`, a
//! Python-compatible `tojson`, `strftime_now`, Python string/dict methods (`.strip()`,
//! `.split()`, `.items()`… via minijinja-contrib's `pycompat`), and the context variables
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `tools` (= `None`).
//!
//! A template is untrusted input (it comes with a downloaded model), so the engine is a
//! sandbox: minijinja has no file or environment access, `multi_template` is compiled out (no
//! `include`/`import`/`extends`, no loader), and every render runs on a fuel budget (bounding
//! both instructions and bytes allocated) and a recursion limit, so a hostile template ends in
//! a typed [`ChatError`] instead of hanging or exhausting memory. Nothing here panics.
//!
//! Without a template in the file, the architecture picks a built-in one: Gemma's turn
//! format for `gemma*` (the system message folded into the first user turn, as Gemma's HF
//! template does) and ChatML (`<|im_start|>role\n…<|im_end|>\n`) for everything else.

use crate::error::ChatError;
use crate::gguf::Metadata;
use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Default fuel for one render. One unit is roughly one VM instruction or 64 bytes
/// allocated, so this bounds a render to about 128 MiB of allocations and a few hundred
/// milliseconds, while a realistic conversation (thousands of messages, megabytes of text)
/// uses a small fraction of it.
pub const DEFAULT_FUEL: u64 = 2_000_000;

/// Recursion limit (macro calls count ~10, blocks and loops 1). Real templates that render
/// JSON schemas recursively stay far below; it also keeps the wasm32 stack safe.
pub const RECURSION_LIMIT: usize = 200;

/// Deepest nesting `tojson` serializes (guards against self-referencing namespaces).
const JSON_MAX_DEPTH: usize = 128;

/// Name of the template inside the environment (no `.html`: no auto-escaping).
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// Where a [`ChatTemplate`]'s text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// `tokenizer.chat_template` of the model file.
    File,
    /// Given by the caller ([`ChatTemplate::from_source`]).
    Custom,
    /// Built in: Gemma's `<start_of_turn>` format (gemma, gemma2, gemma3 without a template).
    GemmaFallback,
    /// Built in: ChatML (every other architecture without a template).
    ChatMlFallback,
}

/// Gemma's turn format, written after Gemma 3's HF template: BOS text first, the system
/// message (if first) prepended to the first user turn followed by a blank line, `assistant`
/// renamed `model`, contents trimmed, roles must alternate user/model.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}";

/// ChatML, as llama.cpp's built-in `chatml` template.
const CHATML_TEMPLATE: &str = "{%- for message in messages -%}
    {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<|im_start|>assistant\n' }}
{%- endif -%}";

/// A compiled chat template plus the special-token strings it may reference.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: TemplateOrigin,
    bos_token: Option<String>,
    eos_token: Option<String>,
    fuel: u64,
    now_unix: Option<i64>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("fuel", &self.fuel)
            .finish()
    }
}

impl ChatTemplate {
    /// The template of a model: `tokenizer.chat_template` if the file has a non-empty one,
    /// else the built-in format for `arch` (Gemma's for `gemma*`, ChatML otherwise).
    /// `bos_token`/`eos_token` are the vocabulary strings of `tokenizer.ggml.bos_token_id` /
    /// `eos_token_id`.
    pub fn from_metadata(metadata: &Metadata, arch: &str) -> Result<ChatTemplate, ChatError> {
        let tokens = metadata.get_str_array("tokenizer.ggml.tokens")?;
        let special = |key: &str, which: &'static str| -> Result<Option<String>, ChatError> {
            let Some(id) = metadata.get_u32(key)? else { return Ok(None) };
            let Some(tokens) = tokens else { return Ok(None) };
            match tokens.get(id as usize) {
                Some(t) => Ok(Some(t.clone())),
                None => Err(ChatError::SpecialTokenOutOfRange { which, id, n_vocab: tokens.len() }),
            }
        };
        let bos = special("tokenizer.ggml.bos_token_id", "BOS")?;
        let eos = special("tokenizer.ggml.eos_token_id", "EOS")?;
        match metadata.get_str("tokenizer.chat_template")? {
            Some(t) if !t.trim().is_empty() => Self::build(t.to_owned(), TemplateOrigin::File, bos, eos),
            _ => Self::fallback(arch, bos, eos),
        }
    }

    /// The built-in template for an architecture without one in its file.
    pub fn fallback(arch: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<ChatTemplate, ChatError> {
        if arch.starts_with("gemma") {
            Self::build(GEMMA_TEMPLATE.to_owned(), TemplateOrigin::GemmaFallback, bos_token, eos_token)
        } else {
            Self::build(CHATML_TEMPLATE.to_owned(), TemplateOrigin::ChatMlFallback, bos_token, eos_token)
        }
    }

    /// A caller-supplied Jinja template (same sandbox and helpers as a file's template).
    pub fn from_source(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<ChatTemplate, ChatError> {
        Self::build(source.to_owned(), TemplateOrigin::Custom, bos_token, eos_token)
    }

    fn build(source: String, origin: TemplateOrigin, bos_token: Option<String>, eos_token: Option<String>) -> Result<ChatTemplate, ChatError> {
        let env = sandbox_env(DEFAULT_FUEL, source.clone())?;
        Ok(ChatTemplate { env, source, origin, bos_token, eos_token, fuel: DEFAULT_FUEL, now_unix: None })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> TemplateOrigin {
        self.origin
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn fuel(&self) -> u64 {
        self.fuel
    }

    /// Changes the per-render fuel budget (see [`DEFAULT_FUEL`]).
    pub fn set_fuel(&mut self, fuel: u64) {
        self.fuel = fuel;
        self.env.set_fuel(Some(fuel));
    }

    /// Fixes the time `strftime_now` reports (seconds since the Unix epoch, UTC). Without it
    /// native builds read the system clock; wasm32 has no clock in std, so there
    /// `strftime_now` stays undefined (templates that test `strftime_now is defined` fall back
    /// to their default date) unless the caller passes `Date.now()` here.
    pub fn set_now(&mut self, unix_seconds: Option<i64>) {
        self.now_unix = unix_seconds;
    }

    fn now(&self) -> Option<i64> {
        if self.now_unix.is_some() {
            return self.now_unix;
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
            i64::try_from(d.as_secs()).ok()
        }
        #[cfg(target_arch = "wasm32")]
        {
            None
        }
    }

    /// Renders `messages` into prompt text; with `add_generation_prompt` the text ends with
    /// the header of an assistant turn.
    pub fn apply(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ChatError> {
        if let Some(index) = messages.iter().position(|m| m.role.is_empty()) {
            return Err(ChatError::MissingRole { index });
        }
        let msgs: Vec<Value> = messages.iter().map(|m| Value::from_object(MessageObj(m.clone()))).collect();
        let mut ctx: BTreeMap<&'static str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(msgs));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("tools", Value::from(()));
        if let Some(b) = &self.bos_token {
            ctx.insert("bos_token", Value::from(b.as_str()));
        }
        if let Some(e) = &self.eos_token {
            ctx.insert("eos_token", Value::from(e.as_str()));
        }
        if let Some(now) = self.now() {
            ctx.insert("strftime_now", Value::from_function(move |fmt: String| -> Result<String, minijinja::Error> { Ok(strftime(&fmt, now)) }));
        }
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| ChatError::Render { message: e.to_string() })?;
        tmpl.render(Value::from(ctx)).map_err(|e| self.render_error(e))
    }

    fn render_error(&self, e: minijinja::Error) -> ChatError {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = src {
            if let Some(r) = err.downcast_ref::<RaisedException>() {
                return ChatError::Raised { message: r.0.clone() };
            }
            src = err.source();
        }
        match e.kind() {
            ErrorKind::OutOfFuel => ChatError::OutOfFuel { fuel: self.fuel },
            ErrorKind::InvalidOperation if e.detail() == Some("recursion limit exceeded") => ChatError::RecursionLimit { limit: RECURSION_LIMIT },
            _ => ChatError::Render { message: e.to_string() },
        }
    }
}

/// The error `raise_exception` returns, found again in the error chain after rendering.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A message as the template sees it: a dict with `role` then `content` (in that order, as
/// `tojson` / `items()` would show it in Python).
#[derive(Debug)]
struct MessageObj(ChatMessage);

impl Object for MessageObj {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// The sandboxed environment, configured like `transformers`' ImmutableSandboxedEnvironment
/// (trim_blocks, lstrip_blocks, loop controls) and holding the one template.
fn sandbox_env(fuel: u64, source: String) -> Result<Environment<'static>, ChatError> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| ChatError::TemplateSyntax { message: e.to_string() })?;
    env.set_syntax(syntax);
    env.set_fuel(Some(fuel));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedException(msg)))
    });
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| ChatError::TemplateSyntax { message: e.to_string() })?;
    Ok(env)
}

/// Python methods on values (`.strip()`, `.items()`…) from minijinja-contrib's `pycompat`,
/// with `str.title()` done as Python does it (a letter after any non-letter is upper-cased:
/// `"a-b".title() == "A-B"`; minijinja only looks at whitespace).
fn python_methods(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, minijinja::Error> {
    if method == "title" && args.is_empty() {
        if let Some(s) = value.as_str() {
            let mut out = String::with_capacity(s.len());
            let mut prev_cased = false;
            for c in s.chars() {
                if prev_cased {
                    out.extend(c.to_lowercase());
                } else {
                    out.extend(c.to_uppercase());
                }
                prev_cased = c.is_lowercase() || c.is_uppercase();
            }
            return Ok(Value::from(out));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// `{{ x }}` prints like Python's `str()`: `None`, `True`, `False` (Jinja2 in Python does).
fn python_formatter(out: &mut minijinja::Output, state: &mut State, value: &Value) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None => out.write_str("None").map_err(|_| minijinja::Error::from(ErrorKind::WriteFailure)),
        ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }).map_err(|_| minijinja::Error::from(ErrorKind::WriteFailure)),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

// ---------------------------------------------------------------------------------------
// tojson, as transformers defines it: json.dumps(x, ensure_ascii=False, indent=indent,
// separators=separators, sort_keys=sort_keys). Python's formatting, not minijinja's
// (which is compact and HTML-escapes `<`, `>`, `&`, `'`).

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn tojson(state: &State, value: &Value, positional: Option<Value>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
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
fn python_float_repr(f: f64) -> String {
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

// ---------------------------------------------------------------------------------------
// strftime_now: C strftime over UTC civil time, for the specifiers templates use.

const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's
/// civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Formats `unix` seconds (UTC) with C/Python strftime specifiers: %Y %y %m %d %e %H %I %M
/// %S %p %B %b %h %A %a %j %w %u %F %T %D %R %n %t %%; anything else is kept literally.
pub fn strftime(fmt: &str, unix: i64) -> String {
    // ±2⁴⁰ s (~±35,000 years) keeps every step of the date arithmetic far from overflow.
    let unix = unix.clamp(-(1 << 40), 1 << 40);
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let wday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + u32::from(m > 2 && is_leap(y));
    let month = MONTHS[(m - 1) as usize];
    let weekday = WEEKDAYS[wday];
    let h12 = if hh % 12 == 0 { 12 } else { hh % 12 };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match spec {
            'Y' => write!(out, "{y}"),
            'y' => write!(out, "{:02}", y.rem_euclid(100)),
            'm' => write!(out, "{m:02}"),
            'd' => write!(out, "{d:02}"),
            'e' => write!(out, "{d:2}"),
            'H' => write!(out, "{hh:02}"),
            'I' => write!(out, "{h12:02}"),
            'M' => write!(out, "{mm:02}"),
            'S' => write!(out, "{ss:02}"),
            'p' => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            'B' => write!(out, "{month}"),
            'b' | 'h' => write!(out, "{}", &month[..3]),
            'A' => write!(out, "{weekday}"),
            'a' => write!(out, "{}", &weekday[..3]),
            'j' => write!(out, "{yday:03}"),
            'w' => write!(out, "{wday}"),
            'u' => write!(out, "{}", if wday == 0 { 7 } else { wday }),
            'F' => write!(out, "{y}-{m:02}-{d:02}"),
            'T' => write!(out, "{hh:02}:{mm:02}:{ss:02}"),
            'R' => write!(out, "{hh:02}:{mm:02}"),
            'D' => write!(out, "{m:02}/{d:02}/{:02}", y.rem_euclid(100)),
            'n' => writeln!(out),
            't' => write!(out, "\t"),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    fn tmpl(src: &str) -> ChatTemplate {
        ChatTemplate::from_source(src, Some("<s>".into()), Some("</s>".into())).expect("template compiles")
    }

    /// Llama-3 style: bos_token, `{% set loop_messages %}`, `| trim`, loop variables.
    const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    #[test]
    fn llama3_style() {
        let t = tmpl(LLAMA3);
        let out = t.apply(&msgs(&[("system", "Be brief. "), ("user", "  Hi")]), true).unwrap();
        assert_eq!(
            out,
            "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let no_gen = t.apply(&msgs(&[("user", "Hi")]), false).unwrap();
        assert_eq!(no_gen, "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
    }

    /// Qwen2.5 style: tools None, namespace, multi-line blocks relying on trim/lstrip_blocks.
    const QWEN2: &str = "{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- for tool in tools %}
        {{- \"\\n\" }}
        {{- tool | tojson }}
    {%- endfor %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(last_user=0) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
{{- '' if ns.last_user >= 0 else 'x' }}
";

    #[test]
    fn qwen2_style_with_namespace_and_no_tools() {
        let t = tmpl(QWEN2);
        let out = t.apply(&msgs(&[("user", "Hello"), ("assistant", "Hi!"), ("user", "2+2?")]), true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n\
             <|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// Mistral style: raise_exception for role alternation.
    const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    #[test]
    fn raise_exception_is_a_typed_error() {
        let t = tmpl(MISTRAL);
        assert_eq!(t.apply(&msgs(&[("user", "a"), ("assistant", "b")]), false).unwrap(), "<s>[INST] a [/INST]b</s>");
        let err = t.apply(&msgs(&[("user", "a"), ("user", "b")]), true).unwrap_err();
        assert_eq!(err, ChatError::Raised { message: "Conversation roles must alternate user/assistant/user/assistant/...".into() });
        let err = t.apply(&msgs(&[("system", "s")]), true).unwrap_err();
        assert!(matches!(err, ChatError::Raised { .. }), "{err:?}");
    }

    #[test]
    fn python_string_methods_and_items() {
        let t = tmpl(
            "{% for m in messages %}{{ m.content.strip().upper() }}|{{ m.content.split(',') | length }}|{{ m.role.startswith('us') }}|{{ m.content.replace('a', 'o').title() }}|{% for k, v in m.items() %}{{ k }}={{ v.lower() }};{% endfor %}{% endfor %}",
        );
        let out = t.apply(&msgs(&[("user", " ab,cd ")]), false).unwrap();
        assert_eq!(out, "AB,CD|2|True| Ob,Cd |role=user;content= ab,cd ;");
    }

    #[test]
    fn tojson_matches_python() {
        let t = tmpl("{{ messages[0] | tojson }}#{{ {'a': [1, 2.5, none, true], 'b': 'x\"<é>\\n'} | tojson }}#{{ {'k': {'z': 1e-05, 'y': 1e20}} | tojson(indent=2) }}#{{ [] | tojson }}#{{ {'b': 1, 'a': 2} | tojson(sort_keys=true, ensure_ascii=true) }}");
        let out = t.apply(&msgs(&[("user", "hé")]), false).unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"hé\"}#{\"a\": [1, 2.5, null, true], \"b\": \"x\\\"<é>\\n\"}#{\n  \"k\": {\n    \"z\": 1e-05,\n    \"y\": 1e+20\n  }\n}#[]#{\"a\": 2, \"b\": 1}"
        );
    }

    #[test]
    fn python_float_repr_cases() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(python_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn strftime_now_and_formats() {
        // 2024-07-26 13:25:09 UTC (a Friday), day 208 of a leap year.
        let ts = 1_722_000_309;
        assert_eq!(strftime("%d %b %Y", ts), "26 Jul 2024");
        assert_eq!(strftime("%A %B %e %H:%M:%S %j %p %I %y %F %%", ts), "Friday July 26 13:25:09 208 PM 01 24 2024-07-26 %");
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%F", -86_400), "1969-12-31");
        assert!(!strftime("%F %T", i64::MAX).is_empty() && !strftime("%F", i64::MIN).is_empty());
        let mut t = tmpl("{% if strftime_now is defined %}{{ strftime_now('%d %B %Y') }}{% else %}26 Jul 2024{% endif %}");
        t.set_now(Some(ts));
        assert_eq!(t.apply(&[], false).unwrap(), "26 July 2024");
    }

    #[test]
    fn context_variables() {
        let t = tmpl("{{ tools is none }}{{ tools is defined }}{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}{{ messages | length }}");
        assert_eq!(t.apply(&[], true).unwrap(), "TrueTrue<s></s>True0");
        let t = ChatTemplate::from_source("[{{ bos_token }}]", None, None).unwrap();
        assert_eq!(t.apply(&[], true).unwrap(), "[]");
    }

    #[test]
    fn syntax_error_is_typed() {
        let err = ChatTemplate::from_source("{% for m in messages %}{{ m.role }", None, None).unwrap_err();
        assert!(matches!(err, ChatError::TemplateSyntax { .. }), "{err:?}");
        // The sandbox has no include / import / extends.
        let err = ChatTemplate::from_source("{% include 'x' %}", None, None).unwrap_err();
        assert!(matches!(err, ChatError::TemplateSyntax { .. }), "{err:?}");
    }

    #[test]
    fn missing_role_is_typed() {
        let t = ChatTemplate::fallback("llama", None, None).unwrap();
        let err = t.apply(&msgs(&[("user", "a"), ("", "b")]), true).unwrap_err();
        assert_eq!(err, ChatError::MissingRole { index: 1 });
    }

    #[test]
    fn undefined_attribute_is_a_render_error() {
        let t = tmpl("{{ messages[0].role.nope.deeper }}");
        let err = t.apply(&msgs(&[("user", "a")]), true).unwrap_err();
        assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
    }

    #[test]
    fn hostile_loops_run_out_of_fuel() {
        for src in [
            "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}",
            "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(10000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
            "{{ 'x' * 1000000000 }}",
            "{% set ns = namespace(a=[1,2,3,4,5,6,7,8]) %}{% for i in range(60) %}{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a | tojson }}",
        ] {
            let start = std::time::Instant::now();
            let err = tmpl(src).apply(&[], false).unwrap_err();
            assert_eq!(err, ChatError::OutOfFuel { fuel: DEFAULT_FUEL }, "{src}");
            assert!(start.elapsed().as_secs() < 10, "{src} took {:?}", start.elapsed());
        }
    }

    #[test]
    fn hostile_recursion_is_stopped() {
        let err = tmpl("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").apply(&[], false).unwrap_err();
        assert_eq!(err, ChatError::RecursionLimit { limit: RECURSION_LIMIT });
        let err = tmpl("{% set ns = namespace(x=1) %}{% set ns.x = ns %}{{ ns | tojson }}").apply(&[], false).unwrap_err();
        assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
    }

    #[test]
    fn gemma_fallback_folds_system_and_alternates() {
        let t = ChatTemplate::fallback("gemma3", Some("<bos>".into()), Some("<eos>".into())).unwrap();
        assert_eq!(t.origin(), TemplateOrigin::GemmaFallback);
        let out = t.apply(&msgs(&[("system", "Be kind."), ("user", " Hi "), ("assistant", "Hello"), ("user", "Bye")]), true).unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert!(matches!(t.apply(&msgs(&[("assistant", "x")]), true), Err(ChatError::Raised { .. })));
        assert_eq!(t.apply(&[], true).unwrap(), "<bos><start_of_turn>model\n");
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::fallback("llama", None, None).unwrap();
        assert_eq!(t.origin(), TemplateOrigin::ChatMlFallback);
        let out = t.apply(&msgs(&[("system", "S"), ("user", "U")]), true).unwrap();
        assert_eq!(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn realistic_long_conversation_fits_the_default_fuel() {
        let content = "lorem ipsum dolor sit amet ".repeat(40); // ~1 KB
        let conv: Vec<ChatMessage> = (0..2000).map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, content.clone())).collect();
        let out = tmpl(QWEN2).apply(&conv, true).unwrap();
        assert!(out.len() > 2_000_000);
    }
}
