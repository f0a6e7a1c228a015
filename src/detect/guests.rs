//! Gentle guest probes (secondary evidence): a unicast ARP request to a
//! guest's known MAC and IP, written straight onto the guest's own port so
//! it never floods. Pure: the prober thread does the I/O.
//!
//! Gentleness, by construction:
//! - each guest at most once per `interval` (default 10 s), whatever happens —
//!   a guest that does not answer is not asked again sooner;
//! - a global token bucket (`max_per_s`) caps all guests together, and each
//!   guest's first probe sits at a phase derived from its MAC, so a round
//!   spreads over the interval and hundreds of failing guests never make a storm;
//! - only guests libvirt says are running, with an address learned from
//!   libvirt/nova, DHCP, their own ARP or the neighbour table;
//! - paused (`pause`) while the guest does DHCP or RFC 5227 address probing
//!   (its ARP from 0.0.0.0, its announcements) and after a lifecycle change
//!   (domain (re)started, port re-created or flapped): a probe for an address
//!   a guest is still claiming makes it decline its lease.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use super::frames::{self, Frame, Mac, Payload};
use super::gateway::{ProbeKind, Send};
use crate::sample::GuestProbe;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuestTiming {
    pub interval_ns: u64,
    pub timeout_ns: u64,
    pub max_per_s: u32,
    pub pause_ns: u64,
}

/// What the sample says about one guest port.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestTopo {
    pub iface: String,
    pub ifindex: u32,
    /// The guest's own MAC (libvirt's <mac>, else learned on its port).
    pub mac: Option<Mac>,
    /// libvirt says the domain is running.
    pub running: bool,
    /// An address libvirt/nova metadata gives.
    pub ip: Option<Ipv4Addr>,
    /// Changes when the domain or its port restarts (domain id, state,
    /// ifindex, operstate): a lifecycle change pauses probing.
    pub generation: String,
    pub bridge_mac: Mac,
    /// The bridge's addresses (a probe uses one in the guest's subnet as sender).
    pub bridge_addrs: Vec<(Ipv4Addr, u8)>,
}

fn rank(source: &str) -> u8 {
    match source {
        "libvirt" => 4,
        "dhcp" => 3,
        "arp" => 2,
        "neigh" => 1,
        _ => 0,
    }
}

#[derive(Clone, Debug)]
struct Guest {
    topo: GuestTopo,
    rec: GuestProbe,
    next_due_ns: u64,
    pending_ns: Option<u64>,
    paused_until_ns: u64,
    pause_why: &'static str,
    /// What `rec.paused` says, compared without touching that String's heap
    /// copy (every guest is looked at every 25 ms).
    shown_why: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct Guests {
    by_iface: BTreeMap<String, Guest>,
    tokens: f64,
    refilled_ns: Option<u64>,
    /// Probes sent and maybe still pending, oldest first (sends happen in
    /// time order and all share one timeout), so `expire` looks only at the
    /// probes whose timeout passed instead of at every guest every 25 ms.
    /// An entry whose guest got an answer, was paused or went away since
    /// no longer matches the guest's `pending_ns` and is dropped unused.
    sent: VecDeque<(u64, String)>,
}

/// A stable spread of first probes over the interval.
fn phase(mac: &Mac, interval_ns: u64) -> u64 {
    let h = mac.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    h % interval_ns.max(1)
}

impl Guests {
    /// Takes the guests of this sample: new ones are scheduled at their
    /// phase, gone ones dropped, changed ones paused.
    pub fn sync(&mut self, topo: Vec<GuestTopo>, now_ns: u64, t: &GuestTiming) {
        let names: std::collections::HashSet<&str> =
            topo.iter().map(|g| g.iface.as_str()).collect();
        self.by_iface.retain(|k, _| names.contains(k.as_str()));
        for g in topo {
            match self.by_iface.get_mut(&g.iface) {
                Some(cur) => {
                    if cur.topo.generation != g.generation || cur.topo.mac != g.mac {
                        cur.paused_until_ns = now_ns + t.pause_ns;
                        cur.pause_why = "lifecycle";
                        cur.pending_ns = None;
                    }
                    if let Some(ip) = g.ip {
                        if rank(&cur.rec.ip_source) <= rank("libvirt") {
                            cur.rec.ip = Some(ip.to_string());
                            cur.rec.ip_source = "libvirt".into();
                        }
                    }
                    cur.rec.mac = g.mac.map(|m| frames::mac_str(&m)).unwrap_or_default();
                    cur.topo = g;
                }
                None => {
                    let next = now_ns + g.mac.map_or(0, |m| phase(&m, t.interval_ns));
                    let rec = GuestProbe {
                        iface: g.iface.clone(),
                        mac: g.mac.map(|m| frames::mac_str(&m)).unwrap_or_default(),
                        ip: g.ip.map(|i| i.to_string()),
                        ip_source: if g.ip.is_some() {
                            "libvirt".into()
                        } else {
                            String::new()
                        },
                        ..Default::default()
                    };
                    self.by_iface.insert(
                        g.iface.clone(),
                        Guest {
                            topo: g,
                            rec,
                            next_due_ns: next,
                            pending_ns: None,
                            paused_until_ns: 0,
                            pause_why: "",
                            shown_why: "",
                        },
                    );
                }
            }
        }
    }

