//! What the packet ring costs (benchmark, not a timed test; needs root):
//! guests' iperf3 throughput without the agent and with it capturing
//! (guest to guest across the bridge, guest to the switch namespace across
//! the uplink), the capture thread's CPU per second at idle and under
//! iperf3, and the agent's RSS with a full 32 MiB ring.
//!
//! `cargo test --release --test capture_bench -- --ignored --nocapture`
//! (docs/performance.md has the latest figures). Timing on a shared 2-core
//! VM is noisy: each figure is the median of several runs, alternating
//! with and without the agent.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvflight::lab::{Lab, LabConfig};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf_server(ns: &str, ip: &str) -> Killed {
    let c = Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-s", "-B", ip, "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Killed(c)
}

/// Gbit/s received by the server, from iperf3's JSON.
fn iperf(ns: &str, server: &str, secs: u32) -> f64 {
    for _ in 0..10 {
        let out = Command::new("ip")
            .args([
                "netns", "exec", ns, "iperf3", "-J", "-c", server, "-p", "5201", "-t",
            ])
            .arg(secs.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            return v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap()
                / 1e9;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("iperf3 -c {server} failed 10 times");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn agent(lab: &Lab, capture: &str) -> common::RunningAgent {
    let a = common::RunningAgent::start(
        &format!("[agent]\nmetrics_listen = \"\"\n[capture]\n{capture}\n"),
        &["--netns", &lab.hv_ns, "--libvirt-uri", &lab.libvirt_uri()],
    );
    let off = capture.contains("enabled = false");
    let t0 = Instant::now();
    loop {
        let s = a.status();
        let capturing = s["capture"]["interfaces"]
            .as_array()
            .is_some_and(|v| v.iter().any(|i| i["state"] == "capturing"));
        if capturing || (off && !s.is_null()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent not capturing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a
}

/// Mean of the capture thread's CPU ms/s over `secs` seconds of status.
fn capture_cpu(a: &common::RunningAgent, secs: u64) -> f64 {
    let mut v = Vec::new();
    for _ in 0..secs {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(x) = a.status()["capture"]["cpu_ms_last_s"].as_f64() {
            v.push(x);
        }
    }
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark: cargo test --release --test capture_bench -- --ignored --nocapture"]
fn iperf3_throughput_with_and_without_capture_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 3,
        traffic: true,
        ..Default::default()
    })
    .unwrap();
    let g = |i: usize| lab.guests[i].ns.clone().unwrap();
    let gw = lab.gateway_ip.to_string();
    let g0_ip = lab.guests[0].ip.to_string();
    let _s_uplink = iperf_server(&lab.switch_ns, &gw);
    let _s_guest = iperf_server(&g(0), &g0_ip);
    // Interleaved rounds: the machine's load drifts (other jobs share the
    // 2 cores), so each round compares the variants run back to back and
    // the figure is the median over rounds of the ratio to "no agent".
    let rounds = 5;
    let secs = 3;
    let variants: [(&str, Option<&str>); 4] = [
        ("no agent", None),
        ("agent, capture off", Some("enabled = false")),
        ("agent, uplinks (default)", Some("")),
        ("agent, uplinks + vNICs", Some("vnics = true")),
    ];
    let n = variants.len();
    let (mut bridge, mut uplink, mut cpu) = (
        vec![Vec::new(); n],
        vec![Vec::new(); n],
        vec![Vec::new(); n],
    );
    for _ in 0..rounds {
        for (k, (_, cfg)) in variants.iter().enumerate() {
            let a = cfg.map(|c| agent(&lab, c));
            bridge[k].push(iperf(&g(1), &g0_ip, secs));
            if let Some(a) = a
                .as_ref()
                .filter(|_| cfg.is_some_and(|c| !c.contains("enabled = false")))
            {
                // CPU of the capture thread while the uplink run goes on.
                let (ns, gw2) = (g(2), gw.clone());
                let h = std::thread::spawn(move || iperf(&ns, &gw2, secs));
                std::thread::sleep(Duration::from_millis(500));
                cpu[k].push(capture_cpu(a, 2));
                uplink[k].push(h.join().unwrap());
            } else {
                uplink[k].push(iperf(&g(2), &gw, secs));
            }
        }
    }
    println!("\n{rounds} interleaved rounds of {secs} s each; median Gbit/s, and the median over rounds of the change against no agent in the same round");
    println!("| agent | guest→guest across the bridge, Gbit/s | guest→switch across the uplink, Gbit/s | capture CPU under load, ms/s |");
    println!("|---|---:|---:|---:|");
    for (k, (name, _)) in variants.iter().enumerate() {
        let rel = |v: &Vec<Vec<f64>>| {
            median(
                v[k].iter()
                    .zip(&v[0])
                    .map(|(x, b)| (x / b - 1.0) * 100.0)
                    .collect(),
            )
        };
        println!(
            "| {name} | {:.2} ({:+.1} %) | {:.2} ({:+.1} %) | {} |",
            median(bridge[k].clone()),
            rel(&bridge),
            median(uplink[k].clone()),
            rel(&uplink),
            if cpu[k].is_empty() {
                "—".into()
            } else {
                format!("{:.2}", median(cpu[k].clone()))
            }
        );
    }
}

#[test]
#[ignore = "benchmark: cargo test --release --test capture_bench -- --ignored --nocapture"]
fn capture_cpu_at_idle_and_rss_with_a_full_ring_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 3,
        traffic: true,
        ..Default::default()
    })
    .unwrap();
    // Baseline: the same agent without capture.
    let off = agent_no_capture(&lab);
    std::thread::sleep(Duration::from_secs(5));
    let rss_off = rss_kib(off.child.id(), "VmRSS:");
    drop(off);

    let a = agent(&lab, "");
    let idle = capture_cpu(&a, 10);
    println!(
        "\ncapture thread at idle (3 guests pinging the gateway once a second): {idle:.3} ms/s"
    );
    drop(a);

    // Fill the default 32 MiB ring: a ping flood for the control lane and
    // bulk TCP sampled at 50 % for the sampled lane (budget raised so that
    // nothing is shed).
    let a = agent(
        &lab,
        "sample_share = 0.5\ncpu_budget_ms_per_s = 1000.0\nbefore_s = 600",
    );
    let rss_empty = rss_kib(a.child.id(), "VmRSS:");
    let gw = lab.gateway_ip.to_string();
    let _srv = iperf_server(&lab.switch_ns, &gw);
    let t0 = Instant::now();
    let mut last = serde_json::Value::Null;
    while t0.elapsed() < Duration::from_secs(300) {
        let mut floods: Vec<Killed> = (0..2)
            .map(|i| {
                Killed(
                    Command::new("ip")
                        .args(["netns", "exec", &lab.guests[i].ns.clone().unwrap()])
                        .args(["ping", "-f", "-q", "-c", "100000", &gw])
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        iperf(&lab.guests[2].ns.clone().unwrap(), &gw, 5);
        for f in floods.iter_mut() {
            let _ = f.0.wait();
        }
        last = a.status()["capture"].clone();
        let full = last["ring_bytes"].as_u64().unwrap_or(0)
            >= last["ring_max_bytes"].as_u64().unwrap_or(1)
            && last["evicted_packets_total"].as_u64().unwrap_or(0) > 0;
        if full {
            break;
        }
    }
    let rss_full = rss_kib(a.child.id(), "VmRSS:");
    let hwm = rss_kib(a.child.id(), "VmHWM:");
    println!(
        "ring {} of {} bytes, {} packets kept, {} evicted, kernel drops {}",
        last["ring_bytes"],
        last["ring_max_bytes"],
        last["ring_packets"],
        last["evicted_packets_total"],
        last["interfaces"][0]["kernel_dropped_total"]
    );
    println!(
        "agent RSS: capture off {:.1} MiB; capture on, ring empty {:.1} MiB; ring full {:.1} MiB (peak {:.1} MiB)",
        rss_off as f64 / 1024.0,
        rss_empty as f64 / 1024.0,
        rss_full as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    // A bundle of the full ring: how long, how big, and the RSS peak it costs.
    let t = Instant::now();
    let out = Command::new(common::bin())
        .args(["trigger", "--reason", "bench", "--socket"])
        .arg(a.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let path = s.trim().split_once(' ').unwrap().1.to_string();
    let m = hvflight::bundle::verify::manifest(std::path::Path::new(&path)).unwrap();
    let pcap = m
        .entries
        .iter()
        .find(|e| e.name == "capture/packets.pcapng")
        .unwrap();
    println!(
        "bundle of the full ring: trigger answered in {:.1} s, pcapng {:.1} MiB ({} packets), bundle file {:.1} MiB, agent peak RSS after it {:.1} MiB",
        t.elapsed().as_secs_f64(),
        pcap.size as f64 / 1048576.0,
        m.capture.as_ref().map_or(0, |c| c.packets),
        std::fs::metadata(&path).unwrap().len() as f64 / 1048576.0,
        rss_kib(a.child.id(), "VmHWM:") as f64 / 1024.0
    );
}

fn agent_no_capture(lab: &Lab) -> common::RunningAgent {
    let a = common::RunningAgent::start(
        "[agent]\nmetrics_listen = \"\"\n[capture]\nenabled = false\n",
        &["--netns", &lab.hv_ns, "--libvirt-uri", &lab.libvirt_uri()],
    );
    let t0 = Instant::now();
    while a.status().is_null() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(200));
    }
    a
}
