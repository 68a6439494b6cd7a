/**
 * The engine in this thread: the wasm module's `WasmEngine` plus what the OpenAI layer needs
 * from any engine (`Core`): one generation at a time as a stream of step events, device-loss
 * recovery (reload from the cache, replay the conversation), and the small calls.
 */
import init, { WasmEngine, cachedModels as wasmCachedModels, deleteCachedModel as wasmDeleteCachedModel } from "./wasm/webgguf.js";
import { AbortError, ContextLengthError, DeviceLostError, UnloadedError, WebggufError, toWebggufError } from "./errors.js";
import type {
  CachedModel,
  ChatMessage,
  ContextOverflow,
  DeviceInfo,
  DeviceLossEvent,
  EngineOptions,
  EngineStats,
  FinishReason,
  LoadProgress,
  ModelPlan,
  ModelSource,
  PlanOptions,
  TokenLogprob,
} from "./types.js";

/** What one generation asks for (built by the OpenAI layer from a request). */
export interface GenRequest {
  /** Chat messages (rendered with the model's template) or a raw prompt. */
  messages?: ChatMessage[];
  /** Tools for the template (OpenAI's array). */
  tools?: unknown[];
  /** Find the answer's tool calls. */
  toolCalls?: boolean;
  /** `tool_choice` "required" or a named function: the answer is held to one call of these
   * tools (of `name` only). */
  requiredCall?: { tools: unknown[]; name?: string };
  /** What the answer is held to: a JSON schema or a GBNF grammar. */
  grammar?: { jsonSchema?: Record<string, unknown>; gbnf?: string };
  prompt?: string;
  /** The runtime's sampler fields (camelCase: temperature, topK, topP, minP, …). */
  sampling: Record<string, unknown>;
  stop: { maxTokens?: number; stopStrings: string[] };
  /** Each generated token's log-probability with this many alternatives (0–20). */
  logprobs?: number;
  /** What a chat longer than the context does (the request's, else the engine's option). */
  contextOverflow?: ContextOverflow;
}

/** One pass of a generation: the text now safe to show. */
export interface StepEvent {
  text: string;
  done: boolean;
  finishReason: FinishReason | null;
  promptTokens: number;
  /** Prompt tokens taken from the cache of the previous generation (not prefilled again). */
  reusedTokens: number;
  completionTokens: number;
  /** The step's new tokens' log-probabilities (when asked for), as OpenAI's entries. */
  logprobs: TokenLogprob[];
  /** The answer's tool calls (on the last step). */
  toolCalls: Array<{ name: string; arguments: string }>;
}

/** What an engine offers, in this thread (LocalCore) or behind a worker (WorkerCore). */
export interface Core {
  readonly device: DeviceInfo;
  readonly model: string;
  /** Resolves once the request is accepted (tokenized, fits the context) and the first pass
   * ran; then yields the remaining steps. */
  generate(req: GenRequest, signal?: AbortSignal): AsyncGenerator<StepEvent, void, undefined>;
  tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Promise<number[]>;
  detokenize(ids: number[]): Promise<string>;
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean, tools?: unknown[]): Promise<string>;
  stats(): Promise<EngineStats>;
  interrupt(): void;
  unload(): Promise<void>;
  loseDeviceForTesting(): Promise<void>;
}

let wasmReady: Promise<unknown> | null = null;

/** Instantiates the wasm module once per thread. */
export function initWasm(wasmUrl?: string | URL): Promise<unknown> {
  wasmReady ??= init(wasmUrl ? { module_or_path: wasmUrl } : undefined).catch((e: unknown) => {
    wasmReady = null;
    throw new WebggufError("internal", `could not load webgguf_bg.wasm: ${String((e as Error)?.message ?? e)}`);
  });
  return wasmReady;
}

/** Resolves after a macrotask turn: between passes the thread handles its messages (a
 * worker's abort, the page's input and rendering); a CPU pass alone never yields. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      ch.port1.close();
      resolve();
    };
    ch.port2.postMessage(null);
  });
}

/** What `WasmEngine.start` reports beside the text. */
function reportOf(req: GenRequest): Record<string, unknown> {
  return { ...(req.logprobs === undefined ? {} : { logprobs: req.logprobs }), toolCalls: req.toolCalls ?? false, ...(req.requiredCall ? { requiredCall: req.requiredCall } : {}), ...(req.grammar ? { grammar: req.grammar } : {}) };
}

/**
 * `contextOverflow: "truncate-middle"`: the chat without its oldest turn after the leading
 * system messages and the first user turn (llama.cpp's n_keep, by whole turns: a user message
 * and the replies and tool results up to the next user message); null when only those and
 * the last turn are left.
 */
function dropOldestTurn<M extends { role: string }>(messages: M[]): M[] | null {
  const users = messages.flatMap((m, i) => (m.role === "user" ? [i] : []));
  // The kept head ends after the first user turn; the last user turn is the question.
  if (users.length < 3) return null;
  const [start, end] = [users[1], users[2]];
  return [...messages.slice(0, start), ...messages.slice(end)];
}

