//! Which interfaces to capture on, from a sample: the uplink ports of every
//! watched bridge (its ports that are not vNICs, as `is_vnic` decides for
//! the detector and the printer), vNIC ports when configured (capped), and
//! interfaces named in the config. Never the bridge device itself: seeing
//! forwarded frames there needs promiscuous mode, which sends every frame
//! up the host stack.

use serde::{Deserialize, Serialize};

use super::CaptureConfig;
use crate::agent::print::is_vnic;
use crate::sample::Sample;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Uplink,
    Vnic,
    Configured,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Uplink => "uplink",
            Role::Vnic => "vnic",
            Role::Configured => "configured",
        }
    }
}

/// One interface to capture on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Want {
    pub name: String,
    /// A changed ifindex means the interface was re-created: reopen it.
    pub ifindex: u32,
    pub role: Role,
    #[serde(default)]
    pub bridge: String,
    /// The libvirt domain of a vNIC, when known.
    #[serde(default)]
    pub domain: String,
}

impl Want {
    /// What the pcapng interface description says.
    pub fn description(&self) -> String {
        match (self.role, self.domain.is_empty()) {
            (Role::Vnic, false) => format!("vnic of {} on {}", self.domain, self.bridge),
            (Role::Configured, _) => "configured".into(),
            (r, _) => format!("{} of {}", r.name(), self.bridge),
        }
    }
}

/// The interfaces to capture on, sorted by name. Bridges: the configured
/// ones (the sample's bridges section is already limited to them), else
/// those libvirt's domains use, else all.
pub fn wanted(s: &Sample, cfg: &CaptureConfig) -> Vec<Want> {
    let scope = crate::collect::libvirt_bridges(s);
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
    let mut out: Vec<Want> = Vec::new();
    let mut vnics: Vec<Want> = Vec::new();
    for br in s.bridges.iter().flatten() {
        if scope.as_ref().is_some_and(|sc| !sc.contains(&br.name)) {
            continue;
        }
        for p in &br.ports {
            let Some(link) = s.link(&p.name) else {
                continue;
            };
            let w = Want {
                name: p.name.clone(),
                ifindex: p.ifindex,
                role: Role::Uplink,
                bridge: br.name.clone(),
                domain: String::new(),
            };
            if is_vnic(s, &p.name, &link.mac) {
                if cfg.vnics {
                    vnics.push(Want {
                        role: Role::Vnic,
                        domain: domain_of(&p.name),
                        ..w
                    });
                }
            } else {
                out.push(w);
            }
        }
    }
    vnics.sort();
    vnics.truncate(cfg.max_vnics as usize);
    out.extend(vnics);
    for name in &cfg.interfaces {
        if out.iter().any(|w| &w.name == name) {
            continue;
        }
        let ifindex = s.link(name).map(|l| l.ifindex).unwrap_or(0);
        out.push(Want {
            name: name.clone(),
            ifindex,
            role: Role::Configured,
            bridge: String::new(),
            domain: String::new(),
        });
    }
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Bridge, BridgePort, Domain, Libvirt, Link, Vnic};

    fn link(name: &str, ifindex: u32, mac: &str) -> Link {
        Link {
            name: name.into(),
            ifindex,
            mac: mac.into(),
            ..Default::default()
        }
    }

    fn port(name: &str, ifindex: u32) -> BridgePort {
        BridgePort {
            name: name.into(),
            ifindex,
            state: 3,
            ..Default::default()
        }
    }

    fn sample() -> Sample {
        Sample {
            links: Some(vec![
                link("br0", 1, "02:00:00:00:00:01"),
                link("bond0", 2, "fe:00:00:00:00:99"),
                link("vnet0", 3, "fe:54:00:00:00:01"),
                link("vnet1", 4, "fe:54:00:00:00:02"),
                link("br1", 5, "02:00:00:00:00:05"),
                link("eth9", 6, "02:00:00:00:00:06"),
            ]),
            bridges: Some(vec![
                Bridge {
                    name: "br0".into(),
                    ifindex: 1,
                    ports: vec![port("bond0", 2), port("vnet0", 3), port("vnet1", 4)],
                    ..Default::default()
                },
                Bridge {
                    name: "br1".into(),
                    ifindex: 5,
                    ports: vec![port("eth9", 6)],
                    ..Default::default()
                },
            ]),
            libvirt: Some(Libvirt {
                domains: vec![Domain {
                    name: "web1".into(),
                    vnics: vec![
                        Vnic {
                            host_ifname: Some("vnet0".into()),
                            bridge: "br0".into(),
                            ..Default::default()
                        },
                        Vnic {
                            host_ifname: Some("vnet1".into()),
                            bridge: "br0".into(),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn uplinks_of_libvirts_bridges_by_default() {
        let w = wanted(&sample(), &CaptureConfig::default());
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        // bond0 has an fe: MAC but libvirt does not map it: an uplink.
        // br1 is used by no domain: not watched.
        assert_eq!(names, vec!["bond0"]);
        assert_eq!(w[0].role, Role::Uplink);
        assert_eq!(w[0].description(), "uplink of br0");
    }

    #[test]
    fn vnics_capped_and_configured_extras() {
        let cfg = CaptureConfig {
            vnics: true,
            max_vnics: 1,
            interfaces: vec!["eth9".into(), "bond0".into()],
            ..Default::default()
        };
        let w = wanted(&sample(), &cfg);
        let got: Vec<(&str, Role)> = w.iter().map(|w| (w.name.as_str(), w.role)).collect();
        assert_eq!(
            got,
            vec![
                ("bond0", Role::Uplink),
                ("eth9", Role::Configured),
                ("vnet0", Role::Vnic)
            ]
        );
        assert_eq!(w[2].description(), "vnic of web1 on br0");
    }
}
