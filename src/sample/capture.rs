//! Sample section for the packet ring: per interface whether it is
//! captured and the kernel's counters (pcap_stats: ps_recv, ps_drop,
//! ps_ifdrop), and the ring's span, bounds, evictions and CPU shedding.
//! Counters are cumulative (`_total`) since the agent started.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Capture {
    #[serde(default)]
    pub interfaces: Vec<CaptureIface>,
    /// Memory the ring uses now and may use at most, bytes.
    pub ring_bytes: u64,
    pub ring_max_bytes: u64,
    /// Packets in the ring now.
    pub ring_packets: u64,
    /// Oldest and newest packet in the ring (0 when empty).
    pub oldest_unix_ns: i64,
    pub newest_unix_ns: i64,
    /// The ring has every control-plane packet captured since this time
    /// (later than the oldest packet when it had to evict).
    pub complete_since_unix_ns: i64,
    /// The same for the sampled share.
    #[serde(default)]
    pub sampled_complete_since_unix_ns: i64,
    pub control_packets_total: u64,
    pub sampled_packets_total: u64,
    /// Packets evicted before their time because the ring was full.
    pub evicted_packets_total: u64,
    /// Packets not kept because an incident held a full ring.
    pub refused_packets_total: u64,
    /// CPU time of the capture thread in the last second, ms.
    pub cpu_ms_last_s: f64,
    pub cpu_budget_ms_per_s: f64,
    /// The sampled share is shed (control plane only) right now.
    pub shedding: bool,
    pub shed_total: u64,
    pub shed_seconds_total: u64,
    /// Seconds over budget although shedding (the control plane alone is too much).
    #[serde(default)]
    pub over_budget_while_shed_seconds_total: u64,
    /// Sampled share in force (0 while shedding).
    pub sample_share: f64,
    /// Incidents holding the ring (their bundle is not complete yet).
    #[serde(default)]
    pub holds: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CaptureIface {
    pub name: String,
    /// "uplink", "vnic" or "configured".
    pub role: String,
    #[serde(default)]
    pub bridge: String,
    /// "capturing" or "failed".
    pub state: String,
    #[serde(default)]
    pub error: String,
    /// Capturing (or failing) since.
    pub since_unix_ns: i64,
    pub packets_total: u64,
    pub bytes_total: u64,
    /// pcap_stats over all handles this interface had: passed the filter,
    /// dropped because the kernel ring was full, dropped by the interface.
    pub kernel_received_total: u64,
    pub kernel_dropped_total: u64,
    pub interface_dropped_total: u64,
    pub failures_total: u64,
}
