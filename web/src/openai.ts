/**
 * The OpenAI-shaped surface (`chat.completions.create`, `completions.create`) over any Core:
 * request fields → the runtime's sampler and stop settings, step events → chunks or one
 * response with `usage`.
 */
import type { Core, GenRequest, StepEvent } from "./core.js";
import { InvalidRequestError, WebggufError } from "./errors.js";
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionCreateParams,
  ChatMessage,
  Completion,
  CompletionChunk,
  CompletionCreateParams,
  Engine,
  FinishReason,
  ChatCompletionMessageToolCall,
  ChatCompletionTool,
  CompletionLogprobs,
  ContextOverflow,
  RequestOptions,
  ResponseFormat,
  SamplingParams,
  Stream,
  TokenLogprob,
} from "./types.js";

function bad(message: string): never {
  throw new InvalidRequestError("options", message);
}

function num(v: unknown, name: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) bad(`${name} must be a finite number`);
  return v;
}

/** Text of a message's content (string, or the text parts of a parts array). */
function contentText(m: ChatMessage, i: number): string {
  if (typeof m.content === "string") return m.content;
  if (Array.isArray(m.content)) {
    return m.content
      .map((p) => {
        if (p && p.type === "text" && typeof p.text === "string") return p.text;
        bad(`messages[${i}]: only text content parts are supported (got ${JSON.stringify(p?.type)})`);
      })
      .join("");
  }
  bad(`messages[${i}].content must be a string or an array of text parts`);
}

/** Request fields OpenAI (or llama.cpp's server) has that webgguf does not serve yet: refused
 * by name rather than ignored. */
const UNSUPPORTED = ["functions", "function_call", "audio", "modalities", "prediction", "echo", "suffix"];

type RequestBody = SamplingParams & {
  messages?: ChatMessage[];
  prompt?: string;
  n?: number | null;
  best_of?: number | null;
  logprobs?: boolean | number | null;
  top_logprobs?: number | null;
  context_overflow?: ContextOverflow;
  tools?: ChatCompletionTool[] | null;
  tool_choice?: unknown;
  parallel_tool_calls?: boolean | null;
  response_format?: ResponseFormat | null;
  grammar?: string | null;
  json_schema?: Record<string, unknown> | null;
};

/** `response_format`, `json_schema` (llama.cpp's server field) or `grammar` (GBNF) as the
 * grammar the answer is held to. */
function grammarOf(body: RequestBody): GenRequest["grammar"] {
  const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);
  const found: NonNullable<GenRequest["grammar"]>[] = [];
  const rf = body.response_format;
  if (rf != null) {
    if (!isObject(rf)) bad("response_format must be an object");
    if (rf.type === "json_object") found.push({ jsonSchema: { type: "object" } });
    else if (rf.type === "json_schema") {
      const schema = rf.json_schema?.schema ?? {};
      if (!isObject(schema)) bad("response_format.json_schema.schema must be an object");
      found.push({ jsonSchema: schema });
    } else if (rf.type !== "text") bad(`response_format.type ${JSON.stringify((rf as { type: unknown }).type)} (text, json_object or json_schema)`);
  }
  if (body.json_schema != null) {
    if (!isObject(body.json_schema)) bad("json_schema must be an object");
    found.push({ jsonSchema: body.json_schema });
  }
  if (body.grammar != null) {
    if (typeof body.grammar !== "string" || body.grammar.trim() === "") bad("grammar must be a GBNF grammar (a string)");
    found.push({ gbnf: body.grammar });
  }
  if (found.length > 1) bad("give one of response_format, json_schema and grammar");
  return found[0];
}

