#!/usr/bin/env bash
# Tollgate vs nginx vs HAProxy (+ a direct-to-backend baseline), side by side on one machine.
#
#   bench/compare.sh            default: 3 interleaved rounds x 6 scenarios, 8 s runs (~13 min,
#                               + ~15 min for the PGO build unless --no-build or --no-pgo)
#   bench/compare.sh --quick    1 round, 4 s runs, 2,000 idle connections (~3 min)
#
# Proxies run pinned to core 1 (taskset -c 1), one worker/thread each; the load generators and
# the nginx backends run on core 0. Every proxy runs during the whole benchmark (idle when not
# under test). See bench/README.md for the method, the tools and how to read the results.
#
# Options:
#   --quick                 1 round, 4 s runs, 2,000 connections for the memory test
#   --rounds N              interleaved rounds (default 3)
#   --duration S            seconds per run (default 8)
#   --scenarios LIST        plain,https,h2,handshake,1m,latency,memory (default: all)
#   --targets LIST          direct,tollgate,nginx,haproxy (default: all), `bare` (bench/bare-pingora:
#                           minimal Pingora proxy, same build settings), `bare-openssl` (the same
#                           on Pingora's OpenSSL backend, for the TLS A/B), plus --variant names
#   --variant NAME=BIN[,threads=N][,work_stealing=true|false][,access_log=true|false][,conf=FILE]
#                           an extra Tollgate target (A/B runs; conf: another config template
#                           than bench/conf/tollgate.yaml, with the same placeholders); repeatable
#   --tollgate-bin PATH     use this binary for the `tollgate` target instead of building
#   --no-pgo                measure a plain `cargo build --release` binary (target/release)
#                           instead of the profile-guided one scripts/build-pgo.sh builds
#                           (target/pgo/tollgate), the build the README says to deploy
#   --no-build              do not build (the binaries must exist)
#   --latency-rate R        offered load of the latency scenario (default: 50% of the lowest
#                           HTTPS keep-alive max among the proxies in round 1, for all rounds)
#   --mem-conns N           idle connections for the memory test (default 10000)
#   --mem-requests N        requests each makes before idling (default 1; 0: TLS handshake only)
#   --out NAME              results file stem in bench/results/ (default latest)
#   --title TEXT            heading of the results file
#   --serve                 start backends and targets, print their ports, wait (Ctrl-C stops);
#                           for manual runs and bench/profile.sh
#
# Environment: PROXY_WRAP="cmd args" runs the proxies under test (Tollgate, bare Pingora, nginx
# as one process, HAProxy) under that command (bench/callgrind.sh uses valgrind); WAIT_SECS
# (default 30) is how long a target may take to answer after it starts.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
WORK=${BENCH_WORK:-/tmp/tollgate-bench}
CERTS=$BENCH/conf/certs
RESULTS=$BENCH/results
ROUNDS=3
DUR=8
MEM_CONNS=10000
MEM_REQUESTS=1
SCENARIOS=plain,https,h2,handshake,1m,latency,memory
TARGETS=""
OUT=latest
TITLE="Tollgate vs nginx vs HAProxy"
TOLLGATE_BIN=${TOLLGATE_BIN:-}
BUILD=1
PGO=1
LATENCY_RATE=""
VARIANTS=()
QUICK=0
SERVE=0
CMDLINE="bench/compare.sh $*"

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; DUR=4; MEM_CONNS=2000 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --variant) VARIANTS+=("$2"); shift ;;
    --tollgate-bin) TOLLGATE_BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    --no-pgo) PGO=0 ;;
    --latency-rate) LATENCY_RATE=$2; shift ;;
    --mem-conns) MEM_CONNS=$2; shift ;;
    --mem-requests) MEM_REQUESTS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --title) TITLE=$2; shift ;;
    --serve) SERVE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools ---------------------------------------------------------------------------------
# shellcheck source=lib/apt.sh
. "$BENCH/lib/apt.sh"
apt_need nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client taskset:util-linux \
  openssl:openssl || die "cannot install the benchmark tools from apt"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (proxies on core 1, load generators on core 0)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge $((MEM_CONNS + 1000)) ] || die "open files limit $(ulimit -n) too low for --mem-conns $MEM_CONNS"

