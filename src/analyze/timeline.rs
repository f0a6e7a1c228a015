//! The timeline: what changed in the minutes before the collapse, merged
//! across sources (rtnetlink and libvirt events, kernel lines, detector
//! and agent notes, and changes between consecutive samples), in time order.
//! A change an event already reports is not repeated from the samples.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::view::View;
use crate::sample::{EventKind, Sample};

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Change {
    pub t_rel_s: f64,
    /// "link", "bridge", "fdb", "netfilter", "neighbours", "conntrack",
    /// "kernel", "libvirt", "detector", "agent", "loss".
    pub source: String,
    pub what: String,
}

/// At most this many changes are kept (the ones nearest the collapse).
const MAX_CHANGES: usize = 400;
/// Kept after the collapse too, seconds.
const AFTER_S: f64 = 30.0;

fn push(out: &mut Vec<Change>, t: f64, source: &str, what: String) {
    out.push(Change {
        t_rel_s: t,
        source: source.into(),
        what,
    });
}

pub fn build(view: &View, before_s: f64) -> Vec<Change> {
    let mut out = Vec::new();
    let window = |t: f64| (-before_s..=AFTER_S).contains(&t);
    // What events said, to skip the same change seen in samples: (iface, kind).
    let mut evented: BTreeMap<(String, &'static str), Vec<f64>> = BTreeMap::new();
    let ours = |n: &str| {
        view.uplinks.contains(n) || view.bridges.contains(n) || view.vnics.contains_key(n)
    };
    let mut last_carrier: BTreeMap<String, Option<bool>> = BTreeMap::new();
    let mut kernel_n = 0;
    for x in &view.events {
        let t = view.rel(x.ts_unix_ns);
        if !window(t) {
            continue;
        }
        match &x.kind {
            EventKind::Link {
                action,
                name,
                operstate,
                carrier,
                mtu,
                port_state,
                ..
            } => {
                if action == "del" {
                    push(&mut out, t, "link", format!("{name} removed"));
                    continue;
                }
                let prev = last_carrier.insert(name.clone(), *carrier);
                if prev.flatten() != *carrier && carrier.is_some() && (prev.is_some() || ours(name))
                {
                    push(
                        &mut out,
                        t,
                        "link",
                        format!(
                            "{name}: carrier {} (operstate {operstate})",
                            if *carrier == Some(true) { "up" } else { "down" }
                        ),
                    );
                    evented
                        .entry((name.clone(), "carrier"))
                        .or_default()
                        .push(t);
                }
                if let Some(ps) = port_state {
                    evented.entry((name.clone(), "port")).or_default().push(t);
                    push(&mut out, t, "bridge", format!("{name}: port state {ps}"));
                }
                if let Some(m) = mtu {
                    evented.entry((name.clone(), "mtu")).or_default().push(t);
                    let _ = m; // reported by the sample diff with before/after
                }
            }
            EventKind::Fdb {
                action, mac, port, ..
            } if view.guest_macs.contains_key(&mac.to_lowercase()) => {
                push(
                    &mut out,
                    t,
                    "fdb",
                    format!("guest MAC {mac} {action} on {port}"),
                );
            }
            EventKind::Kmsg { text, .. } => {
                kernel_n += 1;
                if kernel_n <= 150 {
                    push(&mut out, t, "kernel", text.clone());
                }
            }
            EventKind::Libvirt {
                domain,
                event,
                detail,
                ..
            } => {
                push(
                    &mut out,
                    t,
                    "libvirt",
                    format!("{domain}: {event} ({detail})"),
                );
            }
            EventKind::LibvirtConnection {
                connected, error, ..
            } => {
                push(
                    &mut out,
                    t,
                    "libvirt",
                    if *connected {
                        "connection to libvirtd back".to_string()
                    } else {
                        format!("connection to libvirtd lost: {error}")
                    },
                );
            }
            EventKind::Detector {
                from, to, reason, ..
            } => {
                push(&mut out, t, "detector", format!("{from} → {to}: {reason}"));
            }
            EventKind::GuestCutOff { iface, domain, .. } => {
                push(
                    &mut out,
                    t,
                    "detector",
                    format!("guest {domain} on {iface} cut off"),
                );
            }
            EventKind::Agent { what, detail } => {
                push(&mut out, t, "agent", format!("{what} {detail}"))
            }
            EventKind::Loss {
                source,
                detail,
                count,
            } => push(
                &mut out,
                t,
                "loss",
                format!("{source}: {count} lost ({detail})"),
            ),
            _ => {}
        }
    }
    let covered = |name: &str, kind: &'static str, t: f64, iv: f64| {
        evented
            .get(&(name.to_string(), kind))
            .is_some_and(|ts| ts.iter().any(|x| (x - t).abs() <= iv * 2.0 + 0.5))
    };
    let iv = view.interval_s();
    for w in view.samples.windows(2) {
        let t = view.rel(w[1].ts_unix_ns);
        if !window(t) {
            continue;
        }
        diff(view, &w[0], &w[1], t, iv, &covered, &mut out);
    }
    if kernel_n > 150 {
        push(
            &mut out,
            0.0,
            "kernel",
            format!(
                "… {} more kernel lines in the window (deep/dmesg.txt)",
                kernel_n - 150
            ),
        );
    }
    out.sort_by(|a, b| a.t_rel_s.total_cmp(&b.t_rel_s));
    if out.len() > MAX_CHANGES {
        // Keep the ones nearest the collapse.
        out.sort_by(|a, b| a.t_rel_s.abs().total_cmp(&b.t_rel_s.abs()));
        out.truncate(MAX_CHANGES);
        out.sort_by(|a, b| a.t_rel_s.total_cmp(&b.t_rel_s));
    }
    out
}

