//! Sample section types for links (every interface, with raw counters) and
//! qdiscs. Filled by `collect::links` and `collect::qdisc` from rtnetlink dumps.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "veth", "tun", "vlan", "bond", "vxlan", … ; empty for physical NICs.
    #[serde(default)]
    pub kind: String,
    /// ifindex of the master (bridge or bond) this link is enslaved to.
    #[serde(default)]
    pub master: Option<u32>,
    /// IFLA_LINK: the lower device (VLAN/VXLAN parent, veth peer index).
    #[serde(default)]
    pub link: Option<u32>,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub mtu: u32,
    /// RFC 2863 operstate as the kernel names it: "up", "down", "lowerlayerdown", "unknown", …
    #[serde(default)]
    pub operstate: String,
    /// IFF_UP (administratively up).
    #[serde(default)]
    pub admin_up: bool,
    #[serde(default)]
    pub carrier: Option<bool>,
    #[serde(default)]
    pub carrier_changes: Option<u32>,
    #[serde(default)]
    pub txqlen: Option<u32>,
    #[serde(default)]
    pub stats: LinkStats,
}

/// `clone_from` reuses the target's strings: the links collector refreshes
/// last sample's links from its last full dump every sample (500+ links, four
/// strings each), which would otherwise allocate them all anew.
impl Clone for Link {
    fn clone(&self) -> Self {
        let mut l = Link {
            name: String::new(),
            kind: String::new(),
            mac: String::new(),
            operstate: String::new(),
            ..*self
        };
        l.name.clone_from(&self.name);
        l.kind.clone_from(&self.kind);
        l.mac.clone_from(&self.mac);
        l.operstate.clone_from(&self.operstate);
        l
    }

    fn clone_from(&mut self, source: &Self) {
        // Destructured so that a new field cannot be forgotten here.
        let Link {
            ifindex,
            name,
            kind,
            master,
            link,
            mac,
            mtu,
            operstate,
            admin_up,
            carrier,
            carrier_changes,
            txqlen,
            stats,
        } = source;
        self.ifindex = *ifindex;
        self.name.clone_from(name);
        self.kind.clone_from(kind);
        self.master = *master;
        self.link = *link;
        self.mac.clone_from(mac);
        self.mtu = *mtu;
        self.operstate.clone_from(operstate);
        self.admin_up = *admin_up;
        self.carrier = *carrier;
        self.carrier_changes = *carrier_changes;
        self.txqlen = *txqlen;
        self.stats = *stats;
    }
}

/// IFLA_STATS64, raw and monotonically increasing (until the interface is re-created).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    #[serde(default)]
    pub multicast: u64,
    #[serde(default)]
    pub collisions: u64,
    #[serde(default)]
    pub rx_length_errors: u64,
    #[serde(default)]
    pub rx_over_errors: u64,
    #[serde(default)]
    pub rx_crc_errors: u64,
    #[serde(default)]
    pub rx_frame_errors: u64,
    #[serde(default)]
    pub rx_fifo_errors: u64,
    #[serde(default)]
    pub rx_missed_errors: u64,
    #[serde(default)]
    pub tx_aborted_errors: u64,
    #[serde(default)]
    pub tx_carrier_errors: u64,
    #[serde(default)]
    pub tx_fifo_errors: u64,
    #[serde(default)]
    pub tx_heartbeat_errors: u64,
    #[serde(default)]
    pub tx_window_errors: u64,
    #[serde(default)]
    pub rx_compressed: u64,
    #[serde(default)]
    pub tx_compressed: u64,
    #[serde(default)]
    pub rx_nohandler: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Qdisc {
    pub ifindex: u32,
    /// Interface name, resolved from the link dump of the same sample.
    #[serde(default)]
    pub dev: String,
    pub kind: String,
    /// "major:minor" in hex as tc prints it.
    pub handle: String,
    pub parent: String,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub overlimits: u64,
    pub requeues: u64,
    pub backlog_bytes: u64,
    pub qlen: u64,
}
