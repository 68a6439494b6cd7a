/** `createWorkerEngine`: the Engine API in the page, the engine in a Web Worker (the worker
 * entry `webgguf/worker`), so the page never blocks on loading or generation. */
import type { Core, GenRequest, StepEvent } from "./core.js";
import { WebggufError, errorFromCode } from "./errors.js";
import { makeEngine } from "./openai.js";
import type { CallMethod, FromWorker, ToWorker } from "./protocol.js";
import type { CachedModel, ChatMessage, DeviceInfo, Engine, EngineStats, ModelPlan, ModelSource, PlanOptions, WorkerEngineOptions } from "./types.js";

type Pending = {
  onProgress?: (m: FromWorker) => void;
  resolve: (v: unknown) => void;
  reject: (e: WebggufError) => void;
};

/** Request ids. */
let nextId = 1;

/** The channel of each worker: one set of listeners per worker however many calls use it. */
const channels = new WeakMap<Worker, Channel>();

function channelFor(worker: Worker): Channel {
  let ch = channels.get(worker);
  if (!ch) {
    ch = new Channel(worker);
    channels.set(worker, ch);
  }
  return ch;
}

/** Request/response plumbing over one worker. */
class Channel {
  private readonly pending = new Map<number, Pending>();
  onDeviceLost?: (m: Extract<FromWorker, { deviceLost: unknown }>) => void;

  constructor(private readonly worker: Worker) {
    worker.addEventListener("message", (e: MessageEvent<FromWorker>) => this.receive(e.data));
    worker.addEventListener("error", (e: ErrorEvent) => this.failAll(new WebggufError("worker", `the worker failed: ${e.message ?? "error"}`)));
  }

  id(): number {
    return nextId++;
  }

  send(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  /** Sends `m` (with id `id`) and resolves with its result; `onOther` gets progress/steps. */
  request(id: number, m: ToWorker, onOther?: (m: FromWorker) => void): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress: onOther });
      this.send(m);
    });
  }

  call(method: CallMethod, ...args: unknown[]): Promise<unknown> {
    const id = this.id();
    return this.request(id, { op: "call", id, method, args });
  }

  private receive(m: FromWorker): void {
    if ("deviceLost" in m) {
      this.onDeviceLost?.(m);
      return;
    }
    const p = this.pending.get(m.id);
    if (!p) return;
    if ("error" in m) {
      this.pending.delete(m.id);
      p.reject(errorFromCode(m.error.code, m.error.message));
    } else if ("result" in m || "loaded" in m) {
      this.pending.delete(m.id);
      p.resolve("loaded" in m ? m.loaded : m.result);
    } else {
      p.onProgress?.(m);
    }
  }

  private failAll(e: WebggufError): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}

class WorkerCore implements Core {
  device: DeviceInfo;
  readonly model: string;

  constructor(
    private readonly ch: Channel,
    loaded: { device: DeviceInfo; model: string },
  ) {
    this.device = loaded.device;
    this.model = loaded.model;
  }

  async *generate(req: GenRequest, signal?: AbortSignal): AsyncGenerator<StepEvent, void, undefined> {
    const id = this.ch.id();
    // Steps arrive faster than they may be consumed: queue them.
    const queue: StepEvent[] = [];
    let wake: (() => void) | null = null;
    let finished = false;
    let failure: WebggufError | null = null;
    const done = this.ch.request(id, { op: "generate", id, req }, (m) => {
      if ("step" in m) {
        queue.push(m.step);
        wake?.();
      }
    });
    done.then(
      () => {
        finished = true;
        wake?.();
      },
      (e: WebggufError) => {
        failure = e;
        finished = true;
        wake?.();
      },
    );
    const onAbort = () => this.ch.send({ op: "abort", id });
    signal?.addEventListener("abort", onAbort);
    if (signal?.aborted) onAbort();
    let ended = false;
    try {
      for (;;) {
        const ev = queue.shift();
        if (ev) {
          if (ev.done) ended = true;
          yield ev;
          if (ev.done) return;
          continue;
        }
        if (failure) throw failure;
        if (finished) return;
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      if (!ended) this.ch.send({ op: "abort", id });
      await done.catch(() => undefined);
    }
  }

  tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Promise<number[]> {
    return this.ch.call("tokenize", text, addSpecial, parseSpecial) as Promise<number[]>;
  }

  detokenize(ids: number[]): Promise<string> {
    return this.ch.call("detokenize", ids) as Promise<string>;
  }

  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt: boolean, tools?: unknown[]): Promise<string> {
    return this.ch.call("applyChatTemplate", messages, addGenerationPrompt, tools) as Promise<string>;
  }

