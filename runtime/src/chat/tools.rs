//! Tool calling: how a model is told about tools and how its calls are found in its output.
//!
//! The format follows the chat template, as llama.cpp's `common/chat.cpp` tells them apart:
//! - [`ToolCallFormat::Hermes`] (Qwen 2.5+, Hermes, SmolLM3…: templates that write
//!   `<tool_call>`): each call is `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
//! - [`ToolCallFormat::Llama3`] (templates that know `<|python_tag|>` / the `ipython` role):
//!   the answer is one JSON object `{"name": …, "parameters": {…}}` (or several, `;`-separated).
//! - [`ToolCallFormat::Generic`] (templates that do not render `tools`): the tools are described
//!   in the system message ([`generic_system_prompt`]) and the answer is one JSON object
//!   `{"name": …, "arguments": {…}}`.
//!
//! Output is scanned as it streams ([`ToolCallFormat::hold_from`]): text that is or may become
//! a call is held back, and parsed when the generation ends ([`parse_tool_calls`]); what does
//! not parse as a call is shown as text after all.

use super::ChatMessage;
use serde::Serialize;
use serde_json::Value as Json;

/// How a model writes tool calls (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCallFormat {
    Hermes,
    Llama3,
    Generic,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// One call as OpenAI returns it: the function's name and its arguments as JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

impl ToolCallFormat {
    /// The format a chat template's text implies.
    pub fn for_template(source: &str) -> ToolCallFormat {
        if source.contains(HERMES_OPEN) {
            ToolCallFormat::Hermes
        } else if source.contains(PYTHON_TAG) || source.contains("ipython") {
            ToolCallFormat::Llama3
        } else if renders_tools(source) {
            // A template that shows the tools its own way; calls are expected as JSON.
            ToolCallFormat::Llama3
        } else {
            ToolCallFormat::Generic
        }
    }

    /// Where text that is or may become a call begins in `text` (`text.len()`: nothing held).
    /// `shown`: bytes already handed out, which hold no call (searched from there only: this
    /// runs for every generated token).
    pub fn hold_from(self, text: &str, shown: usize) -> usize {
        match self {
            ToolCallFormat::Hermes => {
                let from = shown.min(text.len());
                let rest = text.get(from..).unwrap_or_default();
                from + rest.find(HERMES_OPEN).unwrap_or_else(|| partial_suffix(rest, HERMES_OPEN))
            }
            ToolCallFormat::Llama3 | ToolCallFormat::Generic => {
                // A call is the whole answer: hold it from its first non-blank character when
                // that starts (or may start) a JSON object or the python tag.
                let start = text.len() - text.trim_start().len();
                let rest = &text[start..];
                if rest.is_empty() || rest.starts_with('{') || rest.starts_with('[') || PYTHON_TAG.starts_with(rest) || rest.starts_with(PYTHON_TAG) {
                    start
                } else {
                    text.len()
                }
            }
        }
    }
}

/// Whether a template renders the request's `tools` (else they go in the system message).
pub fn renders_tools(source: &str) -> bool {
    source.contains("tools")
}

/// The start of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&marker[..n]))
        .map_or(text.len(), |n| text.len() - n)
}

/// The calls in `held` (the text [`ToolCallFormat::hold_from`] held back) and the text left
/// around them. No call found: the text is returned whole.
pub fn parse_tool_calls(format: ToolCallFormat, held: &str) -> (String, Vec<ToolCall>) {
    let none = || (held.to_owned(), Vec::new());
    match format {
        ToolCallFormat::Hermes => {
            let (mut content, mut calls, mut rest) = (String::new(), Vec::new(), held);
            while let Some(open) = rest.find(HERMES_OPEN) {
                content.push_str(&rest[..open]);
                let body = &rest[open + HERMES_OPEN.len()..];
                let (json, after) = match body.find(HERMES_CLOSE) {
                    Some(close) => (&body[..close], &body[close + HERMES_CLOSE.len()..]),
                    None => (body, ""),
                };
                match serde_json::from_str::<Json>(json.trim()).ok().as_ref().and_then(call_of) {
                    Some(call) => calls.push(call),
                    None => return none(),
                }
                rest = after;
            }
            content.push_str(rest);
            if calls.is_empty() {
                return none();
            }
            (content.trim().to_owned(), calls)
        }
        ToolCallFormat::Llama3 | ToolCallFormat::Generic => {
            let body = held.trim();
            let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim();
            let calls = match serde_json::from_str::<Json>(body) {
                Ok(v) => calls_of(&v),
                // Several calls separated by ';' (Llama 3.x's builtin-style answers).
                Err(_) => body.split(';').map(|part| serde_json::from_str::<Json>(part.trim()).ok().as_ref().and_then(call_of)).collect::<Option<Vec<_>>>(),
            };
            match calls {
                Some(calls) if !calls.is_empty() => (String::new(), calls),
                _ => none(),
            }
        }
    }
}