/** Tries again when a lost device takes the replacement too. */
const MAX_RECOVERIES = 2;

function modelName(source: ModelSource): string {
  if (typeof source === "string") return source;
  if (Array.isArray(source)) return source[0] ?? "";
  return source.manifest;
}

function loadOptions(o: EngineOptions | PlanOptions): Record<string, unknown> {
  const full = o as EngineOptions;
  return {
    device: o.device ?? "auto",
    // Unset: the planner chooses (f16 and 4096 when they fit).
    kv: o.kvCache,
    kvRecent: o.kvRecent,
    gpuKernels: full.gpuKernels,
    reusePrefix: full.reusePrefix,
    contextLength: o.contextLength,
    cache: o.cache ?? true,
    requireCache: full.requireCache ?? false,
    store: o.store,
    maxCacheBytes: full.maxCacheBytes,
    signal: o.signal,
    maxAttempts: o.maxAttempts,
    retryDelayMs: o.retryDelayMs,
    stallTimeoutMs: o.stallTimeoutMs,
  };
}

export class LocalCore implements Core {
  device: DeviceInfo;
  readonly model: string;
  private wasm: WasmEngine | null;
  private readonly options: EngineOptions;
  private readonly losses: DeviceLossEvent[] = [];
  /** Generations run one after another. */
  private queue: Promise<void> = Promise.resolve();
  /** The step in flight (the wasm engine refuses other calls meanwhile). */
  private inFlight: Promise<unknown> = Promise.resolve();
  /** Turns the last truncate-middle request dropped (the next one starts from that cut). */
  private droppedTurns = 0;

  private constructor(wasm: WasmEngine, options: EngineOptions) {
    this.wasm = wasm;
    this.options = options;
    this.model = modelName(options.model);
    this.device = wasm.deviceInfo() as DeviceInfo;
  }

  static async load(options: EngineOptions): Promise<LocalCore> {
    if (!options || options.model === undefined) throw new WebggufError("options", "createEngine: options.model (a URL, shard URLs or { manifest }) is required");
    await initWasm(options.wasmUrl);
    const onProgress = options.onProgress ? (p: LoadProgress) => options.onProgress?.(p) : undefined;
    try {
      const wasm = await WasmEngine.load(options.model, loadOptions(options), onProgress);
      return new LocalCore(wasm, options);
    } catch (e) {
      throw toWebggufError(e);
    }
  }

  private engine(): WasmEngine {
    if (!this.wasm) throw new UnloadedError("unloaded", "the engine was unloaded");
    return this.wasm;
  }

  /** Waits until no step is in flight (a new one may start while we wait: check again). */
  private async settled(): Promise<WasmEngine> {
    let p: Promise<unknown>;
    do {
      p = this.inFlight;
      await p.catch(() => undefined);
    } while (p !== this.inFlight);
    return this.engine();
  }

  private async call<T>(f: (w: WasmEngine) => T): Promise<T> {
    const w = await this.settled();
    try {
      return f(w);
    } catch (e) {
      throw toWebggufError(e);
    }
  }

  private async promptIds(req: GenRequest): Promise<Uint32Array> {
    return this.call((w) => {
      if (!req.messages) return w.tokenize(req.prompt ?? "", true, false);
      // The template writes BOS itself when the model wants one.
      const ids = (messages: NonNullable<GenRequest["messages"]>) => w.tokenize(w.applyChatTemplate(messages, true, req.tools), false, true);
      let messages = req.messages;
      let prompt = ids(messages);
      const n_ctx = w.contextLength();
      // Room for the answer: max_tokens (else a quarter of the context), at most half of it.
      const room = n_ctx - Math.min(req.stop.maxTokens ?? Math.floor(n_ctx / 4), Math.floor(n_ctx / 2));
      if ((req.contextOverflow ?? this.options.contextOverflow ?? "error") !== "truncate-middle" || prompt.length <= room) {
        this.droppedTurns = 0;
        return prompt;
      }
      // The previous request's cut first: the cache still holds what it kept. Past that, as
      // llama.cpp's context shift, drop until half the room is left, so the next turns fit
      // (and reuse the cache) without cutting again.
      let dropped = 0;
      const drop = () => {
        const shorter = dropOldestTurn(messages);
        if (!shorter) return false;
        messages = shorter;
        dropped++;
        return true;
      };
      while (dropped < this.droppedTurns && drop());
      prompt = ids(messages);
      if (prompt.length > room) {
        while (prompt.length > room / 2 && drop()) prompt = ids(messages);
      }
      if (prompt.length > room) {
        throw new ContextLengthError("context_length", `the chat has ${prompt.length} tokens without the turns truncate-middle may drop; the context holds ${n_ctx} (with ${n_ctx - room} kept for the answer)`);
      }
      this.droppedTurns = dropped;
      return prompt;
    });
  }

  private async step(): Promise<StepEvent> {
    const p = this.engine().step() as Promise<StepEvent>;
    this.inFlight = p;
    return p;
  }

