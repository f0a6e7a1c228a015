//! One gateway probe target (a bridge, or one VLAN of it): which gateway to
//! probe and where it was learned, when the next probe is due, and what the
//! answers and the guests' own ARP for the gateway say. Pure: frames and
//! the monotonic clock come in, frames to send go out; the prober thread
//! does the I/O.
//!
//! Gateway, in order of trust: `detect.gateways` (config), the router
//! option of a DHCP reply crossing the uplink, the host's default route via
//! the bridge, and the address most guests ARP for that is answered from
//! beyond the uplink.
//!
//! Schedule: a small ARP every interval (unicast to the gateway's MAC once
//! known, broadcast while not or after two misses — its MAC may have moved),
//! an ICMP echo beside it when the host has an address in the gateway's
//! subnet, and every `mtu_probe_every` rounds a full-MTU probe half an
//! interval later (a DF echo of the bridge MTU, or without an address an ARP
//! padded to it). At most one ARP is outstanding, so answers are never
//! mistaken for each other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::frames::{self, Frame, Mac, Payload, BROADCAST};
use crate::sample::GatewayProbe;

#[derive(Clone, Debug, Default)]
pub struct Learned {
    pub config: Option<Ipv4Addr>,
    pub dhcp: Option<Ipv4Addr>,
    pub route: Option<Ipv4Addr>,
    /// Target IP → guests that asked for it, and whether an answer came in
    /// through the uplink.
    pub arp: BTreeMap<Ipv4Addr, (BTreeSet<Mac>, bool)>,
}

impl Learned {
    pub fn best(&self) -> Option<(Ipv4Addr, &'static str)> {
        if let Some(ip) = self.config {
            return Some((ip, "config"));
        }
        if let Some(ip) = self.dhcp {
            return Some((ip, "dhcp"));
        }
        if let Some(ip) = self.route {
            return Some((ip, "route"));
        }
        self.arp
            .iter()
            .filter(|(_, (guests, answered))| *answered && !guests.is_empty())
            .max_by_key(|(ip, (guests, _))| (guests.len(), std::cmp::Reverse(**ip)))
            .map(|(ip, _)| (*ip, "arp"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub interval_ns: u64,
    pub timeout_ns: u64,
    /// Every Nth round also sends a full-MTU probe (0 = never).
    pub mtu_probe_every: u32,
}

#[derive(Clone, Debug)]
struct PendingArp {
    large: bool,
    sent_ns: u64,
}

/// A frame to send and the port it leaves through.
#[derive(Clone, Debug, PartialEq)]
pub struct Send {
    pub ifindex: u32,
    pub frame: Vec<u8>,
    /// Which counter the send went into.
    pub kind: ProbeKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Arp,
    Icmp,
    Large,
    Guest,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub bridge_mac: Mac,
    pub bridge_mtu: u32,
    /// The uplink ports' ifindexes (probes go out of the first that has carrier).
    pub uplink_ifindex: Option<u32>,
    /// Bridge addresses (address, prefix length).
    pub addrs: Vec<(Ipv4Addr, u8)>,
    pub learned: Learned,
    pub rec: GatewayProbe,
    round: u64,
    next_small_ns: Option<u64>,
    next_large_ns: Option<u64>,
    pending_arp: Option<PendingArp>,
    /// ICMP seq → (large, sent).
    pending_icmp: BTreeMap<u16, (bool, u64)>,
    icmp_seq: u16,
    icmp_id: u16,
    /// Guests' ARP requests for the gateway awaiting a reply: guest MAC → first sent.
    guest_pending: BTreeMap<Mac, u64>,
}

fn in_subnet(a: Ipv4Addr, prefix: u8, b: Ipv4Addr) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32) as u32)
    };
    u32::from(a) & mask == u32::from(b) & mask
}

