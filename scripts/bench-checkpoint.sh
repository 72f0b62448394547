#!/usr/bin/env bash
# How often a subscription checkpoints (PUBSUB_CHECKPOINT_EVERY, journal records between checkpoints)
# against what it costs: the queue scenario's throughput on the durable daemon (sync acks), and after a
# kill -9 the journal left to replay and the time the next open takes (starting the daemon and answering
# `sub-info`, which opens the store and replays every journal).
#
#   scripts/bench-checkpoint.sh [ROUNDS]                  (default 3; intervals alternate within a round)
#   EVERY="1000 50000 1000000" N=400000 scripts/bench-checkpoint.sh
#
# Every run gets a fresh PUBSUB_HOME, its daemon is stopped (or killed) and the home removed. Needs a
# release build.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
bin=${BIN:-target/release/pubsub}
n=${N:-400000}
backlog=${BACKLOG:-200000}
intervals=${EVERY:-"1000 10000 50000 500000"}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
tmp=$(mktemp -d)
cleanup() {
  for home in "$tmp"/home.*; do
    [ -d "$home" ] && PUBSUB_HOME=$home "$bin" serve stop >/dev/null 2>&1
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

median() { tr ' ' '\n' | grep -v '^-$' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }

# Delivered msgs/s of the queue scenario on a fresh daemon checkpointing every $1 records.
queue() {
  local home out
  home=$(mktemp -d "$tmp/home.XXXX")
  if out=$(PUBSUB_HOME=$home PUBSUB_CHECKPOINT_EVERY=$1 "$bin" --broker local bench --scenario queue -n "$n" --csv 2>"$tmp/err"); then
    echo "$out" | awk -F, 'NR == 2 { printf "%.0f", $12 }'
  else
    echo "-"
    sed 's/^/  stderr: /' "$tmp/err" >&2
  fi
  PUBSUB_HOME=$home "$bin" serve stop >/dev/null 2>&1 || true
  rm -rf "$home"
}

# "JOURNAL_BYTES OPEN_MS": a subscription acks a backlog one message at a time, the daemon is killed
# with -9, and the next command's start (daemon spawn, store open, journal replay, one answer) is timed.
reopen() {
  local home pid start end bytes
  home=$(mktemp -d "$tmp/home.XXXX")
  export PUBSUB_HOME=$home PUBSUB_CHECKPOINT_EVERY=$1
  "$bin" --broker local subs create work --topic jobs --from all >/dev/null 2>&1
  "$bin" --broker local pub jobs --count "$backlog" job >/dev/null
  "$bin" --broker local sub jobs -s work --count "$backlog" >/dev/null
  pid=$(find "$home" -name endpoint.json -exec python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' {} \;)
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  bytes=$(find "$home" -name journal.log -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
  start=$(date +%s%N)
  "$bin" --broker local sub-info work >/dev/null 2>&1
  end=$(date +%s%N)
  "$bin" serve stop >/dev/null 2>&1 || true
  unset PUBSUB_HOME PUBSUB_CHECKPOINT_EVERY
  rm -rf "$home"
  echo "$bytes $(((end - start) / 1000000))"
}

declare -A runs bytes opens
for _ in $(seq "$rounds"); do
  for every in $intervals; do
    runs[$every]="${runs[$every]:-} $(queue "$every")"
    read -r b ms < <(reopen "$every")
    bytes[$every]="${bytes[$every]:-} $b"
    opens[$every]="${opens[$every]:-} $ms"
  done
done

echo "queue scenario (-n $n, sync acks) on the daemon; reopen after kill -9 with $backlog messages acked one by one"
printf '%-10s  %-34s  %10s  %-22s  %8s\n' "every" "queue delivered/s (runs)" "median" "journal bytes at kill" "open ms"
for every in $intervals; do
  printf '%-10s  %-34s  %10s  %-22s  %8s\n' "$every" "${runs[$every]# }" "$(echo "${runs[$every]}" | median)" \
    "$(echo "${bytes[$every]}" | median)" "$(echo "${opens[$every]}" | median)"
done
