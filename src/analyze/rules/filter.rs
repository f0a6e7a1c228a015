//! Catalogue group "netfilter and routing": F11 ruleset change with
//! br_netfilter / bridge-family drops, F12 libvirt nwfilter / ebtables
//! rebuilt, F27 rp_filter drops.

use super::finding;
use crate::analyze::view::{counter_evidence, rise, View};
use crate::analyze::{Evidence, Finding};
use crate::sample::EventKind;

/// Ruleset generation changes in [-600 s, +2 s]: (t, from, to).
fn genid_changes(view: &View) -> Vec<(f64, u32, u32)> {
    let mut out = Vec::new();
    let mut prev: Option<u32> = None;
    for s in &view.samples {
        let Some(g) = s.netfilter.as_ref().and_then(|n| n.nft_genid) else {
            continue;
        };
        if let Some(p) = prev.filter(|p| *p != g) {
            let t = view.rel(s.ts_unix_ns);
            if (-600.0..=2.0).contains(&t) {
                out.push((t, p, g));
            }
        }
        prev = Some(g);
    }
    out
}

/// libvirtd reconnects (the agent lost and regained libvirt) near `t`.
/// A libvirtd restart: the connection lost, or back after being lost. The
/// agent's own first connection (at its start) is not a restart.
fn libvirt_restart_near(view: &View, t: f64, within_s: f64) -> Option<(f64, String)> {
    let mut was_lost = false;
    view.events.iter().find_map(|x| match &x.kind {
        EventKind::LibvirtConnection { connected, uri, .. } => {
            let restart = !*connected || was_lost;
            was_lost |= !*connected;
            let tx = view.rel(x.ts_unix_ns);
            (restart && (tx - t).abs() <= within_s).then(|| {
                (
                    tx,
                    format!(
                        "libvirt connection {} ({uri}): libvirtd restarted",
                        if *connected { "back" } else { "lost" }
                    ),
                )
            })
        }
        _ => None,
    })
}

/// F11: the firewall ruleset changed just before the collapse.
pub fn f11_ruleset(view: &View, cnc: &mut Vec<String>) -> Option<Finding> {
    if !view.has(|s| s.netfilter.as_ref().is_some_and(|n| n.nft_genid.is_some())) {
        cnc.push(
            "no nf_tables generation id in the samples: ruleset changes (F11/F12) not checked"
                .into(),
        );
        return None;
    }
    let ch = genid_changes(view);
    if ch.is_empty() {
        return None;
    }
    let mut e: Vec<Evidence> = ch
        .iter()
        .take(5)
        .map(|(t, p, g)| Evidence {
            series: Some("nft genid".into()),
            before: Some(*p as f64),
            after: Some(*g as f64),
            ..Evidence::state(*t, format!("nf_tables ruleset generation {p} → {g} (a commit: nft, iptables-nft, ebtables-nft)"))
        })
        .collect();
    let mut conf = 0.8;
    let nf = view
        .sample_at(0.0)
        .and_then(|s| s.netfilter.clone())
        .unwrap_or_default();
    if nf.bridge_nf_call_iptables == Some(true) {
        e.push(Evidence::state(0.0, "net.bridge.bridge-nf-call-iptables = 1: bridged guest traffic passes the iptables FORWARD chain"));
        conf += 0.05;
    }
    if !nf.legacy_tables.is_empty() {
        e.push(Evidence::state(0.0, format!("legacy iptables tables also loaded: {} (their changes do not move the nft generation)", nf.legacy_tables.join(", "))));
    }
    // Traffic through the uplink stopped right after the change: the step.
    let (t0, _, _) = ch[ch.len() - 1];
    for u in &view.uplinks {
        let tx = view.link_counter(u, |s| s.tx_packets);
        let (before, after) = (rise(&tx, t0 - 10.0, t0), rise(&tx, t0 + 0.5, t0 + 10.0));
        if before > 0.0 && after < before * 0.05 {
            e.push(counter_evidence(&format!("{u} tx_packets"), &tx, t0, t0 + 10.0, format!("{u}: {before:.0} packets out in the 10 s before the change, {after:.0} in the 10 s after")));
            conf += 0.03;
        }
    }
    finding(
        "F11",
        "a firewall ruleset change (nft/iptables/ebtables: bridge family or br_netfilter FORWARD) cut the guests off",
        conf,
        e,
        &[
            "diff the ruleset: deep/nft-ruleset.txt, deep/iptables-save.txt, deep/ebtables.txt in the bundle against a healthy host",
            "what reloaded it then (a firewall service, config management, a network agent); FORWARD policy and its counters",
        ],
        vec![],
    )
}

/// F12: libvirt's nwfilter / ebtables rebuilt at a libvirtd restart.
pub fn f12_nwfilter(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let ch = genid_changes(view);
    let (t, p, g) = *ch.last()?;
    let (tr, what) = libvirt_restart_near(view, t, 60.0)?;
    finding(
        "F12",
        "libvirt's nwfilter (ebtables/nft bridge rules) was rebuilt at a libvirtd restart and now drops guest traffic",
        0.86,
        vec![
            Evidence::event(tr, what),
            Evidence::state(t, format!("nf_tables ruleset generation {p} → {g} at the restart")),
        ],
        &[
            "ebtables -L / nft list ruleset (bundle deep state): libvirt-* chains, missing guest rules",
            "virsh nwfilter-list and the domains' <filterref>; libvirtd's log at the restart",
        ],
        vec![],
    )
}

/// F27: reverse-path filter drops (routed setups).
pub fn f27_rp_filter(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let s = view.series(|s| {
        s.snmp
            .as_ref()
            .and_then(|n| n.counters.get("TcpExt.IPReversePathFilter"))
            .map(|v| *v as f64)
    });
    let end = view
        .samples
        .last()
        .map(|x| view.rel(x.ts_unix_ns))
        .unwrap_or(0.0)
        .max(1.0);
    let d = rise(&s, -60.0, end);
    if d < 10.0 {
        return None;
    }
    finding(
        "F27",
        "reverse-path filtering drops packets (asymmetric routing after a route or sysctl change)",
        if d >= 100.0 { 0.6 } else { 0.45 },
        vec![counter_evidence(
            "TcpExt.IPReversePathFilter",
            &s,
            -60.0,
            end,
            format!("{d:.0} packets dropped by rp_filter"),
        )],
        &[
            "sysctl net.ipv4.conf.*.rp_filter; ip route show table all (deep/ip-route.txt)",
            "a recent route change: which path replies take",
        ],
        vec![],
    )
}
