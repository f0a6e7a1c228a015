//! The detector's decisions on constructed sample series (the lab scenarios
//! are end-to-end tests in tests/detect.rs).

use super::*;
use crate::sample::{Bridge, BridgePort, Event, EventKind, Link, LinkStats};

/// A host: br0 with uplink0 and two guests; counters advance per `step`.
struct Host {
    t: u64,
    links: Vec<Link>,
    uplink_state: u8,
}

impl Host {
    fn new() -> Host {
        let mk = |i: u32, name: &str, mac: &str| Link {
            ifindex: i,
            name: name.into(),
            mac: mac.into(),
            operstate: "up".into(),
            carrier: Some(true),
            ..Default::default()
        };
        Host {
            t: 0,
            links: vec![
                mk(1, "br0", "02:00:00:00:00:01"),
                mk(2, "uplink0", "02:00:00:00:00:02"),
                mk(3, "vnet0", "fe:54:00:00:00:01"),
                mk(4, "vnet1", "fe:54:00:00:00:02"),
            ],
            uplink_state: 3,
        }
    }

    /// One second: guests send `g` pkt/s each, the uplink carries `up_tx` out and `up_rx` in,
    /// guests receive `to_g` each.
    fn step(&mut self, g: u64, up_tx: u64, up_rx: u64, to_g: u64) -> Sample {
        self.t += 1;
        let add = |s: &mut LinkStats, rx: u64, tx: u64| {
            s.rx_packets += rx;
            s.tx_packets += tx;
        };
        add(&mut self.links[1].stats, up_rx, up_tx);
        add(&mut self.links[2].stats, g, to_g);
        add(&mut self.links[3].stats, g, to_g);
        let port = |i: u32, n: &str, st: u8| BridgePort {
            ifindex: i,
            name: n.into(),
            state: st,
            ..Default::default()
        };
        Sample {
            seq: self.t,
            ts_unix_ns: (1_800_000_000 + self.t as i64) * 1_000_000_000,
            mono_ns: (1000 + self.t) * 1_000_000_000,
            boot_ns: (1000 + self.t) * 1_000_000_000,
            links: Some(self.links.clone()),
            bridges: Some(vec![Bridge {
                ifindex: 1,
                name: "br0".into(),
                ports: vec![
                    port(2, "uplink0", self.uplink_state),
                    port(3, "vnet0", 3),
                    port(4, "vnet1", 3),
                ],
                ..Default::default()
            }]),
            ..Default::default()
        }
    }
}

fn cfg() -> DetectConfig {
    DetectConfig {
        boot_grace_s: 0,
        ..Default::default()
    }
}

fn run(d: &mut Detector, prev: &mut Option<Sample>, s: Sample) -> Vec<Action> {
    let m = Model::new(&s, prev.as_ref());
    let a = d.observe(&s, &m);
    *prev = Some(s);
    a
}

fn incidents(a: &[Action]) -> usize {
    a.iter()
        .filter(|x| matches!(x, Action::Incident { .. }))
        .count()
}

