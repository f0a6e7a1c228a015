//! The `probes` section: hands this sample's topology (bridges, uplinks,
//! guests with their MACs, state and addresses) to the detector's prober
//! thread and copies the prober's raw results into the sample. Runs after
//! links, bridge, fdb and libvirt, whose sections it reads. The prober
//! thread starts on the first sample (after the agent entered its netns).

use rustc_hash::FxHashMap;
use std::collections::BTreeSet;

use super::{CollectError, Collector, Context};
use crate::detect::frames::{self, Mac};
use crate::detect::guests::GuestTopo;
use crate::detect::prober::{BridgeTopo, ProbeHandle, Topology};
use crate::detect::{uplink, DetectConfig};
use crate::sample::{Domain, FdbEntry, Probes, Sample, Vnic};

pub struct ProbesCollector {
    cfg: DetectConfig,
    handle: Option<ProbeHandle>,
    /// A recycled sample's results: the next snapshot goes into them.
    spare: Option<Probes>,
}

impl ProbesCollector {
    pub fn new(cfg: DetectConfig) -> Self {
        ProbesCollector {
            cfg,
            handle: None,
            spare: None,
        }
    }
}

/// What the prober needs from one sample (pure).
pub fn topology(s: &Sample, cfg: &DetectConfig) -> Topology {
    let mut out = Topology::default();
    // Looked up per port: tables built once, so 500 ports cost 500 lookups,
    // not 500 scans of every domain's vNICs (and of the FDB). The first
    // match wins, as a scan in section order would find it.
    let mut vnic_of: FxHashMap<&str, (&Domain, &Vnic)> = FxHashMap::default();
    for d in s.libvirt.iter().flat_map(|l| &l.domains) {
        for v in &d.vnics {
            if let Some(ifname) = v.host_ifname.as_deref() {
                vnic_of.entry(ifname).or_insert((d, v));
            }
        }
    }
    let mut learned_on: FxHashMap<u32, &FdbEntry> = FxHashMap::default();
    for e in s.fdb.iter().flatten() {
        if e.state != "permanent" && !e.is_self {
            learned_on.entry(e.ifindex).or_insert(e);
        }
    }
    for br in s.bridges.iter().flatten() {
        let Some(brl) = s.link(&br.name) else {
            continue;
        };
        let Some(mac) = frames::parse_mac(&brl.mac) else {
            continue;
        };
        let ups = uplink::uplinks(s, br, &cfg.uplinks);
        let mut guests = Vec::new();
        let mut vids = BTreeSet::new();
        for p in &br.ports {
            let Some(link) = s.link(&p.name) else {
                continue;
            };
            if ups.iter().any(|u| u.ifindex == p.ifindex) || !uplink::is_guest_port(s, link) {
                continue;
            }
            vids.extend(p.vlans.iter().map(|v| v.vid));
            let found = vnic_of.get(p.name.as_str());
            let dom = found.map(|(d, _)| *d);
            let vnic_mac: Option<Mac> = found.and_then(|(_, v)| frames::parse_mac(&v.mac));
            // Without libvirt: the MAC learned on the guest's port.
            let fdb_mac = || {
                learned_on
                    .get(&p.ifindex)
                    .and_then(|e| frames::parse_mac(&e.mac))
            };
            let ip = dom
                .filter(|d| d.vnics.len() == 1)
                .and_then(|d| d.nova.as_ref()?.ips.iter().find_map(|i| i.parse().ok()));
            guests.push(GuestTopo {
                iface: p.name.clone(),
                ifindex: p.ifindex,
                mac: vnic_mac.or_else(fdb_mac),
                // Only guests libvirt says are running are ever probed.
                running: dom.is_some_and(|d| d.state == "running"),
                ip,
                generation: crate::detect::guests::generation_of((
                    dom.and_then(|d| d.id),
                    dom.map(|d| d.state.as_str()).unwrap_or(""),
                    p.ifindex,
                    link.operstate.as_str(),
                )),
                bridge_mac: mac,
                bridge_addrs: Vec::new(),
            });
        }
        // With VLAN filtering, one target per VLAN the guests use, tagged as
        // the uplink carries it; without, one untagged target.
        let mut vlans: Vec<Option<u16>> = Vec::new();
        if br.vlan_filtering == Some(true) && !vids.is_empty() {
            let up_port = ups
                .first()
                .and_then(|u| br.ports.iter().find(|p| p.ifindex == u.ifindex));
            for vid in vids {
                let untagged = up_port
                    .and_then(|p| p.vlans.iter().find(|v| v.vid == vid))
                    .is_some_and(|v| v.untagged);
                vlans.push(if untagged { None } else { Some(vid) });
            }
            vlans.dedup();
        } else {
            vlans.push(None);
        }
        out.bridges.push(BridgeTopo {
            name: br.name.clone(),
            ifindex: br.ifindex,
            mac,
            mtu: brl.mtu.max(68),
            uplinks: ups
                .iter()
                .map(|u| {
                    let fwd = br
                        .ports
                        .iter()
                        .find(|p| p.ifindex == u.ifindex)
                        .is_some_and(|p| p.state == 3);
                    let carrier = s.link(&u.port).is_some_and(|l| l.carrier != Some(false));
                    (u.port.clone(), u.ifindex, fwd && carrier)
                })
                .collect(),
            vlans,
            guests,
            config_gateways: cfg.gateways_for(&br.name),
        });
    }
    out
}

