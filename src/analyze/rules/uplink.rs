//! Catalogue group "NIC and uplink": F1 TX hang, F2 carrier loss, F16
//! offloads, F17 MTU, F24 bonding.

use std::collections::BTreeSet;

use super::{finding, kmsg_evidence, re};
use crate::analyze::view::{counter_evidence, rise, View};
use crate::analyze::{Evidence, Finding};
use crate::sample::EventKind;

/// How far before the collapse counters are compared, seconds.
const BEFORE_S: f64 = 60.0;

fn after_s(view: &View) -> f64 {
    view.samples
        .last()
        .map(|s| view.rel(s.ts_unix_ns))
        .unwrap_or(0.0)
        .max(0.0)
}

/// First time (relative) an uplink had no carrier, from events or samples.
pub(crate) fn first_carrier_loss(view: &View) -> Option<(f64, String)> {
    let ev = view.events.iter().find_map(|x| match &x.kind {
        EventKind::Link {
            name,
            carrier: Some(false),
            ..
        } if view.uplinks.contains(name) => Some((view.rel(x.ts_unix_ns), name.clone())),
        _ => None,
    });
    let sm = view.samples.iter().find_map(|s| {
        view.uplinks
            .iter()
            .find(|u| s.link(u).and_then(|l| l.carrier) == Some(false))
            .map(|u| (view.rel(s.ts_unix_ns), u.clone()))
    });
    match (ev, sm) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// F1: the uplink NIC's transmit path hung (watchdog, unit hang, reset loop).
pub fn f1_tx_hang(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = kmsg_evidence(view, "F1", 4);
    let watchdog_t = e.first().map(|x| x.t_rel_s);
    let mut ifs = BTreeSet::new();
    let named = re(
        r"NETDEV WATCHDOG: (\S+) \(|(\S+): NETDEV WATCHDOG|(\S+): Detected (Hardware|Tx) Unit Hang|(\S+): Reset adapter",
    );
    for x in &e {
        if let Some(c) = named.captures(&x.what) {
            if let Some(m) = c.iter().skip(1).flatten().next() {
                ifs.insert(m.as_str().trim_end_matches(':').to_string());
            }
        }
    }
    let names_ours = ifs.iter().any(|i| view.uplinks.contains(i));
    // Counters: tx frozen while the qdisc backlog or drops grow, carrier up.
    let end = after_s(view);
    let mut frozen = false;
    for u in &view.uplinks {
        let tx = view.link_counter(u, |s| s.tx_packets);
        let before = rise(&tx, -BEFORE_S, -5.0);
        let after = rise(&tx, 0.0, end.max(1.0));
        let backlog = view.series(|s| {
            s.qdiscs.as_ref().map(|q| {
                q.iter()
                    .filter(|q| &q.dev == u)
                    .map(|q| q.backlog_bytes as f64)
                    .sum()
            })
        });
        let qdrops = view.series(|s| {
            s.qdiscs.as_ref().map(|q| {
                q.iter()
                    .filter(|q| &q.dev == u)
                    .map(|q| q.drops as f64)
                    .sum()
            })
        });
        let carrier_up = view
            .samples
            .iter()
            .filter(|s| view.rel(s.ts_unix_ns) >= -5.0)
            .filter_map(|s| s.link(u).and_then(|l| l.carrier))
            .filter(|c| !c)
            .count()
            == 0;
        let backlog_max_after = backlog
            .iter()
            .filter(|p| p.0 >= -5.0)
            .map(|p| p.1)
            .fold(0.0, f64::max);
        let qdrop_rise = rise(&qdrops, -5.0, end);
        if before > 0.0 && after <= before * 0.01 && (backlog_max_after > 0.0 || qdrop_rise > 0.0) {
            frozen = true;
            ifs.insert(u.clone());
            let onset = crate::analyze::view::last_change(&tx, end).unwrap_or(0.0);
            let mut ev = counter_evidence(
                &format!("{u} tx_packets"),
                &tx,
                -BEFORE_S,
                end,
                format!(
                    "{u}: transmit frozen — {before:.0} packets sent in the {BEFORE_S:.0} s before, {after:.0} after{}",
                    if carrier_up { ", carrier up" } else { "" }
                ),
            );
            ev.t_rel_s = onset;
            e.push(ev);
            e.push(counter_evidence(
                &format!("{u} qdisc drops"),
                &qdrops,
                -5.0,
                end,
                format!("{u}: its qdisc backlog grows to {backlog_max_after:.0} bytes, {qdrop_rise:.0} drops: packets queue up and nothing leaves"),
            ));
        }
        let cc = view.series(|s| s.link(u).and_then(|l| l.carrier_changes).map(f64::from));
        let flaps = rise(&cc, -BEFORE_S, end);
        if flaps > 0.0 && (frozen || watchdog_t.is_some()) {
            e.push(counter_evidence(
                &format!("{u} carrier_changes"),
                &cc,
                -BEFORE_S,
                end,
                format!("{u}: carrier changed {flaps:.0} times (driver resets)"),
            ));
        }
    }
    let conf = match (watchdog_t.is_some(), frozen) {
        (true, true) => 0.95,
        (true, false) if names_ours => 0.92,
        (true, false) => 0.6,
        (false, true) => 0.7,
        (false, false) => return None,
    };
    finding(
        "F1",
        "the uplink NIC's transmit path hung (TX timeout / driver reset loop): nothing leaves the host",
        conf,
        e,
        &[
            "ethtool -S of the NIC in the bundle (deep/ethtool-S-*.txt): tx_timeout_count, reset counters",
            "NIC firmware and driver version (deep/ethtool-i-*.txt); known errata for that driver",
            "whether the hang follows a load pattern (TSO off as a test: ethtool -K NIC tso off)",
        ],
        ifs.into_iter().collect(),
    )
}

/// F2: the uplink lost carrier.
pub fn f2_carrier(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    for x in &view.events {
        if let EventKind::Link {
            name,
            carrier: Some(false),
            operstate,
            ..
        } = &x.kind
        {
            if view.uplinks.contains(name) && e.len() < 5 {
                e.push(Evidence::event(
                    view.rel(x.ts_unix_ns),
                    format!("{name}: carrier lost (RTM_NEWLINK, operstate {operstate})"),
                ));
            }
        }
    }
    let (t_loss, uplink) = first_carrier_loss(view)?;
    if e.is_empty() {
        e.push(Evidence::state(
            t_loss,
            format!("{uplink}: no carrier in the sample (operstate down)"),
        ));
    }
    let cc = view.series(|s| {
        s.link(&uplink)
            .and_then(|l| l.carrier_changes)
            .map(f64::from)
    });
    let n = rise(&cc, -BEFORE_S, after_s(view));
    if n > 0.0 {
        e.push(counter_evidence(
            &format!("{uplink} carrier_changes"),
            &cc,
            -BEFORE_S,
            after_s(view),
            format!("{uplink}: carrier_changes +{n:.0}"),
        ));
    }
    e.extend(
        kmsg_evidence(view, "F2", 3)
            .into_iter()
            .filter(|x| x.what.contains(uplink.as_str()) || !x.what.contains("port ")),
    );
    // A TX hang's resets drop carrier too: then the hang is the cause.
    let hang_first = view
        .kmsg(-super::KMSG_BEFORE_S, t_loss)
        .any(|(_, _, tags)| tags.iter().any(|t| t == "F1"));
    // A bond loses carrier when its members do: then bonding is the cause.
    let bond = view
        .samples
        .last()
        .and_then(|s| s.link(&uplink))
        .is_some_and(|l| l.kind == "bond")
        && view
            .kmsg(-super::KMSG_BEFORE_S, super::KMSG_AFTER_S)
            .any(|(_, _, t)| t.iter().any(|x| x == "F24"));
    let conf = if hang_first || bond {
        0.6
    } else if t_loss > 5.0 {
        0.5
    } else {
        0.9
    };
    finding(
        "F2",
        if hang_first {
            "uplink carrier loss — after a TX hang (the driver's resets drop the link)".to_string()
        } else {
            "uplink carrier loss: the NIC, cable or switch port went down".to_string()
        },
        conf,
        e,
        &[
            "the switch port's state and log (err-disabled? BPDU guard, F9? port security, F10?)",
            "ethtool of the uplink NIC in the bundle (deep/ethtool-S-*.txt); cable/optic",
        ],
        vec![uplink],
    )
}

/// F16: offload settings of a bridged NIC (captured once, in deep state).
pub fn f16_offload(view: &View, cnc: &mut Vec<String>) -> Option<Finding> {
    let files: Vec<(&String, &String)> = view
        .files
        .iter()
        .filter(|(n, _)| n.starts_with("deep/ethtool-k-"))
        .collect();
    if files.is_empty() {
        if !view.source.starts_with("store:") {
            cnc.push("no ethtool -k output in the bundle: offloads (F16) not checked".into());
        }
        return None;
    }
    cnc.push("offload settings are captured once (deep/ethtool-k-*), not sampled: an offload change (F16) cannot be seen happening".into());
    let mut e = Vec::new();
    let mut ifs = Vec::new();
    for (name, text) in files {
        let nic = name
            .trim_start_matches("deep/ethtool-k-")
            .trim_end_matches(".txt")
            .to_string();
        if !view.uplinks.contains(&nic) {
            continue;
        }
        if text
            .lines()
            .any(|l| l.trim() == "large-receive-offload: on")
        {
            e.push(Evidence::file(format!(
                "{name}: large-receive-offload: on — on a bridged NIC LRO merges frames the bridge must forward unchanged"
            )));
            ifs.push(nic);
        }
    }
    finding(
        "F16",
        "an offload (LRO) is on for a bridged uplink: large flows stall while pings pass",
        0.35,
        e,
        &["ethtool -K NIC lro off; compare with the fleet's other hosts"],
        ifs,
    )
}

/// F17: MTU changes, mixed MTUs on a bridge, oversize frames dropped at the uplink.
pub fn f17_mtu(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    let mut ifs = BTreeSet::new();
    let ours = |n: &str| view.uplinks.contains(n) || view.bridges.contains(n) || view.is_vnic(n);
    for x in &view.events {
        if let EventKind::Link {
            name, mtu: Some(m), ..
        } = &x.kind
        {
            let t = view.rel(x.ts_unix_ns);
            let before = view
                .samples
                .iter()
                .rfind(|s| s.ts_unix_ns < x.ts_unix_ns)
                .and_then(|s| s.link(name))
                .map(|l| l.mtu);
            if let Some(b) = before.filter(|b| b != m) {
                if ours(name) && (-600.0..=10.0).contains(&t) {
                    e.push(Evidence {
                        before: Some(b as f64),
                        after: Some(*m as f64),
                        series: Some(format!("{name} mtu")),
                        ..Evidence::event(t, format!("{name}: MTU {b} → {m}"))
                    });
                    ifs.insert(name.clone());
                    conf = conf.max(0.75);
                }
            }
        }
    }
    if let Some(s) = view.sample_at(0.0) {
        for b in s.bridges.iter().flatten() {
            let mtus: BTreeSet<u32> = b
                .ports
                .iter()
                .filter_map(|p| s.link(&p.name))
                .map(|l| l.mtu)
                .collect();
            if mtus.len() > 1 {
                e.push(Evidence::state(
                    view.rel(s.ts_unix_ns),
                    format!(
                        "{}: ports with different MTUs {mtus:?} (the bridge takes the smallest)",
                        b.name
                    ),
                ));
                ifs.insert(b.name.clone());
                conf = conf.max(0.5);
            }
        }
    }
    // Oversize frames die on the way out while small ones still pass.
    let end = after_s(view).max(1.0);
    for u in &view.uplinks {
        let drops = view.link_counter(u, |s| s.tx_dropped);
        let tx = view.link_counter(u, |s| s.tx_packets);
        let qd = view.series(|s| {
            s.qdiscs.as_ref().map(|q| {
                q.iter()
                    .filter(|q| &q.dev == u)
                    .map(|q| q.drops as f64)
                    .sum()
            })
        });
        let (d, sent, q) = (
            rise(&drops, -30.0, end),
            rise(&tx, -30.0, end),
            rise(&qd, -30.0, end),
        );
        let carrier_ok = view
            .samples
            .iter()
            .all(|s| s.link(u).and_then(|l| l.carrier) != Some(false));
        if d >= 3.0 && sent > 0.0 && q == 0.0 && carrier_ok {
            e.push(counter_evidence(
                &format!("{u} tx_dropped"),
                &drops,
                -30.0,
                end,
                format!("{u}: {d:.0} frames dropped on transmit while {sent:.0} passed, carrier up, no qdisc drops — frames larger than the next hop takes"),
            ));
            ifs.insert(u.clone());
            conf = conf.max(0.55) + 0.1;
        }
        let lerr = view.link_counter(u, |s| s.rx_length_errors);
        let l = rise(&lerr, -30.0, end);
        if l > 0.0 {
            e.push(counter_evidence(
                &format!("{u} rx_length_errors"),
                &lerr,
                -30.0,
                end,
                format!("{u}: {l:.0} receive length errors (frames larger than its MTU)"),
            ));
            conf = conf.max(0.5) + 0.05;
        }
    }
    if conf == 0.0 {
        return None;
    }
    finding(
        "F17",
        "MTU mismatch: small packets pass, large ones are dropped (degradation, not a full collapse)",
        conf.min(0.85),
        e,
        &[
            "ping -M do -s 1472 (and -s 8972 for jumbo) across the uplink; compare with the switch port's MTU",
            "ip -d link in the bundle: the MTU of every port and of the bridge (deep/ip-link.txt)",
        ],
        ifs.into_iter().collect(),
    )
}

/// F24: bonding / LACP failure.
pub fn f24_bonding(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = kmsg_evidence(view, "F24", 4);
    let mut conf: f64 = if e.is_empty() { 0.0 } else { 0.85 };
    let mut ifs = BTreeSet::new();
    for (name, text) in view
        .files
        .iter()
        .filter(|(n, _)| n.starts_with("deep/proc/net/bonding/"))
    {
        let bond = name.rsplit('/').next().unwrap_or("").to_string();
        let b = crate::kernel::bonding::parse(text);
        for p in b.problems() {
            e.push(Evidence::file(format!("{name}: {p}")));
            conf = conf.max(0.75) + 0.02;
            ifs.insert(bond.clone());
        }
    }
    for x in &e {
        if let Some(c) = re(r"(bond\d+)").captures(&x.what) {
            ifs.insert(c[1].to_string());
        }
    }
    if conf == 0.0 {
        return None;
    }
    finding(
        "F24",
        "bonding/LACP failure: the bond's members are down or the switch stopped answering LACP",
        conf.min(0.93),
        e,
        &[
            "/proc/net/bonding/* in the bundle: MII status, partner MAC, aggregator IDs per slave",
            "the switch side: port-channel state, LACP rate and timeouts; recent switch maintenance",
        ],
        ifs.into_iter().collect(),
    )
}