/// A JSON answer's calls: one call object, an array of them, `{"tool_call": …}` or
/// `{"tool_calls": [...]}`.
fn calls_of(v: &Json) -> Option<Vec<ToolCall>> {
    match v {
        Json::Array(items) => items.iter().map(call_of).collect(),
        Json::Object(o) if o.contains_key("tool_calls") => calls_of(&o["tool_calls"]),
        Json::Object(o) if o.contains_key("tool_call") => call_of(&o["tool_call"]).map(|c| vec![c]),
        _ => call_of(v).map(|c| vec![c]),
    }
}

/// `{"name": …, "arguments" | "parameters": {…} or "…"}`, or OpenAI's `{"function": {…}}`.
fn call_of(v: &Json) -> Option<ToolCall> {
    let o = v.as_object()?;
    if let Some(f) = o.get("function").filter(|f| f.is_object()) {
        return call_of(f);
    }
    let name = o.get("name")?.as_str()?.to_owned();
    let arguments = match o.get("arguments").or_else(|| o.get("parameters")) {
        None | Some(Json::Null) => "{}".to_owned(),
        Some(Json::String(s)) => s.clone(),
        Some(args) => args.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// The system-message text that describes `tools` (OpenAI's `[{type, function: {name,
/// description, parameters}}]`) to a model whose template does not render them, and asks for
/// the [`ToolCallFormat::Generic`] answer.
pub fn generic_system_prompt(tools: &Json) -> String {
    let list = serde_json::to_string_pretty(tools).unwrap_or_default();
    format!(
        "You can call these tools (JSON Schema of their arguments):\n{list}\n\nTo call a tool, answer with only a JSON object of the form \
         {{\"name\": \"<tool name>\", \"arguments\": {{<arguments>}}}} and nothing else. Otherwise answer normally."
    )
}

/// The key a call's arguments go under in `format` (Llama 3.x templates ask for `parameters`).
fn arguments_key(format: ToolCallFormat) -> &'static str {
    match format {
        ToolCallFormat::Llama3 => "parameters",
        ToolCallFormat::Hermes | ToolCallFormat::Generic => "arguments",
    }
}

/// The grammar (llguidance's Lark) that holds an answer to tool calls written in `format`, for
/// `tool_choice: "required"` (a call of any of `tools`) or a named function (`only`): each call's
/// JSON is held to a tool's name and its `parameters` schema, laid out as the JSON answers are
/// (llama.cpp's common/chat.cpp builds the same kind of grammar). One call: a small model held
/// to "one or more" may repeat its call until `max_tokens`. An empty `tools`, a tool without a name or an `only` not among them is an error.
pub fn required_call_grammar(format: ToolCallFormat, tools: &Json, only: Option<&str>) -> Result<String, String> {
    let key = arguments_key(format);
    let mut choices = Vec::new();
    for (i, tool) in tools.as_array().ok_or("tools must be an array")?.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let name = function.get("name").and_then(Json::as_str).ok_or_else(|| format!("tools[{i}] has no function name"))?;
        if only.is_some_and(|only| only != name) {
            continue;
        }
        // No `parameters`: the function takes no arguments (OpenAI's reading).
        let parameters = function
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false}));
        choices.push(serde_json::json!({
            "type": "object",
            "properties": {"name": {"const": name}, key: parameters},
            "required": ["name", key],
            "additionalProperties": false
        }));
    }
    let mut schema = match (choices.len(), only) {
        (0, Some(only)) => return Err(format!("tool_choice names {only:?}, which is not among tools")),
        (0, None) => return Err("tool_choice \"required\" needs at least one tool".into()),
        (1, _) => choices.pop().unwrap_or_default(),
        _ => serde_json::json!({ "anyOf": choices }),
    };
    if let Some(o) = schema.as_object_mut() {
        o.insert("x-guidance".into(), crate::constraint::json_layout());
    }
    let call = format!("call: %json {schema}");
    Ok(match format {
        ToolCallFormat::Hermes => format!("start: \"{HERMES_OPEN}\\n\" call \"\\n{HERMES_CLOSE}\"\n{call}\n"),
        ToolCallFormat::Llama3 | ToolCallFormat::Generic => format!("start: call\n{call}\n"),
    })
}

