//! Cost of the drop-reason collector (needs root; numbers, not assertions):
//!
//! ```sh
//! cargo test --release --test drops_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `cost_per_drop_at_100k_per_s`: a UDP flood to a closed port inside a
//!   lab namespace (every packet a NO_SOCKET drop), paced at ~100k/s, with
//!   and without the program attached: the program's own run time per drop
//!   (BPF_ENABLE_STATS, no sysctl touched), the machine's system+softirq
//!   CPU, and the map read per sample during the flood.
//! - `map_read_with_500_interfaces`: the map filled with 500 interfaces × 4
//!   reasons × 2 protocols (4000 keys), read and turned into the section as
//!   the collector does once per sample.
//! - `agent_cpu_idle_with_and_without_drops`: `hvflight run` on an idle lab,
//!   CPU per sample with the collector on and off.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use hvflight::collect::drops::section;
use hvflight::kernel::drop_reasons::DropKey;
use hvflight::lab::{Lab, LabConfig};
use hvflight::sample::Link;
use hvflight::source::bpf::{self, DropProbe, LoadOptions};

mod common;

fn probe() -> DropProbe {
    DropProbe::load(&LoadOptions {
        btf_path: bpf::DEFAULT_BTF.into(),
        max_entries: 8192,
    })
    .expect("load the drop-reason program (root, BTF)")
}

/// (system + irq + softirq) jiffies of all CPUs, from /proc/stat.
fn kernel_jiffies() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    f[2] + f[5] + f[6]
}

/// Sends ~`rate` UDP packets/s (from two threads) to a closed port on the
/// namespace's loopback for `secs`; returns packets sent.
fn flood(ns: &str, rate: u64, secs: f64) -> u64 {
    let a = flood1(ns, rate / 2, secs);
    let b = flood1(ns, rate / 2, secs);
    a.join().unwrap() + b.join().unwrap()
}

fn flood1(ns: &str, rate: u64, secs: f64) -> std::thread::JoinHandle<u64> {
    let ns = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let lo = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(lo.success());
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let buf = [0u8; 64];
        let start = Instant::now();
        let per_ms = (rate / 1000).max(1);
        let mut sent = 0u64;
        let mut slot = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..per_ms {
                if sock.send_to(&buf, "127.0.0.1:9").is_ok() {
                    sent += 1;
                }
            }
            slot += 1;
            let next = start + Duration::from_millis(slot);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        sent
    })
}

#[test]
#[ignore = "benchmark: run by hand (see the file's header)"]
fn cost_per_drop_at_100k_per_s() {
    let lab = Lab::start(LabConfig {
        guests: 1,
        ..Default::default()
    })
    .unwrap();
    let secs = 5.0;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let _stats = bpf::enable_stats().expect("BPF_ENABLE_STATS");
    for round in 0..2 {
        let k0 = kernel_jiffies();
        let sent = flood(&lab.hv_ns, 100_000, secs);
        let off = (kernel_jiffies() - k0) as f64 / hz / secs;
        eprintln!(
            "round {round} without program: {:.0} pkt/s, system+softirq {:.1}% of one CPU",
            sent as f64 / secs,
            off * 100.0
        );

        let mut p = probe();
        let (c0, t0, _) = p.prog_stats();
        let k0 = kernel_jiffies();
        let sent = flood(&lab.hv_ns, 100_000, secs);
        let on = (kernel_jiffies() - k0) as f64 / hz / secs;
        let (c1, t1, missed) = p.prog_stats();
        let t = Instant::now();
        let raw = p.read().unwrap();
        let read_us = t.elapsed().as_secs_f64() * 1e6;
        let runs = c1 - c0;
        let ns_per_run = (t1 - t0) as f64 / runs.max(1) as f64;
        let no_socket: u64 = raw
            .counts
            .iter()
            .filter(|(k, _)| p.names.name(k.reason) == "NO_SOCKET")
            .map(|(_, n)| n)
            .sum();
        eprintln!(
            "round {round} with program:    {:.0} pkt/s, system+softirq {:.1}% of one CPU; \
             program ran {runs} times ({:.0}/s), {ns_per_run:.0} ns per run = {:.2}% of one CPU \
             at this rate; NO_SOCKET counted {no_socket}; missed {missed}; map read {read_us:.0} µs ({} keys)",
            sent as f64 / secs,
            on * 100.0,
            runs as f64 / secs,
            ns_per_run * runs as f64 / secs / 1e9 * 100.0,
            raw.counts.len()
        );
    }
}

#[test]
#[ignore = "benchmark: run by hand (see the file's header)"]
fn map_read_with_500_interfaces() {
    let mut p = probe();
    let netns = bpf::current_netns_inode().unwrap() as u32;
    // Interfaces that do not exist here: far above any real ifindex.
    let links: Vec<Link> = (0..500u32)
        .map(|i| Link {
            name: format!("vnet{i}"),
            ifindex: 100_000 + i,
            ..Default::default()
        })
        .collect();
    let reasons = [12u32, 64, 119, 2];
    for l in &links {
        for r in reasons {
            for proto in [0x0800u16, 0x86dd] {
                p.set(
                    DropKey {
                        netns,
                        ifindex: l.ifindex,
                        reason: r,
                        protocol: proto,
                    },
                    1,
                )
                .unwrap();
            }
        }
    }
    let (mut reads, mut sections, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut keys = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let raw = p.read().unwrap();
        let t1 = Instant::now();
        let (d, _) = section(&raw.counts, &p.names, netns as u64, &links);
        let t2 = Instant::now();
        reads.push((t1 - t).as_secs_f64() * 1e6);
        sections.push((t2 - t1).as_secs_f64() * 1e6);
        totals.push((t2 - t).as_secs_f64() * 1e6);
        keys = raw.counts.len();
        assert!(d.entries.len() >= 4000);
    }
    for v in [&mut reads, &mut sections, &mut totals] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    eprintln!(
        "{keys} keys (500 interfaces x 4 reasons x 2 protocols), 50 reads: \
         map read p50 {:.0} µs (min {:.0}), section p50 {:.0} µs (min {:.0}), \
         total p50 {:.0} µs, p90 {:.0} µs, max {:.0} µs",
        reads[25], reads[0], sections[25], sections[0], totals[25], totals[45], totals[49]
    );
}

/// utime+stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
#[ignore = "benchmark: run by hand (see the file's header)"]
fn agent_cpu_idle_with_and_without_drops() {
    let lab = Lab::start(LabConfig {
        guests: 10,
        ..Default::default()
    })
    .unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let secs = 30u64;
    for (name, cfg) in [
        (
            "drops off",
            "[collect]\ndisabled = [\"drops\"]\n[detect]\nenabled = false\n",
        ),
        ("drops on ", "[detect]\nenabled = false\n"),
    ] {
        let a = common::RunningAgent::start(
            cfg,
            &[
                "--interval-ms",
                "100",
                "--netns",
                &lab.hv_ns,
                "--libvirt-uri",
                &lab.libvirt_uri(),
            ],
        );
        std::thread::sleep(Duration::from_secs(3)); // loaded, steady
        let c0 = cpu_ticks(a.child.id());
        std::thread::sleep(Duration::from_secs(secs));
        let c1 = cpu_ticks(a.child.id());
        let samples = secs * 10;
        eprintln!(
            "{name}: {:.2} ms CPU per sample (10 Hz, 10 guests, idle)",
            (c1 - c0) as f64 / hz * 1000.0 / samples as f64
        );
    }
}
