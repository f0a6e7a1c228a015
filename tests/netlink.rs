//! The rtnetlink collectors (links + bridges, FDB, neighbours, qdiscs) and
//! the rtnetlink event source. Conversions are tested on raw messages
//! captured from this machine's kernel (tests/fixtures/netlink/, see
//! capture.sh there); the collectors and the event thread also run
//! in-process inside namespaces the tests create — sockets opened on a
//! thread that entered the namespace, since setns() is per thread.
//!
//! `netlink_collect_cost` (ignored) is the benchmark behind the numbers in
//! the report: `cargo test --release --test netlink -- --ignored --nocapture`.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;

use hvflight::agent::EventSource;
use hvflight::collect::fdb::{FdbCollector, FdbSection};
use hvflight::collect::links::{
    parse_link, parse_link_payload, port_vlans, sections, LinksCollector,
};
use hvflight::collect::neigh::{FamilyCount, NeighCollector};
use hvflight::collect::qdisc::{fill_qdisc, QdiscCollector};
use hvflight::collect::{CollectError, Collector, Context};
use hvflight::events::rtnetlink::events_from_datagram;
use hvflight::lab::{self, Lab, LabConfig};
use hvflight::sample::{Event, EventKind, FdbEntry, Neighbours, Sample};

const TIMEOUT: Duration = Duration::from_millis(1000);

// ---------------------------------------------------------------- fixtures

fn fixture(name: &str) -> Vec<u8> {
    let p = format!(
        "{}/tests/fixtures/netlink/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// (nlmsg_type, payload after the 16-byte header) of each framed message.
fn frames(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        assert!(len >= 16 && off + len <= buf.len(), "bad frame at {off}");
        out.push((ty, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// Every message of a captured dump, fully decoded by netlink-packet-route.
fn decoded(name: &str) -> Vec<RouteNetlinkMessage> {
    let buf = fixture(name);
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len])
            .unwrap_or_else(|e| panic!("{name} at {off}: {e}"));
        if let NetlinkPayload::InnerMessage(m) = m.payload {
            out.push(m);
        }
        off += (len + 3) & !3;
    }
    out
}

/// The link dump the way the links collector reads it: only the kept attributes.
fn fixture_links() -> Vec<RouteNetlinkMessage> {
    let buf = fixture("dump-link.bin");
    frames(&buf)
        .into_iter()
        .filter(|(ty, _)| *ty == 16)
        .map(|(_, p)| RouteNetlinkMessage::NewLink(parse_link_payload(p).expect("link payload")))
        .collect()
}

fn fixture_names() -> HashMap<u32, String> {
    let (links, _) = sections(&fixture_links(), &[]);
    links.into_iter().map(|l| (l.ifindex, l.name)).collect()
}

fn index_of(names: &HashMap<u32, String>, name: &str) -> u32 {
    *names.iter().find(|(_, n)| *n == name).unwrap().0
}

#[test]
fn link_dump_gives_every_link_and_the_bridge_with_its_port() {
    let (links, bridges) = sections(&fixture_links(), &[]);
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo", "br0", "p0"]);
    let br0 = &links[1];
    let p0 = &links[2];
    assert_eq!(
        (br0.kind.as_str(), br0.mac.as_str()),
        ("bridge", "fe:54:00:00:00:01")
    );
    assert!(br0.admin_up);
    assert_eq!(p0.kind, "veth");
    assert_eq!(p0.mac, "fe:54:00:00:00:02");
    assert_eq!(p0.master, Some(br0.ifindex));
    assert_eq!((p0.mtu, p0.txqlen), (1500, Some(1000)));
    assert_eq!((p0.operstate.as_str(), p0.carrier), ("up", Some(true)));
    assert!(p0.carrier_changes.is_some());
    // br0 pinged the guest 3 times through p0 before the capture.
    assert!(
        p0.stats.tx_packets >= 3 && p0.stats.rx_packets >= 3,
        "{:?}",
        p0.stats
    );
    assert!(p0.stats.tx_bytes > p0.stats.tx_packets * 60);

    assert_eq!(bridges.len(), 1);
    let b = &bridges[0];
    assert_eq!((b.name.as_str(), b.ifindex), ("br0", br0.ifindex));
    assert_eq!(b.stp_state, Some(0));
    assert_eq!(b.forward_delay_cs, Some(1500));
    assert_eq!(b.hello_time_cs, Some(200));
    assert_eq!(b.max_age_cs, Some(2000));
    assert_eq!(b.ageing_time_cs, Some(30000));
    assert_eq!(b.multicast_snooping, Some(true));
    assert_eq!(b.topology_change, Some(false));
    assert_eq!(b.bridge_id.as_deref(), Some("8000.fe:54:00:00:00:01"));
    assert_eq!(b.root_id, b.bridge_id);
    assert_eq!(b.ports.len(), 1);
    let port = &b.ports[0];
    assert_eq!((port.name.as_str(), port.state), ("p0", 3));
    assert_eq!(port.learning, Some(true));
    assert_eq!(port.unicast_flood, Some(true));
    assert_eq!(port.broadcast_flood, Some(true));
    assert_eq!(port.bpdu_guard, Some(false));
    assert_eq!(port.isolated, Some(false));
    assert_eq!(port.cost, Some(2));
    assert_eq!(port.priority, Some(32));

    // Only the watched bridges; links stay complete.
    let (links, bridges) = sections(&fixture_links(), &["br9".to_string()]);
    assert_eq!((links.len(), bridges.len()), (3, 0));
}

#[test]
fn partial_link_decoding_loses_nothing_a_sample_keeps() {
    let fast = fixture_links();
    let full = decoded("dump-link.bin");
    assert_eq!(fast.len(), full.len());
    for (a, b) in fast.iter().zip(&full) {
        let (RouteNetlinkMessage::NewLink(a), RouteNetlinkMessage::NewLink(b)) = (a, b) else {
            panic!("not a link message");
        };
        let (pa, pb) = (parse_link(a), parse_link(b));
        assert_eq!(pa.link, pb.link);
        assert_eq!(pa.bridge_info, pb.bridge_info);
        assert_eq!(pa.port_info, pb.port_info);
    }
}

#[test]
fn af_bridge_link_dump_carries_the_port_state_in_protinfo() {
    // What `bridge link show` reads, and what the kernel multicasts when a
    // port's state changes: IFLA_PROTINFO, which netlink-packet-route leaves
    // undecoded; parse_link re-parses it.
    let msgs = decoded("dump-link-bridge.bin");
    let ports: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        })
        .filter(|p| p.port_info.is_some())
        .collect();
    let p0 = ports
        .iter()
        .find(|p| p.link.name == "p0")
        .expect("p0 in AF_BRIDGE dump");
    let port = hvflight::collect::links::port_from(&p0.link, p0.port_info.as_ref().unwrap());
    assert_eq!(port.state, 3);
    assert_eq!(port.learning, Some(true));
    assert_eq!(port.cost, Some(2));
    // This kernel has no VLAN filtering (machine-notes): no port VLANs.
    assert!(port_vlans(&msgs).is_empty());
}