# --- builds --------------------------------------------------------------------------------
if [ -z "$TOLLGATE_BIN" ] && [ "$PGO" = 1 ]; then
  TOLLGATE_BIN=$REPO/target/pgo/tollgate
  if [ "$BUILD" = 1 ]; then
    log "scripts/build-pgo.sh (instrumented build, training run, optimized build: ~15 min)"
    "$REPO/scripts/build-pgo.sh" || die "PGO build failed (--no-pgo measures a plain release build)"
  fi
elif [ -z "$TOLLGATE_BIN" ]; then
  TOLLGATE_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/tollgate
  if [ "$BUILD" = 1 ]; then
    log "cargo build --release --workspace (fat LTO; minutes when the source changed)"
    (cd "$REPO" && cargo build --release --workspace --quiet) || die "tollgate build failed"
  fi
fi
[ -x "$TOLLGATE_BIN" ] || die "no tollgate binary at $TOLLGATE_BIN"
LOADGEN=$BENCH/loadgen/target/release/tg-loadgen
if [ "$BUILD" = 1 ] || [ ! -x "$LOADGEN" ]; then
  log "building bench/loadgen (constant-rate and idle-connection client)"
  (cd "$BENCH/loadgen" && cargo build --release --quiet) || die "loadgen build failed"
fi

# --- work dir, certs, configs ----------------------------------------------------------------
"$BENCH/lib/gen-certs.sh" "$CERTS"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$RESULTS/raw/$STAMP-$OUT
mkdir -p "$WORK/www" "$RAW" "$WORK"/{backend-nginx,nginx}-tmp/{body,proxy,fastcgi,uwsgi,scgi}
[ -s "$WORK/www/1m.bin" ] || head -c 1048576 /dev/urandom > "$WORK/www/1m.bin"
RUNS=$RAW/runs.jsonl
MEM=$RAW/memory.jsonl
: > "$RUNS"; : > "$MEM"

render() { # template output [sed expressions...]
  local in=$1 out=$2; shift 2
  sed -e "s|@WORK@|$WORK|g" -e "s|@CERTS@|$CERTS|g" "$@" "$in" > "$out"
}

