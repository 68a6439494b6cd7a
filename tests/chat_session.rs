//! What a chat session needs beyond one answer. Turns that continue the cached conversation: a generation keeps the positions its
//! prompt shares with the cache and prefills only the rest. Its logits equal, bit for bit, a
//! fresh session's that ran the same tokens in the same passes (every KV type, CPU and GPU;
//! the cache's rows past the shared prefix, and a quantized cache's f16 copies of them, must
//! never be read); a quantized cache whose copies no longer hold what the next query reads
//! falls back to its sink; f32 / f16 caches agree with one fresh prefill of the whole prompt
//! within the batched-vs-not difference. Also: a full context ends an answer with "length",
//! log-probabilities are the model's own, and an answer that calls a tool ends with its calls
//! parsed. A synthetic model (no download); no GPU adapter is a failure.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use webgguf::engine::{FinishReason, Next, Session, SessionOptions};
use webgguf::gpu::GpuBackend;
use webgguf::kv_cache::{KvType, KV_SINK};
use webgguf::model::{Backend, CpuBackend, Logits};
use webgguf::quantize::FileType;
use webgguf::sampler::{Sampler, SamplerConfig, StopConditions};
use webgguf::synth::{synth_file, SynthOptions, SynthSpec};
use webgguf::tokenizer::Tokenizer;

const PROMPT: [u32; 10] = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111];
const EXTRA: [u32; 5] = [114, 108, 100, 33, 10];

fn model_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let mut spec = SynthSpec::from_preset("llama-3.2-1b").expect("preset");
        let group = spec.n_heads / spec.n_kv_heads;
        (spec.n_layers, spec.d_model, spec.n_kv_heads, spec.head_dim, spec.ffn_dim, spec.n_vocab) = (2, 256, 1, 64, 512, 300);
        spec.n_heads = group;
        let dir = std::env::temp_dir().join(format!("webgguf-chat-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("prefix.gguf");
        let opts = SynthOptions { ftype: FileType::Q8_0, mix: Default::default(), seed: 11, threads: 1, name: "prefix".into() };
        synth_file(&spec, None, &opts, &path, None, &mut |_| {}).expect("synth");
        path
    })
}

fn session<B: Backend>(mut backend: B, kv: KvType, kv_recent: usize, reuse_prefix: bool, n_ctx: usize) -> (Session<B>, Tokenizer) {
    let (gguf, model) = webgguf::loader::load_files(&[model_file().to_owned()], &mut backend).expect("load");
    let tok = Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer");
    (Session::new(backend, model, SessionOptions { kv, n_ctx, kv_recent, reuse_prefix }).expect("session"), tok)
}

/// Greedy with the end tokens banned (a random model would end at random).
fn sampler(tok: &Tokenizer) -> Sampler {
    let bias = tok.eog_ids().iter().map(|&id| (id, f32::NEG_INFINITY)).collect();
    Sampler::new(SamplerConfig { logit_bias: bias, ..SamplerConfig::greedy() }, 300).expect("sampler")
}

/// Generates `n` tokens after `prompt`; returns them and the prompt tokens reused.
fn generate<B: Backend>(s: &mut Session<B>, tok: &Tokenizer, prompt: &[u32], n: usize) -> (Vec<u32>, usize) {
    let mut smp = sampler(tok);
    let stop = StopConditions { max_tokens: Some(n), ..Default::default() };
    let mut gen = s.start_text(tok, prompt, &smp, &[]);
    let reused = gen.reused();
    while !gen.is_done() {
        let next = s.run_pass(&gen).expect("pass");
        s.take(&mut gen, next, tok, &mut smp, &stop, false).expect("take");
    }
    (s.finish_text(gen).ids, reused)
}

/// The last position's logits of the first pass of a generation of `prompt`, and the prompt
/// tokens it reused.
fn continuation<B: Backend>(s: &mut Session<B>, tok: &Tokenizer, prompt: &[u32]) -> (Vec<f32>, usize) {
    let gen = s.start_text(tok, prompt, &sampler(tok), &[]);
    match s.run_pass(&gen).expect("pass") {
        Next::Logits(l) => (l, gen.reused()),
        Next::Id(_) => panic!("the biased sampler reads logits"),
    }
}

