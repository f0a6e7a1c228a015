//! Catalogue group "guest datapath and lifecycle": F14 a tap not drained
//! (vhost-net / qemu stuck), F22 the OOM killer takes qemu or dnsmasq, F26
//! live migration (and a lost RARP after it).

use std::collections::BTreeSet;

use super::{finding, kmsg_evidence, re};
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

/// F14: a guest stopped draining its tap: tx_dropped (toward the guest) rises, tx_packets flat.
pub fn f14_tap_not_drained(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let end = end(view);
    let from = -60.0;
    let mut e = Vec::new();
    let mut ifs = Vec::new();
    let names: BTreeSet<String> = view
        .samples
        .last()
        .into_iter()
        .flat_map(|s| s.links.iter().flatten())
        .filter(|l| view.is_vnic(&l.name))
        .map(|l| l.name.clone())
        .collect();
    for n in &names {
        let drops = view.link_counter(n, |s| s.tx_dropped);
        let sent = view.link_counter(n, |s| s.tx_packets);
        let (d, s) = (rise(&drops, from, end), rise(&sent, from, end));
        if d >= 10.0 && d > s {
            let v = view.vnics.get(n);
            let paused = view
                .sample_at(end)
                .and_then(|x| x.libvirt.as_ref())
                .and_then(|l| {
                    l.domains
                        .iter()
                        .find(|d| Some(&d.name) == v.map(|v| &v.domain))
                })
                .is_some_and(|d| d.state == "paused");
            if paused {
                continue; // a paused guest does not drain its tap, by design
            }
            e.push(counter_evidence(
                &format!("{n} tx_dropped"),
                &drops,
                from,
                end,
                format!(
                    "{n}{}: {d:.0} packets dropped toward the guest, {s:.0} delivered",
                    v.map(|v| format!(" ({})", v.domain)).unwrap_or_default()
                ),
            ));
            ifs.push(n.clone());
        }
    }
    for x in &view.events {
        if let EventKind::GuestCutOff { iface, domain, .. } = &x.kind {
            if ifs.contains(iface) {
                e.push(Evidence::event(
                    view.rel(x.ts_unix_ns),
                    format!("detector: guest {domain} on {iface} cut off"),
                ));
            }
        }
    }
    if ifs.is_empty() {
        return None;
    }
    let conf = if ifs.len() > 1 && ifs.len() == names.len() {
        0.8
    } else {
        0.75
    };
    finding(
        "F14",
        "a guest stopped draining its tap (qemu / vhost-net stuck): its queue overflows and it is cut off",
        conf,
        e,
        &[
            "the qemu process of that domain and its vhost-<pid> thread (state, CPU, stack: cat /proc/PID/stack)",
            "txqueuelen of the tap; whether the guest itself hangs (virsh console, qemu monitor)",
        ],
        ifs,
    )
}