/** `tools` checked (function tools with names) and whether the answer is parsed for calls. */
function toolsOf(body: RequestBody): { tools?: unknown[]; toolCalls: boolean; requiredCall?: GenRequest["requiredCall"] } {
  if (body.tools == null) {
    if (body.tool_choice != null && body.tool_choice !== "none" && body.tool_choice !== "auto") bad("tool_choice needs tools");
    return { toolCalls: false };
  }
  if (body.messages === undefined) bad("tools is a chat.completions field");
  if (!Array.isArray(body.tools)) bad("tools must be an array");
  body.tools.forEach((t, i) => {
    if (!t || t.type !== "function" || !t.function || typeof t.function.name !== "string" || t.function.name === "") bad(`tools[${i}]: { type: "function", function: { name, description?, parameters? } }`);
  });
  if (body.parallel_tool_calls === false) bad("parallel_tool_calls: false is not supported yet (an answer may make several calls)");
  const choice = body.tool_choice ?? "auto";
  if (choice === "auto" || choice === "none") return { tools: body.tools, toolCalls: choice === "auto" && body.tools.length > 0 };
  // "required" or a named function: the answer is held to one call (a grammar built from the tools).
  if (choice === "required") {
    if (body.tools.length === 0) bad('tool_choice "required" needs at least one tool');
    return { tools: body.tools, toolCalls: true, requiredCall: { tools: body.tools } };
  }
  const named = choice as { type?: unknown; function?: { name?: unknown } };
  if (!named || typeof named !== "object" || named.type !== "function" || typeof named.function?.name !== "string") {
    bad('tool_choice must be "auto", "none", "required" or { type: "function", function: { name } }');
  }
  const name = named.function!.name as string;
  if (!body.tools.some((t) => t.function.name === name)) bad(`tool_choice names ${JSON.stringify(name)}, which is not among tools`);
  return { tools: body.tools, toolCalls: true, requiredCall: { tools: body.tools, name } };
}

/** A chat message as the runtime's template takes it. */
function messageOf(m: ChatMessage, i: number): ChatMessage {
  if (!m || typeof m.role !== "string") bad(`messages[${i}].role must be a string`);
  const out: ChatMessage = { role: m.role, content: m.content === null && (m.tool_calls || m.role === "assistant") ? "" : contentText(m, i) };
  if (m.tool_calls != null) {
    if (!Array.isArray(m.tool_calls)) bad(`messages[${i}].tool_calls must be an array`);
    m.tool_calls.forEach((c, j) => {
      if (!c || !c.function || typeof c.function.name !== "string" || typeof c.function.arguments !== "string") bad(`messages[${i}].tool_calls[${j}]: { id, type: "function", function: { name, arguments (JSON text) } }`);
    });
    out.tool_calls = m.tool_calls;
  }
  for (const key of ["tool_call_id", "name"] as const) {
    if (m[key] == null) continue;
    if (typeof m[key] !== "string") bad(`messages[${i}].${key} must be a string`);
    out[key] = m[key];
  }
  return out;
}

/** `logprobs` / `top_logprobs` (chat) or `logprobs: n` (completions) as alternatives per token. */
function logprobsOf(body: RequestBody, chat: boolean): number | undefined {
  const top = num(body.top_logprobs, "top_logprobs");
  if (!chat) {
    if (top !== undefined) bad("top_logprobs is a chat.completions field (completions take logprobs: 0-5)");
    const n = num(body.logprobs as number | null | undefined, "logprobs");
    if (n !== undefined && (!Number.isInteger(n) || n < 0 || n > 5)) bad("logprobs must be an integer from 0 to 5");
    return n;
  }
  if (body.logprobs != null && typeof body.logprobs !== "boolean") bad("logprobs must be a boolean");
  if (top !== undefined && (!Number.isInteger(top) || top < 0 || top > 20)) bad("top_logprobs must be an integer from 0 to 20");
  if (top !== undefined && top > 0 && !body.logprobs) bad("top_logprobs needs logprobs: true");
  return body.logprobs ? (top ?? 0) : undefined;
}

