#!/usr/bin/env bash
# Tuning A/B runs of Tollgate against itself, with compare.sh's method (pinned to core 1,
# interleaved rounds, medians). Results: bench/results/ab-allocator.md, ab-threads.md.
#
#   bench/ab.sh [allocator] [threads] [overhead] [--rounds N] [--duration S] [--tollgate-bin PATH] [--no-build]
#
# allocator: the default build (jemalloc) vs `--no-default-features` (glibc malloc) and
#            `--features mimalloc`, built into $ALLOC_TARGET_DIR-glibc and -mimalloc
#            (default /tmp/target-...).
# threads:   server.threads 1 vs 2 x work_stealing false vs true, all on the same one core.
# overhead:  Tollgate vs Tollgate with `access_log: false` vs bench/bare-pingora (the same Pingora,
#            build settings and threads, no Tollgate code): what Tollgate's own code costs.
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
WHICH=()
ROUNDS=3
DUR=8
BIN=""
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    allocator|threads|overhead) WHICH+=("$1") ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --tollgate-bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    *) echo "ab.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#WHICH[@]} -gt 0 ] || WHICH=(allocator threads overhead)
if [ -z "$BIN" ]; then
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/tollgate
  [ "$BUILD" = 1 ] && (cd "$REPO" && cargo build --release --workspace --quiet)
fi
COMMON=(--tollgate-bin "$BIN" --no-build --rounds "$ROUNDS" --duration "$DUR")

for w in "${WHICH[@]}"; do
  case $w in
    allocator)
      VARIANTS=()
      for alloc in glibc mimalloc; do
        dir=${ALLOC_TARGET_DIR:-/tmp/target}-$alloc
        if [ "$BUILD" = 1 ] || [ ! -x "$dir/release/tollgate" ]; then
          echo "building the $alloc variant into $dir (fat LTO, minutes)" >&2
          flags=(--no-default-features); [ "$alloc" = mimalloc ] && flags=(--features mimalloc)
          (cd "$REPO" && CARGO_TARGET_DIR=$dir cargo build --release -p tollgate "${flags[@]}" --quiet)
        fi
        VARIANTS+=(--variant "$alloc=$dir/release/tollgate")
      done
      "$BENCH/compare.sh" "${COMMON[@]}" "${VARIANTS[@]}" \
        --targets tollgate,glibc,mimalloc --scenarios plain,https,h2,1m,memory \
        --out ab-allocator --title "A/B: jemalloc (tollgate, default build) vs glibc malloc vs mimalloc"
      ;;
    threads)
      "$BENCH/compare.sh" "${COMMON[@]}" \
        --variant "t1-ws=$BIN,threads=1,work_stealing=true" \
        --variant "t2=$BIN,threads=2,work_stealing=false" \
        --variant "t2-ws=$BIN,threads=2,work_stealing=true" \
        --targets tollgate,t1-ws,t2,t2-ws --scenarios plain,https,h2 \
        --out ab-threads --title "A/B: threads 1 vs 2, work_stealing false vs true (tollgate = threads 1, no work stealing; all on one core)"
      ;;
    overhead)
      "$BENCH/compare.sh" "${COMMON[@]}" --variant "nolog=$BIN,access_log=false" \
        --targets tollgate,nolog,bare --scenarios plain,https,h2,latency,memory \
        --out ab-overhead --title "Overhead: Tollgate vs Tollgate without access log (nolog) vs bare Pingora 0.9 (bare)"
      ;;
  esac
done