#[test]
fn fdb_dump_gives_each_mac_on_its_port_with_its_state() {
    let names = fixture_names();
    let (br0, p0) = (index_of(&names, "br0"), index_of(&names, "p0"));
    let buf = fixture("dump-fdb.bin");
    let payloads: Vec<&[u8]> = frames(&buf)
        .into_iter()
        .filter(|(ty, _)| *ty == 28)
        .map(|(_, p)| p)
        .collect();
    let mut s = FdbSection::new(&names, None, 10_000);
    payloads.iter().for_each(|p| s.add_payload(p));
    assert_eq!((s.dropped, s.undecodable), (0, 0));
    let find = |mac: &str| {
        s.entries
            .iter()
            .find(|e| e.mac == mac && e.master == Some(br0))
            .unwrap_or_else(|| panic!("{mac} not in {:#?}", s.entries))
    };
    let guest = find("52:54:00:00:00:02");
    assert_eq!((guest.ifindex, guest.port.as_str()), (p0, "p0"));
    assert_eq!(guest.state, "dynamic");
    assert!(guest.updated_s.is_some_and(|s| s < 600));
    let stat = find("52:54:00:00:00:09");
    assert_eq!((stat.port.as_str(), stat.state.as_str()), ("p0", "static"));
    let own = find("fe:54:00:00:00:02");
    assert_eq!((own.port.as_str(), own.state.as_str()), ("p0", "permanent"));
    // The devices' own multicast lists (NTF_SELF without a master, shown by
    // `bridge fdb` as "33:33:… self permanent") are not forwarding state:
    // skipped from the raw bytes. Cross-checked against a full decode.
    let multicast = |mac: &str| u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 1 == 1);
    let mut device_mc = 0;
    for p in &payloads {
        use netlink_packet_core::Parseable;
        let m = netlink_packet_route::neighbour::NeighbourMessage::parse(p).unwrap();
        let e = hvflight::collect::fdb::parse_fdb(&m, &names).unwrap();
        let expect = e.is_self && e.master.is_none() && multicast(&e.mac);
        assert_eq!(
            hvflight::collect::fdb::is_device_multicast_entry(p),
            expect,
            "{e:?}"
        );
        device_mc += expect as usize;
    }
    assert!(device_mc > 0, "the fixture has device multicast entries");
    assert_eq!(s.entries.len() + device_mc, payloads.len());
    assert!(!s
        .entries
        .iter()
        .any(|e| e.is_self && e.master.is_none() && multicast(&e.mac)));

    // The cap keeps the first entries and counts the rest.
    let total = s.entries.len();
    let mut capped = FdbSection::new(&names, None, 2);
    payloads.iter().for_each(|p| capped.add_payload(p));
    assert_eq!((capped.entries.len(), capped.dropped), (2, total - 2));
    // Watched bridges only: entries without NDA_MASTER (NTF_SELF) go too
    // (the fixture's are all multicast, already skipped above).
    let watched = [br0];
    let mut only = FdbSection::new(&names, Some(&watched), 10_000);
    payloads.iter().for_each(|p| only.add_payload(p));
    assert!(only.entries.iter().all(|e| e.master == Some(br0)));
    assert!(only.entries.len() <= total && !only.entries.is_empty());
    let other = [br0 + 100];
    let mut none = FdbSection::new(&names, Some(&other), 10_000);
    payloads.iter().for_each(|p| none.add_payload(p));
    assert!(none.entries.is_empty());
    // A torn payload is counted, not a panic.
    let mut torn = FdbSection::new(&names, None, 10);
    torn.add_payload(&payloads[0][..5]);
    assert_eq!(torn.undecodable, 1);
}

#[test]
fn neighbour_dumps_are_counted_by_family_state_and_device() {
    let names = fixture_names();
    let names: rustc_hash::FxHashMap<u32, &str> =
        names.iter().map(|(i, n)| (*i, n.as_str())).collect();
    let mut n = Neighbours::default();
    for (file, key) in [("dump-neigh4.bin", "inet"), ("dump-neigh6.bin", "inet6")] {
        let buf = fixture(file);
        let mut c = FamilyCount::default();
        for (ty, p) in frames(&buf) {
            if ty == 28 {
                c.add_payload(p);
            }
        }
        assert_eq!(c.undecodable, 0);
        c.apply_to(&mut n, key, &names);
    }
    let inet = &n.by_state["inet"];
    assert_eq!(inet.get("reachable"), Some(&1), "{n:?}"); // the guest, just pinged
    assert_eq!(inet.get("permanent"), Some(&1), "{n:?}"); // 10.9.0.99
    assert_eq!(n.total_inet, inet.values().sum::<u32>());
    assert!(n.total_inet6 > 0, "{n:?}");
    assert_eq!(n.total_inet6, n.by_state["inet6"].values().sum::<u32>());
    assert_eq!(n.by_dev.values().sum::<u32>(), n.total_inet + n.total_inet6);
    assert!(n.by_dev["br0"] >= 2);
    let mut short = FamilyCount::default();
    short.add_payload(&[2, 0, 0]);
    assert_eq!((short.undecodable, short.total), (1, 0));
}

