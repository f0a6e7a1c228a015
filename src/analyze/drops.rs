//! Kernel drop reasons (the samples' `drops` section) as evidence for the
//! catalogue rules: which interface dropped how much, for which reason, from
//! when. `drop_evidence` is the helper a rule calls; `cite` applies the
//! table of catalogue rows whose reasons name them directly (F8, F11, F1,
//! F14, F15, F4, F17, F21), adding evidence to the rule's finding or, for
//! reasons specific enough, making the finding.
//!
//! Measured on 6.18 (tests/drops.rs): a port in state 0 drops incoming
//! frames as BRIDGE_INGRESS_STP_STATE (and the frames forwarded toward it as
//! NOT_SPECIFIED on the sending ports); an nft bridge forward drop is
//! NETFILTER_DROP on the egress port; an htb class at 8 bit/s on the uplink
//! is QDISC_DROP there; a bridged MTU mismatch is NOT_SPECIFIED on the port
//! whose MTU is too small (PKT_TOO_BIG only on routed paths). A reason alone
//! is not a cause (the catalogue warns of port state 4 showing only
//! NOT_SPECIFIED), so NOT_SPECIFIED only supports a finding another rule made.

use std::collections::BTreeMap;

use super::{Evidence, EvidenceKind, Finding, View};
use crate::agent::print::is_vnic;
use crate::sample::Sample;

/// Which interfaces a rule looks at, judged in each sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Bridge ports that are not vNICs.
    Uplinks,
    /// Bridge ports libvirt maps to a domain (or tap-MAC ports).
    Vnics,
    /// Watched bridges and all their ports.
    Bridged,
    /// Every interface, and drops with no device ("").
    Any,
}

impl Scope {
    fn contains(self, s: &Sample, iface: &str) -> bool {
        if self == Scope::Any {
            return true;
        }
        for b in s.bridges.iter().flatten() {
            if b.name == iface {
                return self == Scope::Bridged;
            }
            if b.ports.iter().any(|p| p.name == iface) {
                let mac = s.link(iface).map(|l| l.mac.as_str()).unwrap_or("");
                return match self {
                    Scope::Uplinks => !is_vnic(s, iface, mac),
                    Scope::Vnics => is_vnic(s, iface, mac),
                    _ => true,
                };
            }
        }
        false
    }
}

/// How much one interface dropped for one reason over the history.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    total: f64,
    first_ns: i64,
    peak_per_s: f64,
}

/// Evidence lines, one per (interface, reason) in `reasons` that dropped
/// within `scope`, from the samples' rates (model.rs): the total, when it
/// started relative to the incident, and the peak rate. Most drops first, at most 5.
pub fn drop_evidence(view: &View, scope: Scope, reasons: &[&str]) -> Vec<Evidence> {
    let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
    for w in view.samples.windows(2) {
        let (p, c) = (&w[0], &w[1]);
        let (Some(pd), Some(cd)) = (&p.drops, &c.drops) else {
            continue;
        };
        if c.mono_ns <= p.mono_ns {
            continue;
        }
        let dt = (c.mono_ns - p.mono_ns) as f64 / 1e9;
        let (rates, _) = crate::model::drop_rates(cd, pd, dt);
        for (iface, by_reason) in rates {
            if !scope.contains(c, &iface) {
                continue;
            }
            for (reason, r) in by_reason {
                if !reasons.contains(&reason.as_str()) {
                    continue;
                }
                let e = seen.entry((iface.clone(), reason)).or_insert(Seen {
                    first_ns: c.ts_unix_ns,
                    ..Default::default()
                });
                e.total += r * dt;
                e.peak_per_s = e.peak_per_s.max(r);
            }
        }
    }
    let mut v: Vec<((String, String), Seen)> = seen.into_iter().collect();
    v.sort_by(|a, b| b.1.total.total_cmp(&a.1.total));
    v.truncate(5);
    let t0 = view.incident_ns;
    let mut out: Vec<Evidence> = v
        .into_iter()
        .map(|((iface, reason), s)| Evidence {
            t_rel_s: (s.first_ns - t0) as f64 / 1e9,
            kind: EvidenceKind::Counter,
            what: format!(
                "{}: the kernel dropped {:.0} packets as {reason} (peak {:.0}/s)",
                if iface.is_empty() {
                    "(no device)"
                } else {
                    &iface
                },
                s.total,
                s.peak_per_s
            ),
            series: Some(format!(
                "{} drops {reason}",
                if iface.is_empty() {
                    "(no device)"
                } else {
                    &iface
                }
            )),
            after: Some(s.total),
            ..Default::default()
        })
        .collect();
    out.sort_by(|a, b| a.t_rel_s.total_cmp(&b.t_rel_s));
    out
}

