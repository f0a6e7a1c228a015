//! Which ports of a bridge are its uplinks, and which physical NICs carry
//! them: the bridge's non-vNIC ports (or the ones `detect.uplinks` names),
//! each resolved down through bonds, VLANs and VXLANs to the NICs below.
//! Pure: reads one sample.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::sample::{Bridge, Link, Sample};

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The bridge port (what probes are sent through).
    pub port: String,
    pub ifindex: u32,
    /// Physical NICs under it (the port itself when it is one). Empty when
    /// the chain cannot be followed (a VXLAN without a bound device routes
    /// its underlay: any NIC may carry it).
    pub nics: Vec<String>,
}

/// A port that belongs to a guest: libvirt maps a vNIC to it (or, without
/// libvirt, it has libvirt's fe: host MAC), or it is a tap — physical
/// uplinks are never taps — or a veth/macvtap with libvirt's fe: prefix
/// that libvirt does not (or no longer) know. NICs, bonds and VLANs never
/// carry fe: (the locally administered bit is not in vendor MACs).
pub fn is_guest_port(s: &Sample, link: &Link) -> bool {
    link.kind == "tun"
        || crate::agent::print::is_vnic(s, &link.name, &link.mac)
        || (link.mac.starts_with("fe:") && matches!(link.kind.as_str(), "veth" | "macvtap"))
}

/// The uplinks of `br`: the ports `overrides[br]` names when set, else every
/// port that is not a guest's.
pub fn uplinks(s: &Sample, br: &Bridge, overrides: &BTreeMap<String, Vec<String>>) -> Vec<Uplink> {
    let forced = overrides.get(&br.name);
    br.ports
        .iter()
        .filter_map(|p| {
            let link = s.link(&p.name)?;
            let wanted = match forced {
                Some(names) => names.iter().any(|n| n == &p.name),
                None => !is_guest_port(s, link),
            };
            wanted.then(|| Uplink {
                port: p.name.clone(),
                ifindex: p.ifindex,
                nics: nics_below(s, link),
            })
        })
        .collect()
}

/// Physical NICs below `link`: bond/team slaves, a VLAN's or macvlan's lower
/// device, a VXLAN's bound device (IFLA_LINK), recursively.
pub fn nics_below(s: &Sample, link: &Link) -> Vec<String> {
    let links = s.links.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    let mut stack = vec![(link, 0u32)];
    while let Some((l, depth)) = stack.pop() {
        if depth > 8 {
            continue; // a loop in the data; never follow forever
        }
        match l.kind.as_str() {
            "bond" | "team" => {
                let slaves: Vec<&Link> = links
                    .iter()
                    .filter(|x| x.master == Some(l.ifindex))
                    .collect();
                stack.extend(slaves.into_iter().map(|x| (x, depth + 1)));
            }
            "vlan" | "macvlan" | "vxlan" | "ipvlan" => {
                if let Some(lower) = l.link.and_then(|i| links.iter().find(|x| x.ifindex == i)) {
                    if lower.ifindex != l.ifindex {
                        stack.push((lower, depth + 1));
                    }
                }
            }
            _ => {
                if !out.contains(&l.name) {
                    out.push(l.name.clone());
                }
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::BridgePort;

    fn link(i: u32, name: &str, kind: &str, master: Option<u32>, lower: Option<u32>) -> Link {
        Link {
            ifindex: i,
            name: name.into(),
            kind: kind.into(),
            master,
            link: lower,
            mac: format!("02:00:00:00:00:{i:02x}"),
            ..Default::default()
        }
    }

    fn host() -> Sample {
        Sample {
            links: Some(vec![
                link(2, "eno1", "", Some(5), None),
                link(3, "eno2", "", Some(5), None),
                link(5, "bond0", "bond", None, None),
                link(6, "bond0.100", "vlan", Some(10), Some(5)),
                link(7, "ens3", "", None, None),
                link(8, "vxlan42", "vxlan", Some(11), Some(7)),
                link(9, "vxlan43", "vxlan", Some(11), None),
                link(10, "br100", "bridge", None, None),
                link(11, "brx", "bridge", None, None),
                Link {
                    mac: "fe:54:00:00:00:01".into(),
                    ..link(20, "vnet0", "tun", Some(10), None)
                },
                Link {
                    mac: "fe:54:00:00:00:02".into(),
                    ..link(21, "vnet1", "tun", Some(11), None)
                },
            ]),
            ..Default::default()
        }
    }

    fn bridge(name: &str, ports: &[(u32, &str)]) -> Bridge {
        Bridge {
            name: name.into(),
            ports: ports
                .iter()
                .map(|(i, n)| BridgePort {
                    ifindex: *i,
                    name: n.to_string(),
                    state: 3,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn vlan_on_a_bond_resolves_to_both_slaves_and_vnics_are_not_uplinks() {
        let s = host();
        let br = bridge("br100", &[(6, "bond0.100"), (20, "vnet0")]);
        let u = uplinks(&s, &br, &BTreeMap::new());
        assert_eq!(
            u,
            vec![Uplink {
                port: "bond0.100".into(),
                ifindex: 6,
                nics: vec!["eno1".into(), "eno2".into()]
            }]
        );
    }

    #[test]
    fn vxlan_follows_its_bound_device_or_says_it_cannot() {
        let s = host();
        let br = bridge("brx", &[(8, "vxlan42"), (9, "vxlan43"), (21, "vnet1")]);
        let u = uplinks(&s, &br, &BTreeMap::new());
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].nics, vec!["ens3".to_string()]);
        assert!(u[1].nics.is_empty());
    }

    #[test]
    fn config_override_names_the_uplinks() {
        let s = host();
        let br = bridge("brx", &[(8, "vxlan42"), (9, "vxlan43"), (21, "vnet1")]);
        let mut o = BTreeMap::new();
        o.insert("brx".to_string(), vec!["vxlan43".to_string()]);
        let u = uplinks(&s, &br, &o);
        assert_eq!(
            u.iter().map(|x| x.port.as_str()).collect::<Vec<_>>(),
            ["vxlan43"]
        );
        // Another bridge is not affected by brx's override.
        let br = bridge("br100", &[(6, "bond0.100"), (20, "vnet0")]);
        assert_eq!(uplinks(&s, &br, &o).len(), 1);
    }

    #[test]
    fn a_bond_loop_in_the_data_terminates() {
        let mut s = host();
        for l in s.links.as_mut().unwrap() {
            if l.name == "bond0" {
                l.master = Some(5);
            }
        }
        let l = s.link("bond0").unwrap().clone();
        let _ = nics_below(&s, &l);
    }
}
