//! The agent against real guests (needs root, qemu, libvirtd): a private
//! libvirtd in the lab's hypervisor namespace runs qemu (TCG) guests on the
//! lab bridge (src/lab/real.rs). What libvirt's test driver cannot show:
//! taps made by libvirt, real counters, real lifecycle events seen from
//! another process, libvirtd going away and hanging, and the detector on a
//! node whose guests are real.
//!
//! Booting is the expensive part, so the tests of this file share one lab
//! (three guests), one test at a time (a mutex); it is torn down when the
//! test process exits (atexit), and by `lab::cleanup_stale()` of the next
//! run if the process was killed. Each test starts its own agent. On a
//! failure the guests' console logs and libvirt's logs are kept under
//! target/lab-artifacts/ (the path is printed).

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hvflight::lab::real::{RealLab, RealLabConfig};
use hvflight::lab::Fault;
use hvflight::sample::{Event, EventKind, Sample};
use hvflight::store::{read_range, Record};

mod common;
use common::RunningAgent;

/// guest0 and guest1 run throughout; guest2 is shut down, restarted,
/// destroyed and crashed by the lifecycle test.
const GUESTS: usize = 3;

static LAB: OnceLock<Mutex<Option<Result<RealLab, String>>>> = OnceLock::new();

extern "C" fn teardown() {
    if let Some(m) = LAB.get() {
        let lab = m.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(Ok(lab)) = lab {
            let boots: Vec<String> = lab
                .boot_to_ping
                .iter()
                .map(|d| format!("{:.1}", d.as_secs_f64()))
                .collect();
            eprintln!(
                "real lab: boot-to-ping median {:.1} s over {} starts ({} s)",
                lab.median_boot_to_ping().unwrap_or_default().as_secs_f64(),
                lab.boot_to_ping.len(),
                boots.join(", ")
            );
            drop(lab);
        }
    }
}

/// Runs `f` on the shared lab (built on first use), one test at a time.
/// A failing test keeps the lab's logs as artifacts and fails as it would.
fn with_lab(test: &str, f: impl FnOnce(&mut RealLab)) {
    let m = LAB.get_or_init(|| {
        // SAFETY: registers a plain extern "C" fn; statics outlive exit handlers' use.
        unsafe { libc::atexit(teardown) };
        Mutex::new(None)
    });
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let t0 = Instant::now();
        let lab = RealLab::start(
            RealLabConfig {
                guests: GUESTS,
                ..Default::default()
            },
            &mut |msg| eprintln!("real lab: {msg}"),
        )
        .map_err(|e| e.to_string());
        eprintln!("real lab: ready in {:.1} s", t0.elapsed().as_secs_f64());
        *guard = Some(lab);
    }
    let lab = match guard.as_mut() {
        Some(Ok(lab)) => lab,
        Some(Err(e)) => panic!("the shared real-guest lab did not start: {e}"),
        None => unreachable!(),
    };
    // Whatever an earlier test left broken (libvirtd stopped, a guest down).
    match lab.heal(&[0, 1], Duration::from_secs(300)) {
        Ok(done) if !done.is_empty() => {
            eprintln!("{test}: lab repaired first: {}", done.join(", "))
        }
        Ok(_) => {}
        Err(e) => panic!("{test}: the shared lab cannot be repaired: {e}"),
    }
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(lab)));
    if let Err(p) = r {
        match lab.save_artifacts(test) {
            Ok(d) => eprintln!("{test}: console and libvirt logs kept in {}", d.display()),
            Err(e) => eprintln!("{test}: could not keep the logs: {e}"),
        }
        std::panic::resume_unwind(p);
    }
}

