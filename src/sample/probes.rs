//! Sample section for the detector's active probes: per bridge (and VLAN)
//! the gateway probes sent out through the uplink and what came back, the
//! guests' own ARP for the gateway seen crossing the uplink, and per guest
//! the gentle unicast ARP probes. Filled by `collect::probes` from the
//! prober thread (`detect::prober`).
//!
//! Raw like every section: counters are cumulative since the agent started
//! (the detector derives "answered in the window" from two samples), plus
//! the prober's own facts (which gateway, learned from where, how many
//! probes in a row went unanswered).

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
pub struct Probes {
    #[serde(default)]
    pub bridges: Vec<GatewayProbe>,
    #[serde(default)]
    pub guests: Vec<GuestProbe>,
    /// Sockets that could not be opened, sends that failed (device, error).
    #[serde(default)]
    pub errors: Vec<String>,
}

impl Clone for Probes {
    fn clone(&self) -> Self {
        let mut p = Probes::default();
        p.clone_from(self);
        p
    }

    /// Field by field: `Vec::clone_from` then reuses every record's buffers.
    fn clone_from(&mut self, source: &Self) {
        let Probes {
            bridges,
            guests,
            errors,
        } = source;
        self.bridges.clone_from(bridges);
        self.guests.clone_from(guests);
        self.errors.clone_from(errors);
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GatewayProbe {
    pub bridge: String,
    /// 802.1Q VLAN the probes are tagged with (None: untagged).
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Bridge ports the probes leave through (the uplinks).
    #[serde(default)]
    pub uplinks: Vec<String>,
    /// The gateway probed; None while none is known (nothing is probed then).
    #[serde(default)]
    pub gateway: Option<String>,
    /// Where the gateway came from: "config", "dhcp", "route" or "arp".
    #[serde(default)]
    pub gateway_source: String,
    /// The gateway's MAC from its last answer (probes are unicast once known).
    #[serde(default)]
    pub gateway_mac: String,
    /// Sender IP of the probes: the bridge's own address in the gateway's
    /// subnet, or None for an ARP probe from 0.0.0.0 (RFC 5227 form).
    #[serde(default)]
    pub source_ip: Option<String>,
    /// ARP requests sent, answered, and given up on (no answer within the timeout).
    #[serde(default)]
    pub arp_sent: u64,
    #[serde(default)]
    pub arp_answered: u64,
    #[serde(default)]
    pub arp_unanswered: u64,
    /// ICMP echo requests (only when the host has an address to send from).
    #[serde(default)]
    pub icmp_sent: u64,
    #[serde(default)]
    pub icmp_answered: u64,
    #[serde(default)]
    pub icmp_unanswered: u64,
    /// Full-MTU probes (ARP padded to the bridge MTU, or a DF echo of that size).
    #[serde(default)]
    pub large_sent: u64,
    #[serde(default)]
    pub large_answered: u64,
    #[serde(default)]
    pub large_unanswered: u64,
    /// Size of the large probes, bytes after the Ethernet header.
    #[serde(default)]
    pub large_bytes: u32,
    /// Sends the kernel refused (ENOBUFS from a full or dropping device queue, …).
    #[serde(default)]
    pub send_errors: u64,
    /// Small probes (ARP or ICMP) unanswered in a row, and large ones.
    #[serde(default)]
    pub consecutive_unanswered: u32,
    #[serde(default)]
    pub large_consecutive_unanswered: u32,
    /// Round-trip time of the last answered small probe, µs.
    #[serde(default)]
    pub last_rtt_us: Option<u64>,
    /// CLOCK_MONOTONIC of the last answer, ns.
    #[serde(default)]
    pub last_answer_mono_ns: Option<u64>,
    /// Guests' ARP requests for the gateway that left through the uplink,
    /// the gateway's replies to them that came back through it, and the
    /// requests that saw no reply within the timeout.
    #[serde(default)]
    pub guest_arp_requests: u64,
    #[serde(default)]
    pub guest_arp_replies: u64,
    #[serde(default)]
    pub guest_arp_unanswered: u64,
}

/// `Clone` by hand: the prober publishes ~500 of these every second into
/// the records of the second before, and `clone_from` field by field keeps
/// their strings' buffers (the derived one allocates five strings each).
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
pub struct GuestProbe {
    /// The guest's host-side port (vnetN, tapN).
    pub iface: String,
    pub mac: String,
    #[serde(default)]
    pub ip: Option<String>,
    /// "libvirt", "dhcp", "arp" or "neigh".
    #[serde(default)]
    pub ip_source: String,
    #[serde(default)]
    pub sent: u64,
    #[serde(default)]
    pub answered: u64,
    #[serde(default)]
    pub unanswered: u64,
    #[serde(default)]
    pub consecutive_unanswered: u32,
    #[serde(default)]
    pub last_answer_mono_ns: Option<u64>,
    /// Why the guest is not probed right now ("dhcp", "address probing",
    /// "lifecycle", "not running", "no address"); empty = probed.
    #[serde(default)]
    pub paused: String,
}

impl Clone for GuestProbe {
    fn clone(&self) -> Self {
        let mut g = GuestProbe::default();
        g.clone_from(self);
        g
    }

    fn clone_from(&mut self, source: &Self) {
        let GuestProbe {
            iface,
            mac,
            ip,
            ip_source,
            sent,
            answered,
            unanswered,
            consecutive_unanswered,
            last_answer_mono_ns,
            paused,
        } = source;
        self.iface.clone_from(iface);
        self.mac.clone_from(mac);
        self.ip.clone_from(ip);
        self.ip_source.clone_from(ip_source);
        self.sent = *sent;
        self.answered = *answered;
        self.unanswered = *unanswered;
        self.consecutive_unanswered = *consecutive_unanswered;
        self.last_answer_mono_ns = *last_answer_mono_ns;
        self.paused.clone_from(paused);
    }
}