# Targets: name -> kind, ports. Tollgate variants get ports 19000 + 10*i.
declare -A KIND HTTP HTTPS PID
KIND[direct]=direct; HTTP[direct]=18081; HTTPS[direct]=18444
KIND[nginx]=nginx;   HTTP[nginx]=28080;  HTTPS[nginx]=28443
KIND[haproxy]=haproxy; HTTP[haproxy]=38080; HTTPS[haproxy]=38443
KIND[bare]=bare;     HTTP[bare]=17080;   HTTPS[bare]=17443
KIND[bare-openssl]=bare; HTTP[bare-openssl]=16080; HTTPS[bare-openssl]=16443
TG_NAMES=()
declare -A TG_BIN TG_THREADS TG_WS TG_LOG TG_CONF
add_tollgate() { # name bin threads work_stealing access_log config_template
  local i=${#TG_NAMES[@]}
  TG_NAMES+=("$1"); KIND[$1]=tollgate
  HTTP[$1]=$((19000 + 10 * i)); HTTPS[$1]=$((19001 + 10 * i))
  TG_BIN[$1]=$2; TG_THREADS[$1]=$3; TG_WS[$1]=$4; TG_LOG[$1]=$5; TG_CONF[$1]=$6
}
add_tollgate tollgate "$TOLLGATE_BIN" 1 false true "$BENCH/conf/tollgate.yaml"
for v in "${VARIANTS[@]}"; do
  name=${v%%=*}; rest=${v#*=}; bin=${rest%%,*}; threads=1; ws=false; alog=true
  conf=$BENCH/conf/tollgate.yaml
  IFS=, read -ra opts <<< "${rest#"$bin"}"
  for o in "${opts[@]}"; do
    case "$o" in threads=*) threads=${o#threads=} ;; work_stealing=*) ws=${o#work_stealing=} ;;
      access_log=*) alog=${o#access_log=} ;; conf=*) conf=${o#conf=} ;; "") ;;
      *) die "variant $name: unknown option $o" ;; esac
  done
  [ -x "$bin" ] || die "variant $name: no binary at $bin"
  [ -f "$conf" ] || die "variant $name: no config template at $conf"
  add_tollgate "$name" "$bin" "$threads" "$ws" "$alog" "$conf"
done
[ -n "$TARGETS" ] || TARGETS=$(IFS=,; echo "direct,${TG_NAMES[*]},nginx,haproxy")
IFS=, read -ra TARGET_LIST <<< "$TARGETS"
for t in "${TARGET_LIST[@]}"; do [ -n "${KIND[$t]:-}" ] || die "unknown target $t"; done
IFS=, read -ra SCENARIO_LIST <<< "$SCENARIOS"
declare -A BARE_BINS=(
  [bare]=${BARE_BIN:-$BENCH/bare-pingora/target/release/bare-pingora}
  [bare-openssl]=$BENCH/bare-pingora/target-openssl/release/bare-pingora
)
declare -A BARE_FEATURES=([bare]="" [bare-openssl]="--no-default-features --features openssl,jemalloc --target-dir target-openssl")
for t in bare bare-openssl; do
  [[ ",$TARGETS," == *",$t,"* ]] || continue
  [ "$t" = bare ] && [ -n "${BARE_BIN:-}" ] && continue
  if [ "$BUILD" = 1 ] || [ ! -x "${BARE_BINS[$t]}" ]; then
    log "building bench/bare-pingora for $t (fat LTO, minutes the first time)"
    # shellcheck disable=SC2086 # the feature flags are separate words
    (cd "$BENCH/bare-pingora" && cargo build --release --quiet ${BARE_FEATURES[$t]}) || die "$t build failed"
  fi
done

# --- processes -----------------------------------------------------------------------------
STARTED=()
SLEEPER=""
cleanup() {
  local p
  [ -z "$SLEEPER" ] || kill "$SLEEPER" 2>/dev/null || true
  for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() { # port tls(0|1) path
  python3 - "$@" "${WAIT_SECS:-30}" <<'PY'
import http.client, ssl, sys, time
port, tls, path = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
ctx = ssl._create_unverified_context()
deadline = time.time() + int(sys.argv[4])
while time.time() < deadline:
    try:
        c = (http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2) if tls
             else http.client.HTTPConnection("127.0.0.1", port, timeout=2))
        c.request("GET", path)
        if c.getresponse().status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.3)
sys.exit(1)
PY
}

start() { # name core command...
  local name=$1 core=$2; shift 2
  taskset -c "$core" "$@" > "$WORK/$name.stdout" 2>&1 &
  PID[$name]=$!
  STARTED+=("$!")
}

for p in 18081 18082 18444; do port_free $p || die "port $p is in use (a previous run still going?)"; done
render "$BENCH/conf/backend-nginx.conf" "$WORK/backend-nginx.conf"
start backend 0 nginx -p "$WORK/backend-nginx-tmp" -c "$WORK/backend-nginx.conf"
wait_http 18081 0 / || die "backend nginx did not start (see $WORK/backend-nginx.error.log)"

