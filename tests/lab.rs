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

fn virsh(lab: &Lab, args: &[&str]) -> String {
    let out = std::process::Command::new("virsh")
        .args(["-c", &lab.libvirt_uri()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn guests_reach_gateway_and_fdb_has_each_guest_on_its_port_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 3,
        nova_metadata: true,
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
    // libvirt accepts the node description: every guest a running domain,
    // with the guest's MAC on the lab's bridge and its nova metadata.
    let list = virsh(&lab, &["list", "--all"]);
    for g in &lab.guests {
        assert!(
            list.lines()
                .any(|l| l.contains(&g.name) && l.contains("running")),
            "{list}"
        );
        let xml = virsh(&lab, &["dumpxml", &g.name]);
        assert!(xml.contains(&g.uuid), "{xml}");
        assert!(
            xml.contains(&format!("<mac address='{}'/>", g.mac)),
            "{xml}"
        );
        assert!(
            xml.contains(&format!("<source bridge='{}'/>", lab.bridge)),
            "{xml}"
        );
        assert!(
            xml.contains("<nova:name>") && xml.contains("<nova:project uuid="),
            "{xml}"
        );
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
    let uplink = lab.uplink.clone();
    // Each fault with what it leaves on the host for a collector to see.
    type Evidence = Box<dyn Fn(&Lab)>;
    let checks: Vec<(Fault, Evidence)> = vec![
        (
            Fault::UplinkDown,
            Box::new(|lab| {
                let l = lab::run(&["ip", "-n", &lab.hv_ns, "link", "show", &lab.uplink]).unwrap();
                assert!(l.contains("NO-CARRIER"), "{l}");
            }),
        ),
        (
            Fault::PortDisabled {
                port: uplink.clone(),
            },
            Box::new(|lab| {
                let l = bridge_cmd(lab, &["link", "show", "dev", &lab.uplink]);
                assert!(l.contains("state disabled"), "{l}");
            }),
        ),
        (
            Fault::PortState {
                port: uplink.clone(),
                state: 1,
            },
            Box::new(|lab| {
                let l = bridge_cmd(lab, &["link", "show", "dev", &lab.uplink]);
                assert!(l.contains("state listening"), "{l}");
            }),
        ),
        (
            Fault::NftBridgeDrop,
            Box::new(|lab| {
                let r = lab.exec_in(&lab.hv_ns, &["nft", "list", "tables"]).unwrap();
                assert!(r.contains("table bridge"), "{r}");
            }),
        ),
        (
            Fault::FdbHijack { guest: 0 },
            Box::new(|lab| {
                let fdb = bridge_cmd(lab, &["fdb", "show", "br", &lab.bridge]);
                let mac = &lab.guests[0].mac;
                assert!(
                    fdb.lines().any(|l| l.starts_with(mac.as_str())
                        && l.contains(&format!("dev {}", lab.uplink))),
                    "{fdb}"
                );
            }),
        ),
    ];
    for (f, evidence) in &checks {
        lab.inject(f).unwrap();
        evidence(&lab);
        assert!(
            !lab.ping_from_guest(0, 1),
            "guest 0 still reaches the gateway under {f:?}"
        );
        lab.revert(f).unwrap();
        assert!(
            lab.ping_from_guest(0, 3),
            "guest 0 does not recover after reverting {f:?}"
        );
    }
    // Blocking cannot be held with STP off (the kernel makes it forwarding
    // again): the lab says so instead of injecting nothing.
    let err = lab
        .inject(&Fault::PortState {
            port: uplink,
            state: 4,
        })
        .unwrap_err();
    assert!(err.to_string().contains("forwarding"), "{err}");
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
    lab.revert(&Fault::MtuMismatch { mtu: 1000 }).unwrap();
    assert!(lab.exec_in(&ns, &big).is_ok(), "large packets pass again");
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
    lab.revert(&Fault::LearningFloodOff { port }).unwrap();
    assert!(lab.ping_from_guest(1, 2), "guest 1 reachable again");
}

fn tap_stat(lab: &Lab, tap: &str, counter: &str) -> u64 {
    let p = lab::run(&[
        "ip",
        "netns",
        "exec",
        &lab.hv_ns,
        "cat",
        &format!("/sys/class/net/{tap}/statistics/{counter}"),
    ]);
    p.unwrap().trim().parse().unwrap()
}

fn tap_tx_dropped(lab: &Lab, tap: &str) -> u64 {
    tap_stat(lab, tap, "tx_dropped")
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
    // Inject again must not start a second flood; revert drains again while
    // the traffic toward the guest goes on.
    lab.inject(&Fault::TapNotDrained { guest: 1 }).unwrap();
    lab.revert(&Fault::TapNotDrained { guest: 1 }).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (dropped, sent) = (
        tap_tx_dropped(&lab, &tap),
        tap_stat(&lab, &tap, "tx_packets"),
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(
        tap_tx_dropped(&lab, &tap),
        dropped,
        "drops go on after revert"
    );
    assert!(
        tap_stat(&lab, &tap, "tx_packets") >= sent + 20,
        "the tap is not drained after revert"
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

#[test]
fn cleanup_stale_removes_namespaces_of_dead_processes_only_needs_root() {
    // A pid that surely is dead: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("hvf{dead}x0hv");
    let ours = format!("hvf{}xstale", std::process::id());
    // Other tests' labs run cleanup_stale() as they start; it leaves
    // namespaces younger than STALE_MIN_AGE alone, so it cannot remove the
    // dead pid's namespace while `ip netns add` is still binding it (a race
    // that failed CI once).
    lab::run(&["ip", "netns", "add", &stale]).unwrap();
    lab::run(&["ip", "netns", "add", &ours]).unwrap();
    // What a concurrent lab start runs: the young namespace stays.
    lab::cleanup_stale();
    let young_kept = lab::list_namespaces().contains(&stale);
    lab::cleanup_stale_older_than(std::time::Duration::ZERO);
    let left = lab::list_namespaces();
    let _ = lab::run(&["ip", "netns", "del", &ours]);
    let _ = lab::run(&["ip", "netns", "del", &stale]);
    assert!(young_kept, "a namespace added a moment ago was removed");
    assert!(!left.contains(&stale), "stale namespace kept: {left:?}");
    assert!(
        left.contains(&ours),
        "a live process's namespace was removed"
    );
}

#[test]
fn failed_start_reports_stderr_and_leaves_nothing_needs_root() {
    // `ip` refuses the name (a '/' is not allowed in interface names) after
    // the lab's namespaces were already made.
    let err = match Lab::start(LabConfig {
        bridge: "br/0".into(),
        ..Default::default()
    }) {
        Ok(_) => panic!("a bridge named br/0 was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not a valid ifname"), "{err}");
    let hv = err
        .split_whitespace()
        .find(|w| w.starts_with("hvf") && w.ends_with("hv"))
        .unwrap_or_else(|| panic!("error names no namespace: {err}"));
    let sw = format!("{}sw", hv.trim_end_matches("hv"));
    let left = lab::list_namespaces();
    assert!(
        !left.iter().any(|n| n == hv || *n == sw),
        "left behind: {left:?}"
    );
}
