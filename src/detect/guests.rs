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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
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

/// A `GuestTopo::generation` from what identifies one life of a guest's
/// port. A hash instead of a formatted string: the topology is rebuilt every
/// sample for every guest; std's SipHash with its fixed keys, so equal
/// parts always give the same value.
pub fn generation_of(parts: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(parts)
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
    /// Changes when the domain or its port restarts (a hash of domain id,
    /// state, ifindex, operstate: `generation_of`): a lifecycle change
    /// pauses probing.
    pub generation: u64,
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
    /// What `rec.paused` says, so that String is rewritten only on a change.
    shown_why: &'static str,
    /// The time of this guest's one live entry in `Guests::queue` (None:
    /// nothing can change for it until an event — `sync`, a frame — does).
    queued_ns: Option<u64>,
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
    /// When each guest next needs looking at (its probe is due, its pause
    /// ends, its probe timed out), earliest first, so `due` visits only
    /// those instead of every guest every 25 ms. Entries are never removed
    /// in place: one whose time is not its guest's `queued_ns` (rescheduled
    /// since, or the guest went away) is dropped when it comes up.
    queue: BinaryHeap<Reverse<(u64, String)>>,
    /// MAC → iface of the guests, for the frames (rebuilt in `sync` when a
    /// guest or its MAC changes); on a shared MAC the first iface wins.
    by_mac: HashMap<Mac, String>,
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
        let before = self.by_iface.len();
        self.by_iface.retain(|k, _| names.contains(k.as_str()));
        let mut macs_changed = before != self.by_iface.len();
        for g in topo {
            match self.by_iface.get_mut(&g.iface) {
                Some(cur) => {
                    let mut touched = cur.topo.running != g.running;
                    if cur.topo.generation != g.generation || cur.topo.mac != g.mac {
                        cur.paused_until_ns = now_ns + t.pause_ns;
                        cur.pause_why = "lifecycle";
                        cur.pending_ns = None;
                        touched = true;
                    }
                    if cur.topo.mac != g.mac {
                        macs_changed = true;
                        cur.rec.mac = g.mac.map(|m| frames::mac_str(&m)).unwrap_or_default();
                    }
                    if let Some(ip) = g.ip {
                        // libvirt/nova is the strongest source: it always wins.
                        let shown = cur.rec.ip.as_deref().and_then(|i| i.parse().ok());
                        if shown != Some(ip) || cur.rec.ip_source != "libvirt" {
                            touched |= shown.is_none();
                            cur.rec.ip = Some(ip.to_string());
                            cur.rec.ip_source = "libvirt".into();
                        }
                    }
                    cur.topo = g;
                    if touched {
                        Guests::schedule(&mut self.queue, cur, now_ns);
                    }
                }
                None => {
                    macs_changed = true;
                    let name = g.iface.clone();
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
                        name.clone(),
                        Guest {
                            topo: g,
                            rec,
                            next_due_ns: next,
                            pending_ns: None,
                            paused_until_ns: 0,
                            pause_why: "",
                            shown_why: "",
                            queued_ns: None,
                        },
                    );
                    if let Some(cur) = self.by_iface.get_mut(&name) {
                        Guests::schedule(&mut self.queue, cur, now_ns);
                    }
                }
            }
        }
        if macs_changed {
            self.by_mac.clear();
            for (name, g) in &self.by_iface {
                if let Some(m) = g.topo.mac {
                    self.by_mac.entry(m).or_insert_with(|| name.clone());
                }
            }
        }
        // Stale entries (guests gone, rescheduled often by frames) are only
        // dropped when they come up; keep them from piling up meanwhile.
        if self.queue.len() > 4 * self.by_iface.len() + 64 {
            self.compact();
        }
    }

    /// Has the guest looked at by `due` at `at_ns` (or earlier: a look only
    /// brings it up to date, so the earliest entry is the one kept).
    fn schedule(queue: &mut BinaryHeap<Reverse<(u64, String)>>, g: &mut Guest, at_ns: u64) {
        if g.queued_ns.is_none_or(|q| at_ns < q) {
            g.queued_ns = Some(at_ns);
            queue.push(Reverse((at_ns, g.topo.iface.clone())));
        }
    }

    /// Rebuilds the queue from the guests' live entries only.
    fn compact(&mut self) {
        self.queue = self
            .by_iface
            .iter()
            .filter_map(|(name, g)| g.queued_ns.map(|at| Reverse((at, name.clone()))))
            .collect();
    }

    /// Takes an address; returns whether the guest had none before (it may
    /// have become probeable).
    fn learn(g: &mut Guest, ip: Ipv4Addr, source: &str) -> bool {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return false;
        }
        let had_none = g.rec.ip.is_none();
        // Rewritten only on a change: guests ARP all the time, and two
        // Strings per frame were most of what a frame cost.
        if rank(source) >= rank(&g.rec.ip_source)
            && (shown_ip(g) != Some(ip) || g.rec.ip_source != source)
        {
            g.rec.ip = Some(ip.to_string());
            g.rec.ip_source = source.to_string();
        }
        had_none
    }

    /// Pauses a guest that is claiming an address (see the module doc).
    fn pause(
        queue: &mut BinaryHeap<Reverse<(u64, String)>>,
        g: &mut Guest,
        why: &'static str,
        now_ns: u64,
        t: &GuestTiming,
    ) {
        g.paused_until_ns = now_ns + t.pause_ns;
        g.pause_why = why;
        g.pending_ns = None;
        Guests::schedule(queue, g, now_ns);
    }

    /// Addresses from the host's neighbour table (weakest source).
    pub fn on_neighbour(&mut self, mac: &Mac, ip: Ipv4Addr) {
        let Some(g) = guest_by_mac(&self.by_mac, &mut self.by_iface, mac) else {
            return;
        };
        if g.rec.ip.is_none() && Guests::learn(g, ip, "neigh") {
            // Time 0: looked at on the next `due`, whenever that is.
            Guests::schedule(&mut self.queue, g, 0);
        }
    }

    /// A frame seen on a bridge or uplink: guests' own ARP and DHCP (learn
    /// addresses, pause while they claim one), answers to our probes.
    pub fn on_frame(&mut self, f: &Frame, now_ns: u64, t: &GuestTiming) {
        match &f.payload {
            Payload::Arp(a) => {
                let Some(g) = guest_by_mac(&self.by_mac, &mut self.by_iface, &a.sha) else {
                    return;
                };
                if a.is_address_probe() || a.is_announcement() {
                    Guests::pause(&mut self.queue, g, "address probing", now_ns, t);
                    if a.is_announcement() {
                        Guests::learn(g, a.spa, "arp");
                    }
                    return;
                }
                if Guests::learn(g, a.spa, "arp") {
                    Guests::schedule(&mut self.queue, g, now_ns);
                }
                if a.op == 2
                    && f.dst == g.topo.bridge_mac
                    && shown_ip(g) == Some(a.spa)
                    && g.pending_ns.take().is_some()
                {
                    g.rec.answered += 1;
                    g.rec.consecutive_unanswered = 0;
                    g.rec.last_answer_mono_ns = Some(now_ns);
                }
            }
            Payload::Dhcp(d) => {
                let Some(g) = guest_by_mac(&self.by_mac, &mut self.by_iface, &d.chaddr) else {
                    return;
                };
                Guests::pause(&mut self.queue, g, "dhcp", now_ns, t);
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

    /// Brings one guest's shown state up to date as of `now_ns`; returns
    /// whether it may be probed now and, if not, when it next needs
    /// looking at (None: only an event can change that).
    fn refresh(g: &mut Guest, now_ns: u64, t: &GuestTiming) -> Result<(), Option<u64>> {
        let why: &'static str = if !g.topo.running {
            "not running"
        } else if g.topo.mac.is_none() || g.rec.ip.is_none() {
            "no address"
        } else if now_ns < g.paused_until_ns {
            g.pause_why
        } else {
            ""
        };
        if g.shown_why != why {
            g.shown_why = why;
            g.rec.paused = why.to_string();
        }
        if !why.is_empty() {
            if g.next_due_ns < g.paused_until_ns {
                // After a pause, start again at the guest's own phase.
                g.next_due_ns =
                    g.paused_until_ns + g.topo.mac.map_or(0, |m| phase(&m, t.interval_ns));
            }
            let timed = g.topo.running && g.topo.mac.is_some() && g.rec.ip.is_some();
            return Err(timed.then_some(g.paused_until_ns));
        }
        match g.pending_ns {
            // A timeout longer than the interval: look again once it expired.
            Some(sent) => Err(Some(g.next_due_ns.max(sent + t.timeout_ns).max(now_ns + 1))),
            None if now_ns >= g.next_due_ns => Ok(()),
            None => Err(Some(g.next_due_ns)),
        }
    }

    /// When `due` next has a guest to look at (None: only an event — `sync`,
    /// a frame, a neighbour — can give it one), but not before the bucket
    /// holds a token again: the prober sleeps until then instead of ticking.
    pub fn next_wake_ns(&self, t: &GuestTiming) -> Option<u64> {
        let Reverse((at, _)) = self.queue.peek()?;
        let token_at = match self.refilled_ns {
            Some(r) if self.tokens < 1.0 => {
                let cap = t.max_per_s.max(1) as f64;
                r + ((1.0 - self.tokens) / cap * 1e9).ceil() as u64
            }
            _ => 0,
        };
        Some((*at).max(token_at))
    }

    /// Probes due now, within the global cap.
    pub fn due(&mut self, now_ns: u64, t: &GuestTiming) -> Vec<Send> {
        let last = *self.refilled_ns.get_or_insert(now_ns);
        let cap = t.max_per_s.max(1) as f64;
        self.tokens = (self.tokens + (now_ns.saturating_sub(last)) as f64 / 1e9 * cap).min(cap);
        self.refilled_ns = Some(now_ns);
        let mut ready: Vec<(u64, String)> = Vec::new();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now_ns)
        {
            let Some(Reverse((at, name))) = self.queue.pop() else {
                break;
            };
            let Some(g) = self.by_iface.get_mut(&name) else {
                continue; // the guest went away
            };
            if g.queued_ns != Some(at) {
                continue; // rescheduled since
            }
            g.queued_ns = None;
            match Guests::refresh(g, now_ns, t) {
                Ok(()) => ready.push((g.next_due_ns, name)),
                Err(Some(next)) => Guests::schedule(&mut self.queue, g, next),
                Err(None) => {}
            }
        }
        ready.sort();
        let mut out = Vec::new();
        for (due_ns, name) in ready {
            let Some(g) = self.by_iface.get_mut(&name) else {
                continue;
            };
            if self.tokens < 1.0 {
                // The rest wait for the next tokens, oldest first.
                g.queued_ns = Some(due_ns);
                self.queue.push(Reverse((due_ns, name)));
                continue;
            }
            let (Some(mac), Some(ip)) = (
                g.topo.mac,
                g.rec.ip.as_deref().and_then(|i| i.parse::<Ipv4Addr>().ok()),
            ) else {
                // Not an address we can probe (cannot happen: we wrote it).
                Guests::schedule(&mut self.queue, g, now_ns + t.interval_ns);
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
            g.next_due_ns = now_ns + t.interval_ns;
            g.rec.sent += 1;
            let next = g.next_due_ns.max(now_ns + t.timeout_ns);
            g.queued_ns = Some(next);
            self.queue.push(Reverse((next, name.clone())));
            self.sent.push_back((now_ns, name));
        }
        out
    }

    pub fn records(&self) -> Vec<GuestProbe> {
        let mut v = Vec::new();
        self.records_into(&mut v);
        v
    }

    /// The records into `out`, reusing the records (and their strings)
    /// already there.
    pub fn records_into(&self, out: &mut Vec<GuestProbe>) {
        out.truncate(self.by_iface.len());
        let kept = out.len();
        for (o, g) in out.iter_mut().zip(self.by_iface.values()) {
            o.clone_from(&g.rec);
        }
        out.extend(self.by_iface.values().skip(kept).map(|g| g.rec.clone()));
    }
}

/// The address the guest's record shows.
fn shown_ip(g: &Guest) -> Option<Ipv4Addr> {
    g.rec.ip.as_deref().and_then(|i| i.parse().ok())
}

/// The guest with this MAC (a free function so the caller can still
/// borrow the queue).
fn guest_by_mac<'a>(
    by_mac: &HashMap<Mac, String>,
    by_iface: &'a mut BTreeMap<String, Guest>,
    mac: &Mac,
) -> Option<&'a mut Guest> {
    by_iface.get_mut(by_mac.get(mac)?)
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
            generation: generation_of(gen),
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

    /// Runs the scheduler from `from_ns`, waking at the times `next` gives
    /// (None: stop early); returns send times per guest.
    fn drive(
        g: &mut Guests,
        from_ns: u64,
        to_ns: u64,
        mut next: impl FnMut(&Guests, u64) -> Option<u64>,
    ) -> BTreeMap<u32, Vec<u64>> {
        let mut sent: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let mut t = from_ns;
        while t < to_ns {
            g.expire(t, &T);
            for s in g.due(t, &T) {
                sent.entry(s.ifindex).or_default().push(t);
            }
            let Some(n) = next(g, t) else {
                break;
            };
            t = n;
        }
        sent
    }

    /// Runs the scheduler in 100 ms steps.
    fn run(g: &mut Guests, from_ns: u64, to_ns: u64) -> BTreeMap<u32, Vec<u64>> {
        drive(g, from_ns, to_ns, |_, t| Some(t + S / 10))
    }

    /// Runs the scheduler the way the prober does: woken only at the times
    /// `next_wake_ns` names (each must be in the future: no busy loop).
    fn run_by_wakes(g: &mut Guests, from_ns: u64, to_ns: u64) -> BTreeMap<u32, Vec<u64>> {
        drive(g, from_ns, to_ns, |g, t| {
            let next = g.next_wake_ns(&T)?;
            assert!(next > t, "woken again at once at {t}");
            Some(next)
        })
    }

    #[test]
    fn woken_only_when_it_says_the_schedule_sends_what_a_tick_sent() {
        let mut ticked = Guests::default();
        let mut woken = Guests::default();
        ticked.sync((0..300).map(|i| topo(i, "a")).collect(), 0, &T);
        woken.sync((0..300).map(|i| topo(i, "a")).collect(), 0, &T);
        assert_eq!(woken.next_wake_ns(&T), Some(0), "first phases are due");
        let a = run(&mut ticked, 0, 60 * S);
        let b = run_by_wakes(&mut woken, 0, 60 * S);
        let count = |m: &BTreeMap<u32, Vec<u64>>| m.values().map(|v| v.len()).sum::<usize>();
        // The cap (5/s) paces both; the tick only rounds times up to 100 ms.
        assert!(
            count(&a).abs_diff(count(&b)) <= 6,
            "{} vs {}",
            count(&a),
            count(&b)
        );
        for times in b.values() {
            assert!(times.windows(2).all(|w| w[1] - w[0] >= T.interval_ns));
        }
        let mut per_second: BTreeMap<u64, u32> = BTreeMap::new();
        for t in b.values().flatten() {
            *per_second.entry(t / S).or_default() += 1;
        }
        assert!(per_second.values().all(|n| *n <= T.max_per_s + 1));
        // Guests that cannot be probed give no wake-up at all.
        let mut idle = Guests::default();
        let mut stopped = topo(1, "a");
        stopped.running = false;
        idle.sync(vec![stopped], 0, &T);
        run_by_wakes(&mut idle, 0, 20 * S);
        assert_eq!(idle.next_wake_ns(&T), None);
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
    fn records_into_reuses_records_and_gives_what_records_gives() {
        let mut g = Guests::default();
        g.sync((0..5).map(|i| topo(i, "a")).collect(), 0, &T);
        run(&mut g, 0, 12 * S);
        let want = g.records();
        assert_eq!(want.len(), 5);
        assert!(want.iter().any(|r| r.sent > 0), "{want:?}");
        // Into fewer records than there are guests, and into more (the
        // recycled records of a second when there were more guests).
        let stale = GuestProbe {
            iface: "gone0".into(),
            mac: "02:00:00:00:00:ff".into(),
            ip: Some("10.9.9.9".into()),
            ip_source: "dhcp".into(),
            sent: 99,
            last_answer_mono_ns: Some(7),
            paused: "lifecycle".into(),
            ..Default::default()
        };
        for n in [0, 2, 5, 9] {
            let mut out = vec![stale.clone(); n];
            g.records_into(&mut out);
            assert_eq!(out, want, "into {n} recycled records");
        }
        // GuestProbe's hand-written clone_from copies every field.
        let mut r = stale.clone();
        r.clone_from(&want[0]);
        assert_eq!(r, want[0]);
        let mut back = want[0].clone();
        back.clone_from(&stale);
        assert_eq!(back, stale);
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

    /// The guest's live queue entries (the others are stale).
    fn live_entries(g: &Guests) -> usize {
        g.queue
            .iter()
            .filter(|Reverse((at, name))| {
                g.by_iface
                    .get(name)
                    .is_some_and(|x| x.queued_ns == Some(*at))
            })
            .count()
    }

    #[test]
    fn a_paused_guest_is_not_probed_and_resumes_at_its_phase() {
        let mut g = Guests::default();
        g.sync(vec![topo(7, "a")], 0, &T);
        let p = phase(&mac(7), T.interval_ns);
        // Restarted at 1 s: paused for 30 s, then probed at its own phase.
        g.sync(vec![topo(7, "b")], S, &T);
        let sent = run(&mut g, 0, 31 * S + p + S);
        let first = sent[&107][0];
        assert!(
            first >= 31 * S + p && first < 31 * S + p + S / 10 + 1,
            "first probe at {first}, phase {p}"
        );
        // A guest claiming its address again and again stays paused.
        let mut g = Guests::default();
        g.sync(vec![topo(3, "a")], 0, &T);
        let claim = arp_from(
            3,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 0, 3),
            1,
            frames::BROADCAST,
        );
        let mut t = 0;
        while t < 60 * S {
            g.on_frame(&claim, t, &T);
            assert!(g.due(t, &T).is_empty(), "probed at {t} while claiming");
            t += 5 * S;
        }
        assert_eq!(g.records()[0].paused, "address probing");
        // The last claim at 55 s: paused until 85 s, then its phase.
        let p = phase(&mac(3), T.interval_ns);
        let sent = run(&mut g, 60 * S, 85 * S + p + S);
        assert_eq!(sent[&103].len(), 1, "probed again after the pause");
        assert!(sent[&103][0] >= 85 * S + p);
    }

    #[test]
    fn a_removed_guest_leaves_the_queue_and_a_readded_one_starts_afresh() {
        let mut g = Guests::default();
        g.sync((0..100).map(|i| topo(i, "a")).collect(), 0, &T);
        run(&mut g, 0, 5 * S);
        g.sync((0..10).map(|i| topo(i, "a")).collect(), 5 * S, &T);
        let sent = run(&mut g, 5 * S, 30 * S);
        assert!(
            sent.keys().all(|ifindex| *ifindex < 110),
            "a removed guest was probed: {sent:?}"
        );
        assert_eq!(live_entries(&g), 10);
        assert!(g.queue.len() <= 10, "stale entries left: {}", g.queue.len());
        // Churn: guests come and go every second; the queue stays bounded.
        for round in 0..200u64 {
            let from = (round % 2) as usize * 50;
            g.sync(
                (from..from + 50).map(|i| topo(i, "a")).collect(),
                (30 + round) * S,
                &T,
            );
        }
        assert!(
            g.queue.len() <= 4 * 50 + 64,
            "queue grew to {}",
            g.queue.len()
        );
        // vnet20, gone since the last round, re-added at 300 s: probed first
        // at its phase, not at a due time left from before.
        g.sync(vec![topo(20, "a")], 300 * S, &T);
        let p = phase(&mac(20), T.interval_ns);
        let sent = run(&mut g, 300 * S, 300 * S + p + S);
        assert_eq!(sent[&120].len(), 1);
        assert!(
            sent[&120][0] >= 300 * S + p,
            "{} before its phase {p}",
            sent[&120][0]
        );
    }

    #[test]
    fn the_rate_cap_holds_and_guests_waiting_for_tokens_go_oldest_first() {
        let mut g = Guests::default();
        let t = GuestTiming { max_per_s: 2, ..T };
        g.sync((0..40).map(|i| topo(i, "a")).collect(), 0, &t);
        // Everyone due at once (all phases passed), 2 tokens a second.
        let mut sent: Vec<(u64, u64)> = Vec::new(); // (time, due time)
        let mut now = 10 * S;
        while now < 40 * S {
            g.expire(now, &t);
            let due: BTreeMap<u32, u64> = g
                .by_iface
                .values()
                .map(|x| (x.topo.ifindex, x.next_due_ns))
                .collect();
            for s in g.due(now, &t) {
                sent.push((now, due[&s.ifindex]));
            }
            now += S / 10;
        }
        let mut per_second: BTreeMap<u64, u32> = BTreeMap::new();
        for (at, _) in &sent {
            *per_second.entry(at / S).or_default() += 1;
        }
        assert!(per_second.values().all(|n| *n <= 3), "{per_second:?}");
        let firsts: Vec<u64> = sent.iter().take(40).map(|(_, due)| *due).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] <= w[1]),
            "not oldest first: {firsts:?}"
        );
        assert!(sent.len() >= 55, "tokens left unused: {}", sent.len());
    }

    #[test]
    fn a_guest_that_starts_running_or_gets_an_address_is_probed_without_polling() {
        let mut g = Guests::default();
        let mut stopped = topo(1, "a");
        stopped.running = false;
        let mut no_ip = topo(2, "a");
        no_ip.ip = None;
        g.sync(vec![stopped, no_ip.clone()], 0, &T);
        assert!(run(&mut g, 0, 20 * S).is_empty());
        // Neither is looked at while nothing happens to it.
        assert_eq!(live_entries(&g), 0);
        g.sync(vec![topo(1, "a"), no_ip], 20 * S, &T);
        g.on_neighbour(&mac(2), Ipv4Addr::new(10, 0, 0, 2));
        // Their phases passed long ago: probed at once, then each interval.
        let sent = run(&mut g, 20 * S, 29 * S);
        assert_eq!((sent[&101].len(), sent[&102].len()), (1, 1), "{sent:?}");
        assert_eq!(g.records()[0].paused, "");
    }
}