    fn by_mac(&mut self, mac: &Mac) -> Option<&mut Guest> {
        self.by_iface
            .values_mut()
            .find(|g| g.topo.mac.as_ref() == Some(mac))
    }

    fn learn(g: &mut Guest, ip: Ipv4Addr, source: &str) {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return;
        }
        if rank(source) >= rank(&g.rec.ip_source) {
            g.rec.ip = Some(ip.to_string());
            g.rec.ip_source = source.to_string();
        }
    }

    /// Addresses from the host's neighbour table (weakest source).
    pub fn on_neighbour(&mut self, mac: &Mac, ip: Ipv4Addr) {
        if let Some(g) = self.by_mac(mac) {
            if g.rec.ip.is_none() {
                Guests::learn(g, ip, "neigh");
            }
        }
    }

    /// A frame seen on a bridge or uplink: guests' own ARP and DHCP (learn
    /// addresses, pause while they claim one), answers to our probes.
    pub fn on_frame(&mut self, f: &Frame, now_ns: u64, t: &GuestTiming) {
        match &f.payload {
            Payload::Arp(a) => {
                let Some(g) = self.by_mac(&a.sha) else { return };
                if a.is_address_probe() || a.is_announcement() {
                    g.paused_until_ns = now_ns + t.pause_ns;
                    g.pause_why = "address probing";
                    g.pending_ns = None;
                    if a.is_announcement() {
                        Guests::learn(g, a.spa, "arp");
                    }
                    return;
                }
                Guests::learn(g, a.spa, "arp");
                if a.op == 2
                    && f.dst == g.topo.bridge_mac
                    && g.rec.ip.as_deref() == Some(&a.spa.to_string())
                    && g.pending_ns.take().is_some()
                {
                    g.rec.answered += 1;
                    g.rec.consecutive_unanswered = 0;
                    g.rec.last_answer_mono_ns = Some(now_ns);
                }
            }
            Payload::Dhcp(d) => {
                let Some(g) = self.by_mac(&d.chaddr) else {
                    return;
                };
                g.paused_until_ns = now_ns + t.pause_ns;
                g.pause_why = "dhcp";
                g.pending_ns = None;
                if !d.is_client() && d.msg_type == Some(5) {
                    Guests::learn(g, d.yiaddr, "dhcp");
                }
            }
            Payload::EchoReply { .. } => {}
        }
    }

    pub fn expire(&mut self, now_ns: u64, t: &GuestTiming) {
        while let Some((sent_ns, _)) = self.sent.front() {
            if now_ns.saturating_sub(*sent_ns) < t.timeout_ns {
                break;
            }
            let Some((sent_ns, iface)) = self.sent.pop_front() else {
                break;
            };
            if let Some(g) = self.by_iface.get_mut(&iface) {
                if g.pending_ns == Some(sent_ns) {
                    g.pending_ns = None;
                    g.rec.unanswered += 1;
                    g.rec.consecutive_unanswered += 1;
                }
            }
        }
    }

