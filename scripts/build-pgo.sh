#!/usr/bin/env bash
# Profile-guided release build of Tollgate (PGO, then BOLT).
#
#   scripts/build-pgo.sh            builds target/pgo/tollgate (about three release builds' time)
#   PGO_SECS=10 scripts/build-pgo.sh   trains 10 s per request path instead of 4
#   PGO_BOLT=0 scripts/build-pgo.sh    stops after step 4 (no BOLT)
#
# 1. builds an instrumented release binary (`-Cprofile-generate`);
# 2. serves it with bench/compare.sh's Tollgate config (rate limit, breaker, health checks,
#    access log) in front of the bench backends, and drives the request paths an edge serves:
#    plaintext and HTTPS keep-alive, HTTP/2, a new TLS connection per request, 1 MiB bodies;
# 3. merges the profile with an llvm-profdata of rustc's own LLVM version (rustup's llvm-tools,
#    or apt's llvm-N, installed when neither is there);
# 4. rebuilds with `-Cprofile-use`, so LLVM lays out and inlines the hot path by what it
#    measured (linked with `--emit-relocs`, which BOLT needs to move functions);
# 5. BOLT (llvm-bolt from apt's bolt-N): instruments that binary, trains it the same way, and
#    rewrites it with the hot code's blocks and functions laid out together.
#
# Release profile as Cargo.toml's (fat LTO, one codegen unit). The profiles land in
# target/pgo/ and are rebuilt on every run, so they always match the source.
# bench/results/ab-pgo.md and ab-bolt.md have what each step buys. Needs what
# bench/compare.sh needs (it installs nginx, wrk and h2load from apt when missing).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$REPO/bench
WORK=${BENCH_WORK:-/tmp/tollgate-bench}
PGO=$REPO/target/pgo
SECS=${PGO_SECS:-4}
BOLT=${PGO_BOLT:-1}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
# shellcheck source=../bench/lib/apt.sh
. "$BENCH/lib/apt.sh"

# llvm-profdata must read what rustc's LLVM writes: rustup's own (`rustup component add
# llvm-tools`) when present, else Debian's llvm-N of the same major version.
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
  PROFDATA=llvm-profdata-$LLVM_MAJOR
  apt_need "$PROFDATA:llvm-$LLVM_MAJOR" ||
    die "cannot install llvm-$LLVM_MAJOR: install it, or run \`rustup component add llvm-tools\`"
fi
BOLT_BIN=llvm-bolt-$LLVM_MAJOR
if [ "$BOLT" = 1 ]; then
  apt_need "$BOLT_BIN:bolt-$LLVM_MAJOR" || die "cannot install bolt-$LLVM_MAJOR (PGO_BOLT=0 skips BOLT)"
fi

# --target keeps RUSTFLAGS off build scripts and proc macros: only the binary is instrumented.
build() { # target-dir rustflags
  (cd "$REPO" && RUSTFLAGS="$2" cargo build --release --locked --quiet --bin tollgate \
    --target "$HOST" --target-dir "$1") || die "cargo build ($2) failed"
}

# shellcheck source=../bench/lib/serve.sh
. "$BENCH/lib/serve.sh"

# train BIN: serves BIN as compare.sh's Tollgate and drives each request path for SECS seconds,
# then stops it so that it writes its profile.
train() {
  serve "$PGO/serve.log" --targets tollgate --no-build --tollgate-bin "$1"
  local http https pid loadgen=$BENCH/loadgen/target/release/tg-loadgen
  http="http://127.0.0.1:$(served tollgate http)"
  https="https://127.0.0.1:$(served tollgate https)"
  wrk -t1 -c50 -d"${SECS}s" "$http/" > /dev/null
  wrk -t1 -c50 -d"${SECS}s" "$https/" > /dev/null
  h2load -t1 -c10 -m10 -D "$SECS" "$https/" > /dev/null
  "$loadgen" conn "$https/" --duration "$SECS" --conns 20 > /dev/null
  wrk -t1 -c10 -d"${SECS}s" "$http/1m" > /dev/null
  # Profiles are written when the process exits: SIGINT is Pingora's fast shutdown, which ends
  # in `std::process::exit` (compare.sh's own stop SIGKILLs a second after SIGTERM starts a
  # drain).
  pid=$(served tollgate pid)
  kill -INT "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
  trap - EXIT
}

rm -rf "$PGO/profiles" "$PGO/bolt.fdata"
mkdir -p "$PGO/profiles"
log "1/5 instrumented build"
build "$PGO/gen" "-Cprofile-generate=$PGO/profiles"

log "2/5 training run (${SECS}s per request path)"
train "$PGO/gen/$HOST/release/tollgate"
ls "$PGO"/profiles/*.profraw > /dev/null 2>&1 || die "no profile written (see $PGO/serve.log)"

log "3/5 merging the profile"
"$PROFDATA" merge -o "$PGO/tollgate.profdata" "$PGO"/profiles/*.profraw

log "4/5 optimized build"
build "$PGO/use" "-Cprofile-use=$PGO/tollgate.profdata -Clink-arg=-Wl,--emit-relocs"
if [ "$BOLT" != 1 ]; then
  cp "$PGO/use/$HOST/release/tollgate" "$PGO/tollgate"
  log "built $PGO/tollgate (no BOLT)"
  exit 0
fi

log "5/5 BOLT: instrumented binary, training run, layout"
"$BOLT_BIN" "$PGO/use/$HOST/release/tollgate" -o "$PGO/tollgate.bolt-inst" -instrument \
  -instrumentation-file="$PGO/bolt.fdata" > "$PGO/bolt.log" 2>&1 || die "llvm-bolt -instrument failed (see $PGO/bolt.log)"
train "$PGO/tollgate.bolt-inst"
[ -s "$PGO/bolt.fdata" ] || die "no BOLT profile written (see $PGO/serve.log)"
"$BOLT_BIN" "$PGO/use/$HOST/release/tollgate" -o "$PGO/tollgate" -data="$PGO/bolt.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
  -icf=1 -use-gnu-stack -dyno-stats >> "$PGO/bolt.log" 2>&1 || die "llvm-bolt failed (see $PGO/bolt.log)"
log "built $PGO/tollgate"
