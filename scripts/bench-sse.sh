#!/usr/bin/env bash
# Server-Sent Events throughput to one `curl -N`: a foreground `pubsub serve` in memory, N messages of
# about 16 bytes, read by curl and counted by awk, which exits at the N-th event.
#
#   scripts/bench-sse.sh [N]        (default 1,000,000)
#
# "backlog": the messages are published first, then curl reads them all with ?from=all.
# "live": curl is reading (a fresh stream, new messages only) while `pub` publishes them.
# Both print messages per second over curl's whole run (connecting included). Needs a release build
# (cargo build --release) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
bin=${BIN:-target/release/pubsub}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
tmp=$(mktemp -d)
export PUBSUB_HOME=$tmp/home
"$bin" serve --listen 127.0.0.1:0 >"$tmp/url" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$tmp"' EXIT
until [ -s "$tmp/url" ]; do sleep 0.05; done
ws=$(head -n1 "$tmp/url")
http=${ws/ws:/http:}
now() { date +%s.%N; }

# Reads N events from the URL; prints the seconds it took. awk is what is waited for: curl itself
# would notice awk has gone only at its next write (the next keep-alive comment), and ends with the
# server.
read_events() {
  local t0 t1
  t0=$(now)
  awk -v n="$n" '/^id: /{ if (++seen == n) exit }' < <(curl -sN "$1")
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

seq -f 'message %08g' "$n" | "$bin" --broker "$ws" pub backlog 2>/dev/null
secs=$(read_events "$http/topics/backlog/events?from=all")
printf 'backlog: %d events in %.2f s: %.0f msgs/s\n' "$n" "$secs" "$(echo "$n / $secs" | bc -l)"

"$bin" --broker "$ws" topic create live >/dev/null 2>&1
read_events "$http/topics/live/events" >"$tmp/live" &
reader=$!
# The stream has started once the topic has its subscription.
until "$bin" --broker "$ws" topic info live --json 2>/dev/null | grep -q '"subscriptions":1,'; do sleep 0.05; done
seq -f 'message %08g' "$n" | "$bin" --broker "$ws" pub live 2>/dev/null
wait $reader
secs=$(cat "$tmp/live")
printf 'live:    %d events in %.2f s: %.0f msgs/s\n' "$n" "$secs" "$(echo "$n / $secs" | bc -l)"