for t in "${TARGET_LIST[@]}"; do
  case ${KIND[$t]} in
    direct) PID[$t]=${PID[backend]} ;;
    nginx)
      port_free 28080 || die "port 28080 in use"
      # Under a wrapper (callgrind.sh) nginx runs as one process, the worker's loop in the
      # master, so the wrapper sees the requests (it does not follow a fork).
      render "$BENCH/conf/nginx.conf" "$WORK/nginx.conf" \
        ${PROXY_WRAP:+-e 's|^daemon off;|daemon off; master_process off;|'}
      start nginx 1 ${PROXY_WRAP:-} nginx -p "$WORK/nginx-tmp" -c "$WORK/nginx.conf" ;;
    bare)
      port_free "${HTTP[$t]}" || die "port ${HTTP[$t]} in use"
      start "$t" 1 ${PROXY_WRAP:-} "${BARE_BINS[$t]}" "127.0.0.1:${HTTP[$t]}" "127.0.0.1:${HTTPS[$t]}" \
        "$CERTS/leaf.pem" "$CERTS/leaf.key" 127.0.0.1:18081 127.0.0.1:18082 ;;
    haproxy)
      port_free 38080 || die "port 38080 in use"
      render "$BENCH/conf/haproxy.cfg" "$WORK/haproxy.cfg"
      start haproxy 1 ${PROXY_WRAP:-} haproxy -db -f "$WORK/haproxy.cfg" ;;
    tollgate)
      port_free "${HTTP[$t]}" || die "port ${HTTP[$t]} in use"
      render "${TG_CONF[$t]}" "$WORK/$t.yaml" \
        -e "s|@NAME@|$t|g" -e "s|@THREADS@|${TG_THREADS[$t]}|g" -e "s|@WORK_STEALING@|${TG_WS[$t]}|g" \
        -e "s|@HTTP_PORT@|${HTTP[$t]}|g" -e "s|@HTTPS_PORT@|${HTTPS[$t]}|g" \
        -e "s|@ADMIN_PORT@|$((${HTTP[$t]} + 2))|g" -e "s|@METRICS_PORT@|$((${HTTP[$t]} + 3))|g" \
        -e "s|@LOG_LEVEL@|${TOLLGATE_LOG_LEVEL:-info}|g" -e "s|@ACCESS_LOG@|${TG_LOG[$t]}|g"
      "${TG_BIN[$t]}" -t -c "$WORK/$t.yaml" >/dev/null || die "$t: config invalid"
      start "$t" 1 ${PROXY_WRAP:-} "${TG_BIN[$t]}" -c "$WORK/$t.yaml" ;;
  esac
done
for t in "${TARGET_LIST[@]}"; do
  wait_http "${HTTP[$t]}" 0 / || die "$t does not answer on ${HTTP[$t]} (see $WORK/$t.stdout)"
  wait_http "${HTTPS[$t]}" 1 / || die "$t does not answer on ${HTTPS[$t]}"
done
log "all targets up: ${TARGET_LIST[*]}"
if [ "$SERVE" = 1 ]; then
  for t in "${TARGET_LIST[@]}"; do
    echo "$t pid=${PID[$t]} http=127.0.0.1:${HTTP[$t]} https=127.0.0.1:${HTTPS[$t]}"
  done > "$WORK/serving"
  cat "$WORK/serving"
  log "serving until interrupted (ports also in $WORK/serving)"
  while true; do sleep 3600 & SLEEPER=$!; wait "$SLEEPER" || true; done
fi

