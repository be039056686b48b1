#!/usr/bin/env bash
# Profile-guided release build of Tollgate (PGO).
#
#   scripts/build-pgo.sh            builds target/pgo/tollgate (about three release builds' time)
#   PGO_SECS=10 scripts/build-pgo.sh   trains 10 s per request path instead of 4
#
# 1. builds an instrumented release binary (`-Cprofile-generate`);
# 2. serves it with bench/compare.sh's Tollgate config (rate limit, breaker, health checks,
#    access log) in front of the bench backends, and drives the request paths an edge serves:
#    plaintext and HTTPS keep-alive, HTTP/2, a new TLS connection per request, 1 MiB bodies;
# 3. merges the profile with an llvm-profdata of rustc's own LLVM version (rustup's llvm-tools,
#    or apt's llvm-N, installed when neither is there);
# 4. rebuilds with `-Cprofile-use`, so LLVM lays out and inlines the hot path by what it measured.
#
# Release profile as Cargo.toml's (fat LTO, one codegen unit). The profile lands in
# target/pgo/tollgate.profdata and is rebuilt on every run, so it always matches the source.
# bench/results/ab-pgo.md has what it buys. Needs what bench/compare.sh needs (it installs
# nginx, wrk and h2load from apt when missing).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$REPO/bench
WORK=${BENCH_WORK:-/tmp/tollgate-bench}
PGO=$REPO/target/pgo
SECS=${PGO_SECS:-4}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
# llvm-profdata must read what rustc's LLVM writes: rustup's own (`rustup component add
# llvm-tools`) when present, else Debian's llvm-N of the same major version.
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
  PROFDATA=llvm-profdata-$LLVM_MAJOR
  if ! command -v "$PROFDATA" >/dev/null; then
    log "installing llvm-$LLVM_MAJOR for $PROFDATA (apt; rustc uses LLVM $LLVM_MAJOR)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "llvm-$LLVM_MAJOR" >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && apt-get install -y -q "llvm-$LLVM_MAJOR" >/dev/null
    } || die "cannot install llvm-$LLVM_MAJOR: install it, or run \`rustup component add llvm-tools\`"
  fi
fi

# --target keeps RUSTFLAGS off build scripts and proc macros: only the binary is instrumented.
build() { # target-dir rustflags
  (cd "$REPO" && RUSTFLAGS="$2" cargo build --release --locked --quiet --bin tollgate \
    --target "$HOST" --target-dir "$1") || die "cargo build ($2) failed"
}

rm -rf "$PGO/profiles"
mkdir -p "$PGO/profiles"
log "1/4 instrumented build"
build "$PGO/gen" "-Cprofile-generate=$PGO/profiles"

log "2/4 training run (${SECS}s per request path)"
# shellcheck source=../bench/lib/serve.sh
. "$BENCH/lib/serve.sh"
serve "$PGO/serve.log" --targets tollgate --no-build --tollgate-bin "$PGO/gen/$HOST/release/tollgate"
http="http://127.0.0.1:$(served tollgate http)"
https="https://127.0.0.1:$(served tollgate https)"
LOADGEN=$BENCH/loadgen/target/release/tg-loadgen
wrk -t1 -c50 -d"${SECS}s" "$http/" > /dev/null
wrk -t1 -c50 -d"${SECS}s" "$https/" > /dev/null
h2load -t1 -c10 -m10 -D "$SECS" "$https/" > /dev/null
"$LOADGEN" conn "$https/" --duration "$SECS" --conns 20 > /dev/null
wrk -t1 -c10 -d"${SECS}s" "$http/1m" > /dev/null
# The profile is written when the process exits: SIGINT is Pingora's fast shutdown, which ends
# in `std::process::exit` (compare.sh's own stop SIGKILLs a second after SIGTERM starts a drain).
pid=$(served tollgate pid)
kill -INT "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -TERM "$SERVE_PID" 2>/dev/null || true
wait "$SERVE_PID" 2>/dev/null || true
trap - EXIT
ls "$PGO"/profiles/*.profraw > /dev/null 2>&1 || die "no profile written (see $PGO/serve.log)"

log "3/4 merging the profile"
"$PROFDATA" merge -o "$PGO/tollgate.profdata" "$PGO"/profiles/*.profraw

log "4/4 optimized build"
build "$PGO/use" "-Cprofile-use=$PGO/tollgate.profdata"
cp "$PGO/use/$HOST/release/tollgate" "$PGO/tollgate"
log "built $PGO/tollgate"
