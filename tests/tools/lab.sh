# Sourced by prof.sh and callgrind.sh: the bench's scale lab in one place.
#
#   lab_up BIN N DIR   N veth vNICs on one bridge, N/2 test-driver domains
#                      of two vNICs, a tenth pinging; the lab lives while fd 7
#                      (its stdin) stays open. Sets LAB_NS and LAB_URI and
#                      adds the lab's pid to PIDS (the caller's cleanup kills
#                      PIDS). Exits with the lab's stderr if it does not come up.
#   jget FILE KEY      one key of a JSON file
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

lab_up() {
  local bin=$1 n=$2 dir=$3
  mkfifo "$dir/lab.in"
  "$bin" lab --guests "$n" --traffic --traffic-every 10 --vnics-per-domain 2 \
    < "$dir/lab.in" > "$dir/lab.json" 2> "$dir/lab.err" &
  PIDS="$! ${PIDS:-}"
  exec 7> "$dir/lab.in"
  for _ in $(seq 1 1200); do [ -s "$dir/lab.json" ] && break; sleep 0.1; done
  [ -s "$dir/lab.json" ] || { echo "$(basename "$0"): lab of $n did not come up:" >&2; cat "$dir/lab.err" >&2; exit 1; }
  LAB_NS=$(jget "$dir/lab.json" hv_ns)
  LAB_URI=$(jget "$dir/lab.json" libvirt_uri)
}