/// A catalogue row and the drop reasons that speak for it.
struct Row {
    id: &'static str,
    scope: Scope,
    reasons: &'static [&'static str],
    /// The finding to make when the rule itself found nothing (None: the
    /// reasons only support a finding another rule made).
    creates: Option<(&'static str, f64)>,
}

const ROWS: &[Row] = &[
    Row {
        id: "F8",
        scope: Scope::Bridged,
        reasons: &["BRIDGE_INGRESS_STP_STATE"],
        creates: Some(("a bridge port is not forwarding: the kernel drops what arrives on it (STP state)", 0.8)),
    },
    Row {
        id: "F11",
        scope: Scope::Bridged,
        reasons: &["NETFILTER_DROP"],
        creates: Some(("a firewall rule drops bridged traffic (nft/iptables/ebtables, br_netfilter FORWARD)", 0.75)),
    },
    Row {
        id: "F1",
        scope: Scope::Uplinks,
        reasons: &["QDISC_DROP", "QDISC_OVERLIMIT", "QDISC_CONGESTED"],
        creates: Some(("the uplink does not transmit: its queue overflows (NIC TX hang, driver reset loop, a qdisc that stopped)", 0.65)),
    },
    Row {
        id: "F14",
        scope: Scope::Vnics,
        reasons: &["FULL_RING", "QDISC_DROP", "TAP_TXFILTER"],
        creates: None,
    },
    Row {
        id: "F15",
        scope: Scope::Any,
        reasons: &["CPU_BACKLOG"],
        creates: Some(("packets dropped in the softnet backlog (NET_RX starved)", 0.5)),
    },
    Row {
        id: "F4",
        scope: Scope::Any,
        reasons: &["NEIGH_FAILED", "NEIGH_QUEUEFULL", "NEIGH_CREATEFAIL", "NEIGH_DEAD"],
        creates: Some(("neighbour resolution fails: packets wait for ARP/ND and are dropped (table overflow?)", 0.5)),
    },
    Row {
        id: "F17",
        scope: Scope::Any,
        reasons: &["PKT_TOO_BIG"],
        creates: Some(("MTU mismatch: packets larger than a path's MTU are dropped", 0.55)),
    },
    Row {
        id: "F17",
        scope: Scope::Uplinks,
        reasons: &["NOT_SPECIFIED"],
        creates: None,
    },
    Row {
        id: "F21",
        scope: Scope::Any,
        reasons: &["NOMEM"],
        creates: Some(("skb allocation failures: the kernel drops packets for lack of memory", 0.5)),
    },
];