impl Target {
    pub fn new(bridge: &str, vlan: Option<u16>, bridge_mac: Mac, icmp_id: u16) -> Target {
        Target {
            bridge_mac,
            bridge_mtu: 1500,
            uplink_ifindex: None,
            addrs: Vec::new(),
            learned: Learned::default(),
            rec: GatewayProbe {
                bridge: bridge.to_string(),
                vlan,
                ..Default::default()
            },
            round: 0,
            next_small_ns: None,
            next_large_ns: None,
            pending_arp: None,
            pending_icmp: BTreeMap::new(),
            icmp_seq: 0,
            icmp_id,
            guest_pending: BTreeMap::new(),
        }
    }

    fn gateway(&self) -> Option<Ipv4Addr> {
        self.rec.gateway.as_deref().and_then(|g| g.parse().ok())
    }

    fn gateway_mac(&self) -> Option<Mac> {
        frames::parse_mac(&self.rec.gateway_mac)
    }

    /// Re-evaluates which gateway to probe (after learning something);
    /// a different gateway starts its probe history afresh.
    pub fn refresh(&mut self) {
        let best = self.learned.best();
        let now = best.map(|(ip, _)| ip.to_string());
        if now != self.rec.gateway {
            self.rec.gateway = now;
            self.rec.gateway_mac.clear();
            self.rec.consecutive_unanswered = 0;
            self.rec.large_consecutive_unanswered = 0;
            self.pending_arp = None;
            self.pending_icmp.clear();
            self.guest_pending.clear();
        }
        self.rec.gateway_source = best.map(|(_, s)| s.to_string()).unwrap_or_default();
        let gw = self.gateway();
        self.rec.source_ip = gw.and_then(|gw| {
            self.addrs
                .iter()
                .find(|(a, p)| in_subnet(*a, *p, gw) && *a != gw)
                .map(|(a, _)| a.to_string())
        });
    }

    fn source_ip(&self) -> Option<Ipv4Addr> {
        self.rec.source_ip.as_deref().and_then(|s| s.parse().ok())
    }

    /// Gives up on probes older than the timeout.
    pub fn expire(&mut self, now_ns: u64, t: &Timing) {
        if let Some(p) = &self.pending_arp {
            if now_ns.saturating_sub(p.sent_ns) >= t.timeout_ns {
                if p.large {
                    self.rec.large_unanswered += 1;
                    self.rec.large_consecutive_unanswered += 1;
                } else {
                    self.rec.arp_unanswered += 1;
                    self.rec.consecutive_unanswered += 1;
                }
                self.pending_arp = None;
            }
        }
        let old: Vec<u16> = self
            .pending_icmp
            .iter()
            .filter(|(_, (_, sent))| now_ns.saturating_sub(*sent) >= t.timeout_ns)
            .map(|(s, _)| *s)
            .collect();
        for s in old {
            if let Some((large, _)) = self.pending_icmp.remove(&s) {
                if large {
                    self.rec.large_unanswered += 1;
                    self.rec.large_consecutive_unanswered += 1;
                } else {
                    self.rec.icmp_unanswered += 1;
                }
            }
        }
        let stale: Vec<Mac> = self
            .guest_pending
            .iter()
            .filter(|(_, sent)| now_ns.saturating_sub(**sent) >= t.timeout_ns.max(1_000_000_000))
            .map(|(m, _)| *m)
            .collect();
        for m in stale {
            self.guest_pending.remove(&m);
            self.rec.guest_arp_unanswered += 1;
        }
    }

    /// When `due` next has a probe to send (None: not before a frame or a
    /// topology change gives this target a gateway and an uplink), so the
    /// prober sleeps until then instead of ticking. Timeouts need no wake of
    /// their own: `expire` runs before every `due` and every snapshot; only
    /// a probe held back by the outstanding ARP waits for its timeout.
    pub fn next_wake_ns(&self, t: &Timing) -> Option<u64> {
        self.gateway()?;
        self.uplink_ifindex?;
        let arp_free_at = self.pending_arp.as_ref().map(|p| p.sent_ns + t.timeout_ns);
        // Not scheduled yet: `due` schedules it on its next call.
        let small = self
            .next_small_ns
            .unwrap_or(0)
            .max(arp_free_at.unwrap_or(0));
        let large = self.next_large_ns.map(|l| {
            if self.source_ip().is_some() && self.gateway_mac().is_some() {
                l // an echo: it does not wait for the ARP
            } else {
                l.max(arp_free_at.unwrap_or(0))
            }
        });
        Some(large.map_or(small, |l| l.min(small)))
    }