    /// Probes due now, within the global cap.
    pub fn due(&mut self, now_ns: u64, t: &GuestTiming) -> Vec<Send> {
        let last = *self.refilled_ns.get_or_insert(now_ns);
        let cap = t.max_per_s.max(1) as f64;
        self.tokens = (self.tokens + (now_ns.saturating_sub(last)) as f64 / 1e9 * cap).min(cap);
        self.refilled_ns = Some(now_ns);
        let mut ready: Vec<(u64, String)> = Vec::new();
        for (name, g) in self.by_iface.iter_mut() {
            let why: &'static str = if !g.topo.running {
                "not running"
            } else if g.topo.mac.is_none() || g.rec.ip.is_none() {
                "no address"
            } else if now_ns < g.paused_until_ns {
                g.pause_why
            } else {
                ""
            };
            // Called every 25 ms for every guest: allocate only on a change.
            if g.shown_why != why {
                g.shown_why = why;
                g.rec.paused = why.to_string();
            }
            if why.is_empty() && g.pending_ns.is_none() && now_ns >= g.next_due_ns {
                ready.push((g.next_due_ns, name.clone()));
            } else if !why.is_empty() && g.next_due_ns < g.paused_until_ns {
                // After a pause, start again at the guest's own phase.
                g.next_due_ns =
                    g.paused_until_ns + g.topo.mac.map_or(0, |m| phase(&m, t.interval_ns));
            }
        }
        ready.sort();
        let mut out = Vec::new();
        for (_, name) in ready {
            if self.tokens < 1.0 {
                break; // the rest wait for the next tokens, oldest first
            }
            let Some(g) = self.by_iface.get_mut(&name) else {
                continue;
            };
            let (Some(mac), Some(ip)) = (
                g.topo.mac,
                g.rec.ip.as_deref().and_then(|i| i.parse::<Ipv4Addr>().ok()),
            ) else {
                continue;
            };
            let src = g
                .topo
                .bridge_addrs
                .iter()
                .find(|(a, p)| {
                    let m = if *p == 0 {
                        0
                    } else {
                        u32::MAX << (32 - (*p).min(32) as u32)
                    };
                    u32::from(*a) & m == u32::from(ip) & m && *a != ip
                })
                .map(|(a, _)| *a);
            out.push(Send {
                ifindex: g.topo.ifindex,
                frame: frames::arp_request(g.topo.bridge_mac, mac, None, src, ip, 0),
                kind: ProbeKind::Guest,
            });
            self.tokens -= 1.0;
            g.pending_ns = Some(now_ns);
            self.sent.push_back((now_ns, name));
            g.next_due_ns = now_ns + t.interval_ns;
            g.rec.sent += 1;
        }
        out
    }

    pub fn records(&self) -> Vec<GuestProbe> {
        self.by_iface.values().map(|g| g.rec.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::frames::{Arp, Dhcp};

    const S: u64 = 1_000_000_000;
    const BR: Mac = [2, 0, 0, 0, 0, 1];
    const T: GuestTiming = GuestTiming {
        interval_ns: 10 * S,
        timeout_ns: S,
        max_per_s: 5,
        pause_ns: 30 * S,
    };

    fn mac(i: usize) -> Mac {
        [0x52, 0x54, 0, (i >> 8) as u8, i as u8, 1]
    }

    fn topo(i: usize, gen: &str) -> GuestTopo {
        GuestTopo {
            iface: format!("vnet{i}"),
            ifindex: 100 + i as u32,
            mac: Some(mac(i)),
            running: true,
            ip: Some(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)),
            generation: gen.into(),
            bridge_mac: BR,
            bridge_addrs: vec![],
        }
    }

    fn arp_from(i: usize, spa: Ipv4Addr, tpa: Ipv4Addr, op: u16, dst: Mac) -> Frame {
        Frame {
            src: mac(i),
            dst,
            vlan: None,
            payload: Payload::Arp(Arp {
                op,
                sha: mac(i),
                spa,
                tha: [0; 6],
                tpa,
            }),
        }
    }

    /// Runs the scheduler in 100 ms steps; returns send times per guest.
    fn run(g: &mut Guests, from_ns: u64, to_ns: u64) -> BTreeMap<u32, Vec<u64>> {
        let mut sent: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let mut t = from_ns;
        while t < to_ns {
            g.expire(t, &T);
            for s in g.due(t, &T) {
                sent.entry(s.ifindex).or_default().push(t);
            }
            t += S / 10;
        }
        sent
    }

    #[test]
    fn hundreds_of_failing_guests_never_make_a_storm() {
        let mut g = Guests::default();
        g.sync((0..300).map(|i| topo(i, "a")).collect(), 0, &T);
        // Nobody answers; 60 s of scheduling.
        let sent = run(&mut g, 0, 60 * S);
        let mut per_second: BTreeMap<u64, u32> = BTreeMap::new();
        for times in sent.values() {
            for w in times.windows(2) {
                assert!(
                    w[1] - w[0] >= T.interval_ns,
                    "a guest probed twice within 10 s"
                );
            }
            for t in times {
                *per_second.entry(t / S).or_default() += 1;
            }
        }
        let max = per_second.values().max().copied().unwrap_or(0);
        assert!(max <= T.max_per_s + 1, "{max} probes in one second");
        let total: usize = sent.values().map(|v| v.len()).sum();
        assert!(total >= 250, "the cap still lets probing go on: {total}");
    }

    #[test]
    fn a_round_spreads_over_the_interval() {
        let mut g = Guests::default();
        g.sync((0..50).map(|i| topo(i, "a")).collect(), 0, &T);
        let sent = run(&mut g, 0, 10 * S);
        let firsts: Vec<u64> = sent.values().map(|v| v[0] / S).collect();
        let distinct: std::collections::BTreeSet<u64> = firsts.iter().copied().collect();
        assert!(
            distinct.len() >= 7,
            "first probes bunched into {distinct:?}"
        );
    }

    #[test]
    fn answered_probes_count_and_misses_are_never_retried_sooner() {
        let mut g = Guests::default();
        g.sync(vec![topo(1, "a")], 0, &T);
        let mut t0 = 0;
        while g.due(t0, &T).is_empty() {
            t0 += S / 10;
            assert!(t0 < 11 * S, "never probed");
        }
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        g.on_frame(
            &arp_from(1, ip, Ipv4Addr::UNSPECIFIED, 2, BR),
            t0 + S / 100,
            &T,
        );
        let r = &g.records()[0];
        assert_eq!((r.sent, r.answered, r.unanswered), (1, 1, 0));
        let more = run(&mut g, t0 + S / 10, t0 + 31 * S + S / 10);
        assert_eq!(more[&101].len(), 3);
        let r = &g.records()[0];
        assert_eq!((r.unanswered, r.consecutive_unanswered), (3, 3));
    }

    #[test]
    fn dhcp_address_probing_and_lifecycle_pause_probing() {
        let mut g = Guests::default();
        g.sync(vec![topo(1, "a"), topo(2, "a"), topo(3, "a")], 0, &T);
        // guest 1 probes for an address (RFC 5227), guest 2 does DHCP, guest 3 restarts.
        g.on_frame(
            &arp_from(
                1,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::new(10, 0, 0, 1),
                1,
                frames::BROADCAST,
            ),
            0,
            &T,
        );
        let dhcp = Frame {
            src: mac(2),
            dst: frames::BROADCAST,
            vlan: None,
            payload: Payload::Dhcp(Dhcp {
                op: 1,
                msg_type: Some(1),
                chaddr: mac(2),
                yiaddr: Ipv4Addr::UNSPECIFIED,
                router: None,
            }),
        };
        g.on_frame(&dhcp, 0, &T);
        g.sync(vec![topo(1, "a"), topo(2, "a"), topo(3, "b")], 0, &T);
        let sent = run(&mut g, 0, 29 * S);
        assert!(sent.is_empty(), "probed while paused: {sent:?}");
        let why: Vec<String> = g.records().iter().map(|r| r.paused.clone()).collect();
        assert_eq!(why, ["address probing", "dhcp", "lifecycle"]);
        let sent = run(&mut g, 29 * S, 45 * S);
        assert_eq!(sent.len(), 3, "probing resumes after the pause");
    }

    #[test]
    fn only_running_guests_with_an_address_are_probed_and_sources_rank() {
        let mut g = Guests::default();
        let mut stopped = topo(1, "a");
        stopped.running = false;
        let mut no_ip = topo(2, "a");
        no_ip.ip = None;
        g.sync(vec![stopped, no_ip], 0, &T);
        assert!(run(&mut g, 0, 20 * S).is_empty());
        let why: Vec<String> = g.records().iter().map(|r| r.paused.clone()).collect();
        assert_eq!(why, ["not running", "no address"]);
        // Learned from the neighbour table, then from its own ARP (stronger).
        g.on_neighbour(&mac(2), Ipv4Addr::new(10, 9, 9, 9));
        assert_eq!(g.records()[1].ip_source, "neigh");
        g.on_frame(
            &arp_from(
                2,
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(10, 0, 0, 254),
                1,
                frames::BROADCAST,
            ),
            20 * S,
            &T,
        );
        assert_eq!(
            (
                g.records()[1].ip.as_deref(),
                g.records()[1].ip_source.as_str()
            ),
            (Some("10.0.0.2"), "arp")
        );
        assert_eq!(run(&mut g, 20 * S, 31 * S).len(), 1);
    }
}