/// A qdisc from the crate's full decode of its message: the reference the
/// collector's partial, in-place decode (`fill_qdisc`) is checked against.
fn parse_qdisc(
    m: &netlink_packet_route::tc::TcMessage,
    names: &HashMap<u32, String>,
) -> hvflight::sample::Qdisc {
    use netlink_packet_route::tc::{TcAttribute, TcHandle, TcStats2};
    let handle = |h: &TcHandle| match (h.major, h.minor) {
        (0xffff, 0xffff) => "root".to_string(),
        (a, b) => format!("{a:x}:{b:x}"),
    };
    let ifindex = m.header.index as u32;
    let mut q = hvflight::sample::Qdisc {
        ifindex,
        dev: names.get(&ifindex).cloned().unwrap_or_default(),
        handle: handle(&m.header.handle),
        parent: handle(&m.header.parent),
        ..Default::default()
    };
    let mut have_stats2 = false;
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => q.kind = k.clone(),
            TcAttribute::Stats2(s) => {
                have_stats2 = true;
                for st in s {
                    match st {
                        TcStats2::Basic(b) => (q.bytes, q.packets) = (b.bytes, b.packets as u64),
                        TcStats2::Queue(qu) => {
                            (q.drops, q.overlimits, q.requeues) =
                                (qu.drops as u64, qu.overlimits as u64, qu.requeues as u64);
                            (q.backlog_bytes, q.qlen) = (qu.backlog as u64, qu.qlen as u64);
                        }
                        _ => {}
                    }
                }
            }
            TcAttribute::Stats(s) if !have_stats2 => {
                (q.bytes, q.packets, q.drops) = (s.bytes, s.packets as u64, s.drops as u64);
                (q.overlimits, q.backlog_bytes, q.qlen) =
                    (s.overlimits as u64, s.backlog as u64, s.qlen as u64);
            }
            _ => {}
        }
    }
    q
}

/// The recorded qdisc dump, every message decoded in full.
fn fixture_qdiscs(names: &HashMap<u32, String>) -> Vec<hvflight::sample::Qdisc> {
    decoded("dump-qdisc.bin")
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(m) => Some(parse_qdisc(m, names)),
            _ => None,
        })
        .collect()
}

#[test]
fn qdisc_dump_gives_stats_per_device() {
    let names = fixture_names();
    let qdiscs = fixture_qdiscs(&names);
    let on = |dev: &str| {
        qdiscs
            .iter()
            .find(|q| q.dev == dev)
            .unwrap_or_else(|| panic!("no qdisc on {dev}: {qdiscs:#?}"))
    };
    let htb = on("br0");
    assert_eq!(
        (htb.kind.as_str(), htb.handle.as_str(), htb.parent.as_str()),
        ("htb", "1:0", "root")
    );
    let fifo = on("p0");
    assert_eq!(
        (fifo.kind.as_str(), fifo.parent.as_str()),
        ("pfifo", "root")
    );
    // The pings to the guest left through p0's qdisc.
    assert!(
        fifo.packets >= 3 && fifo.bytes > fifo.packets * 60,
        "{fifo:?}"
    );
    assert_eq!((fifo.drops, fifo.qlen, fifo.backlog_bytes), (0, 0, 0));
}

#[test]
fn multicast_messages_become_events_with_port_state_fdb_neigh_and_addr() {
    let buf = fixture("events.bin");
    let mut names = HashMap::new();
    let (events, bad) = events_from_datagram(&buf, &mut names);
    assert!(bad.is_none(), "{bad:?}");
    // The first two p0 messages are the AF_BRIDGE ones of `bridge link set
    // dev p0 state 0`, then `state 3` (IFLA_PROTINFO; no carrier in them).
    let p0: Vec<(Option<u8>, Option<bool>, bool)> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Link {
                name,
                port_state,
                carrier,
                admin_up,
                ..
            } if name == "p0" => Some((*port_state, *carrier, *admin_up)),
            _ => None,
        })
        .collect();
    assert_eq!(
        p0[..2],
        [(Some(0), None, true), (Some(3), None, true)],
        "{events:#?}"
    );
    // Disabling br0's only port took the bridge's carrier (and its neighbours) away.
    assert!(events.iter().any(|e| matches!(e,
        EventKind::Link { name, carrier: Some(false), .. } if name == "br0")));
    let fdb: Vec<(&str, &str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Fdb {
                action,
                mac,
                port,
                state,
                ..
            } if mac == "52:54:00:00:00:0a" => {
                Some((action.as_str(), port.as_str(), state.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(fdb, [("new", "p0", "static"), ("del", "p0", "static")]);
    assert!(events.iter().any(|e| matches!(e,
        EventKind::Neigh { action, ip, dev, state, mac, .. }
            if action == "new" && ip == "10.9.0.98" && dev == "br0" && state == "permanent"
               && mac == "52:54:00:00:00:62")));
    assert!(events.iter().any(|e| matches!(e,
        EventKind::Addr { action, addr, dev, prefix_len: 24, .. }
            if action == "new" && addr == "10.9.0.5" && dev == "br0")));
    let p0_admin: Vec<bool> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Link { name, admin_up, .. } if name == "p0" => Some(*admin_up),
            _ => None,
        })
        .collect();
    assert!(
        p0_admin.windows(2).any(|w| w == [false, true]),
        "{p0_admin:?}"
    );
}

#[test]
fn an_undecodable_message_costs_only_itself() {
    let buf = fixture("events.bin");
    let f = frames(&buf);
    let whole = |i: usize| {
        let start = f[i].1.as_ptr() as usize - buf.as_ptr() as usize - 16;
        let len = f[i].1.len() + 16;
        buf[start..start + len].to_vec()
    };
    // [a good link message][RTM_NEWLINK too short for its header][the rest]
    let mut d = whole(0);
    let mut bad = Vec::new();
    bad.extend_from_slice(&20u32.to_ne_bytes());
    bad.extend_from_slice(&16u16.to_ne_bytes());
    bad.extend_from_slice(&[0; 14]); // flags, seq, pid, then 4 bytes of payload
    d.extend_from_slice(&bad);
    for i in 1..f.len() {
        d.extend_from_slice(&whole(i));
    }
    let mut names = HashMap::new();
    let (events, skipped) = events_from_datagram(&d, &mut names);
    let (all, _) = events_from_datagram(&buf, &mut HashMap::new());
    assert_eq!(events.len(), all.len());
    let (count, why) = skipped.expect("the bad message is reported");
    assert_eq!(count, 1);
    assert!(why.contains("message type 16"), "{why}");
    // A datagram cut mid-message: what came before is kept, the tail reported.
    let cut = &buf[..buf.len() - 10];
    let (events, skipped) = events_from_datagram(cut, &mut HashMap::new());
    assert_eq!(events.len(), all.len() - 1);
    assert_eq!(skipped.unwrap().0, 1);
}

// ------------------------------------------------- live, in namespaces

/// A bare namespace of our own, removed on drop (also when a test panics).
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let n = format!("hvfn{}{tag}", std::process::id());
        let _ = lab::run(&["ip", "netns", "del", &n]);
        lab::run(&["ip", "netns", "add", &n]).unwrap();
        Ns(n)
    }

    /// Runs `ip -n NS -batch -` on the lines.
    fn batch(&self, lines: &[String]) {
        let mut c = Command::new("ip")
            .args(["-n", &self.0, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all((lines.join("\n") + "\n").as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "ip -batch failed");
    }

    fn cmd(&self, tool: &str, args: &str) {
        let mut v = vec![tool, "-n", self.0.as_str()];
        v.extend(args.split_whitespace());
        lab::run(&v).unwrap();
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = lab::run(&["ip", "netns", "del", &self.0]);
    }
}

/// Runs `f` on a thread that entered the namespace (setns is per thread).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        hvflight::source::netns::enter_thread(&ns).unwrap();
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The netlink collectors in sampling order (links first: the others name
/// interfaces from it), as collect::all builds them.
fn netlink_collectors(fdb_max: usize) -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(LinksCollector::new(TIMEOUT, true)),
        Box::new(FdbCollector::new(TIMEOUT, fdb_max)),
        Box::new(NeighCollector::new(TIMEOUT)),
        Box::new(QdiscCollector::new(TIMEOUT)),
    ]
}

