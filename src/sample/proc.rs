//! Sample section types read from /proc (and netfilter netlink): neighbour
//! tables, conntrack, softnet, SNMP/netstat counters, CPU/memory/PSI,
//! netfilter ruleset fingerprints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Neighbours {
    /// Entries per family ("inet", "inet6") and NUD state name ("reachable", "stale", "failed", …).
    pub by_state: BTreeMap<String, BTreeMap<String, u32>>,
    /// Entries per device name, all families.
    #[serde(default)]
    pub by_dev: BTreeMap<String, u32>,
    #[serde(default)]
    pub total_inet: u32,
    #[serde(default)]
    pub total_inet6: u32,
    /// net.ipv4.neigh.default.gc_thresh{1,2,3}; global, so absent inside a child namespace.
    #[serde(default)]
    pub gc_thresh: Option<[u32; 3]>,
    #[serde(default)]
    pub gc_thresh6: Option<[u32; 3]>,
    /// /proc/net/stat/arp_cache summed over CPUs (entries is not summed: it is a gauge).
    #[serde(default)]
    pub arp_cache: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub ndisc_cache: Option<BTreeMap<String, u64>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Conntrack {
    pub count: Option<u64>,
    pub max: Option<u64>,
    #[serde(default)]
    pub buckets: Option<u64>,
    /// /proc/net/stat/nf_conntrack, summed over CPUs, keyed by its header
    /// names (found, invalid, insert_failed, drop, early_drop, …).
    #[serde(default)]
    pub stats: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SoftnetCpu {
    pub cpu: u32,
    pub processed: u64,
    pub dropped: u64,
    pub time_squeeze: u64,
    #[serde(default)]
    pub received_rps: u64,
    #[serde(default)]
    pub flow_limit_count: u64,
    #[serde(default)]
    pub backlog_len: Option<u64>,
}

/// /proc/net/snmp, /proc/net/netstat and /proc/net/snmp6, keyed
/// "Section.Field" (e.g. "Ip.InDiscards", "TcpExt.IPReversePathFilter",
/// "Ip6.InDiscards").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Snmp {
    pub counters: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct System {
    /// Aggregate CPU time from /proc/stat, in USER_HZ ticks.
    pub cpu: CpuTimes,
    #[serde(default)]
    pub ncpu: u32,
    /// /proc/softirqs NET_RX / NET_TX per CPU.
    #[serde(default)]
    pub softirq_net_rx: Vec<u64>,
    #[serde(default)]
    pub softirq_net_tx: Vec<u64>,
    #[serde(default)]
    pub mem_total_kb: u64,
    #[serde(default)]
    pub mem_available_kb: u64,
    /// PSI "total" in µs: cpu_some, memory_some, memory_full, io_some, io_full.
    #[serde(default)]
    pub psi: BTreeMap<String, u64>,
    #[serde(default)]
    pub load1: f64,
    #[serde(default)]
    pub procs_running: u64,
    /// /proc/buddyinfo free blocks per order, summed over zones (F21).
    #[serde(default)]
    pub buddy_free: Vec<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Netfilter {
    /// nf_tables generation id (NFT_MSG_GETGEN): changes on every ruleset
    /// commit, including iptables-nft and ebtables-nft. A cheap fingerprint.
    #[serde(default)]
    pub nft_genid: Option<u32>,
    /// net.bridge.bridge-nf-call-{iptables,ip6tables,arptables}: absent when br_netfilter is not loaded.
    #[serde(default)]
    pub bridge_nf_call_iptables: Option<bool>,
    #[serde(default)]
    pub bridge_nf_call_ip6tables: Option<bool>,
    #[serde(default)]
    pub bridge_nf_call_arptables: Option<bool>,
    /// Legacy xtables tables present in /proc/net/ip_tables_names (names only).
    #[serde(default)]
    pub legacy_tables: Vec<String>,
    /// The same for IPv6 (/proc/net/ip6_tables_names): a legacy ip6tables
    /// FORWARD drop cuts guests' IPv6 when bridge-nf-call-ip6tables is on.
    #[serde(default)]
    pub legacy_tables6: Vec<String>,
}
