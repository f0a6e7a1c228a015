//! The prober thread: sends the gateway and guest probes and reads what
//! comes back, on its own thread so that a slow socket never costs the
//! sampling cadence. The sampler hands it the topology of each sample
//! (`ProbeHandle::set_topology`) and copies its results into the sample
//! (`ProbeHandle::snapshot`).
//!
//! Sockets, per watched bridge: a capture on the bridge device (frames
//! delivered to the host: answers to our probes, guests' broadcast ARP and
//! DHCP) and one on each uplink port (guests' ARP for the gateway leaving,
//! the replies coming back, DHCP replies), each non-promiscuous with an
//! ARP/DHCP/echo-reply-only kernel filter; one send-only AF_PACKET socket.
//! Gateway probes are written straight onto the uplink port with the
//! bridge's own MAC as source, so the answer is delivered to the host and
//! never flooded to guests; guest probes straight onto the guest's port.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::frames::{self, Mac};
use super::gateway::{ProbeKind, Target, Timing};
use super::guests::{GuestTiming, GuestTopo, Guests};
use crate::sample::Probes;
use crate::source::packet::{self, RawSender};

/// What the probes need to know about one bridge (from the latest sample).
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeTopo {
    pub name: String,
    pub ifindex: u32,
    pub mac: Mac,
    pub mtu: u32,
    /// Uplink ports: (name, ifindex, has carrier and forwards).
    pub uplinks: Vec<(String, u32, bool)>,
    /// Probe targets: None = untagged, Some(vid) = a VLAN the guests use.
    pub vlans: Vec<Option<u16>>,
    pub guests: Vec<GuestTopo>,
    /// Configured gateways for this bridge, by VLAN.
    pub config_gateways: BTreeMap<Option<u16>, Ipv4Addr>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Topology {
    pub bridges: Vec<BridgeTopo>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProberConfig {
    pub gateway: Timing,
    pub guest: GuestTiming,
    pub gateway_probes: bool,
    pub guest_probes: bool,
}

/// Frames the captures keep: ARP, DHCP, ICMP echo replies — tagged or not.
const HOST_FILTER: &str = "arp or (udp and (port 67 or port 68)) or (icmp and icmp[icmptype] == icmp-echoreply) or (vlan and (arp or (udp and (port 67 or port 68)) or (icmp and icmp[icmptype] == icmp-echoreply)))";
const UPLINK_FILTER: &str =
    "arp or (udp and (port 67 or port 68)) or (vlan and (arp or (udp and (port 67 or port 68))))";
/// Enough for a DHCP message with its options; ARP needs 42.
const SNAPLEN: i32 = 700;
const BUFFER_BYTES: i32 = 256 * 1024;
const HOSTNET_EVERY_NS: u64 = 10_000_000_000;
const REOPEN_EVERY_NS: u64 = 10_000_000_000;
/// How long `snapshot` waits for the prober's answer before it takes the
/// results it has (a prober stuck in a slow dump must not stall sampling).
const ANSWER_WAIT: Duration = Duration::from_millis(100);
/// The prober sleeps until its next probe is due, a frame comes or it is
/// woken (snapshot, stop); never longer than this, so a schedule it was not
/// told about is late by at most this much.
const MAX_SLEEP_NS: u64 = 1_000_000_000;
/// Without an eventfd nothing can wake it: the old fixed tick.
const TICK_NS: u64 = 25_000_000;
/// Guest probes go out in rounds at most this often (each sends what the
/// token bucket allows): at the 20/s default cap one round every 50 ms was
/// 20 wake-ups a second; a guest's probe is at most this much late, against
/// an interval of seconds.
const GUEST_ROUND_NS: u64 = 200_000_000;

/// A probe that went out, kept for a few seconds so a snapshot can be
/// taken as of the moment the sampler read the link counters.
#[derive(Clone, Debug)]
enum Sent {
    Gateway {
        bridge: String,
        vlan: Option<u16>,
        kind: ProbeKind,
    },
    Guest {
        iface: String,
    },
}

struct Shared {
    topology: Mutex<Option<Topology>>,
    out: Mutex<Out>,
    /// Signalled when the prober has published what `snapshot` asked for.
    published: Condvar,
    /// Written by `snapshot` and on stop to wake the prober's poll at once.
    wake: crate::wake::Wake,
    stop: AtomicBool,
}

/// The results are copied out when the sampler asks for them (once per
/// sample), not on a timer: copying hundreds of guest records 20 times a
/// second was most of the prober's cost at 500 vNICs.
#[derive(Default)]
struct Out {
    probes: Probes,
    /// The sends of the last seconds (oldest first).
    sent: VecDeque<(u64, Sent)>,
    /// Requests made by `snapshot`, and the latest one answered.
    wanted: u64,
    answered: u64,
}

const RECENT_NS: u64 = 5_000_000_000;

pub struct ProbeHandle {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeHandle {
    pub fn start(cfg: ProberConfig) -> ProbeHandle {
        let shared = Arc::new(Shared {
            topology: Mutex::new(None),
            out: Mutex::new(Out::default()),
            published: Condvar::new(),
            wake: crate::wake::Wake::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hvflight-prober".into())
            .spawn(move || Prober::new(cfg, s).run())
            .ok();
        if thread.is_none() {
            shared
                .out
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .probes
                .errors
                .push("prober thread could not be started".into());
        }
        ProbeHandle { shared, thread }
    }

    pub fn set_topology(&self, t: Topology) {
        *self
            .shared
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(t);
    }

    /// The results as of `at_mono_ns` (the sample's start, when its link
    /// counters were read): probes sent after it are not counted yet, so
    /// the detector can take our own probes out of the link counters exactly.
    ///
    /// Asks the prober thread for fresh results and waits for them (at most
    /// `ANSWER_WAIT`; a prober that did not answer the last request is not
    /// waited for again until it has).
    pub fn snapshot(&self, at_mono_ns: u64) -> Probes {
        let mut p = Probes::default();
        self.snapshot_into(at_mono_ns, &mut p);
        p
    }

    /// `snapshot` into `p`, reusing its records (a sample's, recycled).
    pub fn snapshot_into(&self, at_mono_ns: u64, p: &mut Probes) {
        let mut out = self.shared.out.lock().unwrap_or_else(|e| e.into_inner());
        if self.thread.is_some() && out.answered == out.wanted {
            out.wanted += 1;
            let want = out.wanted;
            self.shared.wake.wake();
            out = self
                .shared
                .published
                .wait_timeout_while(out, ANSWER_WAIT, |o| o.answered < want)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        p.clone_from(&out.probes);
        for (t, sent) in out.sent.iter().rev() {
            if *t <= at_mono_ns {
                break;
            }
            match sent {
                Sent::Gateway { bridge, vlan, kind } => {
                    if let Some(g) = p
                        .bridges
                        .iter_mut()
                        .find(|g| &g.bridge == bridge && g.vlan == *vlan)
                    {
                        let c = match kind {
                            ProbeKind::Icmp => &mut g.icmp_sent,
                            ProbeKind::Large => &mut g.large_sent,
                            _ => &mut g.arp_sent,
                        };
                        *c = c.saturating_sub(1);
                    }
                }
                Sent::Guest { iface } => {
                    if let Some(g) = p.guests.iter_mut().find(|g| &g.iface == iface) {
                        g.sent = g.sent.saturating_sub(1);
                    }
                }
            }
        }
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Host,
    Uplink,
}

struct Cap {
    cap: pcap::Capture<pcap::Active>,
    bridge: String,
    role: Role,
}

struct Prober {
    cfg: ProberConfig,
    shared: Arc<Shared>,
    sender: Option<RawSender>,
    caps: BTreeMap<String, Cap>,
    /// Devices whose capture failed → when to try again.
    failed: BTreeMap<String, (u64, String)>,
    targets: BTreeMap<(String, Option<u16>), Target>,
    guests: Guests,
    topo: Topology,
    guest_macs: BTreeMap<String, BTreeSet<Mac>>,
    netlink: Option<crate::source::netlink::RouteSocket>,
    hostnet: packet::HostIpv4,
    hostnet_at: Option<u64>,
    /// Counts the changes of `hostnet.addrs`: the guests' `bridge_addrs` come from it.
    hostnet_gen: u64,
    /// The `hostnet_gen` the guests were last synced with (None: never).
    guests_synced_gen: Option<u64>,
    /// Guest port ifindex → iface, for the sends' bookkeeping.
    guest_iface: BTreeMap<u32, String>,
    errors: Vec<String>,
    icmp_id: u16,
    /// Sends of the last seconds (see `Sent`).
    sent: VecDeque<(u64, Sent)>,
    /// When the send socket may be tried again after failing to open.
    sender_retry_ns: u64,
    /// When the next guest round may go out (see `GUEST_ROUND_NS`).
    guest_round_ns: u64,
}

fn mono_ns() -> u64 {
    crate::clock::now().mono_ns
}

impl Prober {
    fn new(cfg: ProberConfig, shared: Arc<Shared>) -> Prober {
        Prober {
            cfg,
            shared,
            sender: None,
            caps: BTreeMap::new(),
            failed: BTreeMap::new(),
            targets: BTreeMap::new(),
            guests: Guests::default(),
            topo: Topology::default(),
            guest_macs: BTreeMap::new(),
            netlink: None,
            hostnet: Default::default(),
            hostnet_at: None,
            hostnet_gen: 0,
            guests_synced_gen: None,
            guest_iface: BTreeMap::new(),
            errors: Vec::new(),
            sent: VecDeque::new(),
            sender_retry_ns: 0,
            guest_round_ns: 0,
            // Echo ids of this agent: tell our replies from other pingers'.
            icmp_id: (std::process::id() & 0xffff) as u16,
        }
    }

    fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = mono_ns();
            let topo = self
                .shared
                .topology
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(t) = topo {
                self.apply(t, now);
            }
            if self
                .hostnet_at
                .is_none_or(|t| now.saturating_sub(t) >= HOSTNET_EVERY_NS)
                && !self.topo.bridges.is_empty()
            {
                self.refresh_hostnet(now);
            }
            // Answers and `snapshot` wake the poll at once; otherwise it
            // sleeps until the next probe is due.
            let now = mono_ns();
            let wait = self.next_wake_ns(now).saturating_sub(now);
            self.wait_and_read(Duration::from_nanos(wait));
            let now = mono_ns();
            self.send_due(now);
            self.publish_if_asked();
        }
    }

    /// When the loop next has something to do without being woken: a
    /// gateway or guest probe due, the host's addresses to re-read, the
    /// send socket to retry.
    fn next_wake_ns(&self, now: u64) -> u64 {
        let mut at = now + MAX_SLEEP_NS;
        if self.shared.wake.fd().is_none() {
            at = now + TICK_NS;
        }
        if !self.topo.bridges.is_empty() {
            let hostnet = self.hostnet_at.map_or(now, |t| t + HOSTNET_EVERY_NS);
            at = at.min(hostnet);
        }
        if self.sender.is_none() {
            return at.min(self.sender_retry_ns);
        }
        if self.cfg.gateway_probes {
            for tg in self.targets.values() {
                if let Some(t) = tg.next_wake_ns(&self.cfg.gateway) {
                    at = at.min(t);
                }
            }
        }
        if self.cfg.guest_probes {
            if let Some(t) = self.guests.next_wake_ns(&self.cfg.guest) {
                at = at.min(t.max(self.guest_round_ns));
            }
        }
        at
    }

    fn apply(&mut self, t: Topology, now: u64) {
        let changed_bridges = t.bridges.iter().map(|b| (&b.name, &b.uplinks)).ne(self
            .topo
            .bridges
            .iter()
            .map(|b| (&b.name, &b.uplinks)));
        // Captures: the bridge device and each uplink port.
        let mut wanted: BTreeMap<String, (String, Role)> = BTreeMap::new();
        for b in &t.bridges {
            wanted.insert(b.name.clone(), (b.name.clone(), Role::Host));
            for (u, _, _) in &b.uplinks {
                wanted.insert(u.clone(), (b.name.clone(), Role::Uplink));
            }
        }
        self.caps.retain(|dev, c| {
            wanted
                .get(dev)
                .is_some_and(|(b, r)| *b == c.bridge && *r == c.role)
        });
        self.failed.retain(|dev, _| wanted.contains_key(dev));
        for (dev, (bridge, role)) in wanted {
            if self.caps.contains_key(&dev)
                || self.failed.get(&dev).is_some_and(|(at, _)| now < *at)
            {
                continue;
            }
            let filter = if role == Role::Host {
                HOST_FILTER
            } else {
                UPLINK_FILTER
            };
            match packet::open_capture(&dev, filter, SNAPLEN, BUFFER_BYTES) {
                Ok(cap) => {
                    self.failed.remove(&dev);
                    self.caps.insert(dev, Cap { cap, bridge, role });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "probe capture unavailable");
                    self.failed.insert(dev, (now + REOPEN_EVERY_NS, e));
                }
            }
        }
        // Targets per bridge and VLAN.
        let keys: BTreeSet<(String, Option<u16>)> = t
            .bridges
            .iter()
            .flat_map(|b| b.vlans.iter().map(move |v| (b.name.clone(), *v)))
            .collect();
        self.targets.retain(|k, _| keys.contains(k));
        for b in &t.bridges {
            for v in &b.vlans {
                let id = self.icmp_id;
                let tg = self
                    .targets
                    .entry((b.name.clone(), *v))
                    .or_insert_with(|| Target::new(&b.name, *v, b.mac, id));
                tg.bridge_mac = b.mac;
                tg.bridge_mtu = b.mtu;
                tg.uplink_ifindex = b
                    .uplinks
                    .iter()
                    .find(|u| u.2)
                    .or(b.uplinks.first())
                    .map(|u| u.1);
                tg.rec.uplinks = b.uplinks.iter().map(|u| u.0.clone()).collect();
                tg.learned.config = b.config_gateways.get(v).copied();
                tg.refresh();
            }
        }
        // The sampler hands over the topology every sample; the guests in it
        // rarely change, and cloning and syncing hundreds of them each
        // second was most of what the prober did besides its schedule.
        let same_guests = self.guests_synced_gen == Some(self.hostnet_gen)
            && t.bridges
                .iter()
                .map(|b| (&b.name, b.ifindex, &b.guests))
                .eq(self
                    .topo
                    .bridges
                    .iter()
                    .map(|b| (&b.name, b.ifindex, &b.guests)));
        if !same_guests {
            self.sync_guests(&t, now);
        }
        self.topo = t;
        if changed_bridges {
            self.hostnet_at = None; // learn addresses and routes of new bridges now
        }
    }

    fn sync_guests(&mut self, t: &Topology, now: u64) {
        self.guests_synced_gen = Some(self.hostnet_gen);
        self.guest_iface = t
            .bridges
            .iter()
            .flat_map(|b| &b.guests)
            .map(|g| (g.ifindex, g.iface.clone()))
            .collect();
        self.guest_macs = t
            .bridges
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    b.guests.iter().filter_map(|g| g.mac).collect(),
                )
            })
            .collect();
        let mut all = Vec::new();
        for b in &t.bridges {
            let addrs = self.addrs_of(b.ifindex);
            for g in &b.guests {
                let mut g = g.clone();
                g.bridge_addrs = addrs.clone();
                all.push(g);
            }
        }
        if self.cfg.guest_probes {
            self.guests.sync(all, now, &self.cfg.guest);
        }
    }

    fn addrs_of(&self, ifindex: u32) -> Vec<(Ipv4Addr, u8)> {
        self.hostnet
            .addrs
            .iter()
            .filter(|(i, _, _)| *i == ifindex)
            .map(|(_, a, p)| (*a, *p))
            .collect()
    }

    fn refresh_hostnet(&mut self, now: u64) {
        self.hostnet_at = Some(now);
        let sock = match crate::source::netlink::RouteSocket::ensure(
            &mut self.netlink,
            Duration::from_millis(500),
        ) {
            Ok(s) => s,
            Err(e) => {
                self.note(format!("rtnetlink: {e}"));
                return;
            }
        };
        match packet::host_ipv4(sock) {
            Ok(h) => {
                if h.addrs != self.hostnet.addrs {
                    self.hostnet_gen += 1;
                }
                self.hostnet = h;
            }
            Err(e) => {
                self.netlink = None;
                self.note(format!("rtnetlink: {e}"));
                return;
            }
        }
        for b in &self.topo.bridges {
            let addrs = self.addrs_of(b.ifindex);
            let route = self
                .hostnet
                .default_routes
                .iter()
                .find(|(oif, _)| *oif == b.ifindex)
                .map(|(_, g)| *g);
            for ((name, _), tg) in self.targets.iter_mut() {
                if name == &b.name {
                    tg.addrs = addrs.clone();
                    tg.learned.route = route;
                    tg.refresh();
                }
            }
        }
        let guest_ports: BTreeSet<u32> = self.topo.bridges.iter().map(|b| b.ifindex).collect();
        for (ifindex, ip, mac) in &self.hostnet.neighbours {
            if guest_ports.contains(ifindex) {
                self.guests.on_neighbour(mac, *ip);
            }
        }
    }

    fn note(&mut self, e: String) {
        if !self.errors.contains(&e) {
            tracing::warn!(error = %e, "prober");
            self.errors.push(e);
            if self.errors.len() > 20 {
                self.errors.remove(0);
            }
        }
    }

    fn wait_and_read(&mut self, max_wait: Duration) {
        let mut fds: Vec<libc::pollfd> = self
            .caps
            .values()
            .map(|c| libc::pollfd {
                fd: c.cap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .chain([self.shared.wake.pollfd()])
            .collect();
        crate::wake::poll(&mut fds, Some(max_wait));
        // The eventfd is the last entry; drain it only when `snapshot` wrote.
        if fds.last().is_some_and(|p| p.revents & libc::POLLIN != 0) {
            self.shared.wake.drain();
        }
        let now = mono_ns();
        let mut broken = Vec::new();
        let empty = BTreeSet::new();
        for (dev, c) in self.caps.iter_mut() {
            // Drain whatever is there (bounded: a flood cannot keep us here).
            for _ in 0..512 {
                match c.cap.next_packet() {
                    Ok(p) => {
                        let Some(f) = frames::parse(p.data) else {
                            continue;
                        };
                        let macs = self.guest_macs.get(&c.bridge).unwrap_or(&empty);
                        for ((name, _), tg) in self.targets.iter_mut() {
                            if name != &c.bridge {
                                continue;
                            }
                            match c.role {
                                Role::Host => tg.on_host_frame(&f, now),
                                Role::Uplink => tg.on_uplink_frame(&f, now, macs),
                            }
                        }
                        if self.cfg.guest_probes {
                            self.guests.on_frame(&f, now, &self.cfg.guest);
                        }
                    }
                    Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => break,
                    Err(e) => {
                        broken.push((dev.clone(), e.to_string()));
                        break;
                    }
                }
            }
        }
        for (dev, e) in broken {
            // The device went away or changed: reopen on a later round.
            self.caps.remove(&dev);
            self.failed
                .insert(dev.clone(), (now + REOPEN_EVERY_NS / 10, e.clone()));
            self.note(format!("{dev}: {e}"));
        }
    }

    fn send_due(&mut self, now: u64) {
        if self.sender.is_none() {
            if now < self.sender_retry_ns {
                return;
            }
            match RawSender::open() {
                Ok(s) => self.sender = Some(s),
                Err(e) => {
                    self.sender_retry_ns = now + REOPEN_EVERY_NS / 10;
                    self.note(format!("AF_PACKET socket: {e}"));
                    return;
                }
            }
        }
        let Some(sender) = self.sender.as_ref() else {
            return;
        };
        let mut errs = Vec::new();
        if self.cfg.gateway_probes {
            for ((bridge, vlan), tg) in self.targets.iter_mut() {
                tg.expire(now, &self.cfg.gateway);
                // Spread bridges over the interval.
                let phase = bridge
                    .bytes()
                    .fold(vlan.unwrap_or(0) as u64, |h, b| {
                        h.wrapping_mul(31).wrapping_add(b as u64)
                    })
                    .wrapping_mul(7_919_000);
                for s in tg.due(now, phase, &self.cfg.gateway) {
                    match sender.send(s.ifindex, &s.frame) {
                        Ok(()) => self.sent.push_back((
                            mono_ns(),
                            Sent::Gateway {
                                bridge: bridge.clone(),
                                vlan: *vlan,
                                kind: s.kind,
                            },
                        )),
                        Err(e) => {
                            tg.rec.send_errors += 1;
                            errs.push(format!("send on ifindex {}: {e}", s.ifindex));
                        }
                    }
                }
            }
        }
        if self.cfg.guest_probes {
            self.guests.expire(now, &self.cfg.guest);
        }
        if self.cfg.guest_probes && now >= self.guest_round_ns {
            self.guest_round_ns = now + GUEST_ROUND_NS;
            for s in self.guests.due(now, &self.cfg.guest) {
                match sender.send(s.ifindex, &s.frame) {
                    Ok(()) => {
                        let iface = self
                            .guest_iface
                            .get(&s.ifindex)
                            .cloned()
                            .unwrap_or_default();
                        self.sent.push_back((mono_ns(), Sent::Guest { iface }));
                    }
                    Err(e) => errs.push(format!("send on ifindex {}: {e}", s.ifindex)),
                }
            }
        }
        for e in errs {
            // ENOBUFS from a dropping device is data (send_errors), not news each time.
            if !e.contains("No buffer space") {
                self.note(e);
            }
        }
    }

    /// Publishes when `snapshot` asked: after the sample's start, so every
    /// probe its link counters may hold is in these counters (and the later
    /// ones are taken out again by their send times).
    fn publish_if_asked(&mut self) {
        let wanted = {
            let out = self.shared.out.lock().unwrap_or_else(|e| e.into_inner());
            if out.wanted == out.answered {
                return;
            }
            out.wanted
        };
        let horizon = mono_ns().saturating_sub(RECENT_NS);
        while self.sent.front().is_some_and(|(t, _)| *t < horizon) {
            self.sent.pop_front();
        }
        let mut out = self.shared.out.lock().unwrap_or_else(|e| e.into_inner());
        // Into the results published a second ago: their records and
        // strings are reused (the sampler waits for this answer anyway).
        let p = &mut out.probes;
        p.bridges.clear();
        p.bridges
            .extend(self.targets.values().map(|t| t.rec.clone()));
        if self.cfg.guest_probes {
            self.guests.records_into(&mut p.guests);
        } else {
            p.guests.clear();
        }
        p.errors.clone_from(&self.errors);
        p.errors.extend(
            self.failed
                .iter()
                .map(|(d, (_, e))| format!("capture on {d}: {e}")),
        );
        out.sent.clone_from(&self.sent);
        out.answered = wanted;
        drop(out);
        self.shared.published.notify_all();
    }
}
