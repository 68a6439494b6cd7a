// The npm package in headless Chromium (playwright-core, /usr/bin/chromium), as an app uses
// it: pkg-scripts/test-npm packs it, installs the tarball into a scratch app
// ($WEBGGUF_APP_DIR), serves that app with pkg-scripts/serve-faults ($WEBGGUF_APP_URL) and
// writes what the native CLI generates for the same requests ($WEBGGUF_APP_DIR/expected.json).
//
// WebGPU here is Chromium's SwiftShader adapter (--enable-unsafe-webgpu): a SmolLM2 pass takes
// seconds, so the WebGPU checks are a few tokens long; the CPU ones run longer generations.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { LAUNCH } from "./chromium.mjs";

const APP = process.env.WEBGGUF_APP_URL; // http://127.0.0.1:PORT/ (the app root)
const APP_DIR = process.env.WEBGGUF_APP_DIR;
const ARTIFACTS = process.env.WEBGGUF_ARTIFACTS ?? "tests/artifacts";
if (!APP || !APP_DIR) throw new Error("run through pkg-scripts/test-npm (WEBGGUF_APP_URL, WEBGGUF_APP_DIR)");
const expected = JSON.parse(fs.readFileSync(path.join(APP_DIR, "expected.json"), "utf8"));
const MODEL = expected.model; // a path relative to the app root
const GPU_TOKENS = 3;

let browser;
before(async () => {
  browser = await chromium.launch(LAUNCH);
});
after(async () => {
  await browser?.close();
});

/** A fresh page (own storage) on `file` with the package loaded; `init`: an init script. */
async function open(file = "test.html", init) {
  const context = await browser.newContext();
  if (init) await context.addInitScript({ path: path.join(import.meta.dirname, init) });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || process.env.WEBGGUF_TEST_VERBOSE) console.log(`[page ${m.type()}] ${m.text()}`);
  });
  page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
  await page.goto(APP + file);
  if (file === "test.html") await page.waitForFunction(() => window.ready === true);
  return { page, context };
}

const chatArgs = () => ({ model: MODEL, chat: expected.chat, text: expected.text });

test("CPU engine: streamed and whole chat completions, raw completion and tokenizer equal the native CLI", { timeout: 300_000 }, async () => {
  const { page, context } = await open();
  const r = await page.evaluate(async ({ model, chat, text }) => {
    const { createEngine } = window.webgguf;
    const progress = [];
    const engine = await createEngine({ model, device: "cpu", kvCache: chat.kv, contextLength: 512, cache: false, onProgress: (p) => progress.push(p) });
    const messages = [{ role: "user", content: chat.prompt }];
    const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: chat.max_tokens, temperature: 0 });
    const chunks = [];
    let streamed = "";
    for await (const c of stream) {
      chunks.push(c);
      streamed += c.choices[0].delta.content ?? "";
    }
    const whole = await engine.chat.completions.create({ messages, max_tokens: chat.max_tokens, temperature: 0 });
    const raw = await engine.completions.create({ prompt: text.prompt, max_tokens: text.max_tokens, temperature: 0 });
    const ids = await engine.tokenize(text.prompt);
    return {
      device: engine.device,
      progress: { n: progress.length, last: progress.at(-1) },
      streamed,
      chunks: chunks.length,
      first: chunks[0],
      last: chunks.at(-1),
      whole,
      raw,
      ids,
      back: await engine.detokenize(ids),
      stats: await engine.stats(),
    };
  }, chatArgs());
  assert.equal(r.device.device, "cpu");
  assert.equal(r.device.kernels, "simd128");
  assert.equal(r.progress.last.phase, "ready");
  assert.equal(r.streamed, expected.chat.text, "streamed chat = native greedy");
  assert.ok(r.chunks >= 3, `several chunks (${r.chunks})`);
  assert.equal(r.first.object, "chat.completion.chunk");
  assert.equal(r.first.choices[0].delta.role, "assistant");
  assert.equal(r.last.choices[0].finish_reason, expected.chat.finish_reason);
  assert.deepEqual(r.last.usage, {
    prompt_tokens: expected.chat.prompt_ids.length,
    completion_tokens: expected.chat.ids.length,
    total_tokens: expected.chat.prompt_ids.length + expected.chat.ids.length,
    prompt_tokens_details: { cached_tokens: 0 },
  });
  assert.equal(r.whole.object, "chat.completion");
  assert.equal(r.whole.choices[0].message.content, expected.chat.text);
  assert.equal(r.whole.choices[0].finish_reason, expected.chat.finish_reason);
  assert.equal(r.whole.usage.completion_tokens, expected.chat.ids.length);
  // The same prompt again: all of it but its last token comes from the cache.
  assert.equal(r.whole.usage.prompt_tokens_details.cached_tokens, expected.chat.prompt_ids.length - 1);
  assert.equal(r.raw.object, "text_completion");
  assert.equal(r.raw.choices[0].text, expected.text.text, "raw completion = native greedy");
  assert.deepEqual(r.ids, expected.text.prompt_ids, "tokenize = native");
  assert.equal(r.back, expected.text.prompt);
  assert.equal(r.stats.info.device, "cpu");
  assert.ok(r.stats.ttft_ms > 0 && r.stats.decode_tok_s > 0 && r.stats.wasmMemoryBytes > 0, JSON.stringify(r.stats));
  console.log(`CPU (wasm SIMD128, headless Chromium): ttft ${r.stats.ttft_ms.toFixed(0)} ms, decode ${r.stats.decode_tok_s.toFixed(1)} tok/s`);
  await context.close();
});