// libvirt is asked every sample here (libvirt_interval_ms = 0): these tests
// check that each sample of an outage records libvirt's failure; with the
// default interval a sample may repeat the last answer (with its age) for up
// to 5 s while the event stream reports the loss at once.
const AGENT_CONFIG: &str = "[detect]\nboot_grace_s = 0\nwindow_s = 2.0\ncollapse_after = 2\nrecover_after = 3\n[bundle]\nbefore_s = 60\nafter_s = 1\ncommand_timeout_ms = 3000\n[collect]\nlibvirt_timeout_ms = 400\nlibvirt_reconnect_ms = 200\nlibvirt_keepalive_s = 1\nlibvirt_interval_ms = 0\n";

fn agent(lab: &RealLab) -> RunningAgent {
    RunningAgent::start(
        AGENT_CONFIG,
        &[
            "--interval-ms",
            "200",
            "--netns",
            &lab.base.hv_ns,
            "--libvirt-uri",
            &lab.libvirt_uri(),
        ],
    )
}

fn now_ns() -> i64 {
    hvflight::clock::now().unix_ns
}

/// Records that may hold anything from `since_ns` on. An events record is
/// filed under its first event's time, so one that began a little earlier
/// can hold later events: read from 10 s before and filter per item.
fn records(a: &RunningAgent, since_ns: i64) -> Vec<Record> {
    read_range(
        &a.dir.path().join("store"),
        since_ns.saturating_sub(10_000_000_000),
        i64::MAX,
    )
    .0
}

fn samples(a: &RunningAgent, since_ns: i64) -> Vec<Sample> {
    records(a, since_ns)
        .into_iter()
        .filter_map(|r| match r {
            Record::Sample(s) if s.ts_unix_ns >= since_ns => Some(*s),
            _ => None,
        })
        .collect()
}

