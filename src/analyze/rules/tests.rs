//! Rule unit tests on views built in memory from the lab's base sample
//! (tests/fixtures/replay/base-sample.json) — the rows no replay fixture or
//! lab scenario drives end to end, and the ranking between a cause and its
//! symptoms. The replay and lab tests exercise the rules through real bundles.

use std::collections::BTreeMap;

use super::*;
use crate::analyze::packets::{build, read_pcapng};
use crate::analyze::{analyze, AnalyzeConfig};
use crate::bundle::{Incident, Manifest};
use crate::sample::{Event, EventKind, Sample};

const T0: i64 = 1_425_004_200_000_000_000;

fn base() -> Sample {
    serde_json::from_str(include_str!(
        "../../../tests/fixtures/replay/base-sample.json"
    ))
    .unwrap()
}

/// Samples from -120 s to +20 s; `edit(t, sample)` shapes each.
fn samples(edit: impl Fn(f64, &mut Sample)) -> Vec<Sample> {
    (-120..=20)
        .map(|i| {
            let mut s = base();
            s.ts_unix_ns = T0 + i as i64 * 1_000_000_000;
            s.mono_ns = 1_000_000_000_000 + ((i + 120) as u64) * 1_000_000_000;
            s.boot_ns = s.mono_ns;
            edit(i as f64, &mut s);
            s
        })
        .collect()
}

fn view(s: Vec<Sample>, events: Vec<Event>, pcap: Option<Vec<u8>>) -> View {
    let m = Manifest {
        format_version: 1,
        host: "h".into(),
        incident: Incident {
            id: "t".into(),
            ts_unix_ns: T0,
            ..Default::default()
        },
        ..Default::default()
    };
    let cap = pcap.map(|b| read_pcapng(&b[..], 1000).unwrap());
    View::new(m, "test".into(), s, events, BTreeMap::new(), cap, vec![])
}

fn ev(t: f64, kind: EventKind) -> Event {
    Event {
        ts_unix_ns: T0 + (t * 1e9) as i64,
        mono_ns: 0,
        kind,
    }
}

fn link<'a>(s: &'a mut Sample, n: &str) -> &'a mut crate::sample::Link {
    s.links
        .as_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l.name == n)
        .unwrap()
}

fn top(v: &View) -> String {
    let r = analyze(v, &AnalyzeConfig::default());
    r.findings.first().map(|f| f.id.clone()).unwrap_or_default()
}