test("CPU engine: interrupt, AbortSignal and stream.controller stop a generation; bad requests and unload are typed errors", { timeout: 300_000 }, async () => {
  const { page, context } = await open();
  const r = await page.evaluate(async ({ model, chat }) => {
    const { createEngine } = window.webgguf;
    const engine = await createEngine({ model, device: "cpu", kvCache: chat.kv, contextLength: 128, cache: false });
    const messages = [{ role: "user", content: chat.prompt }];
    const out = {};
    const collect = async (stream, after, stop) => {
      let text = "";
      let n = 0;
      let finish = null;
      for await (const c of stream) {
        text += c.choices[0].delta.content ?? "";
        finish = c.choices[0].finish_reason ?? finish;
        if (++n === after) stop();
      }
      return { text, finish };
    };
    // interrupt() after the third chunk
    let s = await engine.chat.completions.create({ messages, stream: true, max_tokens: 40, temperature: 0 });
    out.interrupt = await collect(s, 3, () => engine.interrupt());
    // the request's AbortSignal
    const ac = new AbortController();
    s = await engine.chat.completions.create({ messages, stream: true, max_tokens: 40, temperature: 0 }, { signal: ac.signal });
    out.signal = await collect(s, 3, () => ac.abort());
    // the stream's own controller
    s = await engine.chat.completions.create({ messages, stream: true, max_tokens: 40, temperature: 0 });
    out.controller = await collect(s, 3, () => s.controller.abort());
    // breaking out of the loop leaves the engine free for the next request
    s = await engine.chat.completions.create({ messages, stream: true, max_tokens: 40, temperature: 0 });
    for await (const c of s) break;
    const again = await engine.chat.completions.create({ messages, max_tokens: 2, temperature: 0 });
    out.after_break = again.choices[0].message.content;
    const err = window.caught;
    out.bad_temperature = await err(() => engine.chat.completions.create({ messages, temperature: -1 }));
    out.no_messages = await err(() => engine.chat.completions.create({ messages: [] }));
    out.image_part = await err(() => engine.chat.completions.create({ messages: [{ role: "user", content: [{ type: "image_url", image_url: "x" }] }] }));
    out.too_long = await err(() => engine.completions.create({ prompt: "word ".repeat(200), max_tokens: 4 }));
    out.pre_aborted = await err(() => engine.chat.completions.create({ messages }, { signal: AbortSignal.abort() }));
    // seeded sampling reproduces; max_tokens 0 generates nothing
    const seeded = () => engine.chat.completions.create({ messages, max_tokens: 8, temperature: 1.0, seed: 7 });
    out.seeded = [(await seeded()).choices[0].message.content, (await seeded()).choices[0].message.content];
    out.zero = await engine.completions.create({ prompt: "Hello", max_tokens: 0 });
    await engine.unload();
    out.unloaded = await err(() => engine.tokenize("x"));
    return out;
  }, chatArgs());
  for (const k of ["interrupt", "signal", "controller"]) {
    assert.equal(r[k].finish, "abort", `${k}: finish_reason`);
    assert.ok(expected.chat.long_text.startsWith(r[k].text) && r[k].text.length > 0 && r[k].text.length < expected.chat.long_text.length, `${k}: a prefix of the greedy answer: ${JSON.stringify(r[k].text)}`);
  }
  assert.equal(r.after_break, expected.chat.two_tokens);
  assert.deepEqual([r.bad_temperature.name, r.bad_temperature.code, r.bad_temperature.webggufError], ["InvalidRequestError", "options", true]);
  assert.equal(r.no_messages.code, "options");
  assert.equal(r.image_part.code, "options");
  assert.deepEqual([r.too_long.name, r.too_long.code], ["ContextLengthError", "context_length"]);
  assert.deepEqual([r.pre_aborted.name, r.pre_aborted.code], ["AbortError", "aborted"]);
  assert.equal(r.seeded[0], r.seeded[1], "same seed, same text");
  assert.equal(r.zero.choices[0].text, "");
  assert.equal(r.zero.choices[0].finish_reason, "length");
  assert.deepEqual([r.unloaded.name, r.unloaded.code], ["UnloadedError", "unloaded"]);
  await context.close();
});

