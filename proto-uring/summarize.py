#!/usr/bin/env python3
"""Summarizes bench.sh's runs.csv: medians per target and per-round ratios (markdown)."""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
checks = open(sys.argv[2]).read().strip() if len(sys.argv) > 2 else ""


def ms(v):
    """wrk's latency ("950.00us", "1.20ms", "1.02s") in milliseconds."""
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float("nan")


def per_req(r, field):
    ticks = int(r[field])
    return ticks / int(r["clk_tck"]) * 1e6 / max(int(r["requests"]), 1)


for r in rows:
    r["rps"] = float(r["rps"])
    r["user"] = per_req(r, "cpu_user_ticks")
    r["sys"] = per_req(r, "cpu_sys_ticks")
    r["cpu"] = r["user"] + r["sys"]
    r["origins"] = per_req(r, "origin_ticks")
    r["wrk"] = per_req(r, "wrk_ticks")
    r["all"] = r["cpu"] + r["origins"] + r["wrk"]

targets = []
for r in rows:
    if r["target"] not in targets:
        targets.append(r["target"])
rounds = sorted({int(r["round"]) for r in rows})
by = {(int(r["round"]), r["target"]): r for r in rows}

out = []
out.append("Medians over the rounds (p50/p99: wrk's latency percentiles, median of the rounds).")
out.append("")
out.append("| target | req/s (median) | CPU µs/req | user µs/req | sys µs/req | origins+wrk µs/req | p50 | p99 | non-2xx | socket errors |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in targets:
    rs = [r for r in rows if r["target"] == t]
    med = lambda k: statistics.median(r[k] for r in rs)
    p50 = f"{statistics.median(ms(r['p50']) for r in rs):.2f}ms"
    p99 = f"{statistics.median(ms(r['p99']) for r in rs):.2f}ms"
    out.append(
        f"| {t} | {med('rps'):,.0f} | {med('cpu'):.2f} | {med('user'):.2f} | {med('sys'):.2f} | {statistics.median(r['origins'] + r['wrk'] for r in rs):.2f} | "
        f"{p50} | {p99} | {sum(int(r['non2xx']) for r in rs)} | {sum(int(r['socket_errors']) for r in rs)} |"
    )

out.append("")
out.append("Per round (req/s; CPU µs/req = user + sys):")
out.append("")
out.append("| round | " + " | ".join(f"{t} req/s | {t} CPU" for t in targets) + " |")
out.append("|---|" + "---:|---:|" * len(targets))
for rd in rounds:
    cells = []
    for t in targets:
        r = by.get((rd, t))
        cells += [f"{r['rps']:,.0f}", f"{r['cpu']:.2f} ({r['user']:.2f}+{r['sys']:.2f})"] if r else ["-", "-"]
    out.append(f"| {rd} | " + " | ".join(cells) + " |")

pairs = [("proto-uring", "upkeep"), ("proto-uring", "haproxy"), ("upkeep", "haproxy")]
out.append("")
out.append("Per-round ratios (req/s ratio: higher is better for the first; CPU/req ratio: lower is better):")
out.append("")
out.append("| ratio | " + " | ".join(f"round {rd}" for rd in rounds) + " | median |")
out.append("|---|" + "---:|" * (len(rounds) + 1))
for a, b in pairs:
    if a not in targets or b not in targets:
        continue
    for key, label in (("rps", "req/s"), ("cpu", "CPU/req"), ("user", "user/req"), ("sys", "sys/req"), ("all", "proxy+origins+wrk CPU/req")):
        vals = []
        for rd in rounds:
            ra, rb = by.get((rd, a)), by.get((rd, b))
            vals.append(ra[key] / rb[key] if ra and rb and rb[key] else None)
        good = [v for v in vals if v is not None]
        med = statistics.median(good) if good else None
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        out.append(f"| {a}/{b} {label} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(med)} |")

out.append("")
out.append("Load average (1 min) before each run: " + ", ".join(f"r{r['round']} {r['target']} {r['loadavg']}" for r in rows))
if checks:
    out.append("")
    out.append("Correctness (curl before the runs):")
    out.append("")
    out.extend("- " + line for line in checks.splitlines())
print("\n".join(out))
