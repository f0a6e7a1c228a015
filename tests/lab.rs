//! The namespace lab itself (needs root: builds network namespaces). The
//! lab is what tests, demo and benchmark stand on, so its promises are tested:
//! guests reach the gateway, the FDB is as libvirt would leave it, faults
//! break what they should, and nothing is left behind — also after a panic.

use hvflight::lab::{self, Fault, Lab, LabConfig};

fn bridge_cmd(lab: &Lab, args: &[&str]) -> String {
    let mut full = vec!["bridge", "-n", lab.hv_ns.as_str()];
    full.extend_from_slice(args);
    lab::run(&full).unwrap()
}

#[test]
fn guests_reach_gateway_and_fdb_has_each_guest_on_its_port_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 3,
        ..Default::default()
    })
    .unwrap();
    for i in 0..3 {
        assert!(
            lab.ping_from_guest(i, 1),
            "guest {i} cannot reach the gateway"
        );
    }
    let fdb = bridge_cmd(&lab, &["fdb", "show", "br", &lab.bridge]);
    for g in &lab.guests {
        let line = fdb
            .lines()
            .find(|l| l.starts_with(&g.mac))
            .unwrap_or_else(|| panic!("{} not in fdb:\n{fdb}", g.mac));
        assert!(line.contains(&format!("dev {}", g.host_port)), "{line}");
    }
    // libvirt accepts the node description.
    let out = std::process::Command::new("virsh")
        .args(["-c", &lab.libvirt_uri(), "list", "--all"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for g in &lab.guests {
        assert!(text.contains(&g.name) && text.contains("running"), "{text}");
    }
}

#[test]
fn faults_break_connectivity_and_revert_restores_it_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 2,
        ..Default::default()
    })
    .unwrap();
    assert!(lab.ping_from_guest(0, 1));
    for f in [
        Fault::UplinkDown,
        Fault::PortDisabled {
            port: lab.uplink.clone(),
        },
        Fault::NftBridgeDrop,
        Fault::FdbHijack { guest: 0 },
    ] {
        lab.inject(&f).unwrap();
        assert!(
            !lab.ping_from_guest(0, 2),
            "guest 0 still reaches the gateway under {f:?}"
        );
        lab.revert(&f).unwrap();
        assert!(
            lab.ping_from_guest(0, 3),
            "guest 0 does not recover after reverting {f:?}"
        );
    }
    lab.inject(&Fault::PortDisabled {
        port: lab.uplink.clone(),
    })
    .unwrap();
    let link = bridge_cmd(&lab, &["link", "show", "dev", &lab.uplink]);
    assert!(link.contains("state disabled"), "{link}");
}

#[test]
fn mtu_mismatch_drops_large_packets_only_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 1,
        ..Default::default()
    })
    .unwrap();
    let ns = lab.guests[0].ns.clone().unwrap();
    let gw = lab.gateway_ip.to_string();
    let big = [
        "ping",
        "-c",
        "1",
        "-w",
        "2",
        "-M",
        "do",
        "-s",
        "1400",
        gw.as_str(),
    ];
    assert!(lab.exec_in(&ns, &big).is_ok());
    lab.inject(&Fault::MtuMismatch { mtu: 1000 }).unwrap();
    assert!(
        lab.exec_in(&ns, &big).is_err(),
        "1428-byte packet passed a 1000-byte MTU"
    );
    assert!(lab.ping_from_guest(0, 1), "small packets must still pass");
}

#[test]
fn learning_off_removes_guest_from_fdb_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 2,
        ..Default::default()
    })
    .unwrap();
    assert!(lab.ping_from_guest(1, 1));
    let port = lab.guests[1].host_port.clone();
    lab.inject(&Fault::LearningFloodOff { port: port.clone() })
        .unwrap();
    // Replies toward the guest are neither learned nor flooded: it is cut off.
    assert!(!lab.ping_from_guest(1, 2));
    let fdb = bridge_cmd(&lab, &["fdb", "show", "br", &lab.bridge]);
    assert!(
        !fdb.lines().any(|l| l.starts_with(&lab.guests[1].mac)),
        "{fdb}"
    );
    let link = bridge_cmd(&lab, &["-d", "link", "show", "dev", &port]);
    assert!(
        link.contains("learning off") && link.contains("flood off"),
        "{link}"
    );
}

fn tap_tx_dropped(lab: &Lab, tap: &str) -> u64 {
    let p = lab::run(&[
        "ip",
        "netns",
        "exec",
        &lab.hv_ns,
        "cat",
        &format!("/sys/class/net/{tap}/statistics/tx_dropped"),
    ]);
    p.unwrap().trim().parse().unwrap()
}

#[test]
fn undrained_tap_drops_toward_guest_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 1,
        tap_guests: 1,
        ..Default::default()
    })
    .unwrap();
    let tap = lab.guests[1].host_port.clone();
    assert!(tap.starts_with("tap"));
    let before = tap_tx_dropped(&lab, &tap);
    lab.inject(&Fault::TapNotDrained { guest: 1 }).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tap_tx_dropped(&lab, &tap) <= before + 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        tap_tx_dropped(&lab, &tap) > before + 10,
        "tap tx_dropped did not rise"
    );
}

#[test]
fn lab_is_removed_on_drop_and_on_panic_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 2,
        ..Default::default()
    })
    .unwrap();
    let names = lab.namespaces();
    assert_eq!(names.len(), 4);
    drop(lab);
    let left = lab::list_namespaces();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "left behind: {left:?}"
    );

    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let lab = Lab::start(LabConfig {
            guests: 1,
            ..Default::default()
        })
        .unwrap();
        *names.lock().unwrap() = lab.namespaces();
        panic!("test failure inside a lab");
    });
    assert!(r.is_err());
    let left = lab::list_namespaces();
    let names = names.into_inner().unwrap();
    assert!(
        !names.is_empty() && names.iter().all(|n| !left.contains(n)),
        "left behind after panic: {left:?}"
    );
}

#[test]
fn fifty_guests_start_needs_root() {
    let t0 = std::time::Instant::now();
    let lab = Lab::start(LabConfig {
        guests: 50,
        ..Default::default()
    })
    .unwrap();
    eprintln!("50-guest lab up in {:?}", t0.elapsed());
    assert!(lab.ping_from_guest(49, 1));
    let links = lab::run(&[
        "ip",
        "-n",
        &lab.hv_ns,
        "-o",
        "link",
        "show",
        "master",
        &lab.bridge,
    ])
    .unwrap();
    assert_eq!(links.lines().count(), 51);
}
