#!/usr/bin/env python3
"""Criterion output (cargo bench --bench hot_path) -> markdown table.

    cargo bench --bench hot_path 2>&1 | tee /tmp/micro.txt
    python3 bench/lib/micro_report.py /tmp/micro.txt "machine, date" > bench/results/micro.md
"""
import re
import sys

NOTES = {
    "request_path/new_request_id": "`format!(\"{:032x}\", rand::random::<u128>())`, every request",
    "request_path/request_id_alternative_u64_hex_stack": "same 128 random bits, hex into a stack buffer",
    "request_path/request_meta_read": "client ip + request id (request_filter)",
    "request_path/group_select": "Group::select with breaker (upstream_peer)",
    "request_path/group_select_and_peer": "+ HttpPeer clone (upstream_peer)",
    "request_path/group_select_no_breaker": "Group::select, group without breaker",
    "request_path/pingora_lb_select_no_ext": "Pingora LoadBalancer::select alone (UniqueIterator)",
    "request_path/forwarded_for": "X-Forwarded-For value (String)",
    "request_path/upstream_headers_insert4": "header clone + XFF + 4 insert_header (upstream_request_filter)",
    "request_path/upstream_headers_clone_only": "baseline of the line above (clone only)",
    "request_path/response_header_insert_request_id": "response clone + X-Request-Id",
    "request_path/metrics_4_with_label_values": "the 4 metric updates of a request, as today",
    "request_path/metrics_4_cached_handles": "same on handles resolved once",
    "request_path/access_line_write_to_file": "AccessLine::write as today (timestamp, flatten JSON, env_logger, write(2))",
    "request_path/access_line_timestamp_only": "humantime RFC 3339 timestamp String",
    "request_path/access_line_json_only": "serde_json::to_string(AccessLine), no flatten",
    "request_path/access_line_json_flatten_with_time": "timestamp + `#[serde(flatten)]` JSON, as write() does",
    "request_path/access_line_alternative_buffered": "same bytes: no flatten, reused buffer, 64 KiB BufWriter",
    "request_path/route_lookup_host_slash": "router lookup of the bench config",
}


def to_ns(v, unit):
    return float(v) * {"ps": 1e-3, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]


def main():
    text = open(sys.argv[1], errors="replace").read()
    title = sys.argv[2] if len(sys.argv) > 2 else ""
    rows = []
    name = None
    for line in text.splitlines():
        m = re.match(r"^([a-z_0-9]+/[\w/.-]+)\s*$", line.strip())
        if m:
            name = m.group(1)
            continue
        m = re.search(r"^(\S+)?\s*time:\s+\[([\d.]+) (\S+) ([\d.]+) (\S+) ([\d.]+) (\S+)\]", line.strip())
        if m:
            bench = m.group(1) or name
            if bench:
                rows.append((bench, to_ns(m.group(2), m.group(3)), to_ns(m.group(4), m.group(5)),
                             to_ns(m.group(6), m.group(7))))
            name = None
    print("# Micro-benchmarks (`cargo bench --bench hot_path`)\n")
    if title:
        print(title + "\n")
    print("Criterion estimate (and 95 % interval); one iteration = one call.\n")
    print("| benchmark | time | interval | what |")
    print("|---|---|---|---|")
    for bench, lo, mid, hi in rows:
        def f(ns):
            return f"{ns / 1000:.2f} µs" if ns >= 1000 else (f"{ns:.1f} ns" if ns >= 1 else f"{ns * 1000:.0f} ps")
        print(f"| `{bench}` | {f(mid)} | {f(lo)} – {f(hi)} | {NOTES.get(bench, '')} |")


if __name__ == "__main__":
    main()
