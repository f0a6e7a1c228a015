//! One rule per catalogue row the bundle's history can show (first set:
//! the rows the lab reproduces, and kernel-log signatures for the rest).
//! Each rule returns a finding only when it has evidence.

use std::collections::{BTreeMap, BTreeSet};

use super::{Evidence, Finding, Input};
use crate::agent::print::is_vnic;
use crate::sample::{EventKind, Sample};

fn rel(input: &Input, ts_unix_ns: i64) -> f64 {
    (ts_unix_ns - input.manifest.incident.ts_unix_ns) as f64 / 1e9
}

fn ev(input: &Input, ts: i64, what: String) -> Evidence {
    Evidence {
        t_rel_s: rel(input, ts),
        what,
    }
}

/// (bridge, uplink port names) as the samples show them.
fn uplinks(s: &Sample) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for b in s.bridges.iter().flatten() {
        for p in &b.ports {
            let mac = s.link(&p.name).map(|l| l.mac.as_str()).unwrap_or("");
            if !is_vnic(s, &p.name, mac) {
                v.push((b.name.clone(), p.name.clone()));
            }
        }
    }
    v
}

fn finding(
    id: &str,
    cause: &str,
    confidence: f64,
    evidence: Vec<Evidence>,
    next: &[&str],
) -> Option<Finding> {
    if evidence.is_empty() {
        return None;
    }
    Some(Finding {
        id: id.into(),
        cause: cause.into(),
        confidence,
        evidence,
        next: next.iter().map(|s| s.to_string()).collect(),
    })
}

pub fn all(input: &Input) -> Vec<Finding> {
    let mut out: Vec<Finding> = [
        uplink_carrier(input),
        port_state(input),
        ruleset(input),
        fdb_wrong_port(input),
        learning(input),
        tap_drops(input),
        mtu(input),
        conntrack(input),
        neighbours(input),
        softnet(input),
    ]
    .into_iter()
    .flatten()
    .collect();
    kernel_log(input, &mut out);
    super::drops::cite(input, &mut out);
    out
}

/// F2: the uplink lost carrier.
fn uplink_carrier(input: &Input) -> Option<Finding> {
    let names: BTreeSet<String> = input
        .samples
        .iter()
        .flat_map(|s| uplinks(s).into_iter().map(|x| x.1))
        .collect();
    let mut e = Vec::new();
    for x in &input.events {
        if let EventKind::Link {
            name,
            carrier: Some(false),
            operstate,
            ..
        } = &x.kind
        {
            if names.contains(name) {
                e.push(ev(
                    input,
                    x.ts_unix_ns,
                    format!("{name}: carrier lost (operstate {operstate})"),
                ));
            }
        }
    }
    if e.is_empty() {
        if let Some(s) = input.samples.iter().find(|s| {
            uplinks(s)
                .iter()
                .any(|(_, u)| s.link(u).and_then(|l| l.carrier) == Some(false))
        }) {
            e.push(ev(
                input,
                s.ts_unix_ns,
                "an uplink has no carrier in the samples".into(),
            ));
        }
    }
    e.truncate(5);
    finding(
        "F2",
        "uplink carrier loss: the NIC or the switch port went down",
        0.9,
        e,
        &[
            "the switch port's state and logs (err-disabled? BPDU guard, F9?)",
            "ethtool -S of the uplink NIC in the bundle (deep/ethtool-S-*.txt)",
        ],
    )
}

/// F8: an uplink port left the forwarding state (not because it lost carrier).
fn port_state(input: &Input) -> Option<Finding> {
    let mut e = Vec::new();
    let mut follows_carrier = false;
    for s in &input.samples {
        for b in s.bridges.iter().flatten() {
            for p in &b.ports {
                let Some(l) = s.link(&p.name) else { continue };
                if p.state != 3 && !is_vnic(s, &p.name, &l.mac) {
                    if l.carrier == Some(false) {
                        follows_carrier = true;
                    } else if e.is_empty() {
                        e.push(ev(
                            input,
                            s.ts_unix_ns,
                            format!(
                                "{}: port {} in STP state {} (3 = forwarding) with carrier up",
                                b.name, p.name, p.state
                            ),
                        ));
                    }
                }
            }
        }
    }
    if e.is_empty() {
        return None;
    }
    let conf = if follows_carrier { 0.5 } else { 0.88 };
    finding(
        "F8",
        "an uplink bridge port is not forwarding (STP state or set by hand)",
        conf,
        e,
        &[
            "bridge -d link show (deep/bridge-link.txt); stp_state and forward_delay of the bridge",
            "who changed it: kmsg 'entered … state' lines, config management runs",
        ],
    )
}

