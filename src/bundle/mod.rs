//! Forensic bundles: everything about an incident in one file that an
//! engineer can take apart offline. `hvflight-<host>-<UTC time>-<id>.tar.zst`:
//!
//! ```text
//! manifest.json            first: format version, agent, host, incident, time window,
//!                          every entry with size and sha256, every command with exit
//!                          status, duration, timeout, stderr tail; collector failures
//! history/records.jsonl    samples and events from the store, in order (raw, as stored)
//! deep/<name>.txt          one-shot deep state: ip, bridge, tc, nft/iptables, ethtool,
//!                          conntrack, /proc files, dmesg — each under its own timeout
//! libvirt/<domain>.xml     domain XML, secrets redacted
//! capture/packets.pcapng   the packet ring around the incident (one interface block per interface)
//! ```
//!
//! Written to a temporary name in the bundles directory, fsynced, renamed:
//! never a half bundle under the final name. A bundle is written at once
//! when an incident starts (a reboot may follow) and rewritten, complete,
//! after the post-incident window; `complete` in the manifest says which.
//! Format in docs/bundle-format.md.

pub mod case;
pub mod deep;
pub mod drops;
pub mod redact;
pub mod verify;
pub mod worker;
pub mod writer;

use serde::{Deserialize, Serialize};

pub const BUNDLE_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Incident {
    pub id: String,
    /// "manual" (hvflight trigger), "detector" (a collapse) or
    /// "degradation" (the detector's degradation: the network works, not fully).
    pub trigger: String,
    pub reason: String,
    pub ts_unix_ns: i64,
    pub ts: String,
    /// Support case label (`--case`), also part of the object key on upload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub case: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CommandRun {
    pub name: String,
    pub argv: Vec<String>,
    /// Exit code; None when killed (timeout) or not started.
    pub exit_status: Option<i32>,
    pub duration_ms: u64,
    pub timed_out: bool,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub stderr_tail: String,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CollectorFailureSummary {
    pub collector: String,
    pub samples: u64,
    pub last_error: String,
}

/// What the packet ring put into the bundle (`capture/packets.pcapng`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CaptureSummary {
    /// The pcapng entry; empty when no file could be made (see `error`).
    pub entry: String,
    #[serde(default)]
    pub error: String,
    pub packets: u64,
    /// Packets before and after the incident time.
    pub packets_before: u64,
    pub packets_after: u64,
    /// The window asked for (capture.before_s before, capture.after_s after).
    pub window_since_unix_ns: i64,
    pub window_until_unix_ns: i64,
    /// What the ring really covers of it: every control-plane packet since
    /// `complete_since` (later than `window_since` when the ring had to
    /// evict or capture started later), sampled ones since `sampled_complete_since`.
    pub complete_since_unix_ns: i64,
    pub sampled_complete_since_unix_ns: i64,
    pub first_packet_unix_ns: i64,
    pub last_packet_unix_ns: i64,
    pub filter: String,
    pub snaplen: u32,
    pub sample_share: f64,
    pub headers_only: bool,
    /// The ring's counters when the file was made (see sample section `capture`).
    pub evicted_packets_total: u64,
    pub refused_packets_total: u64,
    pub shedding: bool,
    pub shed_total: u64,
    /// Every interface captured or failing, with the kernel's counters.
    pub interfaces: Vec<crate::sample::capture::CaptureIface>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Manifest {
    pub format_version: u32,
    pub agent_version: String,
    pub host: String,
    pub incident: Incident,
    pub window_since: String,
    pub window_until: String,
    #[serde(default)]
    pub window_since_unix_ns: i64,
    #[serde(default)]
    pub window_until_unix_ns: i64,
    /// False for the bundle written at once; true after the post-window.
    pub complete: bool,
    #[serde(default)]
    pub samples: u64,
    #[serde(default)]
    pub events: u64,
    pub entries: Vec<Entry>,
    pub commands: Vec<CommandRun>,
    #[serde(default)]
    pub collector_failures: Vec<CollectorFailureSummary>,
    #[serde(default)]
    pub store_warnings: Vec<String>,
    /// The packet ring's part; absent when capture is off.
    #[serde(default)]
    pub capture: Option<CaptureSummary>,
}

pub fn bundle_name(host: &str, ts_unix_ns: i64, id: &str) -> String {
    // 2026-11-24T05:20:21.185Z → 20261124T052021Z
    let t = crate::clock::format_rfc3339(ts_unix_ns);
    let compact: String = t[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("hvflight-{host}-{compact}Z-{id}.tar.zst")
}

/// Hands what writing a bundle freed back to the system: glibc keeps freed
/// memory for reuse, and a bundle's (the history scan's decoded samples, a
/// libvirt connection, JSON lines, zstd's window) would otherwise stay in the
/// agent's RSS until the next incident. After the history scan and after
/// each bundle; the sampler's own steady memory is reused each second anyway.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of malloc's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Between the stages of a bundle (before it, after the deep state, after
/// each write): freed memory back to the system and, with `file_pages`, the
/// code and constants the stage mapped unmapped (agent/trim.rs). The bundle
/// runs beside the sampler: pages the sampler's fault-around mapped and the
/// deep state's (libvirt's XML, spawning commands) would otherwise add to
/// the history scan's and zstd's, and stay mapped until the next trim that
/// never comes. At 500 vNICs a bundle mapped ~3.3 MiB of file pages on top
/// of the sampler's ~13.7 MiB.
pub(crate) fn give_back(file_pages: bool, stage: &str) {
    release_freed_memory();
    if file_pages {
        match crate::agent::trim::trim_file_pages() {
            Ok(t) => tracing::debug!(stage, kib = t.kib, "bundle: unmapped file pages"),
            Err(e) => tracing::debug!(error = %e, stage, "bundle: could not trim file pages"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(
            super::bundle_name("virt1012", 1_425_004_200_123_000_000, "a1b2"),
            "hvflight-virt1012-20150227T023000Z-a1b2.tar.zst"
        );
        assert_eq!(
            super::bundle_name("a b/c", 0, "x"),
            "hvflight-a_b_c-19700101T000000Z-x.tar.zst"
        );
    }
}
