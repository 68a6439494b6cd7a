// The multi-turn chat benchmark (run by pkg-scripts/bench-chat, which builds the package,
// serves an app holding it and the model, and sets the environment below). Prints numbers and
// writes JSON; asserts only that both runs gave the same answers.
//
// One Chromium page (web/bench/large.html: the package imported by name), the engine on the
// page's thread on the CPU path (createEngine, device "cpu", f16 KV, 4096 positions, cache
// off). A chat of TURNS turns: each user message is TURN_WORDS words of the GPL-3 text
// (tests/fixtures/text), each answer ANSWER_TOKENS greedy tokens, appended to the history as
// the assistant's message. Run twice on fresh engines: with prefix reuse (the default) and
// with `reusePrefix: false`. Per turn: TTFT (stats().ttft_ms: prefill and the first token),
// prompt tokens, and the tokens taken from the cache (usage.prompt_tokens_details).
import fs from "node:fs";
import os from "node:os";
import { chromium } from "playwright-core";
import { LAUNCH } from "../test/chromium.mjs";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set: run through pkg-scripts/bench-chat`);
  return v;
};
const APP = env("BENCH_APP_URL");
const OUT = env("BENCH_OUT");
const MODEL = env("BENCH_MODEL");
const TURNS = Number(env("TURNS", "8"));
const TURN_WORDS = Number(env("TURN_WORDS", "180"));
const ANSWER_TOKENS = Number(env("ANSWER_TOKENS", "16"));

const words = fs.readFileSync(new URL("../../tests/fixtures/text/GPL-3", import.meta.url), "utf8").split(/\s+/).filter(Boolean);
const userMessages = Array.from({ length: TURNS }, (_, i) => `Summarize this part in one line: ${words.slice(i * TURN_WORDS, (i + 1) * TURN_WORDS).join(" ")}`);

const browser = await chromium.launch(LAUNCH);
const browserVersion = browser.version();
const page = await (await browser.newContext()).newPage();
await page.goto(APP + "large.html");
await page.waitForFunction(() => window.ready === true);
const runs = {};
for (const reusePrefix of [true, false]) {
  runs[reusePrefix ? "reuse" : "no_reuse"] = await page.evaluate(
    async ({ model, userMessages, answerTokens, reusePrefix }) => {
      const engine = await window.webgguf.createEngine({ model, device: "cpu", kvCache: "f16", contextLength: 4096, cache: false, reusePrefix });
      const messages = [{ role: "system", content: "You are a helpful assistant." }];
      const turns = [];
      for (const content of userMessages) {
        messages.push({ role: "user", content });
        const r = await engine.chat.completions.create({ messages, max_tokens: answerTokens, temperature: 0 });
        const s = await engine.stats();
        messages.push(r.choices[0].message);
        turns.push({ ttft_ms: s.ttft_ms, prompt_tokens: r.usage.prompt_tokens, cached_tokens: r.usage.prompt_tokens_details.cached_tokens, prefilled: s.prompt_tokens, answer: r.choices[0].message.content });
      }
      await engine.unload();
      return turns;
    },
    { model: MODEL, userMessages, answerTokens: ANSWER_TOKENS, reusePrefix },
  );
}
await browser.close();
const { reuse, no_reuse } = runs;
const same = reuse.every((t, i) => t.answer === no_reuse[i].answer);
const rows = reuse.map((t, i) => `| ${i + 1} | ${t.prompt_tokens} | ${t.cached_tokens} | ${t.ttft_ms.toFixed(0)} | ${no_reuse[i].ttft_ms.toFixed(0)} |`);
const ratio = (r) => r.at(-1).ttft_ms / r[0].ttft_ms;
const table = [
  `| turn | prompt tokens | from the cache | TTFT with reuse, ms | TTFT without, ms |`,
  `|---:|---:|---:|---:|---:|`,
  ...rows,
  ``,
  `TTFT of turn ${TURNS} / turn 1: ${ratio(reuse).toFixed(2)} with reuse, ${ratio(no_reuse).toFixed(2)} without; answers identical: ${same}.`,
].join("\n");
console.log(table);
const machine = `${os.cpus()[0]?.model ?? "unknown CPU"}, ${os.cpus().length} cores, Chromium ${browserVersion}`;
fs.writeFileSync(OUT, JSON.stringify({ date: new Date().toISOString(), machine, model: MODEL, turns: TURNS, turn_words: TURN_WORDS, answer_tokens: ANSWER_TOKENS, same_answers: same, ratio_reuse: ratio(reuse), ratio_no_reuse: ratio(no_reuse), reuse, no_reuse, table }, null, 2) + "\n");
if (!same) {
  console.error("bench-chat: the runs with and without reuse answered differently");
  process.exit(1);
}
