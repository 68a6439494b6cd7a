// Every public call of the package, type-checked against the installed tarball by
// pkg-scripts/test-npm (tsc --noEmit). Not run: the browser tests exercise the behaviour.
import {
  AbortError,
  ContextLengthError,
  DeviceLostError,
  IntegrityError,
  ModelTooLargeError,
  NetworkError,
  NoWebGPUError,
  QuotaError,
  WebggufError,
  cachedModels,
  createEngine,
  createWorkerEngine,
  deleteCachedModel,
  errorFromCode,
  planModel,
  workerCachedModels,
  workerDeleteCachedModel,
  workerPlanModel,
} from "webgguf";
import type {
  CachedModel,
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionTool,
  ChatMessage,
  Completion,
  CompletionChunk,
  DeviceInfo,
  DeviceLossEvent,
  Engine,
  EngineStats,
  ErrorCode,
  FinishReason,
  LoadProgress,
  ModelPlan,
  Stream,
  TokenLogprob,
} from "webgguf";

export async function main(url: string): Promise<string> {
  const controller = new AbortController();
  // Plan from the header alone: the device, KV type and context createEngine would use, and why.
  const plan: ModelPlan = await planModel(url, { device: "auto", kvCache: "q8", contextLength: 8192, cache: true, signal: controller.signal });
  console.log(plan.device, plan.kv, plan.contextLength, plan.bytes.total, plan.bytes.limit, plan.reasons.join("; "), plan.headerBytes);
  const engine: Engine = await createEngine({
    model: url,
    device: "auto",
    kvCache: "q8",
    contextLength: 4096,
    reusePrefix: true,
    contextOverflow: "error",
    cache: true,
    requireCache: false,
    store: "opfs",
    maxCacheBytes: 2 ** 31,
    signal: controller.signal,
    maxAttempts: 5,
    retryDelayMs: 200,
    stallTimeoutMs: 30_000,
    onProgress: (p: LoadProgress) => console.log(p.phase, p.loaded, p.total, p.eta_s),
    onDeviceLost: (e: DeviceLossEvent) => console.log(e.message, e.recoveredOn, e.recoveryMs),
  });
  const device: DeviceInfo = engine.device;
  console.log(device.device, device.adapter?.adapter, device.kernels, device.fallback, engine.model);

  const messages: ChatMessage[] = [
    { role: "system", content: "Be brief." },
    { role: "user", content: [{ type: "text", text: "What is the capital of France?" }] },
  ];
  const stream: Stream<ChatCompletionChunk> = await engine.chat.completions.create({ messages, stream: true, max_tokens: 256 });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0].delta.content ?? "";
  stream.controller.abort();

  const whole: ChatCompletion = await engine.chat.completions.create(
    { messages, temperature: 0.7, top_p: 0.9, top_k: 40, min_p: 0.05, presence_penalty: 0.1, frequency_penalty: 0.1, repetition_penalty: 1.1, logit_bias: { "42": -100 }, seed: 1, stop: ["\n\n"], max_completion_tokens: 64 },
    { signal: controller.signal },
  );
  const reason: FinishReason = whole.choices[0].finish_reason;
  console.log(whole.choices[0].message.content, reason, whole.usage.total_tokens, whole.usage.prompt_tokens_details.cached_tokens);

  // The next turn (the cache keeps the conversation), with log-probabilities.
  messages.push(whole.choices[0].message, { role: "user", content: "And of Italy?" });
  const next: ChatCompletion = await engine.chat.completions.create({ messages, logprobs: true, top_logprobs: 3, context_overflow: "truncate-middle" });
  const lp: TokenLogprob | undefined = next.choices[0].logprobs?.content[0];
  console.log(lp?.token, lp?.logprob, lp?.bytes, lp?.top_logprobs[0]?.token);

  // Structured output: a JSON schema, or a GBNF grammar.
  const person: ChatCompletion = await engine.chat.completions.create({
    messages: [{ role: "user", content: "A person as JSON" }],
    response_format: { type: "json_schema", json_schema: { name: "person", schema: { type: "object", properties: { name: { type: "string" } }, required: ["name"] } } },
  });
  const yesNo: Completion = await engine.completions.create({ prompt: "Is the sky blue?", grammar: 'root ::= "yes" | "no"', logprobs: 2 });
  console.log(JSON.parse(person.choices[0].message.content ?? "{}").name, yesNo.choices[0].text, yesNo.choices[0].logprobs?.token_logprobs);

  // Tools: calls come back as tool_calls; their results go back as role "tool" messages.
  const tools: ChatCompletionTool[] = [{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } }];
  const called: ChatCompletion = await engine.chat.completions.create({ messages, tools, tool_choice: "auto" });
  for (const call of called.choices[0].message.tool_calls ?? []) {
    messages.push(called.choices[0].message, { role: "tool", tool_call_id: call.id, content: JSON.stringify({ city: JSON.parse(call.function.arguments).city, temp_c: 18 }) });
  }
  console.log(await engine.applyChatTemplate(messages, true, tools));
  // A call the answer must make: "required" (any tool) or a named function.
  const forced: ChatCompletion = await engine.chat.completions.create({ messages, tools, tool_choice: { type: "function", function: { name: "get_weather" } } });
  console.log(forced.choices[0].message.tool_calls?.[0].function.arguments);

  const raw: Completion = await engine.completions.create({ prompt: "Once upon a time", max_tokens: 16, temperature: 0, stop: "." });
  const rawStream: Stream<CompletionChunk> = await engine.completions.create({ prompt: "Once", stream: true, signal: controller.signal });
  for await (const c of rawStream) text += c.choices[0].text;
  console.log(raw.choices[0].text);

  const ids: number[] = await engine.tokenize("Hello", { addSpecial: false, parseSpecial: true });
  const back: string = await engine.detokenize(ids);
  const prompt: string = await engine.applyChatTemplate(messages, true);
  const stats: EngineStats = await engine.stats();
  console.log(back, prompt, stats.ttft_ms, stats.decode_tok_s, stats.wasmMemoryBytes, stats.deviceLosses.length, stats.info.device);
  engine.interrupt();
  await engine.loseDeviceForTesting();
  await engine.unload();

  const worker = new Worker(new URL("webgguf/worker", import.meta.url), { type: "module" });
  const remote: Engine = await createWorkerEngine(worker, { model: { manifest: url }, device: "cpu", onProgress: (p) => console.log(p.loaded) });
  const r = await remote.chat.completions.create({ messages, max_tokens: 8 });
  console.log(r.choices[0].message.content);
  const remotePlan: ModelPlan = await workerPlanModel(worker, { manifest: url }, { device: "cpu" });
  console.log(remotePlan.bytes.weights, remotePlan.adapter);
  const listed: CachedModel[] = await workerCachedModels(worker);
  await workerDeleteCachedModel(worker, [url]);
  await remote.unload();

  const cached: CachedModel[] = await cachedModels();
  await deleteCachedModel(url);
  console.log(listed.length, cached.map((m) => m.bytes));

  try {
    await createEngine({ model: url, device: "webgpu" });
  } catch (e) {
    if (e instanceof NoWebGPUError || e instanceof ModelTooLargeError || e instanceof DeviceLostError) console.log("GPU:", e.code);
    else if (e instanceof NetworkError || e instanceof IntegrityError || e instanceof QuotaError || e instanceof AbortError || e instanceof ContextLengthError) console.log(e.code);
    else if (e instanceof WebggufError) {
      const code: ErrorCode = e.code;
      console.log(code, errorFromCode(code, e.message).name);
    }
  }
  return text;
}
