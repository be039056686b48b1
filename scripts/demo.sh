#!/usr/bin/env bash
# Starts the demo: four demo backends (api-1..3 on 8081-8083, static-1 on 8091) and Tollgate
# on https://localhost:8443 with conf/tollgate.yaml. Ctrl-C stops everything.
# Usage: scripts/demo.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug; flag=()
if [ "${1:-}" = "--release" ]; then profile=release; flag=(--release); fi
command -v cmake >/dev/null || { echo "cmake is missing (apt-get install cmake)" >&2; exit 1; }

cargo build --workspace "${flag[@]}"
bin=target/$profile

"$bin/tollgate-demo-backend" api-1=127.0.0.1:8081 api-2=127.0.0.1:8082 api-3=127.0.0.1:8083 \
  static-1=127.0.0.1:8091 &
backends=$!
trap 'kill $backends 2>/dev/null; wait 2>/dev/null' EXIT

"$bin/tollgate" -t -c conf/tollgate.yaml
cat <<'MSG'

Tollgate is starting on https://localhost:8443 (self-signed demo certificate). Try:

  curl -k https://localhost:8443/api/hello          # round robin over api-1..3 (X-Backend header)
  curl -k --http2 -i https://localhost:8443/static/  # the static group, over HTTP/2
  curl -i http://localhost:8080/api/hello           # 308 redirect to https
  curl -k https://localhost:8443/nope               # 404 JSON
  curl -k 'https://localhost:8443/api/slow?sleep_ms=300'  # backend told to be slow
  kill -HUP $(cat /tmp/tollgate.pid)                # reload conf/tollgate.yaml

MSG
"$bin/tollgate" -c conf/tollgate.yaml