impl Collector for ProbesCollector {
    fn name(&self) -> &'static str {
        "probes"
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let handle = self
            .handle
            .get_or_insert_with(|| ProbeHandle::start(self.cfg.prober()));
        handle.set_topology(topology(sample, &self.cfg));
        let mut p = self.spare.take().unwrap_or_default();
        handle.snapshot_into(sample.mono_ns, &mut p);
        sample.probes = Some(p);
        Ok(())
    }

    fn recycle(&mut self, old: &mut Sample) {
        if let Some(p) = old.probes.take() {
            self.spare = Some(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::bridge::PortVlan;
    use crate::sample::{Bridge, BridgePort, Domain, Libvirt, Link, Vnic};

    #[test]
    fn vlans_of_the_guests_become_targets_tagged_as_the_uplink_carries_them() {
        let link = |i: u32, name: &str, mac: &str| Link {
            ifindex: i,
            name: name.into(),
            mac: mac.into(),
            mtu: 9000,
            operstate: "up".into(),
            carrier: Some(true),
            ..Default::default()
        };
        let vl = |vid: u16, untagged: bool| PortVlan {
            vid,
            pvid: untagged,
            untagged,
        };
        let port = |i: u32, name: &str, vlans: Vec<PortVlan>| BridgePort {
            ifindex: i,
            name: name.into(),
            state: 3,
            vlans,
            ..Default::default()
        };
        let s = Sample {
            links: Some(vec![
                link(1, "br0", "02:00:00:00:00:01"),
                link(2, "bond0", "02:00:00:00:00:02"),
                link(3, "vnet0", "fe:54:00:00:00:01"),
                Link {
                    kind: "tun".into(),
                    ..link(4, "vnet1", "fe:54:00:00:00:02")
                },
            ]),
            bridges: Some(vec![Bridge {
                ifindex: 1,
                name: "br0".into(),
                vlan_filtering: Some(true),
                ports: vec![
                    port(2, "bond0", vec![vl(100, true), vl(200, false)]),
                    port(3, "vnet0", vec![vl(100, true)]),
                    port(4, "vnet1", vec![vl(200, true)]),
                ],
                ..Default::default()
            }]),
            libvirt: Some(Libvirt {
                uri: "x".into(),
                domains: vec![Domain {
                    name: "a".into(),
                    state: "running".into(),
                    vnics: vec![Vnic {
                        mac: "52:54:00:00:00:01".into(),
                        host_ifname: Some("vnet0".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                xml_fetches: 0,
                age_ms: 0,
            }),
            ..Default::default()
        };
        let t = topology(&s, &DetectConfig::default());
        let b = &t.bridges[0];
        assert_eq!(b.vlans, vec![None, Some(200)]);
        assert_eq!(b.mtu, 9000);
        assert_eq!(b.uplinks, vec![("bond0".to_string(), 2, true)]);
        // vnet1 is a tap libvirt does not know: a guest, never probed.
        assert_eq!(b.guests.len(), 2, "{:?}", b.guests);
        assert_eq!(b.guests[0].mac, frames::parse_mac("52:54:00:00:00:01"));
        assert!(b.guests[0].running);
        assert!(!b.guests[1].running);
    }
}
