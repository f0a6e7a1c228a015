//! Blast radius: which domains the collapse cut off (with nova project and
//! instance names where the metadata has them), and which configured
//! critical groups have several members on this host.
//!
//! Who is cut off follows the top finding: a per-guest cause (a stuck tap,
//! an OOM-killed qemu, a migration, the newest MACs refused) names its
//! vNICs; a host-wide cause (uplink, bridge, filter, tables, host) cuts off
//! every running domain on the bridges it names, or on every bridge when it
//! names none. Guests the detector reported cut off are added.

use std::collections::BTreeSet;

use serde::Serialize;

use super::view::View;
use super::{AnalyzeConfig, Finding};
use crate::sample::EventKind;

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct CutOff {
    pub domain: String,
    pub uuid: String,
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nova_instance: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nova_project: String,
    pub vnics: Vec<String>,
    pub bridges: Vec<String>,
    /// Why this domain is counted.
    pub why: String,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct CriticalGroup {
    /// The group's name and pattern (blast_radius.critical_groups).
    pub name: String,
    pub pattern: String,
    /// Domains on this host matching it (domain name or nova instance name).
    pub members: Vec<String>,
    /// How many of them were cut off.
    pub cut_off: usize,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct BlastRadius {
    /// "host" (every guest on the affected bridges), "guests" (the ones
    /// named), or "none" (no finding).
    pub scope: String,
    pub running_domains: usize,
    pub domains: Vec<CutOff>,
    /// Groups with at least `analyze.critical_min_members` members here.
    pub critical_groups: Vec<CriticalGroup>,
}

const PER_GUEST: &[&str] = &["F14", "F22", "F26", "F10"];

pub fn build(view: &View, findings: &[Finding], cfg: &AnalyzeConfig) -> BlastRadius {
    let mut br = BlastRadius::default();
    let Some(s) = view.sample_at(0.0) else {
        return br;
    };
    let domains: Vec<&crate::sample::Domain> = s
        .libvirt
        .iter()
        .flat_map(|l| &l.domains)
        .filter(|d| d.state == "running" || d.state == "paused" || d.state == "crashed")
        .collect();
    br.running_domains = domains.iter().filter(|d| d.state == "running").count();
    let vnic_bridge = |ifn: &str| -> String {
        let Some(l) = s.link(ifn) else {
            return String::new();
        };
        s.bridges
            .iter()
            .flatten()
            .find(|b| Some(b.ifindex) == l.master)
            .map(|b| b.name.clone())
            .unwrap_or_default()
    };
    let top = findings.first();
    let mut named: BTreeSet<String> = BTreeSet::new();
    let mut why = String::new();
    match top {
        None => br.scope = "none".into(),
        Some(f) if PER_GUEST.contains(&f.id.as_str()) => {
            br.scope = "guests".into();
            named.extend(f.interfaces.iter().cloned());
            why = format!("{}: {}", f.id, f.cause);
        }
        Some(f) => {
            br.scope = "host".into();
            // Bridges the finding names (directly, or through its uplinks).
            let mut bridges: BTreeSet<String> = BTreeSet::new();
            for i in &f.interfaces {
                if view.bridges.contains(i) {
                    bridges.insert(i.clone());
                }
                for b in s.bridges.iter().flatten() {
                    if b.ports.iter().any(|p| &p.name == i) {
                        bridges.insert(b.name.clone());
                    }
                }
            }
            if bridges.is_empty() {
                bridges = view.bridges.clone();
            }
            for b in s
                .bridges
                .iter()
                .flatten()
                .filter(|b| bridges.contains(&b.name))
            {
                named.extend(
                    b.ports
                        .iter()
                        .filter(|p| view.is_vnic(&p.name))
                        .map(|p| p.name.clone()),
                );
            }
            why = format!(
                "on {} ({}: {})",
                bridges.iter().cloned().collect::<Vec<_>>().join(", "),
                f.id,
                f.cause
            );
        }
    }
    let mut detector_named = BTreeSet::new();
    for x in &view.events {
        if let EventKind::GuestCutOff { iface, .. } = &x.kind {
            if view.rel(x.ts_unix_ns) >= -60.0 {
                detector_named.insert(iface.clone());
            }
        }
    }
    for d in &domains {
        let vnics: Vec<String> = d
            .vnics
            .iter()
            .filter_map(|v| v.host_ifname.clone())
            .collect();
        let hit = vnics.iter().any(|v| named.contains(v));
        let det = vnics.iter().any(|v| detector_named.contains(v));
        if !(hit || det) {
            continue;
        }
        let nova = d.nova.clone().unwrap_or_default();
        let mut bridges: Vec<String> = vnics
            .iter()
            .map(|v| vnic_bridge(v))
            .filter(|b| !b.is_empty())
            .collect();
        bridges.sort();
        bridges.dedup();
        br.domains.push(CutOff {
            domain: d.name.clone(),
            uuid: d.uuid.clone(),
            state: d.state.clone(),
            nova_instance: nova.instance_name,
            nova_project: if nova.project_name.is_empty() {
                nova.project_id
            } else {
                nova.project_name
            },
            vnics,
            bridges,
            why: if hit {
                why.clone()
            } else {
                "the detector reported this guest cut off".into()
            },
        });
    }
    for g in &cfg.critical_groups {
        let Ok(re) = regex::Regex::new(&g.pattern) else {
            continue;
        };
        let members: Vec<String> = domains
            .iter()
            .filter(|d| {
                re.is_match(&d.name)
                    || d.nova.as_ref().is_some_and(|n| {
                        !n.instance_name.is_empty() && re.is_match(&n.instance_name)
                    })
            })
            .map(
                |d| match d.nova.as_ref().map(|n| n.instance_name.as_str()) {
                    Some(n) if !n.is_empty() && n != d.name => format!("{n} ({})", d.name),
                    _ => d.name.clone(),
                },
            )
            .collect();
        if members.len() as u64 >= cfg.critical_min_members {
            let cut_off = domains
                .iter()
                .filter(|d| br.domains.iter().any(|c| c.uuid == d.uuid))
                .filter(|d| {
                    re.is_match(&d.name)
                        || d.nova.as_ref().is_some_and(|n| {
                            !n.instance_name.is_empty() && re.is_match(&n.instance_name)
                        })
                })
                .count();
            br.critical_groups.push(CriticalGroup {
                name: g.name.clone(),
                pattern: g.pattern.clone(),
                members,
                cut_off,
            });
        }
    }
    br
}
