// The large-model benchmark (run by pkg-scripts/bench-large, which builds the package, writes the
// synthetic 3 B and 8 B models into the app, serves it with pkg-scripts/serve-faults and sets the
// environment below). Prints numbers and writes JSON; asserts only that the work happened (every
// WebGPU load ended ready with the whole model's bytes served and loaded).
//
// Each run gets a fresh Chromium (LAUNCH of web/test/chromium.mjs: WebGPU on SwiftShader) and
// one page, web/bench/large.html, whose engine runs on the page's thread (createEngine, cache
// off, f16 KV, CONTEXT positions):
//   3B webgpu   the 3 B model (one file) onto WebGPU; optionally 1 greedy token after a one-token
//               prompt (GENERATE, default "3b": SwiftShader needs ~45 s for one 1 B pass, so an
//               8 B pass ~4 min); unload
//   8B webgpu   the 8 B model (3 shards) onto WebGPU, through its manifest.json (each shard's
//               sha256 checked while it streams) and again by its first shard's URL (the loader
//               expands -00001-of-00003; nothing to hash); unload
//   8B cpu      the 8 B model on the CPU path (wasm32: 4 GiB at most), expected to be refused
//               before its weights are fetched (ModelTooLargeError, code "model_too_large"). The
//               driver polls the server: past CPU_BYTE_BUDGET bytes served or CPU_TIMEOUT_S
//               seconds the load is aborted (AbortSignal) and the browser closed, so 4.9 GB never
//               lands in wasm memory.
// Figures: load = createEngine's call → its engine (fetch + parse + upload; loopback server,
// cache off); wasm memory = stats().wasmMemoryBytes after the load (memory only grows: the load's
// peak) and after generation; renderer peak = the renderer process's VmHWM from /proc (page + wasm
// memory + JS heap; read before the browser closes), idle = the same page with no engine;
// GPU-process peak = its VmHWM (SwiftShader keeps GPU buffers there, in CPU memory); served =
// body bytes serve-faults sent for the load (its /stats). Before each load the page asks
// planModel(source, options) (when the package has it) for the planner's answer, kept in the
// JSON; its header bytes are not counted in served.
import fs from "node:fs";
import os from "node:os";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";
import { CHROMIUM, LAUNCH } from "../test/chromium.mjs";
import { peaks } from "./peaks.mjs";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set: run through pkg-scripts/bench-large`);
  return v;
};
const APP = env("BENCH_APP_URL");
const OUT = env("BENCH_OUT");
const MODELS = JSON.parse(env("BENCH_MODELS")); // [{ name, label, source, files: [{ path, bytes }], bytes, header_bytes }]
const GENERATE = new Set(env("GENERATE", "3b").split(",").filter(Boolean).map((s) => s.toLowerCase()));
const GEN_PROMPT = env("GEN_PROMPT", "Paris");
const CONTEXT = Number(env("CONTEXT", "256"));
const LOAD_TIMEOUT_S = Number(env("LOAD_TIMEOUT_S", "2400"));
const GEN_TIMEOUT_S = Number(env("GEN_TIMEOUT_S", "600"));
const CPU_BYTE_BUDGET = Number(env("CPU_BYTE_BUDGET", String(256 * 2 ** 20)));
const CPU_TIMEOUT_S = Number(env("CPU_TIMEOUT_S", "300"));
const CORES = os.availableParallelism();
const mib = (b) => (b == null ? "–" : (b / 2 ** 20).toFixed(0));
const gb = (b) => (b / 1e9).toFixed(2);

const server = async (what) => (await fetch(APP + what)).json();

/** Runs `fn(page)` in a fresh Chromium on large.html; returns its result, the peaks and the bytes served. */
async function inBrowser(fn) {
  const browserServer = await chromium.launchServer(LAUNCH);
  try {
    const browser = await chromium.connect(browserServer.wsEndpoint());
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
    page.on("console", (m) => { if (m.type() === "error" || process.env.BENCH_VERBOSE) console.log(`[page ${m.type()}] ${m.text()}`); });
    await page.goto(APP + "large.html");
    await page.waitForFunction(() => window.ready === true);
    await server("reset");
    const result = await fn(page, browserServer.process().pid);
    const requests = await server("stats");
    const memory = peaks(browserServer.process().pid);
    await browser.close();
    return { result, memory, served: requests.body_bytes, requests };
  } finally {
    await browserServer.close();
  }
}

/** `promise` or a rejection after `s` seconds. */
function within(promise, s, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no result after ${s} s`)), s * 1000); })])
    .finally(() => clearTimeout(timer));
}

const runs = [];

