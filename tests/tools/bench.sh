#!/bin/bash
# Cost of `hvflight run` on a namespace lab: CPU per sample (utime+stime from
# /proc), time per sample (the sample's own duration_us), peak RSS (VmHWM).
# Usage: bench.sh [GUESTS...]   (default: 50)   DURATION_S=60 to change the run.
# Writes bench/out/results.json and prints a table.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=./target/release/hvflight
DURATION_S=${DURATION_S:-60}
WARMUP_S=${WARMUP_S:-5}
GUESTS=("$@")
[ ${#GUESTS[@]} -eq 0 ] && GUESTS=(50)
OUT=bench/out
mkdir -p "$OUT"
HZ=$(getconf CLK_TCK)
results=()

for n in "${GUESTS[@]}"; do
  work=$(mktemp -d)
  # The lab lives as long as its stdin stays open.
  mkfifo "$work/lab.in"
  "$BIN" lab --guests "$n" --traffic < "$work/lab.in" > "$work/lab.json" &
  labpid=$!
  exec 7> "$work/lab.in"
  for _ in $(seq 1 300); do [ -s "$work/lab.json" ] && break; sleep 0.1; done
  hv=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hv_ns"])' "$work/lab.json")
  uri=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["libvirt_uri"])' "$work/lab.json")
  echo "bench: lab of $n guests up ($hv); running the agent for ${DURATION_S}s after ${WARMUP_S}s warm-up" >&2

  # The measured run prints nothing (printing is not the agent's work).
  "$BIN" run --netns "$hv" --libvirt-uri "$uri" --state-dir "$work/state" \
    --socket "$work/sock" > /dev/null 2>"$work/agent.err" &
  apid=$!
  sleep "$WARMUP_S"
  read -r u0 s0 < <(awk '{print $14, $15}' /proc/$apid/stat)
  # Store growth after the warm-up (the kernel-log backlog read at start is
  # written before it).
  store0=$(du -sb "$work/state/store" | cut -f1)
  sleep "$DURATION_S"
  read -r u1 s1 < <(awk '{print $14, $15}' /proc/$apid/stat)
  hwm_kb=$(awk '/VmHWM/ {print $2}' /proc/$apid/status)
  threads=$(awk '/Threads/ {print $2}' /proc/$apid/status)
  kill -TERM $apid; wait $apid || true
  store_bytes=$(du -sb "$work/state/store" | cut -f1)
  # A second, short run prints its samples to read their own durations.
  "$BIN" run --json --netns "$hv" --libvirt-uri "$uri" --interval-ms 250 --count 40 \
    --state-dir "$work/state" --socket "$work/sock" > "$work/agent.jsonl" 2>>"$work/agent.err"
  c0=5; c1=40
  exec 7>&-
  wait $labpid || true

  res=$(DURATION_S=$DURATION_S WARMUP_S=$WARMUP_S python3 - "$work/agent.jsonl" "$n" "$u0" "$s0" "$u1" "$s1" "$c0" "$c1" "$hwm_kb" "$HZ" "$threads" "$store_bytes" "$store0" <<'PY'
import json, os, sys
path, n, u0, s0, u1, s1, c0, c1, hwm, hz, threads, store, store0 = sys.argv[1:]
lines = [l for l in open(path) if '"kind":"sample"' in l]
samples = [json.loads(l) for l in lines]
d = sorted(s["duration_us"] for s in samples[int(c0):int(c1)])
lag = sorted(s.get("lag_us", 0) for s in samples[int(c0):int(c1)])
cpu_ms = (int(u1) + int(s1) - int(u0) - int(s0)) * 1000 / int(hz)
k = max(1, int(os.environ.get("DURATION_S", "60")))  # 1 Hz: one sample per second
pct = lambda v, p: v[min(len(v) - 1, int(len(v) * p))] if v else 0
links = len(samples[-1].get("links") or [])
print(json.dumps({
  "guests": int(n), "links": links, "seconds": k,
  "cpu_ms_per_sample": round(cpu_ms / k, 3),
  "sample_duration_us_p50": pct(d, .5), "sample_duration_us_p99": pct(d, .99),
  "lag_us_p99": pct(lag, .99),
  "peak_rss_kib": int(hwm), "threads": int(threads),
  # growth over the measured run (after the warm-up and the kernel-log backlog)
  "store_mib_per_hour": round((int(store) - int(store0)) * 3600 / int(os.environ["DURATION_S"]) / 2**20, 2),
  # the same samples as JSON lines (the agent's own --json output)
  "jsonl_mib_per_hour": round(sum(len(l) for l in lines) / max(1, len(lines)) * 3600 / 2**20, 1),
  "failures": sorted({f["collector"] for s in samples for f in s.get("failures", [])}),
}))
PY
)
  results+=("$res")
  rm -rf "$work"
done

printf '%s\n' "${results[@]}" > "$OUT/rows.jsonl"
python3 - "$OUT/rows.jsonl" <<'PY'
import json, sys, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
doc = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count()}, "hvflight": rows}
open("bench/out/results.json", "w").write(json.dumps(doc, indent=2) + "\n")
cols = ["guests", "links", "cpu_ms_per_sample", "sample_duration_us_p50", "sample_duration_us_p99", "lag_us_p99", "peak_rss_kib", "store_mib_per_hour", "jsonl_mib_per_hour"]
print(" ".join(f"{c:>23}" for c in cols))
for r in rows:
    print(" ".join(f"{r[c]:>23}" for c in cols))
    if r["failures"]:
        print("   collector failures:", ", ".join(r["failures"]))
PY

echo
echo "store (synthetic busy host, 15 minutes at 1 Hz):"
cargo test --release --test store_bench -- --ignored --nocapture 2>/dev/null | grep -E "vNICs|^ +[0-9]|GiB/day"

echo
echo "/proc collectors, µs per collect:"
cargo test --release --test proc_bench -- --ignored --nocapture 2>/dev/null | grep -E "µs"