#[test]
fn one_rule_per_catalogue_row() {
    let ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
    let want: Vec<String> = (1..=29).map(|i| format!("F{i}")).collect();
    assert_eq!(ids, want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
}

#[test]
fn a_quiet_history_has_no_finding() {
    let v = view(samples(|_, _| {}), vec![], None);
    let r = analyze(&v, &AnalyzeConfig::default());
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn bpdus_out_of_the_uplink_outrank_the_carrier_loss_they_cause_f9() {
    let s = samples(|t, s| {
        if t >= 0.0 {
            link(s, "uplink0").carrier = Some(false);
        }
    });
    let pcap = build::pcapng(
        &["uplink0"],
        &[(T0 - 3_000_000_000, 0, build::bpdu("02:00:00:00:00:01"))],
    );
    assert_eq!(top(&view(s.clone(), vec![], Some(pcap))), "F9");
    assert_eq!(top(&view(s, vec![], None)), "F2");
}

#[test]
fn a_ruleset_change_at_a_libvirtd_restart_is_nwfilter_f12() {
    let s = samples(|t, s| {
        s.netfilter.get_or_insert_with(Default::default).nft_genid =
            Some(if t < -4.0 { 7 } else { 8 });
    });
    let restart = vec![
        ev(
            -6.0,
            EventKind::LibvirtConnection {
                uri: "qemu:///system".into(),
                connected: false,
                error: "EOF".into(),
            },
        ),
        ev(
            -4.5,
            EventKind::LibvirtConnection {
                uri: "qemu:///system".into(),
                connected: true,
                error: String::new(),
            },
        ),
    ];
    assert_eq!(top(&view(s.clone(), restart, None)), "F12");
    // The agent's own first connection (at its start) is no libvirtd restart.
    let first_connect = vec![ev(
        -4.5,
        EventKind::LibvirtConnection {
            uri: "qemu:///system".into(),
            connected: true,
            error: String::new(),
        },
    )];
    assert_eq!(top(&view(s.clone(), first_connect, None)), "F11");
    assert_eq!(top(&view(s, vec![], None)), "F11");
}

#[test]
fn only_the_newest_guests_failing_is_a_mac_limit_f10() {
    let s = samples(|t, s| {
        let k = (t + 120.0) as u64;
        for n in ["vnet0", "vnet1", "vnet2"] {
            let l = link(s, n);
            l.stats.rx_packets = 1000 + k * 10;
            l.stats.tx_packets = 1000 + k * 10;
        }
        if t < -30.0 {
            s.links.as_mut().unwrap().retain(|l| l.name != "vnet3");
        } else {
            let l = link(s, "vnet3");
            l.stats.rx_packets = 10 + k * 10;
            l.stats.tx_packets = if t < 0.0 { k } else { 90 };
        }
    });
    assert_eq!(top(&view(s, vec![], None)), "F10");
}

#[test]
fn unanswered_dhcp_is_f13_and_naks_are_f29() {
    let s = samples(|_, _| {});
    let g1 = "52:54:00:00:00:01";
    let g2 = "52:54:00:00:00:02";
    let frames = vec![
        (T0 - 20_000_000_000, 1, build::dhcp(g1, 1, 11, false)),
        (T0 - 19_000_000_000, 1, build::dhcp(g2, 3, 12, false)),
        (T0 + 10_000_000_000, 1, build::dhcp(g1, 1, 13, false)),
    ];
    assert_eq!(
        top(&view(
            s.clone(),
            vec![],
            Some(build::pcapng(&["uplink0", "vnet0"], &frames))
        )),
        "F13"
    );
    let naks = vec![
        (T0 - 5_000_000_000, 0, build::dhcp(g1, 3, 21, false)),
        (T0 - 4_900_000_000, 0, build::dhcp(g1, 6, 21, true)),
    ];
    assert_eq!(
        top(&view(s, vec![], Some(build::pcapng(&["uplink0"], &naks)))),
        "F29"
    );
}

#[test]
fn a_migration_without_rarp_is_f26() {
    let s = samples(|_, _| {});
    let mig = vec![ev(
        -5.0,
        EventKind::Libvirt {
            domain: "guest1".into(),
            uuid: String::new(),
            event: "resumed".into(),
            detail: "migrated".into(),
        },
    )];
    let other = build::pcapng(
        &["vnet1"],
        &[(T0 - 1_000_000_000, 0, build::bpdu("52:54:00:00:00:09"))],
    );
    let v = view(s.clone(), mig.clone(), Some(other));
    let f = &analyze(&v, &AnalyzeConfig::default()).findings;
    let f26 = f.iter().find(|f| f.id == "F26").expect("F26");
    assert!((f26.confidence - 0.65).abs() < 1e-9);
    let rarp = build::pcapng(
        &["vnet1"],
        &[(T0 - 4_000_000_000, 0, build::rarp("52:54:00:00:00:02"))],
    );
    let v = view(s, mig, Some(rarp));
    let f = analyze(&v, &AnalyzeConfig::default()).findings;
    assert!(f.iter().find(|f| f.id == "F26").unwrap().confidence < 0.5);
}

#[test]
fn bridge_mac_change_at_a_port_join_is_f5() {
    let s = samples(|t, s| {
        if t >= -2.0 {
            s.bridges.as_mut().unwrap()[0].mac = "02:00:00:00:00:00".into();
        }
    });
    assert_eq!(top(&view(s, vec![], None)), "F5");
}

#[test]
fn softnet_rp_filter_and_ra_rules_fire_on_their_counters() {
    let s = samples(|t, s| {
        let k = (t + 120.0).max(0.0) as u64;
        s.softnet.as_mut().unwrap()[1].dropped = 6399 + k * 20;
    });
    assert_eq!(top(&view(s, vec![], None)), "F15");
    let s = samples(|t, s| {
        let k = (t + 120.0).max(0.0) as i64;
        s.snmp
            .get_or_insert_with(Default::default)
            .counters
            .insert("TcpExt.IPReversePathFilter".into(), k * 5);
    });
    assert_eq!(top(&view(s, vec![], None)), "F27");
    let mut ra = build::dhcp("52:54:00:00:00:03", 1, 1, false);
    ra.clear();
    let b =
        etherparse::PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 3], [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                255,
            )
            .icmpv6(etherparse::Icmpv6Type::Unknown {
                type_u8: 134,
                code_u8: 0,
                bytes5to8: [64, 0, 7, 8],
            });
    b.write(&mut ra, &[0u8; 8]).unwrap();
    let s = samples(|_, _| {});
    assert_eq!(
        top(&view(
            s,
            vec![],
            Some(build::pcapng(&["vnet2"], &[(T0 - 2_000_000_000, 0, ra)]))
        )),
        "F20"
    );
}

#[test]
fn ipv6_neighbours_failing_behind_snooping_without_querier_is_f19() {
    let s = samples(|t, s| {
        let n = s.neighbours.as_mut().unwrap();
        let failed = if t < -60.0 { 0 } else { 12 };
        n.by_state
            .entry("inet6".into())
            .or_default()
            .insert("failed".into(), failed);
    });
    assert_eq!(top(&view(s, vec![], None)), "F19");
}
