// The side-by-side browser benchmark (run by pkg-scripts/bench-browser, which builds the app,
// serves it cross-origin isolated and sets the environment below). Prints numbers and writes
// JSON; asserts only that every run did the same work.
//
// Workload: a PROMPT_TOKENS-token prompt (English prose from GPL-3's preamble, cut to exactly
// that many tokens), then DECODE_TOKENS greedy tokens, f16 KV cache, 512-position context,
// after one short warm-up completion in the same engine. Every run gets a fresh Chromium (own
// renderer, nothing cached), and the figures are taken the same way for every engine on the
// page's thread: load = start of loading → engine ready (model fetched from the local server,
// browser caches off), TTFT = request → first streamed text, prefill tok/s = prompt tokens /
// TTFT, decode tok/s = (tokens − 1) / (first → last streamed text). Peak memory = the
// renderer process's VmHWM (page + workers + wasm memories) minus that of the same page with no
// engine loaded; the GPU process's VmHWM for WebGPU. Each engine's own timings are kept too.
//
// Configurations, each once per round (order reversed on odd rounds), ROUNDS rounds:
//   webgguf-cpu    webgguf in a Web Worker, device "cpu" (SIMD128, one thread)
//   wllama-1t      @wllama/wllama, n_threads 1, n_gpu_layers 0
//   wllama-mt      @wllama/wllama, n_threads = cores, n_gpu_layers 0 (needs cross-origin isolation)
//   natively (pkg-scripts/bench-native.py): the webgguf CLI and llama.cpp (llama-cpp-python,
//   when LLAMA_CPP_PYTHON names a Python that has it), on 1 thread and on all cores, and
//   llama.cpp-avx2-1t: llama.cpp built without AVX-512 (LLAMA_CPP_AVX2_PYTHON), 1 thread;
// then, in GPU_ROUNDS rounds with GPU_DECODE_TOKENS (SwiftShader is slow):
//   webgguf-webgpu webgguf in a Web Worker, device "webgpu"   vs   webgguf-cpu at the same length.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";
import { CHROMIUM, LAUNCH } from "../test/chromium.mjs";
import { peaks } from "./peaks.mjs";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set: run through pkg-scripts/bench-browser`);
  return v;
};
const APP = env("BENCH_APP_URL");
const MODEL = env("BENCH_MODEL"); // relative to the app root
const MODEL_FILE = env("BENCH_MODEL_FILE");
const OUT = env("BENCH_OUT");
const PROMPT_FILE = env("BENCH_PROMPT_FILE"); // written here: the prompt for the native runs
const CLI = env("WEBGGUF_CLI");
const LLAMA_CPP_PYTHON = process.env.LLAMA_CPP_PYTHON || null;
// the same llama.cpp built for AVX2 only (no AVX-512), as the oracle's llama.cpp was built
const LLAMA_CPP_AVX2_PYTHON = process.env.LLAMA_CPP_AVX2_PYTHON || null;
const ROUNDS = Number(env("ROUNDS", "5"));
const GPU_ROUNDS = Number(env("GPU_ROUNDS", "2"));
const PROMPT_TOKENS = Number(env("PROMPT_TOKENS", "128"));
const DECODE_TOKENS = Number(env("DECODE_TOKENS", "64"));
const GPU_DECODE_TOKENS = Number(env("GPU_DECODE_TOKENS", "8"));
const CTX = 512;
const CORES = os.availableParallelism();
const NATIVE = path.join(import.meta.dirname, "../../pkg-scripts/bench-native.py");

/** Runs `fn(page)` in a fresh Chromium on the bench page; returns its result and the peaks. */
async function inBrowser(fn) {
  const server = await chromium.launchServer(LAUNCH);
  try {
    const browser = await chromium.connect(server.wsEndpoint());
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
    page.on("console", (m) => { if (m.type() === "error") console.log(`[page] ${m.text()}`); });
    await page.goto(APP + "bench.html");
    await page.waitForFunction(() => window.ready === true);
    const result = await fn(page);
    const memory = peaks(server.process().pid);
    await browser.close();
    return { result, memory };
  } finally {
    await server.close();
  }
}

const CONFIGS = {
  "webgguf-cpu": (args) => (page) => page.evaluate((a) => window.benchWebgguf({ ...a, device: "cpu" }), args),
  "webgguf-webgpu": (args) => (page) => page.evaluate((a) => window.benchWebgguf({ ...a, device: "webgpu" }), args),
  "wllama-1t": (args) => (page) => page.evaluate((a) => window.benchWllama({ ...a, threads: 1, gpuLayers: 0 }), args),
  "wllama-mt": (args) => (page) => page.evaluate((a) => window.benchWllama({ ...a, threads: a.cores, gpuLayers: 0 }), args),
};

const runs = []; // { config, round, maxTokens, ...figures, memory }
let baseline = 0;

async function browserRun(config, round, prompt, maxTokens) {
  const t0 = Date.now();
  const { result, memory } = await inBrowser(CONFIGS[config]({ model: MODEL, prompt, maxTokens, ctx: CTX, cores: CORES }));
  const run = { config, round, maxTokens, ...result, memory: { ...memory, renderer_over_baseline: memory.renderer - baseline } };
  runs.push(run);
  console.log(`${config.padEnd(15)} round ${round}: load ${run.load_ms.toFixed(0)} ms, TTFT ${run.ttft_ms.toFixed(0)} ms, ` +
    `prefill ${run.prefill_tok_s.toFixed(1)} tok/s, decode ${run.decode_tok_s.toFixed(1)} tok/s (${run.generated_tokens} tokens), ` +
    `renderer peak +${(run.memory.renderer_over_baseline / 2 ** 20).toFixed(0)} MiB [${((Date.now() - t0) / 1000).toFixed(0)} s]`);
  return run;
}

/** One native run: the webgguf CLI, or llama.cpp through the Python `llamaPython` that has it. */
function nativeRun(config, round, threads, llamaPython) {
  const args = llamaPython
    ? [llamaPython, [NATIVE, "llama-cpp", MODEL_FILE, PROMPT_FILE, String(DECODE_TOKENS), String(threads)]]
    : ["python3", [NATIVE, "webgguf", CLI, MODEL_FILE, PROMPT_FILE, String(DECODE_TOKENS), String(threads)]];
  const r = JSON.parse(execFileSync(args[0], args[1], { encoding: "utf8" }));
  const run = { config, round, maxTokens: DECODE_TOKENS, ...r, memory: { process: r.peak_rss_bytes } };
  runs.push(run);
  console.log(`${config.padEnd(15)} round ${round}: TTFT ${r.ttft_ms.toFixed(0)} ms, prefill ${r.prefill_tok_s.toFixed(1)} tok/s, ` +
    `decode ${r.decode_tok_s.toFixed(1)} tok/s (${r.generated_tokens} tokens), peak RSS ${(r.peak_rss_bytes / 2 ** 20).toFixed(0)} MiB`);
}

const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  if (!s.length) return null;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function summary(config, maxTokens) {
  const rs = runs.filter((r) => r.config === config && r.maxTokens === maxTokens);
  if (!rs.length) return null;
  const m = (f) => median(rs.map(f));
  return {
    config, runs: rs.length, prompt_tokens: m((r) => r.prompt_tokens), generated_tokens: m((r) => r.generated_tokens),
    load_ms: m((r) => r.load_ms), ttft_ms: m((r) => r.ttft_ms), prefill_tok_s: m((r) => r.prefill_tok_s), decode_tok_s: m((r) => r.decode_tok_s),
    peak_bytes: m((r) => r.memory.renderer_over_baseline ?? r.memory.process), gpu_process_peak_bytes: m((r) => r.memory.gpu || null),
    engine_prefill_tok_s: m((r) => r.engine?.prefill_tok_s ?? null), engine_decode_tok_s: m((r) => r.engine?.decode_tok_s ?? null),
  };
}

const fmt = (v, digits = 1) => (v == null ? "–" : v.toFixed(digits));
const mib = (v) => (v == null ? "–" : (v / 2 ** 20).toFixed(0));
const ratio = (a, b) => (a == null || b == null ? "–" : (a / b).toFixed(2));

/** A markdown table: one row per figure (medians), a column per configuration, then the ratio
 * ours / other per figure (tok/s: above 1 is better for ours; ms and MiB: below 1 is). */
function table(title, ours, others, { gpuProcess = false } = {}) {
  if (!ours) return `**${title}**: not run`;
  others = others.filter(Boolean);
  const rows = [
    ["load (ms)", (s) => s.load_ms, (v) => fmt(v, 0)],
    ["TTFT (ms)", (s) => s.ttft_ms, (v) => fmt(v, 0)],
    [`prefill tok/s (${ours.prompt_tokens} tokens)`, (s) => s.prefill_tok_s, fmt],
    [`decode tok/s (${ours.generated_tokens} tokens)`, (s) => s.decode_tok_s, fmt],
    ["peak memory (MiB)", (s) => s.peak_bytes, mib],
    ...(gpuProcess ? [["GPU process peak (MiB)", (s) => s.gpu_process_peak_bytes, mib]] : []),
  ];
  const head = ["median of runs", ...[ours, ...others].map((c) => `${c.config} (${c.runs})`), ...others.map((o) => `${ours.config} / ${o.config}`)];
  const lines = [`**${title}**`, "", `| ${head.join(" | ")} |`, `|${head.map(() => "---").join("|")}|`];
  for (const [name, get, show] of rows) {
    lines.push(`| ${[name, ...[ours, ...others].map((c) => show(get(c))), ...others.map((o) => ratio(get(ours), get(o)))].join(" | ")} |`);
  }
  return lines.join("\n");
}

async function main() {
  const gpl = fs.readFileSync("/usr/share/common-licenses/GPL-3", "utf8");
  const text = gpl.slice(gpl.indexOf("  The GNU General Public License is a free")).replace(/\s+/g, " ").trim();
  const { result: prompt } = await inBrowser((page) => page.evaluate((a) => window.promptOf(a), { model: MODEL, text, n: PROMPT_TOKENS }));
  fs.writeFileSync(PROMPT_FILE, prompt);
  ({ memory: { renderer: baseline } } = await inBrowser(async () => null));
  console.log(`prompt: ${PROMPT_TOKENS} tokens (${prompt.length} chars); renderer baseline ${mib(baseline)} MiB; ${CORES} cores`);

  // One round = every CPU configuration once, browser and native alike, so that a slower or
  // faster spell of a shared machine falls on all of them (order reversed on odd rounds).
  // [config, threads, llama.cpp's Python (null: the webgguf CLI)], those without a Python left out
  const natives = [["webgguf-native-1t", 1, null], ["llama.cpp-1t", 1, LLAMA_CPP_PYTHON], ["llama.cpp-avx2-1t", 1, LLAMA_CPP_AVX2_PYTHON],
    [`webgguf-native-${CORES}t`, CORES, null], [`llama.cpp-${CORES}t`, CORES, LLAMA_CPP_PYTHON]].filter(([c, , py]) => py || c.startsWith("webgguf"));
  const cpu = [...["webgguf-cpu", "wllama-1t", "wllama-mt"].map((c) => (round) => browserRun(c, round, prompt, DECODE_TOKENS)),
    ...natives.map(([c, threads, py]) => async (round) => nativeRun(c, round, threads, py))];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const run of round % 2 ? cpu : [...cpu].reverse()) await run(round);
  }
  for (let round = 1; round <= GPU_ROUNDS; round++) {
    for (const config of round % 2 ? ["webgguf-webgpu", "webgguf-cpu"] : ["webgguf-cpu", "webgguf-webgpu"]) await browserRun(config, round, prompt, GPU_DECODE_TOKENS);
  }

  // Every run of a length did the same work: same prompt length, every token decoded.
  for (const r of runs) {
    if (r.prompt_tokens !== PROMPT_TOKENS || r.generated_tokens !== r.maxTokens) {
      throw new Error(`${r.config} round ${r.round}: ${r.prompt_tokens} prompt tokens, ${r.generated_tokens} generated (want ${PROMPT_TOKENS}, ${r.maxTokens})`);
    }
  }
  const s = (c, n = DECODE_TOKENS) => summary(c, n);
  const tables = [
    table("webgguf vs wllama, CPU in headless Chromium", s("webgguf-cpu"), [s("wllama-1t"), s("wllama-mt")]),
    table("webgguf in the browser vs native (no browser)", s("webgguf-cpu"), [s("webgguf-native-1t"), s("llama.cpp-1t"), s("llama.cpp-avx2-1t"), s(`webgguf-native-${CORES}t`), s(`llama.cpp-${CORES}t`)]),
    table(`webgguf WebGPU (SwiftShader) vs CPU, ${GPU_DECODE_TOKENS} decoded tokens`, s("webgguf-webgpu", GPU_DECODE_TOKENS), [s("webgguf-cpu", GPU_DECODE_TOKENS)], { gpuProcess: true }),
  ];
  const chromiumVersion = execFileSync(CHROMIUM, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  const cpuinfo = fs.readFileSync("/proc/cpuinfo", "utf8");
  const field = (name) => new RegExp(`^${name}\\s*:\\s*(.*)$`, "m").exec(cpuinfo)?.[1];
  // family/model tell CPU generations apart where the model name does not ("AMD EPYC")
  const cpuModel = `${field("model name") ?? os.arch()} (family ${field("cpu family") ?? "?"}, model ${field("model") ?? "?"})`;
  const machine = `${cpuModel}, ${CORES} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; ${chromiumVersion}`;
  const gpuRun = runs.find((r) => r.config === "webgguf-webgpu");
  const report = {
    date: new Date().toISOString(), machine, model: path.basename(MODEL_FILE), prompt_tokens: PROMPT_TOKENS, decode_tokens: DECODE_TOKENS, gpu_decode_tokens: GPU_DECODE_TOKENS,
    rounds: ROUNDS, gpu_rounds: GPU_ROUNDS, webgpu_adapter: gpuRun?.engine?.adapter ?? null, baseline_renderer_bytes: baseline,
    summaries: Object.fromEntries([...new Set(runs.map((r) => `${r.config}@${r.maxTokens}`))].map((k) => { const [c, n] = k.split("@"); return [k, summary(c, Number(n))]; })),
    tables,
    runs: runs.map(({ text, ...r }) => r),
  };
  fs.writeFileSync(OUT, JSON.stringify(report, null, 1) + "\n");
  console.log(`\nmachine: ${machine}\nmodel: ${report.model}; prompt ${PROMPT_TOKENS} tokens, f16 KV, ctx ${CTX}; medians of ${ROUNDS} alternated runs (${GPU_ROUNDS} for WebGPU)\n`);
  console.log(tables.join("\n\n"));
  console.log("\nRatios are ours / other: for tok/s above 1 favours the first column, for ms and MiB below 1 does.");
  console.log(`\nJSON: ${OUT}`);
}

await main();
