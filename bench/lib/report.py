#!/usr/bin/env python3
"""Parses load-generator output and writes the benchmark report (markdown + SVG + JSON).

Subcommands (used by bench/compare.sh):
  record --round R --scenario S --target T ... --raw FILE   -> one JSON line on stdout
  line                                                     <- one JSON line on stdin, prints a summary
  rate RUNS.jsonl ROUND SCENARIO                           -> 50% of the lowest proxy max req/s
  report --raw DIR --out PATH_STEM                         -> PATH_STEM.md, .svg, .json
"""
import argparse
import json
import os
import re
import statistics
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIO_TITLES = {
    "plain": "HTTP/1.1 keep-alive, plaintext, 64 B",
    "https": "HTTPS (HTTP/1.1) keep-alive, 64 B",
    "h2": "HTTP/2 over TLS, 64 B (10 conns x 10 streams)",
    "handshake": "New TLS connection per request (full handshake), 64 B",
    "1m": "1 MiB bodies, HTTP/1.1 keep-alive, plaintext",
    "latency": "Latency at a fixed offered load, HTTPS keep-alive, 64 B",
}
SCENARIO_TOOLS = {
    "plain": "wrk -t1 -c50 -d{d}s --latency http://.../",
    "https": "wrk -t1 -c50 -d{d}s --latency https://.../",
    "h2": "h2load -t1 -c10 -m10 -D {d} https://.../",
    "handshake": "tg-loadgen conn https://.../ --duration {d} --conns 20 (new TCP+TLS connection per request, resumption disabled)",
    "1m": "wrk -t1 -c10 -d{d}s --latency http://.../1m",
    "latency": "tg-loadgen rate https://.../ --rate R --conns 50 (open loop, constant rate)",
}
ORDER = ["plain", "https", "h2", "handshake", "1m", "latency"]
COLORS = {"tollgate": "#d9480f", "nginx": "#2b8a3e", "haproxy": "#1971c2", "direct": "#868e96"}
EXTRA_COLORS = ["#ae3ec9", "#f08c00", "#0c8599", "#5c940d", "#c2255c"]


