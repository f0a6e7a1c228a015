//! The packet ring against the namespace lab (needs root): the capture
//! thread enters the lab's hypervisor namespace and captures on the uplink
//! port; guests ping the gateway, iperf3 pushes bulk TCP through it, a
//! flood fills the ring; the agent's trigger puts the ring into a bundle as
//! pcapng that tcpdump reads; an uplink that vanishes is a recorded failure
//! while sampling goes on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use hvflight::capture::ring::Packet;
use hvflight::capture::select::{Role, Want};
use hvflight::capture::{CaptureConfig, CaptureThread};
use hvflight::lab::{Lab, LabConfig};
use hvflight::sample::{Event, EventKind};

fn ifindex(lab: &Lab, name: &str) -> u32 {
    let out = lab
        .exec_in(
            &lab.hv_ns,
            &["cat", &format!("/sys/class/net/{name}/ifindex")],
        )
        .unwrap_or_default();
    out.trim().parse().unwrap_or(0)
}

/// A capture thread in the lab's hypervisor namespace on its uplink port.
fn ring_on_uplink(lab: &Lab, cfg: CaptureConfig) -> (CaptureThread, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let t = CaptureThread::start(
        cfg,
        Some(PathBuf::from(format!("/run/netns/{}", lab.hv_ns))),
        Some(tx),
    )
    .unwrap();
    t.handle().set_wanted(vec![Want {
        name: lab.uplink.clone(),
        ifindex: 0,
        role: Role::Uplink,
        bridge: lab.bridge.clone(),
        domain: String::new(),
    }]);
    let h = t.handle();
    wait_for(Duration::from_secs(10), "the uplink capturing", || {
        h.section()
            .interfaces
            .iter()
            .any(|i| i.name == "uplink0" && i.state == "capturing")
    });
    (t, rx)
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything in the ring, after the kernel handed over its last block
/// (it does every `poll_ms`).
fn all_packets(t: &CaptureThread) -> Vec<Packet> {
    std::thread::sleep(Duration::from_millis(3 * t.handle().config().poll_ms));
    t.handle().snapshot(0, i64::MAX).packets
}

#[derive(Debug, Default)]
struct Counts {
    arp: usize,
    echo_req: usize,
    echo_reply: usize,
    tcp_syn_fin_rst: usize,
    tcp_other: usize,
    tcp_payload_bytes: usize,
}

fn count(pkts: &[Packet]) -> Counts {
    let mut c = Counts::default();
    for p in pkts {
        let Ok(s) = LaxSlicedPacket::from_ethernet(&p.data) else {
            continue;
        };
        if let Some(LaxNetSlice::Arp(_)) = s.net {
            c.arp += 1;
        }
        match &s.transport {
            Some(TransportSlice::Icmpv4(i)) => match i.type_u8() {
                8 => c.echo_req += 1,
                0 => c.echo_reply += 1,
                _ => {}
            },
            Some(TransportSlice::Tcp(t)) => {
                c.tcp_payload_bytes += t.payload().len();
                if t.syn() || t.fin() || t.rst() {
                    c.tcp_syn_fin_rst += 1;
                } else {
                    c.tcp_other += 1;
                }
            }
            _ => {}
        }
    }
    c
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 server on the gateway in the switch namespace (a namespace of
/// its own: the port cannot collide with other tests).
fn iperf_server(lab: &Lab, port: u16) -> Killed {
    let c = Command::new("ip")
        .args(["netns", "exec", &lab.switch_ns, "iperf3", "-s", "-B"])
        .arg(lab.gateway_ip.to_string())
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Killed(c)
}

fn iperf_client(lab: &Lab, guest: usize, port: u16, secs: u32, extra: &[&str]) {
    let ns = lab.guests[guest].ns.clone().unwrap();
    let mut last = String::new();
    for _ in 0..10 {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "iperf3", "-c"])
            .arg(lab.gateway_ip.to_string())
            .args(["-p", &port.to_string(), "-t", &secs.to_string()])
            .args(extra)
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("iperf3 client failed: {last}");
}

#[test]
fn guest_arp_and_ping_to_the_gateway_land_in_the_ring_needs_root() {
    let lab = Lab::start(LabConfig::default()).unwrap();
    let (t, _rx) = ring_on_uplink(&lab, CaptureConfig::default());
    assert!(lab.ping_from_guest(0, 3));
    assert!(lab.ping_from_guest(1, 3));
    let pkts = all_packets(&t);
    let c = count(&pkts);
    eprintln!("{c:?} of {} packets", pkts.len());
    assert!(c.arp >= 2, "ARP for the gateway and its reply: {c:?}");
    assert!(c.echo_req >= 6 && c.echo_reply >= 6, "{c:?}");
    // Guests' ARP requests for the gateway, by their MACs.
    for g in &lab.guests {
        let mac: Vec<u8> = g
            .mac
            .split(':')
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect();
        assert!(
            pkts.iter().any(|p| p.data.len() >= 42
                && p.data[12..14] == [8, 6]
                && p.data[22..28] == mac[..]),
            "no ARP from {}",
            g.mac
        );
    }
    // The counters follow within a second.
    let h = t.handle();
    wait_for(Duration::from_secs(5), "the counters", || {
        h.section().ring_packets >= pkts.len() as u64
    });
    let s = h.section();
    let up = s.interfaces.iter().find(|i| i.name == "uplink0").unwrap();
    assert_eq!(up.role, "uplink");
    assert!(up.kernel_received_total >= pkts.len() as u64 - 2, "{up:?}");
    assert_eq!(up.kernel_dropped_total, 0);
    assert!(s.ring_packets < pkts.len() as u64 + 10);
}

#[test]
fn snaplen_cuts_frames_and_timestamps_are_wall_clock_needs_root() {
    let lab = Lab::start(LabConfig::default()).unwrap();
    let (t, _rx) = ring_on_uplink(&lab, CaptureConfig::default());
    let before = hvflight::clock::now().unix_ns;
    let ns = lab.guests[0].ns.clone().unwrap();
    lab.exec_in(
        &ns,
        &[
            "ping",
            "-q",
            "-c",
            "3",
            "-i",
            "0.2",
            "-s",
            "1000",
            &lab.gateway_ip.to_string(),
        ],
    )
    .unwrap();
    let after = hvflight::clock::now().unix_ns;
    let big: Vec<Packet> = all_packets(&t)
        .into_iter()
        .filter(|p| p.orig_len >= 1000)
        .collect();
    assert!(big.len() >= 6, "{} big packets", big.len());
    for p in &big {
        assert_eq!(p.data.len(), 128, "cut at the snaplen");
        assert_eq!(p.orig_len, 14 + 20 + 8 + 1000);
        assert!(p.ts_unix_ns >= before && p.ts_unix_ns <= after);
    }
}

#[test]
fn filter_keeps_control_plane_and_only_the_sampled_share_of_bulk_tcp_needs_root() {
    let lab = Lab::start(LabConfig::default()).unwrap();
    let big = |share: f64| CaptureConfig {
        sample_share: share,
        cpu_budget_ms_per_s: 1000.0,
        ring_sampled_share: 0.5,
        ..Default::default()
    };
    // Three captures of the same port at once: none, 5 %, all of the rest.
    let (none, _r0) = ring_on_uplink(&lab, big(0.0));
    let (some, _r1) = ring_on_uplink(&lab, big(0.05));
    let (every, _r2) = ring_on_uplink(&lab, big(1.0));
    let _srv = iperf_server(&lab, 5201);
    iperf_client(&lab, 0, 5201, 3, &[]);
    assert!(lab.ping_from_guest(0, 2));

    let (c0, c1) = (count(&all_packets(&none)), count(&all_packets(&some)));
    let s0 = none.handle().section();
    let s1 = some.handle().section();
    let s2 = every.handle().section();
    let total = s2.interfaces[0].kernel_received_total + s2.interfaces[0].kernel_dropped_total;
    eprintln!(
        "none {c0:?}\nsome {c1:?}\ntotal frames {total}, 5% lane got {}",
        s1.sampled_packets_total
    );
    // Control plane whole in both.
    assert!(
        c0.tcp_syn_fin_rst >= 4,
        "SYN and FIN of both iperf connections: {c0:?}"
    );
    assert!(
        c0.echo_req >= 2 && c0.echo_reply >= 2 && c0.arp >= 1,
        "{c0:?}"
    );
    assert_eq!(c0.tcp_other, 0, "no bulk TCP without a sampled share");
    assert_eq!(s0.sampled_packets_total, 0);
    // The sampled share, roughly.
    assert!(total > 2000, "iperf3 moved {total} frames");
    let got = s1.sampled_packets_total as f64 / total as f64;
    assert!(
        (0.01..0.15).contains(&got),
        "sampled {got:.3} of bulk, configured 0.05"
    );
    // Headers only: no payload byte of the bulk stream is kept.
    assert!(c1.tcp_other > 0);
    assert_eq!(c1.tcp_payload_bytes, 0, "{c1:?}");
}

#[test]
fn the_ring_stays_within_its_byte_bound_under_a_flood_needs_root() {
    let lab = Lab::start(LabConfig::default()).unwrap();
    let max = 256u64 << 10;
    let (t, _rx) = ring_on_uplink(
        &lab,
        CaptureConfig {
            ring_max_bytes: max,
            cpu_budget_ms_per_s: 1000.0,
            ..Default::default()
        },
    );
    let ns = lab.guests[0].ns.clone().unwrap();
    let flood_start = hvflight::clock::now().unix_ns;
    let mut flood = Killed(
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "ping", "-f", "-q", "-c", "30000", "-s", "64",
            ])
            .arg(lab.gateway_ip.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let h = t.handle();
    let mut worst = 0;
    let t0 = Instant::now();
    while flood.0.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
        let s = h.section();
        worst = worst.max(s.ring_bytes);
        assert!(
            s.ring_bytes <= s.ring_max_bytes,
            "{} > {}",
            s.ring_bytes,
            s.ring_max_bytes
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The capture thread may still be draining what the kernel queued
    // during the flood (a debug build on a loaded CI machine lags): wait
    // until two published sections a tick apart agree, i.e. the ring has
    // stopped taking flood frames.
    let mut s = h.section();
    let t1 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(1100));
        let next = h.section();
        let quiet = next.evicted_packets_total == s.evicted_packets_total
            && next.ring_packets == s.ring_packets;
        s = next;
        if quiet {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "the ring still took flood frames 30 s after ping ended: {s:?}"
        );
    }
    eprintln!(
        "ring {} of {} bytes (worst {worst}), {} kept, {} evicted, complete since {} ms before the newest",
        s.ring_bytes,
        s.ring_max_bytes,
        s.ring_packets,
        s.evicted_packets_total,
        (s.newest_unix_ns - s.complete_since_unix_ns) / 1_000_000
    );
    assert!(s.ring_max_bytes <= max);
    assert!(
        s.evicted_packets_total > 0,
        "60 000 frames do not fit into 256 KiB"
    );
    // It says since when it is complete: after the flood began (it had to
    // evict), near its oldest packet (kernel timestamps are not strictly
    // in arrival order, so a few kept ones may be older).
    assert!(s.complete_since_unix_ns > flood_start);
    assert!((s.complete_since_unix_ns - s.oldest_unix_ns).abs() < 50_000_000);
    // The counters are a second old at most; a stray packet may have come since.
    let kept = all_packets(&t);
    assert!(
        (kept.len() as i64 - s.ring_packets as i64).abs() <= 10,
        "the ring holds {} packets, its section says {}",
        kept.len(),
        s.ring_packets
    );
}

#[test]
fn over_its_cpu_budget_it_sheds_the_sampled_share_and_takes_it_back_needs_root() {
    let lab = Lab::start(LabConfig::default()).unwrap();
    let (t, rx) = ring_on_uplink(
        &lab,
        CaptureConfig {
            sample_share: 1.0,
            cpu_budget_ms_per_s: 4.0,
            shed_after_s: 1,
            restore_after_s: 2,
            ..Default::default()
        },
    );
    let _srv = iperf_server(&lab, 5201);
    // Small UDP datagrams as fast as they go: many frames, all "sampled".
    iperf_client(&lab, 0, 5201, 4, &["-u", "-b", "0", "-l", "64"]);
    let h = t.handle();
    assert!(h.section().shed_total >= 1, "{:?}", h.section());
    let mut seen = Vec::new();
    wait_for(
        Duration::from_secs(120),
        "the sampled share restored",
        || {
            while let Ok(e) = rx.try_recv() {
                if let EventKind::Capture { what, detail, .. } = e.kind {
                    seen.push((what, detail));
                }
            }
            seen.iter().any(|(w, _)| w == "restored") && !h.section().shedding
        },
    );
    eprintln!("{seen:#?}");
    let shed = seen.iter().find(|(w, _)| w == "shed").unwrap();
    assert!(shed.1.contains("budget 4 ms/s"), "{}", shed.1);
    assert!(h.section().shed_seconds_total >= 1);
}

// ---- through the agent ----

fn trigger(dir: &Path, reason: &str) -> (String, PathBuf) {
    let out = Command::new(common::bin())
        .args(["trigger", "--reason", reason, "--socket"])
        .arg(dir.join("s.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let (id, path) = s.trim().split_once(' ').unwrap();
    (id.to_string(), PathBuf::from(path))
}

fn entry_bytes(bundle: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(bundle).unwrap();
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == name {
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            return Some(b);
        }
    }
    None
}

/// tcpdump's reading of a pcapng: (unix seconds, line) per packet.
fn tcpdump(bytes: &[u8]) -> Vec<(f64, String)> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    let out = Command::new("tcpdump")
        .args(["-nn", "-tt", "-e", "-r"])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let ts: f64 = l.split_whitespace().next().unwrap().parse().unwrap();
            (ts, l.to_string())
        })
        .collect()
}