// Chat features over the CPU path, where a reused prefix gives the same bits as a fresh prefill.
test("CPU engine: a second chat turn reuses the cache and answers as a fresh engine; logprobs; context overflow; unsupported fields are refused", { timeout: 300_000 }, async () => {
  const { page, context } = await open();
  const r = await page.evaluate(async ({ model, chat }) => {
    const { createEngine } = window.webgguf;
    const err = window.caught;
    const opts = { model, device: "cpu", kvCache: chat.kv, contextLength: 512, cache: false };
    const engine = await createEngine(opts);
    const fresh = await createEngine({ ...opts, reusePrefix: false });
    const messages = [{ role: "user", content: chat.prompt }];
    const t1 = await engine.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
    const turn2 = [...messages, t1.choices[0].message, { role: "user", content: "Say it again in one short sentence." }];
    const ask = { messages: turn2, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2 };
    const t2 = await engine.chat.completions.create(ask);
    const stats = await engine.stats();
    const f2 = await fresh.chat.completions.create(ask);
    const streamed = [];
    for await (const c of await engine.chat.completions.create({ ...ask, stream: true })) streamed.push(...(c.choices[0].logprobs?.content ?? []));
    const legacy = await engine.completions.create({ prompt: "Hello", max_tokens: 3, temperature: 0, logprobs: 2 });
    const refused = {};
    const tools = [{ type: "function", function: { name: "get_weather", description: "The weather in a city", parameters: { type: "object", properties: { city: { type: "string", maxLength: 20 } }, required: ["city"] } } }];
    for (const [field, value] of [["tool_choice", { type: "function", function: { name: "nope" } }], ["n", 2], ["top_logprobs", 2], ["grammar", 'root ::= "a'], ["response_format", { type: "xml" }]]) {
      refused[field] = await err(() => engine.chat.completions.create({ messages, tools, [field]: value }));
    }
    // Structured output: a JSON schema (nested object, array, enum, numbers, a constant with
    // escapes) and a GBNF grammar hold the answer; streamed too.
    const schema = {
      type: "object",
      properties: {
        name: { type: "string", maxLength: 16 },
        age: { type: "integer", minimum: 0, maximum: 120 },
        pets: { type: "array", maxItems: 2, items: { type: "object", properties: { kind: { enum: ["cat", "dog"] }, weight: { type: "number" } }, required: ["kind", "weight"], additionalProperties: false } },
        motto: { const: 'say "hi"\\n\tgo' },
      },
      required: ["name", "age", "pets", "motto"],
      additionalProperties: false,
    };
    const person = (extra) => engine.chat.completions.create({ messages: [{ role: "user", content: "Describe a person as JSON." }], max_tokens: 160, ...extra });
    const structured = [];
    for (const extra of [{ temperature: 0 }, { temperature: 1, seed: 1 }, { temperature: 1, seed: 2 }]) {
      structured.push((await person({ ...extra, response_format: { type: "json_schema", json_schema: { name: "person", schema } } })).choices[0]);
    }
    let streamedJson = "";
    for await (const c of await person({ temperature: 0, stream: true, response_format: { type: "json_schema", json_schema: { name: "person", schema } } })) streamedJson += c.choices[0].delta.content ?? "";
    const yesNo = (await engine.chat.completions.create({ messages: [{ role: "user", content: "Is water wet?" }], max_tokens: 8, temperature: 0, grammar: 'root ::= ("yes" | "no") "."' })).choices[0];
    // Tools: shown to the model (SmolLM2's template does not render them: the system message
    // describes them); a conversation with a call and its result renders and is answered.
    const toolPrompt = await engine.applyChatTemplate(messages, true, tools);
    const withTools = await engine.chat.completions.create({ messages, tools, max_tokens: 24, temperature: 0 });
    const called = [...messages, { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } }] }, { role: "tool", tool_call_id: "call_1", content: "18 C, sunny" }];
    const afterCall = await engine.chat.completions.create({ messages: called, tools, max_tokens: 8, temperature: 0 });
    // tool_choice "required" and a named function hold the answer to one call (streamed too).
    const both = [...tools, { type: "function", function: { name: "now", description: "The time" } }];
    const required = await engine.chat.completions.create({ messages, tools: both, tool_choice: "required", max_tokens: 60, temperature: 0 });
    const named = await engine.chat.completions.create({ messages, tools: both, tool_choice: { type: "function", function: { name: "now" } }, max_tokens: 60, temperature: 1, seed: 3 });
    const streamedCalls = [];
    let streamedFinish;
    for await (const c of await engine.chat.completions.create({ messages, tools: both, tool_choice: "required", max_tokens: 60, temperature: 0, stream: true })) {
      streamedCalls.push(...(c.choices[0]?.delta?.tool_calls ?? []));
      streamedFinish = c.choices[0]?.finish_reason ?? streamedFinish;
    }
    // A 96-position context: a long chat fails or is cut in the middle; an answer fills it.
    const small = await createEngine({ ...opts, contextLength: 96 });
    const long = [{ role: "system", content: "You are brief." }, { role: "user", content: "Hi." }];
    for (let i = 0; i < 8; i++) long.push({ role: "assistant", content: `Answer number ${i} is here.` }, { role: "user", content: `Question number ${i + 1}?` });
    const tooLong = await err(() => small.chat.completions.create({ messages: long, max_tokens: 8, temperature: 0 }));
    const cut = await small.chat.completions.create({ messages: long, max_tokens: 8, temperature: 0, context_overflow: "truncate-middle" });
    const next = [...long, cut.choices[0].message, { role: "user", content: "Last one?" }];
    const cut2 = await small.chat.completions.create({ messages: next, max_tokens: 8, temperature: 0, context_overflow: "truncate-middle" });
    const fill = await small.completions.create({ prompt: "Once upon a time", max_tokens: 500, temperature: 0, logit_bias: Object.fromEntries((await small.tokenize("<|im_end|><|endoftext|>", { addSpecial: false, parseSpecial: true })).map((id) => [id, -100])) });
    for (const e of [engine, fresh, small]) await e.unload();
    return { t1: t1.usage, t2, f2, stats, streamed, legacy, refused, structured, streamedJson, yesNo, toolPrompt, withTools, afterCall, required, named, streamedCalls, streamedFinish, tooLong, cut, cut2, fill };
  }, chatArgs());
  assert.ok(r.t2.usage.prompt_tokens_details.cached_tokens > r.t1.prompt_tokens, JSON.stringify(r.t2.usage));
  assert.equal(r.stats.reused_tokens, r.t2.usage.prompt_tokens_details.cached_tokens);
  assert.equal(r.stats.prompt_tokens + r.stats.reused_tokens, r.t2.usage.prompt_tokens);
  assert.equal(r.f2.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(r.t2.choices[0].message.content, r.f2.choices[0].message.content, "turn 2 from the cache = from a fresh engine");
  assert.deepEqual(r.t2.choices[0].logprobs, r.f2.choices[0].logprobs);
  const lps = r.t2.choices[0].logprobs.content;
  assert.equal(lps.length, r.t2.usage.completion_tokens);
  for (const t of lps) {
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(t.logprob <= 0 && t.top_logprobs[0].logprob >= t.logprob && t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob, JSON.stringify(t));
    assert.equal(t.top_logprobs[0].token, t.token, "greedy: the most likely token");
    assert.deepEqual(t.bytes, [...new TextEncoder().encode(t.token)]);
  }
  assert.deepEqual(r.streamed, lps, "streamed logprobs = whole");
  const legacy = r.legacy.choices[0].logprobs;
  assert.equal(legacy.tokens.length, r.legacy.usage.completion_tokens);
  assert.equal(legacy.tokens.join(""), r.legacy.choices[0].text);
  assert.equal(legacy.text_offset[0], 0);
  assert.equal(Object.keys(legacy.top_logprobs[0]).length, 2);
  for (const [field, e] of Object.entries(r.refused)) assert.deepEqual([e.name, e.code, e.message.includes(field)], ["InvalidRequestError", "options", true], `${field}: ${e.message}`);
  for (const c of r.structured) {
    assert.equal(c.finish_reason, "stop", c.message.content);
    const v = JSON.parse(c.message.content);
    assert.deepEqual(Object.keys(v), ["name", "age", "pets", "motto"], c.message.content);
    assert.ok(typeof v.name === "string" && v.name.length <= 16 && Number.isInteger(v.age) && v.age >= 0 && v.age <= 120, c.message.content);
    assert.ok(v.pets.length <= 2 && v.pets.every((p) => ["cat", "dog"].includes(p.kind) && typeof p.weight === "number"), c.message.content);
    assert.equal(v.motto, 'say "hi"\\n\tgo');
  }
  assert.equal(r.streamedJson, r.structured[0].message.content, "streamed = whole");
  assert.ok(["yes.", "no."].includes(r.yesNo.message.content) && r.yesNo.finish_reason === "stop", JSON.stringify(r.yesNo));
  assert.ok(r.toolPrompt.includes("You can call these tools") && r.toolPrompt.includes('"get_weather"'), r.toolPrompt);
  for (const c of [r.withTools, r.afterCall]) {
    const choice = c.choices[0];
    assert.ok(["stop", "length", "tool_calls"].includes(choice.finish_reason), JSON.stringify(choice));
    if (choice.finish_reason === "tool_calls") assert.ok(choice.message.tool_calls.length > 0 && choice.message.tool_calls[0].type === "function");
    else assert.equal(typeof choice.message.content, "string");
  }
  for (const [c, only] of [[r.required, undefined], [r.named, "now"]]) {
    const choice = c.choices[0];
    assert.equal(choice.finish_reason, "tool_calls", JSON.stringify(choice));
    assert.equal(choice.message.tool_calls.length, 1, JSON.stringify(choice));
    const f = choice.message.tool_calls[0].function;
    assert.ok(only === undefined ? ["get_weather", "now"].includes(f.name) : f.name === only, JSON.stringify(f));
    const args = JSON.parse(f.arguments);
    if (f.name === "now") assert.deepEqual(args, {});
    else assert.ok(typeof args.city === "string" && args.city.length <= 20 && Object.keys(args).length === 1, f.arguments);
  }
  assert.equal(r.streamedFinish, "tool_calls");
  assert.deepEqual(r.streamedCalls.map((c) => c.function), r.required.choices[0].message.tool_calls.map((c) => c.function), "streamed call = whole");
  assert.deepEqual([r.tooLong.name, r.tooLong.code], ["ContextLengthError", "context_length"]);
  assert.ok(r.cut.usage.prompt_tokens <= 96 - 8, JSON.stringify(r.cut.usage));
  assert.ok(r.cut2.usage.prompt_tokens_details.cached_tokens > 0, `the next turn after a cut reuses the cache: ${JSON.stringify(r.cut2.usage)}`);
  assert.equal(r.fill.choices[0].finish_reason, "length");
  assert.equal(r.fill.usage.prompt_tokens + r.fill.usage.completion_tokens, 96 + 1, "positions 0..95 evaluated, the last token sampled from 95");
  await context.close();
});

