//! The `tick`: what tail clients get once per sample — compact rates per
//! interface with their role (bridge, uplink, vNIC), not the raw sample.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agent::print::is_vnic;
use crate::model::Model;
use crate::sample::Sample;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct IfaceTick {
    /// "bridge", "uplink", "vnic" or "other".
    pub role: String,
    #[serde(default)]
    pub bridge: String,
    #[serde(default)]
    pub domain: String,
    pub operstate: String,
    #[serde(default)]
    pub carrier: Option<bool>,
    #[serde(default)]
    pub port_state: Option<u8>,
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub rx_drop_ps: f64,
    pub tx_drop_ps: f64,
    /// Kernel drops per second by reason (skb:kfree_skb), reasons that dropped only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drop_reasons_ps: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Tick {
    pub ts: String,
    pub ts_unix_ns: i64,
    pub kind: String,
    pub seq: u64,
    pub lag_us: u64,
    pub duration_us: u64,
    #[serde(default)]
    pub failures: Vec<String>,
    #[serde(default)]
    pub domains_running: usize,
    #[serde(default)]
    pub domains_total: usize,
    /// Detector state ("healthy", "suspect", "collapsed", "recovering"; "off").
    #[serde(default)]
    pub detector: String,
    #[serde(default)]
    pub eligible_guests: usize,
    /// Interfaces on watched bridges (and the bridges), by name.
    pub ifaces: BTreeMap<String, IfaceTick>,
}

pub fn tick(s: &Sample, m: &Model) -> Tick {
    let mut t = Tick {
        ts: crate::clock::format_rfc3339(s.ts_unix_ns),
        ts_unix_ns: s.ts_unix_ns,
        kind: "tick".into(),
        seq: s.seq,
        lag_us: s.lag_us,
        duration_us: s.duration_us,
        failures: s.failures.iter().map(|f| f.collector.clone()).collect(),
        ..Default::default()
    };
    let domain_of = |ifname: &str| -> String {
        s.libvirt
            .iter()
            .flat_map(|l| &l.domains)
            .find(|d| {
                d.vnics
                    .iter()
                    .any(|v| v.host_ifname.as_deref() == Some(ifname))
            })
            .map(|d| d.name.clone())
            .unwrap_or_default()
    };
    if let Some(l) = &s.libvirt {
        t.domains_total = l.domains.len();
        t.domains_running = l.domains.iter().filter(|d| d.state == "running").count();
    }
    let mut add = |name: &str, role: &str, bridge: &str, port_state: Option<u8>| {
        let Some(link) = s.link(name) else { return };
        let r = m.links.get(name);
        t.ifaces.insert(
            name.to_string(),
            IfaceTick {
                role: role.into(),
                bridge: bridge.into(),
                domain: if role == "vnic" {
                    domain_of(name)
                } else {
                    String::new()
                },
                operstate: link.operstate.clone(),
                carrier: link.carrier,
                port_state,
                rx_pps: r.map_or(0.0, |r| r.rx_packets_per_s),
                tx_pps: r.map_or(0.0, |r| r.tx_packets_per_s),
                rx_drop_ps: r.map_or(0.0, |r| r.rx_dropped_per_s),
                tx_drop_ps: r.map_or(0.0, |r| r.tx_dropped_per_s),
                drop_reasons_ps: m.drops_per_s.get(name).cloned().unwrap_or_default(),
            },
        );
    };
    for b in s.bridges.iter().flatten() {
        add(&b.name, "bridge", &b.name, None);
        for p in &b.ports {
            let mac = s.link(&p.name).map(|l| l.mac.clone()).unwrap_or_default();
            let role = if is_vnic(s, &p.name, &mac) {
                "vnic"
            } else {
                "uplink"
            };
            add(&p.name, role, &b.name, Some(p.state));
        }
    }
    t
}
