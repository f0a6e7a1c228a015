//! Sample section types for Linux bridges: bridge-wide STP/ageing/VLAN
//! settings, per-port state and flags, and the forwarding database.
//! Filled by `collect::bridge` from rtnetlink dumps (AF_BRIDGE), never from
//! per-port sysfs files, so 500 ports cost one dump.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Bridge {
    pub ifindex: u32,
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// 0 off, 1 kernel STP, 2 user STP.
    #[serde(default)]
    pub stp_state: Option<u32>,
    /// Centiseconds, as the kernel keeps them.
    #[serde(default)]
    pub forward_delay_cs: Option<u32>,
    #[serde(default)]
    pub hello_time_cs: Option<u32>,
    #[serde(default)]
    pub max_age_cs: Option<u32>,
    #[serde(default)]
    pub ageing_time_cs: Option<u32>,
    #[serde(default)]
    pub priority: Option<u16>,
    #[serde(default)]
    pub vlan_filtering: Option<bool>,
    #[serde(default)]
    pub default_pvid: Option<u16>,
    #[serde(default)]
    pub multicast_snooping: Option<bool>,
    #[serde(default)]
    pub multicast_querier: Option<bool>,
    #[serde(default)]
    pub topology_change: Option<bool>,
    #[serde(default)]
    pub topology_change_detected: Option<bool>,
    #[serde(default)]
    pub root_id: Option<String>,
    #[serde(default)]
    pub bridge_id: Option<String>,
    #[serde(default)]
    pub ports: Vec<BridgePort>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BridgePort {
    pub ifindex: u32,
    pub name: String,
    /// 0 disabled, 1 listening, 2 learning, 3 forwarding, 4 blocking.
    pub state: u8,
    #[serde(default)]
    pub learning: Option<bool>,
    #[serde(default)]
    pub unicast_flood: Option<bool>,
    #[serde(default)]
    pub multicast_flood: Option<bool>,
    #[serde(default)]
    pub broadcast_flood: Option<bool>,
    #[serde(default)]
    pub bpdu_guard: Option<bool>,
    #[serde(default)]
    pub root_block: Option<bool>,
    #[serde(default)]
    pub hairpin: Option<bool>,
    #[serde(default)]
    pub isolated: Option<bool>,
    #[serde(default)]
    pub neigh_suppress: Option<bool>,
    #[serde(default)]
    pub cost: Option<u32>,
    #[serde(default)]
    pub priority: Option<u16>,
    #[serde(default)]
    pub vlans: Vec<PortVlan>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PortVlan {
    pub vid: u16,
    #[serde(default)]
    pub pvid: bool,
    #[serde(default)]
    pub untagged: bool,
}

/// One bridge forwarding-database entry (`bridge fdb show`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct FdbEntry {
    pub mac: String,
    /// The port the MAC was learned on (or configured for).
    pub ifindex: u32,
    #[serde(default)]
    pub port: String,
    /// The bridge (NDA_MASTER), when the entry belongs to one.
    #[serde(default)]
    pub master: Option<u32>,
    #[serde(default)]
    pub vlan: Option<u16>,
    /// "permanent", "static", "dynamic" (NUD state as `bridge fdb` names it).
    #[serde(default)]
    pub state: String,
    /// NTF_SELF (entry in the port's own table, not the bridge's).
    #[serde(default)]
    pub is_self: bool,
    #[serde(default)]
    pub extern_learn: bool,
    /// Seconds since the entry was last updated (NDA_CACHEINFO), when known.
    #[serde(default)]
    pub updated_s: Option<u32>,
}