fn collect_all(
    cs: &mut [Box<dyn Collector>],
    ctx: &Context,
) -> (Sample, Vec<(&'static str, CollectError)>) {
    let mut s = Sample::default();
    let mut failures = Vec::new();
    for c in cs.iter_mut() {
        if let Err(e) = c.collect(ctx, &mut s) {
            failures.push((c.name(), e));
        }
    }
    (s, failures)
}

/// Starts the rtnetlink event thread inside `ns`.
fn events_in(ns: &str) -> (Box<dyn EventSource>, Receiver<Event>) {
    let (tx, rx) = channel();
    let w = in_ns(ns, move || hvflight::events::rtnetlink::start(tx).unwrap());
    (Box::new(w), rx)
}

/// The first event stamped at or after `t0_unix_ns` that matches `f`, within
/// `within`, and its latency after `t0_unix_ns`.
fn wait_event(
    rx: &Receiver<Event>,
    within: Duration,
    t0_unix_ns: i64,
    f: impl Fn(&EventKind) -> bool,
) -> Option<(Event, f64)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(ev) = rx.recv_timeout(Duration::from_millis(20)) {
            if ev.ts_unix_ns >= t0_unix_ns && f(&ev.kind) {
                let ms = (ev.ts_unix_ns - t0_unix_ns) as f64 / 1e6;
                return Some((ev, ms));
            }
        }
    }
    None
}

#[test]
fn lab_counters_fdb_and_qdiscs_from_the_collectors_in_process_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 2,
        ..Default::default()
    })
    .unwrap();
    for i in 0..2 {
        assert!(
            lab.ping_from_guest(i, 1),
            "guest {i} cannot reach the gateway"
        );
    }
    let port = lab.guests[0].host_port.clone();
    let sample = || {
        in_ns(&lab.hv_ns, || {
            let mut cs = netlink_collectors(10_000);
            collect_all(&mut cs, &Context::default())
        })
    };
    let (before, failures) = sample();
    assert!(failures.is_empty(), "{failures:?}");
    const SENT: u64 = 10;
    assert!(lab.ping_from_guest(0, SENT as u32));
    let (after, failures) = sample();
    assert!(failures.is_empty(), "{failures:?}");
    let link = |s: &Sample| {
        s.links
            .as_ref()
            .unwrap()
            .iter()
            .find(|l| l.name == port)
            .unwrap()
            .clone()
    };
    let (a, b) = (link(&before), link(&after));
    // The host port's rx is the guest's tx (echo requests), and its tx the replies.
    assert!(
        b.stats.rx_packets >= a.stats.rx_packets + SENT,
        "{} -> {}",
        a.stats.rx_packets,
        b.stats.rx_packets
    );
    assert!(b.stats.tx_packets >= a.stats.tx_packets + SENT);
    assert!(b.stats.rx_bytes >= a.stats.rx_bytes + SENT * 98);

    let fdb = after.fdb.as_ref().unwrap();
    for g in &lab.guests {
        let e = fdb
            .iter()
            .find(|e| e.mac == g.mac && e.master.is_some())
            .unwrap_or_else(|| panic!("{} not in the FDB", g.mac));
        assert_eq!(e.port, g.host_port);
        assert_eq!(e.state, "dynamic");
    }
    let br = &after.bridges.as_ref().unwrap()[0];
    assert_eq!(br.name, lab.bridge);
    assert!(br.ports.iter().all(|p| p.state == 3), "{:?}", br.ports);
    let q = after.qdiscs.as_ref().unwrap();
    for g in &lab.guests {
        assert!(
            q.iter().any(|q| q.dev == g.host_port),
            "no qdisc on {}: {q:?}",
            g.host_port
        );
    }
    let n = after.neighbours.as_ref().unwrap();
    assert!(
        n.gc_thresh.is_none(),
        "gc_thresh is global: absent in a child namespace"
    );

    // The agent hands each sample back to the collectors once nobody needs
    // it, and they fill the next one in its allocations: the qdiscs come
    // out the same, nothing left of what the recycled entries held (here
    // shuffled, and one more than the dump has).
    let (first, second) = in_ns(&lab.hv_ns, || {
        let mut cs = netlink_collectors(10_000);
        let (first, _) = collect_all(&mut cs, &Context::default());
        let mut old = first.clone();
        let q = old.qdiscs.as_mut().unwrap();
        q.reverse();
        q.push(q[0].clone());
        for c in cs.iter_mut() {
            c.recycle(&mut old);
        }
        let (second, failures) = collect_all(&mut cs, &Context::default());
        assert!(failures.is_empty(), "{failures:?}");
        (first, second)
    });
    let id = |s: &Sample| -> Vec<_> {
        s.qdiscs
            .as_ref()
            .unwrap()
            .iter()
            .map(|q| {
                (
                    q.ifindex,
                    q.dev.clone(),
                    q.kind.clone(),
                    q.handle.clone(),
                    q.parent.clone(),
                )
            })
            .collect()
    };
    assert_eq!(id(&second), id(&first));
    for (a, b) in first
        .qdiscs
        .as_ref()
        .unwrap()
        .iter()
        .zip(second.qdiscs.as_ref().unwrap())
    {
        assert!(
            b.packets >= a.packets && b.bytes >= a.bytes,
            "{a:?} -> {b:?}"
        );
    }
}