/// F11/F12: the netfilter ruleset changed shortly before the incident.
fn ruleset(input: &Input) -> Option<Finding> {
    let mut e = Vec::new();
    let mut prev: Option<(u32, i64)> = None;
    for s in &input.samples {
        let Some(g) = s.netfilter.as_ref().and_then(|n| n.nft_genid) else {
            continue;
        };
        if let Some((p, _)) = prev {
            if p != g {
                let t = rel(input, s.ts_unix_ns);
                if (-600.0..=10.0).contains(&t) {
                    e.push(ev(
                        input,
                        s.ts_unix_ns,
                        format!("nf_tables ruleset generation {p} → {g}"),
                    ));
                }
            }
        }
        prev = Some((g, s.ts_unix_ns));
    }
    let brnf = input
        .samples
        .last()
        .and_then(|s| s.netfilter.as_ref())
        .and_then(|n| n.bridge_nf_call_iptables)
        == Some(true);
    if brnf && !e.is_empty() {
        e.push(Evidence {
            t_rel_s: 0.0,
            what: "net.bridge.bridge-nf-call-iptables = 1: bridged traffic passes iptables".into(),
        });
    }
    finding("F11", "a firewall ruleset change (nft/iptables/ebtables, bridge family or br_netfilter FORWARD)", 0.8, e, &[
        "diff the ruleset: deep/nft-ruleset.txt, iptables-save, ebtables in the bundle",
        "what reloaded it at that time (libvirt nwfilter, a firewall service, config management)",
    ])
}

/// Guest MACs libvirt knows, with their domain.
fn guest_macs(input: &Input) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for s in &input.samples {
        for d in s.libvirt.iter().flat_map(|l| &l.domains) {
            for v in &d.vnics {
                m.insert(v.mac.clone(), d.name.clone());
            }
        }
    }
    m
}

/// F6: a guest's MAC learned (or pinned) on an uplink port.
fn fdb_wrong_port(input: &Input) -> Option<Finding> {
    let macs = guest_macs(input);
    let mut e = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &input.samples {
        let ups: BTreeSet<String> = uplinks(s).into_iter().map(|x| x.1).collect();
        for f in s.fdb.iter().flatten() {
            if let Some(dom) = macs.get(&f.mac) {
                if ups.contains(&f.port) && seen.insert(f.mac.clone()) {
                    e.push(ev(
                        input,
                        s.ts_unix_ns,
                        format!(
                            "guest {dom}'s MAC {} is in the FDB on uplink {} ({})",
                            f.mac, f.port, f.state
                        ),
                    ));
                }
            }
        }
    }
    finding(
        "F6",
        "the bridge forwards a guest's MAC to the uplink (loop, reflection, duplicate MAC)",
        0.85,
        e,
        &[
            "bridge fdb in the bundle: which port the MAC is on and whether it is static",
            "kmsg 'received packet on … with own address'; a loop or a mirror on the switch side",
        ],
    )
}

/// F7: learning or unicast flooding off on guest ports.
fn learning(input: &Input) -> Option<Finding> {
    let mut e = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &input.samples {
        for b in s.bridges.iter().flatten() {
            for p in &b.ports {
                if (p.learning == Some(false) || p.unicast_flood == Some(false))
                    && seen.insert(p.name.clone())
                {
                    e.push(ev(
                        input,
                        s.ts_unix_ns,
                        format!(
                            "{}: port {} learning {:?} unicast flood {:?}",
                            b.name, p.name, p.learning, p.unicast_flood
                        ),
                    ));
                }
            }
        }
    }
    finding(
        "F7",
        "MAC learning or unicast flooding is off on a port",
        0.8,
        e,
        &["bridge -d link show: learning/flood flags; who set them"],
    )
}