fn updown(c: Option<bool>) -> &'static str {
    match c {
        Some(true) => "up",
        Some(false) => "down",
        None => "?",
    }
}

/// Threshold crossings reported for gauges against their limits, percent.
const LEVELS: [f64; 3] = [50.0, 80.0, 95.0];

fn crossed(a: f64, b: f64, limit: f64) -> Option<f64> {
    if limit <= 0.0 {
        return None;
    }
    LEVELS
        .iter()
        .rev()
        .find(|l| a * 100.0 < **l * limit && b * 100.0 >= **l * limit)
        .copied()
}

fn diff(
    view: &View,
    a: &Sample,
    b: &Sample,
    t: f64,
    iv: f64,
    covered: &dyn Fn(&str, &'static str, f64, f64) -> bool,
    out: &mut Vec<Change>,
) {
    let ours = |n: &str| {
        view.uplinks.contains(n) || view.bridges.contains(n) || view.vnics.contains_key(n)
    };
    if let (Some(la), Some(lb)) = (&a.links, &b.links) {
        let by: BTreeMap<&str, _> = la.iter().map(|l| (l.name.as_str(), l)).collect();
        for l in lb.iter().filter(|l| ours(&l.name)) {
            match by.get(l.name.as_str()) {
                None => push(out, t, "link", format!("{} appeared", l.name)),
                Some(p) => {
                    if p.carrier != l.carrier && !covered(&l.name, "carrier", t, iv) {
                        push(
                            out,
                            t,
                            "link",
                            format!(
                                "{}: carrier {} → {}",
                                l.name,
                                updown(p.carrier),
                                updown(l.carrier)
                            ),
                        );
                    }
                    if p.mtu != l.mtu {
                        push(
                            out,
                            t,
                            "link",
                            format!("{}: MTU {} → {}", l.name, p.mtu, l.mtu),
                        );
                    }
                    if p.admin_up != l.admin_up {
                        push(
                            out,
                            t,
                            "link",
                            format!("{}: set {}", l.name, if l.admin_up { "up" } else { "down" }),
                        );
                    }
                }
            }
        }
        let names: BTreeSet<&str> = lb.iter().map(|l| l.name.as_str()).collect();
        for l in la
            .iter()
            .filter(|l| ours(&l.name) && !names.contains(l.name.as_str()))
        {
            push(out, t, "link", format!("{} gone", l.name));
        }
    }
    if let (Some(ba), Some(bb)) = (&a.bridges, &b.bridges) {
        for br in bb {
            let Some(pa) = ba.iter().find(|x| x.name == br.name) else {
                continue;
            };
            if pa.mac != br.mac && !pa.mac.is_empty() {
                push(
                    out,
                    t,
                    "bridge",
                    format!("{}: bridge MAC {} → {}", br.name, pa.mac, br.mac),
                );
            }
            if pa.stp_state != br.stp_state {
                push(
                    out,
                    t,
                    "bridge",
                    format!(
                        "{}: stp_state {:?} → {:?}",
                        br.name, pa.stp_state, br.stp_state
                    ),
                );
            }
            for p in &br.ports {
                match pa.ports.iter().find(|x| x.name == p.name) {
                    None => push(
                        out,
                        t,
                        "bridge",
                        format!("{}: port {} joined", br.name, p.name),
                    ),
                    Some(q) => {
                        if q.state != p.state && !covered(&p.name, "port", t, iv) {
                            push(
                                out,
                                t,
                                "bridge",
                                format!(
                                    "{}: port {} state {} → {}",
                                    br.name, p.name, q.state, p.state
                                ),
                            );
                        }
                        if q.learning != p.learning || q.unicast_flood != p.unicast_flood {
                            push(
                                out,
                                t,
                                "bridge",
                                format!(
                                    "{}: port {} learning {:?} → {:?}, flood {:?} → {:?}",
                                    br.name,
                                    p.name,
                                    q.learning,
                                    p.learning,
                                    q.unicast_flood,
                                    p.unicast_flood
                                ),
                            );
                        }
                        let (va, vb): (BTreeSet<u16>, BTreeSet<u16>) = (
                            q.vlans.iter().map(|v| v.vid).collect(),
                            p.vlans.iter().map(|v| v.vid).collect(),
                        );
                        if va != vb {
                            push(
                                out,
                                t,
                                "bridge",
                                format!("{}: port {} VLANs {va:?} → {vb:?}", br.name, p.name),
                            );
                        }
                    }
                }
            }
            for q in &pa.ports {
                if !br.ports.iter().any(|p| p.name == q.name) {
                    push(
                        out,
                        t,
                        "bridge",
                        format!("{}: port {} left", br.name, q.name),
                    );
                }
            }
        }
    }
    // FDB: guest MACs that moved port.
    if let (Some(fa), Some(fb)) = (&a.fdb, &b.fdb) {
        let at: BTreeMap<String, &str> = fa
            .iter()
            .filter(|f| view.guest_macs.contains_key(&f.mac.to_lowercase()))
            .map(|f| (f.mac.to_lowercase(), f.port.as_str()))
            .collect();
        for f in fb {
            if let Some(p) = at.get(&f.mac.to_lowercase()) {
                if *p != f.port {
                    push(
                        out,
                        t,
                        "fdb",
                        format!("guest MAC {} moved {p} → {}", f.mac, f.port),
                    );
                }
            }
        }
    }
    if let (Some(na), Some(nb)) = (&a.netfilter, &b.netfilter) {
        if na.nft_genid != nb.nft_genid {
            push(
                out,
                t,
                "netfilter",
                format!(
                    "nf_tables ruleset generation {:?} → {:?}",
                    na.nft_genid, nb.nft_genid
                ),
            );
        }
        if na.bridge_nf_call_iptables != nb.bridge_nf_call_iptables {
            push(
                out,
                t,
                "netfilter",
                format!(
                    "bridge-nf-call-iptables {:?} → {:?}",
                    na.bridge_nf_call_iptables, nb.bridge_nf_call_iptables
                ),
            );
        }
        if na.legacy_tables != nb.legacy_tables {
            push(
                out,
                t,
                "netfilter",
                format!(
                    "legacy iptables tables {:?} → {:?}",
                    na.legacy_tables, nb.legacy_tables
                ),
            );
        }
    }
    if let (Some(na), Some(nb)) = (&a.neighbours, &b.neighbours) {
        if let Some(th) = nb.gc_thresh {
            if let Some(l) = crossed(na.total_inet as f64, nb.total_inet as f64, th[2] as f64) {
                push(
                    out,
                    t,
                    "neighbours",
                    format!(
                        "IPv4 neighbours {} → {}: crossed {l:.0} % of gc_thresh3 ({})",
                        na.total_inet, nb.total_inet, th[2]
                    ),
                );
            }
        }
    }
    if let (Some(ca), Some(cb)) = (&a.conntrack, &b.conntrack) {
        if let (Some(x), Some(y), Some(m)) = (ca.count, cb.count, cb.max) {
            if let Some(l) = crossed(x as f64, y as f64, m as f64) {
                push(
                    out,
                    t,
                    "conntrack",
                    format!("conntrack {x} → {y}: crossed {l:.0} % of nf_conntrack_max ({m})"),
                );
            }
        }
    }
    if let (Some(la), Some(lb)) = (&a.libvirt, &b.libvirt) {
        for d in &lb.domains {
            match la.domains.iter().find(|x| x.uuid == d.uuid) {
                Some(p) if p.state != d.state => push(
                    out,
                    t,
                    "libvirt",
                    format!("{}: {} → {} ({})", d.name, p.state, d.state, d.reason),
                ),
                None => push(
                    out,
                    t,
                    "libvirt",
                    format!("{}: appeared ({})", d.name, d.state),
                ),
                _ => {}
            }
        }
    }
}