# Processes whose CPU and memory count: all of nginx's (master + worker), HAProxy's one,
# Tollgate's one (all threads). For `direct` it is the backend nginx (reported, not compared).
pids_of() {
  local p=${PID[$1]}
  echo "$p"
  pgrep -P "$p" 2>/dev/null || true
}
cpu_ticks() { # pids... -> utime+stime in clock ticks
  local p sum=0 v
  for p in "$@"; do
    v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
rss_kib() { # pids... -> summed VmRSS
  local p sum=0 v
  for p in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || v=0
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
core1_ticks() { awk '/^cpu1 / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# --- one run -------------------------------------------------------------------------------
run() { # round scenario target
  local round=$1 scen=$2 t=$3 tool url raw="$RAW/r$1-$2-$3" rate=""
  local http="http://127.0.0.1:${HTTP[$t]}" https="https://127.0.0.1:${HTTPS[$t]}"
  local -a cmd
  case $scen in
    plain) tool=wrk; cmd=(wrk -t1 -c50 -d"${DUR}s" --latency "$http/") ;;
    https) tool=wrk; cmd=(wrk -t1 -c50 -d"${DUR}s" --latency "$https/") ;;
    1m)    tool=wrk; cmd=(wrk -t1 -c10 -d"${DUR}s" --latency "$http/1m") ;;
    h2)    tool=h2load; cmd=(h2load -t1 -c10 -m10 -D "$DUR" --log-file="$raw.log" "$https/") ;;
    handshake)
      # One new TCP + TLS connection per request, no session resumption (see loadgen/src/main.rs).
      tool=loadgen; cmd=("$LOADGEN" conn "$https/" --duration "$DUR" --conns 20) ;;
    latency)
      tool=loadgen
      # 50% of the lowest proxy HTTPS max of round 1, then the same rate in every round.
      [ -n "$LATENCY_RATE" ] || LATENCY_RATE=$(python3 "$BENCH/lib/report.py" rate "$RUNS" 1 https)
      rate=$LATENCY_RATE
      cmd=("$LOADGEN" rate "$https/" --rate "$rate" --duration "$DUR" --conns 50 --ca "$CERTS/ca.pem") ;;
    *) die "unknown scenario $scen" ;;
  esac
  local -a pids
  mapfile -t pids < <(pids_of "$t")
  if [ "${KIND[$t]}" = tollgate ]; then : > "$WORK/$t-access.log"; fi
  local c0 k0 t0 c1 k1 t1
  c0=$(cpu_ticks "${pids[@]}"); k0=$(core1_ticks); t0=$(date +%s.%N)
  # Latency runs keep idle cores polling rather than halting, as tuned's latency-performance
  # profile does: on a VM a halted vCPU takes ~100 µs to wake, which the p50 would measure
  # instead of the proxy (bench/README.md). The request holds while the fd is open.
  local awake=""
  if [ "$scen" = latency ] && [ -w /dev/cpu_dma_latency ]; then
    exec {awake}>/dev/cpu_dma_latency && echo 0 >&"$awake"
  fi
  taskset -c 0 timeout $((DUR * 3 + 30)) "${cmd[@]}" > "$raw.out" 2>&1 || log "  ($t $scen: tool exit $?)"
  t1=$(date +%s.%N); c1=$(cpu_ticks "${pids[@]}"); k1=$(core1_ticks)
  if [ -n "$awake" ]; then exec {awake}>&-; fi
  local lines=0
  # Tollgate flushes its access log every 200 ms: wait for the run's last lines before counting
  # (and before the next run truncates the file).
  if [ "${KIND[$t]}" = tollgate ]; then sleep 0.3; lines=$(wc -l < "$WORK/$t-access.log"); fi
  python3 "$BENCH/lib/report.py" record --round "$round" --scenario "$scen" --target "$t" \
    --kind "${KIND[$t]}" --tool "$tool" --raw "$raw.out" --log "$raw.log" \
    --cpu-ticks $((c1 - c0)) --core1-ticks $((k1 - k0)) --wall "$(awk "BEGIN {print $t1 - $t0}")" \
    --rss-kib "$(rss_kib "${pids[@]}")" --access-lines "$lines" --rate "${rate:-0}" >> "$RUNS"
  rm -f "$raw.log"
  tail -n1 "$RUNS" | python3 "$BENCH/lib/report.py" line >&2
}

memory() { # target
  local t=$1 ready="$WORK/idle-$1.ready"
  rm -f "$ready" "$ready.release"
  local -a pids
  mapfile -t pids < <(pids_of "$t")
  sleep 1
  local r0 r1 held
  r0=$(rss_kib "${pids[@]}")
  taskset -c 0 "$LOADGEN" idle "https://127.0.0.1:${HTTPS[$t]}/" --conns "$MEM_CONNS" --requests "$MEM_REQUESTS" --parallel 100 \
    --hold 300 --ready-file "$ready" --ca "$CERTS/ca.pem" > "$RAW/memory-$t.out" 2>&1 &
  local lg=$!
  local i=0
  while [ ! -s "$ready" ] && [ $i -lt 1200 ]; do sleep 0.25; i=$((i + 1)); done
  sleep 2
  r1=$(rss_kib "${pids[@]}")
  held=$(cat "$ready" 2>/dev/null || echo 0)
  touch "$ready.release"
  wait "$lg" || true
  printf '{"target":"%s","kind":"%s","conns":%s,"rss_before_kib":%s,"rss_after_kib":%s}\n' \
    "$t" "${KIND[$t]}" "${held:-0}" "$r0" "$r1" >> "$MEM"
  log "  memory $t: $held conns, RSS $r0 -> $r1 KiB ($(awk "BEGIN {printf \"%.1f\", ($r1 - $r0) / ($held > 0 ? $held : 1)}") KiB per connection)"
  sleep 3 # let the proxy close them
}

