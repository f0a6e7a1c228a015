#!/bin/bash
# User-space instructions per sample at N vNICs (callgrind), for comparing
# builds where CPU time is too noisy to (docs/performance.md): on these VMs
# `prof.sh` gave 11–20 ms/s for one binary; instruction counts repeat.
#
#   bash tests/tools/callgrind.sh BIN [BIN...]
#
# Builds the bench's lab (N=500 by default: N veth vNICs on one bridge, N/2
# test-driver domains of two vNICs, a tenth pinging), then runs each binary
# under `valgrind --tool=callgrind` as `hvflight run --count C` for C1 and
# C2 samples (25 and 35) and prints (total(C2) - total(C1)) / (C2 - C1):
# start-up cancels out. Not fewer: under valgrind the test driver's connect
# (parsing the node file, ~0.9 G instructions) takes so long that with C1=3
# the first full libvirt snapshot (250 domains' XML) falls between C1 and C2
# and adds ~14 M per sample (3/13 gave 46.9 M, 5/15 41.7, 25/35 32.8 for one
# binary); from 25 on the window holds only steady samples. All threads are counted (the libvirt test driver's
# in-process work too); kernel time is not. The callgrind files stay in
# OUT (default target/prof) for callgrind_annotate. Clean-up (lab) also on
# failure.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }
N=${N:-500}; C1=${C1:-25}; C2=${C2:-35}
OUT=${OUT:-target/prof}
mkdir -p "$OUT"
command -v valgrind > /dev/null || { echo "callgrind.sh: valgrind missing (tests/tools/install-deps.sh installs it)" >&2; exit 1; }
W=$(mktemp -d /tmp/hvflight-cg.XXXXXX)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
. "$(dirname "$0")/lab.sh"
lab_up "$1" "$N" "$W"
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
for bin in "$@"; do
  declare -A ir=()
  for c in "$C1" "$C2"; do
    rm -rf "$W/state"
    f="$OUT/callgrind.$(basename "$bin").$c"
    valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" run --count "$c" \
      --netns "$LAB_NS" --libvirt-uri "$LAB_URI" --state-dir "$W/state" --socket "$W/s.sock" \
      > /dev/null 2> "$W/err" || { echo "callgrind.sh: $bin failed:" >&2; tail -5 "$W/err" >&2; exit 1; }
    ir[$c]=$(total "$f")
  done
  python3 -c "print(f'$bin: {(${ir[$C2]} - ${ir[$C1]}) / ($C2 - $C1) / 1e6:.1f} M instructions per sample at N=$N')"
  unset ir
done