test("Web Worker engine: streamed chat equals the native CLI; abort; errors arrive as their classes", { timeout: 300_000 }, async () => {
  const { page, context } = await open();
  const r = await page.evaluate(async ({ model, chat }) => {
    const { createWorkerEngine } = window.webgguf;
    const worker = new Worker("./node_modules/webgguf/worker.js", { type: "module" });
    const progress = [];
    const engine = await createWorkerEngine(worker, { model, device: "cpu", kvCache: chat.kv, contextLength: 512, cache: false, onProgress: (p) => progress.push(p.phase) });
    const messages = [{ role: "user", content: chat.prompt }];
    // The page stays responsive while the worker generates: count timer ticks meanwhile.
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    let text = "";
    for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: chat.max_tokens, temperature: 0 })) text += c.choices[0].delta.content ?? "";
    clearInterval(timer);
    const ac = new AbortController();
    let cut = "";
    let finish = null;
    let n = 0;
    for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 40, temperature: 0, signal: ac.signal })) {
      cut += c.choices[0].delta.content ?? "";
      finish = c.choices[0].finish_reason ?? finish;
      if (++n === 3) ac.abort();
    }
    const ids = await engine.tokenize("Hello world");
    const again = await engine.chat.completions.create({ messages, max_tokens: 2, temperature: 0, logprobs: true });
    const json = await engine.chat.completions.create({ messages, max_tokens: 40, temperature: 0, response_format: { type: "json_schema", json_schema: { schema: { type: "object", properties: { answer: { enum: ["Paris", "Lyon"] } }, required: ["answer"] } } } });
    const stats = await engine.stats();
    const bad = await window.caught(() => createWorkerEngine(new Worker("./node_modules/webgguf/worker.js", { type: "module" }), { model: model.replace(".gguf", "-missing.gguf"), device: "cpu" }));
    await engine.unload();
    worker.terminate();
    return { text, ticks, cut, finish, ids, again, json: json.choices[0].message.content, stats, bad, progress: progress.at(-1), device: engine.device.device };
  }, chatArgs());
  assert.equal(r.text, expected.chat.text, "worker chat = native greedy");
  assert.ok(r.ticks > 5, `the page kept running timers during generation (${r.ticks} ticks)`);
  assert.equal(r.finish, "abort");
  assert.ok(expected.chat.long_text.startsWith(r.cut) && r.cut.length > 0);
  assert.deepEqual(r.ids, expected.hello_ids);
  assert.equal(r.again.usage.prompt_tokens_details.cached_tokens, expected.chat.prompt_ids.length - 1, "the worker's engine reuses the cache");
  assert.equal(r.again.choices[0].logprobs.content.length, r.again.usage.completion_tokens);
  assert.ok(["Paris", "Lyon"].includes(JSON.parse(r.json).answer), r.json);
  assert.equal(r.stats.reused_tokens, expected.chat.prompt_ids.length - 1);
  assert.equal(r.progress, "ready");
  assert.equal(r.device, "cpu");
  assert.ok(r.stats.decode_tok_s > 0);
  assert.deepEqual([r.bad.name, r.bad.code], ["HttpError", "http"]);
  await context.close();
});

