//! The sandboxed minijinja environment a chat template renders in, configured like
//! `transformers`' (Python methods and printing, `raise_exception`), and the message object
//! templates see.

use super::json::tojson;
use super::{ChatMessage, RECURSION_LIMIT, TEMPLATE_NAME};
use crate::error::ChatError;
use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use std::sync::Arc;

/// The error `raise_exception` returns, found again in the error chain after rendering.
#[derive(Debug)]
pub(super) struct RaisedException(pub(super) String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// A message as the template sees it: a dict with `role` then `content` (in that order, as
/// `tojson` / `items()` would show it in Python).
#[derive(Debug)]
pub(super) struct MessageObj(pub(super) ChatMessage);

impl Object for MessageObj {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let m = &self.0;
        match key.as_str()? {
            "role" => Some(Value::from(m.role.as_str())),
            "content" => Some(Value::from(m.content.as_str())),
            "tool_calls" => m.tool_calls.as_ref().map(|c| super::tools::template_value(&super::tools::arguments_as_objects(c))),
            "tool_call_id" => m.tool_call_id.as_deref().map(Value::from),
            "name" => m.name.as_deref().map(Value::from),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let m = &self.0;
        let mut keys = vec![Value::from("role"), Value::from("content")];
        for (key, present) in [("tool_calls", m.tool_calls.is_some()), ("tool_call_id", m.tool_call_id.is_some()), ("name", m.name.is_some())] {
            if present {
                keys.push(Value::from(key));
            }
        }
        Enumerator::Values(keys)
    }
}

/// The sandboxed environment, configured like `transformers`' ImmutableSandboxedEnvironment
/// (trim_blocks, lstrip_blocks, loop controls) and holding the one template.
pub(super) fn sandbox_env(fuel: u64, source: String) -> Result<Environment<'static>, ChatError> {
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
