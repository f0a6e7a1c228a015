//! The detector's decisions on constructed sample series (the lab scenarios
//! are end-to-end tests in tests/detect.rs).

use super::*;
use crate::sample::{Bridge, BridgePort, Link, LinkStats};

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
            if let Action::Incident { reason } = a {
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