  stats(): Promise<EngineStats> {
    return this.ch.call("stats") as Promise<EngineStats>;
  }

  interrupt(): void {
    this.ch.send({ op: "interrupt" });
  }

  async unload(): Promise<void> {
    await this.ch.call("unload");
  }

  async loseDeviceForTesting(): Promise<void> {
    await this.ch.call("loseDeviceForTesting");
  }
}

/** Relative model URLs are the page's: the worker would resolve them against its script. */
function absolute(source: ModelSource): ModelSource {
  const base = globalThis.location?.href;
  if (!base) return source;
  const abs = (u: string) => new URL(u, base).href;
  if (typeof source === "string") return abs(source);
  if (Array.isArray(source)) return source.map(abs);
  if (source && typeof source === "object" && typeof source.manifest === "string") return { manifest: abs(source.manifest) };
  return source;
}

/** The Engine API with the model loaded and run in `worker` (created from the package's
 * worker entry: `new Worker(new URL("webgguf/worker", import.meta.url), { type: "module" })`). */
export async function createWorkerEngine(worker: Worker, options: WorkerEngineOptions): Promise<Engine> {
  if (!options || options.model === undefined) throw new WebggufError("options", "createWorkerEngine: options.model is required");
  const ch = channelFor(worker);
  const { signal, onProgress, onDeviceLost, ...rest } = options;
  const wasmUrl = rest.wasmUrl === undefined ? undefined : new URL(String(rest.wasmUrl), globalThis.location?.href).href;
  rest.model = absolute(rest.model);
  const id = ch.id();
  const onAbort = () => ch.send({ op: "abort", id });
  signal?.addEventListener("abort", onAbort);
  if (signal?.aborted) onAbort();
  let core: WorkerCore | undefined;
  ch.onDeviceLost = (m) => {
    if (core && m.device) core.device = m.device;
    onDeviceLost?.(m.deviceLost);
  };
  try {
    const loaded = (await ch.request(id, { op: "load", id, options: { ...rest, wasmUrl } }, (m) => {
      if ("progress" in m) onProgress?.(m.progress);
    })) as { device: DeviceInfo; model: string };
    core = new WorkerCore(ch, loaded);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  return makeEngine(core);
}

/** The models cached in the browser, asked through a worker (same storage as the page's). */
export async function workerCachedModels(worker: Worker): Promise<CachedModel[]> {
  return (await channelFor(worker).call("cachedModels")) as CachedModel[];
}

/** Plans a model in a worker (see `planModel`); the signal stays in the page. */
export async function workerPlanModel(worker: Worker, source: ModelSource, options: Omit<PlanOptions, "signal" | "wasmUrl"> & { wasmUrl?: string } = {}): Promise<ModelPlan> {
  const wasmUrl = options.wasmUrl === undefined ? undefined : new URL(String(options.wasmUrl), globalThis.location?.href).href;
  return (await channelFor(worker).call("planModel", absolute(source), { ...options, wasmUrl })) as ModelPlan;
}

/** Deletes a cached model through a worker. */
export async function workerDeleteCachedModel(worker: Worker, source: ModelSource): Promise<void> {
  await channelFor(worker).call("deleteCachedModel", absolute(source));
}
