//! Analyzer speed on a realistic 32 MiB bundle (the issue's target: ≤ 2 s).
//! Not a timed test: it prints what it measures. Run (release):
//!
//! ```sh
//! cargo test --release --test analyze_bench -- --ignored --nocapture
//! ```
//!
//! The bundle: a host with `BENCH_VNICS` (default 220) guests, 16 minutes
//! of 1 Hz history (900 s before the collapse, 60 s after: the bundle
//! defaults) in which every vNIC's counters move every second, plus a
//! packet ring of `BENCH_PCAP_MIB` (default 40) MiB of headers-only frames
//! (the ring dominates a real bundle's size: history JSON compresses ~45×),
//! made from the lab's base sample and written in the real format. Wall
//! time and CPU time (user + sys, less sensitive to a busy machine) are
//! printed; `HVFLIGHT_TIMING=1` also prints the stages; `BENCH_OUT=FILE`
//! keeps the bundle.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hvflight::analyze::packets::build;
use hvflight::bundle::Incident;
use hvflight::sample::Sample;

mod common;

const INCIDENT_NS: i64 = 1_425_004_200_000_000_000;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// The base sample grown to `n` vNICs (copies of vnet0 with their own names, MACs, domains).
fn big_base(n: usize) -> Sample {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay/base-sample.json");
    let mut s: Sample = serde_json::from_str(&std::fs::read_to_string(fx).unwrap()).unwrap();
    let links = s.links.as_mut().unwrap();
    let tmpl = links.iter().find(|l| l.name == "vnet0").unwrap().clone();
    let br = &mut s.bridges.as_mut().unwrap()[0];
    let ptmpl = br.ports.iter().find(|p| p.name == "vnet0").unwrap().clone();
    let lv = s.libvirt.as_mut().unwrap();
    let dtmpl = lv
        .domains
        .iter()
        .find(|d| d.vnics[0].host_ifname.as_deref() == Some("vnet0"))
        .unwrap()
        .clone();
    let fdb = s.fdb.as_mut().unwrap();
    let ftmpl: Vec<_> = fdb.iter().filter(|f| f.port == "vnet0").cloned().collect();
    for i in 4..n {
        let name = format!("vnet{i}");
        let ifindex = 100 + i as u32;
        let mac = format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        let hmac = format!("fe{}", &mac[2..]);
        let mut l = tmpl.clone();
        (l.name, l.ifindex, l.mac) = (name.clone(), ifindex, hmac.clone());
        links.push(l);
        let mut p = ptmpl.clone();
        (p.name, p.ifindex) = (name.clone(), ifindex);
        br.ports.push(p);
        for f in &ftmpl {
            let mut f = f.clone();
            f.port = name.clone();
            f.ifindex = ifindex;
            if f.mac.starts_with("52:54") {
                f.mac = mac.clone();
            } else if f.mac.starts_with("fe:") {
                f.mac = hmac.clone();
            }
            fdb.push(f);
        }
        let mut d = dtmpl.clone();
        d.name = format!("guest{i}");
        d.uuid = format!("00000000-0000-4000-8000-{i:012}");
        d.vnics[0].mac = mac;
        d.vnics[0].host_ifname = Some(name.clone());
        d.vnics[0].target_dev = name;
        if let Some(nv) = d.nova.as_mut() {
            nv.instance_name = format!("instance-{i:04}");
        }
        lv.domains.push(d);
    }
    s
}