#[test]
fn uplink_loss_collapses_after_two_samples_and_recovers_with_hysteresis() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    for _ in 0..5 {
        assert!(run(&mut d, &mut prev, h.step(2, 4, 4, 2)).is_empty());
    }
    assert_eq!(d.state, State::Healthy);
    assert_eq!(d.eligible(), 2);
    h.links[1].carrier = Some(false);
    let mut all = Vec::new();
    for _ in 0..2 {
        all.extend(run(&mut d, &mut prev, h.step(2, 0, 0, 0)));
    }
    assert_eq!(d.state, State::Collapsed);
    assert_eq!(incidents(&all), 1);
    assert!(all.iter().any(|a| matches!(
        a,
        Action::Transition {
            to: State::Suspect,
            ..
        }
    )));
    let reason = all
        .iter()
        .find_map(|a| {
            if let Action::Incident { reason, kind } = a {
                assert_eq!(*kind, IncidentKind::Collapse);
                Some(reason.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert!(
        reason.contains("no usable uplink") && reason.contains("carrier off"),
        "{reason}"
    );
    h.links[1].carrier = Some(true);
    run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    assert_eq!(d.state, State::Recovering);
    for _ in 0..4 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    assert_eq!(d.state, State::Healthy);
}

#[test]
fn guests_sending_with_nothing_leaving_is_a_collapse_but_idle_guests_prove_nothing() {
    let (mut h, mut d, mut prev) = (
        Host::new(),
        Detector::new(DetectConfig {
            responsive_s: 5,
            ..cfg()
        }),
        None,
    );
    for _ in 0..3 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    // Idle host: nothing moves anywhere. Not evidence, not a collapse; once
    // the guests were silent longer than responsive_s nothing can be judged.
    for _ in 0..10 {
        assert!(run(&mut d, &mut prev, h.step(0, 0, 0, 0)).is_empty());
    }
    assert_eq!((d.state, d.eligible()), (State::Healthy, 0));
    // They come back (two-way traffic): eligible again.
    for _ in 0..3 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    assert_eq!(d.eligible(), 2);
    // Guests send, the uplink stays silent (a FORWARD drop, say): once the
    // window no longer holds traffic from before, it is a collapse.
    let mut all = Vec::new();
    for _ in 0..5 {
        all.extend(run(&mut d, &mut prev, h.step(3, 0, 0, 0)));
    }
    assert_eq!(incidents(&all), 1);
    assert!(format!("{all:?}").contains("nothing left through the uplink"));
}

#[test]
fn a_blocked_uplink_port_is_unusable() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    for _ in 0..3 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    h.uplink_state = 0;
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(run(&mut d, &mut prev, h.step(2, 0, 0, 0)));
    }
    assert_eq!(incidents(&all), 1);
    assert!(format!("{all:?}").contains("port state 0"));
}

#[test]
fn a_short_flap_is_suspect_only_and_flaps_in_the_window_are_one_incident() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    for _ in 0..4 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    // One sample without carrier: suspect, no incident.
    h.links[1].carrier = Some(false);
    let a = run(&mut d, &mut prev, h.step(2, 0, 0, 0));
    assert_eq!(d.state, State::Suspect);
    assert_eq!(incidents(&a), 0);
    h.links[1].carrier = Some(true);
    run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    assert_eq!(d.state, State::Healthy);
    let mut n = 0;
    for _round in 0..3 {
        h.links[1].carrier = Some(false);
        for _ in 0..3 {
            n += incidents(&run(&mut d, &mut prev, h.step(2, 0, 0, 0)));
        }
        h.links[1].carrier = Some(true);
        for _ in 0..6 {
            run(&mut d, &mut prev, h.step(2, 4, 4, 2));
        }
    }
    assert_eq!(
        n, 1,
        "three collapses within the merge window are one incident"
    );
}

#[test]
fn booting_guests_are_not_evidence() {
    let (mut h, mut d, mut prev) = (
        Host::new(),
        Detector::new(DetectConfig {
            boot_grace_s: 30,
            ..Default::default()
        }),
        None,
    );
    h.links[1].carrier = Some(false);
    for _ in 0..10 {
        assert_eq!(incidents(&run(&mut d, &mut prev, h.step(2, 0, 0, 0))), 0);
    }
    assert_eq!(d.eligible(), 0);
    assert_eq!(d.total(), 2);
}

#[test]
fn one_guest_cut_off_is_reported_alone() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    for _ in 0..3 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    let mut all = Vec::new();
    for _ in 0..4 {
        let s = {
            let mut s = h.step(2, 4, 4, 2);
            // vnet1 gets nothing any more.
            let links = s.links.as_mut().unwrap();
            links[3].stats.tx_packets = prev.as_ref().unwrap().links.as_ref().unwrap()[3]
                .stats
                .tx_packets;
            h.links[3].stats.tx_packets = links[3].stats.tx_packets;
            s
        };
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(d.state, State::Healthy);
    assert_eq!(incidents(&all), 0);
    assert_eq!(
        all.iter()
            .filter(|a| matches!(a, Action::GuestCutOff { iface, .. } if iface == "vnet1"))
            .count(),
        1
    );
}

