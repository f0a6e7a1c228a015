#!/usr/bin/env python3
"""Per-mapping RSS breakdown of a process, from /proc/PID/smaps.

Used by bench.sh (and by hand: `tests/tools/smaps.py PID [--top N]`) to tell
where the agent's resident memory is: its own binary, the shared libraries,
the malloc heap (brk and the anonymous mmaps glibc's arenas and large blocks
live in), thread stacks, and the packet ring (mapped from the AF_PACKET socket,
reported apart because the issue's RSS target excludes it).
Prints one JSON object (KiB per class) on stdout.
"""
import json
import os
import re
import sys

HDR = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$")


def classify(name, exe):
    if name == exe:
        return "binary"
    if ".so" in os.path.basename(name):
        return "libs"
    if name == "[heap]" or name == "":
        return "heap"
    if name.startswith("[stack"):
        return "stacks"
    if "packet" in name or name.startswith("socket:"):
        return "packet_ring"
    if name.startswith("["):
        return "kernel"  # vdso, vvar, vsyscall
    return "other_files"


def breakdown(pid, top=0):
    exe = os.readlink(f"/proc/{pid}/exe")
    classes = {}
    per_map = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = HDR.match(line)
            if m:
                cur = {"name": m.group(5).strip(), "perm": m.group(3), "rss": 0, "anon": 0}
                cur["class"] = classify(cur["name"], exe)
                per_map.append(cur)
                continue
            k, _, v = line.partition(":")
            if k == "Rss":
                cur["rss"] = int(v.split()[0])
            elif k == "Anonymous":
                cur["anon"] = int(v.split()[0])
    for m in per_map:
        c = classes.setdefault(m["class"], {"rss_kib": 0, "anon_kib": 0, "maps": 0})
        c["rss_kib"] += m["rss"]
        c["anon_kib"] += m["anon"]
        c["maps"] += 1
    out = {"classes": classes}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    if top:
        out["top"] = [
            {k: m[k] for k in ("name", "perm", "rss", "anon")}
            for m in sorted(per_map, key=lambda m: -m["rss"])[:top]
        ]
    return out


if __name__ == "__main__":
    pid = int(sys.argv[1])
    top = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--top" else 0
    print(json.dumps(breakdown(pid, top), indent=None if not top else 1))