/// One backend and cache type: turn 1 generates 6 tokens after PROMPT (5 of them evaluated);
/// turn 2's prompt keeps 3 of them and adds EXTRA (the cache's last 2 rows are stale), turn 3
/// continues everything cached. Each continuation equals a fresh session's same passes.
fn check<B: Backend>(name: &str, open: impl Fn(bool, usize) -> (Session<B>, Tokenizer), kv_recent: usize) {
    let (mut a, tok) = open(true, kv_recent);
    let (gen, reused) = generate(&mut a, &tok, &PROMPT, 6);
    assert_eq!(reused, 0, "{name}: a first generation has nothing to reuse");
    assert_eq!(a.tokens(), [&PROMPT[..], &gen[..5]].concat(), "{name}: the cache's tokens");
    let turn2 = [&PROMPT[..], &gen[..3], &EXTRA[..]].concat();
    let (got, reused) = continuation(&mut a, &tok, &turn2);
    // With few copies (kv_recent 4), the query at 13 reads copies of 10..13, and the decode
    // steps at 14 replaced 10's: only the sink is kept.
    let keep = if kv_recent == 4 { KV_SINK } else { PROMPT.len() + 3 };
    assert_eq!(reused, keep, "{name}: turn 2 reuses");
    let (mut b, _) = open(false, kv_recent);
    b.eval(&PROMPT, Logits::Last).expect("prompt");
    for &id in &gen[..3] {
        b.eval(&[id], Logits::Last).expect("step");
    }
    b.rewind(keep);
    let want = b.eval(&turn2[keep..], Logits::Last).expect("rest");
    assert!(got == want, "{name}: turn 2's logits differ from a fresh session's same passes");

    // Turn 3: everything cached (turn 2's prompt) and more.
    let turn3 = [&turn2[..], &[65, 66][..]].concat();
    let (got, reused) = continuation(&mut a, &tok, &turn3);
    assert_eq!(reused, turn2.len(), "{name}: turn 3 reuses all of turn 2");
    let want = b.eval(&[65, 66], Logits::Last).expect("turn 3");
    assert!(got == want, "{name}: turn 3's logits differ");
}

fn kv_types() -> [(KvType, usize); 6] {
    [(KvType::F32, 0), (KvType::F16, 0), (KvType::Q8, 64), (KvType::Q8, 4), (KvType::Q4, 64), (KvType::Q4, 0)]
}

#[test]
fn reused_prefix_equals_the_same_passes_from_empty_on_the_cpu() {
    for (kv, recent) in kv_types() {
        check(&format!("cpu {kv:?} recent {recent}"), |reuse, r| session(CpuBackend::new(), kv, r, reuse, 64), recent);
    }
}

#[test]
fn reused_prefix_equals_the_same_passes_from_empty_on_the_gpu() {
    for (kv, recent) in kv_types() {
        let open = |reuse, r| session(GpuBackend::open().expect("a GPU adapter (CI installs Mesa lavapipe)"), kv, r, reuse, 64);
        check(&format!("gpu {kv:?} recent {recent}"), open, recent);
    }
}

/// Reuse against one fresh prefill of the whole prompt: not the same passes, so the
/// difference is that of a batched pass against single-token ones.
#[test]
fn reused_prefix_agrees_with_a_fresh_prefill() {
    for kv in [KvType::F32, KvType::F16] {
        let (mut a, tok) = session(CpuBackend::new(), kv, 0, true, 64);
        let (gen, _) = generate(&mut a, &tok, &PROMPT, 4);
        let turn2 = [&PROMPT[..], &gen[..], &EXTRA[..]].concat();
        let (got, reused) = continuation(&mut a, &tok, &turn2);
        assert_eq!(reused, PROMPT.len() + 3);
        let (mut c, _) = session(CpuBackend::new(), kv, 0, false, 64);
        let want = c.eval(&turn2, Logits::Last).expect("fresh");
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("{kv:?}: max |reused - fresh| = {diff} (max |logit| {scale})");
        assert!(diff <= 1e-3 * scale, "{kv:?}: reused and fresh logits differ by {diff}");
        assert_eq!(webgguf::sampler::argmax(&got).unwrap(), webgguf::sampler::argmax(&want).unwrap());
    }
}

#[test]
fn a_full_context_ends_the_answer_with_length() {
    let (mut s, tok) = session(CpuBackend::new(), KvType::F16, 0, true, 24);
    let (ids, _) = generate(&mut s, &tok, &PROMPT, 100);
    // Positions 10..23 take 14 generated tokens; the 15th is sampled from position 23.
    assert_eq!(ids.len(), 24 - PROMPT.len() + 1);
    assert_eq!(s.n_past(), 24);
    let mut smp = sampler(&tok);
    let gen = s.start_text(&tok, &PROMPT, &smp, &[]);
    assert_eq!(gen.reused(), PROMPT.len() - 1, "the prompt is cached but its last token");
    let mut gen = gen;
    let stop = StopConditions::default();
    while !gen.is_done() {
        let next = s.run_pass(&gen).expect("pass");
        s.take(&mut gen, next, &tok, &mut smp, &stop, false).expect("take");
    }
    assert_eq!(gen.finish_reason(), Some(FinishReason::Length));
}