/// F22: the OOM killer took a process (qemu → one guest gone; dnsmasq → DHCP, F13).
pub fn f22_oom(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let lines = kmsg_evidence(view, "F22", 6);
    if lines.is_empty() {
        return None;
    }
    let kill = re(r"[Oo]ut of memory: Kill(?:ed)? process (\d+) \(([^)]+)\)");
    let mut victims = Vec::new();
    let mut t_kill = None;
    for x in &lines {
        if let Some(c) = kill.captures(&x.what) {
            victims.push(c[2].to_string());
            t_kill.get_or_insert(x.t_rel_s);
        }
    }
    let mut e = lines;
    let mut ifs = Vec::new();
    let mut conf = 0.45;
    let vm = victims
        .iter()
        .any(|v| v.starts_with("qemu") || v.starts_with("CPU ") || v.contains("kvm"));
    let dns = victims.iter().any(|v| v.contains("dnsmasq"));
    if vm || dns {
        conf = 0.8;
    }
    if let Some(t) = t_kill {
        for x in &view.events {
            let tx = view.rel(x.ts_unix_ns);
            if (tx - t).abs() > 10.0 {
                continue;
            }
            match &x.kind {
                EventKind::Libvirt {
                    domain,
                    event,
                    detail,
                    ..
                } if (event == "stopped" && (detail == "failed" || detail == "crashed"))
                    || event == "crashed" =>
                {
                    e.push(Evidence::event(
                        tx,
                        format!("libvirt: domain {domain} {event} ({detail})"),
                    ));
                    conf = 0.9;
                    ifs.extend(
                        view.vnics
                            .values()
                            .filter(|v| &v.domain == domain)
                            .map(|v| v.ifname.clone()),
                    );
                }
                EventKind::Link { action, name, .. }
                    if action == "del" && view.vnics.contains_key(name) =>
                {
                    e.push(Evidence::event(
                        tx,
                        format!("{name}: vNIC removed (RTM_DELLINK)"),
                    ));
                    ifs.push(name.clone());
                }
                _ => {}
            }
        }
    }
    ifs.sort();
    ifs.dedup();
    finding(
        "F22",
        if dns {
            "the OOM killer took dnsmasq: guests lose DHCP one by one (see F13)".to_string()
        } else if vm {
            "the OOM killer took a guest's qemu: that guest is gone".to_string()
        } else {
            format!("the OOM killer ran (took {})", if victims.is_empty() { "a process".to_string() } else { victims.join(", ") })
        },
        conf,
        e,
        &[
            "memory overcommit on the host (MemAvailable in the samples, hugepages, the guests' sizes); the OOM report's task list in deep/dmesg.txt",
            "restart the domain; set the qemu processes' oom_score_adj / cgroup memory limits deliberately",
        ],
        ifs,
    )
}

/// F26: live migration (normal churn), and a missing RARP after it.
pub fn f26_migration(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    let mut migrated_in = Vec::new();
    for x in &view.events {
        if let EventKind::Libvirt {
            domain,
            event,
            detail,
            ..
        } = &x.kind
        {
            let t = view.rel(x.ts_unix_ns);
            if detail == "migrated" && (-600.0..=60.0).contains(&t) {
                e.push(Evidence::event(
                    t,
                    format!("libvirt: {domain} {event} (migrated)"),
                ));
                if event == "started" || event == "resumed" {
                    migrated_in.push((t, domain.clone()));
                }
            }
        }
    }
    if e.is_empty() {
        return None;
    }
    let mut conf = 0.35;
    let mut ifs = Vec::new();
    if let Some(c) = &view.capture {
        for (t, dom) in &migrated_in {
            let macs: Vec<&String> = view
                .guest_macs
                .iter()
                .filter(|(_, d)| *d == dom)
                .map(|(m, _)| m)
                .collect();
            let rarp = c.packets.iter().any(|p| {
                p.kind == PacketKind::Rarp
                    && macs.contains(&&p.src_mac)
                    && (view.rel(p.ts_unix_ns) - t).abs() < 10.0
            });
            if rarp {
                e.push(Evidence::packet(
                    *t,
                    format!("RARP from {dom} after the migration (the switch re-learned it)"),
                ));
            } else {
                e.push(Evidence::packet(*t, format!("no RARP from {dom} within 10 s of the migration: the switch still sends its traffic to the old host")));
                conf = 0.65;
                ifs.extend(
                    view.vnics
                        .values()
                        .filter(|v| &v.domain == dom)
                        .map(|v| v.ifname.clone()),
                );
            }
        }
    }
    finding(
        "F26",
        if conf > 0.5 {
            "a guest migrated here and announced nothing (no RARP): the network still sends its traffic to the old host"
        } else {
            "live migration (normal churn): guests moved; brief loss for them only"
        },
        conf,
        e,
        &[
            "the migration's timing against the loss; the guest's virtio announce (qemu announce-self)",
            "the switch's MAC table for the guest's MAC",
        ],
        ifs,
    )
}