# --- go ------------------------------------------------------------------------------------
python3 - "$RAW/meta.json" "$CMDLINE" "$ROUNDS" "$DUR" "$TOLLGATE_BIN" "$REPO" "$MEM_CONNS" "$TITLE" <<'PY'
import json, subprocess, sys, platform, os, time
out, cmdline, rounds, dur, tbin, repo, memc, title = sys.argv[1:]
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=20).stdout.strip() + \
               subprocess.run(c, shell=True, capture_output=True, text=True, timeout=20).stderr.strip()
    except Exception as e:
        return str(e)
cpu = sh("lscpu | awk -F: '/Model name/ {print $2; exit}'").strip()
meta = {
  "title": title, "command": cmdline, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
  "rounds": int(rounds), "duration_s": int(dur), "mem_conns": int(memc),
  "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
  "mem_total": sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo"),
  "loadavg_start": open("/proc/loadavg").read().split()[:3],
  "nginx": sh("nginx -v 2>&1").replace("nginx version: ", ""),
  "haproxy": sh("haproxy -v 2>&1 | head -1").split(" - ")[0],
  "wrk": sh("wrk -v 2>&1 | head -1").split(" [")[0],
  "h2load": sh("h2load --version 2>&1 | head -1"),
  "openssl": sh("openssl version"),
  "rustc": sh("rustc --version"),
  "cores_awake_for_latency": os.access("/dev/cpu_dma_latency", os.W_OK),
  "tollgate_bin": tbin,
  "tollgate_rev": sh(f"git -C {repo} rev-parse --short HEAD"),
  "tollgate_dirty_files": len([l for l in subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True, text=True).stdout.splitlines() if l.strip()]),
}
json.dump(meta, open(out, "w"), indent=1)
PY

# TLS parameters each target negotiates (for the record: cipher, group, protocol).
for t in "${TARGET_LIST[@]}"; do
  printf '%s: ' "$t"
  echo | timeout 5 openssl s_client -connect "127.0.0.1:${HTTPS[$t]}" -servername localhost 2>/dev/null \
    | awk '/^New,|Server Temp Key/ && !seen[$0]++ {printf "%s; ", $0} END {print ""}'
done > "$RAW/tls.txt"

log "warm-up"
for t in "${TARGET_LIST[@]}"; do
  taskset -c 0 wrk -t1 -c50 -d2s "http://127.0.0.1:${HTTP[$t]}/" >/dev/null 2>&1 || true
  taskset -c 0 wrk -t1 -c50 -d2s "https://127.0.0.1:${HTTPS[$t]}/" >/dev/null 2>&1 || true
done

for round in $(seq 1 "$ROUNDS"); do
  # Rotate the target order each round so no target always runs first or last.
  n=${#TARGET_LIST[@]}; order=()
  for i in $(seq 0 $((n - 1))); do order+=("${TARGET_LIST[$(( (i + round - 1) % n ))]}"); done
  for s in "${SCENARIO_LIST[@]}"; do
    [ "$s" = memory ] && continue
    log "round $round/$ROUNDS: $s (${order[*]})"
    for t in "${order[@]}"; do
      run "$round" "$s" "$t"
      sleep 1
    done
  done
done

for s in "${SCENARIO_LIST[@]}"; do
  [ "$s" = memory ] || continue
  log "memory: $MEM_CONNS idle HTTPS keep-alive connections per proxy, $MEM_REQUESTS request(s) each"
  for t in "${TARGET_LIST[@]}"; do
    [ "${KIND[$t]}" = direct ] || memory "$t"
  done
done

python3 "$BENCH/lib/report.py" report --raw "$RAW" --out "$RESULTS/$OUT"
log "results: bench/results/$OUT.md, $OUT.svg (raw runs: ${RAW#"$REPO"/})"