#[test]
fn logprobs_are_the_models_own() {
    let (mut s, tok) = session(CpuBackend::new(), KvType::F16, 0, true, 64);
    let mut smp = Sampler::new(SamplerConfig::greedy(), 300).expect("sampler");
    let stop = StopConditions { max_tokens: Some(5), ..Default::default() };
    let mut gen = s.start_text(&tok, &PROMPT, &smp, &[]);
    gen.want_logprobs(3);
    let mut logits = Vec::new();
    while !gen.is_done() {
        let next = s.run_pass(&gen).expect("pass");
        if let Next::Logits(l) = &next {
            logits.push(l.clone());
        }
        s.take(&mut gen, next, &tok, &mut smp, &stop, false).expect("take");
    }
    let lps = gen.logprobs_from(0).to_vec();
    assert_eq!(lps.len(), gen.ids().len());
    assert!(!lps.is_empty());
    for (t, l) in lps.iter().zip(&logits) {
        // Greedy: the token is the most likely one; the alternatives are sorted.
        assert_eq!((t.top.len(), t.top[0].0, t.top[0].1), (3, t.id, t.logprob));
        assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1) && t.logprob <= 0.0);
        let z: f64 = l.iter().map(|&x| ((x - l[t.id as usize]) as f64).exp()).sum();
        assert!((t.logprob as f64 + z.ln()).abs() < 1e-4, "logprob {} vs {}", t.logprob, -z.ln());
    }
    assert!(gen.logprobs_from(lps.len()).is_empty());
}

/// A tool call as SmolLM2's template (which does not render tools: they go in the system
/// message) asks for it; the answer is forced, as a replay forces it (a 135 M model calls
/// nothing reliably). Also Hermes' format with text before the call, and an answer that only
/// looks like a call.
#[test]
fn tool_calls_are_parsed_from_the_answer() {
    use webgguf::chat::tools::{ToolCall, ToolCallFormat};
    use webgguf::chat::{ChatMessage, ChatTemplate};
    let mut backend = CpuBackend::new();
    let (gguf, model) = webgguf::loader::load_files(&[webgguf_tests::model_path("SmolLM2-135M-Instruct.Q4_1.gguf")], &mut backend).expect("load");
    let tok = Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer");
    let template = ChatTemplate::from_metadata(gguf.metadata(), "llama").expect("template");
    let mut s = Session::new(backend, model, SessionOptions { kv: KvType::F16, n_ctx: 512, ..Default::default() }).expect("session");
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let prompt = template.apply_with_tools(&[ChatMessage::new("user", "Weather in Paris?")], Some(&tools), true).expect("render");
    assert!(prompt.starts_with("<|im_start|>system\nYou can call these tools") && prompt.contains("\"get_weather\""), "{prompt}");
    assert_eq!(template.tool_call_format(), ToolCallFormat::Generic);
    let prompt = tok.tokenize(&prompt, false, true).expect("tokenize");
    let eot = tok.tokenize("<|im_end|>", false, true).expect("tokenize");
    let mut run = |answer: &str, format: ToolCallFormat| {
        let forced = [tok.tokenize(answer, false, false).expect("tokenize"), eot.clone()].concat();
        let mut smp = Sampler::new(SamplerConfig::greedy(), tok.n_vocab()).expect("sampler");
        let mut gen = s.start_text(&tok, &prompt, &smp, &forced);
        gen.want_tool_calls(format);
        let stop = StopConditions { max_tokens: Some(64), ..Default::default() };
        let mut shown = String::new();
        while !gen.is_done() {
            let next = s.run_pass(&gen).expect("pass");
            shown += &s.take(&mut gen, next, &tok, &mut smp, &stop, false).expect("take");
        }
        let g = s.finish_text(gen);
        (shown, g.finish_reason, g.tool_calls, g.text)
    };
    let (shown, finish, calls, text) = run(r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#, ToolCallFormat::Generic);
    assert_eq!((shown.as_str(), finish, text.as_str()), ("", FinishReason::ToolCalls, ""), "the call is not shown as text");
    assert_eq!(calls, vec![ToolCall { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }]);
    let (shown, finish, calls, _) = run("Let me see. <tool_call>{\"name\": \"now\"}</tool_call>", ToolCallFormat::Hermes);
    assert_eq!((shown.as_str(), finish, calls.len()), ("Let me see. ", FinishReason::ToolCalls, 1));
    let (shown, finish, calls, _) = run(r#"{"answer": 42}"#, ToolCallFormat::Generic);
    assert_eq!((shown.as_str(), finish, calls.len()), (r#"{"answer": 42}"#, FinishReason::Stop, 0), "held text that is no call is shown at the end");
}
