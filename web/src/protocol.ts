/** Messages between `createWorkerEngine` (the page) and the worker entry (`webgguf/worker`). */
import type { GenRequest, StepEvent } from "./core.js";
import type { DeviceInfo, DeviceLossEvent, LoadProgress, WorkerEngineOptions } from "./types.js";

export type CallMethod = "tokenize" | "detokenize" | "applyChatTemplate" | "stats" | "unload" | "loseDeviceForTesting" | "cachedModels" | "deleteCachedModel" | "planModel";

/** Page → worker. `id` pairs replies with requests. */
export type ToWorker =
  | { op: "load"; id: number; options: Omit<WorkerEngineOptions, "signal" | "onProgress" | "onDeviceLost"> }
  | { op: "generate"; id: number; req: GenRequest }
  | { op: "abort"; id: number } // the load or generation `id`
  | { op: "interrupt" }
  | { op: "call"; id: number; method: CallMethod; args: unknown[] };

/** Worker → page. */
export type FromWorker =
  | { id: number; progress: LoadProgress }
  | { id: number; loaded: { device: DeviceInfo; model: string } }
  | { id: number; step: StepEvent }
  | { id: number; result: unknown }
  | { id: number; error: { code: string; message: string } }
  | { deviceLost: DeviceLossEvent; device: DeviceInfo | null };
