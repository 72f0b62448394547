#!/usr/bin/env bash
# POST /topics/NAME publish rate over plain HTTP, keep-alive against one connection per request: one
# `curl` process sends N publishes to an in-memory `pubsub serve`, reusing its connection (HTTP/1.1
# keep-alive), then again with `Connection: close` (a new TCP connection per request). Rounds alternate.
#
#   scripts/bench-http-keepalive.sh [N] [ROUNDS]           (defaults 5000 and 3)
#
# The server is stopped and its home removed at the end. Needs a release build and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
rounds=${2:-3}
bin=${BIN:-target/release/pubsub}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
PUBSUB_HOME=$tmp "$bin" serve --memory --listen 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 100); do
  grep -q '^ws://' "$tmp/out" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's|^ws://||p' "$tmp/out" | head -1)
[ -n "$addr" ] || { echo "serve did not start" >&2; cat "$tmp/err" >&2; exit 1; }
for i in $(seq "$n"); do echo "url = \"http://$addr/topics/bench\""; done >"$tmp/urls"

# msgs/s for N publishes by one curl; extra curl arguments in "$@".
rate() {
  local start end
  start=$(date +%s.%N)
  curl -s --data-binary x -K "$tmp/urls" "$@" >/dev/null
  end=$(date +%s.%N)
  awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }'
}

printf 'round  keep-alive  connection-close  ratio\n'
for r in $(seq "$rounds"); do
  keep=$(rate)
  close=$(rate -H 'Connection: close')
  awk -v r="$r" -v k="$keep" -v c="$close" 'BEGIN { printf "%5d  %10d  %16d  %5.2f\n", r, k, c, k / c }'
done
