//! Catalogue group "kernel tables": F3 conntrack full, F4 neighbour table
//! overflow, F20 rogue IPv6 RA / neighbour storm.

use super::{finding, kmsg_evidence};
use crate::analyze::packets::PacketKind;
use crate::analyze::view::{counter_evidence, rise, value_at, View};
use crate::analyze::{Evidence, EvidenceKind, Finding};
use crate::sample::EventKind;

fn end(view: &View) -> f64 {
    view.samples
        .last()
        .map(|s| view.rel(s.ts_unix_ns))
        .unwrap_or(0.0)
        .max(1.0)
}

/// A gauge against its limit: the first time it reached `pct` % of it.
fn reached(series: &[(f64, f64)], limit: &[(f64, f64)], pct: f64) -> Option<(f64, f64, f64)> {
    series.iter().find_map(|(t, v)| {
        let m = value_at(limit, *t)?;
        (m > 0.0 && *v * 100.0 >= m * pct).then_some((*t, *v, m))
    })
}

/// F3: the conntrack table is full.
pub fn f3_conntrack(view: &View, cnc: &mut Vec<String>) -> Option<Finding> {
    let count = view.series(|s| s.conntrack.as_ref()?.count.map(|v| v as f64));
    let max = view.series(|s| s.conntrack.as_ref()?.max.map(|v| v as f64));
    if count.is_empty() && view.has(|s| s.failure("conntrack").is_some()) {
        cnc.push("conntrack collector failed: F3 judged from the kernel log only".into());
    }
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    if let Some((t, v, m)) = reached(&count, &max, 95.0) {
        let start = count.first().map(|p| p.1).unwrap_or(v);
        e.push(Evidence {
            kind: EvidenceKind::Counter,
            series: Some("nf_conntrack_count".into()),
            before: Some(start),
            after: Some(v),
            t_before_rel_s: count.first().map(|p| p.0),
            ..Evidence::state(t, format!("conntrack at {v:.0} of nf_conntrack_max {m:.0} (from {start:.0} at the start of the history)"))
        });
        conf = 0.8;
    }
    for stat in ["drop", "early_drop", "insert_failed"] {
        let s = view.series(|s| s.conntrack.as_ref()?.stats.get(stat).map(|v| *v as f64));
        let d = rise(&s, -300.0, end(view));
        if d > 0.0 {
            e.push(counter_evidence(
                &format!("conntrack {stat}"),
                &s,
                -300.0,
                end(view),
                format!("conntrack {stat} +{d:.0} (new flows refused)"),
            ));
            conf = conf.max(0.55) + 0.03;
        }
    }
    let k = kmsg_evidence(view, "F3", 3);
    if !k.is_empty() {
        conf = conf.max(0.85) + 0.05;
    }
    e.extend(k);
    if conf == 0.0 {
        return None;
    }
    finding(
        "F3",
        "the conntrack table is full: new flows (bridged via br_netfilter, or routed) are dropped, old ones live",
        conf.min(0.95),
        e,
        &[
            "nf_conntrack_max vs the host's flows; conntrack -S (deep/conntrack-S.txt): drop, early_drop, insert_failed per CPU",
            "what fills it: conntrack -L by source/zone; whether bridged guest traffic needs tracking at all (bridge-nf-call-iptables)",
        ],
        vec![],
    )
}

/// F4: the neighbour (ARP/ND) table overflows.
pub fn f4_neighbours(view: &View, cnc: &mut Vec<String>) -> Option<Finding> {
    let total = view.series(|s| s.neighbours.as_ref().map(|n| n.total_inet as f64));
    let thresh = view.series(|s| s.neighbours.as_ref()?.gc_thresh.map(|t| t[2] as f64));
    if !total.is_empty() && thresh.is_empty() {
        cnc.push("gc_thresh3 not in the samples (global; absent inside a network namespace): the neighbour count could not be judged against it (F4)".into());
    }
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    if let Some((t, v, m)) = reached(&total, &thresh, 95.0) {
        e.push(Evidence {
            kind: EvidenceKind::Counter,
            series: Some("IPv4 neighbours".into()),
            before: total.first().map(|p| p.1),
            after: Some(v),
            t_before_rel_s: total.first().map(|p| p.0),
            ..Evidence::state(t, format!("{v:.0} IPv4 neighbours, gc_thresh3 {m:.0}"))
        });
        conf = 0.7;
    }
    for stat in ["table_fulls", "forced_gc_runs", "unresolved_discards"] {
        let s = view.series(|s| {
            s.neighbours
                .as_ref()?
                .arp_cache
                .as_ref()?
                .get(stat)
                .map(|v| *v as f64)
        });
        let d = rise(&s, -300.0, end(view));
        if d > 0.0 {
            e.push(counter_evidence(
                &format!("arp_cache {stat}"),
                &s,
                -300.0,
                end(view),
                format!("arp_cache {stat} +{d:.0}"),
            ));
            conf = conf.max(if stat == "table_fulls" { 0.7 } else { 0.45 }) + 0.03;
        }
    }
    let k = kmsg_evidence(view, "F4", 3);
    if !k.is_empty() {
        conf = conf.max(0.85) + 0.04;
    }
    e.extend(k);
    if conf == 0.0 {
        return None;
    }
    finding(
        "F4",
        "the neighbour (ARP/ND) table overflows: the host cannot resolve new peers (hits traffic through host IPs)",
        conf.min(0.93),
        e,
        &[
            "net.ipv4.neigh.default.gc_thresh1/2/3 against the peers the host talks to (ip -s neigh in the bundle)",
            "a neighbour storm: a scan, a flat L2 with many hosts, a routing change",
        ],
        vec![],
    )
}

/// F20: a guest sends IPv6 router advertisements, or a neighbour event storm.
pub fn f20_rogue_ra(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    let mut ifs = Vec::new();
    if let Some(c) = &view.capture {
        for p in c
            .packets
            .iter()
            .filter(|p| p.kind == PacketKind::RouterAdvert)
        {
            if let Some(dom) = view.guest_macs.get(&p.src_mac) {
                e.push(Evidence::packet(
                    view.rel(p.ts_unix_ns),
                    format!(
                        "IPv6 router advertisement from guest {dom} ({}) on {}",
                        p.src_mac, p.iface
                    ),
                ));
                ifs.push(p.iface.clone());
                conf = 0.75;
                break;
            }
        }
    }
    // Neighbour events per second around the collapse.
    let mut per_s: std::collections::BTreeMap<i64, u32> = Default::default();
    for x in &view.events {
        if matches!(x.kind, EventKind::Neigh { .. }) {
            let t = view.rel(x.ts_unix_ns);
            if (-300.0..=10.0).contains(&t) {
                *per_s.entry(t.floor() as i64).or_default() += 1;
            }
        }
    }
    if let Some((t, n)) = per_s.iter().max_by_key(|(_, n)| **n) {
        if *n >= 200 {
            e.push(Evidence::event(
                *t as f64,
                format!("{n} neighbour events in one second (RTM_NEWNEIGH/DELNEIGH storm)"),
            ));
            conf = conf.max(0.45);
        }
    }
    if conf == 0.0 {
        return None;
    }
    finding(
        "F20",
        "a rogue IPv6 router advertisement from a guest, or a neighbour discovery storm",
        conf,
        e,
        &[
            "ip -6 route (proto ra routes), accept_ra on the host's interfaces",
            "RA guard / nwfilter for that guest's port",
        ],
        ifs,
    )
}
