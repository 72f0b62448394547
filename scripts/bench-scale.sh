#!/usr/bin/env bash
# How cost grows with scale (issue 20 point 4): the durable local daemon (`--broker local`, the default)
# under one growing dimension at a time, each step on a fresh daemon and data directory, each row with
# throughput and resident memory of the daemon (VmHWM, the peak during the step, reset before it through
# /proc/PID/clear_refs; and VmRSS after it) and of the client (`/usr/bin/time` peak). Prints Markdown.
#
#   scripts/bench-scale.sh            full steps: 6-10 minutes, about 6 GB on disk (the 100 M backlog)
#   scripts/bench-scale.sh --quick    small steps, under a minute, to check the script itself
#   ROWS="topics size" scripts/bench-scale.sh   only some of: topics subs consumers backlog size clients
#   BIN=/tmp/pubsub-old scripts/bench-scale.sh  another build
#
# Rows: topics 1 → 10 k (one publisher, `bench --topics N` for a fixed time, messages spread over
# them in turn; the wall column includes creating and removing the topics);
# subscriptions on one topic 1 → 1 k (`--scenario fanout --subs N`, deliveries per step held constant);
# consumers on one subscription 1 → 256 (`--scenario queue --subs N`, every message acked); backlog
# 1 M → 100 M messages on disk (`bench --topic` fills one topic, then: open time after a clean stop and
# after kill -9, `tail -n 10` and `sub --from SEQ --count 10` wall times, daemon RSS); message size
# 16 B → 1 MiB (MB/s against `dd oflag=direct` on the same file system, measured before and after);
# concurrent ws:// clients 1 → 100 (separate `bench --scenario 1:1` processes on the daemon).
#
# Everything runs under a private PUBSUB_HOME in a temporary directory that is removed at the end, with
# the daemon it started stopped (also on Ctrl-C or an error). Only ever talks to 127.0.0.1.
# Needs a release build (cargo build --release) and /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = --quick ] && quick=1
bin=$(realpath "${BIN:-target/release/pubsub}")
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench-scale: /usr/bin/time is needed for the client's peak RSS" >&2; exit 2; }
rows=${ROWS:-topics subs consumers backlog size clients}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pubsub-scale.XXXXXX")
export PUBSUB_HOME=$tmp/home
daemon_pid=""
client_pids=()
cleanup() {
  for p in "${client_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_daemon TERM
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "bench-scale: $*" >&2; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; }
human() { awk -v v="$1" 'BEGIN { if (v >= 1e6) printf "%.2f M", v / 1e6; else if (v >= 1e3) printf "%.1f k", v / 1e3; else printf "%.0f", v }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

# The daemon, as autostart would run it, with limits raised for 1 k streams on one connection (each
# stream of the bench asks for a prefetch of 4096). Waits
# until it answers; sets daemon_pid and open_ms (wall time from launch until `serve status` answers).
start_daemon() {
  local t0
  t0=$(date +%s%N)
  "$bin" serve --daemon --max-subscriptions 4096 --max-connections 4096 --max-in-flight 8000000 2>>"$tmp/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 600); do
    "$bin" --no-autostart serve status >/dev/null 2>&1 && { open_ms=$(ms_since "$t0"); return; }
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.05
  done
  note "the daemon did not start; its log:"
  cat "$tmp/daemon.log" >&2
  exit 1
}
# SIGTERM stops it cleanly (subscriptions checkpointed), KILL as a crash would.
stop_daemon() {
  [ -n "$daemon_pid" ] || return 0
  kill "-${1:-TERM}" "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
}
fresh_daemon() {
  stop_daemon TERM
  rm -rf "$PUBSUB_HOME"
  start_daemon
}
# What the engine itself said it took to open the data directory, from the daemon's last start line.
engine_open_ms() { sed -n 's/.*opened in \([0-9.]*\) ms.*/\1/p' "$tmp/daemon.log" | tail -1; }

# One `pubsub bench --csv` run against the daemon: sets the CSV fields, client_kib, wall_s and the
# daemon's peak and resident KiB over the run.
bench() {
  echo 5 >"/proc/$daemon_pid/clear_refs" 2>/dev/null || true
  if ! /usr/bin/time -f '%M %e' -o "$tmp/time" "$bin" --no-autostart bench --csv "$@" >"$tmp/out" 2>"$tmp/err"; then
    note "bench $* failed:"
    cat "$tmp/err" >&2
    failure=$(grep -m1 'error' "$tmp/err" | sed -e 's/.*error: //' -e 's/|/\\|/g' -e "s#$tmp/home#\$PUBSUB_HOME#g")
    return 1
  fi
  IFS=, read -r _ _ _ _ _ _ published delivered lost _ pps dps mbps _ _ p99 _ _ _ _ < <(tail -1 "$tmp/out")
  read -r client_kib wall_s <"$tmp/time"
  daemon_hwm=$(kib "$daemon_pid" VmHWM)
  daemon_rss=$(kib "$daemon_pid" VmRSS)
}
# The median wall ms of 5 runs of a pubsub command against the daemon.
timed() {
  local t0
  for _ in 1 2 3 4 5; do
    t0=$(date +%s%N)
    "$bin" --no-autostart "$@" >/dev/null 2>"$tmp/err" || note "$* failed: $(cat "$tmp/err")"
    ms_since "$t0"
  done | median
}
p99_ms() { [ -n "${1:-}" ] && awk -v v="$1" 'BEGIN { printf "%.1f", v / 1000 }' || echo "-"; }

header() {
  echo
  echo "$1"
  echo
  echo "| step | published/s | delivered/s | $2 | lost | p99 ms | daemon RSS peak / after MiB | client RSS peak MiB | wall s |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
}
row() { # step, per-unit figure
  printf '| %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |\n' "$1" "$(human "$pps")" "$(human "$dps")" "$2" \
    "$lost" "$(p99_ms "$p99")" "$(mib "$daemon_hwm")" "$(mib "$daemon_rss")" "$(mib "$client_kib")" "$wall_s"
}

# A step whose bench failed: the row says why, and the table goes on.
failed_row() { printf '| %s | failed: %s | | | | | | | |\n' "$1" "${failure:-see stderr}"; }

steps() { if [ "$quick" = 1 ]; then echo "$2"; else echo "$1"; fi; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/^Mem:/ { print $2 }') GiB; $(date -u +%F); $("$bin" --version)"
echo "data directory on: $(df -h "$tmp" | awk 'NR == 2 { print $1 " (" $2 ")" }'); mode: $([ "$quick" = 1 ] && echo quick || echo full)"

for r in $rows; do
  case $r in
  topics)
    secs=$(steps 10 2)
    header "Topics: one publisher spreading 16 B messages over N topics for ${secs} s (\`bench --scenario pub --topics N --duration ${secs}s\`)" "msgs/s per topic"
    for t in $(steps "1 10 100 1000 5000 10000" "1 10 100"); do
      fresh_daemon
      bench --scenario pub --topics "$t" --duration "${secs}s" || { failed_row "$t"; continue; }
      row "$t" "$(human "$(awk -v p="$pps" -v t="$t" 'BEGIN { print p / t }')")"
    done
    ;;
  subs)
    deliveries=$(steps 2000000 200000)
    header "Subscriptions on one topic: \`bench --scenario fanout --subs N\`, $deliveries deliveries per step" "deliveries/s per subscription"
    for s in $(steps "1 10 100 1000" "1 10 100"); do
      fresh_daemon
      n=$((deliveries / s))
      [ "$n" -lt 1000 ] && n=1000
      bench --scenario fanout --subs "$s" -n "$n" || { failed_row "$s"; continue; }
      row "$s" "$(human "$(awk -v d="$dps" -v s="$s" 'BEGIN { print d / s }')")"
    done
    ;;
  consumers)
    n=$(steps 200000 50000)
    header "Consumers on one subscription: \`bench --scenario queue --subs N -n $n\` (each message acked, sync acks)" "acked msgs/s per consumer"
    for c in $(steps "1 4 16 64 256" "1 4 16"); do
      fresh_daemon
      bench --scenario queue --subs "$c" -n "$n" || { failed_row "$c"; continue; }
      row "$c" "$(human "$(awk -v d="$dps" -v c="$c" 'BEGIN { print d / c }')")"
    done
    ;;
  backlog)
    echo
    echo "Backlog: one topic without limits filled by \`bench --topic backlog --scenario pub --batch 1000\` (16 B), then the daemon stopped and started again"
    echo
    echo "| messages | on disk | filled at msgs/s | open: clean stop (engine / until it answers) | open: after kill -9 | daemon RSS after open MiB | \`tail -n 10\` ms | \`sub --from N/2 --count 10\` ms | \`sub --from 1 --count 10\` ms | daemon RSS peak MiB |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    fresh_daemon
    "$bin" --no-autostart topic create backlog --max-msgs 0 --max-bytes 0 --max-age 0s >/dev/null
    have=0
    for level in $(steps "1000000 10000000 100000000" "100000 1000000"); do
      bench --topic backlog --scenario pub --batch 1000 -n $((level - have)) || { echo "| $(human "$level") | failed: $failure |"; break; }
      fill=$pps
      have=$level
      disk=$(du -sh "$PUBSUB_HOME/data" | cut -f1)
      stop_daemon TERM
      start_daemon
      clean="$(engine_open_ms) / $open_ms"
      rss_open=$(kib "$daemon_pid" VmRSS)
      echo 5 >"/proc/$daemon_pid/clear_refs" 2>/dev/null || true
      tail_ms=$(timed tail backlog -n 10)
      mid_ms=$(timed sub backlog --from $((level / 2)) --count 10)
      first_ms=$(timed sub backlog --from 1 --count 10)
      peak=$(kib "$daemon_pid" VmHWM)
      stop_daemon KILL
      start_daemon
      crash="$(engine_open_ms) / $open_ms"
      printf '| %s | %s | %s | %s ms | %s ms | %s | %s | %s | %s | %s |\n' "$(human "$level")" "$disk" "$(human "$fill")" \
        "$clean" "$crash" "$(mib "$rss_open")" "$tail_ms" "$mid_ms" "$first_ms" "$(mib "$peak")"
    done
    ;;
  size)
    bytes=$(steps $((512 << 20)) $((64 << 20)))
    disk_rate() { # MB/s of sequential 1 MiB direct writes to the data directory's file system
      dd if=/dev/zero of="$tmp/dd" bs=1M count=$((bytes >> 20)) oflag=direct 2>&1 >/dev/null |
        awk '/copied/ { r = $(NF - 1); if ($NF ~ /^GB/) r *= 1000; if ($NF ~ /^kB/) r /= 1000; print r }'
      rm -f "$tmp/dd"
    }
    dd_before=$(disk_rate)
    header "Message size: \`bench --scenario pub --size S\`, $((bytes >> 20)) MiB per step (at most 1 M messages), batch ≤ 1 MiB" "MB/s (× disk)"
    for size in $(steps "16 256 4096 65536 1048576" "16 4096 1048576"); do
      fresh_daemon
      n=$((bytes / size))
      [ "$n" -gt 1000000 ] && n=1000000
      batch=$(((1 << 20) / size))
      [ "$batch" -gt 256 ] && batch=256
      [ "$batch" -lt 1 ] && batch=1
      bench --scenario pub --size "$size" --batch "$batch" -n "$n" || { failed_row "$size B"; continue; }
      row "$size B" "$(awk -v m="$mbps" -v d="$dd_before" 'BEGIN { printf "%.1f (%.2f×)", m, m / d }')"
    done
    dd_after=$(disk_rate)
    echo
    echo "Disk, same file system, \`dd if=/dev/zero bs=1M count=$((bytes >> 20)) oflag=direct\`: $dd_before MB/s before the size steps, $dd_after MB/s after (the × column is against the first)."
    ;;
  clients)
    total=$(steps 1000000 100000)
    header "Concurrent ws:// clients: N \`bench --scenario 1:1\` processes at once on the daemon, $total messages in all" "msgs/s per client"
    for c in $(steps "1 10 100" "1 10"); do
      fresh_daemon
      n=$((total / c))
      echo 5 >"/proc/$daemon_pid/clear_refs" 2>/dev/null || true
      client_pids=()
      for i in $(seq "$c"); do
        /usr/bin/time -f '%M %e' -o "$tmp/time.$i" "$bin" --no-autostart bench --csv --scenario 1:1 -n "$n" >"$tmp/out.$i" 2>"$tmp/err.$i" &
        client_pids+=($!)
      done
      failed=0
      for p in "${client_pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
      client_pids=()
      [ "$failed" -gt 0 ] && note "$failed of $c clients failed; first error: $(cat "$tmp"/err.* | head -3)"
      daemon_hwm=$(kib "$daemon_pid" VmHWM)
      daemon_rss=$(kib "$daemon_pid" VmRSS)
      # Aggregate: every client's published and delivered over the longest client's elapsed time.
      read -r pps dps lost p99 client_kib wall_s < <(
        for i in $(seq "$c"); do
          IFS=, read -r _ _ _ _ _ _ pub del lo _ _ _ _ _ _ q99 _ _ el _ < <(tail -1 "$tmp/out.$i")
          read -r kb w <"$tmp/time.$i"
          echo "$pub $del $lo $q99 $el $kb $w"
        done | awk '{ p += $1; d += $2; l += $3; if ($4 > q) q = $4; if ($5 > e) e = $5; k += $6; if ($7 > w) w = $7 }
          END { printf "%f %f %d %d %d %s\n", p / e, d / e, l, q, k / NR, w }'
      )
      rm -f "$tmp"/out.* "$tmp"/err.* "$tmp"/time.*
      row "$c" "$(human "$(awk -v d="$dps" -v c="$c" 'BEGIN { print d / c }')")"
    done
    echo
    echo "(client RSS is the mean peak per client process; published/s and delivered/s are all clients' messages over the longest client's run)"
    ;;
  *) note "unknown row $r (topics subs consumers backlog size clients)"; exit 2 ;;
  esac
done