test("device auto without WebGPU runs on the CPU and says why; device webgpu is NoWebGPUError", { timeout: 300_000 }, async () => {
  const { page, context } = await open("test.html", "no-webgpu.js");
  const r = await page.evaluate(async ({ model, chat }) => {
    const { createEngine } = window.webgguf;
    const err = await window.caught(() => createEngine({ model, device: "webgpu", cache: false }));
    const engine = await createEngine({ model, device: "auto", kvCache: chat.kv, contextLength: 512, cache: false });
    const whole = await engine.chat.completions.create({ messages: [{ role: "user", content: chat.prompt }], max_tokens: chat.max_tokens, temperature: 0 });
    return { err, device: engine.device, text: whole.choices[0].message.content, hasGpu: "gpu" in navigator && navigator.gpu !== undefined };
  }, chatArgs());
  assert.equal(r.hasGpu, false);
  assert.deepEqual([r.err.name, r.err.code], ["NoWebGPUError", "no_webgpu"]);
  assert.equal(r.device.device, "cpu");
  assert.match(r.device.fallback, /WebGPU/);
  assert.equal(r.text, expected.chat.text);
  await context.close();
});

test("an adapter too small for the model: ModelTooLargeError with device webgpu, CPU fallback with auto", { timeout: 300_000 }, async () => {
  const { page, context } = await open("test.html", "small-adapter.js");
  const r = await page.evaluate(async ({ model }) => {
    const { createEngine } = window.webgguf;
    const err = await window.caught(() => createEngine({ model, device: "webgpu", cache: false }));
    const engine = await createEngine({ model, device: "auto", kvCache: "f32", contextLength: 256, cache: false });
    const whole = await engine.completions.create({ prompt: "The capital of France is", max_tokens: 2, temperature: 0 });
    return { err, device: engine.device, text: whole.choices[0].text };
  }, chatArgs());
  assert.deepEqual([r.err.name, r.err.code], ["ModelTooLargeError", "model_too_large"], r.err.message);
  assert.equal(r.device.device, "cpu");
  // The planner sees the adapter's limits before any weight is fetched.
  assert.match(r.device.fallback, /^not the GPU: /);
  assert.equal(r.text, expected.text.two_tokens);
  await context.close();
});

