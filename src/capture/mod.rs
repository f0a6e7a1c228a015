//! The packet ring: capture on the uplink ports of the watched bridges (and
//! on vNIC ports if configured), without promiscuous mode, through
//! libpcap's TPACKET_V3 mmap ring, with an in-kernel filter that keeps the
//! control plane and a sampled share of the rest; a userspace ring of the
//! last minute or so, bounded by bytes; a CPU budget that sheds the sampled
//! share first; pcapng for bundles (docs/capture.md).
//!
//! ```text
//! sample ──► collector (which ports?) ──► capture thread: pcap handles ─► trim ─► Ring (control | sampled lanes)
//!                 ▲ counters into sample.capture            │ CPU per second ─► budget ─► shed / restore filter
//!                 └───────────────────────────────────────── status          bundle worker ─► hold, pcapng ◄┘
//! ```

pub mod budget;
pub mod collector;
pub mod filter;
pub mod pcapng;
pub mod ring;
pub mod select;
pub mod thread;
pub mod trim;

use serde::{Deserialize, Serialize};

pub use thread::{CaptureHandle, CaptureThread, Snapshot};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct CaptureConfig {
    /// Capture packets into the ring (and bundles).
    pub enabled: bool,
    /// Also capture on vNIC ports (tap/veth of guests), not only uplinks.
    pub vnics: bool,
    /// At most this many vNIC ports are captured (the first by name).
    pub max_vnics: u64,
    /// Extra interfaces to capture on (by name), whatever the bridges say.
    pub interfaces: Vec<String>,
    /// Bytes of each frame the kernel hands over.
    pub snaplen_bytes: u64,
    /// Cut TCP/UDP (non-DHCP) and other payload at the end of its headers.
    pub headers_only: bool,
    /// libpcap expression of the control plane kept whole; empty = the built-in one.
    pub filter: String,
    /// Share (0..1) of all other frames kept, sampled in the kernel.
    pub sample_share: f64,
    /// Memory of the userspace ring, bytes.
    pub ring_max_bytes: u64,
    /// Share of the ring the sampled frames may use (the rest is for the control plane).
    pub ring_sampled_share: f64,
    /// Packets kept from before an incident, seconds.
    pub before_s: u64,
    /// Packets put into the completed bundle from after the incident, seconds.
    pub after_s: u64,
    /// Kernel (mmap) ring per interface, bytes.
    pub kernel_buffer_bytes: u64,
    /// Kernel block timeout: packets reach the ring at most this late.
    pub poll_ms: u64,
    /// CPU time the capture thread may use, milliseconds per second.
    pub cpu_budget_ms_per_s: f64,
    /// Seconds in a row over budget before the sampled share is shed.
    pub shed_after_s: u64,
    /// Seconds in a row under half the budget before it is restored (doubles
    /// each time it has to be shed again soon after, up to 10 minutes).
    pub restore_after_s: u64,
    /// Delay between attempts to reopen an interface whose capture failed.
    pub retry_ms: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            enabled: true,
            vnics: false,
            max_vnics: 32,
            interfaces: Vec::new(),
            snaplen_bytes: 128,
            headers_only: true,
            filter: String::new(),
            sample_share: 0.01,
            ring_max_bytes: 32 << 20,
            ring_sampled_share: 0.25,
            before_s: 60,
            after_s: 30,
            kernel_buffer_bytes: 2 << 20,
            poll_ms: 100,
            cpu_budget_ms_per_s: 20.0,
            shed_after_s: 2,
            restore_after_s: 30,
            retry_ms: 5000,
        }
    }
}

impl CaptureConfig {
    /// The control-plane expression in force.
    pub fn control_expr(&self) -> String {
        if self.filter.trim().is_empty() {
            filter::control_plane_expr()
        } else {
            self.filter.clone()
        }
    }

    /// Problems with values, as (key, message), for config validation.
    pub fn check(&self) -> Option<(&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sample_share) {
            return Some((
                "capture.sample_share",
                format!("must be between 0 and 1, got {}", self.sample_share),
            ));
        }
        if !(0.0..=1.0).contains(&self.ring_sampled_share) {
            return Some((
                "capture.ring_sampled_share",
                format!("must be between 0 and 1, got {}", self.ring_sampled_share),
            ));
        }
        if !(64..=65535).contains(&self.snaplen_bytes) {
            return Some((
                "capture.snaplen_bytes",
                format!("must be between 64 and 65535, got {}", self.snaplen_bytes),
            ));
        }
        if self.ring_max_bytes < (256 << 10) {
            return Some(("capture.ring_max_bytes", "must be at least 262144".into()));
        }
        if !(10..=1000).contains(&self.poll_ms) {
            return Some((
                "capture.poll_ms",
                format!("must be between 10 and 1000, got {}", self.poll_ms),
            ));
        }
        if self.cpu_budget_ms_per_s.is_nan() || self.cpu_budget_ms_per_s <= 0.0 {
            return Some((
                "capture.cpu_budget_ms_per_s",
                "must be greater than 0".into(),
            ));
        }
        if self.kernel_buffer_bytes < (64 << 10) {
            return Some((
                "capture.kernel_buffer_bytes",
                "must be at least 65536".into(),
            ));
        }
        if !self.filter.trim().is_empty() {
            let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).ok()?;
            if let Err(e) = dead.compile(&self.filter, true) {
                return Some(("capture.filter", format!("libpcap rejects it: {e}")));
            }
        }
        None
    }
}