#[test]
fn a_port_blocked_by_stp_shows_state_4_in_the_sample_and_an_event_needs_root() {
    // With STP off the kernel turns a port set to 4 back into forwarding at
    // once (src/lab/faults.rs), and with kernel STP on it refuses user
    // changes; so let STP itself block one: a veth pair with both ends on
    // one bridge is a loop, and the port with the higher port id must block.
    let ns = Ns::new("stp");
    ns.batch(&[
        "link add br0 type bridge forward_delay 200 hello_time 100".into(),
        "link add l0 type veth peer name l1".into(),
        "link set l0 master br0 up".into(),
        "link set l1 master br0 up".into(),
        "link set br0 up".into(),
    ]);
    let (mut events, rx) = events_in(&ns.0);
    let t0 = hvflight::clock::now().unix_ns;
    ns.cmd("ip", "link set br0 type bridge stp_state 1");
    let ev = wait_event(&rx, Duration::from_secs(10), t0, |k| {
        matches!(
            k,
            EventKind::Link {
                port_state: Some(4),
                ..
            }
        )
    });
    events.stop();
    let (ev, ms) = ev.expect("no event with a port in state 4");
    let EventKind::Link { name: blocked, .. } = &ev.kind else {
        unreachable!()
    };
    eprintln!("{blocked} blocked by STP, event {ms:.0} ms after STP start");
    let (s, failures) = in_ns(&ns.0, || {
        let mut cs = netlink_collectors(1000);
        collect_all(&mut cs, &Context::default())
    });
    assert!(failures.is_empty(), "{failures:?}");
    let br = &s.bridges.as_ref().unwrap()[0];
    assert_eq!(br.stp_state, Some(1));
    let state = |n: &str| br.ports.iter().find(|p| p.name == n).unwrap().state;
    assert_eq!(state(blocked), 4, "{:?}", br.ports);
    let other = if blocked == "l0" { "l1" } else { "l0" };
    assert_ne!(state(other), 4);
}

#[test]
fn link_and_port_state_changes_arrive_as_events_needs_root() {
    let ns = Ns::new("ev");
    ns.batch(&[
        "link add br0 type bridge".into(),
        "link add p0 type veth peer name q0".into(),
        "link set p0 master br0 up".into(),
        "link set q0 up".into(),
        "link set br0 up".into(),
    ]);
    let (mut events, rx) = events_in(&ns.0);
    // Drain what the setup itself may still produce.
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}

    let t0 = hvflight::clock::now().unix_ns;
    ns.cmd("ip", "link set p0 down");
    let down = wait_event(
        &rx,
        Duration::from_secs(2),
        t0,
        |k| matches!(k, EventKind::Link { name, admin_up: false, .. } if name == "p0"),
    );
    // Back up: the port returns to forwarding (STP off). Then disable it.
    let t_up = hvflight::clock::now().unix_ns;
    ns.cmd("ip", "link set p0 up");
    let up = wait_event(
        &rx,
        Duration::from_secs(2),
        t_up,
        |k| matches!(k, EventKind::Link { name, port_state: Some(3), .. } if name == "p0"),
    );
    assert!(up.is_some(), "p0 never forwarding again");
    while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
    let t1 = hvflight::clock::now().unix_ns;
    ns.cmd("bridge", "link set dev p0 state 0");
    let port = wait_event(
        &rx,
        Duration::from_secs(2),
        t1,
        |k| matches!(k, EventKind::Link { name, port_state: Some(0), .. } if name == "p0"),
    );
    events.stop();
    let (_, down_ms) = down.expect("no link event for p0 going down");
    let (_, port_ms) = port.expect("no port-state event for p0");
    // The latency is a figure, not an assertion (a loaded CI machine took
    // 617 ms once; idle it is 2-6 ms): both events must arrive within the
    // 2 s wait, which the expects above check.
    eprintln!("link down event after {down_ms:.1} ms, port state event after {port_ms:.1} ms (each incl. fork+exec of ip/bridge)");
}

