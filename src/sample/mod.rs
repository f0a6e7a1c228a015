//! The raw, versioned, serializable `Sample`: one snapshot of every layer a
//! packet crosses between a guest vNIC and the uplink.
//!
//! Raw counters only — rates are derived in `model.rs`. Each collector fills
//! one optional section; `None` means that collector failed (or is disabled),
//! and the reason is in `failures`. Formats only grow: new fields get
//! `#[serde(default)]`, nothing is renamed in place (readers of old store
//! segments and bundles depend on it).

use serde::{Deserialize, Serialize};

pub mod bridge;
pub mod capture;
pub mod drops;
pub mod event;
pub mod index;
pub mod libvirt;
pub mod link;
pub mod probes;
pub mod proc;

pub use bridge::{Bridge, BridgePort, FdbEntry};
pub use drops::{DropCount, Drops};
pub use event::{Event, EventKind};
pub use libvirt::{Domain, Libvirt, Vnic};
pub use link::{Link, LinkStats, Qdisc};
pub use probes::{GatewayProbe, GuestProbe, Probes};
pub use proc::{Conntrack, Neighbours, Netfilter, Snmp, SoftnetCpu, System};

/// Version of the `Sample` layout. Bump when a field changes meaning; adding
/// an optional field does not need a bump.
pub const SAMPLE_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub version: u32,
    /// Monotonically increasing per agent run.
    pub seq: u64,
    /// Wall clock (CLOCK_REALTIME) at the start of the sample, ns since epoch.
    pub ts_unix_ns: i64,
    /// CLOCK_MONOTONIC at the start of the sample, ns. Rates use this, so a
    /// wall-clock step never produces a negative or huge interval.
    pub mono_ns: u64,
    /// CLOCK_BOOTTIME, ns: tells a reboot (boottime restarts) from a clock step.
    #[serde(default)]
    pub boot_ns: u64,
    pub host: String,
    /// How long collecting took, µs.
    #[serde(default)]
    pub duration_us: u64,
    /// How late the sample started against its schedule, µs (the agent's own stalls, F23).
    #[serde(default)]
    pub lag_us: u64,

    #[serde(default)]
    pub links: Option<Vec<Link>>,
    #[serde(default)]
    pub bridges: Option<Vec<Bridge>>,
    #[serde(default)]
    pub fdb: Option<Vec<FdbEntry>>,
    #[serde(default)]
    pub neighbours: Option<Neighbours>,
    #[serde(default)]
    pub qdiscs: Option<Vec<Qdisc>>,
    #[serde(default)]
    pub conntrack: Option<Conntrack>,
    #[serde(default)]
    pub softnet: Option<Vec<SoftnetCpu>>,
    #[serde(default)]
    pub snmp: Option<Snmp>,
    #[serde(default)]
    pub system: Option<System>,
    #[serde(default)]
    pub netfilter: Option<Netfilter>,
    #[serde(default)]
    pub libvirt: Option<Libvirt>,
    /// The packet ring's health (filled by the capture collector when capture runs).
    #[serde(default)]
    pub capture: Option<capture::Capture>,
    /// The detector's gateway and guest probes (collect::probes).
    #[serde(default)]
    pub probes: Option<Probes>,
    /// Kernel drop reasons per interface (eBPF on skb:kfree_skb); None when
    /// BPF is unavailable here — `failures` says why.
    #[serde(default)]
    pub drops: Option<Drops>,

    /// Collectors that failed (or timed out) in this sample, with why.
    #[serde(default)]
    pub failures: Vec<CollectorFailure>,

    /// Lookup tables built on first use, once the sample is complete (never
    /// stored; a clone starts without them).
    #[serde(skip)]
    pub index: index::Index,
}

/// A collector that could not fill its section. A partial sample is data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CollectorFailure {
    pub collector: String,
    pub error: String,
    #[serde(default)]
    pub duration_us: u64,
    #[serde(default)]
    pub timed_out: bool,
}

impl Sample {
    pub fn new(seq: u64, host: &str, clock: crate::clock::Instant) -> Self {
        Sample {
            version: SAMPLE_FORMAT_VERSION,
            seq,
            ts_unix_ns: clock.unix_ns,
            mono_ns: clock.mono_ns,
            boot_ns: clock.boot_ns,
            host: host.to_string(),
            ..Default::default()
        }
    }

    /// Looks up a link by name (a hash lookup: callers do this per port).
    pub fn link(&self, name: &str) -> Option<&Link> {
        let i = *self.index.get(self).links.get(name)?;
        self.links.as_ref()?.get(i)
    }

    /// Whether libvirt maps a domain's vNIC to host interface `ifname`.
    pub fn is_mapped_vnic(&self, ifname: &str) -> bool {
        self.index.get(self).mapped_vnics.contains(ifname)
    }

    /// Whether libvirt maps any vNIC to a host interface in this sample.
    pub fn has_mapped_vnics(&self) -> bool {
        !self.index.get(self).mapped_vnics.is_empty()
    }

    pub fn failure(&self, collector: &str) -> Option<&CollectorFailure> {
        self.failures.iter().find(|f| f.collector == collector)
    }
}
