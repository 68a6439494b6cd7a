// Shared by the benchmarks (browser.bench.mjs, large.bench.mjs).
import fs from "node:fs";

/** Peak RSS (VmHWM, bytes) of the browser's renderer and GPU processes, by walking its process tree. */
export function peaks(rootPid) {
  const parent = new Map();
  for (const pid of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      parent.set(Number(pid), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch { /* gone */ }
  }
  const out = { renderer: 0, gpu: 0 };
  for (const pid of parent.keys()) {
    let p = pid;
    while (p && p !== rootPid) p = parent.get(p);
    if (p !== rootPid || pid === rootPid) continue;
    let cmd, status;
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
      status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    } catch { continue; }
    const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
    if (cmd.includes("--type=renderer")) out.renderer = Math.max(out.renderer, hwm);
    else if (cmd.includes("--type=gpu-process")) out.gpu = Math.max(out.gpu, hwm);
  }
  return out;
}