#[test]
fn the_fdb_cap_keeps_the_section_bounded_and_says_so_needs_root() {
    let ns = Ns::new("cap");
    let mut lines = vec![
        "link add br0 type bridge".to_string(),
        "link add p0 type veth peer name q0".to_string(),
        "link set p0 master br0 up".to_string(),
        "link set br0 up".to_string(),
    ];
    ns.batch(&lines);
    // `bridge -batch`: 300 static entries on p0.
    lines = (0..300)
        .map(|i| {
            format!(
                "fdb add 52:54:00:01:{:02x}:{:02x} dev p0 master static",
                i / 256,
                i % 256
            )
        })
        .collect();
    let mut c = Command::new("bridge")
        .args(["-n", &ns.0, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all((lines.join("\n") + "\n").as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
    let (s, failures) = in_ns(&ns.0, || {
        let mut cs = netlink_collectors(100);
        collect_all(&mut cs, &Context::default())
    });
    assert_eq!(
        s.fdb.as_ref().unwrap().len(),
        100,
        "the capped section is kept"
    );
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (who, why) = &failures[0];
    assert_eq!(*who, "fdb");
    assert!(why.to_string().contains("capped at 100"), "{why}");
}

/// One sample's FDB section, with the links section before it (ports are named from it).
fn fdb_step(links: &mut LinksCollector, fdb: &mut FdbCollector) -> Vec<FdbEntry> {
    let mut s = Sample::default();
    links.collect(&Context::default(), &mut s).unwrap();
    fdb.collect(&Context::default(), &mut s).unwrap();
    s.fdb.unwrap()
}

/// `fdb_step` after handing the collector an older sample whose FDB says
/// something else entirely (more entries, other strings): the agent recycles
/// samples, and nothing of them may show in the next one.
fn fdb_step_recycled(links: &mut LinksCollector, fdb: &mut FdbCollector) -> Vec<FdbEntry> {
    let mut older = Sample {
        fdb: Some(
            (0..40)
                .map(|i| FdbEntry {
                    mac: format!("de:ad:00:00:00:{i:02x}"),
                    ifindex: 9000 + i,
                    port: "an-old-port-name".into(),
                    master: Some(77),
                    vlan: Some(5),
                    state: "stale-state".into(),
                    is_self: true,
                    extern_learn: true,
                    updated_s: Some(99_999),
                })
                .collect(),
        ),
        ..Default::default()
    };
    fdb.recycle(&mut older);
    let mut s = Sample::default();
    links.collect(&Context::default(), &mut s).unwrap();
    fdb.collect(&Context::default(), &mut s).unwrap();
    s.fdb.unwrap()
}

/// Between full dumps the FDB is kept from the kernel's announcements: an
/// entry added, moved (by learning and by `bridge fdb replace`), deleted, or
/// gone with its port shows in the very next sample, exactly as a full dump
/// would show it.
#[test]
fn fdb_moves_and_deletes_between_full_dumps_show_in_the_next_sample_needs_root() {
    let ns = Ns::new("fdbw");
    // No IPv6: its autoconf traffic would teach the bridge entries between
    // the two collectors' samples.
    lab::run(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ])
    .unwrap();
    let mut lines = vec!["link add br0 type bridge".to_string()];
    for i in 0..3 {
        lines.push(format!("link add p{i} type veth peer name q{i}"));
        lines.push(format!("link set p{i} master br0 up"));
        lines.push(format!("link set q{i} address 52:54:00:bb:00:0{i} up"));
        lines.push(format!("addr add 10.9.{i}.1/24 dev q{i}"));
    }
    lines.push("link set br0 up".into());
    ns.batch(&lines);
    let name = ns.0.clone();
    // Broadcast pings leave through qN: the bridge learns qN's MAC on pN.
    let ping_from = move |i: u32| {
        lab::run(&[
            "ip",
            "netns",
            "exec",
            &name,
            "ping",
            "-q",
            "-b",
            "-c",
            "2",
            "-i",
            "0.05",
            "-w",
            "1",
            "-I",
            &format!("q{i}"),
            &format!("10.9.{i}.255"),
        ])
        .ok();
    };
    let nsname = ns.0.clone();
    let ns2 = ns.0.clone();
    let (steps, counts) = in_ns(&nsname, move || {
        let q0_mac = "52:54:00:bb:00:00".to_string();
        let bridge = |args: &str| {
            let mut v = vec!["bridge", "-n", ns2.as_str()];
            v.extend(args.split_whitespace());
            lab::run(&v).unwrap();
        };
        let mut links = LinksCollector::new(TIMEOUT, false).full_dump_every(Duration::ZERO);
        let mut c = FdbCollector::new(TIMEOUT, 10_000).full_dump_every(Duration::from_secs(3600));
        let mut reference = FdbCollector::new(TIMEOUT, 10_000).full_dump_every(Duration::ZERO);
        let mut steps = Vec::new();
        fdb_step(&mut links, &mut c);
        // Added: a static entry, a dynamic one, a learned one on each port.
        bridge("fdb add 52:54:00:aa:00:01 dev p0 master static");
        bridge("fdb add 52:54:00:aa:00:02 dev p1 master dynamic");
        for i in 0..3 {
            ping_from(i);
        }
        std::thread::sleep(Duration::from_millis(50));
        steps.push((
            fdb_step_recycled(&mut links, &mut c),
            fdb_step(&mut links, &mut reference),
            q0_mac.clone(),
        ));
        // Moved, deleted, gone with the port.
        bridge("fdb replace 52:54:00:aa:00:01 dev p1 master static");
        bridge("fdb del 52:54:00:aa:00:02 dev p1 master");
        lab::run(&["ip", "-n", &ns2, "link", "set", "q1", "address", &q0_mac]).unwrap();
        ping_from(1);
        lab::run(&["ip", "-n", &ns2, "link", "del", "p2"]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        steps.push((
            fdb_step_recycled(&mut links, &mut c),
            fdb_step(&mut links, &mut reference),
            q0_mac,
        ));
        (steps, (c.full_dumps, c.announced))
    });
    assert_eq!(counts, (1, 2), "one full dump, then announcements only");
    let strip = |v: &[FdbEntry]| {
        let mut v = v.to_vec();
        v.iter_mut().for_each(|e| e.updated_s = None);
        v
    };
    let on = |v: &[FdbEntry], mac: &str| -> Option<String> {
        v.iter()
            .find(|e| e.mac == mac && e.master.is_some())
            .map(|e| e.port.clone())
    };
    let (a, ref_a, q0_mac) = &steps[0];
    assert_eq!(strip(a), strip(ref_a), "after adds: as a full dump says");
    assert_eq!(on(a, "52:54:00:aa:00:01").as_deref(), Some("p0"));
    assert_eq!(on(a, "52:54:00:aa:00:02").as_deref(), Some("p1"));
    assert_eq!(on(a, q0_mac).as_deref(), Some("p0"), "learned");
    let (b, ref_b, _) = &steps[1];
    assert_eq!(
        strip(b),
        strip(ref_b),
        "after moves and deletes: as a full dump says"
    );
    assert_eq!(
        on(b, "52:54:00:aa:00:01").as_deref(),
        Some("p1"),
        "moved by replace"
    );
    assert_eq!(on(b, "52:54:00:aa:00:02"), None, "deleted");
    assert_eq!(on(b, q0_mac).as_deref(), Some("p1"), "moved by learning");
    assert!(
        a.iter().any(|e| e.port == "p2") && !b.iter().any(|e| e.port == "p2" || e.port.is_empty()),
        "the removed port's entries are gone"
    );
}

#[test]
fn interfaces_deleted_while_collecting_never_break_a_collector_needs_root() {
    let ns = Ns::new("churn");
    ns.batch(&["link add br0 type bridge".into(), "link set br0 up".into()]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, name) = (stop.clone(), ns.0.clone());
    let churn = std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for verb in ["add", "del"] {
                let lines: String = (0..20)
                    .map(|k| match verb {
                        "add" => format!(
                            "link add c{k} type veth peer name d{k}\nlink set c{k} master br0 up\n"
                        ),
                        _ => format!("link del c{k}\n"),
                    })
                    .collect();
                let _ = Command::new("ip")
                    .args(["-n", &name, "-batch", "-"])
                    .stdin(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write;
                        c.stdin.take().unwrap().write_all(lines.as_bytes())?;
                        c.wait()
                    });
            }
            rounds += 1;
        }
        rounds
    });
    let (collects, failures) = in_ns(&ns.0, || {
        let mut cs = netlink_collectors(10_000);
        let mut failures = Vec::new();
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(3) {
            let (_, f) = collect_all(&mut cs, &Context::default());
            failures.extend(f.into_iter().map(|(c, e)| format!("{c}: {e}")));
            n += 1;
        }
        (n, failures)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    eprintln!("{collects} collects of all 4 collectors during {rounds} add/delete rounds of 20 veth pairs");
    assert!(rounds > 0 && collects > 10);
    assert!(failures.is_empty(), "{failures:?}");
}

// ----------------------------------------------------------- benchmark

fn thread_cpu_ns() -> u128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("clock");
    t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128
}

