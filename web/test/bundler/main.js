// An app that imports the package by name and lets Vite bundle it: the wasm is found through
// the `new URL(…, import.meta.url)` the glue code uses, the worker entry through `?worker`.
import { createEngine, createWorkerEngine } from "webgguf";
import WebggufWorker from "webgguf/worker?worker";

const params = new URLSearchParams(location.search);
const model = new URL(params.get("model"), location.href).href;
const prompt = params.get("prompt");
const maxTokens = Number(params.get("max_tokens"));

async function complete(engine) {
  const r = await engine.completions.create({ prompt, max_tokens: maxTokens, temperature: 0 });
  await engine.unload();
  return r.choices[0].text;
}

(async () => {
  try {
    const main = await complete(await createEngine({ model, device: "cpu", kvCache: "f32", contextLength: 256, cache: false }));
    const worker = await complete(await createWorkerEngine(new WebggufWorker(), { model, device: "cpu", kvCache: "f32", contextLength: 256, cache: false }));
    window.result = { main, worker };
  } catch (e) {
    window.result = { error: `${e.name}: ${e.message}` };
  }
})();
