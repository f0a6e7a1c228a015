//! Events: things that are not sampled but happen, each with its own
//! timestamp — rtnetlink multicast, kernel log lines, libvirt lifecycle,
//! and the agent's own notes (lost events, reconnects, clock jumps).

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    pub ts_unix_ns: i64,
    #[serde(default)]
    pub mono_ns: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// RTM_NEWLINK / RTM_DELLINK.
    Link {
        action: String,
        ifindex: u32,
        name: String,
        #[serde(default)]
        operstate: String,
        #[serde(default)]
        carrier: Option<bool>,
        #[serde(default)]
        admin_up: bool,
        #[serde(default)]
        master: Option<u32>,
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(default)]
        mac: String,
        /// Bridge port STP state when the message carried IFLA_PROTINFO.
        #[serde(default)]
        port_state: Option<u8>,
    },
    /// RTM_NEWNEIGH / RTM_DELNEIGH in AF_BRIDGE: an FDB entry learned, moved or removed.
    Fdb {
        action: String,
        mac: String,
        ifindex: u32,
        #[serde(default)]
        port: String,
        #[serde(default)]
        master: Option<u32>,
        #[serde(default)]
        vlan: Option<u16>,
        #[serde(default)]
        state: String,
    },
    /// RTM_NEWNEIGH / RTM_DELNEIGH in AF_INET/AF_INET6.
    Neigh {
        action: String,
        ip: String,
        #[serde(default)]
        mac: String,
        ifindex: u32,
        #[serde(default)]
        dev: String,
        state: String,
    },
    /// RTM_NEWADDR / RTM_DELADDR.
    Addr {
        action: String,
        ifindex: u32,
        #[serde(default)]
        dev: String,
        addr: String,
        prefix_len: u8,
    },
    /// One /dev/kmsg record.
    Kmsg {
        seq: u64,
        priority: u8,
        #[serde(default)]
        facility: u8,
        /// Kernel timestamp, µs since boot.
        boot_us: u64,
        text: String,
        /// Catalogue ids whose pattern matched (e.g. "F1", "F8").
        #[serde(default)]
        tags: Vec<String>,
    },
    /// A libvirt domain lifecycle event.
    Libvirt {
        domain: String,
        #[serde(default)]
        uuid: String,
        event: String,
        #[serde(default)]
        detail: String,
    },
    /// The libvirt connection went away or came back.
    LibvirtConnection {
        uri: String,
        connected: bool,
        #[serde(default)]
        error: String,
    },
    /// Events were lost (netlink ENOBUFS, kmsg overrun, rate cap); a re-dump
    /// follows where possible.
    Loss {
        source: String,
        detail: String,
        #[serde(default)]
        count: u64,
    },
    /// The collapse detector changed state.
    Detector {
        from: String,
        to: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        eligible_guests: usize,
    },
    /// One guest sends while nothing reaches it (not a host-wide collapse).
    GuestCutOff {
        iface: String,
        #[serde(default)]
        domain: String,
        /// The evidence ("sends 12 packets in 2 s, none reach it, 40 dropped toward it").
        #[serde(default)]
        reason: String,
    },
    /// The network works but is degraded (full-size frames fail through the
    /// uplink, conntrack or neighbour table full); `active` false = cleared.
    Degradation {
        what: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        active: bool,
    },
    /// The packet capture: an interface started, failed, recovered or
    /// stopped; the sampled share shed or restored (CPU budget).
    Capture {
        #[serde(default)]
        iface: String,
        what: String,
        #[serde(default)]
        detail: String,
    },
    /// Something the agent itself noticed (start, stop, clock jump, own stall).
    Agent {
        what: String,
        #[serde(default)]
        detail: String,
    },
}
