/**
 * The engine in this thread: the wasm module's `WasmEngine` plus what the OpenAI layer needs
 * from any engine (`Core`): one generation at a time as a stream of step events, device-loss
 * recovery (reload from the cache, replay the conversation), and the small calls.
 */
import init, { WasmEngine, cachedModels as wasmCachedModels, deleteCachedModel as wasmDeleteCachedModel } from "./wasm/webgguf.js";
import { AbortError, DeviceLostError, UnloadedError, WebggufError, toWebggufError } from "./errors.js";
import type { CachedModel, ChatMessage, DeviceInfo, DeviceLossEvent, EngineOptions, EngineStats, FinishReason, LoadProgress, ModelPlan, ModelSource, PlanOptions } from "./types.js";

/** What one generation asks for (built by the OpenAI layer from a request). */
export interface GenRequest {
  /** Chat messages (rendered with the model's template) or a raw prompt. */
  messages?: Array<{ role: string; content: string }>;
  prompt?: string;
  /** The runtime's sampler fields (camelCase: temperature, topK, topP, minP, …). */
  sampling: Record<string, unknown>;
  stop: { maxTokens?: number; stopStrings: string[] };
}

/** One pass of a generation: the text now safe to show. */
export interface StepEvent {
  text: string;
  done: boolean;
  finishReason: FinishReason | null;
  promptTokens: number;
  completionTokens: number;
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
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<string>;
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
      if (req.messages) {
        const rendered = w.applyChatTemplate(req.messages, true);
        // The template writes BOS itself when the model wants one.
        return w.tokenize(rendered, false, true);
      }
      return w.tokenize(req.prompt ?? "", true, false);
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
      await this.call((w) => w.start(prompt, req.sampling, req.stop, new Uint32Array()));
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
      wasm.start(prompt, req.sampling, req.stop, generated);
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

  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean): Promise<string> {
    return this.call((w) => w.applyChatTemplate(messages, addGenerationPrompt));
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