/// Adds drop-reason evidence to the findings of the rows above (and makes
/// the finding where the reason is specific enough on its own).
pub fn cite(view: &View, findings: &mut Vec<Finding>) {
    for row in ROWS {
        let ev = drop_evidence(view, row.scope, row.reasons);
        if ev.is_empty() {
            continue;
        }
        if let Some(f) = findings.iter_mut().find(|f| f.id == row.id) {
            f.evidence.extend(ev);
            f.evidence.sort_by(|a, b| a.t_rel_s.total_cmp(&b.t_rel_s));
            f.confidence = (f.confidence + 0.05).min(0.99);
        } else if let Some((cause, confidence)) = row.creates {
            findings.push(Finding {
                id: row.id.into(),
                cause: cause.into(),
                confidence,
                evidence: ev,
                next: vec![
                    "the kernel's drop reasons per interface: deep/drop_reasons.txt, `hvflight history --iface IF`".into(),
                ],
                group: super::rules::group_of(row.id).to_string(),
                interfaces: vec![],
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Manifest;
    use crate::sample::{Bridge, BridgePort, DropCount, Drops, Link};

    fn sample(t_s: i64, stp_drops: u64, nf_drops: u64) -> Sample {
        let entry = |iface: &str, ifindex, reason: &str, count| DropCount {
            ifindex,
            interface: iface.into(),
            reason: reason.into(),
            protocol: 0x800,
            count,
        };
        Sample {
            ts_unix_ns: t_s * 1_000_000_000,
            mono_ns: t_s as u64 * 1_000_000_000,
            links: Some(vec![
                Link {
                    name: "uplink0".into(),
                    ifindex: 2,
                    mac: "02:00:00:00:00:01".into(),
                    ..Default::default()
                },
                Link {
                    name: "vnet0".into(),
                    ifindex: 3,
                    mac: "fe:54:00:00:00:01".into(),
                    ..Default::default()
                },
            ]),
            bridges: Some(vec![Bridge {
                name: "br0".into(),
                ifindex: 1,
                ports: vec![
                    BridgePort {
                        name: "uplink0".into(),
                        ifindex: 2,
                        state: 3,
                        ..Default::default()
                    },
                    BridgePort {
                        name: "vnet0".into(),
                        ifindex: 3,
                        state: 3,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }]),
            drops: Some(Drops {
                netns_inode: 1,
                loaded_mono_ns: 1,
                entries: vec![
                    entry("uplink0", 2, "BRIDGE_INGRESS_STP_STATE", stp_drops),
                    entry("vnet0", 3, "NETFILTER_DROP", nf_drops),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn input(samples: Vec<Sample>) -> View {
        let mut manifest = Manifest::default();
        manifest.incident.ts_unix_ns = 110 * 1_000_000_000;
        View::new(
            manifest,
            "test".into(),
            samples,
            vec![],
            Default::default(),
            None,
            vec![],
        )
    }

    #[test]
    fn evidence_names_interface_reason_onset_and_scope() {
        let i = input(vec![
            sample(100, 0, 0),
            sample(101, 0, 0),
            sample(102, 40, 0),
            sample(103, 100, 5),
        ]);
        let e = drop_evidence(&i, Scope::Uplinks, &["BRIDGE_INGRESS_STP_STATE"]);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].t_rel_s, -8.0, "from the first sample that dropped");
        assert_eq!(
            e[0].what,
            "uplink0: the kernel dropped 100 packets as BRIDGE_INGRESS_STP_STATE (peak 60/s)"
        );
        // vnet0's NETFILTER_DROP is not an uplink's.
        assert!(drop_evidence(&i, Scope::Uplinks, &["NETFILTER_DROP"]).is_empty());
        assert_eq!(
            drop_evidence(&i, Scope::Vnics, &["NETFILTER_DROP"]).len(),
            1
        );
    }

    #[test]
    fn cite_adds_to_a_finding_or_makes_one() {
        let i = input(vec![sample(100, 0, 0), sample(101, 10, 3)]);
        let mut f = vec![Finding {
            id: "F11".into(),
            cause: "ruleset change".into(),
            confidence: 0.8,
            evidence: vec![],
            next: vec![],
            group: "filter".into(),
            interfaces: vec![],
        }];
        cite(&i, &mut f);
        let f11 = f.iter().find(|x| x.id == "F11").unwrap();
        assert!(f11.evidence[0].what.contains("NETFILTER_DROP"));
        assert!(f11.confidence > 0.8);
        let f8 = f
            .iter()
            .find(|x| x.id == "F8")
            .expect("made from the reason");
        assert!(f8.evidence[0].what.contains("uplink0"));
        // Nothing dropped: nothing cited, nothing made.
        let mut g = vec![];
        cite(&input(vec![sample(100, 5, 5), sample(101, 5, 5)]), &mut g);
        assert!(g.is_empty());
    }
}
