#!/bin/bash
# Where the agent's CPU goes, per thread, on a scale lab (what the numbers in
# docs/performance.md "per thread" come from; `make bench` is the whole-run
# benchmark beside node_exporter).
#
#   bash tests/tools/prof.sh N SECS [perf]
#
# Builds the bench's lab (N veth vNICs on one bridge, N/2 test-driver
# domains of two vNICs, a tenth pinging), starts `hvflight run`, waits
# WARMUP_S (14: past agent.trim_pages_after_ms), then reads utime+stime of
# the process and of each thread from /proc over SECS seconds. With "perf",
# `perf record` (software clock, DWARF call graphs) runs over the same
# seconds into PERFDATA (default target/prof/perf.data) for `perf report`.
# BIN selects the binary (default target/release/hvflight). Clean-up (agent,
# lab) also on failure.
set -euo pipefail
N=${1:-500}; SECS=${2:-30}; PERF=${3:-}
BIN=${BIN:-./target/release/hvflight}
WARMUP_S=${WARMUP_S:-14}
mkdir -p target/prof
PERFDATA=${PERFDATA:-target/prof/perf.data}
W=$(mktemp -d /tmp/hvflight-prof.XXXXXX)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
. "$(dirname "$0")/lab.sh"
ticks() { awk '{print $14 + $15}' "$1"; }
lab_up "$BIN" "$N" "$W"
"$BIN" run --netns "$LAB_NS" --libvirt-uri "$LAB_URI" \
  --state-dir "$W/state" --socket "$W/s.sock" > /dev/null 2> "$W/agent.err" &
ap=$!
PIDS="$ap $PIDS"
sleep "$WARMUP_S"
kill -0 "$ap" 2>/dev/null || { echo "prof: the agent exited:" >&2; cat "$W/agent.err" >&2; exit 1; }
snap() { for t in /proc/$ap/task/*; do echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(ticks "$t/stat")"; done | sort; }
snap > "$W/t0"; c0=$(ticks "/proc/$ap/stat"); read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$ap/stat"); t0=$(date +%s.%N)
if [ "$PERF" = perf ]; then
  perf record -e cpu-clock -F "${FREQ:-999}" --call-graph dwarf,16384 -p "$ap" -o "$PERFDATA" -- sleep "$SECS" > /dev/null 2>&1
else
  sleep "$SECS"
fi
c1=$(ticks "/proc/$ap/stat"); read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$ap/stat"); t1=$(date +%s.%N); snap > "$W/t1"
hz=$(getconf CLK_TCK)
secs=$(python3 -c "print(round($t1 - $t0, 1))")
echo "N=$N over ${secs}s: $(python3 -c "print(round(($c1 - $c0) * 1000 / $hz / ($t1 - $t0), 2))") ms/s (utime+stime, all threads; user $(python3 -c "print(round(($u1 - $u0) * 1000 / $hz / ($t1 - $t0), 2))"), kernel $(python3 -c "print(round(($s1 - $s0) * 1000 / $hz / ($t1 - $t0), 2))"))"
join "$W/t0" "$W/t1" | awk -v s="$secs" -v hz="$hz" '{d=$5-$3; if (d>0) printf "  %-18s %.2f ms/s\n", $2, d*1000/hz/s}'
grep -E 'VmHWM|VmRSS|RssAnon|RssFile' "/proc/$ap/status" | tr -s ' \t' ' ' | sed 's/^/  /'
[ "$PERF" = perf ] && echo "perf data: $PERFDATA (perf report -i $PERFDATA --no-children)"
exit 0
