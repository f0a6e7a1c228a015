//! Catalogue group "network services": F13 DHCP server gone, F25 Open
//! vSwitch revalidator stall / flow limit, F29 DHCP pool exhausted.

use std::collections::BTreeMap;

use super::{finding, re};
use crate::analyze::packets::PacketKind;
use crate::analyze::view::View;
use crate::analyze::{Evidence, Finding};

/// F13: guests ask for DHCP and nobody answers.
pub fn f13_dhcp(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let c = view.capture.as_ref()?;
    // xid → (first request time, client MAC); answered xids.
    let mut asked: BTreeMap<u32, (i64, String)> = BTreeMap::new();
    let mut answered = std::collections::BTreeSet::new();
    for p in &c.packets {
        if let PacketKind::Dhcp {
            msg_type,
            xid,
            client_mac,
        } = &p.kind
        {
            match msg_type {
                1 | 3 => {
                    asked
                        .entry(*xid)
                        .or_insert((p.ts_unix_ns, client_mac.clone()));
                }
                2 | 5 | 6 => {
                    answered.insert(*xid);
                }
                _ => {}
            }
        }
    }
    let last = c.last_ns.unwrap_or(0);
    let mut clients: BTreeMap<String, (i64, u32)> = BTreeMap::new();
    for (xid, (t, mac)) in &asked {
        // Only requests the capture could have seen answered (5 s after).
        if !answered.contains(xid) && last - t > 5_000_000_000 {
            let e = clients.entry(mac.clone()).or_insert((*t, 0));
            e.1 += 1;
        }
    }
    let answered_any = !answered.is_empty();
    if clients.is_empty() {
        return None;
    }
    let mut e = Vec::new();
    for (mac, (t, n)) in clients.iter().take(6) {
        let who = view
            .guest_macs
            .get(mac)
            .cloned()
            .unwrap_or_else(|| mac.clone());
        e.push(Evidence::packet(
            view.rel(*t),
            format!("{who}: {n} DHCP DISCOVER/REQUEST without OFFER/ACK"),
        ));
    }
    let conf = match (clients.len(), answered_any) {
        (n, false) if n >= 2 => 0.8,
        (_, false) => 0.6,
        (_, true) => 0.45,
    };
    finding(
        "F13",
        "the DHCP server does not answer: guests lose their leases one by one",
        conf,
        e,
        &[
            "the DHCP server (dnsmasq of the network, or the neutron DHCP agent): running? OOM-killed (F22)?",
            "its log and lease file; the guests' lease times",
        ],
        vec![],
    )
}

/// ovs-vswitchd log lines: "2023-12-13T06:55:31.474Z|97312|module|LEVEL|text".
fn ovs_lines(view: &View) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    for (name, text) in view
        .files
        .iter()
        .filter(|(n, _)| n.contains("ovs-vswitchd"))
    {
        for l in text.lines() {
            let Some((ts, _)) = l.split_once('|') else {
                continue;
            };
            let Some(t) = crate::store::history::parse_time(ts.trim(), 0).ok() else {
                continue;
            };
            out.push((view.rel(t), format!("{name}: {l}")));
        }
    }
    out
}

/// F25: Open vSwitch revalidator stall / datapath flow limit.
pub fn f25_ovs(view: &View, cnc: &mut Vec<String>) -> Option<Finding> {
    let lines = ovs_lines(view);
    let ovs_links = view.has(|s| s.links.iter().flatten().any(|l| l.kind == "openvswitch"));
    if lines.is_empty() {
        if ovs_links {
            cnc.push("Open vSwitch datapath present but no ovs-vswitchd log in the bundle: F25 not checked".into());
        }
        return None;
    }
    let poll = re(r"Unreasonably long (\d+)ms poll interval");
    let limit = re(r"reached the dynamic limit of (\d+) flows");
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    let (mut n_poll, mut n_limit) = (0, 0);
    for (t, l) in &lines {
        if !(-600.0..=60.0).contains(t) {
            continue;
        }
        if limit.is_match(l) {
            n_limit += 1;
            if n_limit <= 2 {
                e.push(Evidence {
                    kind: crate::analyze::EvidenceKind::File,
                    ..Evidence::state(*t, l.clone())
                });
            }
            conf = conf.max(0.8);
        } else if let Some(c) = poll.captures(l) {
            let ms: u64 = c[1].parse().unwrap_or(0);
            if ms >= 1000 {
                n_poll += 1;
                if n_poll <= 3 {
                    e.push(Evidence {
                        kind: crate::analyze::EvidenceKind::File,
                        ..Evidence::state(*t, l.clone())
                    });
                }
                conf = conf.max(if ms >= 5000 { 0.75 } else { 0.6 });
            }
        }
    }
    if conf == 0.0 {
        return None;
    }
    if n_limit > 2 || n_poll > 3 {
        e.push(Evidence::file(format!(
            "{n_limit} flow-limit and {n_poll} long-poll lines in the window"
        )));
    }
    if n_limit > 0 && n_poll > 0 {
        conf += 0.08;
    }
    finding(
        "F25",
        "Open vSwitch stalled: revalidators too slow, the datapath hit its flow limit, upcalls are dropped",
        conf.min(0.9),
        e,
        &[
            "ovs-appctl upcall/show (flow limit, dump duration); ovs-appctl coverage/show",
            "what floods the datapath with new flows (a scan, many short connections); other_config:max-idle / flow-limit",
        ],
        vec![],
    )
}

/// F29: the DHCP pool is exhausted (NAKs, "no address available").
pub fn f29_dhcp_pool(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut conf: f64 = 0.0;
    if let Some(c) = &view.capture {
        let naks: Vec<_> = c
            .packets
            .iter()
            .filter(|p| matches!(p.kind, PacketKind::Dhcp { msg_type: 6, .. }))
            .collect();
        if let Some(p) = naks.first() {
            e.push(Evidence::packet(
                view.rel(p.ts_unix_ns),
                format!("{} DHCP NAKs (first to {})", naks.len(), p.dst_mac),
            ));
            conf = 0.7;
        }
    }
    let pat = re(r"no address available");
    for (name, text) in view.files.iter().filter(|(n, _)| n.contains("dnsmasq")) {
        let n = text.lines().filter(|l| pat.is_match(l)).count();
        if let Some(l) = text.lines().find(|l| pat.is_match(l)) {
            e.push(Evidence::file(format!("{name}: {n} lines like: {l}")));
            conf = conf.max(0.8);
        }
    }
    if conf == 0.0 {
        return None;
    }
    finding(
        "F29",
        "the DHCP pool is exhausted (or its hosts file is stale after churn): new or renewing guests get no address",
        conf,
        e,
        &[
            "dnsmasq's range and lease file against the guests that exist; stale hosts entries of deleted VMs",
        ],
        vec![],
    )
}