/** OpenAI's request fields as the runtime's sampler (camelCase) and stop settings. */
export function toGenRequest(body: RequestBody): GenRequest {
  for (const field of UNSUPPORTED) {
    if ((body as Record<string, unknown>)[field] != null) bad(`${field} is not supported yet`);
  }
  for (const field of ["n", "best_of"] as const) {
    const v = num(body[field], field);
    if (v !== undefined && v !== 1) bad(`${field}: only one choice per request is supported (got ${v})`);
  }
  const sampling: Record<string, unknown> = {};
  const set = (key: string, v: number | undefined) => {
    if (v !== undefined) sampling[key] = v;
  };
  const temperature = num(body.temperature, "temperature");
  if (temperature !== undefined && temperature < 0) bad("temperature must be >= 0");
  set("temperature", temperature);
  set("topP", num(body.top_p, "top_p"));
  set("topK", num(body.top_k, "top_k"));
  set("minP", num(body.min_p, "min_p"));
  set("presencePenalty", num(body.presence_penalty, "presence_penalty"));
  set("frequencyPenalty", num(body.frequency_penalty, "frequency_penalty"));
  set("repetitionPenalty", num(body.repetition_penalty, "repetition_penalty"));
  const seed = num(body.seed, "seed");
  if (seed !== undefined) {
    if (!Number.isSafeInteger(seed) || seed < 0) bad("seed must be a non-negative integer");
    sampling.seed = seed;
  }
  if (body.logit_bias) {
    // OpenAI's scale: -100 bans a token, +100 forces it; the runtime adds the bias to logits.
    sampling.logitBias = Object.entries(body.logit_bias).map(([id, b]) => {
      const tok = Number(id);
      if (!Number.isInteger(tok) || tok < 0) bad(`logit_bias: ${JSON.stringify(id)} is not a token id`);
      const bias = num(b, `logit_bias[${id}]`) as number;
      return [tok, bias <= -100 ? -1e30 : bias];
    });
  }
  const max = num(body.max_completion_tokens ?? body.max_tokens, "max_tokens");
  if (max !== undefined && (!Number.isInteger(max) || max < 0)) bad("max_tokens must be a non-negative integer");
  const stop = body.stop == null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  if (!Array.isArray(stop) || stop.some((s) => typeof s !== "string" || s === "")) bad("stop must be a non-empty string or an array of them");
  const req: GenRequest = { sampling, stop: { maxTokens: max, stopStrings: stop } };
  const grammar = grammarOf(body);
  if (grammar) req.grammar = grammar;
  const { tools, toolCalls, requiredCall } = toolsOf(body);
  if (tools) req.tools = tools;
  if (toolCalls) req.toolCalls = true;
  if (requiredCall) {
    if (grammar) bad("tool_choice \"required\" or a named function cannot be combined with response_format, json_schema or grammar");
    req.requiredCall = requiredCall;
  }
  const lps = logprobsOf(body, body.messages !== undefined);
  if (lps !== undefined) req.logprobs = lps;
  if (body.context_overflow !== undefined) {
    if (body.context_overflow !== "error" && body.context_overflow !== "truncate-middle") bad('context_overflow must be "error" or "truncate-middle"');
    req.contextOverflow = body.context_overflow;
  }
  if (body.messages !== undefined) {
    if (!Array.isArray(body.messages) || body.messages.length === 0) bad("messages must be a non-empty array");
    req.messages = body.messages.map(messageOf);
  } else {
    if (typeof body.prompt !== "string") bad("prompt must be a string");
    req.prompt = body.prompt;
  }
  return req;
}

