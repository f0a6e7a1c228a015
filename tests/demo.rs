//! `make demo`'s main job, short variant (needs root): it runs, shows the
//! agent seeing the faults it injects, and leaves no namespace behind.

use std::process::Command;

#[test]
fn demo_short_runs_and_cleans_up_needs_root() {
    let out = Command::new(env!("CARGO_BIN_EXE_hvflight"))
        .args(["demo", "--short", "--guests", "2", "--interval-ms", "500"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("no namespace left behind"), "{stdout}");
    // The agent's view of the uplink going down: carrier lost, as an event and in the samples.
    assert!(
        stdout.lines().any(|l| l.contains("EVENT link")
            && l.contains("uplink0")
            && l.contains("carrier=off")),
        "{stdout}"
    );
    assert!(stdout.contains("NO-CARRIER"), "{stdout}");
    assert!(
        stdout.contains("EVENT fdb new 52:54:00:00:00:01 on uplink0"),
        "{stdout}"
    );
    assert!(stdout.contains("domains 2/2 running"), "{stdout}");
    // The detector caught the first fault by itself, and the analyzer names it.
    assert!(stdout.contains("DETECTOR healthy → SUSPECT"), "{stdout}");
    assert!(stdout.contains("analyze │ 1. [F8]"), "{stdout}");
    // The incident frozen into a verified, complete bundle, and the history kept.
    assert!(
        stdout.contains("bundle verified: OK") && stdout.contains("complete: true"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("  history │") && l.contains("| uplink0 ")),
        "{stdout}"
    );
    let hv = stdout
        .split("hypervisor namespace ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("demo names its namespace");
    let id = hv.trim_end_matches("hv");
    let left: Vec<String> = hvflight::lab::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(id))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