  async *generate(req: GenRequest, signal?: AbortSignal): AsyncGenerator<StepEvent, void, undefined> {
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const before = this.queue;
    this.queue = before.then(() => mine);
    await before;
    const onAbort = () => this.wasm?.interrupt();
    try {
      if (signal?.aborted) throw new AbortError("aborted", "the request was aborted before it started");
      const prompt = await this.promptIds(req);
      await this.call((w) => w.start(prompt, req.sampling, req.stop, new Uint32Array(), reportOf(req)));
      signal?.addEventListener("abort", onAbort);
      // Characters already shown: a replay after a lost device regenerates them first.
      let shown = 0;
      let skip = 0;
      let recoveries = 0;
      for (;;) {
        let ev: StepEvent;
        try {
          ev = await this.step();
        } catch (e) {
          const err = toWebggufError(e);
          if (err.code !== "device_lost" || recoveries >= MAX_RECOVERIES || !this.wasm) throw err;
          recoveries++;
          await this.recover(prompt, req, err);
          skip = shown;
          continue;
        }
        let text = ev.text;
        if (skip > 0) {
          const cut = Math.min(skip, text.length);
          text = text.slice(cut);
          skip -= cut;
        }
        shown += text.length;
        yield { ...ev, text };
        if (ev.done) return;
        await yieldToEventLoop();
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      // A consumer that stops iterating leaves no generation running.
      this.wasm?.interrupt();
      release();
    }
  }

  /** After a lost device: reload the model (from the cache when it was cached) on a new
   * device, or the CPU if WebGPU is gone and device is "auto", and replay the prompt and the
   * tokens generated so far. */
  private async recover(prompt: Uint32Array, req: GenRequest, err: WebggufError): Promise<void> {
    const t0 = performance.now();
    const old = this.engine();
    const generated = old.generatedIds();
    this.wasm = null;
    old.free();
    const event: DeviceLossEvent = { message: err.message, recoveredOn: null, recoveryMs: 0, replayedTokens: prompt.length + generated.length };
    try {
      const wasm = await WasmEngine.load(this.options.model, { ...loadOptions(this.options), signal: undefined }, undefined);
      this.wasm = wasm;
      this.device = wasm.deviceInfo() as DeviceInfo;
      wasm.start(prompt, req.sampling, req.stop, generated, reportOf(req));
      event.recoveredOn = this.device.device;
    } catch (e) {
      event.recoveryMs = performance.now() - t0;
      this.losses.push(event);
      this.options.onDeviceLost?.(event);
      throw new DeviceLostError("device_lost", `${err.message}; reloading failed: ${toWebggufError(e).message}`);
    }
    event.recoveryMs = performance.now() - t0;
    this.losses.push(event);
    this.options.onDeviceLost?.(event);
  }

  tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Promise<number[]> {
    return this.call((w) => Array.from(w.tokenize(text, addSpecial, parseSpecial)));
  }

  detokenize(ids: number[]): Promise<string> {
    return this.call((w) => w.decode(Uint32Array.from(ids)));
  }

  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean, tools?: unknown[]): Promise<string> {
    return this.call((w) => w.applyChatTemplate(messages, addGenerationPrompt, tools));
  }

  stats(): Promise<EngineStats> {
    return this.call((w) => ({ ...(w.stats() as EngineStats), deviceLosses: [...this.losses], info: this.device }));
  }

  interrupt(): void {
    this.wasm?.interrupt();
  }

  async unload(): Promise<void> {
    if (!this.wasm) return;
    this.wasm.interrupt();
    const w = await this.settled().catch(() => null);
    this.wasm = null;
    w?.free();
  }

  loseDeviceForTesting(): Promise<void> {
    return this.call((w) => w.loseDeviceForTesting());
  }
}

/** The models in the browser's cache. */
export async function cachedModels(wasmUrl?: string | URL): Promise<CachedModel[]> {
  await initWasm(wasmUrl);
  try {
    return (await wasmCachedModels()) as CachedModel[];
  } catch (e) {
    throw toWebggufError(e);
  }
}

/** Plans `source` from its first shard's header (at most the header + 1 MiB fetched, or read
 * from the cache) without loading it: the device, KV type and context createEngine would use,
 * and why. A model that cannot run rejects with the error createEngine would give
 * (ModelTooLargeError, NoWebGPUError, ModelFormatError…). */
export async function planModel(source: ModelSource, options: PlanOptions = {}): Promise<ModelPlan> {
  await initWasm(options.wasmUrl);
  try {
    return (await WasmEngine.plan(source, loadOptions(options))) as ModelPlan;
  } catch (e) {
    throw toWebggufError(e);
  }
}

/** Deletes a model's cached shards (`source` as for createEngine's `model`). */
export async function deleteCachedModel(source: ModelSource, wasmUrl?: string | URL): Promise<void> {
  await initWasm(wasmUrl);
  try {
    await wasmDeleteCachedModel(source);
  } catch (e) {
    throw toWebggufError(e);
  }
}