fn wait_status(
    a: &common::RunningAgent,
    limit: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let s = a.status();
        if f(&s) {
            return s;
        }
        assert!(t0.elapsed() < limit, "status never matched: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn uplink_state(s: &serde_json::Value) -> String {
    s["capture"]["interfaces"]
        .as_array()
        .and_then(|v| v.iter().find(|i| i["name"] == "uplink0"))
        .map(|i| i["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn a_trigger_bundles_the_ring_as_pcapng_with_packets_before_and_after_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 2,
        traffic: true,
        ..Default::default()
    })
    .unwrap();
    let a = common::RunningAgent::start(
        "[agent]\ninterval_ms = 200\nmetrics_listen = \"\"\n[bundle]\nbefore_s = 60\nafter_s = 3\n\
         [capture]\nbefore_s = 30\nafter_s = 3\n",
        &["--netns", &lab.hv_ns, "--libvirt-uri", &lab.libvirt_uri()],
    );
    wait_status(&a, Duration::from_secs(20), |s| {
        uplink_state(s) == "capturing"
    });
    // A few seconds of guests pinging the gateway before the incident.
    std::thread::sleep(Duration::from_secs(3));
    let (_id, path) = trigger(a.dir.path(), "packets please");
    let first = hvflight::bundle::verify::manifest(&path).unwrap();
    let incident = first.incident.ts_unix_ns as f64 / 1e9;
    let cap = first
        .capture
        .clone()
        .expect("capture in the first manifest");
    assert_eq!(cap.entry, "capture/packets.pcapng");
    assert!(cap.packets_before > 0, "{cap:?}");
    let lines = tcpdump(&entry_bytes(&path, &cap.entry).unwrap());
    assert_eq!(lines.len() as u64, cap.packets);
    assert!(lines.iter().any(|(ts, _)| *ts < incident - 1.0));

    // The completed bundle, after the post-window: packets from both sides.
    std::thread::sleep(Duration::from_secs(5));
    let (m, problems) = hvflight::bundle::verify::verify(&path).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(m.complete);
    let cap = m.capture.clone().unwrap();
    let e = m.entries.iter().find(|e| e.name == cap.entry).unwrap();
    let bytes = entry_bytes(&path, &cap.entry).unwrap();
    assert_eq!(e.size, bytes.len() as u64);
    let lines = tcpdump(&bytes);
    assert_eq!(lines.len() as u64, cap.packets);
    let before = lines.iter().filter(|(ts, _)| *ts < incident).count();
    let after = lines.iter().filter(|(ts, _)| *ts > incident).count();
    eprintln!(
        "{} packets: {before} before, {after} after the trigger; first {}\nlast {}",
        lines.len(),
        lines.first().unwrap().1,
        lines.last().unwrap().1
    );
    assert!(before >= 4 && after >= 4, "{before} before, {after} after");
    assert_eq!(before as u64, cap.packets_before);
    assert!(lines.iter().any(|(_, l)| l.contains("ICMP echo request")));
    assert!(lines.iter().any(|(_, l)| l.contains("ICMP echo reply")));
    // Nothing outside the window.
    let (lo, hi) = (
        cap.window_since_unix_ns as f64 / 1e9,
        cap.window_until_unix_ns as f64 / 1e9,
    );
    assert!(lines
        .iter()
        .all(|(ts, _)| *ts >= lo - 1e-6 && *ts <= hi + 1e-6));
    assert!(hi - incident <= 3.01);
    let up = cap.interfaces.iter().find(|i| i.name == "uplink0").unwrap();
    assert_eq!(up.state, "capturing");
    assert!(cap.complete_since_unix_ns >= cap.window_since_unix_ns);
}

#[test]
fn an_uplink_that_vanishes_is_a_recorded_capture_failure_and_sampling_goes_on_needs_root() {
    let lab = Lab::start(LabConfig::default()).unwrap();
    let a = common::RunningAgent::start(
        "[agent]\ninterval_ms = 200\nmetrics_listen = \"\"\n[capture]\nretry_ms = 300\n",
        &["--netns", &lab.hv_ns, "--libvirt-uri", &lab.libvirt_uri()],
    );
    wait_status(&a, Duration::from_secs(20), |s| {
        uplink_state(s) == "capturing"
    });
    let old = ifindex(&lab, "uplink0");
    lab.exec_in(&lab.hv_ns, &["ip", "link", "del", "uplink0"])
        .unwrap();
    let s = wait_status(&a, Duration::from_secs(10), |s| uplink_state(s) == "failed");
    let seq = s["sampling"]["last_seq"].as_u64().unwrap();
    let up = s["capture"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "uplink0")
        .unwrap()
        .clone();
    eprintln!("{up:#}");
    assert!(!up["error"].as_str().unwrap().is_empty());
    assert!(up["failures_total"].as_u64().unwrap() >= 1);
    // The agent keeps sampling.
    wait_status(&a, Duration::from_secs(10), |s| {
        s["sampling"]["last_seq"].as_u64().unwrap_or(0) >= seq + 5
    });
    // The uplink comes back (a new interface under the old name): captured again.
    lab.exec_in(
        &lab.hv_ns,
        &[
            "ip",
            "link",
            "add",
            "uplink0",
            "type",
            "veth",
            "peer",
            "name",
            "sw0",
            "netns",
            &lab.switch_ns,
        ],
    )
    .unwrap();
    lab.exec_in(
        &lab.hv_ns,
        &["ip", "link", "set", "uplink0", "master", &lab.bridge, "up"],
    )
    .unwrap();
    assert_ne!(ifindex(&lab, "uplink0"), old);
    wait_status(&a, Duration::from_secs(20), |s| {
        uplink_state(s) == "capturing"
    });
    // The failure and the recovery are events in the store.
    let out = Command::new(common::bin())
        .args(["history", "--since", "5m", "--json", "--state-dir"])
        .arg(a.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let caps: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"capture\""))
        .collect();
    eprintln!("{caps:#?}");
    assert!(caps
        .iter()
        .any(|l| l.contains("\"what\":\"failed\"") && l.contains("uplink0")));
    assert!(caps.iter().any(|l| l.contains("\"what\":\"recovered\"")));
}

#[test]
fn an_uplink_set_down_then_up_is_captured_again_needs_root() {
    let lab = Lab::start(LabConfig::default()).unwrap();
    let (t, rx) = ring_on_uplink(
        &lab,
        CaptureConfig {
            retry_ms: 300,
            ..Default::default()
        },
    );
    lab.set_link(&lab.hv_ns, "uplink0", false).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let down = t.handle().section();
    lab.set_link(&lab.hv_ns, "uplink0", true).unwrap();
    let h = t.handle();
    wait_for(Duration::from_secs(15), "capturing again", || {
        h.section()
            .interfaces
            .iter()
            .any(|i| i.name == "uplink0" && i.state == "capturing")
    });
    let events: Vec<(String, String)> = rx
        .try_iter()
        .filter_map(|e| match e.kind {
            EventKind::Capture { what, detail, .. } => Some((what, detail)),
            _ => None,
        })
        .collect();
    eprintln!("while down: {:?}\n{events:#?}", down.interfaces);
    // Packets after the uplink came back reach the ring.
    std::thread::sleep(Duration::from_secs(1));
    assert!(lab.ping_from_guest(0, 2));
    assert!(count(&all_packets(&t)).echo_reply >= 2);
}
