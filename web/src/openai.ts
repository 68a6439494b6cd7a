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
  RequestOptions,
  SamplingParams,
  Stream,
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

/** OpenAI's request fields as the runtime's sampler (camelCase) and stop settings. */
export function toGenRequest(body: SamplingParams & { messages?: ChatMessage[]; prompt?: string }): GenRequest {
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
  if (body.messages !== undefined) {
    if (!Array.isArray(body.messages) || body.messages.length === 0) bad("messages must be a non-empty array");
    req.messages = body.messages.map((m, i) => {
      if (!m || typeof m.role !== "string") bad(`messages[${i}].role must be a string`);
      return { role: m.role, content: contentText(m, i) };
    });
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
  return { prompt_tokens: ev.promptTokens, completion_tokens: ev.completionTokens, total_tokens: ev.promptTokens + ev.completionTokens };
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

type Shape<C, R> = {
  chunk(m: Meta, text: string | undefined, finish: FinishReason | null, first: boolean, ev: StepEvent): C;
  response(m: Meta, text: string, finish: FinishReason, ev: StepEvent): R;
};

const chatShape: Shape<ChatCompletionChunk, ChatCompletion> = {
  chunk: (m, text, finish, first, ev) => ({
    ...envelope(m, "chat.completion.chunk"),
    choices: [{ index: 0, delta: { ...(first ? { role: "assistant" as const } : {}), ...(text !== undefined ? { content: text } : {}) }, finish_reason: finish, logprobs: null }],
    ...(finish ? { usage: usage(ev) } : {}),
  }),
  response: (m, text, finish, ev) => ({
    ...envelope(m, "chat.completion"),
    choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: finish, logprobs: null }],
    usage: usage(ev),
  }),
};

const textShape: Shape<CompletionChunk, Completion> = {
  chunk: (m, text, finish, _first, ev) => ({
    ...envelope(m, "text_completion"),
    choices: [{ index: 0, text: text ?? "", finish_reason: finish, logprobs: null }],
    ...(finish ? { usage: usage(ev) } : {}),
  }),
  response: (m, text, finish, ev) => ({
    ...envelope(m, "text_completion"),
    choices: [{ index: 0, text, finish_reason: finish, logprobs: null }],
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
  if (!body.stream) {
    let ev = firstStep;
    let text = ev.text;
    try {
      while (!ev.done) {
        const r = await steps.next();
        if (r.done) break;
        ev = r.value;
        text += ev.text;
      }
    } finally {
      // Lets the generator finish (it releases the engine for the next request).
      await steps.return(undefined);
    }
    return shape.response(meta, text, ev.finishReason ?? "abort", ev);
  }
  // A stream aborted before anyone iterates it releases the engine at once.
  let iterating = false;
  controller.signal.addEventListener("abort", () => iterating || void steps.return(undefined), { once: true });
  async function* chunks(): AsyncGenerator<C, void, undefined> {
    iterating = true;
    let ev: StepEvent = firstStep;
    let isFirst = true;
    try {
      for (;;) {
        if (ev.text !== "" || isFirst) {
          yield shape.chunk(meta, ev.text, null, isFirst, ev);
          isFirst = false;
        }
        if (ev.done) {
          yield shape.chunk(meta, undefined, ev.finishReason ?? "abort", false, ev);
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
    applyChatTemplate: (messages: ChatMessage[], addGenerationPrompt = true) =>
      core.applyChatTemplate(toGenRequest({ messages }).messages as ChatMessage[], addGenerationPrompt),
    stats: () => core.stats(),
    interrupt: () => core.interrupt(),
    unload: () => core.unload(),
    loseDeviceForTesting: () => core.loseDeviceForTesting(),
  };
  return engine as Engine;
}
