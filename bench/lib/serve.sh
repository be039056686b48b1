# Sourced by the bench scripts that measure the targets `compare.sh --serve` starts
# (callgrind.sh, cpu-split.sh, profile.sh, syscalls.sh). Needs BENCH and WORK set.

# serve LOG [compare.sh options...]: starts `compare.sh --serve` in the background with those
# options, stops it when the calling script exits, and returns once every target answers
# (or exits with LOG shown if compare.sh stops first or nothing answers within SERVE_WAIT
# seconds, default 600). Environment set on the call (PROXY_WRAP, WAIT_SECS) reaches compare.sh.
serve() {
  local log=$1
  shift
  rm -f "$WORK/serving"
  "$BENCH/compare.sh" "$@" --serve > "$log" 2>&1 &
  SERVE_PID=$!
  trap 'kill -TERM $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 "${SERVE_WAIT:-600}"); do
    [ -s "$WORK/serving" ] && return 0
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 1
  done
  cat "$log" >&2
  exit 1
}

# served TARGET pid|http|https: the target's process id or port, from compare.sh's listing.
served() {
  case $2 in
    pid) sed -n "s/^$1 pid=\([0-9]*\) .*/\1/p" "$WORK/serving" ;;
    http) sed -n "s/^$1 .*http=127.0.0.1:\([0-9]*\) .*/\1/p" "$WORK/serving" ;;
    https) sed -n "s/^$1 .*https=127.0.0.1:\([0-9]*\).*/\1/p" "$WORK/serving" ;;
  esac
}
