//! Sample section types for Linux bridges: bridge-wide STP/ageing/VLAN
//! settings, per-port state and flags, and the forwarding database.
//! Filled by `collect::bridge` from rtnetlink dumps (AF_BRIDGE), never from
//! per-port sysfs files, so 500 ports cost one dump.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
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

#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
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

/// `clone_from` reuses the target's strings and ports (see `Link`'s).
impl Clone for Bridge {
    fn clone(&self) -> Self {
        let mut b = Bridge::default();
        b.clone_from(self);
        b
    }

    fn clone_from(&mut self, source: &Self) {
        // Destructured so that a new field cannot be forgotten here.
        let Bridge {
            ifindex,
            name,
            mac,
            stp_state,
            forward_delay_cs,
            hello_time_cs,
            max_age_cs,
            ageing_time_cs,
            priority,
            vlan_filtering,
            default_pvid,
            multicast_snooping,
            multicast_querier,
            topology_change,
            topology_change_detected,
            root_id,
            bridge_id,
            ports,
        } = source;
        self.ifindex = *ifindex;
        self.name.clone_from(name);
        self.mac.clone_from(mac);
        self.stp_state = *stp_state;
        self.forward_delay_cs = *forward_delay_cs;
        self.hello_time_cs = *hello_time_cs;
        self.max_age_cs = *max_age_cs;
        self.ageing_time_cs = *ageing_time_cs;
        self.priority = *priority;
        self.vlan_filtering = *vlan_filtering;
        self.default_pvid = *default_pvid;
        self.multicast_snooping = *multicast_snooping;
        self.multicast_querier = *multicast_querier;
        self.topology_change = *topology_change;
        self.topology_change_detected = *topology_change_detected;
        self.root_id.clone_from(root_id);
        self.bridge_id.clone_from(bridge_id);
        self.ports.clone_from(ports);
    }
}

impl Clone for BridgePort {
    fn clone(&self) -> Self {
        let mut p = BridgePort::default();
        p.clone_from(self);
        p
    }

    fn clone_from(&mut self, source: &Self) {
        let BridgePort {
            ifindex,
            name,
            state,
            learning,
            unicast_flood,
            multicast_flood,
            broadcast_flood,
            bpdu_guard,
            root_block,
            hairpin,
            isolated,
            neigh_suppress,
            cost,
            priority,
            vlans,
        } = source;
        self.ifindex = *ifindex;
        self.name.clone_from(name);
        self.state = *state;
        self.learning = *learning;
        self.unicast_flood = *unicast_flood;
        self.multicast_flood = *multicast_flood;
        self.broadcast_flood = *broadcast_flood;
        self.bpdu_guard = *bpdu_guard;
        self.root_block = *root_block;
        self.hairpin = *hairpin;
        self.isolated = *isolated;
        self.neigh_suppress = *neigh_suppress;
        self.cost = *cost;
        self.priority = *priority;
        self.vlans.clone_from(vlans);
    }
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
#[derive(Serialize, Deserialize, Debug, Default, PartialEq)]
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

/// `clone_from` reuses the target's strings: the FDB collector copies its
/// table into an earlier sample's entries every sample.
impl Clone for FdbEntry {
    fn clone(&self) -> Self {
        let mut e = FdbEntry::default();
        e.clone_from(self);
        e
    }

    fn clone_from(&mut self, source: &Self) {
        let FdbEntry {
            mac,
            ifindex,
            port,
            master,
            vlan,
            state,
            is_self,
            extern_learn,
            updated_s,
        } = source;
        self.mac.clone_from(mac);
        self.ifindex = *ifindex;
        self.port.clone_from(port);
        self.master = *master;
        self.vlan = *vlan;
        self.state.clone_from(state);
        self.is_self = *is_self;
        self.extern_learn = *extern_learn;
        self.updated_s = *updated_s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Link;

    /// `clone_from` into an older sample's sections yields the source exactly.
    #[test]
    fn clone_from_into_other_sections_equals_the_source() {
        let port = |i: u32, name: &str| BridgePort {
            ifindex: i,
            name: name.into(),
            state: 3,
            learning: Some(true),
            cost: Some(2),
            vlans: vec![PortVlan {
                vid: 10,
                pvid: true,
                untagged: false,
            }],
            ..Default::default()
        };
        let src = vec![Bridge {
            ifindex: 3,
            name: "br0".into(),
            mac: "02:00:00:00:00:03".into(),
            stp_state: Some(1),
            root_id: Some("8000.020000000003".into()),
            topology_change: Some(false),
            ports: vec![port(4, "vnet0"), port(5, "vnet1")],
            ..Default::default()
        }];
        let mut old = vec![
            Bridge {
                name: "a-much-longer-old-name".into(),
                bridge_id: Some("x".into()),
                ports: vec![port(9, "old"), port(10, "old2"), port(11, "old3")],
                ..Default::default()
            },
            Bridge::default(),
        ];
        old.clone_from(&src);
        assert_eq!(old, src);
        assert_eq!(src.clone(), src);

        let link = Link {
            ifindex: 4,
            name: "vnet0".into(),
            kind: "tun".into(),
            master: Some(3),
            mac: "fe:54:00:00:00:01".into(),
            mtu: 1500,
            operstate: "up".into(),
            admin_up: true,
            carrier: Some(true),
            carrier_changes: Some(2),
            txqlen: Some(1000),
            ..Default::default()
        };
        let mut old_link = Link {
            name: "eno1".into(),
            link: Some(2),
            ..Default::default()
        };
        old_link.clone_from(&link);
        assert_eq!(old_link, link);
        assert_eq!(link.clone(), link);
    }
}
