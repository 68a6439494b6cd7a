#!/usr/bin/env python3
"""Turns pkg-scripts/eval-ladder's rows into PREFIX.json and PREFIX.svg (perplexity increase and
KL divergence against bits per weight; decode tok/s against file size). Plain SVG, no plotting
library. The tables in PREFIX.md are rendered from PREFIX.json by pkg-scripts/docs-tables.
  ladder-report.py ROWS.jsonl PREFIX "COMMAND"
"""
import json, math, os, platform, sys, datetime

rows_path, prefix, command = sys.argv[1:4]
rows = [json.loads(l) for l in open(rows_path) if l.strip()]
sources = []
for r in rows:
    if r["source"] not in sources:
        sources.append(r["source"])
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
machine = f"{cpu}, {os.cpu_count()} cores, {platform.system()}"
label = {"smollm2": "SmolLM2-135M (Q4_1 widened to F16 = source)", "random-llama": "random-weight llama 512×4, dims multiples of 256 (F16 source)"}

def base(src):
    return next(r["eval"] for r in rows if r["source"] == src and r["level"] == "F16")

json.dump({"command": command, "date": datetime.date.today().isoformat(), "machine": machine,
           "text": "start of /usr/share/common-licenses/GPL-3", "rows": rows}, open(prefix + ".json", "w"), indent=1)

# --- SVG: three panels ---
W, H, PAD = 340, 260, 48
colors = {"smollm2": "#1f6feb", "random-llama": "#d1242f"}

def panel(x0, title, xlab, ylab, series, logy=False):
    pts = [p for s in series for p in s[1]]
    xs = [p[0] for p in pts]
    ys = [math.log10(max(p[1], 1e-6)) if logy else p[1] for p in pts]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if y_hi == y_lo:
        y_hi = y_lo + 1
    sx = lambda v: x0 + PAD + (v - x_lo) / (x_hi - x_lo or 1) * (W - 2 * PAD)
    sy = lambda v: H - PAD + 10 - ((math.log10(max(v, 1e-6)) if logy else v) - y_lo) / (y_hi - y_lo) * (H - 2 * PAD)
    g = [f'<text x="{x0 + W/2}" y="18" text-anchor="middle" font-size="13">{title}</text>',
         f'<line x1="{x0+PAD}" y1="{H-PAD+10}" x2="{x0+W-PAD}" y2="{H-PAD+10}" stroke="#888"/>',
         f'<line x1="{x0+PAD}" y1="{PAD-10}" x2="{x0+PAD}" y2="{H-PAD+10}" stroke="#888"/>',
         f'<text x="{x0 + W/2}" y="{H-8}" text-anchor="middle" font-size="11">{xlab}</text>',
         f'<text x="{x0+12}" y="{H/2}" text-anchor="middle" font-size="11" transform="rotate(-90 {x0+12} {H/2})">{ylab}</text>']
    for v in (x_lo, (x_lo + x_hi) / 2, x_hi):
        g.append(f'<text x="{sx(v):.1f}" y="{H-PAD+24}" text-anchor="middle" font-size="10">{v:.1f}</text>')
    for f in (0, 0.5, 1):
        yv = y_lo + f * (y_hi - y_lo)
        shown = 10 ** yv if logy else yv
        ypix = H - PAD + 10 - f * (H - 2 * PAD)
        g.append(f'<text x="{x0+PAD-4}" y="{ypix+3:.1f}" text-anchor="end" font-size="10">{shown:.3g}</text>')
    for name, ps in series:
        ps = sorted(ps)
        c = colors.get(name, "#333")
        g.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (c, " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in ps)))
        for x, y, lv in ps:
            g.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{c}"><title>{name} {lv}: {y:.4g}</title></circle>')
    return g

def series(key, f, srcs):
    return [(s, [(r["eval"]["bits_per_weight"] if key == "bpw" else r["eval"]["file_bytes"] / 1e6, f(s, r["eval"]), r["level"])
                 for r in rows if r["source"] == s and (r["level"] != "F16" or key != "bpw_kl")]) for s in srcs]

p1 = series("bpw", lambda s, e: (e["ppl"] / base(s)["ppl"] - 1) * 100, ["smollm2"])
p2 = [(s, [(r["eval"]["bits_per_weight"], r["eval"]["kl_mean"], r["level"]) for r in rows if r["source"] == s and r["level"] != "F16"]) for s in sources]
p3 = series("size", lambda s, e: e["decode_tok_s"], sources)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{3*W}" height="{H+34}" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>']
svg += panel(0, "SmolLM2: perplexity increase", "bits per weight", "Δ perplexity %", p1)
svg += panel(W, "KL(source ‖ level), log scale", "bits per weight", "KL nats", p2, logy=True)
svg += panel(2 * W, "CPU decode speed", "file MB", "tok/s", p3)
for i, s in enumerate(sources):
    svg.append(f'<text x="{PAD + 1.5 * W * i}" y="{H + 26}" font-size="11" fill="{colors.get(s, "#333")}">● {label.get(s, s)}</text>')
svg.append("</svg>")
open(prefix + ".svg", "w").write("\n".join(svg))
print(f"ladder-report: wrote {prefix}.json and {prefix}.svg; pkg-scripts/docs-tables renders the tables into {prefix}.md")