/// A JSON value as a template value (objects keep their key order).
pub(super) fn template_value(v: &Json) -> minijinja::Value {
    use minijinja::Value;
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => n.as_i64().map(Value::from).or_else(|| n.as_u64().map(Value::from)).unwrap_or_else(|| Value::from(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(template_value).collect::<Vec<_>>()),
        Json::Object(o) => Value::from_pairs(o.iter().map(|(k, v)| (k.as_str(), template_value(v))).collect::<Vec<_>>()),
    }
}

/// OpenAI's `tool_calls` with each `function.arguments` string that holds JSON parsed into
/// its value (HF templates write `arguments | tojson`, as llama.cpp hands them over).
pub fn arguments_as_objects(calls: &Json) -> Json {
    let mut calls = calls.clone();
    if let Some(items) = calls.as_array_mut() {
        for f in items.iter_mut().filter_map(|c| c.get_mut("function")) {
            if let Some(args) = f.get_mut("arguments") {
                if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str::<Json>(s).ok()) {
                    *args = parsed;
                }
            }
        }
    }
    calls
}

/// `messages` for a template that does not render tools: the tools described in the system
/// message, an assistant's calls written as the JSON it would have answered, tool results as
/// user messages naming their call.
pub fn describe_in_messages(messages: &[ChatMessage], tools: &Json) -> Vec<ChatMessage> {
    let prompt = generic_system_prompt(tools);
    let mut out = Vec::with_capacity(messages.len() + 1);
    match messages.first() {
        Some(m) if m.role == "system" => out.push(ChatMessage::new("system", format!("{}\n\n{prompt}", m.content))),
        _ => out.push(ChatMessage::new("system", prompt)),
    }
    let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        match (m.role.as_str(), &m.tool_calls) {
            ("assistant", Some(calls)) if m.content.trim().is_empty() => {
                let calls: Vec<Json> = arguments_as_objects(calls).as_array().into_iter().flatten().filter_map(|c| c.get("function").cloned()).collect();
                let json = if calls.len() == 1 { calls[0].to_string() } else { Json::Array(calls).to_string() };
                out.push(ChatMessage::new("assistant", json));
            }
            ("tool", _) => {
                let who = m.name.as_deref().or(m.tool_call_id.as_deref()).unwrap_or("a tool");
                out.push(ChatMessage::new("user", format!("Result of {who}: {}", m.content)));
            }
            _ => out.push(ChatMessage::new(m.role.clone(), m.content.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall { name: name.into(), arguments: arguments.into() }
    }

    #[test]
    fn the_format_follows_the_template() {
        assert_eq!(ToolCallFormat::for_template("{% for t in tools %}<tool_call>{% endfor %}"), ToolCallFormat::Hermes);
        assert_eq!(ToolCallFormat::for_template("{{ '<|python_tag|>' }}{% if tools %}{% endif %}"), ToolCallFormat::Llama3);
        assert_eq!(ToolCallFormat::for_template("{% for m in messages %}{{ m.content }}{% endfor %}"), ToolCallFormat::Generic);
    }

    #[test]
    fn text_that_may_become_a_call_is_held() {
        let h = ToolCallFormat::Hermes;
        assert_eq!(h.hold_from("Let me check.", 0), 13);
        assert_eq!(h.hold_from("Let me check.<tool", 0), 13);
        assert_eq!(h.hold_from("Let me <tool_call>{\"na", 0), 7);
        // Searched from what was shown: the same answers.
        assert_eq!((h.hold_from("Let me <tool_call>{\"na", 3), h.hold_from("Let me check.<tool", 13)), (7, 13));
        assert_eq!(h.hold_from("a < b", 0), 5);
        assert_eq!(h.hold_from("é<", 0), "é".len());
        let g = ToolCallFormat::Generic;
        assert_eq!((g.hold_from("", 0), g.hold_from("  ", 0), g.hold_from("\n{\"name\"", 0), g.hold_from("<|python", 0)), (0, 2, 1, 0));
        assert_eq!(g.hold_from("Paris is the capital.", 0), 21);
    }

    #[test]
    fn hermes_calls_with_text_around_them() {
        let out = "I will look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"now\", \"arguments\": {}}</tool_call>";
        let (content, calls) = parse_tool_calls(ToolCallFormat::Hermes, out);
        assert_eq!(content, "I will look.");
        assert_eq!(calls, vec![call("get_weather", "{\"city\":\"Paris\"}"), call("now", "{}")]);
        // Cut before its end (max_tokens) but whole JSON: still a call.
        let (_, calls) = parse_tool_calls(ToolCallFormat::Hermes, "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}");
        assert_eq!(calls, vec![call("f", "{\"a\": 1}")]);
        // Not JSON, or no name: the text as it was.
        for bad in ["<tool_call>{\"name\": \"f\", \"argu", "<tool_call>{\"arguments\": {}}</tool_call>", "no call"] {
            assert_eq!(parse_tool_calls(ToolCallFormat::Hermes, bad), (bad.to_owned(), vec![]));
        }
    }

    #[test]
    fn json_answers() {
        let l = ToolCallFormat::Llama3;
        assert_eq!(parse_tool_calls(l, "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"x\": [1, 2]}}").1, vec![call("f", "{\"x\":[1,2]}")]);
        assert_eq!(parse_tool_calls(l, "{\"name\": \"f\", \"parameters\": {}}; {\"name\": \"g\", \"parameters\": {\"s\": \"ab\"}}").1.len(), 1 + 1);
        let g = ToolCallFormat::Generic;
        assert_eq!(parse_tool_calls(g, " {\"name\": \"f\", \"arguments\": {\"q\": \"é\\n\"}}\n").1, vec![call("f", "{\"q\":\"é\\n\"}")]);
        assert_eq!(
            parse_tool_calls(g, "{\"tool_calls\": [{\"name\": \"a\"}, {\"function\": {\"name\": \"b\", \"arguments\": \"{}\"}}]}").1,
            vec![call("a", "{}"), call("b", "{}")]
        );
        assert_eq!(parse_tool_calls(g, "{\"answer\": 42}"), ("{\"answer\": 42}".to_owned(), vec![]));
        assert_eq!(parse_tool_calls(g, "{\"name\": 3}").1, vec![]);
    }

    #[test]
    fn tool_unaware_templates_get_the_tools_in_the_system_message() {
        let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let calls = serde_json::json!([{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
        let msgs = vec![
            ChatMessage::new("user", "Weather?"),
            ChatMessage { role: "assistant".into(), tool_calls: Some(calls), ..Default::default() },
            ChatMessage { role: "tool".into(), content: "18 C".into(), tool_call_id: Some("c1".into()), ..Default::default() },
        ];
        let out = describe_in_messages(&msgs, &tools);
        assert_eq!(out.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant", "user"]);
        assert!(out[0].content.contains("get_weather"));
        assert_eq!(out[2].content, "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}");
        assert_eq!(out[3].content, "Result of c1: 18 C");
        let with_system = describe_in_messages(&[ChatMessage::new("system", "Be brief.")], &tools);
        assert_eq!(with_system.len(), 1);
        assert!(with_system[0].content.starts_with("Be brief.\n\n"));
    }

    #[test]
    fn the_generic_prompt_lists_the_tools() {
        let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
        let p = generic_system_prompt(&tools);
        assert!(p.contains("\"get_weather\"") && p.contains("\"arguments\""));
    }

    #[test]
    fn required_call_grammars_name_the_tools_and_their_schemas() {
        let tools = serde_json::json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}
        ]);
        let generic = required_call_grammar(ToolCallFormat::Generic, &tools, None).unwrap();
        assert!(generic.starts_with("start: call\ncall: %json {\"anyOf\":"), "{generic}");
        assert!(generic.contains("\"const\":\"get_weather\"") && generic.contains("\"const\":\"now\"") && generic.contains("\"arguments\""));
        let llama = required_call_grammar(ToolCallFormat::Llama3, &tools, Some("now")).unwrap();
        assert!(
            llama.contains("\"parameters\":{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}")
                && !llama.contains("get_weather")
                && !llama.contains("anyOf"),
            "{llama}"
        );
        let hermes = required_call_grammar(ToolCallFormat::Hermes, &tools, Some("get_weather")).unwrap();
        assert!(hermes.starts_with("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {"), "{hermes}");
        assert!(required_call_grammar(ToolCallFormat::Hermes, &tools, Some("nope")).unwrap_err().contains("\"nope\""));
        assert!(required_call_grammar(ToolCallFormat::Generic, &serde_json::json!([]), None).is_err());
        assert!(required_call_grammar(ToolCallFormat::Generic, &serde_json::json!([{"function": {}}]), None).is_err());
        assert!(required_call_grammar(ToolCallFormat::Generic, &serde_json::json!({}), None).is_err());
    }
}
