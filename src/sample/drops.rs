//! The `drops` section: why the kernel dropped packets, per interface of the
//! watched network namespace, as counted in-kernel by the eBPF program on
//! `skb:kfree_skb` (src/bpf/drops.bpf.c, docs/drop-reasons.md).
//!
//! Counters are cumulative since the program was loaded (`loaded_mono_ns`
//! tells one load from the next: a new load restarts every counter at 0).
//! Reason names come from the running kernel's BTF (`enum skb_drop_reason`,
//! `SKB_DROP_REASON_` stripped), never from numbers compiled in: the values
//! move between kernel versions.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Drops {
    /// Inode of the network namespace counted here (the one the agent watches).
    pub netns_inode: u64,
    /// CLOCK_MONOTONIC when the program was loaded, ns; counters start there.
    pub loaded_mono_ns: u64,
    /// One entry per (interface, reason, protocol) that dropped at least once.
    #[serde(default)]
    pub entries: Vec<DropCount>,
    /// Drops not counted per key because the kernel map was full (all namespaces).
    #[serde(default)]
    pub overflow: u64,
    /// Drops with neither a device nor a socket: their namespace is unknown
    /// (all namespaces together).
    #[serde(default)]
    pub unattributed: u64,
    /// Keys in the kernel map now (all namespaces) and its bound (`collect.drops_max_entries`).
    #[serde(default)]
    pub map_entries: u32,
    #[serde(default)]
    pub map_max_entries: u32,
    /// Runs of the program the kernel skipped (its recursion guard), cumulative.
    #[serde(default)]
    pub missed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct DropCount {
    /// skb->dev's ifindex; 0 when the packet had no device (local socket drops).
    pub ifindex: u32,
    /// Interface name from the same sample's link dump; empty when ifindex
    /// is 0 or the interface is already gone.
    #[serde(default)]
    pub interface: String,
    /// "NETFILTER_DROP", "BRIDGE_INGRESS_STP_STATE", "QDISC_DROP", …
    pub reason: String,
    /// Ethertype (skb->protocol): 2048 IPv4, 34525 IPv6, 2054 ARP; 0 unknown.
    #[serde(default)]
    pub protocol: u16,
    /// Cumulative drops since `loaded_mono_ns`.
    pub count: u64,
}

impl Drops {
    /// Cumulative drops per reason of one interface, summed over protocols.
    pub fn by_reason(&self, interface: &str) -> std::collections::BTreeMap<&str, u64> {
        let mut m = std::collections::BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.interface == interface) {
            *m.entry(e.reason.as_str()).or_default() += e.count;
        }
        m
    }
}