async function gpuRun(model) {
  const generate = GENERATE.has(model.name.toLowerCase()) ? { prompt: GEN_PROMPT, max_tokens: 1 } : null;
  const t0 = Date.now();
  const { result: r, memory, served } = await inBrowser(async (page) => {
    // What the planner says first (its header bytes are not counted in `served`).
    const plan = await page.evaluate((a) => window.planIfAny(a), { model: model.source, device: "webgpu", kvCache: "f16", contextLength: CONTEXT });
    await server("reset");
    const result = await within(page.evaluate((a) => window.loadLarge(a), { model: model.source, device: "webgpu", contextLength: CONTEXT, generate }),
      LOAD_TIMEOUT_S + (generate ? GEN_TIMEOUT_S : 0), `${model.label ?? model.name} webgpu`);
    return { ...result, plan };
  });
  const run = { model: model.name, label: model.label, device: "webgpu", wall_s: (Date.now() - t0) / 1000, file_bytes: model.bytes, header_bytes: model.header_bytes, served_bytes: served, memory, ...r };
  runs.push(run);
  if (r.error) {
    console.log(`${model.label ?? model.name} webgpu: FAILED after ${(r.loadMs / 1000).toFixed(1)} s: ${r.error.name} (${r.error.code}): ${r.error.message}`);
    return run;
  }
  const g = r.generation;
  console.log(`${model.label ?? model.name} webgpu (${r.engine.device}${r.engine.adapter ? `, ${r.engine.adapter.adapter || "(unnamed)"} ${r.engine.adapter.device_type}` : ""}): load ${(r.loadMs / 1000).toFixed(1)} s ` +
    `(${r.progress.events} progress events, phases ${JSON.stringify(r.progress.phases)}, ${r.progress.shards} shard(s)), ` +
    `wasm ${mib(r.statsAfterLoad.wasmMemoryBytes)} MiB after load / ${mib(r.stats.wasmMemoryBytes)} MiB at the end, ` +
    `renderer peak ${mib(memory.renderer)} MiB, GPU process peak ${mib(memory.gpu)} MiB, served ${gb(served)} GB` +
    (g ? (g.error ? `; generation failed: ${g.error.message}` : `; 1 token in ${(g.ms / 1000).toFixed(1)} s (${JSON.stringify(g.text)})`) : "") +
    (r.plan ? `; planModel: ${r.plan.error ? `${r.plan.error.name}: ${r.plan.error.message}` : `${r.plan.plan.device}, kv ${r.plan.plan.kv}, ctx ${r.plan.plan.contextLength}, total ${mib(r.plan.plan.bytes.total)} MiB of ${mib(r.plan.plan.bytes.limit)} MiB`}` : "") +
    ` [${run.wall_s.toFixed(0)} s]`);
  return run;
}

async function cpuRun(model) {
  const t0 = Date.now();
  const { result: r, memory, served, requests } = await inBrowser(async (page) => {
    const plan = await page.evaluate((a) => window.planIfAny(a), { model: model.source, device: "cpu", kvCache: "f16", contextLength: CONTEXT });
    await server("reset");
    const load = page.evaluate((a) => window.loadLarge(a), { model: model.source, device: "cpu", contextLength: CONTEXT, generate: null });
    // Watch the bytes served: a load that is not refused early is aborted at the budget.
    let stopped = null;
    const tLoad = Date.now();
    const watch = (async () => {
      for (;;) {
        const done = await Promise.race([load.then(() => true, () => true), new Promise((res) => setTimeout(() => res(false), 200))]);
        if (done) return;
        const sent = (await server("stats")).body_bytes;
        const s = (Date.now() - tLoad) / 1000;
        if (sent > CPU_BYTE_BUDGET || s > CPU_TIMEOUT_S) {
          stopped = { reason: sent > CPU_BYTE_BUDGET ? "byte budget" : "timeout", bytes: sent, s };
          await page.evaluate(() => window.abortLoad()).catch(() => {});
          return;
        }
      }
    })();
    await watch;
    // An aborted load answers (AbortError) within a chunk; if it does not, give up on the page.
    const result = await within(load, stopped ? 60 : 1, "8B cpu after abort").catch((e) => ({ device: "cpu", error: { name: "Timeout", code: null, message: e.message } }));
    return { ...result, plan, stopped };
  });
  const refused = !r.stopped && r.error?.code === "model_too_large";
  const run = { model: model.name, label: model.label, device: "cpu", wall_s: (Date.now() - t0) / 1000, file_bytes: model.bytes, header_bytes: model.header_bytes, served_bytes: served, memory, refused_before_budget: refused, requests, ...r };
  runs.push(run);
  const err = r.error ? `${r.error.name} (code ${JSON.stringify(r.error.code)}${r.error.modelTooLarge ? ", instanceof ModelTooLargeError" : ""}): ${r.error.message}` : "no error: loaded";
  console.log(`${model.label ?? model.name} cpu: ${r.stopped ? `NOT refused: stopped at the ${r.stopped.reason} (${mib(r.stopped.bytes)} MiB served, ${r.stopped.s.toFixed(1)} s); then ` : ""}` +
    `${err}; after ${(r.loadMs / 1000).toFixed(2)} s, ${served} bytes served in ${requests.requests} request(s) (header ${model.header_bytes}; ` +
    `${Object.entries(requests.by_path).map(([p, x]) => `${p.split("/").pop()}: ${x.requests} from ${x.ranges.join(", ")}`).join("; ")}), ` +
    `renderer peak ${mib(memory.renderer)} MiB` + (r.plan ? `; planModel: ${r.plan.error ? `${r.plan.error.name} (${r.plan.error.code}): ${r.plan.error.message}` : JSON.stringify(r.plan.plan).slice(0, 300)}` : "; no planModel in the package"));
  return run;
}

