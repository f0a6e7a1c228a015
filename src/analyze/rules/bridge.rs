//! Catalogue group "bridge forwarding": F5 bridge MAC change, F6 FDB on the
//! wrong port, F7 learning/flooding off, F8 port not forwarding, F9 BPDU
//! guard, F10 upstream MAC limit, F18 VLAN filtering, F19 multicast snooping.

use std::collections::{BTreeMap, BTreeSet};

use super::{finding, kmsg_evidence};
use crate::analyze::packets::PacketKind;
use crate::analyze::view::{counter_evidence, rise, View};
use crate::analyze::{Evidence, Finding};
use crate::sample::EventKind;

fn end(view: &View) -> f64 {
    view.samples
        .last()
        .map(|s| view.rel(s.ts_unix_ns))
        .unwrap_or(0.0)
        .max(1.0)
}

/// F5: the bridge's own MAC changed (a port with a lower MAC joined or left).
pub fn f5_bridge_mac(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut ifs = Vec::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for s in &view.samples {
        let t = view.rel(s.ts_unix_ns);
        for b in s.bridges.iter().flatten() {
            if b.mac.is_empty() {
                continue;
            }
            if let Some(prev) = last.insert(b.name.clone(), b.mac.clone()) {
                if prev != b.mac && (-600.0..=10.0).contains(&t) {
                    e.push(Evidence::state(
                        t,
                        format!("{}: bridge MAC {prev} → {}", b.name, b.mac),
                    ));
                    ifs.push(b.name.clone());
                    // The port that joined or left at that moment.
                    for x in &view.events {
                        let tx = view.rel(x.ts_unix_ns);
                        if (tx - t).abs() > 5.0 {
                            continue;
                        }
                        if let EventKind::Link {
                            action,
                            name,
                            mac,
                            master,
                            ..
                        } = &x.kind
                        {
                            if *master == Some(b.ifindex) || action == "del" {
                                e.push(Evidence::event(
                                    tx,
                                    format!("{name} ({mac}) {action} on {}", b.name),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    finding(
        "F5",
        "the bridge's MAC changed when a port joined or left: the host's own IP traffic breaks until neighbours re-learn it",
        0.55,
        e,
        &[
            "set a fixed bridge MAC (ip link set BR address …); libvirt's vNICs use fe: host MACs for this reason",
            "which port has the lowest MAC (bridge link; ip -d link)",
        ],
        ifs,
    )
}

/// F6: a guest's MAC learned on (or pinned to) an uplink port.
pub fn f6_fdb_wrong_port(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut seen = BTreeSet::new();
    let mut conf: f64 = 0.0;
    let mut ifs = BTreeSet::new();
    for s in &view.samples {
        for f in s.fdb.iter().flatten() {
            if let Some(dom) = view.guest_macs.get(&f.mac.to_lowercase()) {
                if view.uplinks.contains(&f.port) && seen.insert(f.mac.clone()) {
                    e.push(Evidence::state(
                        view.rel(s.ts_unix_ns),
                        format!(
                            "guest {dom}'s MAC {} is in the FDB on uplink {} ({})",
                            f.mac, f.port, f.state
                        ),
                    ));
                    ifs.insert(f.port.clone());
                    conf = 0.85;
                }
            }
        }
    }
    // FDB moves of guest MACs between ports (events).
    let mut at: BTreeMap<String, String> = BTreeMap::new();
    let mut moves = 0;
    for x in &view.events {
        if let EventKind::Fdb {
            action, mac, port, ..
        } = &x.kind
        {
            if action != "new" || port.is_empty() {
                continue;
            }
            let m = mac.to_lowercase();
            if !view.guest_macs.contains_key(&m) {
                continue;
            }
            if let Some(prev) = at.insert(m.clone(), port.clone()) {
                if &prev != port {
                    moves += 1;
                    if moves <= 4 {
                        e.push(Evidence::event(
                            view.rel(x.ts_unix_ns),
                            format!("FDB: guest MAC {m} moved {prev} → {port}"),
                        ));
                    }
                }
            }
        }
    }
    if moves > 0 {
        conf = conf.max(0.6) + 0.05;
    }
    let k = kmsg_evidence(view, "F6", 3);
    if !k.is_empty() {
        conf = conf.max(0.5) + 0.05;
    }
    e.extend(k);
    if conf == 0.0 {
        return None;
    }
    finding(
        "F6",
        "the bridge sends a guest's traffic to the uplink: its MAC is in the FDB on the wrong port (loop, reflection, duplicate MAC)",
        conf.min(0.92),
        e,
        &[
            "bridge fdb in the bundle (deep/bridge-fdb.txt): which port the MAC is on, static or learned",
            "a loop or a mirror/reflection on the switch side; a duplicate MAC on another host",
        ],
        ifs.into_iter().collect(),
    )
}

/// F7: learning or unicast flooding off on a port; very short ageing.
pub fn f7_learning(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut seen = BTreeSet::new();
    let mut conf: f64 = 0.0;
    let mut ifs = BTreeSet::new();
    let mut prev: BTreeMap<String, (Option<bool>, Option<bool>)> = BTreeMap::new();
    for s in &view.samples {
        let t = view.rel(s.ts_unix_ns);
        for b in s.bridges.iter().flatten() {
            for p in &b.ports {
                let now = (p.learning, p.unicast_flood);
                let was = prev.insert(p.name.clone(), now);
                let off = p.learning == Some(false) || p.unicast_flood == Some(false);
                if off && seen.insert(p.name.clone()) {
                    let changed = was.is_some_and(|w| w != now);
                    e.push(Evidence::state(
                        t,
                        format!(
                            "{}: port {} learning {} unicast flood {}{}",
                            b.name,
                            p.name,
                            onoff(p.learning),
                            onoff(p.unicast_flood),
                            if changed {
                                " (changed since the sample before)"
                            } else {
                                ""
                            }
                        ),
                    ));
                    ifs.insert(p.name.clone());
                    conf = conf.max(if changed { 0.82 } else { 0.72 });
                }
            }
            if let Some(a) = b.ageing_time_cs.filter(|a| *a > 0 && *a < 1000) {
                if seen.insert(format!("ageing {}", b.name)) {
                    e.push(Evidence::state(
                        t,
                        format!("{}: ageing_time {:.1} s: idle guests' FDB entries expire almost at once", b.name, a as f64 / 100.0),
                    ));
                    conf = conf.max(0.5);
                }
            }
        }
    }
    // Guests whose MAC is no longer in the FDB.
    if conf > 0.0 {
        if let Some(s) = view.sample_at(end(view)) {
            if let Some(fdb) = &s.fdb {
                let have: BTreeSet<String> = fdb.iter().map(|f| f.mac.to_lowercase()).collect();
                let missing: Vec<&String> = view
                    .guest_macs
                    .iter()
                    .filter(|(m, _)| !have.contains(*m))
                    .map(|(_, d)| d)
                    .collect();
                if !missing.is_empty() {
                    e.push(Evidence::state(
                        view.rel(s.ts_unix_ns),
                        format!("guests with no FDB entry: {}", join(&missing, 6)),
                    ));
                    conf += 0.05;
                }
            }
        }
    }
    finding(
        "F7",
        "MAC learning or unicast flooding is off on a port (or ageing is very short): frames toward the guests are not delivered",
        conf,
        e,
        &[
            "bridge -d link show (deep/bridge-link.txt): learning/flood flags per port",
            "who set them: config management, a network agent, a hand-run `bridge link set`",
        ],
        ifs.into_iter().collect(),
    )
}

fn onoff(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "on",
        Some(false) => "off",
        None => "?",
    }
}

pub(crate) fn join<T: std::fmt::Display>(v: &[T], max: usize) -> String {
    let mut s: Vec<String> = v.iter().take(max).map(|x| x.to_string()).collect();
    if v.len() > max {
        s.push(format!("… {} more", v.len() - max));
    }
    s.join(", ")
}

const STATES: [&str; 5] = [
    "disabled",
    "listening",
    "learning",
    "forwarding",
    "blocking",
];

/// F8: an uplink port left the forwarding state (not because it lost carrier).
pub fn f8_port_state(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut follows_carrier = false;
    let mut ifs = BTreeSet::new();
    for s in &view.samples {
        for b in s.bridges.iter().flatten() {
            for p in &b.ports {
                let Some(l) = s.link(&p.name) else { continue };
                if p.state != 3 && view.uplinks.contains(&p.name) {
                    if l.carrier == Some(false) || !l.admin_up {
                        follows_carrier = true;
                    } else if ifs.insert(p.name.clone()) {
                        e.push(Evidence::state(
                            view.rel(s.ts_unix_ns),
                            format!(
                                "{}: uplink port {} in STP state {} ({}), carrier up",
                                b.name,
                                p.name,
                                p.state,
                                STATES.get(p.state as usize).unwrap_or(&"?")
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
    for x in &view.events {
        if let EventKind::Link {
            name,
            port_state: Some(st),
            ..
        } = &x.kind
        {
            if ifs.contains(name) && *st != 3 {
                e.push(Evidence::event(
                    view.rel(x.ts_unix_ns),
                    format!(
                        "{name}: IFLA_BRPORT_STATE → {st} ({})",
                        STATES.get(*st as usize).unwrap_or(&"?")
                    ),
                ));
                break;
            }
        }
    }
    e.extend(kmsg_evidence(view, "F8", 3));
    let conf = if follows_carrier { 0.5 } else { 0.88 };
    finding(
        "F8",
        "an uplink bridge port is not forwarding (STP blocked it, or it was set by hand)",
        conf,
        e,
        &[
            "bridge -d link show (deep/bridge-link.txt); the bridge's stp_state, forward_delay, topology_change",
            "who changed it: kmsg 'entered … state' lines, an STP daemon, config management",
        ],
        ifs.into_iter().collect(),
    )
}

/// F9: the host sent BPDUs out of the uplink and the switch's BPDU guard shut the port.
pub fn f9_bpdu_guard(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let loss = super::uplink::first_carrier_loss(view);
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    let mut ifs = BTreeSet::new();
    if let Some(c) = &view.capture {
        let out: Vec<_> = c
            .packets
            .iter()
            .filter(|p| p.kind == PacketKind::Bpdu && view.uplinks.contains(&p.iface))
            .collect();
        if let Some(first) = out.first() {
            let t = view.rel(first.ts_unix_ns);
            e.push(Evidence::packet(
                t,
                format!(
                    "{} BPDUs on {} (first from {}) — an uplink to a switch with BPDU guard must never see one",
                    out.len(),
                    first.iface,
                    first.src_mac
                ),
            ));
            ifs.insert(first.iface.clone());
            conf = match &loss {
                Some((tl, _)) if *tl >= t => 0.93,
                _ => 0.55,
            };
        }
    }
    // STP turned on shortly before.
    let mut prev: BTreeMap<String, u32> = BTreeMap::new();
    for s in &view.samples {
        for b in s.bridges.iter().flatten() {
            let Some(st) = b.stp_state else { continue };
            if let Some(p) = prev.insert(b.name.clone(), st) {
                let t = view.rel(s.ts_unix_ns);
                if p == 0 && st != 0 && (-600.0..=5.0).contains(&t) {
                    e.push(Evidence::state(
                        t,
                        format!("{}: STP turned on (stp_state {p} → {st})", b.name),
                    ));
                    ifs.insert(b.name.clone());
                    conf = conf.max(if loss.is_some() { 0.75 } else { 0.4 });
                }
            }
        }
    }
    if conf == 0.0 {
        return None;
    }
    if let Some((t, u)) = loss {
        e.push(Evidence::state(
            t,
            format!("{u}: carrier lost (the switch shut the port)"),
        ));
    }
    finding(
        "F9",
        "the switch's BPDU guard shut the uplink port after the host sent BPDUs (STP on a bridge facing an edge port)",
        conf,
        e,
        &[
            "the switch: err-disabled reason on that port (bpduguard); re-enable after fixing",
            "stp_state of the bridge (should be 0 facing an edge port), who enabled it",
        ],
        ifs.into_iter().collect(),
    )
}

/// F10: upstream MAC limit / port security: the newest guests fail, older ones work.
pub fn f10_mac_limit(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let end = end(view);
    let mut first_seen: BTreeMap<String, f64> = BTreeMap::new();
    for s in &view.samples {
        for l in s.links.iter().flatten() {
            if view.vnics.contains_key(&l.name) {
                first_seen
                    .entry(l.name.clone())
                    .or_insert(view.rel(s.ts_unix_ns));
            }
        }
    }
    if first_seen.len() < 2 {
        return None;
    }
    let (mut failing, mut working) = (Vec::new(), Vec::new());
    for (name, seen) in &first_seen {
        // Tap rx = from the guest, tap tx = toward it.
        let sent = rise(&view.link_counter(name, |s| s.rx_packets), 0.0, end);
        let got = rise(&view.link_counter(name, |s| s.tx_packets), 0.0, end);
        if sent >= 3.0 && got == 0.0 {
            failing.push((*seen, name.clone()));
        } else if got > 0.0 {
            working.push((*seen, name.clone()));
        }
    }
    let newest_working = working.iter().map(|w| w.0).fold(f64::MIN, f64::max);
    let oldest_failing = failing.iter().map(|w| w.0).fold(f64::MAX, f64::min);
    let history_start = view
        .samples
        .first()
        .map(|s| view.rel(s.ts_unix_ns))
        .unwrap_or(0.0);
    if failing.is_empty()
        || working.is_empty()
        || oldest_failing <= newest_working
        || oldest_failing <= history_start + 0.5
    {
        return None;
    }
    let mut e = vec![Evidence::state(
        oldest_failing,
        format!(
            "{} of {} guest MACs on the host when the newest vNIC appeared",
            first_seen.len(),
            view.guest_macs.len().max(first_seen.len())
        ),
    )];
    for (t, n) in &failing {
        let dom = view.vnics.get(n).map(|v| v.domain.as_str()).unwrap_or("");
        let tx = view.link_counter(n, |s| s.tx_packets);
        e.push(counter_evidence(
            &format!("{n} tx_packets"),
            &tx,
            0.0,
            end,
            format!("{n} ({dom}), the newest (appeared at {t:+.1} s): sends, receives nothing"),
        ));
    }
    e.push(Evidence::state(
        0.0,
        format!("{} older vNICs still receive", working.len()),
    ));
    finding(
        "F10",
        "an upstream MAC limit / port security: only the newest guests' MACs are refused by the switch",
        0.7,
        e,
        &[
            "the switch port's MAC limit (port-security maximum) vs the guests' MACs on this host",
            "whether an evacuation or migration just moved guests here",
        ],
        failing.into_iter().map(|f| f.1).collect(),
    )
}

/// F18: VLAN filtering: a port lost its PVID or a VLAN the uplink needs.
pub fn f18_vlan(view: &View, cnc: &mut Vec<String>) -> Option<Finding> {
    let filtering: BTreeSet<String> = view
        .samples
        .iter()
        .flat_map(|s| s.bridges.iter().flatten())
        .filter(|b| b.vlan_filtering == Some(true))
        .map(|b| b.name.clone())
        .collect();
    if filtering.is_empty() {
        if view.has(|s| {
            s.bridges
                .iter()
                .flatten()
                .any(|b| b.vlan_filtering.is_none())
        }) {
            cnc.push("bridge vlan_filtering unknown in the samples: F18 not checked".into());
        }
        return None;
    }
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    let mut ifs = BTreeSet::new();
    let mut prev: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for s in &view.samples {
        let t = view.rel(s.ts_unix_ns);
        for b in s
            .bridges
            .iter()
            .flatten()
            .filter(|b| filtering.contains(&b.name))
        {
            for p in &b.ports {
                let vids: BTreeSet<u16> = p.vlans.iter().map(|v| v.vid).collect();
                if let Some(was) = prev.insert(p.name.clone(), vids.clone()) {
                    let gone: Vec<u16> = was.difference(&vids).copied().collect();
                    if !gone.is_empty() && (-600.0..=10.0).contains(&t) {
                        e.push(Evidence::state(
                            t,
                            format!(
                                "{}: port {} lost VLAN {gone:?} (now {vids:?})",
                                b.name, p.name
                            ),
                        ));
                        ifs.insert(p.name.clone());
                        conf = conf.max(0.85);
                    }
                }
            }
        }
    }
    // Static mismatch at the collapse: a vNIC's VLAN the uplink does not carry, or no PVID.
    if let Some(s) = view.sample_at(0.5) {
        for b in s
            .bridges
            .iter()
            .flatten()
            .filter(|b| filtering.contains(&b.name))
        {
            let up: BTreeSet<u16> = b
                .ports
                .iter()
                .filter(|p| view.uplinks.contains(&p.name))
                .flat_map(|p| p.vlans.iter().map(|v| v.vid))
                .collect();
            for p in b.ports.iter().filter(|p| view.is_vnic(&p.name)) {
                let pvid = p.vlans.iter().find(|v| v.pvid).map(|v| v.vid);
                match pvid {
                    None => {
                        e.push(Evidence::state(
                            view.rel(s.ts_unix_ns),
                            format!(
                                "{}: vNIC {} has no PVID: its untagged frames are dropped",
                                b.name, p.name
                            ),
                        ));
                        ifs.insert(p.name.clone());
                        conf = conf.max(0.65);
                    }
                    Some(v) if !up.contains(&v) => {
                        e.push(Evidence::state(
                            view.rel(s.ts_unix_ns),
                            format!(
                                "{}: vNIC {} is on VLAN {v}, which no uplink port carries",
                                b.name, p.name
                            ),
                        ));
                        ifs.insert(p.name.clone());
                        conf = conf.max(0.65);
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(t) = view
        .files
        .iter()
        .find(|(n, _)| n.starts_with("deep/bridge-vlan"))
    {
        if conf > 0.0 {
            e.push(Evidence::file(format!(
                "{} holds `bridge -d vlan show` at the incident",
                t.0
            )));
        }
    }
    if conf == 0.0 {
        return None;
    }
    finding(
        "F18",
        "VLAN filtering: a port lost its PVID or a VLAN its guests need (frames dropped at the bridge)",
        conf,
        e,
        &[
            "bridge -d vlan show (deep/bridge-vlan.txt) against the intended VLAN plan",
            "what removed it: a network agent resync, a VM restart re-plugging its port",
        ],
        ifs.into_iter().collect(),
    )
}

/// F19: multicast snooping without a querier (IPv6 neighbour discovery fails).
pub fn f19_mcast_snooping(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let s = view.sample_at(0.0)?;
    let risky: Vec<String> = s
        .bridges
        .iter()
        .flatten()
        .filter(|b| b.multicast_snooping == Some(true) && b.multicast_querier == Some(false))
        .map(|b| b.name.clone())
        .collect();
    if risky.is_empty() {
        return None;
    }
    // The symptom: IPv6 neighbours failing while IPv4 is fine.
    let failed6 = view.series(|s| {
        s.neighbours.as_ref().map(|n| {
            n.by_state
                .get("inet6")
                .map(|m| {
                    (m.get("failed").copied().unwrap_or(0)
                        + m.get("incomplete").copied().unwrap_or(0)) as f64
                })
                .unwrap_or(0.0)
        })
    });
    let grew = rise(&failed6, -300.0, end(view));
    if grew < 3.0 {
        return None;
    }
    finding(
        "F19",
        "multicast snooping without a querier: IPv6 neighbour discovery stops after one membership interval",
        0.45,
        vec![
            Evidence::state(view.rel(s.ts_unix_ns), format!("{}: multicast_snooping 1, multicast_querier 0", risky.join(", "))),
            counter_evidence("inet6 failed+incomplete neighbours", &failed6, -300.0, end(view), format!("IPv6 neighbours failing: +{grew:.0}")),
        ],
        &[
            "bridge mdb show; whether a querier exists on the VLAN",
            "echo 1 > /sys/class/net/BR/bridge/multicast_querier (or snooping off) as a test",
        ],
        risky,
    )
}