    /// The probes due at `now_ns` (none while no gateway or uplink is known).
    pub fn due(&mut self, now_ns: u64, phase_ns: u64, t: &Timing) -> Vec<Send> {
        let mut out = Vec::new();
        let (Some(gw), Some(ifindex)) = (self.gateway(), self.uplink_ifindex) else {
            self.next_small_ns = None;
            return out;
        };
        let next = *self
            .next_small_ns
            .get_or_insert(now_ns + phase_ns % t.interval_ns.max(1));
        let vlan = self.rec.vlan;
        let mac = self.gateway_mac();
        if now_ns >= next && self.pending_arp.is_none() {
            self.round += 1;
            // Never catch up in bursts: the next round is one interval from now.
            let mut n = next + t.interval_ns;
            if n <= now_ns {
                n = now_ns + t.interval_ns;
            }
            self.next_small_ns = Some(n);
            let dst = match mac {
                Some(m) if self.rec.consecutive_unanswered < 2 => m,
                _ => BROADCAST,
            };
            out.push(Send {
                ifindex,
                frame: frames::arp_request(self.bridge_mac, dst, vlan, self.source_ip(), gw, 0),
                kind: ProbeKind::Arp,
            });
            self.pending_arp = Some(PendingArp {
                large: false,
                sent_ns: now_ns,
            });
            self.rec.arp_sent += 1;
            if let (Some(src), Some(m)) = (self.source_ip(), mac) {
                out.push(self.echo(ifindex, m, src, gw, false, now_ns));
            }
            if t.mtu_probe_every > 0 && self.round % t.mtu_probe_every as u64 == 0 {
                self.next_large_ns = Some(now_ns + t.interval_ns / 2);
            }
        }
        if self.next_large_ns.is_some_and(|l| now_ns >= l) {
            let mtu = self.bridge_mtu.clamp(68, 65_535) as usize;
            self.rec.large_bytes = mtu as u32;
            match (self.source_ip(), mac) {
                (Some(src), Some(m)) => {
                    self.next_large_ns = None;
                    out.push(self.echo(ifindex, m, src, gw, true, now_ns));
                }
                _ if self.pending_arp.is_none() => {
                    self.next_large_ns = None;
                    out.push(Send {
                        ifindex,
                        frame: frames::arp_request(
                            self.bridge_mac,
                            mac.unwrap_or(BROADCAST),
                            vlan,
                            self.source_ip(),
                            gw,
                            mtu,
                        ),
                        kind: ProbeKind::Large,
                    });
                    self.pending_arp = Some(PendingArp {
                        large: true,
                        sent_ns: now_ns,
                    });
                    self.rec.large_sent += 1;
                }
                _ => {} // the small ARP is still out: wait for it
            }
        }
        out
    }

    fn echo(
        &mut self,
        ifindex: u32,
        dst: Mac,
        src: Ipv4Addr,
        gw: Ipv4Addr,
        large: bool,
        now_ns: u64,
    ) -> Send {
        self.icmp_seq = self.icmp_seq.wrapping_add(1);
        let len = if large {
            self.bridge_mtu.clamp(68, 65_535) as usize
        } else {
            64
        };
        self.pending_icmp.insert(self.icmp_seq, (large, now_ns));
        if large {
            self.rec.large_sent += 1;
        } else {
            self.rec.icmp_sent += 1;
        }
        Send {
            ifindex,
            frame: frames::icmp_echo(
                self.bridge_mac,
                dst,
                self.rec.vlan,
                src,
                gw,
                self.icmp_id,
                self.icmp_seq,
                len,
            ),
            kind: if large {
                ProbeKind::Large
            } else {
                ProbeKind::Icmp
            },
        }
    }

