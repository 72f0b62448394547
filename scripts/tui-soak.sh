#!/usr/bin/env bash
# The TUI under load: an in-memory `pubsub serve`, the TUI on it in a tmux pane (120×40, stream view), and
# `pubsub bench` publishing at a fixed rate for a while. Every second it samples the TUI's CPU time and
# resident memory from /proc; at the end it prints CPU use, peak and final RSS, and RSS growth over the
# second half of the run, and fails (exit 1) when memory was not bounded: peak RSS above MAX_RSS_MB, or
# the second half grew by more than MAX_GROWTH_MB (the stream view keeps a bounded ring, so after it
# filled, memory must stay flat). Used for docs/BENCHMARKS.md; never run by `cargo test`.
#
#   scripts/tui-soak.sh                      # 100,000 msgs/s for 60 s
#   RATE=20000 SECS=20 scripts/tui-soak.sh   # a shorter, slower run
#
# Needs tmux and a release build (`cargo build --release`; PUBSUB_BIN overrides the binary).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${PUBSUB_BIN:-target/release/pubsub}
rate=${RATE:-100000}
secs=${SECS:-60}
max_rss_mb=${MAX_RSS_MB:-256}
max_growth_mb=${MAX_GROWTH_MB:-16}

[ -x "$bin" ] || { echo "tui-soak: no binary at $bin (cargo build --release)" >&2; exit 2; }
command -v tmux >/dev/null || { echo "tui-soak: tmux is not installed" >&2; exit 2; }

home=$(mktemp -d)
export PUBSUB_HOME="$home"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="ws://127.0.0.1:$port"
session="pubsub-soak-$$"
serve_pid=""
bench_pid=""
cleanup() {
  tmux kill-session -t "$session" 2>/dev/null || true
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$home"
}
trap cleanup EXIT

"$bin" serve --listen "127.0.0.1:$port" >"$home/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

tmux new-session -d -s "$session" -x 120 -y 40 "exec $bin --broker $url tui"
tui_pid=$(tmux display-message -p -t "$session" '#{pane_pid}')
sleep 1
tmux send-keys -t "$session" 2   # the stream view: every message is drawn

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

"$bin" --broker "$url" bench --scenario pub --rate "${rate}/s" --duration "${secs}s" --json >"$home/bench.json" 2>"$home/bench.err" &
bench_pid=$!
start_cpu=$(cpu_ticks "$tui_pid")
start_ns=$(date +%s%N)
half_rss=""
for i in $(seq "$secs"); do
  sleep 1
  [ -d "/proc/$tui_pid" ] || { echo "tui-soak: the TUI exited during the run" >&2; tmux capture-pane -p -t "$session" >&2 || true; exit 1; }
  [ "$i" -eq $((secs / 2)) ] && half_rss=$(rss_kb "$tui_pid")
done
end_cpu=$(cpu_ticks "$tui_pid")
end_ns=$(date +%s%N)
end_rss=$(rss_kb "$tui_pid")
peak_rss=$(hwm_kb "$tui_pid")
wait "$bench_pid" || true
bench_pid=""
screen=$(tmux capture-pane -p -t "$session")

published=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r=r[0] if isinstance(r,list) else r; print(r.get("published", "?"), r.get("published_per_s", "?"))' "$home/bench.json" 2>/dev/null || echo "? ?")
elapsed=$(python3 -c "print(($end_ns - $start_ns) / 1e9)")
cpu=$(python3 -c "print(round(100 * ($end_cpu - $start_cpu) / $ticks / $elapsed, 1))")
growth_kb=$((end_rss - ${half_rss:-$end_rss}))

echo "tui soak: ${rate} msgs/s asked for ${secs} s against $url (in-memory serve), TUI 120x40 on the stream view"
echo "published (count, msgs/s):  $published"
echo "TUI CPU:                    ${cpu} % of one core"
echo "TUI RSS peak / end:         $((peak_rss / 1024)) MiB / $((end_rss / 1024)) MiB"
echo "TUI RSS growth, 2nd half:   $((growth_kb / 1024)) MiB (from $(( ${half_rss:-0} / 1024)) MiB at ${secs}/2 s)"
echo "stream pane title at the end: $(grep -o 'stream — [^─]*' <<<"$screen" | head -1)"
status=0
if [ $((peak_rss / 1024)) -gt "$max_rss_mb" ]; then
  echo "FAIL: peak RSS above ${max_rss_mb} MiB"
  status=1
fi
if [ $((growth_kb / 1024)) -gt "$max_growth_mb" ]; then
  echo "FAIL: RSS grew by more than ${max_growth_mb} MiB in the second half: memory is not bounded"
  status=1
fi
if ! grep -q "stream" <<<"$screen"; then
  echo "FAIL: the TUI no longer shows the stream view"
  status=1
fi
[ "$status" -eq 0 ] && echo "ok: memory bounded (peak ≤ ${max_rss_mb} MiB, growth ≤ ${max_growth_mb} MiB)"
exit "$status"