/// F14: a tap drops toward its guest while nothing is delivered.
fn tap_drops(input: &Input) -> Option<Finding> {
    let (first, last) = (input.samples.first()?, input.samples.last()?);
    let mut e = Vec::new();
    for l in last.links.iter().flatten() {
        let Some(f) = first.link(&l.name) else {
            continue;
        };
        if f.ifindex != l.ifindex || !is_vnic(last, &l.name, &l.mac) {
            continue;
        }
        let drops = l.stats.tx_dropped.saturating_sub(f.stats.tx_dropped);
        let sent = l.stats.tx_packets.saturating_sub(f.stats.tx_packets);
        if drops >= 10 && drops > sent {
            e.push(ev(
                input,
                last.ts_unix_ns,
                format!(
                    "{}: {drops} packets dropped toward the guest, {sent} delivered",
                    l.name
                ),
            ));
        }
    }
    finding(
        "F14",
        "a guest stopped draining its tap (qemu/vhost-net stuck), its queue overflows",
        0.75,
        e,
        &[
            "the qemu process of that domain; its vhost thread",
            "txqueuelen of the tap",
        ],
    )
}

/// F17: MTU differences on a bridge or MTU changes.
fn mtu(input: &Input) -> Option<Finding> {
    let mut e = Vec::new();
    for x in &input.events {
        if let EventKind::Link {
            name, mtu: Some(m), ..
        } = &x.kind
        {
            let before = input
                .samples
                .iter()
                .rfind(|s| s.ts_unix_ns < x.ts_unix_ns)
                .and_then(|s| s.link(name))
                .map(|l| l.mtu);
            if before.is_some_and(|b| b != *m) {
                e.push(ev(
                    input,
                    x.ts_unix_ns,
                    format!("{name}: MTU {} → {m}", before.unwrap_or(0)),
                ));
            }
        }
    }
    if let Some(s) = input.samples.last() {
        for b in s.bridges.iter().flatten() {
            let mtus: BTreeSet<u32> = b
                .ports
                .iter()
                .filter_map(|p| s.link(&p.name))
                .map(|l| l.mtu)
                .collect();
            if mtus.len() > 1 {
                e.push(ev(
                    input,
                    s.ts_unix_ns,
                    format!("{}: ports with different MTUs {mtus:?}", b.name),
                ));
            }
        }
    }
    finding(
        "F17",
        "MTU mismatch: small packets pass, large ones are dropped (degradation)",
        0.6,
        e,
        &[
            "ping -M do -s 1472 across the uplink",
            "ip -d link: mtu of every port and the bridge",
        ],
    )
}

fn counter_rise(input: &Input, get: impl Fn(&Sample) -> Option<u64>) -> Option<(u64, i64)> {
    let vals: Vec<(u64, i64)> = input
        .samples
        .iter()
        .filter_map(|s| get(s).map(|v| (v, s.ts_unix_ns)))
        .collect();
    let (a, b) = (vals.first()?, vals.last()?);
    (b.0 > a.0).then(|| (b.0 - a.0, b.1))
}

/// F3: conntrack full.
fn conntrack(input: &Input) -> Option<Finding> {
    let mut e = Vec::new();
    if let Some(s) = input.samples.iter().find(|s| {
        s.conntrack.as_ref().is_some_and(
            |c| matches!((c.count, c.max), (Some(n), Some(m)) if m > 0 && n * 100 >= m * 95),
        )
    }) {
        let c = s.conntrack.as_ref().expect("found");
        e.push(ev(
            input,
            s.ts_unix_ns,
            format!(
                "conntrack {} of {} entries",
                c.count.unwrap_or(0),
                c.max.unwrap_or(0)
            ),
        ));
    }
    if let Some((d, t)) = counter_rise(input, |s| {
        s.conntrack
            .as_ref()
            .and_then(|c| c.stats.get("drop").copied())
    }) {
        e.push(ev(
            input,
            t,
            format!("conntrack dropped {d} packets in the window"),
        ));
    }
    finding(
        "F3",
        "the conntrack table is full: new flows are dropped",
        0.8,
        e,
        &["nf_conntrack_max and what fills the table (conntrack -L by source)"],
    )
}

