#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: Tollgate against bare Pingora,
# nginx, HAProxy (and any --variant), per scenario. Instruction counts are repeatable for the
# same binary and input whatever else the machine is doing, so an A/B of a hot-path change can
# be judged here when the machine is too noisy for CPU time (bench/compare.sh). Written to
# bench/results/callgrind.md (or --out NAME), with the functions of Tollgate's own code and
# Pingora's that cost the most instructions per request, inclusive.
#
#   bench/callgrind.sh [--requests N] [--targets LIST] [--scenarios plain,https,h2]
#                      [--variant NAME=BIN...] [--tollgate-bin PATH] [--no-build] [--no-pgo] [--out NAME]
#                      [--sim]
#
# --sim adds callgrind's cache and branch-predictor simulation (slower): the report then also
# has first-level instruction and data cache misses, last-level misses and mispredicted
# branches per request, which is where two programs with the same instruction count differ.
#
# Each target serves under `valgrind --tool=callgrind` (compare.sh --serve with PROXY_WRAP);
# after a warm-up its counters are zeroed, N requests run (h2load, 50 connections; h2: 10
# connections x 10 streams), and the counters are dumped: Ir / N is the cost of a request,
# including the kernel-facing syscall wrappers but not the kernel itself.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
WORK=${BENCH_WORK:-/tmp/tollgate-bench}
N=20000
TARGETS=tollgate,bare
SCENARIOS=plain,https,h2
OUT=callgrind
SIM=""
ARGS=()
CMDLINE="bench/callgrind.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --variant) ARGS+=(--variant "$2"); shift ;;
    --tollgate-bin) ARGS+=(--tollgate-bin "$2"); shift ;;
    --no-build) ARGS+=(--no-build) ;;
    --no-pgo) ARGS+=(--no-pgo) ;;
    --out) OUT=$2; shift ;;
    --sim) SIM="--cache-sim=yes --branch-sim=yes" ;;
    *) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=lib/apt.sh
. "$BENCH/lib/apt.sh"
apt_need valgrind:valgrind || { echo "valgrind missing (apt-get install valgrind)" >&2; exit 1; }
RAW=$BENCH/results/raw/$OUT-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RAW"
# shellcheck source=lib/serve.sh
. "$BENCH/lib/serve.sh"
PROXY_WRAP="valgrind --tool=callgrind --callgrind-out-file=$RAW/%p.cg --dump-instr=no${SIM:+ $SIM}" \
  WAIT_SECS=240 SERVE_WAIT=900 serve "$RAW/serve.log" "${ARGS[@]}" --targets "$TARGETS"

load() { # scenario port_http port_https requests
  case $1 in
    plain) h2load --h1 -t1 -c50 -n "$4" "http://127.0.0.1:$2/" ;;
    https) h2load --h1 -t1 -c50 -n "$4" "https://127.0.0.1:$3/" ;;
    h2)    h2load -t1 -c10 -m10 -n "$4" "https://127.0.0.1:$3/" ;;
  esac
}

IFS=, read -ra LIST <<< "$TARGETS"
IFS=, read -ra SCEN <<< "$SCENARIOS"
for t in "${LIST[@]}"; do
  pid=$(served "$t" pid); http=$(served "$t" http); https=$(served "$t" https)
  for s in "${SCEN[@]}"; do
    echo "callgrind: $t $s" >&2
    taskset -c 0 bash -c "$(declare -f load); load $s $http $https 2000" >/dev/null 2>&1 # warm-up
    callgrind_control -z "$pid" >/dev/null
    taskset -c 0 bash -c "$(declare -f load); load $s $http $https $N" > "$RAW/$t-$s.h2load" 2>&1
    before=$(ls "$RAW"/"$pid".cg* 2>/dev/null | wc -l)
    callgrind_control -d "$t-$s" "$pid" >/dev/null
    for _ in $(seq 1 60); do
      [ "$(ls "$RAW"/"$pid".cg* 2>/dev/null | wc -l)" -gt "$before" ] && break; sleep 1
    done
    dump=$(ls -t "$RAW"/"$pid".cg* | head -1)
    mv "$dump" "$RAW/$t-$s.cg"
  done
done

python3 "$BENCH/lib/callgrind_report.py" "$RAW" "$BENCH/results/$OUT.md" "$N" "$TARGETS" "$SCENARIOS" "$CMDLINE"
