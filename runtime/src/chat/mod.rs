//! Chat templates: turn a conversation into the prompt text a model was trained on.
//!
//! The template comes from the file's `tokenizer.chat_template` (a Hugging Face Jinja2
//! template) and is rendered with minijinja configured the way `transformers` renders it:
//! `trim_blocks` and `lstrip_blocks` on, `loopcontrols`, `namespace`, `raise_exception`, a
//! Python-compatible `tojson`, `strftime_now`, Python string/dict methods (`.strip()`,
//! `.split()`, `.items()`… via minijinja-contrib's `pycompat`), and the context variables
//! `messages` (with `tool_calls`, `tool_call_id` and `name` when a message has them),
//! `add_generation_prompt`, `bos_token`, `eos_token` and `tools` (the request's, else `None`;
//! a template that does not render tools gets them described in the system message instead,
//! [`tools`]).
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
use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use std::collections::BTreeMap;

mod json;
mod sandbox;
mod strftime;
#[cfg(test)]
mod tests;
pub mod tools;

use sandbox::{sandbox_env, MessageObj, RaisedException};
pub use strftime::strftime;

/// Default fuel for one render. One unit is roughly one VM instruction or 64 bytes
/// allocated, so this bounds a render to about 128 MiB of allocations and a few hundred
/// milliseconds, while a realistic conversation (thousands of messages, megabytes of text)
/// uses a small fraction of it.
pub const DEFAULT_FUEL: u64 = 2_000_000;

/// Recursion limit (macro calls count ~10, blocks and loops 1). Real templates that render
/// JSON schemas recursively stay far below; it also keeps the wasm32 stack safe.
pub const RECURSION_LIMIT: usize = 200;

/// Name of the template inside the environment (no `.html`: no auto-escaping).
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation (OpenAI's fields; `content` null reads as empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// An assistant's calls: `[{ id, type: "function", function: { name, arguments } }]`
    /// (templates see `arguments` as an object when the string holds JSON, as llama.cpp
    /// passes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool result's call id and the tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(<Option<String> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), ..Default::default() }
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
        self.apply_with_tools(messages, None, add_generation_prompt)
    }

    /// How this template's model writes tool calls.
    pub fn tool_call_format(&self) -> tools::ToolCallFormat {
        tools::ToolCallFormat::for_template(&self.source)
    }

    /// [`ChatTemplate::apply`] with the request's `tools` (OpenAI's array). A template that does
    /// not render tools gets them described in the system message (added, or prepended to the
    /// first one), its tool results as user messages and its assistants' calls as their JSON
    /// ([`tools::ToolCallFormat::Generic`]).
    pub fn apply_with_tools(&self, messages: &[ChatMessage], tools: Option<&serde_json::Value>, add_generation_prompt: bool) -> Result<String, ChatError> {
        if let Some(index) = messages.iter().position(|m| m.role.is_empty()) {
            return Err(ChatError::MissingRole { index });
        }
        let generic = !tools::renders_tools(&self.source);
        let adapted;
        let messages = match tools {
            Some(t) if generic => {
                adapted = tools::describe_in_messages(messages, t);
                &adapted[..]
            }
            _ => messages,
        };
        let msgs: Vec<Value> = messages.iter().map(|m| Value::from_object(MessageObj(m.clone()))).collect();
        let mut ctx: BTreeMap<&'static str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(msgs));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("tools", tools.filter(|_| !generic).map_or(Value::from(()), tools::template_value));
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
