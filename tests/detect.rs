//! The detector end to end in the lab (needs root): faults injected at a
//! random moment are detected without `trigger`, a bundle appears with data
//! from both sides of the injection, and a healthy or idle lab raises nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hvflight::bundle::{verify, writer};
use hvflight::lab::{Fault, Lab, LabConfig};

mod common;
use common::RunningAgent;

const CONFIG: &str = "[detect]\nboot_grace_s = 0\nwindow_s = 2.0\ncollapse_after = 2\nrecover_after = 3\n[bundle]\nbefore_s = 60\nafter_s = 1\ncommand_timeout_ms = 3000\n";

fn agent(lab: &Lab) -> RunningAgent {
    RunningAgent::start(
        CONFIG,
        &[
            "--interval-ms",
            "200",
            "--netns",
            &lab.hv_ns,
            "--libvirt-uri",
            &lab.libvirt_uri(),
        ],
    )
}

fn status(a: &RunningAgent) -> serde_json::Value {
    a.status()
}

fn wait_healthy_with_evidence(a: &RunningAgent) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = status(a);
        if st["detector"]["state"] == "healthy"
            && st["detector"]["eligible_guests"].as_u64().unwrap_or(0) >= 2
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "detector never healthy with eligible guests: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bundles(dir: &Path) -> Vec<PathBuf> {
    writer::list(&dir.join("bundles"))
}

/// Injects `fault` after a random short delay, checks detection, the
/// bundle, and that the analyzer ranks `cause` first; returns the latency (ms).
fn scenario(fault: impl Fn(&Lab) -> Fault, expect: &str, cause: &str) -> f64 {
    let lab = Lab::start(LabConfig {
        guests: 3,
        traffic: true,
        ..Default::default()
    })
    .unwrap();
    let a = agent(&lab);
    wait_healthy_with_evidence(&a);
    std::thread::sleep(Duration::from_millis(
        200 + (std::process::id() as u64 * 7919) % 1000,
    ));
    let t_inject = hvflight::clock::now().unix_ns;
    lab.inject(&fault(&lab)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let path = loop {
        if let Some(p) = bundles(a.dir.path()).into_iter().next() {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no incident detected; status: {}",
            status(&a)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let m = verify::manifest(&path).unwrap();
    assert_eq!(m.incident.trigger, "detector");
    assert!(m.incident.reason.contains(expect), "{}", m.incident.reason);
    let latency_ms = (m.incident.ts_unix_ns - t_inject) as f64 / 1e6;
    // Complete after the post-window: history from both sides of the injection.
    // (written a moment after it: wait for it, generously on a busy machine)
    let deadline = Instant::now() + Duration::from_secs(20);
    while !verify::manifest(&path).is_ok_and(|m| m.complete) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (m, problems) = verify::verify(&path).unwrap();
    assert!(problems.is_empty() && m.complete, "{problems:?}");
    let f = std::fs::File::open(&path).unwrap();
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
    let mut hist = String::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == "history/records.jsonl" {
            std::io::Read::read_to_string(&mut e, &mut hist).unwrap();
        }
    }
    let ts: Vec<i64> = hist
        .lines()
        .filter(|l| l.contains("\"kind\":\"sample\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["ts_unix_ns"].as_i64())
        .collect();
    assert!(
        ts.iter().any(|t| *t < t_inject) && ts.iter().any(|t| *t > t_inject),
        "history must span the injection"
    );
    assert!(
        hist.contains("\"kind\":\"detector\""),
        "detector transitions are in the event log"
    );
    assert_eq!(bundles(a.dir.path()).len(), 1, "one incident, one bundle");
    // The analyzer names the injected cause first, with evidence around the incident.
    let out = Command::new(common::bin())
        .args(["bundle", "analyze", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = &r["findings"][0];
    assert_eq!(
        top["id"],
        cause,
        "{}",
        serde_json::to_string_pretty(&r["findings"]).unwrap()
    );
    assert!(!top["evidence"].as_array().unwrap().is_empty());
    // The same from the live store, without a bundle.
    let out = Command::new(common::bin())
        .args([
            "analyze",
            "--since",
            "2m",
            "--format",
            "json",
            "--state-dir",
        ])
        .arg(a.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        live["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == cause),
        "{live}"
    );
    latency_ms
}

#[test]
fn uplink_peer_down_is_detected_f2_needs_root() {
    let ms = scenario(|_| Fault::UplinkDown, "no usable uplink", "F2");
    eprintln!("F2 detection latency: {ms:.0} ms");
    assert!(ms < 6000.0, "{ms} ms");
}

#[test]
fn uplink_port_leaving_forwarding_is_detected_f8_needs_root() {
    let ms = scenario(
        |lab| Fault::PortDisabled {
            port: lab.uplink.clone(),
        },
        "port state 0",
        "F8",
    );
    eprintln!("F8 detection latency: {ms:.0} ms");
    assert!(ms < 6000.0, "{ms} ms");
}

#[test]
fn bridge_forward_drop_is_detected_f11_needs_root() {
    let ms = scenario(
        |_| Fault::NftBridgeDrop,
        "nothing left through the uplink",
        "F11",
    );
    eprintln!("F11 detection latency: {ms:.0} ms");
    assert!(ms < 6000.0, "{ms} ms");
}

#[test]
fn healthy_and_idle_labs_raise_nothing_needs_root() {
    let busy = Lab::start(LabConfig {
        guests: 3,
        traffic: true,
        ..Default::default()
    })
    .unwrap();
    let idle = Lab::start(LabConfig {
        guests: 3,
        traffic: false,
        ..Default::default()
    })
    .unwrap();
    let (a, b) = (agent(&busy), agent(&idle));
    wait_healthy_with_evidence(&a);
    // A guest's port flaps (its reboot) and another guest goes away (shut down).
    busy.set_link(&busy.hv_ns, "vnet1", false).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    busy.set_link(&busy.hv_ns, "vnet1", true).unwrap();
    hvflight::lab::run(&["ip", "-n", &busy.hv_ns, "link", "del", "vnet2"]).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        bundles(a.dir.path()).is_empty(),
        "false positive on a healthy lab: {}",
        status(&a)
    );
    assert_eq!(status(&a)["detector"]["state"], "healthy");
    // Idle guests are no evidence: nothing judged, nothing raised, and status says so.
    let st = status(&b);
    assert!(bundles(b.dir.path()).is_empty());
    assert_eq!(st["detector"]["eligible_guests"], 0, "{st}");
    assert_eq!(st["detector"]["total_guests"], 3, "{st}");
}