/// The churn benchmark's false positive: a guest whose conversation just
/// stopped, probed by the host every second, sends its answers (two in a
/// window) and receives only our probes — which is not being cut off.
#[test]
fn an_idle_guest_answering_our_probes_is_not_cut_off() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    let guest_probe = |n: u64| Probes {
        guests: vec![crate::sample::probes::GuestProbe {
            iface: "vnet1".into(),
            mac: "52:54:00:00:00:02".into(),
            sent: n,
            answered: n,
            last_answer_mono_ns: Some((1000 + n) * 1_000_000_000),
            ..Default::default()
        }],
        ..Default::default()
    };
    for _ in 0..3 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    let mut all = Vec::new();
    for n in 1..=6 {
        let mut s = h.step(2, 2, 2, 2);
        // vnet1 went idle: one probe toward it, one answer from it, a second.
        let links = s.links.as_mut().unwrap();
        let before = &prev.as_ref().unwrap().links.as_ref().unwrap()[3].stats;
        links[3].stats.rx_packets = before.rx_packets + 1;
        links[3].stats.tx_packets = before.tx_packets + 1;
        h.links[3].stats = links[3].stats;
        s.probes = Some(guest_probe(n));
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(d.state, State::Healthy);
    assert!(
        !all.iter().any(|a| matches!(a, Action::GuestCutOff { .. })),
        "{all:?}"
    );
}

use crate::sample::{Domain, FdbEntry, GatewayProbe, Libvirt, Probes, Vnic};

/// libvirt's view: two running domains whose vNICs are vnet0 and vnet1.
fn with_libvirt(mut s: Sample) -> Sample {
    let dom = |i: u32| Domain {
        name: format!("guest{i}"),
        uuid: format!("u{i}"),
        id: Some(i + 1),
        state: "running".into(),
        reason: "booted".into(),
        vnics: vec![Vnic {
            mac: format!("52:54:00:00:00:0{}", i + 1),
            bridge: "br0".into(),
            host_ifindex: Some(3 + i),
            host_ifname: Some(format!("vnet{i}")),
            ..Default::default()
        }],
        ..Default::default()
    };
    s.libvirt = Some(Libvirt {
        uri: "test:///x".into(),
        domains: vec![dom(0), dom(1)],
        xml_fetches: 0,
        age_ms: 0,
    });
    s
}

