//! The Prometheus endpoint as a fleet's Prometheus scrapes it (needs root
//! for the lab): loopback only, bounded labels, and values that follow the
//! host.

use std::io::{Read, Write};
use std::process::Command;

mod common;
use common::{free_port, RunningAgent};
use std::time::{Duration, Instant};

use hvflight::lab::{Fault, Lab, LabConfig};

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(text: &str, series_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_follow_the_lab_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 3,
        nova_metadata: true,
        ..Default::default()
    })
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = RunningAgent::on_lab(&format!("[agent]\nmetrics_listen = \"{addr}\"\n"), &lab);
    // The agent runs inside the lab's network namespace, but the test
    // reaches its loopback only through that namespace: scrape from there.
    let scrape_in = |lab: &Lab| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.hv_ns, "python3", "-c", &format!(
                "import urllib.request;print(urllib.request.urlopen('http://{addr}/metrics', timeout=5).read().decode())"
            )])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = scrape_in(&lab);
        if text.contains("hvflight_link_carrier") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        value(&text, "hvflight_samples_total ").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "hvflight_link_carrier{bridge=\"br0\",interface=\"uplink0\",role=\"uplink\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "hvflight_bridge_port_state{bridge=\"br0\",interface=\"uplink0\",role=\"uplink\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "hvflight_bridge_vnics{bridge=\"br0\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "hvflight_domains{state=\"running\"}"),
        Some(3.0),
        "{text}"
    );
    assert!(
        text.contains("nova_name=\"tools-webproxy-01\"") && text.contains("nova_project=\"tools\""),
        "{text}"
    );
    // The packet ring on the uplink (capture up, ring bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = scrape_in(&lab);
        if value(&t, "hvflight_capture_up{iface=\"uplink0\",role=\"uplink\"}") == Some(1.0) {
            assert_eq!(
                value(&t, "hvflight_capture_ring_max_bytes "),
                Some(33554432.0),
                "{t}"
            );
            assert!(t.contains("hvflight_capture_kernel_dropped_packets_total{iface=\"uplink0\""));
            break;
        }
        assert!(Instant::now() < deadline, "no capture in /metrics:\n{t}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Bounded labels: no per-vNIC series (hvflight_drops_total may name
    // the few vNICs that drop most: docs/drop-reasons.md).
    assert!(
        !text
            .lines()
            .any(|l| l.contains("interface=\"vnet0\"") && !l.starts_with("hvflight_drops")),
        "{text}"
    );
    // The uplink loses carrier: the next scrape says so.
    lab.inject(&Fault::UplinkDown).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = scrape_in(&lab);
        if value(
            &t,
            "hvflight_link_carrier{bridge=\"br0\",interface=\"uplink0\",role=\"uplink\"}",
        ) == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "carrier loss not visible in /metrics:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(agent);
}

#[test]
fn metrics_listen_on_loopback_by_default_and_404_elsewhere() {
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = RunningAgent::start(
        &format!("[agent]\nmetrics_listen = \"{addr}\"\n"),
        &["--interval-ms", "200", "--libvirt-uri", "test:///default"],
    );
    std::thread::sleep(Duration::from_millis(1200));
    let text = scrape(&addr);
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 "),
        "{text}"
    );
    assert!(text.contains("# TYPE hvflight_samples counter"));
    assert!(!text.contains("{}"), "empty label sets: {text}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /secret HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains(" 404 "), "{out}");
    drop(agent);
    assert_eq!(
        hvflight::config::Config::default().agent.metrics_listen,
        "127.0.0.1:9469"
    );
}