/// F4: neighbour table at its limit.
fn neighbours(input: &Input) -> Option<Finding> {
    let mut e = Vec::new();
    if let Some(s) = input.samples.iter().find(|s| {
        s.neighbours.as_ref().is_some_and(|n| {
            n.gc_thresh
                .is_some_and(|t| t[2] > 0 && n.total_inet * 100 >= t[2] * 95)
        })
    }) {
        let n = s.neighbours.as_ref().expect("found");
        e.push(ev(
            input,
            s.ts_unix_ns,
            format!(
                "{} IPv4 neighbours, gc_thresh3 {}",
                n.total_inet,
                n.gc_thresh.map(|t| t[2]).unwrap_or(0)
            ),
        ));
    }
    if let Some((d, t)) = counter_rise(input, |s| {
        s.neighbours
            .as_ref()
            .and_then(|n| n.arp_cache.as_ref())
            .and_then(|a| a.get("table_fulls").copied())
    }) {
        e.push(ev(
            input,
            t,
            format!("ARP table full {d} times in the window"),
        ));
    }
    finding(
        "F4",
        "the neighbour (ARP/ND) table overflows",
        0.7,
        e,
        &["net.ipv4.neigh.default.gc_thresh3; how many peers the host talks to"],
    )
}

/// F15: softnet backlog drops.
fn softnet(input: &Input) -> Option<Finding> {
    let (d, t) = counter_rise(input, |s| {
        s.softnet
            .as_ref()
            .map(|v| v.iter().map(|c| c.dropped).sum())
    })?;
    finding(
        "F15",
        "packets dropped in the softnet backlog (NET_RX starved)",
        0.5,
        vec![ev(input, t, format!("{d} softnet drops in the window"))],
        &[
            "/proc/interrupts: NIC IRQs all on one CPU?",
            "netdev_max_backlog",
        ],
    )
}

/// Kernel-log signatures: evidence for existing findings, or findings of their own.
fn kernel_log(input: &Input, out: &mut Vec<Finding>) {
    let causes: &[(&str, &str)] = &[
        ("F1", "NIC transmit hang / driver reset loop"),
        ("F21", "atomic allocation failures (memory fragmentation)"),
        ("F22", "the OOM killer took a process (qemu? dnsmasq?)"),
        ("F23", "a CPU stalled (soft lockup, hung task, RCU stall)"),
        ("F24", "bonding/LACP failure"),
    ];
    // Port-state and link lines name an interface: keep those about ours
    // (the kernel log is the host's, other bridges speak in it too).
    let ours: BTreeSet<String> = input
        .samples
        .iter()
        .flat_map(|s| uplinks(s).into_iter().map(|x| format!("({})", x.1)))
        .collect();
    let mut by_tag: BTreeMap<String, Vec<Evidence>> = BTreeMap::new();
    for x in &input.events {
        if let EventKind::Kmsg { text, tags, .. } = &x.kind {
            let t = rel(input, x.ts_unix_ns);
            if !(-900.0..=120.0).contains(&t) {
                continue;
            }
            let about_port = text.contains(" entered ") && text.contains("port ");
            if about_port && !ours.iter().any(|o| text.contains(o.as_str())) {
                continue;
            }
            for tag in tags {
                let v = by_tag.entry(tag.clone()).or_default();
                if v.len() < 3 {
                    v.push(Evidence {
                        t_rel_s: t,
                        what: format!("kernel: {text}"),
                    });
                }
            }
        }
    }
    for (tag, evidence) in by_tag {
        if let Some(f) = out.iter_mut().find(|f| f.id == tag) {
            f.evidence.extend(evidence);
            f.evidence.sort_by(|a, b| a.t_rel_s.total_cmp(&b.t_rel_s));
            f.confidence = (f.confidence + 0.05).min(0.99);
        } else if let Some((_, cause)) = causes.iter().find(|(id, _)| *id == tag) {
            out.push(Finding {
                id: tag,
                cause: cause.to_string(),
                confidence: 0.6,
                evidence,
                next: vec!["the full kernel log in the bundle (deep/dmesg.txt)".into()],
            });
        }
    }
}
