#!/usr/bin/env bash
# Profiles Tollgate (pinned to core 1, bench/conf/tollgate.yaml) under the plaintext HTTP/1.1
# keep-alive load of compare.sh (wrk -t1 -c50 on core 0) with perf, and writes
# bench/results/profile.md: top self-time symbols, self time by component, and inclusive time
# of Tollgate's own phases.
#
#   bench/profile.sh [--duration S] [--tollgate-bin PATH] [--no-build] [--no-pgo] [--scenario plain|https]
#
# Two recordings of the same load: `perf record -e cpu-clock -g` (frame pointers; the self-time
# table) and `--call-graph dwarf` (the inclusive cost of each ProxyHttp phase, as Rust code here
# has no frame pointers). Needs linux-perf (apt-get install linux-perf).
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
WORK=${BENCH_WORK:-/tmp/tollgate-bench}
DUR=10
SCEN=plain
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DUR=$2; shift ;;
    --scenario) SCEN=$2; shift ;;
    --tollgate-bin) ARGS+=(--tollgate-bin "$2"); shift ;;
    --no-build) ARGS+=(--no-build) ;;
    --no-pgo) ARGS+=(--no-pgo) ;;
    *) echo "profile.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=lib/apt.sh
. "$BENCH/lib/apt.sh"
apt_need perf:linux-perf || { echo "perf missing (apt-get install linux-perf)" >&2; exit 1; }

mkdir -p "$WORK"
# shellcheck source=lib/serve.sh
. "$BENCH/lib/serve.sh"
serve "$WORK/profile-serve.log" "${ARGS[@]}" --targets tollgate
PID=$(served tollgate pid); PORT=$(served tollgate http); SPORT=$(served tollgate https)
URL="http://127.0.0.1:$PORT/"
[ "$SCEN" = https ] && URL="https://127.0.0.1:$SPORT/"
BIN=$(readlink -f "/proc/$PID/exe")
OUT=$BENCH/results/profile.md
RAW=$BENCH/results/raw/profile-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RAW"

load() { # seconds name -> $W
  taskset -c 0 wrk -t1 -c50 -d"$1"s --latency "$URL" > "$RAW/wrk-$2.txt" 2>&1 &
  W=$!
}
ticks() { sed 's/^.*) //' "/proc/$PID/stat" | awk '{print $12 + $13}'; }

echo "profiling pid $PID ($BIN) under wrk $URL" >&2
taskset -c 0 wrk -t1 -c50 -d3s "$URL" >/dev/null 2>&1   # warm-up

# 1. Frame-pointer call graphs (as in the issue), used for the self-time table.
load $((DUR + 2)) fp; sleep 1
c0=$(ticks)
perf record -q -e cpu-clock -g -p "$PID" -o "$RAW/perf-fp.data" -- sleep "$DUR" 2>/dev/null
c1=$(ticks)
wait "$W" || true

# 2. DWARF call graphs for inclusive (children) time of Tollgate's own functions.
load 6 dwarf; sleep 1
perf record -q -e cpu-clock -F 2000 --call-graph dwarf,16384 -p "$PID" -o "$RAW/perf-dwarf.data" -- sleep 3 2>/dev/null
wait "$W" || true

perf report -i "$RAW/perf-fp.data" --no-children --sort symbol --stdio -g none --percent-limit 0.01 \
  2>/dev/null > "$RAW/self.txt"
perf report -i "$RAW/perf-fp.data" --no-children --sort dso,symbol --stdio -g none --percent-limit 0 \
  2>/dev/null > "$RAW/self-dso.txt"
perf report -i "$RAW/perf-dwarf.data" --children --sort symbol --stdio -g none --percent-limit 0.2 \
  2>/dev/null > "$RAW/children.txt"

python3 "$BENCH/lib/profile_report.py" --raw "$RAW" --out "$OUT" --bin "$BIN" \
  --cpu-ticks $((c1 - c0)) --duration "$DUR" --url "$URL"
echo "wrote ${OUT#"$REPO"/} (raw: ${RAW#"$REPO"/})" >&2