    /// A frame seen on the bridge device (delivered to the host): answers to our probes.
    pub fn on_host_frame(&mut self, f: &Frame, now_ns: u64) {
        if f.dst != self.bridge_mac || f.vlan != self.rec.vlan {
            return;
        }
        let Some(gw) = self.gateway() else { return };
        match &f.payload {
            Payload::Arp(a) if a.op == 2 && a.spa == gw => {
                let Some(p) = self.pending_arp.take() else {
                    return;
                };
                self.rec.gateway_mac = frames::mac_str(&a.sha);
                if p.large {
                    self.rec.large_answered += 1;
                    self.rec.large_consecutive_unanswered = 0;
                } else {
                    self.rec.arp_answered += 1;
                    self.rec.consecutive_unanswered = 0;
                    self.rec.last_rtt_us = Some(now_ns.saturating_sub(p.sent_ns) / 1000);
                }
                self.rec.last_answer_mono_ns = Some(now_ns);
            }
            Payload::EchoReply {
                src_ip, id, seq, ..
            } if *src_ip == gw && *id == self.icmp_id => {
                let Some((large, sent)) = self.pending_icmp.remove(seq) else {
                    return;
                };
                if large {
                    self.rec.large_answered += 1;
                    self.rec.large_consecutive_unanswered = 0;
                } else {
                    self.rec.icmp_answered += 1;
                    self.rec.last_rtt_us = Some(now_ns.saturating_sub(sent) / 1000);
                }
                self.rec.last_answer_mono_ns = Some(now_ns);
            }
            _ => {}
        }
    }