#[test]
#[ignore = "benchmark: cargo test --release --test netlink -- --ignored --nocapture"]
fn netlink_collect_cost() {
    for ifaces in [50usize, 1000] {
        let ns = Ns::new(&format!("bench{ifaces}"));
        let mut lines = vec![
            "link add br0 type bridge".to_string(),
            "link set br0 up".to_string(),
        ];
        for i in 0..ifaces / 2 {
            lines.push(format!("link add v{i}a type veth peer name v{i}b"));
            lines.push(format!("link set v{i}a master br0 up"));
            lines.push(format!("link set v{i}b up"));
        }
        ns.batch(&lines);
        let report = in_ns(&ns.0, move || {
            const N: u32 = 200;
            let ctx = Context::default();
            let mut cs = netlink_collectors(100_000);
            let (s, failures) = collect_all(&mut cs, &ctx); // warm: sockets, buffers
            assert!(failures.is_empty(), "{failures:?}");
            let links = s.links.as_ref().unwrap().len();
            let ports = s.bridges.as_ref().unwrap()[0].ports.len();
            let fdb = s.fdb.as_ref().unwrap().len();
            let mut out = format!("{links} links, {ports} bridge ports, {fdb} FDB entries\n");
            let mut sum = (0.0, 0.0);
            // Later collectors read the links section, as in the sampler.
            let mut s2 = Sample {
                links: s.links.clone(),
                ..Default::default()
            };
            for c in cs.iter_mut() {
                let name = c.name();
                let (c0, w0) = (thread_cpu_ns(), Instant::now());
                for _ in 0..N {
                    c.collect(&ctx, &mut s2).unwrap();
                }
                let cpu = (thread_cpu_ns() - c0) as f64 / 1000.0 / N as f64;
                let wall = w0.elapsed().as_nanos() as f64 / 1000.0 / N as f64;
                sum = (sum.0 + cpu, sum.1 + wall);
                out += &format!("  {name:<11} {cpu:>8.0} µs CPU {wall:>8.0} µs wall per collect\n");
            }
            out += &format!(
                "  {:<11} {:>8.0} µs CPU {:>8.0} µs wall per round\n",
                "all four", sum.0, sum.1
            );
            // The floor under the links collector: the kernel building the
            // dump and copying it out, nothing decoded.
            let mut sock = hvflight::source::netlink::RouteSocket::new(TIMEOUT).unwrap();
            let (c0, w0, mut bytes) = (thread_cpu_ns(), Instant::now(), 0usize);
            for _ in 0..N {
                let req = RouteNetlinkMessage::GetLink(Default::default());
                sock.dump_raw("link", req, &mut || {}, &mut |_, p| bytes += p.len())
                    .unwrap();
            }
            let cpu = (thread_cpu_ns() - c0) as f64 / 1000.0 / N as f64;
            let wall = w0.elapsed().as_nanos() as f64 / 1000.0 / N as f64;
            out += &format!(
                "  {:<11} {cpu:>8.0} µs CPU {wall:>8.0} µs wall per dump ({} KiB), links not decoded\n",
                "link dump",
                bytes / N as usize / 1024
            );
            out
        });
        println!("{ifaces} interfaces: {report}");
    }
}

/// Between announced changes the links collector reads only the counters
/// (RTM_GETSTATS); what it returns must be what a full dump would say.
#[test]
fn counters_only_samples_match_full_dumps_and_changes_force_a_full_dump_needs_root() {
    let ns = Ns::new("cheap");
    ns.batch(&[
        "link set lo up".into(),
        "link add br0 type bridge".into(),
        "link add p0 type veth peer name q0".into(),
        "link set p0 master br0 up".into(),
        "link set q0 up".into(),
        "link set br0 up".into(),
        "addr add 10.9.0.1/24 dev q0".into(),
    ]);
    // Carrier and operstate of new links are announced by the kernel's
    // linkwatch up to a second later: let the setup settle first.
    std::thread::sleep(Duration::from_millis(1500));
    let name = ns.0.clone();
    let pings = move |n: u32| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "ping",
                "-c",
                &n.to_string(),
                "-i",
                "0.01",
                "-q",
            ])
            .args(["-w", "1", "-b", "10.9.0.255"])
            .output()
            .unwrap();
        let _ = out; // broadcast pings leave through q0 whether or not anyone answers
    };
    let nsname = ns.0.clone();
    let step = |c: &mut LinksCollector| {
        let mut s = Sample::default();
        c.collect(&Context::default(), &mut s).unwrap();
        s
    };
    // A collector that never uses the cheap path, as the reference.
    let (cheap, full, counts) = in_ns(&nsname, move || {
        let mut c = LinksCollector::new(TIMEOUT, true).full_dump_every(Duration::from_secs(3600));
        let mut reference = LinksCollector::new(TIMEOUT, true).full_dump_every(Duration::ZERO);
        // A fresh namespace may still announce something (IPv6 autoconf,
        // linkwatch): sample until one sample went without a full dump.
        let mut first = step(&mut c);
        for _ in 0..20 {
            let before = c.stats_dumps;
            pings(5);
            // The agent hands older samples back for their allocations:
            // nothing of what they said may show in the next one.
            let mut older = first.clone();
            for l in older.links.iter_mut().flatten() {
                l.name.push_str("-old");
                l.mtu = 1;
            }
            older.links.as_mut().unwrap().push(hvflight::sample::Link {
                name: "gone".into(),
                ..Default::default()
            });
            c.recycle(&mut older);
            let second = step(&mut c);
            if c.stats_dumps > before {
                let reference_second = step(&mut reference);
                return (
                    vec![first, second],
                    reference_second,
                    (c.full_dumps, c.stats_dumps),
                );
            }
            first = second;
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("every sample needed a full dump: announcements never stopped");
    });
    assert!(
        counts.1 >= 1,
        "a sample without announcements is counters-only"
    );
    let tx = |s: &Sample, n: &str| s.link(n).unwrap().stats.tx_packets;
    assert!(
        tx(&cheap[1], "q0") >= tx(&cheap[0], "q0") + 5,
        "counters moved"
    );
    // Same interfaces, same attributes; counters read a moment apart.
    let strip = |s: &Sample| {
        let mut l = s.links.clone().unwrap();
        l.iter_mut().for_each(|l| l.stats = Default::default());
        (l, s.bridges.clone())
    };
    assert_eq!(strip(&cheap[1]), strip(&full));
    assert!(tx(&full, "q0") >= tx(&cheap[1], "q0"));

    // An announced change (MTU, port state) or a new link: a full dump at once.
    let nsname = ns.0.clone();
    let ns2 = ns.0.clone();
    let (after, counts) = in_ns(&nsname, move || {
        let mut c = LinksCollector::new(TIMEOUT, true).full_dump_every(Duration::from_secs(3600));
        step(&mut c);
        step(&mut c);
        lab::run(&["ip", "-n", &ns2, "link", "set", "q0", "mtu", "1400"]).unwrap();
        lab::run(&[
            "bridge", "-n", &ns2, "link", "set", "dev", "p0", "state", "0",
        ])
        .unwrap();
        lab::run(&[
            "ip", "-n", &ns2, "link", "add", "p1", "type", "veth", "peer", "name", "q1",
        ])
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let s = step(&mut c);
        (s, (c.full_dumps, c.stats_dumps))
    });
    assert_eq!(counts, (2, 1), "the change forces a full dump");
    assert_eq!(after.link("q0").unwrap().mtu, 1400);
    assert!(after.link("p1").is_some());
    let br = &after.bridges.as_ref().unwrap()[0];
    assert_eq!(br.ports.iter().find(|p| p.name == "p0").unwrap().state, 0);
}