fn events(a: &RunningAgent, since_ns: i64) -> Vec<Event> {
    records(a, since_ns)
        .into_iter()
        .filter_map(|r| match r {
            Record::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .filter(|e| e.ts_unix_ns >= since_ns)
        .collect()
}

/// The first event after `since_ns` that `pred` accepts, waiting up to `within`.
fn wait_event(
    a: &RunningAgent,
    since_ns: i64,
    within: Duration,
    what: &str,
    pred: impl Fn(&EventKind) -> bool,
) -> Event {
    let deadline = Instant::now() + within;
    loop {
        if let Some(e) = events(a, since_ns).into_iter().find(|e| pred(&e.kind)) {
            return e;
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = events(a, since_ns)
                .iter()
                .filter(|e| {
                    matches!(
                        e.kind,
                        EventKind::Libvirt { .. } | EventKind::LibvirtConnection { .. }
                    )
                })
                .map(|e| format!("{:?}", e.kind))
                .collect();
            panic!("no {what} within {within:?}; libvirt events seen: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first sample after `since_ns` that `pred` accepts, waiting up to `within`.
fn wait_sample(
    a: &RunningAgent,
    since_ns: i64,
    within: Duration,
    what: &str,
    pred: impl Fn(&Sample) -> bool,
) -> Sample {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = samples(a, since_ns).into_iter().find(|s| pred(s)) {
            return s;
        }
        if Instant::now() >= deadline {
            let last = samples(a, since_ns).pop();
            panic!(
                "no sample with {what} within {within:?}; last: failures {:?}, libvirt {:?}",
                last.as_ref().map(|s| &s.failures),
                last.as_ref().and_then(|s| s.libvirt.as_ref()).map(|l| l
                    .domains
                    .iter()
                    .map(|d| format!("{} {} {}", d.name, d.state, d.reason))
                    .collect::<Vec<_>>())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lifecycle<'a>(
    domain: &'a str,
    event: &'a str,
    detail: &'a str,
) -> impl Fn(&EventKind) -> bool + 'a {
    move |k| {
        matches!(k, EventKind::Libvirt { domain: d, event: e, detail: x, .. }
            if d == domain && e == event && x == detail)
    }
}

fn connection(up: bool) -> impl Fn(&EventKind) -> bool {
    move |k| matches!(k, EventKind::LibvirtConnection { connected, .. } if *connected == up)
}

fn domain<'a>(s: &'a Sample, name: &str) -> Option<&'a hvflight::sample::Domain> {
    s.libvirt.as_ref()?.domains.iter().find(|d| d.name == name)
}

fn state_is(
    name: &'static str,
    state: &'static str,
    reason: &'static str,
) -> impl Fn(&Sample) -> bool {
    move |s| domain(s, name).is_some_and(|d| d.state == state && d.reason == reason)
}

/// `hvflight sample --once --json` in the lab's hypervisor namespace.
fn sample_once(lab: &RealLab) -> Sample {
    let out = Command::new(common::bin())
        .args(["sample", "--once", "--json", "--netns", &lab.base.hv_ns])
        .args(["--libvirt-uri", &lab.libvirt_uri()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// libvirt's `domifstat` of a tap: (rx_packets, tx_packets) from the guest's side.
fn domifstat(lab: &RealLab, dom: &str, tap: &str) -> (u64, u64) {
    let out = lab.virsh(&["domifstat", dom, tap]).unwrap();
    let get = |k: &str| {
        out.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[1] == k).then(|| f[2].parse::<u64>().unwrap())
            })
            .unwrap_or_else(|| panic!("no {k} in {out}"))
    };
    (get("rx_packets"), get("tx_packets"))
}

fn tap_packets(s: &Sample, tap: &str) -> (u64, u64) {
    let l = s
        .link(tap)
        .unwrap_or_else(|| panic!("no link {tap} in the sample"));
    (l.stats.rx_packets, l.stats.tx_packets)
}

#[test]
fn collector_sees_domains_taps_and_real_counters_needs_root() {
    with_lab("collector", |lab| {
        let s = sample_once(lab);
        assert_eq!(s.failure("libvirt"), None, "{:?}", s.failures);
        let lv = s.libvirt.as_ref().expect("libvirt section");
        assert_eq!(lv.uri, lab.libvirt_uri());
        let br = s
            .bridges
            .as_ref()
            .and_then(|b| b.iter().find(|b| b.name == lab.base.bridge))
            .expect("the lab bridge");
        for (i, g) in lab.guests.iter().enumerate().take(2) {
            let d = domain(&s, &g.name).unwrap_or_else(|| panic!("{} not listed", g.name));
            assert_eq!((d.state.as_str(), d.reason.as_str()), ("running", "booted"));
            assert_eq!(d.uuid, g.uuid);
            assert!(d.id.is_some());
            assert_eq!(d.xml_error, None);
            assert_eq!(d.vnics.len(), 1);
            let v = &d.vnics[0];
            let tap = lab.tap(i).expect("a running guest has a tap");
            assert!(tap.starts_with("vnet"), "libvirt names taps vnetN: {tap}");
            assert_eq!(
                (
                    v.mac.as_str(),
                    v.bridge.as_str(),
                    v.kind.as_str(),
                    v.model.as_str()
                ),
                (g.mac.as_str(), lab.base.bridge.as_str(), "bridge", "virtio")
            );
            assert_eq!(v.target_dev, tap, "a real libvirtd keeps the tap's name");
            assert_eq!(v.host_ifname.as_deref(), Some(tap.as_str()));
            let l = s
                .link(&tap)
                .expect("the tap is a link of the hypervisor namespace");
            assert_eq!(v.host_ifindex, Some(l.ifindex));
            assert_eq!(l.kind, "tun");
            assert_eq!(l.mac, g.host_mac, "libvirt gives taps fe:… MACs");
            assert_eq!(l.master, Some(br.ifindex));
            assert!(br.ports.iter().any(|p| p.name == tap && p.state == 3));
        }

        // Real counters: 20 pings toward guest0 move its tap (and not
        // guest1's by as much); libvirt reports the same counters from the
        // guest's side, rx and tx swapped.
        let (tap0, tap1) = (lab.tap(0).unwrap(), lab.tap(1).unwrap());
        let lv_before = domifstat(lab, "guest0", &tap0);
        let s1 = sample_once(lab);
        assert!(lab.ping_guest(0, 20), "guest0 answers 20 pings");
        let s2 = sample_once(lab);
        let lv_after = domifstat(lab, "guest0", &tap0);
        let (rx1, tx1) = tap_packets(&s1, &tap0);
        let (rx2, tx2) = tap_packets(&s2, &tap0);
        eprintln!(
            "{tap0}: host rx {rx1}→{rx2} tx {tx1}→{tx2}; libvirt (guest side) rx {}→{} tx {}→{}",
            lv_before.0, lv_after.0, lv_before.1, lv_after.1
        );
        assert!(
            tx2 - tx1 >= 20,
            "echo requests reach the guest: {tx1}→{tx2}"
        );
        assert!(rx2 - rx1 >= 20, "echo replies leave it: {rx1}→{rx2}");
        // Guest rx = host tx, guest tx = host rx (libvirt's view is the guest's).
        assert!(
            lv_before.0 <= tx1 && tx2 <= lv_after.0,
            "libvirt rx {lv_before:?}..{lv_after:?} brackets host tx {tx1}..{tx2}"
        );
        assert!(
            lv_before.1 <= rx1 && rx2 <= lv_after.1,
            "libvirt tx {lv_before:?}..{lv_after:?} brackets host rx {rx1}..{rx2}"
        );
        let (_, o1) = tap_packets(&s1, &tap1);
        let (_, o2) = tap_packets(&s2, &tap1);
        assert!(
            o2 - o1 < tx2 - tx1,
            "counters are per tap (test-driver counters would be equal): {tap1} {o1}→{o2}"
        );
    });
}

#[test]
fn lifecycle_events_start_shutdown_destroy_crash_needs_root() {
    with_lab("lifecycle", |lab| {
        let a = agent(lab);
        let t0 = now_ns();
        wait_event(
            &a,
            0,
            Duration::from_secs(30),
            "connected:true",
            connection(true),
        );
        wait_sample(
            &a,
            t0,
            Duration::from_secs(30),
            "guest2 running",
            state_is("guest2", "running", "booted"),
        );
        let old_tap = lab.tap(2).expect("guest2 has a tap");
        let latency = |action_ns: i64, e: &Event| (e.ts_unix_ns - action_ns) as f64 / 1e6;

        // Shutdown: the guest powers off on the ACPI power button.
        let t = now_ns();
        lab.shutdown_guest(2).unwrap();
        let e1 = wait_event(
            &a,
            t,
            Duration::from_secs(60),
            "shutdown/guest",
            // libvirt 9 says "guest" (finished, guest-initiated); older ones "finished".
            |k| {
                lifecycle("guest2", "shutdown", "guest")(k)
                    || lifecycle("guest2", "shutdown", "finished")(k)
            },
        );
        let e2 = wait_event(
            &a,
            t,
            Duration::from_secs(60),
            "stopped/shutdown",
            lifecycle("guest2", "stopped", "shutdown"),
        );
        let s = wait_sample(
            &a,
            t,
            Duration::from_secs(10),
            "guest2 shutoff/shutdown",
            state_is("guest2", "shutoff", "shutdown"),
        );
        assert!(s.link(&old_tap).is_none(), "{old_tap} gone with the guest");
        eprintln!(
            "shutdown: events after {:.0} / {:.0} ms",
            latency(t, &e1),
            latency(t, &e2)
        );

        // Start: a new tap on the bridge, mapped to the domain.
        let t = now_ns();
        lab.start_guest(2).unwrap();
        let e = wait_event(
            &a,
            t,
            Duration::from_secs(60),
            "started/booted",
            lifecycle("guest2", "started", "booted"),
        );
        eprintln!("start: event after {:.0} ms", latency(t, &e));
        let s = wait_sample(
            &a,
            t,
            Duration::from_secs(10),
            "guest2 running with a mapped tap",
            |s| {
                domain(s, "guest2").is_some_and(|d| {
                    d.state == "running"
                        && d.vnics
                            .first()
                            .and_then(|v| v.host_ifname.as_ref())
                            .is_some_and(|n| s.link(n).is_some())
                })
            },
        );
        let new_tap = domain(&s, "guest2").unwrap().vnics[0]
            .host_ifname
            .clone()
            .unwrap();
        assert_eq!(Some(new_tap.clone()), lab.tap(2));

        // Destroy.
        let t = now_ns();
        lab.destroy_guest(2).unwrap();
        let e = wait_event(
            &a,
            t,
            Duration::from_secs(30),
            "stopped/destroyed",
            lifecycle("guest2", "stopped", "destroyed"),
        );
        eprintln!("destroy: event after {:.0} ms", latency(t, &e));
        let s = wait_sample(
            &a,
            t,
            Duration::from_secs(10),
            "guest2 shutoff/destroyed",
            state_is("guest2", "shutoff", "destroyed"),
        );
        assert!(s.link(&new_tap).is_none(), "{new_tap} gone with the guest");

        // Crash: qemu killed with SIGKILL.
        lab.start_guest(2).unwrap();
        let s = wait_sample(
            &a,
            now_ns(),
            Duration::from_secs(30),
            "guest2 running again",
            state_is("guest2", "running", "booted"),
        );
        let tap = domain(&s, "guest2").unwrap().vnics[0]
            .host_ifname
            .clone()
            .expect("mapped tap");
        let t = now_ns();
        let pid = lab.crash_guest(2).unwrap();
        let e = wait_event(
            &a,
            t,
            Duration::from_secs(30),
            "stopped/failed",
            lifecycle("guest2", "stopped", "failed"),
        );
        eprintln!(
            "crash (kill -9 {pid}): event after {:.0} ms",
            latency(t, &e)
        );
        assert_eq!(
            lab.domstate(2).unwrap(),
            ("shut off".to_string(), "crashed".to_string())
        );
        let s = wait_sample(
            &a,
            t,
            Duration::from_secs(10),
            "guest2 shutoff/crashed",
            state_is("guest2", "shutoff", "crashed"),
        );
        wait_sample(
            &a,
            s.ts_unix_ns,
            Duration::from_secs(10),
            "the crashed guest's tap gone",
            |s| s.links.is_some() && s.link(&tap).is_none(),
        );
        // The others never noticed.
        let s = samples(&a, t).pop().unwrap();
        assert!(state_is("guest0", "running", "booted")(&s));
        assert!(state_is("guest1", "running", "booted")(&s));
    });
}

/// Samples in [from, to): count and the longest gap between two, ms.
fn cadence(samples: &[Sample], from_ns: i64, to_ns: i64) -> (usize, f64) {
    let ts: Vec<i64> = samples
        .iter()
        .map(|s| s.ts_unix_ns)
        .filter(|t| *t >= from_ns && *t < to_ns)
        .collect();
    let gap = ts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .fold(0.0, f64::max);
    (ts.len(), gap)
}

#[test]
fn libvirtd_restart_is_noticed_sampled_through_and_recovered_needs_root() {
    with_lab("libvirtd-restart", |lab| {
        let a = agent(lab);
        wait_event(
            &a,
            0,
            Duration::from_secs(30),
            "connected:true",
            connection(true),
        );
        let before = wait_sample(
            &a,
            0,
            Duration::from_secs(30),
            "guest0 running",
            state_is("guest0", "running", "booted"),
        );
        let id = domain(&before, "guest0").unwrap().id;
        let tap0 = lab.tap(0).unwrap();

        let t_stop = now_ns();
        lab.daemon.stop().unwrap();
        eprintln!(
            "libvirtd took {:.0} ms to exit on SIGTERM",
            (now_ns() - t_stop) as f64 / 1e6
        );
        let down = wait_event(
            &a,
            t_stop,
            Duration::from_secs(15),
            "connected:false",
            connection(false),
        );
        std::thread::sleep(Duration::from_secs(2));
        let t_start = now_ns();
        lab.daemon.start(Duration::from_secs(60)).unwrap();
        let up = wait_event(
            &a,
            t_start,
            Duration::from_secs(30),
            "connected:true",
            connection(true),
        );
        let after = wait_sample(
            &a,
            t_start,
            Duration::from_secs(30),
            "guest0 running again",
            state_is("guest0", "running", "booted"),
        );
        assert_eq!(
            domain(&after, "guest0").unwrap().id,
            id,
            "the restarted libvirtd found the running guest"
        );
        eprintln!(
            "libvirtd restart: disconnect seen {:.0} ms after SIGTERM, reconnect {:.0} ms after the restart; gap in the event log {:.1} s",
            (down.ts_unix_ns - t_stop) as f64 / 1e6,
            (up.ts_unix_ns - t_start) as f64 / 1e6,
            (up.ts_unix_ns - down.ts_unix_ns) as f64 / 1e9
        );

        // During the outage every sample is there, with everything but
        // libvirt; libvirt's absence is recorded in each.
        let all = samples(&a, before.ts_unix_ns);
        let gap: Vec<&Sample> = all
            .iter()
            .filter(|s| s.ts_unix_ns > down.ts_unix_ns && s.ts_unix_ns < t_start)
            .collect();
        let (n, max_gap_ms) = cadence(&all, down.ts_unix_ns, t_start);
        eprintln!("{n} samples while libvirtd was away, longest interval {max_gap_ms:.0} ms");
        assert!(n >= 4, "sampling went on: {n} samples in ~2 s at 5 Hz");
        for s in &gap {
            assert!(s.libvirt.is_none());
            let f = s.failure("libvirt").expect("libvirt's failure recorded");
            assert!(!f.error.is_empty());
            assert!(s.link(&tap0).is_some(), "links still sampled");
            assert!(s.bridges.as_ref().is_some_and(|b| !b.is_empty()));
        }
        // The guest kept running (and sending) without libvirtd.
        let (first, last) = (gap.first().unwrap(), gap.last().unwrap());
        assert!(
            tap_packets(last, &tap0).0 > tap_packets(first, &tap0).0
                || last.ts_unix_ns - first.ts_unix_ns < 1_000_000_000
        );
    });
}

#[test]
fn libvirtd_hung_keeps_the_cadence_and_recovers_needs_root() {
    with_lab("libvirtd-hung", |lab| {
        let a = agent(lab);
        wait_sample(
            &a,
            0,
            Duration::from_secs(30),
            "guest0 running",
            state_is("guest0", "running", "booted"),
        );
        let t_pause = now_ns();
        lab.daemon.pause().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        let t_resume = now_ns();
        lab.daemon.resume().unwrap();
        let back = wait_sample(
            &a,
            t_resume,
            Duration::from_secs(30),
            "libvirt answering again",
            state_is("guest0", "running", "booted"),
        );
        let all = samples(&a, t_pause - 1_000_000_000);
        let (n, max_gap_ms) = cadence(&all, t_pause, t_resume);
        eprintln!(
            "libvirtd stopped (SIGSTOP) 4 s: {n} samples, longest interval {max_gap_ms:.0} ms (interval 200 ms, libvirt timeout 400 ms); libvirt back {:.0} ms after SIGCONT",
            (back.ts_unix_ns - t_resume) as f64 / 1e6
        );
        assert!(n >= 10, "sampling kept going: {n} samples in 4 s at 5 Hz");
        assert!(
            max_gap_ms < 2000.0,
            "no sample waited on libvirtd: {max_gap_ms} ms"
        );
        let hung: Vec<&Sample> = all
            .iter()
            .filter(|s| s.ts_unix_ns > t_pause + 500_000_000 && s.ts_unix_ns < t_resume)
            .collect();
        assert!(!hung.is_empty());
        // The event connection's keepalive (1 s × 3 here) may declare the
        // stopped daemon lost; then it must come back after SIGCONT.
        let lost = events(&a, t_pause)
            .into_iter()
            .find(|e| connection(false)(&e.kind) && e.ts_unix_ns < t_resume + 1_000_000_000);
        if let Some(lost) = lost {
            let up = wait_event(
                &a,
                lost.ts_unix_ns,
                Duration::from_secs(30),
                "connected:true after SIGCONT",
                connection(true),
            );
            eprintln!(
                "event connection: lost {:.1} s into the hang (keepalive), back {:.1} s after SIGCONT",
                (lost.ts_unix_ns - t_pause) as f64 / 1e9,
                (up.ts_unix_ns - t_resume) as f64 / 1e9
            );
        } else {
            eprintln!("event connection: kept through the hang");
        }
        for s in &hung {
            let f = s.failure("libvirt").expect("libvirt's failure recorded");
            assert!(f.timed_out, "{f:?}");
            assert!(
                s.links.as_ref().is_some_and(|l| !l.is_empty()),
                "links still sampled"
            );
        }
    });
}

/// Bundles the agent has taken.
fn bundles(a: &RunningAgent) -> Vec<std::path::PathBuf> {
    hvflight::bundle::writer::list(&a.dir.path().join("bundles"))
}

fn analyze_top(path: &Path) -> serde_json::Value {
    let out = Command::new(common::bin())
        .args(["bundle", "analyze", "--format", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    r["findings"][0].clone()
}

/// Injects `fault` into the real lab, waits for the detector's incident,
/// checks reason and top finding, reverts and waits until the guests are
/// reachable again; returns the detection latency in ms.
fn detector_scenario(lab: &mut RealLab, fault: Fault, expect: &str, cause: &str) -> f64 {
    let a = agent(lab);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = a.status();
        if st["detector"]["state"] == "healthy"
            && st["detector"]["eligible_guests"].as_u64().unwrap_or(0) >= 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "detector never healthy with 2 eligible real guests: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(
        200 + (std::process::id() as u64 * 7919) % 1000,
    ));
    let t_inject = now_ns();
    lab.base.inject(&fault).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let path = loop {
        if let Some(p) = bundles(&a).into_iter().next() {
            break p;
        }
        if Instant::now() >= deadline {
            let _ = lab.base.revert(&fault);
            panic!("no incident detected; status: {}", a.status());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let m = hvflight::bundle::verify::manifest(&path).unwrap();
    let latency_ms = (m.incident.ts_unix_ns - t_inject) as f64 / 1e6;
    // The bundle is rewritten complete after its post-window and the deep
    // state (commands under a 3 s timeout each); then the analyzer reads it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (m2, problems) = loop {
        let (m2, problems) = hvflight::bundle::verify::verify(&path).unwrap();
        if m2.complete || Instant::now() >= deadline {
            break (m2, problems);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    lab.base.revert(&fault).unwrap();
    assert_eq!(m.incident.trigger, "detector");
    assert!(m.incident.reason.contains(expect), "{}", m.incident.reason);
    assert!(
        problems.is_empty() && m2.complete,
        "complete: {}, {problems:?}",
        m2.complete
    );
    eprintln!(
        "bundle complete {:.1} s after the incident",
        (now_ns() - m.incident.ts_unix_ns) as f64 / 1e9
    );
    let top = analyze_top(&path);
    assert_eq!(top["id"], cause, "{top}");
    let since = Instant::now();
    for i in 0..2 {
        lab.wait_for_ping(i, since, Duration::from_secs(30))
            .unwrap();
    }
    latency_ms
}

#[test]
fn uplink_down_is_detected_with_real_guests_f2_needs_root() {
    with_lab("detect-f2", |lab| {
        let ms = detector_scenario(lab, Fault::UplinkDown, "no usable uplink", "F2");
        eprintln!("F2 (uplink peer down) detection latency with real guests: {ms:.0} ms");
        assert!(ms < 10_000.0, "{ms} ms");
    });
}

#[test]
fn uplink_port_disabled_is_detected_with_real_guests_f8_needs_root() {
    with_lab("detect-f8", |lab| {
        let uplink = lab.base.uplink.clone();
        let ms = detector_scenario(
            lab,
            Fault::PortDisabled { port: uplink },
            "port state 0",
            "F8",
        );
        eprintln!("F8 (uplink port state 0) detection latency with real guests: {ms:.0} ms");
        assert!(ms < 10_000.0, "{ms} ms");
    });
}

/// `hvflight demo --guests auto --short`: on this machine (root, libvirtd,
/// qemu, a guest kernel) it picks real guests, says so, runs the whole demo
/// against them and leaves no namespace, libvirtd or qemu behind.
#[test]
fn demo_with_real_guests_needs_root() {
    // Its own lab; the shared one only keeps the two from booting at once.
    let m = LAB.get_or_init(|| {
        // SAFETY: as in with_lab.
        unsafe { libc::atexit(teardown) };
        Mutex::new(None)
    });
    let _serial = m.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let out = Command::new(common::bin())
        .args([
            "demo",
            "--short",
            "--guests",
            "auto",
            "--interval-ms",
            "500",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("demo with real guests: {:.0} s", t0.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo: lab mode: real guests"), "{stdout}");
    assert!(stdout.contains("answered ping"), "{stdout}");
    assert!(stdout.contains("domains 2/2 running"), "{stdout}");
    assert!(
        stdout.contains("EVENT fdb new 52:54:00:00:00:01 on uplink0"),
        "{stdout}"
    );
    assert!(stdout.contains("DETECTOR healthy → SUSPECT"), "{stdout}");
    assert!(stdout.contains("analyze │ 1. [F8]"), "{stdout}");
    assert!(
        stdout.contains("bundle verified: OK") && stdout.contains("complete: true"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no namespace, libvirtd or qemu left behind"),
        "{stdout}"
    );
    for l in stdout
        .lines()
        .filter(|l| l.contains("answered ping") || l.contains("boot-to-ping"))
    {
        eprintln!("{l}");
    }
}

/// A real lab whose process was SIGKILLed leaves libvirtd, qemu, its
/// namespaces and temp dir behind; `lab::cleanup_stale()` (which every lab
/// start runs) removes all of them, and nothing of live labs.
#[test]
fn stale_real_lab_of_a_killed_process_is_cleaned_up_needs_root() {
    use std::io::BufRead;
    with_lab("stale-cleanup", |shared| {
        let mut child = Command::new(common::bin())
            .args(["lab", "--real", "--guests", "1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let desc: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("hvflight lab --real printed {line:?}: {e}"));
        let dir = desc["real"]["dir"].as_str().unwrap().to_string();
        let hv = desc["hv_ns"].as_str().unwrap().to_string();
        let mine = || {
            hvflight::lab::libvirtd::lab_processes()
                .into_iter()
                .filter(|(_, c)| *c == pid)
                .count()
        };
        assert_eq!(mine(), 2, "its libvirtd and one qemu run");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(mine(), 2, "SIGKILL leaves them behind");
        assert!(Path::new(&dir).exists());

        // Its namespaces may be younger than what a lab start's cleanup
        // leaves alone (lab::STALE_MIN_AGE): no age limit here.
        hvflight::lab::cleanup_stale_older_than(Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(10);
        while mine() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(mine(), 0, "libvirtd and qemu of the dead lab killed");
        assert!(!Path::new(&dir).exists(), "{dir} removed");
        assert!(
            !hvflight::lab::list_namespaces().contains(&hv),
            "{hv} removed"
        );
        // The shared lab (a live process's) was left alone.
        assert_eq!(shared.domstate(0).unwrap().0, "running");
        assert!(shared.ping_guest(0, 1));
    });
}
