// The private-chat demo: the engine runs in a Web Worker (the page never blocks); the
// conversation lives in this page's memory only.
import { createWorkerEngine, cachedModels, deleteCachedModel } from "webgguf";

const $ = (id) => document.getElementById(id);
const workerUrl = new URL("./node_modules/webgguf/worker.js", import.meta.url);

let engine = null;
let worker = null;
let stream = null;
/** [{ role, content }], kept in the page only. */
let conversation = [];

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function mib(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

function setBadge(device) {
  const b = $("badge");
  b.className = `badge ${device.device}`;
  if (device.device === "webgpu") {
    const a = device.adapter;
    const name = a.adapter || (a.device_type === "Cpu" ? "software adapter" : "adapter");
    b.textContent = `WebGPU · ${name}${a.shader_f16 ? " · f16" : ""}${a.subgroups ? " · subgroups" : ""}`;
  } else {
    b.textContent = `CPU · ${device.kernels}`;
  }
  b.title = device.fallback ? `fell back to the CPU: ${device.fallback}` : "where the model runs";
}

async function showCached() {
  try {
    const list = await cachedModels();
    $("cached").textContent = list.length
      ? `Cached in this browser: ${list.map((m) => `${m.model.split("/").pop()} (${mib(m.bytes)})`).join(", ")}`
      : "No model cached in this browser yet.";
  } catch (e) {
    $("cached").textContent = `Cache unavailable: ${e.message}`;
  }
}

function onProgress(p) {
  const bar = $("progress");
  if (p.total) {
    bar.max = p.total;
    bar.value = p.loaded;
  }
  const pct = p.total ? ` ${((100 * p.loaded) / p.total).toFixed(0)} %` : "";
  const rate = p.rate_bytes_per_s ? ` · ${mib(p.rate_bytes_per_s)}/s` : "";
  const eta = p.eta_s != null && p.phase !== "ready" ? ` · ETA ${Math.ceil(p.eta_s)} s` : "";
  const where = p.from_cache > 0 && p.from_network === 0 ? " (from cache)" : "";
  $("progress-text").textContent =
    p.phase === "ready" ? `Loaded ${mib(p.loaded)}${where} in ${(p.report.ms_total / 1000).toFixed(1)} s` : `${p.phase}${pct} · ${mib(p.loaded)}${p.total ? ` of ${mib(p.total)}` : ""}${rate}${eta}`;
}

function setBusy(generating) {
  $("send").disabled = generating || !engine;
  $("prompt").disabled = !engine;
  $("stop").disabled = !generating;
  $("load").disabled = generating;
}

async function load() {
  const file = $("model-file").files[0];
  const model = file ? URL.createObjectURL(file) : $("model-url").value.trim();
  if (!model) return status("Enter a model URL or choose a file.", true);
  $("load").disabled = true;
  status("Loading…");
  try {
    if (engine) await engine.unload();
    worker?.terminate();
    worker = new Worker(workerUrl, { type: "module" });
    engine = null;
    engine = await createWorkerEngine(worker, {
      model,
      device: $("device").value,
      kvCache: $("kv").value,
      contextLength: Number($("ctx").value) || 2048,
      cache: !file, // a local file is already on this machine
      onProgress,
      onDeviceLost: (e) => status(`The GPU device was lost (${e.message}); recovered on ${e.recoveredOn ?? "nothing"} in ${e.recoveryMs.toFixed(0)} ms.`, !e.recoveredOn),
    });
    setBadge(engine.device);
    status(engine.device.fallback ? `Running on the CPU: ${engine.device.fallback}` : `Ready: ${file ? file.name : model}`);
    document.body.dataset.ready = "1";
    showCached();
  } catch (e) {
    status(`Could not load the model: ${e.message} (${e.code ?? e.name})`, true);
  } finally {
    setBusy(false);
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function send(ev) {
  ev?.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || !engine || stream) return;
  $("prompt").value = "";
  conversation.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  setBusy(true);
  status("Generating…");
  let answer = "";
  let finish = null;
  try {
    stream = await engine.chat.completions.create({
      messages: conversation,
      stream: true,
      temperature: Number($("temperature").value),
      max_tokens: Number($("max-tokens").value) || 256,
    });
    for await (const chunk of stream) {
      answer += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
      out.textContent = answer;
      $("messages").scrollTop = $("messages").scrollHeight;
    }
    conversation.push({ role: "assistant", content: answer });
    const s = await engine.stats();
    $("metrics").textContent = `TTFT ${s.ttft_ms.toFixed(0)} ms · prefill ${s.prefill_tok_s.toFixed(1)} tok/s · decode ${s.decode_tok_s.toFixed(1)} tok/s · ${s.generated_tokens} tokens · KV ${mib(s.peak_kv_bytes)}`;
    status(finish === "abort" ? "Stopped." : finish === "length" ? "Stopped at max tokens." : "Done.");
  } catch (e) {
    conversation.pop();
    status(`Generation failed: ${e.message} (${e.code ?? e.name})`, true);
  } finally {
    out.classList.remove("streaming");
    out.dataset.done = "1";
    stream = null;
    setBusy(false);
  }
}

$("load").addEventListener("click", load);
$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
$("stop").addEventListener("click", () => stream?.controller.abort());
$("new-chat").addEventListener("click", () => {
  stream?.controller.abort();
  conversation = [];
  $("messages").replaceChildren();
  $("metrics").textContent = "";
});
$("forget").addEventListener("click", async () => {
  const model = $("model-url").value.trim();
  try {
    await deleteCachedModel(model);
    status(`Deleted the cached copy of ${model}.`);
  } catch (e) {
    status(`Could not delete: ${e.message}`, true);
  }
  showCached();
});
const params = new URLSearchParams(location.search);
if (params.get("model")) $("model-url").value = params.get("model");
if (params.get("device")) $("device").value = params.get("device");
showCached();
if (!("gpu" in navigator) || !navigator.gpu) $("badge").title = "this browser has no WebGPU: the CPU path will run the model";
