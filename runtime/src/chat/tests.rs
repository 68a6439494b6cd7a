//! Tests of chat templates: real-model template styles, Python compatibility (methods,
//! `tojson`, float repr, strftime), typed errors, the sandbox's limits and the fallbacks.

use super::json::python_float_repr;
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

/// The tool parts of Qwen 2.5's template (abridged): `tools` rendered with `tojson`, an
/// assistant's `tool_calls` with `arguments | tojson` (parsed from OpenAI's JSON string, as
/// llama.cpp hands them over), `role: "tool"` results.
const QWEN_TOOLS: &str = r#"{%- if tools %}
<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ "\n" }}{{ tool | tojson }}
{%- endfor %}
</tools>
Return each call in <tool_call></tool_call> tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls is defined %}
<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
{%- set tool_call = tool_call.function %}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}"#;

#[test]
fn tools_and_tool_calls_reach_a_tool_template() {
    let t = tmpl(QWEN_TOOLS);
    assert_eq!(t.tool_call_format(), tools::ToolCallFormat::Hermes);
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "required": ["city"]}}}]);
    let calls = serde_json::json!([{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
    let messages = vec![
        ChatMessage::new("user", "Weather?"),
        ChatMessage { role: "assistant".into(), tool_calls: Some(calls), ..Default::default() },
        ChatMessage { role: "tool".into(), content: "18 C".into(), tool_call_id: Some("c1".into()), ..Default::default() },
    ];
    let out = t.apply_with_tools(&messages, Some(&tools), false).unwrap();
    // Python's json.dumps spacing, the schema's key order kept.
    assert!(out.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", \"required\": [\"city\"]}}}</tools>"), "{out}");
    assert!(out.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"), "{out}");
    assert!(out.contains("<tool_response>\n18 C\n</tool_response>"), "{out}");
    // Without tools the template sees none.
    assert!(!t.apply(&msgs(&[("user", "Hi")]), false).unwrap().contains("# Tools"));
    // A message's content may be null in JSON (an assistant that only calls tools).
    let m: ChatMessage = serde_json::from_str(r#"{"role": "assistant", "content": null, "tool_calls": []}"#).unwrap();
    assert_eq!((m.content.as_str(), m.tool_calls.is_some()), ("", true));
}