test("loading errors are typed: http, malformed, integrity, network, aborted, quota", { timeout: 600_000 }, async () => {
  const { page, context } = await open();
  const r = await page.evaluate(async ({ model, manifest }) => {
    const { createEngine } = window.webgguf;
    const attempt = (options) => window.caught(async () => (await createEngine({ device: "cpu", cache: false, retryDelayMs: 10, ...options })).unload());
    const ac = new AbortController();
    const aborted = attempt({ model, signal: ac.signal, onProgress: (p) => p.loaded > 1 << 20 && ac.abort() });
    return {
      http: await attempt({ model: "f/404/" + model }),
      html: await attempt({ model: "f/html/" + model }),
      integrity: await attempt({ model: { manifest: "f/wrongbytes@00002/" + manifest } }),
      network: await attempt({ model: "f/dropall/" + model, maxAttempts: 1 }),
      aborted: await aborted,
      quota: await attempt({ model: { manifest }, cache: true, requireCache: true, maxCacheBytes: 1000 }),
    };
  }, { model: MODEL, manifest: expected.manifest });
  console.log(JSON.stringify(r));
  assert.deepEqual([r.http.name, r.http.code], ["HttpError", "http"]);
  assert.deepEqual([r.html.name, r.html.code], ["ModelFormatError", "malformed"]);
  assert.deepEqual([r.integrity.name, r.integrity.code], ["IntegrityError", "integrity"]);
  assert.deepEqual([r.network.name, r.network.code], ["NetworkError", "network"]);
  assert.deepEqual([r.aborted.name, r.aborted.code], ["AbortError", "aborted"]);
  assert.deepEqual([r.quota.name, r.quota.code], ["QuotaError", "quota"]);
  await context.close();
});

// SwiftShader: a 37-token chat prefill takes ~45 s (shader compilation included), a decode
// step ~3 s; so 3 tokens of chat, then a 5-token raw prompt for the device loss.
test("WebGPU engine: a streamed chat completion equals the native CLI; a lost device mid-stream is recovered from the cache and the answer continues", { timeout: 600_000 }, async () => {
  const { page, context } = await open();
  const r = await page.evaluate(async ({ model, chat, text }) => {
    const { createEngine } = window.webgguf;
    const losses = [];
    const engine = await createEngine({ model, device: "webgpu", kvCache: "f32", contextLength: 64, onDeviceLost: (e) => losses.push(e) });
    let out = "";
    const messages = [{ role: "user", content: chat.prompt }];
    for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 3, temperature: 0 })) out += c.choices[0].delta.content ?? "";
    const stats = await engine.stats();
    let replayed = "";
    let chunks = 0;
    for await (const c of await engine.completions.create({ prompt: text.prompt, stream: true, max_tokens: 2, temperature: 0 })) {
      replayed += c.choices[0].text;
      if (++chunks === 1) await engine.loseDeviceForTesting();
    }
    const after = await engine.stats();
    // The replacement's cache holds the replayed conversation: a continuation reuses it.
    const more = await engine.completions.create({ prompt: text.prompt + replayed, max_tokens: 1, temperature: 0 });
    // A grammar on WebGPU: the logits are read back and masked.
    const yesNo = await engine.completions.create({ prompt: "Is the sky blue? Answer:", max_tokens: 3, temperature: 0, grammar: 'root ::= " yes" | " no"' });
    return { device: engine.device, out, replayed, stats, losses, after: after.deviceLosses, more: more.usage, yesNo: yesNo.choices[0] };
  }, chatArgs());
  assert.equal(r.device.device, "webgpu");
  assert.equal(r.device.gpuKernels, "exact", "the default on a fallback (software) adapter: SwiftShader");
  assert.equal(r.device.fallback, null);
  assert.ok(r.device.adapter && typeof r.device.adapter.adapter === "string");
  assert.equal(r.stats.info.device, "webgpu");
  assert.equal(r.out, expected.chat.gpu_prefix, "WebGPU chat completion = native greedy");
  assert.ok(r.stats.ttft_ms > 0 && r.stats.decode_tok_s > 0, JSON.stringify(r.stats));
  assert.equal(r.losses.length, 1, JSON.stringify(r.losses));
  assert.equal(r.losses[0].recoveredOn, "webgpu");
  assert.equal(r.after.length, 1);
  assert.equal(r.replayed, expected.text.two_tokens, "the answer continues after the device was lost");
  assert.ok(r.more.prompt_tokens_details.cached_tokens >= expected.text.prompt_ids.length - 1, `reuse after a lost device: ${JSON.stringify(r.more)}`);
  assert.ok([" yes", " no"].includes(r.yesNo.text) && r.yesNo.finish_reason === "stop", JSON.stringify(r.yesNo));
  console.log(`WebGPU (SwiftShader, headless Chromium): 37-token chat prompt ttft ${r.stats.ttft_ms.toFixed(0)} ms, decode ${r.stats.decode_tok_s.toFixed(2)} tok/s; device loss recovered in ${r.losses[0].recoveryMs.toFixed(0)} ms`);
  await context.close();
});

