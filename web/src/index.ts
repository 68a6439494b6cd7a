/**
 * webgguf: run GGUF language models in the browser, on WebGPU or the SIMD128 CPU path, with
 * an OpenAI-shaped API.
 *
 *   import { createEngine } from "webgguf";
 *   const engine = await createEngine({ model: url, device: "auto", kvCache: "q8", onProgress });
 *   const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: 256 });
 *   for await (const chunk of stream) text += chunk.choices[0].delta.content ?? "";
 */
import { LocalCore } from "./core.js";
import { makeEngine } from "./openai.js";
import type { Engine, EngineOptions } from "./types.js";

/** Loads a model (streamed into WebGPU buffers or CPU memory, cached) in this thread. */
export async function createEngine(options: EngineOptions): Promise<Engine> {
  return makeEngine(await LocalCore.load(options));
}

export { createWorkerEngine, workerCachedModels, workerDeleteCachedModel, workerPlanModel } from "./worker-client.js";
export { cachedModels, deleteCachedModel, planModel } from "./core.js";
export * from "./errors.js";
export type * from "./types.js";
