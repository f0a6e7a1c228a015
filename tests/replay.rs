//! Replay fixtures (shared/failure-catalog.md rows marked "replay", and the
//! rows this kernel cannot reproduce: F3, F4, F18): each fixture directory
//! under tests/fixtures/replay/ holds real kernel log records in the
//! kernel's format and recorded counter series (tests/fixtures/PROVENANCE.md
//! says where each came from). They are made into real bundles over a base
//! sample captured from the lab, and `hvflight bundle analyze` must name the
//! right cause first.

use std::path::{Path, PathBuf};
use std::process::Command;

use hvflight::analyze::fixture::Scenario;

mod common;

/// The collapse of every replay: 2015-02-27T02:30:00Z (the seed incident's night).
const INCIDENT_NS: i64 = 1_425_004_200_000_000_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay")
}

/// Builds the fixture's bundle and returns (bundle path, the report as JSON).
pub fn analyze_fixture(name: &str, dir: &Path) -> (PathBuf, serde_json::Value) {
    let base = std::fs::read_to_string(fixtures().join("base-sample.json")).unwrap();
    let sc = Scenario::load(&fixtures().join(name), &base, INCIDENT_NS).unwrap();
    let path = dir.join(format!("replay-{name}.tar.zst"));
    sc.write_bundle(&path, &format!("replay-{name}"), "replay")
        .unwrap();
    let (_, problems) = hvflight::bundle::verify::verify(&path).unwrap();
    assert!(problems.is_empty(), "{name}: {problems:?}");
    let cfg = dir.join("hvflight.toml");
    std::fs::write(
        &cfg,
        "[blast_radius]\ncritical_groups = [{ name = \"inst\", pattern = \"^instance-\" }]\n",
    )
    .unwrap();
    let out = Command::new(common::bin())
        .args(["bundle", "analyze", "--format", "json", "--config"])
        .arg(&cfg)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (path, serde_json::from_slice(&out.stdout).unwrap())
}

fn top_is(name: &str, expect: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = analyze_fixture(name, dir.path());
    let f = &r["findings"];
    assert_eq!(
        f[0]["id"],
        expect,
        "{name}: top finding is not {expect}:\n{}",
        serde_json::to_string_pretty(f).unwrap()
    );
    let ev = f[0]["evidence"].as_array().unwrap();
    assert!(!ev.is_empty() && f[0]["next"].as_array().is_some_and(|n| !n.is_empty()));
    assert!(ev
        .iter()
        .all(|e| e["t_rel_s"].is_number() && e["what"].is_string()));
    r
}

#[test]
fn f1_tx_hang_replay() {
    let r = top_is("F1", "F1");
    let ev = r["findings"][0]["evidence"].as_array().unwrap();
    assert!(ev.iter().any(|e| e["kind"] == "kernel"), "{ev:?}");
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "counter" && e["before"].is_number()),
        "{ev:?}"
    );
}

#[test]
fn f21_allocation_failures_replay() {
    top_is("F21", "F21");
}

#[test]
fn f22_oom_replay() {
    let r = top_is("F22", "F22");
    // The guest qemu belonged to is the one cut off.
    let b = &r["blast_radius"];
    assert_eq!(b["scope"], "guests", "{b}");
    assert_eq!(b["domains"].as_array().unwrap().len(), 1, "{b}");
}

#[test]
fn f23_soft_lockup_replay() {
    top_is("F23", "F23");
}

#[test]
fn f24_bonding_replay() {
    top_is("F24", "F24");
}

#[test]
fn f25_ovs_replay() {
    top_is("F25", "F25");
}

#[test]
fn f28_clock_jump_replay() {
    top_is("F28", "F28");
}

#[test]
fn f3_conntrack_full_replay() {
    top_is("F3", "F3");
}

#[test]
fn f4_neighbour_overflow_replay() {
    top_is("F4", "F4");
}

#[test]
fn f18_vlan_replay() {
    top_is("F18", "F18");
}

/// Captures the base sample the replays start from (run by hand, as root:
/// `cargo test --test replay capture_base -- --ignored`).
#[test]
#[ignore]
fn capture_base_sample_needs_root() {
    let lab = hvflight::lab::Lab::start(hvflight::lab::LabConfig {
        guests: 4,
        traffic: true,
        nova_metadata: true,
        ..Default::default()
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let out = Command::new(common::bin())
        .args([
            "sample",
            "--once",
            "--json",
            "--netns",
            &lab.hv_ns,
            "--libvirt-uri",
            &lab.libvirt_uri(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["host"] = "virt1012".into();
    std::fs::write(
        fixtures().join("base-sample.json"),
        serde_json::to_string_pretty(&v).unwrap() + "\n",
    )
    .unwrap();
}

/// Writes every replay bundle into $REPLAY_OUT (by hand: look at the reports).
#[test]
#[ignore]
fn write_replay_bundles() {
    let out = PathBuf::from(std::env::var("REPLAY_OUT").unwrap_or_else(|_| "target/replay".into()));
    std::fs::create_dir_all(&out).unwrap();
    let base = std::fs::read_to_string(fixtures().join("base-sample.json")).unwrap();
    for name in [
        "F1", "F3", "F4", "F18", "F21", "F22", "F23", "F24", "F25", "F28",
    ] {
        let sc = Scenario::load(&fixtures().join(name), &base, INCIDENT_NS).unwrap();
        sc.write_bundle(
            &out.join(format!("replay-{name}.tar.zst")),
            &format!("replay-{name}"),
            "replay",
        )
        .unwrap();
    }
}