// The fast family (activations unrounded) on request: a 5-token raw prompt and 2 greedy tokens,
// the native CLI's (its CPU kernels round activations; these tokens' margins are wide).
test("WebGPU fast kernels (gpuKernels: \"fast\"): reported, and greedy tokens as the native CLI's; an unknown family is an InvalidRequestError", { timeout: 600_000 }, async () => {
  const { page, context } = await open();
  const r = await page.evaluate(async ({ model, text }) => {
    const { createEngine } = window.webgguf;
    const bad = await window.caught(() => createEngine({ model, device: "webgpu", gpuKernels: "turbo", cache: false }));
    const engine = await createEngine({ model, device: "webgpu", gpuKernels: "fast", kvCache: "f16", contextLength: 64 });
    const c = await engine.completions.create({ prompt: text.prompt, max_tokens: 2, temperature: 0 });
    return { bad, device: engine.device, out: c.choices[0].text };
  }, chatArgs());
  assert.deepEqual([r.bad.name, r.bad.code], ["InvalidRequestError", "options"]);
  assert.equal(r.device.device, "webgpu");
  assert.equal(r.device.gpuKernels, "fast");
  assert.equal(r.out, expected.text.two_tokens, "fast WebGPU greedy = native greedy");
  await context.close();
});

test("bundled by Vite: the main-thread and the worker engine complete as the native CLI", { timeout: 300_000 }, async () => {
  const q = new URLSearchParams({ model: `../../${MODEL}`, prompt: expected.text.prompt, max_tokens: String(expected.text.max_tokens) });
  const { page, context } = await open(`bundler/dist/index.html?${q}`);
  await page.waitForFunction(() => window.result !== undefined, null, { timeout: 240_000 });
  const r = await page.evaluate(() => window.result);
  assert.equal(r.error, undefined, r.error);
  assert.equal(r.main, expected.text.text, "main thread = native greedy");
  assert.equal(r.worker, expected.text.text, "worker = native greedy");
  await context.close();
});

/** Opens the demo on `device`, loads the model, asks the chat prompt for `maxTokens` greedy
 * tokens and checks the answer (`want`), the metrics line and the status. */
async function demoAnswer(device, maxTokens, want, timeout) {
  const { page, context } = await open(`index.html?model=${encodeURIComponent(MODEL)}&device=${device}`);
  await page.selectOption("#kv", expected.chat.kv);
  await page.click("#load");
  await page.waitForSelector("body[data-ready='1']", { timeout: 120_000 });
  await page.fill("#temperature", "0");
  await page.fill("#max-tokens", String(maxTokens));
  await page.fill("#prompt", expected.chat.prompt);
  await page.click("#send");
  await page.waitForSelector(".msg.assistant[data-done='1']", { timeout });
  assert.equal(await page.textContent(".msg.assistant"), want);
  assert.match(await page.textContent("#metrics"), /TTFT \d+ ms · prefill [\d.]+ tok\/s · decode [\d.]+ tok\/s/);
  assert.equal(await page.textContent("#status"), "Stopped at max tokens.");
  return { page, context };
}

test("the demo page end to end on the CPU: load with progress, streamed answer equal to the native CLI, metrics, badge; screenshot", { timeout: 300_000 }, async () => {
  const { page, context } = await demoAnswer("cpu", expected.chat.max_tokens, expected.chat.text, 120_000);
  assert.match(await page.textContent("#badge"), /^CPU · simd128/);
  assert.match(await page.textContent("#progress-text"), /^Loaded 93\.8 MiB/);
  // The stop button ends a long answer.
  await page.fill("#max-tokens", "200");
  await page.fill("#prompt", "Tell me a long story about a dragon.");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant")[1]?.textContent.length > 10);
  await page.click("#stop");
  await page.waitForSelector(".msg.assistant:nth-of-type(4)[data-done='1']", { timeout: 60_000 });
  assert.equal(await page.textContent("#status"), "Stopped.");
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, "demo-cpu.png"), fullPage: true });
  await context.close();
});

test("the demo page end to end on WebGPU (SwiftShader): device badge, streamed answer equal to the native CLI; screenshot", { timeout: 600_000 }, async () => {
  const { page, context } = await demoAnswer("webgpu", 3, expected.chat.gpu_prefix, 480_000);
  assert.match(await page.textContent("#badge"), /^WebGPU · /);
  assert.equal(await page.getAttribute("#badge", "class"), "badge webgpu");
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, "demo-webgpu.png"), fullPage: true });
  await context.close();
});