/// The gateway probe of br0 as the prober reports it.
fn probe(sent: u64, answered: u64, miss: u32, large_sent: u64, large_miss: u32) -> Probes {
    Probes {
        bridges: vec![GatewayProbe {
            bridge: "br0".into(),
            uplinks: vec!["uplink0".into()],
            gateway: Some("10.0.0.1".into()),
            gateway_source: "config".into(),
            arp_sent: sent,
            arp_answered: answered,
            arp_unanswered: sent - answered,
            consecutive_unanswered: miss,
            large_sent,
            large_consecutive_unanswered: large_miss,
            large_bytes: 1500,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn reasons(a: &[Action]) -> String {
    format!("{a:?}")
}

#[test]
fn a_gateway_that_stops_answering_is_a_collapse_one_that_never_answered_is_not() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    let mut all = Vec::new();
    // Never answered (a wrong gateway in the config): no signal.
    for i in 0..6 {
        let mut s = h.step(2, 4, 4, 2);
        s.probes = Some(probe(i, 0, i as u32, 0, 0));
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(incidents(&all), 0, "{all:?}");
    // Answering, then not: the uplink crossing broke beyond the counters
    // (guests' frames still leave; carrier and port state are fine).
    let mut answered = 0;
    for i in 6..20u64 {
        let broken = i >= 12;
        if !broken {
            answered = i;
        }
        let mut s = h.step(
            2,
            4 + 1,
            if broken { 0 } else { 4 },
            if broken { 0 } else { 2 },
        );
        s.probes = Some(probe(
            i,
            answered,
            if broken { (i - 11) as u32 } else { 0 },
            0,
            0,
        ));
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(incidents(&all), 1, "{all:?}");
    assert!(reasons(&all)
        .contains("gateway 10.0.0.1 (config) stopped answering probes through uplink0"));
}

#[test]
fn full_size_probes_failing_while_small_ones_pass_is_degradation_with_its_own_bundle() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    let mut all = Vec::new();
    for i in 1..12u64 {
        let large_miss = if i > 4 { (i - 4) as u32 } else { 0 };
        let mut s = h.step(2, 4, 4, 2);
        s.probes = Some(probe(i, i, 0, i, large_miss));
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(d.state, State::Healthy, "degradation is not a collapse");
    assert_eq!(incidents(&all), 1);
    assert!(
        reasons(&all).contains("degradation: br0: full-size frames fail"),
        "{all:?}"
    );
    // Its bundle says so in its trigger, apart from a collapse's.
    let kind = all.iter().find_map(|a| match a {
        Action::Incident { kind, .. } => Some(*kind),
        _ => None,
    });
    assert_eq!(kind, Some(IncidentKind::Degradation));
    assert!(
        !reasons(&all).contains("fail: full-size frames fail"),
        "said once: {all:?}"
    );
    assert_eq!(IncidentKind::Degradation.trigger(), "degradation");
    assert_eq!(IncidentKind::Collapse.trigger(), "detector");
    assert_eq!(d.degraded().len(), 1);
    // It passes: cleared after recover_after good samples.
    for i in 12..20u64 {
        let mut s = h.step(2, 4, 4, 2);
        s.probes = Some(probe(i, i, 0, i, 0));
        all.extend(run(&mut d, &mut prev, s));
    }
    assert!(d.degraded().is_empty());
    assert!(all
        .iter()
        .any(|a| matches!(a, Action::Degradation { active: false, .. })));
}

#[test]
fn our_own_probes_are_not_traffic_leaving_the_uplink() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    for i in 0..4 {
        let mut s = h.step(2, 4, 4, 2);
        s.probes = Some(probe(i, i, 0, 0, 0));
        run(&mut d, &mut prev, s);
    }
    // A FORWARD drop: the guests' frames stop; only the probes leave (and are answered).
    let mut all = Vec::new();
    for i in 4..10 {
        let mut s = h.step(2, 1, 1, 0);
        s.probes = Some(probe(i, i, 0, 0, 0));
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(incidents(&all), 1, "{all:?}");
    assert!(reasons(&all).contains("nothing left through the uplink"));
}

#[test]
fn guests_whose_mac_the_fdb_sends_to_the_uplink_are_cut_off_host_wide() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    for _ in 0..3 {
        run(&mut d, &mut prev, with_libvirt(h.step(2, 4, 4, 2)));
    }
    let mut all = Vec::new();
    for _ in 0..3 {
        // Broadcasts still reach the guests (tx > 0), unicast cannot.
        let mut s = with_libvirt(h.step(2, 4, 4, 1));
        s.fdb = Some(
            (1..=2)
                .map(|i| FdbEntry {
                    mac: format!("52:54:00:00:00:0{i}"),
                    ifindex: 2,
                    port: "uplink0".into(),
                    master: Some(1),
                    state: "static".into(),
                    ..Default::default()
                })
                .collect(),
        );
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(incidents(&all), 1, "{all:?}");
    assert!(
        reasons(&all).contains("forwards its MAC 52:54:00:00:00:01 to uplink0"),
        "{all:?}"
    );
}

#[test]
fn a_tap_not_drained_is_one_guest_cut_off_not_a_collapse() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    for _ in 0..3 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    let mut all = Vec::new();
    for _ in 0..4 {
        let mut s = h.step(2, 4, 4, 2);
        // vnet1: nothing delivered, 30 frames dropped toward it each second.
        let before = prev.as_ref().unwrap().links.as_ref().unwrap()[3].stats;
        let l = &mut s.links.as_mut().unwrap()[3];
        l.stats.tx_packets = before.tx_packets;
        l.stats.tx_dropped = before.tx_dropped + 30;
        h.links[3].stats = l.stats;
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(incidents(&all), 0, "{all:?}");
    let cut: Vec<&Action> = all
        .iter()
        .filter(|a| matches!(a, Action::GuestCutOff { .. }))
        .collect();
    assert_eq!(cut.len(), 1, "{all:?}");
    assert!(reasons(&all).contains("dropped toward it"));
}

#[test]
fn a_port_moved_to_another_bridge_or_a_migration_event_takes_the_guest_out_of_judgement() {
    let (mut h, mut d, mut prev) = (
        Host::new(),
        Detector::new(DetectConfig {
            migration_grace_s: 30,
            ..cfg()
        }),
        None,
    );
    for _ in 0..5 {
        run(&mut d, &mut prev, with_libvirt(h.step(2, 4, 4, 2)));
    }
    assert_eq!(d.eligible(), 2);
    // vnet1 shows up on br1 (moved): not eligible there for the grace.
    let mut s = with_libvirt(h.step(2, 4, 4, 2));
    let bridges = s.bridges.as_mut().unwrap();
    let port = bridges[0].ports.remove(2);
    bridges.push(crate::sample::Bridge {
        ifindex: 9,
        name: "br1".into(),
        ports: vec![port],
        ..Default::default()
    });
    run(&mut d, &mut prev, s);
    assert_eq!(d.eligible(), 1, "{:?}", d.last);
    // A libvirt migration event for guest0: out of judgement too.
    let t = prev.as_ref().unwrap().mono_ns;
    d.on_event(&Event {
        ts_unix_ns: 0,
        mono_ns: t,
        kind: EventKind::Libvirt {
            domain: "guest0".into(),
            uuid: String::new(),
            event: "suspended".into(),
            detail: "migrated".into(),
        },
    });
    run(&mut d, &mut prev, with_libvirt(h.step(2, 4, 4, 2)));
    assert_eq!(d.eligible(), 0, "{:?}", d.last);
}

#[test]
fn a_port_flap_restarts_the_boot_grace() {
    let (mut h, mut d, mut prev) = (
        Host::new(),
        Detector::new(DetectConfig {
            boot_grace_s: 3,
            ..cfg()
        }),
        None,
    );
    for _ in 0..6 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    assert_eq!(d.eligible(), 2);
    h.links[3].operstate = "down".into();
    run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    h.links[3].operstate = "up".into();
    run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    assert_eq!(d.eligible(), 1, "vnet1 is booting again");
    for _ in 0..4 {
        run(&mut d, &mut prev, h.step(2, 4, 4, 2));
    }
    assert_eq!(d.eligible(), 2);
}

#[test]
fn guests_arp_for_the_gateway_left_unanswered_is_a_signal() {
    let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
    let mut all = Vec::new();
    for i in 0..10u64 {
        let mut s = h.step(2, 4, 4, 2);
        let mut p = probe(i, i, 0, 0, 0);
        let broken = i >= 4;
        p.bridges[0].guest_arp_requests = i * 2;
        p.bridges[0].guest_arp_replies = if broken { 8 } else { i * 2 };
        p.bridges[0].guest_arp_unanswered = if broken { (i - 4) * 2 } else { 0 };
        s.probes = Some(p);
        all.extend(run(&mut d, &mut prev, s));
    }
    assert_eq!(incidents(&all), 1, "{all:?}");
    assert!(reasons(&all).contains("guests' ARP for gateway 10.0.0.1"));
}

/// The eBPF drop counters as the sampler reports them: cumulative per
/// (ifindex, interface, reason), IPv4.
fn with_drops(mut s: Sample, counts: &[(u32, &str, &str, u64)]) -> Sample {
    s.drops = Some(crate::sample::Drops {
        loaded_mono_ns: 500_000_000_000,
        entries: counts
            .iter()
            .filter(|c| c.3 > 0)
            .map(|&(ifindex, name, reason, count)| crate::sample::DropCount {
                ifindex,
                interface: name.into(),
                reason: reason.into(),
                protocol: 2048,
                count,
            })
            .collect(),
        ..Default::default()
    });
    s
}

/// F11 as the lab shows it: a bridge forward chain drops everything, yet
/// the host's own chatter still leaves through the uplink and reaches the
/// guests' ports for a few seconds (one frame a second each), so neither
/// "nothing left" nor "cut off" can tell. The kernel counts the guests'
/// frames dropped by netfilter on the uplink (their egress port): a
/// collapse by the third sample after the drop (the second is the first
/// whose window holds a whole second of it, then one more for the
/// hysteresis), naming what was seen; the same
/// counters without the drop program are judged as before (no incident).
#[test]
fn netfilter_dropping_the_guests_frames_on_the_uplink_is_a_collapse() {
    for loaded in [true, false] {
        let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
        let mut nf = 0;
        let mut step = |h: &mut Host, up_tx, to_g, dropped| {
            nf += dropped;
            let s = h.step(2, up_tx, up_tx, to_g);
            if loaded {
                with_drops(s, &[(2, "uplink0", "NETFILTER_DROP", nf)])
            } else {
                s
            }
        };
        for _ in 0..5 {
            assert!(run(&mut d, &mut prev, step(&mut h, 4, 2, 0)).is_empty());
        }
        let mut all = Vec::new();
        for i in 0..3 {
            // The drop comes in the middle of the first second.
            let s = step(&mut h, 1, 1, if i == 0 { 2 } else { 4 });
            all.extend(run(&mut d, &mut prev, s));
        }
        if !loaded {
            assert_eq!(incidents(&all), 0, "{all:?}");
            continue;
        }
        let incident = all.iter().find_map(|a| match a {
            Action::Incident {
                reason,
                kind: IncidentKind::Collapse,
            } => Some(reason.as_str()),
            _ => None,
        });
        assert_eq!(
            incident,
            Some("br0: netfilter dropped 8 frames on their way out through the uplink (uplink0 8; kernel drop reason NETFILTER_DROP) in 2 s, while 2 guests sent 8"),
            "{all:?}"
        );
    }
}

/// Ordinary drops are no collapse: one guest's own frames dropped (however
/// many: a rule against that guest), a small share of everyone's frames
/// (conntrack-invalid, a blocked port), netfilter drops toward the guests
/// (a security group keeping the world out: counted on the vNICs), other
/// reasons on the uplink (STP state while a port joins).
#[test]
fn ordinary_drops_are_not_a_collapse() {
    type Case = (
        &'static str,
        u64,
        &'static [(u32, &'static str, &'static str)],
    );
    let cases: [Case; 4] = [
        (
            "one guest's frames",
            20,
            &[(2, "uplink0", "NETFILTER_DROP")],
        ),
        ("a small share", 3, &[(2, "uplink0", "NETFILTER_DROP")]),
        (
            "toward the guests",
            10,
            &[
                (3, "vnet0", "NETFILTER_DROP"),
                (4, "vnet1", "NETFILTER_DROP"),
            ],
        ),
        (
            "another reason",
            40,
            &[(2, "uplink0", "BRIDGE_INGRESS_STP_STATE")],
        ),
    ];
    for (what, per_s, at) in cases {
        let (mut h, mut d, mut prev) = (Host::new(), Detector::new(cfg()), None);
        let mut all = Vec::new();
        for i in 0..10u64 {
            let (dropped, busy) = match what {
                // vnet0 sends 20 more a second, all of them dropped.
                "one guest's frames" => (if i >= 5 { per_s } else { 0 }, 20),
                "a small share" => (if i >= 5 { per_s } else { 0 }, 0),
                _ => (if i >= 5 { per_s } else { 0 }, 0),
            };
            h.links[2].stats.rx_packets += busy;
            // The others' traffic keeps flowing both ways.
            let s = h.step(if what == "a small share" { 4 } else { 2 }, 4, 4, 2);
            let n = dropped * i.saturating_sub(4);
            let counts: Vec<(u32, &str, &str, u64)> =
                at.iter().map(|&(i, name, r)| (i, name, r, n)).collect();
            all.extend(run(&mut d, &mut prev, with_drops(s, &counts)));
        }
        assert_eq!(incidents(&all), 0, "{what}: {all:?}");
        assert_eq!(d.state, State::Healthy, "{what}");
    }
}