function table(idle) {
  const lines = [
    "| model | file | shards | device | load | progress events | wasm memory after load (peak) | wasm bound 64 MiB + 4 × header | renderer peak (idle page " + mib(idle.renderer) + " MiB) | GPU-process peak | served | 1-token generation | outcome |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of runs) {
    const bound = 64 * 2 ** 20 + 4 * r.header_bytes;
    const wasm = r.statsAfterLoad?.wasmMemoryBytes;
    const g = r.generation;
    const outcome = r.device === "cpu"
      ? (r.refused_before_budget ? `refused: ${r.error.name} (\`${r.error.code}\`) before the weights` : r.stopped ? `not refused: aborted at the ${r.stopped.reason}${r.error ? `, then ${r.error.name} (\`${r.error.code}\`)` : ""}` : r.error ? `${r.error.name} (\`${r.error.code}\`)` : "loaded")
      : r.error ? `failed: ${r.error.name} (\`${r.error.code}\`)` : "ready, unloaded";
    lines.push(`| ${[r.label ?? r.model, `${gb(r.file_bytes)} GB`, r.progress?.shards ?? "–", r.device, `${(r.loadMs / 1000).toFixed(r.device === "cpu" ? 2 : 1)} s` + (r.progress?.report ? ` (network ${(r.progress.report.ms_network / 1000).toFixed(1)} / upload ${(r.progress.report.ms_upload / 1000).toFixed(1)})` : ""),
      r.progress ? String(r.progress.events) : "–", wasm ? `${mib(wasm)} MiB` : "–", wasm ? `${mib(bound)} MiB (${wasm <= bound ? "within" : "over"})` : "–",
      `${mib(r.memory.renderer)} MiB`, `${mib(r.memory.gpu)} MiB`, r.served_bytes > 1e8 ? `${gb(r.served_bytes)} GB` : `${(r.served_bytes / 2 ** 20).toFixed(2)} MiB`,
      g ? (g.error ? `failed: ${g.error.code}` : `${(g.ms / 1000).toFixed(0)} s`) : "skipped", outcome].join(" | ")} |`);
  }
  return lines.join("\n");
}

async function main() {
  const { memory: idle } = await inBrowser(async () => null);
  console.log(`idle page: renderer peak ${mib(idle.renderer)} MiB, GPU process ${mib(idle.gpu)} MiB; ${CORES} cores`);
  for (const m of MODELS) await gpuRun(m);
  const big = MODELS.find((m) => m.name === "8B");
  if (big) await cpuRun(big);

  // The work happened: each WebGPU load ended ready on WebGPU with every byte served and loaded.
  for (const r of runs.filter((x) => x.device === "webgpu")) {
    if (r.error) throw new Error(`${r.model} webgpu: ${r.error.name}: ${r.error.message}`);
    if (r.engine.device !== "webgpu" || !r.progress.phases.ready || r.served_bytes < r.file_bytes || r.stats.modelBytes !== r.file_bytes) {
      throw new Error(`${r.model} webgpu: device ${r.engine.device}, phases ${JSON.stringify(r.progress.phases)}, served ${r.served_bytes} of ${r.file_bytes}, modelBytes ${r.stats.modelBytes}`);
    }
  }
  const chromiumVersion = execFileSync(CHROMIUM, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  const cpuinfo = fs.readFileSync("/proc/cpuinfo", "utf8");
  const cpuModel = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? os.arch();
  const machine = `${cpuModel}, ${CORES} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ${chromiumVersion}`;
  const md = table(idle);
  const report = {
    date: new Date().toISOString(), machine, context: CONTEXT, generate: [...GENERATE], generate_prompt: GEN_PROMPT,
    cpu_byte_budget: CPU_BYTE_BUDGET, cpu_timeout_s: CPU_TIMEOUT_S, idle_memory: idle, models: MODELS, table: md,
    webgpu_adapter: runs.find((r) => r.engine?.adapter)?.engine.adapter ?? null, runs,
  };
  fs.writeFileSync(OUT, JSON.stringify(report, null, 1) + "\n");
  console.log(`\nmachine: ${machine}\n`);
  console.log(md);
  console.log(`\nJSON: ${OUT}`);
}

await main();
