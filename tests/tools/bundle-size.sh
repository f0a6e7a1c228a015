#!/bin/bash
# Bundle size for a real lab of GUESTS guests (default 50) after HISTORY_S
# (default 900: the 15 minutes a bundle holds) of history at 1 Hz, and how
# long the bundle took to be complete after its post-window closed.
# Usage: tests/tools/bundle-size.sh [GUESTS]   HISTORY_S=900 AFTER_S=60
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=./target/release/hvflight
[ -x "$BIN" ] || cargo build --release --quiet
N=${1:-50}
HISTORY_S=${HISTORY_S:-900}
AFTER_S=${AFTER_S:-60}
work=$(mktemp -d)
trap 'exec 7>&- 2>/dev/null || true; kill $apid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/lab.in"
"$BIN" lab --guests "$N" --traffic < "$work/lab.in" > "$work/lab.json" &
exec 7> "$work/lab.in"
for _ in $(seq 1 300); do [ -s "$work/lab.json" ] && break; sleep 0.1; done
hv=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hv_ns"])' "$work/lab.json")
uri=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["libvirt_uri"])' "$work/lab.json")
printf '[bundle]\nbefore_s = 900\nafter_s = %s\n[agent]\nmetrics_listen = ""\n' "$AFTER_S" > "$work/c.toml"
"$BIN" run --config "$work/c.toml" --netns "$hv" --libvirt-uri "$uri" --state-dir "$work/state" \
  --socket "$work/sock" > /dev/null 2>"$work/agent.err" &
apid=$!
echo "bundle-size: $N guests, ${HISTORY_S}s of history at 1 Hz ..." >&2
sleep "$HISTORY_S"
t0=$(date +%s.%N)
out=$("$BIN" trigger --reason "bundle size benchmark" --socket "$work/sock")
t1=$(date +%s.%N)
path=${out#* }
# Complete = the manifest says so; poll.
while ! "$BIN" bundle show "$path" 2>/dev/null | grep -q '"complete": true'; do
  sleep 0.2
  python3 -c "import sys; sys.exit(0 if float('$(date +%s.%N)') - $t0 < $AFTER_S + 120 else 1)" || { echo "never complete" >&2; exit 1; }
done
t2=$(date +%s.%N)
bytes=$(stat -c %s "$path")
python3 - "$N" "$HISTORY_S" "$AFTER_S" "$bytes" "$t0" "$t1" "$t2" <<'PY'
import sys
n, hist, after, b, t0, t1, t2 = sys.argv[1:]
b = int(b); t0, t1, t2 = float(t0), float(t1), float(t2)
print(f"guests {n}, history {hist} s: bundle {b/2**20:.2f} MiB; first write {t1-t0:.2f} s after the trigger; "
      f"complete {t2-t0-float(after):.2f} s after the {after} s post-window closed")
PY
