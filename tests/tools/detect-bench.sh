#!/bin/bash
# Detection latency per fault scenario at the default 1 Hz (the default
# detector: 2 s window, collapse after 2 samples, gateway probes once a
# second), p50/p95 over RUNS runs each, in the namespace lab. Needs root.
# Usage: tests/tools/detect-bench.sh    RUNS=5 SCENARIOS=F2,F6,F7,F8,F11,F14,F17,F3,upstream RELEASE=1
# (the latency is the detector's windows and hysteresis, not CPU: a debug
# build measures the same; RELEASE=1 builds optimised).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=()
[ "${RELEASE:-0}" = 1 ] && profile=(--release)
RUNS=${RUNS:-5} SCENARIOS=${SCENARIOS:-F2,F6,F7,F8,F11,F14,F17,F3,upstream} \
  cargo test "${profile[@]}" --test detect detection_latency_at_1hz_bench -- --ignored --nocapture --test-threads 1 2>&1 \
  | grep -E "detection latency|runs|^test result"
