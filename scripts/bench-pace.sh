#!/usr/bin/env bash
# Paced publishing: do `pub --rate`, `replay --rate` and `replay --speed` keep the rate asked? One row
# per rate against mem:// (a private engine inside the command), each run about SECS seconds long;
# prints a Markdown table of asked against achieved, and the unpaced maximum for comparison.
#
#   scripts/bench-pace.sh [SECS]                  (default 2 s per run)
#   BIN=/tmp/pubsub-old scripts/bench-pace.sh     (another build, e.g. one from before a change)
#   BROKER=local RATES="1000 100000" scripts/bench-pace.sh   (the durable daemon, in a scratch
#                                                 PUBSUB_HOME that is stopped and removed at the end)
#
# "achieved" is the command's own figure: `pub -v`'s "paced at" line (first publish to last answer)
# or `replay`'s "replayed N message(s) in S" (after the recording is read); a build whose `pub -v`
# prints no such line gets N / wall, marked "(wall)". "wall" is the whole command, start-up and
# reading the recording included.
# Needs a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-2}
bin=${BIN:-target/release/pubsub}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
broker=${BROKER:-mem://}
tmp=$(mktemp -d)
export PUBSUB_HOME=$tmp/home
trap '"$bin" serve stop >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

now() { date +%s.%N; }

# Runs the command after `--`, printing its wall time in seconds; its stderr goes to $tmp/err.
timed() {
  local t0 t1
  t0=$(now)
  "$bin" --broker "$broker" "$@" 2>"$tmp/err" >/dev/null
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

# One table row: label, asked rate (msgs/s or "max"), message count, wall seconds, achieved msgs/s.
row() {
  local label=$1 asked=$2 n=$3 wall=$4 achieved=$5 err="-"
  if [ "$asked" != max ] && [ "$achieved" != "-" ]; then
    err=$(printf '%+.2f %%' "$(echo "($achieved - $asked) * 100 / $asked" | bc -l)")
  fi
  [ "$achieved" != "-" ] && achieved=$(printf '%.0f' "$achieved")
  printf '| %s | %s | %s | %.3f | %s | %s |\n' "$label" "$asked" "$n" "$wall" "$achieved" "$err"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); $broker; $secs s per run"
echo
# The daemon starts (and its data directory is made) before any row is timed.
[ "$broker" = local ] && "$bin" --broker local topics >/dev/null 2>&1
echo "| command | asked msgs/s | messages | wall s | achieved msgs/s | error |"
echo "|---|---:|---:|---:|---:|---:|"

read -r -a rates <<<"${RATES:-1000 10000 100000 500000 750000 1000000}"
for rate in "${rates[@]}"; do
  n=$((rate * secs))
  wall=$(timed pub t 'm{{seq}}' --count "$n" --rate "$rate/s" -v)
  achieved=$(sed -n 's/.*asked, \([0-9.]*\)\/s achieved.*/\1/p' "$tmp/err")
  label="pub --rate"
  [ -z "$achieved" ] && { achieved=$(echo "$n / $wall" | bc -l); label="$label (wall)"; }
  row "$label" "$rate" "$n" "$wall" "$achieved"
done
n=$((1000000 * secs))
wall=$(timed pub t 'm{{seq}}' --count "$n" -v)
row "pub (unpaced)" max "$n" "$wall" "$(echo "$n / $wall" | bc -l)"

# A recording of 1 µs gaps: 1 M/s as it happened, so --speed 0.01 asks 10 k/s and --speed 1 1 M/s.
n=$((1000000 * secs))
python3 - "$n" >"$tmp/rec.ndjson" <<'EOF'
import json, sys
for i in range(int(sys.argv[1])):
    s, us = divmod(i, 1_000_000)
    print(json.dumps({"subject": "t", "timestamp": "2026-01-01T00:00:%02d.%06dZ" % (s, us), "payload": "m%d" % i}))
EOF
replayed() { sed -n 's/.*replayed \([0-9]*\) message(s) in \([0-9.]*\)s.*/\1 \/ \2/p' "$tmp/err" | bc -l; }
for rate in "${rates[@]}"; do
  m=$((rate * secs < n ? rate * secs : n))
  head -n "$m" "$tmp/rec.ndjson" >"$tmp/part.ndjson"
  wall=$(timed replay --file "$tmp/part.ndjson" --rate "$rate/s")
  row "replay --rate" "$rate" "$m" "$wall" "$(replayed)"
done
for speed in ${SPEEDS:-0.001 0.01 0.1 0.5 1}; do
  asked=$(printf '%.0f' "$(echo "1000000 * $speed" | bc -l)")
  m=$(printf '%.0f' "$(echo "$asked * $secs" | bc -l)")
  [ "$m" -gt "$n" ] && m=$n
  head -n "$m" "$tmp/rec.ndjson" >"$tmp/part.ndjson"
  wall=$(timed replay --file "$tmp/part.ndjson" --speed "$speed")
  row "replay --speed $speed" "$asked" "$m" "$wall" "$(replayed)"
done
wall=$(timed replay --file "$tmp/rec.ndjson")
row "replay (unpaced)" max "$n" "$wall" "$(replayed)"
