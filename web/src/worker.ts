/**
 * The worker entry the package ships (`webgguf/worker`): hosts one LocalCore and answers
 * `createWorkerEngine`'s messages, so loading and generation never block the page.
 *
 *   const worker = new Worker(new URL("webgguf/worker", import.meta.url), { type: "module" });
 *   const engine = await createWorkerEngine(worker, { model: url });
 */
import { LocalCore, cachedModels, deleteCachedModel, planModel } from "./core.js";
import { UnloadedError, serializeError } from "./errors.js";
import type { CallMethod, FromWorker, ToWorker } from "./protocol.js";
import type { ChatMessage, ModelSource, PlanOptions } from "./types.js";

const scope = self as unknown as { postMessage(m: FromWorker): void; onmessage: ((e: MessageEvent<ToWorker>) => void) | null };
let core: LocalCore | null = null;
/** Controllers of the load or generations in progress, by request id. */
const controllers = new Map<number, AbortController>();

function post(m: FromWorker): void {
  scope.postMessage(m);
}

function need(): LocalCore {
  if (!core) throw new UnloadedError("unloaded", "no model is loaded in this worker");
  return core;
}

async function call(method: CallMethod, args: unknown[]): Promise<unknown> {
  switch (method) {
    case "tokenize":
      return need().tokenize(args[0] as string, args[1] as boolean, args[2] as boolean);
    case "detokenize":
      return need().detokenize(args[0] as number[]);
    case "applyChatTemplate":
      return need().applyChatTemplate(args[0] as ChatMessage[], args[1] as boolean, args[2] as unknown[] | undefined);
    case "stats":
      return need().stats();
    case "unload": {
      const c = core;
      core = null;
      return c?.unload();
    }
    case "loseDeviceForTesting":
      return need().loseDeviceForTesting();
    case "cachedModels":
      return cachedModels(args[0] as string | undefined);
    case "deleteCachedModel":
      return deleteCachedModel(args[0] as ModelSource, args[1] as string | undefined);
    case "planModel":
      return planModel(args[0] as ModelSource, args[1] as PlanOptions);
  }
}

scope.onmessage = async (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  if (m.op === "interrupt") {
    core?.interrupt();
    return;
  }
  if (m.op === "abort") {
    controllers.get(m.id)?.abort();
    return;
  }
  const controller = new AbortController();
  controllers.set(m.id, controller);
  try {
    if (m.op === "load") {
      const previous = core;
      core = null;
      await previous?.unload();
      core = await LocalCore.load({
        ...m.options,
        signal: controller.signal,
        onProgress: (p) => post({ id: m.id, progress: p }),
        // Fires during a generation, after the core is assigned; null says "no device to report".
        onDeviceLost: (ev) => post({ deviceLost: ev, device: core?.device ?? null }),
      });
      post({ id: m.id, loaded: { device: core.device, model: core.model } });
    } else if (m.op === "generate") {
      for await (const step of need().generate(m.req, controller.signal)) post({ id: m.id, step });
      post({ id: m.id, result: null });
    } else {
      post({ id: m.id, result: await call(m.method, m.args) });
    }
  } catch (err) {
    post({ id: m.id, error: serializeError(err) });
  } finally {
    controllers.delete(m.id);
  }
};