// A 1 B model: random weights in Llama-3.2-1B's exact shapes (16 layers, d 2048, 32/8 heads,
// ffn 8192, vocab 128256, tied embeddings), Q4_K_M, ~800 MB, written by `webgguf synth` with
// SmolLM2's tokenizer and chat template (pkg-scripts/test-npm). A one-token raw prompt and 2
// tokens: SwiftShader takes ~40 s per token of a 1 B model (a 5-token prompt: 216 s to the
// first token), the CPU (wasm SIMD128) well under a second. WebGPU first, in a fresh page:
// wasm memory never shrinks, so its size after the WebGPU load and generation is that load's
// peak (the CPU load afterwards holds the whole model in wasm memory).
test("a 1B model (synthetic Llama-3.2-1B shapes, Q4_K_M) loads and generates on the CPU and on WebGPU", { timeout: 600_000 }, async () => {
  const synth = expected.synth;
  assert.ok(synth.text.trim().length > 0, "the native answer is text (not padding tokens)");
  const t0 = performance.now();
  const { page, context } = await open();
  const r = await page.evaluate(async ({ synth }) => {
    const { createEngine } = window.webgguf;
    const run = async (device) => {
      const phases = new Set();
      let t = performance.now();
      const engine = await createEngine({ model: synth.model, device, kvCache: synth.kv, contextLength: 64, cache: false, onProgress: (p) => phases.add(p.phase) });
      const loadMs = performance.now() - t;
      t = performance.now();
      const whole = await engine.completions.create({ prompt: synth.prompt, max_tokens: synth.max_tokens, temperature: 0 });
      const generateMs = performance.now() - t;
      const out = { device: engine.device, loadMs, generateMs, phases: [...phases], text: whole.choices[0].text, usage: whole.usage, stats: await engine.stats() };
      await engine.unload();
      return out;
    };
    return { webgpu: await run("webgpu"), cpu: await run("cpu") };
  }, { synth });
  const mib = (b) => (b / 2 ** 20).toFixed(1);
  for (const [name, x] of Object.entries(r)) {
    console.log(`1B synthetic on ${name} (${x.device.device}${x.device.adapter ? " " + x.device.adapter.adapter : ""}, ${x.device.kernels}): load ${(x.loadMs / 1000).toFixed(1)} s, ` +
      `2 tokens ${(x.generateMs / 1000).toFixed(1)} s (ttft ${x.stats.ttft_ms.toFixed(0)} ms), wasm memory ${mib(x.stats.wasmMemoryBytes)} MiB, model ${mib(x.stats.modelBytes)} MiB: ${JSON.stringify(x.text)}`);
  }
  for (const [name, x] of Object.entries(r)) {
    assert.equal(x.device.device, name);
    assert.equal(x.device.fallback, null);
    assert.equal(x.stats.info.device, name);
    assert.ok(x.phases.includes("ready"), `${name}: progress phases ${x.phases}`);
    assert.deepEqual(x.usage, {
      prompt_tokens: synth.prompt_ids.length,
      completion_tokens: synth.ids.length,
      total_tokens: synth.prompt_ids.length + synth.ids.length,
      prompt_tokens_details: { cached_tokens: 0 },
    });
    assert.ok(x.stats.modelBytes > 750e6, `${name}: the whole 1 B model was loaded (${x.stats.modelBytes} bytes)`);
  }
  // The CPU path (wasm SIMD128) does the native `--kernels simd` arithmetic: the same text.
  assert.equal(r.cpu.device.kernels, "simd128");
  assert.equal(r.cpu.text, synth.text, "CPU: 1 B greedy = native CLI");
  // WebGPU: the same greedy tokens as the native CLI (as the SmolLM2 WebGPU test's gpu_prefix).
  assert.equal(r.webgpu.text, synth.text, "WebGPU: 1 B greedy = native CLI");
  // Streaming onto the GPU keeps wasm memory small: the header (tokenizer + tensor index), one
  // network chunk and the upload staging. Bound: 64 MiB, plus the tokenizer's tables, counted as
  // 4× the GGUF header (the token and merge strings are kept with a hash map and a merge-rank map
  // over them).
  const bound = 64 * 2 ** 20 + 4 * synth.header_bytes;
  assert.ok(r.webgpu.stats.wasmMemoryBytes <= bound, `WebGPU: peak wasm memory ${mib(r.webgpu.stats.wasmMemoryBytes)} MiB > ${mib(bound)} MiB (64 MiB + 4 × the ${mib(synth.header_bytes)} MiB header)`);
  // The CPU path holds the weights in wasm memory (below wasm32's 4 GiB).
  assert.ok(r.cpu.stats.wasmMemoryBytes >= r.cpu.stats.modelBytes * 0.9, `CPU: wasm memory ${mib(r.cpu.stats.wasmMemoryBytes)} MiB holds the model`);
  console.log(`1B synthetic test: ${((performance.now() - t0) / 1000).toFixed(0)} s in all; WebGPU wasm memory bound ${mib(bound)} MiB`);
  await context.close();
});