def dur_us(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text.strip())
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def parse_wrk(out):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            r[f"p{pct}_us"] = dur_us(m.group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    r["errors"] = errors
    return r


def parse_h2load(out, log_path):
    r = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(2))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout", out)
    if m:
        total, started, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        r["requests"] = done
        r["errors"] = failed + errored + timeout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["errors"] = r.get("errors", 0) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for connect:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["connect_mean_us"] = dur_us(m.group(3))
    m = re.search(r"time to 1st byte:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["ttfb_mean_us"] = dur_us(m.group(3))
    lat = []
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    try:
                        lat.append(int(parts[2]))
                    except ValueError:
                        pass
    if lat:
        lat.sort()
        r["p50_us"] = lat[int(0.50 * (len(lat) - 1))]
        r["p99_us"] = lat[int(0.99 * (len(lat) - 1))]
    return r


def parse_loadgen(out):
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            j = json.loads(line)
            return {
                "requests": j["requests"], "rps": j["achieved_rps"],
                "errors": j["errors"] + j["non2xx"], "p50_us": j["p50_us"], "p90_us": j["p90_us"],
                "p99_us": j["p99_us"], "p999_us": j["p999_us"], "max_us": j["max_us"],
                "offered_rps": j["offered_rps"], "late": j["late"],
            }
    return {"errors": 1}


def cmd_record(a):
    out = open(a.raw, errors="replace").read() if os.path.exists(a.raw) else ""
    if a.tool == "wrk":
        r = parse_wrk(out)
    elif a.tool == "h2load":
        r = parse_h2load(out, a.log)
    else:
        r = parse_loadgen(out)
    rec = {"round": a.round, "scenario": a.scenario, "target": a.target, "kind": a.kind,
           "tool": a.tool, "wall_s": round(a.wall, 3), "cpu_s": a.cpu_ticks / CLK_TCK,
           "rss_kib": a.rss_kib, "access_lines": a.access_lines}
    rec.update(r)
    req = rec.get("requests") or 0
    rec["cpu_us_per_req"] = (a.cpu_ticks / CLK_TCK * 1e6 / req) if req else None
    rec["proxy_util"] = (a.cpu_ticks / CLK_TCK) / a.wall if a.wall > 0 else None
    rec["core1_other_util"] = max(0.0, (a.core1_ticks - a.cpu_ticks) / CLK_TCK / a.wall) if a.wall > 0 else None
    if a.kind == "direct":
        rec["cpu_note"] = "backend nginx on core 0 (not a proxy)"
    print(json.dumps(rec))


def fmt_us(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1e3:
        return f"{v / 1e3:.2f} ms"
    return f"{v:.0f} µs"


def cmd_line(_a):
    r = json.loads(sys.stdin.readline())
    cpu = r.get("cpu_us_per_req")
    print(f"    {r['target']:>10} {r['scenario']:>9}: {r.get('rps', 0):>9.0f} req/s  "
          f"cpu {cpu if cpu is None else round(cpu, 1)} µs/req  p99 {fmt_us(r.get('p99_us'))}  "
          f"err {r.get('errors')}  util {r.get('proxy_util') or 0:.2f} (core 1 others {r.get('core1_other_util') or 0:.2f})"
          + (f"  access lines {r['access_lines']}" if r.get("kind") == "tollgate" else ""))


def cmd_rate(a):
    rps = []
    if os.path.exists(a.runs):
        for line in open(a.runs):
            r = json.loads(line)
            if r["round"] == int(a.round) and r["scenario"] == a.scenario and r["kind"] != "direct" \
                    and r.get("rps"):
                rps.append(r["rps"])
    print(int(0.5 * min(rps)) if rps else 5000)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(v):
    return "–" if v is None else f"{v:.2f}"


def fmt_num(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def load(raw):
    meta = json.load(open(os.path.join(raw, "meta.json")))
    runs = [json.loads(l) for l in open(os.path.join(raw, "runs.jsonl")) if l.strip()]
    memp = os.path.join(raw, "memory.jsonl")
    mem = [json.loads(l) for l in open(memp) if l.strip()] if os.path.exists(memp) else []
    tlsp = os.path.join(raw, "tls.txt")
    tls = open(tlsp).read().strip() if os.path.exists(tlsp) else ""
    return meta, runs, mem, tls


def summarize(runs):
    """(scenario, target) -> medians over rounds (and the CPU range)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["target"]), []).append(r)
    summary = {}
    for key, rs in groups.items():
        cpu = [r.get("cpu_us_per_req") for r in rs if r.get("cpu_us_per_req") is not None]
        s = {
            "kind": rs[0]["kind"], "rounds": len(rs),
            "rps": median([r.get("rps") for r in rs]),
            "cpu_us": median(cpu), "cpu_min": min(cpu) if cpu else None,
            "cpu_max": max(cpu) if cpu else None,
            "p50_us": median([r.get("p50_us") for r in rs]),
            "p99_us": median([r.get("p99_us") for r in rs]),
            "p999_us": median([r.get("p999_us") for r in rs]),
            "errors": sum(r.get("errors") or 0 for r in rs),
            "requests": sum(r.get("requests") or 0 for r in rs),
            "rss_kib": median([r.get("rss_kib") for r in rs]),
            "util": median([r.get("proxy_util") for r in rs]),
            "other": median([r.get("core1_other_util") for r in rs]),
            "offered_rps": median([r.get("offered_rps") for r in rs]),
            "connect_mean_us": median([r.get("connect_mean_us") for r in rs]),
            "access_lines": sum(r.get("access_lines") or 0 for r in rs),
            "p99_rounds": [r.get("p99_us") for r in sorted(rs, key=lambda r: r["round"])],
            "other_rounds": [r.get("core1_other_util") for r in sorted(rs, key=lambda r: r["round"])],
            "offered_rounds": [r.get("offered_rps") for r in sorted(rs, key=lambda r: r["round"])],
        }
        summary[key] = s
    return summary


def targets_in(runs):
    seen = []
    pref = ["direct", "tollgate"]
    for r in runs:
        if r["target"] not in seen:
            seen.append(r["target"])
    tg = [t for t in seen if t not in ("direct", "nginx", "haproxy")]
    return [t for t in ["direct"] if t in seen] + ["tollgate"] * ("tollgate" in tg) + \
        [t for t in tg if t != "tollgate"] + [t for t in ("nginx", "haproxy") if t in seen]


def color_of(t, targets):
    if t in COLORS:
        return COLORS[t]
    extras = [x for x in targets if x not in COLORS]
    return EXTRA_COLORS[extras.index(t) % len(EXTRA_COLORS)]


def write_markdown(path, meta, runs, mem, tls, summary):
    targets = targets_in(runs + mem)
    scenarios = [s for s in ORDER if any(r["scenario"] == s for r in runs)]
    proxies = [t for t in targets if t != "direct"]
    refs = [r for r in ("nginx", "haproxy") if r in targets] or ["tollgate"]
    L = []
    L.append(f"# {meta.get('title', 'Benchmark')}\n")
    L.append(f"Generated by `{meta['command']}` on {meta['date']}; "
             f"{meta['rounds']} interleaved round(s) of {meta['duration_s']} s per run, "
             f"medians over rounds (CPU range min–max in parentheses).\n")
    L.append(f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['mem_total']}, Linux "
             f"{meta['kernel']}; shared and noisy (load average at start "
             f"{' '.join(meta['loadavg_start'])}).")
    L.append("- Pinning: proxies on core 1 (`taskset -c 1`, one worker/thread each); load "
             "generators and the nginx backends (one worker, 64 B body at `/`, 1 MiB file at "
             "`/1m`) on core 0.")
    source = meta.get("tollgate_source") or (
        f"rev {meta['tollgate_rev']}, {meta['tollgate_dirty_files']} uncommitted files in the tree")
    L.append(f"- Tollgate: `{meta['tollgate_bin']}` ({source}), bench/conf/tollgate.yaml: "
             "threads 1, work_stealing false, one route over two backends, HTTP health checks, "
             "circuit breaker, retries, per-IP token-bucket rate limit (never refusing), JSON "
             "access log to a file, metrics + admin listeners.")
    L.append(f"- {meta['nginx']} (bench/conf/nginx.conf), {meta['haproxy']} "
             f"(bench/conf/haproxy.cfg), {meta['wrk']}, {meta['h2load']}, {meta['openssl']}.")
    if tls:
        L.append("- TLS negotiated (openssl s_client): " + "; ".join(
            l.strip().rstrip(";") for l in tls.splitlines()))
    for note in meta.get("notes", []):
        L.append(f"- **Note:** {note}")
    L.append("- CPU-µs/req = utime+stime of the proxy's processes (all of nginx's, HAProxy's one, "
             "Tollgate's one with all threads) during the run / requests completed. `util` = "
             "proxy CPU / wall time (≈1.00: the proxy was the bottleneck). Errors = socket "
             "errors + non-2xx + failed requests, summed over rounds. RSS MiB = summed VmRSS "
             "after the run.\n")

    # Compact table (the README one).
    L.append(f"## Summary: CPU-µs per request (ratio to {' / to '.join(refs)})\n")
    heads = [s for s in scenarios if s != "latency"]
    L.append("| target | " + " | ".join(heads) + " |")
    L.append("|---|" + "---|" * len(heads))
    for t in proxies:
        cells = []
        for s in heads:
            v = summary.get((s, t), {}).get("cpu_us")
            rs = " / ".join(fmt_ratio(ratio(v, summary.get((s, r), {}).get("cpu_us"))) for r in refs)
            cells.append("–" if v is None else f"{v:.1f} ({rs})")
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("| requests/s | " + " | ".join(heads) + " |")
    L.append("|---|" + "---|" * len(heads))
    for t in targets:
        L.append(f"| {t} | " + " | ".join(fmt_num(summary.get((s, t), {}).get("rps")) for s in heads) + " |")
    if "latency" in scenarios:
        L.append("")
        L.append("| latency at a fixed load | offered req/s | p50 | p99 | p99.9 |")
        L.append("|---|---|---|---|---|")
        for t in targets:
            s = summary.get(("latency", t))
            if s:
                L.append(f"| {t} | {fmt_num(s['offered_rps'])} | {fmt_us(s['p50_us'])} | "
                         f"{fmt_us(s['p99_us'])} | {fmt_us(s['p999_us'])} |")
    if mem:
        L.append("")
        L.append(f"| memory | idle HTTPS keep-alive conns | RSS before | RSS after | KiB per connection |")
        L.append("|---|---|---|---|---|")
        for m in mem:
            per = (m["rss_after_kib"] - m["rss_before_kib"]) / m["conns"] if m["conns"] else None
            L.append(f"| {m['target']} | {m['conns']:,} | {m['rss_before_kib'] / 1024:.1f} MiB | "
                     f"{m['rss_after_kib'] / 1024:.1f} MiB | {fmt_num(per, 1)} |")
    L.append("")

    for s in scenarios:
        L.append(f"## {SCENARIO_TITLES.get(s, s)}\n")
        L.append(f"`{SCENARIO_TOOLS.get(s, '').format(d=meta['duration_s'])}`\n")
        if s == "latency":
            if meta.get("cores_awake_for_latency"):
                L.append("Idle cores poll instead of halting during these runs "
                         "(`/dev/cpu_dma_latency` held at 0).\n")
            elif "cores_awake_for_latency" in meta:
                L.append("Idle cores halt during these runs (`/dev/cpu_dma_latency` not writable): "
                         "on a VM, waking a halted vCPU adds ~100 µs to each hop.\n")
            L.append("| target | offered req/s | achieved req/s | p50 | p99 | p99.9 | errors | "
                     "CPU-µs/req | RSS MiB | per round: p99 @ offered req/s (others on core 1) |")
            L.append("|---|---|---|---|---|---|---|---|---|---|")
        else:
            L.append("| target | req/s | CPU-µs/req | " + " | ".join(f"vs {r}" for r in refs) +
                     " | p99 | errors | RSS MiB | util (others on core 1) |")
            L.append("|---|---|---|" + "---|" * len(refs) + "---|---|---|---|")
        for t in targets:
            v = summary.get((s, t))
            if not v:
                continue
            direct = v["kind"] == "direct"
            cpu = "n/a (backend)" if direct else (
                "–" if v["cpu_us"] is None else
                f"{v['cpu_us']:.1f}" + (f" ({v['cpu_min']:.1f}–{v['cpu_max']:.1f})"
                                         if v["rounds"] > 1 else ""))
            rss = "–" if v["rss_kib"] is None else f"{v['rss_kib'] / 1024:.1f}"
            if s == "latency":
                per = ", ".join(f"{fmt_us(p)} @ {fmt_num(r)} ({o or 0:.2f})" for p, r, o in
                                zip(v["p99_rounds"], v["offered_rounds"], v["other_rounds"]))
                L.append(f"| {t} | {fmt_num(v['offered_rps'])} | {fmt_num(v['rps'])} | "
                         f"{fmt_us(v['p50_us'])} | {fmt_us(v['p99_us'])} | {fmt_us(v['p999_us'])} | "
                         f"{v['errors']} | {cpu} | {rss} | {per} |")
            else:
                rr = " | ".join("–" if direct else fmt_ratio(ratio(
                    v["cpu_us"], summary.get((s, r), {}).get("cpu_us"))) for r in refs)
                p99 = fmt_us(v["p99_us"])
                util = "–" if direct or v["util"] is None else (
                    f"{v['util']:.2f} ({v['other'] or 0:.2f})")
                L.append(f"| {t} | {fmt_num(v['rps'])} | {cpu} | {rr} | {p99} | "
                         f"{v['errors']} | {rss} | {util} |")
        L.append("")
    tg = [t for t in proxies if summary.get(("plain", t), {}).get("kind") == "tollgate"]
    if tg:
        L.append("Access log check (Tollgate, lines written / requests completed, all runs): " + ", ".join(
            f"{t}: {sum(summary[(s, t)]['access_lines'] for s in scenarios if (s, t) in summary):,} / "
            f"{sum(summary[(s, t)]['requests'] for s in scenarios if (s, t) in summary):,}"
            for t in tg) + "\n")
    L.append("Chart: " + os.path.basename(path)[:-3] + ".svg. Raw runs (gitignored): "
             "bench/results/raw/.\n")
    open(path, "w").write("\n".join(L))


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_svg(path, meta, runs, mem, summary):
    targets = targets_in(runs + mem)
    proxies = [t for t in targets if t != "direct"]
    panels = []
    for s in ["plain", "https", "h2", "handshake", "1m"]:
        vals = [(t, summary.get((s, t), {}).get("cpu_us")) for t in proxies]
        if any(v is not None for _, v in vals):
            panels.append((f"CPU-µs per request: {s}", vals, "µs"))
    vals = [(t, summary.get(("plain", t), {}).get("rps")) for t in targets]
    if any(v is not None for _, v in vals):
        panels.append(("requests/s: plain h1 keep-alive", vals, "req/s"))
    vals = [(t, summary.get(("latency", t), {}).get("p99_us")) for t in targets]
    if any(v is not None for _, v in vals):
        off = summary.get(("latency", "tollgate"), {}).get("offered_rps")
        panels.append((f"p99 latency at {fmt_num(off)} req/s (HTTPS)", vals, "µs"))
    if mem:
        vals = [(m["target"], (m["rss_after_kib"] - m["rss_before_kib"]) / m["conns"] if m["conns"] else None)
                for m in mem]
        panels.append(("KiB per idle HTTPS connection", vals, "KiB"))
    cols = 2
    pw, row_h, pad = 430, 22, 14
    ph = max(len(p[1]) for p in panels) * row_h + 46 if panels else 100
    rows = (len(panels) + cols - 1) // cols
    W, H = cols * pw + 20, rows * (ph + pad) + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="Helvetica,Arial,sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="10" y="22" font-size="15" font-weight="bold">{esc(meta.get("title", ""))}</text>',
           f'<text x="10" y="40" fill="#555">{esc(meta["cpu"])}, {meta["cores"]} cores; proxies pinned '
           f'to 1 core; medians of {meta["rounds"]} round(s) x {meta["duration_s"]} s; {esc(meta["date"])}; '
           f'lower is better except req/s</text>']
    for i, (title, vals, unit) in enumerate(panels):
        x0 = 10 + (i % cols) * pw
        y0 = 60 + (i // cols) * (ph + pad)
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw - 10}" height="{ph}" fill="#f8f9fa" stroke="#dee2e6"/>')
        out.append(f'<text x="{x0 + 8}" y="{y0 + 18}" font-weight="bold">{esc(title)}</text>')
        vmax = max([v for _, v in vals if v is not None] or [1])
        label_w, bar_max = 70, pw - 10 - 70 - 175
        for j, (t, v) in enumerate(vals):
            y = y0 + 30 + j * row_h
            out.append(f'<text x="{x0 + 8}" y="{y + 13}">{esc(t)}</text>')
            if v is None:
                out.append(f'<text x="{x0 + label_w + 8}" y="{y + 13}" fill="#999">n/a</text>')
                continue
            w = max(1.0, bar_max * v / vmax)
            out.append(f'<rect x="{x0 + label_w + 8}" y="{y + 2}" width="{w:.1f}" height="{row_h - 6}" '
                       f'fill="{color_of(t, targets)}"/>')
            txt = f"{v:,.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}"
            ref = "nginx" if "nginx" in dict(vals) else "tollgate"
            n = dict(vals).get(ref)
            if t not in (ref, "direct") and n and unit != "req/s":
                txt += f"  ({v / n:.2f}x {ref})"
            out.append(f'<text x="{x0 + label_w + 12 + w:.1f}" y="{y + 13}">{esc(txt)}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


def cmd_report(a):
    meta, runs, mem, tls = load(a.raw)
    summary = summarize(runs)
    write_markdown(a.out + ".md", meta, runs, mem, tls, summary)
    write_svg(a.out + ".svg", meta, runs, mem, summary)
    json.dump({"meta": meta, "summary": {f"{s}/{t}": v for (s, t), v in summary.items()},
               "memory": mem, "runs": runs}, open(a.out + ".json", "w"), indent=1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--scenario", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--kind", required=True)
    r.add_argument("--tool", required=True)
    r.add_argument("--raw", required=True)
    r.add_argument("--log")
    r.add_argument("--cpu-ticks", type=int, required=True)
    r.add_argument("--core1-ticks", type=int, default=0)
    r.add_argument("--wall", type=float, required=True)
    r.add_argument("--rss-kib", type=int, default=0)
    r.add_argument("--access-lines", type=int, default=0)
    r.add_argument("--rate", type=float, default=0)
    sub.add_parser("line")
    q = sub.add_parser("rate")
    q.add_argument("runs")
    q.add_argument("round")
    q.add_argument("scenario")
    o = sub.add_parser("report")
    o.add_argument("--raw", required=True)
    o.add_argument("--out", required=True)
    a = p.parse_args()
    {"record": cmd_record, "line": cmd_line, "rate": cmd_rate, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