let counter = 0;
function newId(prefix: string): string {
  counter += 1;
  return `${prefix}-${Date.now().toString(36)}${counter.toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

function usage(ev: StepEvent) {
  return {
    prompt_tokens: ev.promptTokens,
    completion_tokens: ev.completionTokens,
    total_tokens: ev.promptTokens + ev.completionTokens,
    prompt_tokens_details: { cached_tokens: ev.reusedTokens },
  };
}

/** OpenAI's legacy completions shape of the tokens' log-probabilities; `offset`: where the
 * first token's text starts in the completion. */
function legacyLogprobs(lps: TokenLogprob[], offset: number): CompletionLogprobs {
  const text_offset: number[] = [];
  for (const t of lps) {
    text_offset.push(offset);
    offset += t.token.length;
  }
  return {
    tokens: lps.map((t) => t.token),
    token_logprobs: lps.map((t) => t.logprob),
    top_logprobs: lps.map((t) => Object.fromEntries(t.top_logprobs.map((a) => [a.token, a.logprob]))),
    text_offset,
  };
}

/** Links the request's signals to one controller (which the stream exposes). */
function controllerFor(body: { signal?: AbortSignal }, options?: RequestOptions): AbortController {
  const controller = new AbortController();
  for (const s of [body.signal, options?.signal]) {
    if (!s) continue;
    if (s.aborted) controller.abort(s.reason);
    else s.addEventListener("abort", () => controller.abort(s.reason), { once: true });
  }
  return controller;
}

/** What every object of one response carries. */
type Meta = { id: string; created: number; model: string };

function envelope<O extends string>(m: Meta, object: O) {
  return { id: m.id, object, created: m.created, model: m.model };
}

/** `lps`: the tokens' log-probabilities since the last chunk (null when not asked for);
 * `offset`: characters of the completion before this chunk. */
type Shape<C, R> = {
  chunk(m: Meta, text: string | undefined, finish: FinishReason | null, first: boolean, ev: StepEvent, lps: TokenLogprob[] | null, offset: number): C;
  response(m: Meta, text: string, finish: FinishReason, ev: StepEvent, lps: TokenLogprob[] | null): R;
  /** The chunk carrying the answer's tool calls (chat only). */
  calls?(m: Meta, ev: StepEvent): C;
};

/** The answer's calls as OpenAI's `tool_calls` (ids made here, as llama.cpp's server does). */
function toolCallsOf(ev: StepEvent): ChatCompletionMessageToolCall[] {
  return ev.toolCalls.map((c) => ({ id: newId("call"), type: "function" as const, function: { name: c.name, arguments: c.arguments } }));
}

const chatShape: Shape<ChatCompletionChunk, ChatCompletion> = {
  chunk: (m, text, finish, first, ev, lps) => ({
    ...envelope(m, "chat.completion.chunk"),
    choices: [
      {
        index: 0,
        delta: { ...(first ? { role: "assistant" as const } : {}), ...(text !== undefined ? { content: text } : {}) },
        finish_reason: finish,
        logprobs: lps && { content: lps },
      },
    ],
    ...(finish ? { usage: usage(ev) } : {}),
  }),
  response: (m, text, finish, ev, lps) => {
    const calls = toolCallsOf(ev);
    const message = calls.length ? { role: "assistant" as const, content: text === "" ? null : text, tool_calls: calls } : { role: "assistant" as const, content: text };
    return {
      ...envelope(m, "chat.completion"),
      choices: [{ index: 0, message, finish_reason: finish, logprobs: lps && { content: lps } }],
      usage: usage(ev),
    };
  },
  calls: (m, ev) => ({
    ...envelope(m, "chat.completion.chunk"),
    choices: [{ index: 0, delta: { tool_calls: toolCallsOf(ev).map((c, index) => ({ index, ...c })) }, finish_reason: null, logprobs: null }],
  }),
};

const textShape: Shape<CompletionChunk, Completion> = {
  chunk: (m, text, finish, _first, ev, lps, offset) => ({
    ...envelope(m, "text_completion"),
    choices: [{ index: 0, text: text ?? "", finish_reason: finish, logprobs: lps && legacyLogprobs(lps, offset) }],
    ...(finish ? { usage: usage(ev) } : {}),
  }),
  response: (m, text, finish, ev, lps) => ({
    ...envelope(m, "text_completion"),
    choices: [{ index: 0, text, finish_reason: finish, logprobs: lps && legacyLogprobs(lps, 0) }],
    usage: usage(ev),
  }),
};

async function create<C, R>(core: Core, shape: Shape<C, R>, prefix: string, body: (ChatCompletionCreateParams | CompletionCreateParams) & { stream?: boolean | null }, options?: RequestOptions): Promise<R | Stream<C>> {
  if (!body || typeof body !== "object") bad("create: a request object is required");
  const req = toGenRequest(body);
  const controller = controllerFor(body, options);
  const meta: Meta = { id: newId(prefix), created: Math.floor(Date.now() / 1000), model: body.model ?? core.model };
  const steps = core.generate(req, controller.signal);
  // The first pass (the prompt) runs before create resolves: request errors surface here.
  const first = await steps.next();
  if (first.done) throw new WebggufError("internal", "the generation ended without a result");
  const firstStep: StepEvent = first.value;
  const wantLogprobs = req.logprobs !== undefined;
  if (!body.stream) {
    let ev = firstStep;
    let text = ev.text;
    const lps = [...ev.logprobs];
    try {
      while (!ev.done) {
        const r = await steps.next();
        if (r.done) break;
        ev = r.value;
        text += ev.text;
        lps.push(...ev.logprobs);
      }
    } finally {
      // Lets the generator finish (it releases the engine for the next request).
      await steps.return(undefined);
    }
    return shape.response(meta, text, ev.finishReason ?? "abort", ev, wantLogprobs ? lps : null);
  }
  // A stream aborted before anyone iterates it releases the engine at once.
  let iterating = false;
  controller.signal.addEventListener("abort", () => iterating || void steps.return(undefined), { once: true });
  async function* chunks(): AsyncGenerator<C, void, undefined> {
    iterating = true;
    let ev: StepEvent = firstStep;
    let isFirst = true;
    // Tokens whose text is held back (a possible stop string) wait for the next chunk.
    let lps: TokenLogprob[] = [];
    let offset = 0;
    const take = () => {
      const out = wantLogprobs ? lps : null;
      lps = [];
      return out;
    };
    try {
      for (;;) {
        lps.push(...ev.logprobs);
        if (ev.text !== "" || isFirst) {
          yield shape.chunk(meta, ev.text, null, isFirst, ev, take(), offset);
          offset += ev.text.length;
          isFirst = false;
        }
        if (ev.done) {
          if (ev.toolCalls.length && shape.calls) yield shape.calls(meta, ev);
          yield shape.chunk(meta, undefined, ev.finishReason ?? "abort", false, ev, take(), offset);
          return;
        }
        const r = await steps.next();
        if (r.done) return;
        ev = r.value;
      }
    } finally {
      await steps.return(undefined);
    }
  }
  const it = chunks();
  return { controller, [Symbol.asyncIterator]: () => it };
}

/** The public Engine over a Core. */
export function makeEngine(core: Core): Engine {
  const engine = {
    chat: {
      completions: {
        create: (body: ChatCompletionCreateParams, options?: RequestOptions) => {
          if (!body || !Array.isArray(body.messages)) bad("chat.completions.create: messages must be an array");
          return create(core, chatShape, "chatcmpl", body, options);
        },
      },
    },
    completions: {
      create: (body: CompletionCreateParams, options?: RequestOptions) => {
        if (!body || typeof body.prompt !== "string") bad("completions.create: prompt must be a string");
        return create(core, textShape, "cmpl", body, options);
      },
    },
    get device() {
      return core.device;
    },
    get model() {
      return core.model;
    },
    tokenize: (text: string, o?: { addSpecial?: boolean; parseSpecial?: boolean }) => core.tokenize(text, o?.addSpecial ?? true, o?.parseSpecial ?? false),
    detokenize: (ids: number[]) => core.detokenize(ids),
    applyChatTemplate: (messages: ChatMessage[], addGenerationPrompt = true, tools?: ChatCompletionTool[]) => {
      const req = toGenRequest({ messages, tools });
      return core.applyChatTemplate(req.messages as ChatMessage[], addGenerationPrompt, req.tools);
    },
    stats: () => core.stats(),
    interrupt: () => core.interrupt(),
    unload: () => core.unload(),
    loseDeviceForTesting: () => core.loseDeviceForTesting(),
  };
  return engine as Engine;
}
