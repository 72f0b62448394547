#!/usr/bin/env bash
# One benchmark run, one machine: the in-process engine, `pubsub serve` over ws://, nats-server (core),
# Redis PUB/SUB and Mosquitto, all driven by the same `pubsub bench` harness; prints a Markdown table.
#
#   scripts/bench-compare.sh [MSGS]        (default 200000 messages per closed-loop run)
#   ROUNDS=5 scripts/bench-compare.sh      (latency rounds, default 3; the table shows their medians)
#
# Needs a release build (cargo build --release) and the brokers on their default loopback ports;
# a broker that is not up is skipped with a note. Only ever points at 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
msgs=${1:-200000}
bin=target/release/pubsub
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" >/dev/null 2>&1 &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

up() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
brokers=("mem://" "ws://127.0.0.1:$port")
up 4222 && brokers+=("nats://127.0.0.1:4222?mode=core") || echo "note: no NATS on 4222" >&2
up 6379 && brokers+=("redis://127.0.0.1:6379?mode=pubsub") || echo "note: no Redis on 6379" >&2
up 1883 && brokers+=("mqtt://127.0.0.1:1883") || echo "note: no Mosquitto on 1883" >&2

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo
echo "| broker | scenario | published/s | delivered/s | lost | p50 µs | p99 µs | max µs |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
csv() { "$bin" --broker "$1" bench --csv "${@:2}" 2>/dev/null | tail -1; }
row() { # broker URL, then bench args
  local url=$1; shift
  local line
  line=$(csv "$url" "$@") || { echo "| $url | $* | failed | | | | | |"; return; }
  IFS=, read -r scenario _ pubs subs _ rate published delivered lost _ pps dps _ p50 _ p99 _ max _ <<<"$line"
  local label="$scenario ($pubs pub, $subs sub)"
  [ -n "$rate" ] && label="$label at $rate/s"
  printf '| %s | %s | %.0f | %.0f | %s | %s | %s | %s |\n' "$url" "$label" "$pps" "$dps" "$lost" "$p50" "$p99" "$max"
}
for url in "${brokers[@]}"; do
  row "$url" --scenario 1:1 -n "$msgs"
  row "$url" --scenario fanout --subs 10 -n $((msgs / 4))
done
# Latency: open loop at 10,000 msgs/s for 5 s, ROUNDS rounds taking the brokers in turn (so that a
# noisy moment of the machine hits all of them), each figure the median of the rounds.
rounds=${ROUNDS:-3}
tmp=$(mktemp -d)
trap 'kill $serve_pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
for ((r = 0; r < rounds; r++)); do
  for i in "${!brokers[@]}"; do
    csv "${brokers[$i]}" --scenario 1:1 --rate 10000/s -n 50000 >>"$tmp/$i" || true
  done
done
median() { sort -n | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}'; }
for i in "${!brokers[@]}"; do
  f="$tmp/$i"
  [ -s "$f" ] || { echo "| ${brokers[$i]} | 1:1 at 10000/s | failed | | | | | |"; continue; }
  col() { cut -d, -f"$1" "$f" | median; }
  printf '| %s | 1:1 (1 pub, 1 sub) at 10000/s, median of %s | %.0f | %.0f | %s | %s | %s | %s |\n' \
    "${brokers[$i]}" "$(wc -l <"$f")" "$(col 11)" "$(col 12)" "$(col 9)" "$(col 14)" "$(col 16)" "$(col 18)"
done
