#!/bin/bash
# Installs the Debian packages hvflight's build, tests, demo and benchmark
# need. Idempotent: does nothing (and touches no network) when all are present.
set -euo pipefail

PKGS=(
  build-essential pkg-config
  libvirt-dev libvirt-daemon libvirt-clients   # virt crate + in-process test driver
  libpcap-dev                                  # pcap crate
  iproute2 nftables iptables ebtables ethtool conntrack tcpdump  # lab + deep state
  iputils-ping arping procps psmisc kmod python3
  openssh-server openssh-client                # `ssh node hvflight tail` tests (sshd on 127.0.0.1)
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev   # the eBPF drop-reason program (built by cargo build)
  swift swift-proxy swift-account swift-container swift-object memcached  # real S3 (s3api) store for upload tests
  curl openssl                                 # upload tests: Swift health checks, a throwaway TLS CA
  chromium                                     # renders the HTML report in tests (headless, no network)
  prometheus prometheus-node-exporter          # promtool for the rules; node_exporter side by side in make bench
  lintian man-db systemd                       # .deb checks (lintian, man -w, systemd-analyze verify)
  qemu-system-x86 libvirt-daemon-driver-qemu dnsmasq-base busybox-static cpio  # real guests in the lab
  iperf3 linux-perf valgrind                   # guest throughput with/without the agent; profiles (prof.sh, callgrind.sh)
)
PKGS+=("$@")

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install packages (run as root, or install: ${missing[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