/// CPU time (user + sys) of this process's reaped children, seconds.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
#[ignore]
fn analyze_a_32_mib_bundle() {
    let n: usize = std::env::var("BENCH_VNICS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(220);
    let pcap_mib: usize = std::env::var("BENCH_PCAP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let base = big_base(n);
    let mut rng = Lcg(42);
    let t_build = Instant::now();
    let mut hist = Vec::new();
    let mut s = base.clone();
    let samples = 961;
    for i in 0..samples {
        let t = i as i64 - 900;
        s.seq = i as u64 + 1;
        s.ts_unix_ns = INCIDENT_NS + t * 1_000_000_000 + (rng.next() % 3_000_000) as i64;
        s.mono_ns = 5_000_000_000_000 + (i as u64) * 1_000_000_000;
        s.boot_ns = s.mono_ns;
        s.duration_us = 1500 + rng.next() % 900;
        for l in s.links.iter_mut().flatten() {
            let up = l.name.starts_with("uplink");
            let k = if up { 40 * n as u64 } else { 60 };
            let (a, b) = (rng.next() % k, rng.next() % k);
            l.stats.rx_packets += a;
            l.stats.tx_packets += if up && t >= 0 { 0 } else { b };
            l.stats.rx_bytes += a * (60 + rng.next() % 1400);
            l.stats.tx_bytes += b * (60 + rng.next() % 1400);
            if rng.next() % 50 == 0 {
                l.stats.rx_dropped += 1;
            }
        }
        for c in s.softnet.iter_mut().flatten() {
            c.processed += rng.next() % 5000;
        }
        if let Some(ct) = s.conntrack.as_mut() {
            ct.count = Some(ct.count.unwrap_or(0) + rng.next() % 50);
        }
        hist.extend_from_slice(hvflight::agent::print::sample_json(&s).as_bytes());
        hist.push(b'\n');
    }
    // The packet ring: headers-only frames (ARP, DHCP and random TCP headers).
    let mut frames = Vec::new();
    let mut bytes = 0usize;
    let mut k = 0i64;
    while bytes < pcap_mib << 20 {
        let ts = INCIDENT_NS - 60_000_000_000 + k * 1_000_000;
        let f = match k % 10 {
            0 => build::dhcp(
                &format!("52:54:00:00:{:02x}:{:02x}", (k >> 8) & 255, k & 255),
                1,
                k as u32,
                false,
            ),
            1 => build::bpdu("02:00:00:00:00:01"),
            _ => (0..96).map(|_| rng.next() as u8).collect(),
        };
        bytes += f.len() + 32;
        frames.push((ts, (k % 2) as u32, f));
        k += 1;
    }
    let pcap = build::pcapng(&["uplink0", "vnet0"], &frames);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.tar.zst");
    hvflight::analyze::fixture::write_bundle(
        &path,
        "virt1012",
        Incident {
            id: "bench".into(),
            trigger: "detector".into(),
            reason: "bench".into(),
            ts_unix_ns: INCIDENT_NS,
            ts: hvflight::clock::format_rfc3339(INCIDENT_NS),
            ..Default::default()
        },
        samples as u64,
        0,
        &hist,
        &[("packets/ring.pcapng".into(), pcap)],
    )
    .unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "bundle: {n} vNICs, {samples} samples, history {:.0} MiB + pcapng {pcap_mib} MiB → {:.1} MiB compressed (built in {:.1} s)",
        hist.len() as f64 / 1048576.0,
        size as f64 / 1048576.0,
        t_build.elapsed().as_secs_f64()
    );
    if let Ok(keep) = std::env::var("BENCH_OUT") {
        std::fs::copy(&path, keep).unwrap();
    }
    for format in ["json", "text"] {
        let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let cpu0 = children_cpu_s();
            let t0 = Instant::now();
            let out = Command::new(common::bin())
                .args(["bundle", "analyze", "--format", format])
                .arg(&path)
                .output()
                .unwrap();
            let dt = t0.elapsed().as_secs_f64();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            best = best.min(dt);
            best_cpu = best_cpu.min(children_cpu_s() - cpu0);
        }
        eprintln!("analyze --format {format}: best of 3 {best:.2} s wall, {best_cpu:.2} s CPU (all threads)");
    }
    let html = dir.path().join("r.html");
    let t0 = Instant::now();
    let out = Command::new(common::bin())
        .args(["bundle", "analyze", "--format", "html", "--out"])
        .arg(&html)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "analyze --format html: {:.2} s, page {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        std::fs::metadata(&html).unwrap().len() as f64 / 1048576.0
    );
}
