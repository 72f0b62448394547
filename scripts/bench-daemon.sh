#!/usr/bin/env bash
# The default path at full speed (issue 20's targets), measured side by side in one session: each pair
# of rows runs alternately ROUNDS times and the table gives every run and the median, then the ratio
# of the medians.
#
#   queue:  `bench --scenario queue` on the durable local daemon (sync acks) vs NATS JetStream
#   1:1:    `bench --scenario 1:1` on the durable local daemon vs an in-memory `pubsub serve`, with the
#           default 4 publish calls in flight and with 32
#   --ack:  `bench --scenario 1:1 --ack` vs without acks, both over ws:// to an in-memory `pubsub serve`
#
#   scripts/bench-daemon.sh [ROUNDS]              (default 3)
#   BIN=/tmp/pubsub-old scripts/bench-daemon.sh   (another build)
#   N=200000 NATS=nats://127.0.0.1:4222 scripts/bench-daemon.sh
#
# Every daemon gets a fresh PUBSUB_HOME (a fresh store) and is stopped and removed after its run; the
# in-memory server listens on a free loopback port and is stopped at the end. Needs a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
bin=${BIN:-target/release/pubsub}
n=${N:-100000}
nats=${NATS:-nats://127.0.0.1:4222}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
tmp=$(mktemp -d)
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  for home in "$tmp"/home.*; do
    [ -d "$home" ] && PUBSUB_HOME=$home "$bin" serve stop >/dev/null 2>&1
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Delivered msgs/s of one bench run (the CSV's delivered_per_s), or "-" when it failed.
delivered() {
  local out
  if out=$("$bin" "$@" --csv 2>"$tmp/err"); then
    echo "$out" | awk -F, 'NR == 2 { printf "%.0f", $12 }'
  else
    echo "-"
    sed 's/^/  stderr: /' "$tmp/err" >&2
  fi
}

# One run on a fresh durable daemon.
on_daemon() {
  local home
  home=$(mktemp -d "$tmp/home.XXXX")
  PUBSUB_HOME=$home delivered --broker local bench "$@"
  PUBSUB_HOME=$home "$bin" serve stop >/dev/null 2>&1 || true
  rm -rf "$home"
}

median() { tr ' ' '\n' | grep -v '^-$' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" --token "" >/dev/null 2>&1 &
serve_pid=$!
for _ in $(seq 50); do "$bin" --broker "ws://127.0.0.1:$port" topics >/dev/null 2>&1 && break; sleep 0.1; done
mem="ws://127.0.0.1:$port"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); $n messages of 16 B per run, $rounds rounds"
echo
echo "| comparison | row | delivered msgs/s per run | median | ratio |"
echo "|---|---|---|---:|---:|"

# pair LABEL NAME_A NAME_B: runs A then B ROUNDS times (commands in the functions run_a / run_b).
pair() {
  local label=$1 name_a=$2 name_b=$3 a=() b=() ma mb
  for _ in $(seq "$rounds"); do
    a+=("$(run_a)")
    b+=("$(run_b)")
  done
  ma=$(echo "${a[*]}" | median)
  mb=$(echo "${b[*]}" | median)
  printf '| %s | %s | %s | %s | %s |\n' "$label" "$name_a" "${a[*]}" "$ma" \
    "$(awk -v x="$ma" -v y="$mb" 'BEGIN { if (y > 0) printf "%.2fx", x / y; else print "-" }')"
  printf '| | %s | %s | %s | |\n' "$name_b" "${b[*]}" "$mb"
}

run_a() { on_daemon --scenario queue -n "$n"; }
run_b() { delivered --broker "$nats" bench --scenario queue -n "$n"; }
pair "queue, 4 consumers acking" "local daemon (sync acks)" "NATS JetStream ($nats)"

run_a() { on_daemon --scenario 1:1 -n "$((n * 2))"; }
run_b() { delivered --broker "$mem" bench --scenario 1:1 -n "$((n * 2))"; }
pair "1:1" "local daemon (file store)" "in-memory serve (ws://)"

# The same with 32 publish calls in flight instead of 4: a durable publish is answered after its
# fdatasync, so with 4 calls in flight the publisher waits on the disk's latency.
run_a() { on_daemon --scenario 1:1 -n "$((n * 4))" --window 32; }
run_b() { delivered --broker "$mem" bench --scenario 1:1 -n "$((n * 4))" --window 32; }
pair "1:1, --window 32" "local daemon (file store)" "in-memory serve (ws://)"

run_a() { delivered --broker "$mem" bench --scenario 1:1 --ack -n "$((n * 2))"; }
run_b() { delivered --broker "$mem" bench --scenario 1:1 -n "$((n * 2))"; }
pair "1:1 over ws://" "--ack (each message acked)" "no acks"
