//! Lab faults the passive detector does not turn into a host-wide incident
//! (F6 FDB hijack, F7 learning/flood off, F14 a tap not drained, F17 MTU
//! mismatch): the real agent samples the lab at 5 Hz, the fault is
//! injected, `hvflight trigger` freezes a bundle, and the analyzer must
//! rank the injected cause first — and find it in the live store too.
//! (F2, F8 and F11 are checked through the detector in tests/detect.rs.)

use std::process::Command;
use std::time::{Duration, Instant};

use hvflight::lab::{Fault, Lab, LabConfig};

mod common;
use common::RunningAgent;

const CONFIG: &str = "[detect]\nboot_grace_s = 0\nwindow_s = 2.0\ncollapse_after = 2\nrecover_after = 3\n[bundle]\nbefore_s = 60\nafter_s = 1\ncommand_timeout_ms = 3000\n";

fn agent(lab: &Lab) -> RunningAgent {
    RunningAgent::on_lab(CONFIG, lab)
}

fn wait_sampling(a: &RunningAgent) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.status()["detector"]["eligible_guests"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "agent not judging guests: {}",
            a.status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
}

fn analyze_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Injects `fault`, lets `during` run (traffic that shows the fault), triggers
/// a bundle, and checks the analyzer's top finding on it and on the store.
fn scenario(cfg: LabConfig, fault: impl Fn(&Lab) -> Fault, during: impl Fn(&Lab), expect: &str) {
    let lab = Lab::start(cfg).unwrap();
    let a = agent(&lab);
    wait_sampling(&a);
    let f = fault(&lab);
    assert_eq!(f.catalog_id(), expect);
    lab.inject(&f).unwrap();
    during(&lab);
    std::thread::sleep(Duration::from_secs(2));
    let out = Command::new(common::bin())
        .args([
            "trigger",
            "--reason",
            &format!("analyzer lab {expect}"),
            "--socket",
        ])
        .arg(a.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let path = line
        .split_whitespace()
        .nth(1)
        .expect("trigger prints id and path")
        .to_string();
    let r = analyze_json(&["bundle", "analyze", "--format", "json", &path]);
    let top = &r["findings"][0];
    assert_eq!(
        top["id"],
        expect,
        "top finding is not {expect}:\n{}",
        serde_json::to_string_pretty(&r["findings"]).unwrap()
    );
    assert!(!top["evidence"].as_array().unwrap().is_empty());
    assert!(
        r["timeline"].as_array().is_some_and(|t| !t.is_empty()),
        "empty timeline"
    );
    let live = analyze_json(&[
        "analyze",
        "--since",
        "2m",
        "--format",
        "json",
        "--state-dir",
        a.dir.path().to_str().unwrap(),
    ]);
    assert_eq!(
        live["findings"][0]["id"],
        expect,
        "live store: {}",
        serde_json::to_string_pretty(&live["findings"]).unwrap()
    );
    let _ = lab.revert(&f);
}

fn three_guests() -> LabConfig {
    LabConfig {
        guests: 3,
        traffic: true,
        ..Default::default()
    }
}

#[test]
fn fdb_hijack_is_ranked_first_f6_needs_root() {
    scenario(
        three_guests(),
        |_| Fault::FdbHijack { guest: 1 },
        |_| {},
        "F6",
    );
}

#[test]
fn learning_and_flood_off_is_ranked_first_f7_needs_root() {
    scenario(
        three_guests(),
        |lab| Fault::LearningFloodOff {
            port: lab.uplink.clone(),
        },
        |_| {},
        "F7",
    );
}

#[test]
fn tap_not_drained_is_ranked_first_f14_needs_root() {
    scenario(
        LabConfig {
            guests: 2,
            tap_guests: 1,
            traffic: true,
            ..Default::default()
        },
        |lab| Fault::TapNotDrained {
            guest: lab.guests.iter().position(|g| g.tap).expect("a tap guest"),
        },
        |_| std::thread::sleep(Duration::from_secs(2)),
        "F14",
    );
}

#[test]
fn mtu_mismatch_is_ranked_first_f17_needs_root() {
    scenario(
        three_guests(),
        |_| Fault::MtuMismatch { mtu: 1400 },
        |lab| {
            // Bulk-sized frames with DF from a guest: small pings still pass.
            let ns = lab.guests[0].ns.clone().unwrap();
            let gw = lab.gateway_ip.to_string();
            let _ = lab.exec_in(
                &ns,
                &[
                    "ping", "-q", "-M", "do", "-s", "1472", "-c", "10", "-i", "0.2", "-W", "1", &gw,
                ],
            );
        },
        "F17",
    );
}