/// Between full link dumps, the bridges' own attributes (STP flags the
/// kernel does not announce) are re-read from a dump filtered to bridges:
/// one message per bridge, not one per interface, and the sections are what
/// a full dump says.
#[test]
fn bridge_refreshes_read_only_the_bridges_and_match_full_dumps_needs_root() {
    let ns = Ns::new("brref");
    let mut cmds = vec![
        "link set lo up".to_string(),
        "link add br0 type bridge".into(),
    ];
    for i in 0..4 {
        cmds.push(format!("link add p{i} type veth peer name q{i}"));
        cmds.push(format!("link set p{i} master br0 up"));
        cmds.push(format!("link set q{i} up"));
    }
    cmds.push("link set br0 up".into());
    ns.batch(&cmds);
    std::thread::sleep(Duration::from_millis(1500));
    let nsname = ns.0.clone();
    let (refreshed, full, msgs, counts) = in_ns(&nsname, move || {
        let step = |c: &mut LinksCollector| {
            let mut s = Sample::default();
            c.collect(&Context::default(), &mut s).unwrap();
            s
        };
        let mut c = LinksCollector::new(TIMEOUT, true)
            .full_dump_every(Duration::from_secs(3600))
            .bridges_every(Duration::ZERO);
        let mut reference = LinksCollector::new(TIMEOUT, true).full_dump_every(Duration::ZERO);
        step(&mut c);
        for _ in 0..20 {
            let before = (c.stats_dumps, c.bridge_refreshes);
            step(&mut c);
            if c.stats_dumps > before.0 {
                assert_eq!(
                    c.bridge_refreshes,
                    before.1 + 1,
                    "a counters-only sample with bridges_every 0 refreshes the bridges"
                );
                // And the next one, served from the picture the refresh
                // updated: its ports must still be there.
                let stats = c.stats_dumps;
                let s = step(&mut c);
                if c.stats_dumps > stats {
                    let r = step(&mut reference);
                    return (s, r, c.bridge_refresh_msgs, (c.full_dumps, c.stats_dumps));
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("every sample needed a full dump: announcements never stopped");
    });
    assert_eq!(
        msgs,
        1,
        "the refresh reads the one bridge, not the {} links (kind filter)",
        full.links.as_ref().unwrap().len()
    );
    assert!(
        counts.1 >= 2,
        "two counters-only samples in a row: {counts:?}"
    );
    let strip = |s: &Sample| {
        let mut l = s.links.clone().unwrap();
        l.iter_mut().for_each(|l| l.stats = Default::default());
        (l, s.bridges.clone())
    };
    assert_eq!(strip(&refreshed), strip(&full));
    let br = &refreshed.bridges.as_ref().unwrap()[0];
    assert_eq!(br.ports.len(), 4, "ports kept from the full dump");
    assert!(br.bridge_id.is_some() && br.stp_state == Some(0));
}

/// The qdisc collector decodes only kind and stats of each message, in
/// place (what it does with a recycled sample's qdiscs): on the recorded
/// dump that gives exactly what decoding everything gives, into new
/// entries and into entries that held other qdiscs (the dump's qdiscs in
/// reverse order, so every string and counter is overwritten).
#[test]
fn qdisc_payloads_decoded_in_part_give_the_same_qdiscs() {
    let names = fixture_names();
    let buf = fixture("dump-qdisc.bin");
    let full = fixture_qdiscs(&names);
    assert!(!full.is_empty());
    assert!(
        full.iter().any(|q| q.packets > 0),
        "the fixture has counters"
    );
    let fx: rustc_hash::FxHashMap<u32, &str> =
        names.iter().map(|(&i, n)| (i, n.as_str())).collect();
    let payloads: Vec<_> = frames(&buf)
        .into_iter()
        .filter(|(ty, _)| *ty == 36)
        .collect();
    let fill = |mut into: Vec<hvflight::sample::Qdisc>| {
        for ((_, p), q) in payloads.iter().zip(into.iter_mut()) {
            assert!(fill_qdisc(p, &fx, q));
        }
        into
    };
    assert_eq!(fill(vec![Default::default(); payloads.len()]), full);
    assert_eq!(fill(full.iter().rev().cloned().collect()), full);
    let mut q = full[0].clone();
    assert!(!fill_qdisc(&[0; 8], &fx, &mut q), "shorter than a tcmsg");
}
