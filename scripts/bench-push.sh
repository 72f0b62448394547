#!/usr/bin/env bash
# HTTP push throughput: a foreground `pubsub serve` in memory pushes N messages (about 16 bytes each)
# from one push subscription with --max-in-flight C to a fast local endpoint (examples/push_sink.rs,
# which answers 204 on kept-alive connections and times from its first request to its N-th).
#
#   scripts/bench-push.sh [N] [C]     (default 200,000 and 64)
#
# The messages are published first; creating the subscription with --from start starts the push.
# Needs a release build: cargo build --release --bin pubsub --example push_sink
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
c=${2:-64}
bin=${BIN:-target/release/pubsub}
sink=${SINK:-target/release/examples/push_sink}
for b in "$bin" "$sink"; do
  [ -x "$b" ] || { echo "build first: cargo build --release --bin pubsub --example push_sink" >&2; exit 2; }
done
tmp=$(mktemp -d)
export PUBSUB_HOME=$tmp/home
"$bin" serve --listen 127.0.0.1:0 >"$tmp/url" 2>/dev/null &
server=$!
"$sink" 127.0.0.1:0 "$n" >"$tmp/sink" &
sinkpid=$!
trap 'kill $server $sinkpid 2>/dev/null || true; wait $server $sinkpid 2>/dev/null || true; rm -rf "$tmp"' EXIT
until [ -s "$tmp/url" ] && [ -s "$tmp/sink" ]; do sleep 0.05; done
ws=$(head -n1 "$tmp/url")
endpoint=$(head -n1 "$tmp/sink")

seq -f 'message %08g' "$n" | "$bin" --broker "$ws" pub orders 2>/dev/null
"$bin" --broker "$ws" subs create hook --topic orders --from start --max-in-flight "$c" \
  --push-endpoint "$endpoint" >/dev/null 2>&1
wait $sinkpid
echo "push, max in flight $c: $(tail -n1 "$tmp/sink")"
"$bin" --broker "$ws" sub-info hook | grep -E '^ *(pushed|backlog)' || true