    /// A frame seen on an uplink port: guests' ARP for the gateway leaving,
    /// the gateway's replies coming back, DHCP replies (router option).
    /// `guests` are the MACs of this bridge's guests.
    pub fn on_uplink_frame(&mut self, f: &Frame, now_ns: u64, guests: &BTreeSet<Mac>) {
        if f.vlan != self.rec.vlan {
            return;
        }
        match &f.payload {
            Payload::Arp(a) if a.op == 1 && guests.contains(&a.sha) && !a.spa.is_unspecified() => {
                let e = self.learned.arp.entry(a.tpa).or_default();
                e.0.insert(a.sha);
                if Some(a.tpa) == self.gateway() {
                    self.rec.guest_arp_requests += 1;
                    self.guest_pending.entry(a.sha).or_insert(now_ns);
                }
            }
            Payload::Arp(a) if a.op == 2 && guests.contains(&f.dst) => {
                if let Some(e) = self.learned.arp.get_mut(&a.spa) {
                    let first = !e.1;
                    e.1 = true;
                    if first {
                        self.refresh();
                    }
                }
                if Some(a.spa) == self.gateway() {
                    self.rec.guest_arp_replies += 1;
                    self.guest_pending.remove(&f.dst);
                }
            }
            Payload::Dhcp(d) if !d.is_client() && guests.contains(&d.chaddr) => {
                if let Some(r) = d.router {
                    if self.learned.dhcp != Some(r) {
                        self.learned.dhcp = Some(r);
                        self.refresh();
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::frames::{Arp, Dhcp};

    const BR: Mac = [2, 0, 0, 0, 0, 1];
    const GWM: Mac = [2, 0xaa, 0, 0, 0, 1];
    const G1: Mac = [0x52, 0x54, 0, 0, 0, 1];
    const G2: Mac = [0x52, 0x54, 0, 0, 0, 2];
    const MS: u64 = 1_000_000;
    const T: Timing = Timing {
        interval_ns: 1000 * MS,
        timeout_ns: 500 * MS,
        mtu_probe_every: 2,
    };

    fn gw() -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, 1)
    }

    fn arp(op: u16, src: Mac, dst: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Frame {
        Frame {
            src,
            dst,
            vlan: None,
            payload: Payload::Arp(Arp {
                op,
                sha: src,
                spa,
                tha: if op == 2 { dst } else { [0; 6] },
                tpa,
            }),
        }
    }

    fn target() -> Target {
        let mut t = Target::new("br0", None, BR, 77);
        t.uplink_ifindex = Some(2);
        t
    }

    #[test]
    fn nothing_is_probed_without_a_gateway_and_config_wins_over_learning() {
        let mut t = target();
        assert!(t.due(0, 0, &T).is_empty());
        t.learned.route = Some(Ipv4Addr::new(10, 0, 0, 254));
        t.learned.dhcp = Some(gw());
        t.refresh();
        assert_eq!(
            (t.rec.gateway.as_deref(), t.rec.gateway_source.as_str()),
            (Some("10.0.0.1"), "dhcp")
        );
        t.learned.config = Some(Ipv4Addr::new(10, 0, 0, 9));
        t.refresh();
        assert_eq!(t.rec.gateway_source, "config");
    }

    #[test]
    fn guests_arp_answered_from_beyond_the_uplink_teaches_the_gateway() {
        let mut t = target();
        let guests: BTreeSet<Mac> = [G1, G2].into();
        let other = Ipv4Addr::new(10, 0, 0, 50);
        for (g, ip) in [(G1, gw()), (G2, gw()), (G1, other)] {
            t.on_uplink_frame(
                &arp(1, g, BROADCAST, Ipv4Addr::new(10, 0, 1, 1), ip),
                0,
                &guests,
            );
        }
        assert_eq!(t.rec.gateway, None, "not answered yet");
        t.on_uplink_frame(
            &arp(2, [9; 6], G1, other, Ipv4Addr::new(10, 0, 1, 1)),
            0,
            &guests,
        );
        assert_eq!(t.rec.gateway.as_deref(), Some("10.0.0.50"));
        t.on_uplink_frame(
            &arp(2, GWM, G1, gw(), Ipv4Addr::new(10, 0, 1, 1)),
            0,
            &guests,
        );
        assert_eq!(
            t.rec.gateway.as_deref(),
            Some("10.0.0.1"),
            "asked for by more guests"
        );
        assert_eq!(t.rec.gateway_source, "arp");
        // From now on the guests' ARP for it is counted, and missing replies too.
        t.on_uplink_frame(
            &arp(1, G2, BROADCAST, Ipv4Addr::new(10, 0, 1, 2), gw()),
            10 * MS,
            &guests,
        );
        t.expire(2000 * MS, &T);
        // The two replies that taught it count as replies; the request after them went unanswered.
        assert_eq!(
            (
                t.rec.guest_arp_requests,
                t.rec.guest_arp_replies,
                t.rec.guest_arp_unanswered
            ),
            (1, 2, 1)
        );
        // DHCP's router option outranks what ARP suggests.
        let dhcp = Frame {
            src: GWM,
            dst: G1,
            vlan: None,
            payload: Payload::Dhcp(Dhcp {
                op: 2,
                msg_type: Some(5),
                chaddr: G1,
                yiaddr: Ipv4Addr::new(10, 0, 1, 1),
                router: Some(Ipv4Addr::new(10, 0, 0, 254)),
            }),
        };
        t.on_uplink_frame(&dhcp, 0, &guests);
        assert_eq!(t.rec.gateway_source, "dhcp");
    }

    #[test]
    fn probes_go_out_once_per_interval_and_misses_count_in_a_row() {
        let mut t = target();
        t.learned.config = Some(gw());
        t.refresh();
        let first = t.due(0, 0, &T);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].ifindex, 2);
        let Payload::Arp(a) = frames::parse(&first[0].frame).unwrap().payload else {
            panic!()
        };
        assert!(
            a.is_address_probe(),
            "no bridge address: an ARP probe from 0.0.0.0"
        );
        assert!(t.due(100 * MS, 0, &T).is_empty());
        // Answered: the MAC is learned, the next probe is unicast.
        t.on_host_frame(&arp(2, GWM, BR, gw(), Ipv4Addr::UNSPECIFIED), MS);
        assert_eq!((t.rec.arp_answered, t.rec.last_rtt_us), (1, Some(1000)));
        let second = t.due(1000 * MS, 0, &T);
        assert_eq!(frames::parse(&second[0].frame).unwrap().dst, GWM);
        // Round 2 schedules the full-MTU probe half an interval later.
        t.expire(1500 * MS, &T);
        assert_eq!(t.rec.consecutive_unanswered, 1);
        let large = t.due(1500 * MS, 0, &T);
        assert_eq!(large.len(), 1);
        assert_eq!(large[0].frame.len(), 14 + 1500);
        t.expire(2000 * MS, &T);
        assert_eq!(t.rec.large_consecutive_unanswered, 1);
        // Second miss in a row: broadcast again (the gateway's MAC may have moved).
        let third = t.due(2000 * MS, 0, &T);
        t.expire(2500 * MS, &T);
        let fourth = t.due(3000 * MS, 0, &T);
        assert_eq!(frames::parse(&third[0].frame).unwrap().dst, GWM);
        assert_eq!(frames::parse(&fourth[0].frame).unwrap().dst, BROADCAST);
        assert_eq!(t.rec.consecutive_unanswered, 2);
        // A stalled prober does not burst to catch up.
        t.expire(60_000 * MS, &T);
        let late = t.due(60_000 * MS, 0, &T);
        assert_eq!(late.len(), 1);
        assert!(t.due(60_100 * MS, 0, &T).is_empty());
    }

    #[test]
    fn the_prober_is_woken_for_the_next_probe_and_an_unanswered_arp_holds_it() {
        let mut t = target();
        assert_eq!(t.next_wake_ns(&T), None, "no gateway: nothing to send");
        t.learned.config = Some(gw());
        t.refresh();
        assert_eq!(t.next_wake_ns(&T), Some(0), "not scheduled yet: at once");
        assert_eq!(t.due(0, 0, &T).len(), 1);
        // Timeout (500 ms) within the interval: the next round.
        assert_eq!(t.next_wake_ns(&T), Some(1000 * MS));
        // A timeout longer than the interval holds the round until it expired.
        let slow = Timing {
            timeout_ns: 1500 * MS,
            ..T
        };
        assert_eq!(t.next_wake_ns(&slow), Some(1500 * MS));
        assert!(
            t.due(1000 * MS, 0, &slow).is_empty(),
            "the ARP is still out"
        );
        t.expire(1500 * MS, &slow);
        assert_eq!(t.due(1500 * MS, 0, &slow).len(), 1);
        // Round 2 schedules the large ARP at 2 s; both wait for this ARP's timeout.
        assert_eq!(t.next_wake_ns(&slow), Some(3000 * MS));
        t.on_host_frame(&arp(2, GWM, BR, gw(), Ipv4Addr::UNSPECIFIED), 1501 * MS);
        assert_eq!(t.next_wake_ns(&slow), Some(2000 * MS), "answered: at once");
    }

    #[test]
    fn with_an_address_echoes_go_beside_arp_and_the_large_probe_is_a_df_echo() {
        let mut t = target();
        t.addrs = vec![(Ipv4Addr::new(10, 0, 0, 2), 24)];
        t.learned.config = Some(gw());
        t.refresh();
        assert_eq!(t.rec.source_ip.as_deref(), Some("10.0.0.2"));
        let a = t.due(0, 0, &T);
        assert_eq!(a.len(), 1, "no echo before the gateway's MAC is known");
        t.on_host_frame(&arp(2, GWM, BR, gw(), Ipv4Addr::new(10, 0, 0, 2)), MS);
        let b = t.due(1000 * MS, 0, &T);
        assert_eq!(b.len(), 2);
        let Payload::Arp(x) = frames::parse(&b[0].frame).unwrap().payload else {
            panic!()
        };
        assert_eq!(x.spa, Ipv4Addr::new(10, 0, 0, 2));
        let large = t.due(1500 * MS, 0, &T);
        assert_eq!(large[0].frame.len(), 14 + 1500);
        let reply = Frame {
            src: GWM,
            dst: BR,
            vlan: None,
            payload: Payload::EchoReply {
                src_ip: gw(),
                dst_ip: Ipv4Addr::new(10, 0, 0, 2),
                id: 77,
                seq: 2,
                ip_len: 1500,
            },
        };
        t.on_host_frame(&reply, 1502 * MS);
        assert_eq!((t.rec.large_sent, t.rec.large_answered), (1, 1));
        // An echo reply for someone else's id is not ours.
        let mut other = reply.clone();
        if let Payload::EchoReply { id, .. } = &mut other.payload {
            *id = 1;
        }
        t.on_host_frame(&other, 1503 * MS);
        assert_eq!(t.rec.large_answered, 1);
    }
}
