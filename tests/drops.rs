//! Kernel drop reasons end to end (needs root: namespaces and BPF): the
//! agent's eBPF program on skb:kfree_skb, read once per sample, seen through
//! `hvflight tail --json` while catalogue faults are injected in the lab;
//! the analyzer cites the reasons; the bundle carries a summary. And where
//! BPF is unavailable (no BTF, no CAP_BPF) the section is absent, the sample
//! says why and everything else is there.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use hvflight::lab::{Fault, Lab, LabConfig};

mod common;
use common::RunningAgent;

const INTERVAL_MS: u64 = 200;
const CONFIG: &str =
    "[detect]\nenabled = false\n[bundle]\nbefore_s = 60\nafter_s = 1\ncommand_timeout_ms = 3000\n";

/// Kills its process on drop.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(lab: &Lab) -> RunningAgent {
    let a = RunningAgent::start(
        CONFIG,
        &[
            "--interval-ms",
            &INTERVAL_MS.to_string(),
            "--netns",
            &lab.hv_ns,
            "--libvirt-uri",
            &lab.libvirt_uri(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.status().is_null() {
        assert!(Instant::now() < deadline, "agent never answered status");
        std::thread::sleep(Duration::from_millis(100));
    }
    a
}

/// `hvflight tail --json`: its ticks, parsed, as they arrive.
fn tail(a: &RunningAgent) -> (Guard, Receiver<serde_json::Value>) {
    let mut child = Command::new(common::bin())
        .args(["tail", "--json", "--socket"])
        .arg(a.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["kind"] == "tick" && tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    (Guard(child), rx)
}

/// Fast pings (50/s) so a fault's drops show within one 200 ms sample.
fn ping(ns: &str, to: &str, size: u32) -> Guard {
    Guard(
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-q", "-i", "0.02", "-s"])
            .arg(size.to_string())
            .arg(to)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn reasons_of(tick: &serde_json::Value, iface: &str) -> serde_json::Value {
    tick["ifaces"][iface]["drop_reasons_ps"].clone()
}

/// Every tick's kernel drop reasons, for failure messages.
fn shown(ticks: &[serde_json::Value]) -> String {
    ticks
        .iter()
        .map(|t| {
            let mut s = format!("#{}", t["seq"]);
            for (n, i) in t["ifaces"].as_object().unwrap() {
                if let Some(r) = i["drop_reasons_ps"].as_object() {
                    s.push_str(&format!(" {n}={}", serde_json::Value::Object(r.clone())));
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Outcome {
    /// Ticks from the first one after the injection.
    after: Vec<serde_json::Value>,
    agent: RunningAgent,
    /// Still pinging: the fault keeps dropping while the test looks further.
    _pings: Vec<Guard>,
    _lab: Lab,
}

/// Runs `fault` in a lab with fast pings from every guest to the gateway
/// (of `ping_size` bytes) and from the gateway to guest 0; returns the
/// ticks that followed the injection.
fn scenario(fault: impl Fn(&Lab) -> Fault, ping_size: u32, extra: &[&str]) -> Outcome {
    let lab = Lab::start(LabConfig {
        guests: 2,
        ..Default::default()
    })
    .unwrap();
    let a = agent(&lab);
    let gw = lab.gateway_ip.to_string();
    let mut pings: Vec<Guard> = lab
        .guests
        .iter()
        .filter_map(|g| g.ns.as_deref())
        .map(|ns| ping(ns, &gw, ping_size))
        .collect();
    pings.push(ping(&lab.switch_ns, &lab.guests[0].ip.to_string(), 56));
    for x in extra {
        pings.push(ping(&lab.switch_ns, x, 56));
    }
    let (_tail, rx) = tail(&a);
    // A few healthy samples first (the program is loaded, rates exist).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut healthy = 0;
    while healthy < 5 {
        assert!(Instant::now() < deadline, "no ticks from tail");
        if rx.recv_timeout(Duration::from_secs(5)).is_ok() {
            healthy += 1;
        }
    }
    lab.inject(&fault(&lab)).unwrap();
    let injected = hvflight::clock::now().unix_ns;
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        if let Ok(t) = rx.recv_timeout(Duration::from_secs(1)) {
            if t["ts_unix_ns"].as_i64().unwrap_or(0) > injected {
                after.push(t);
            }
        }
    }
    Outcome {
        after,
        agent: a,
        _pings: pings,
        _lab: lab,
    }
}

/// The reason shows on `iface` in the first sample taken after the
/// injection, or the one after it at the latest (the first may have
/// started before the first dropped packet: "within one sample").
fn assert_reason_within_one_sample(o: &Outcome, iface: &str, reason: &str) {
    let first = o
        .after
        .iter()
        .take(2)
        .position(|t| reasons_of(t, iface)[reason].as_f64().unwrap_or(0.0) > 0.0);
    assert!(
        first.is_some(),
        "{reason} on {iface} not within one sample of the fault; ticks after it:\n{}",
        shown(&o.after)
    );
    eprintln!(
        "{reason} on {iface}: in tick {} after the fault; all ticks:\n{}",
        first.unwrap() + 1,
        shown(&o.after)
    );
}

/// Takes a bundle now and analyzes it: (report json, bundle path).
fn analyze(a: &RunningAgent) -> (serde_json::Value, std::path::PathBuf) {
    let out = Command::new(common::bin())
        .args(["trigger", "--reason", "drops test", "--socket"])
        .arg(a.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trigger: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let path = std::path::PathBuf::from(text.split_whitespace().nth(1).unwrap());
    std::thread::sleep(Duration::from_millis(1500)); // completed after after_s
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
    (serde_json::from_slice(&out.stdout).unwrap(), path)
}

/// The finding `id` exists and one of its evidence lines names `reason` on `iface`.
fn assert_cited(report: &serde_json::Value, id: &str, iface: &str, reason: &str) {
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id}: {report:#}"));
    let cited = f["evidence"].as_array().unwrap().iter().any(|e| {
        let w = e["what"].as_str().unwrap_or("");
        w.contains(reason) && w.contains(iface)
    });
    assert!(cited, "{id} does not cite {reason} on {iface}: {f:#}");
}

fn bundle_entry(path: &std::path::Path, name: &str) -> Option<String> {
    let f = std::fs::File::open(path).unwrap();
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == name {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            return Some(s);
        }
    }
    None
}

#[test]
fn bridge_port_disabled_shows_bridge_ingress_stp_state_f8_needs_root() {
    let o = scenario(
        |lab| Fault::PortDisabled {
            port: lab.uplink.clone(),
        },
        56,
        &[],
    );
    let uplink = o._lab.uplink.clone();
    assert_reason_within_one_sample(&o, &uplink, "BRIDGE_INGRESS_STP_STATE");
    let (r, path) = analyze(&o.agent);
    assert_cited(&r, "F8", &uplink, "BRIDGE_INGRESS_STP_STATE");
    let summary = bundle_entry(&path, "deep/drop_reasons.txt").expect("deep/drop_reasons.txt");
    assert!(
        summary.contains(&uplink) && summary.contains("BRIDGE_INGRESS_STP_STATE"),
        "{summary}"
    );
}

#[test]
fn nft_bridge_forward_drop_shows_netfilter_drop_f11_needs_root() {
    let o = scenario(|_| Fault::NftBridgeDrop, 56, &[]);
    let uplink = o._lab.uplink.clone();
    // Guest → gateway frames die at the bridge forward hook with skb->dev
    // already the egress port (the uplink); gateway → guest ones on the vNIC.
    assert_reason_within_one_sample(&o, &uplink, "NETFILTER_DROP");
    let vnic = o._lab.guests[0].host_port.clone();
    assert_reason_within_one_sample(&o, &vnic, "NETFILTER_DROP");
    // /metrics names the uplink and the reason (scraped inside the lab's
    // namespace, where the agent's loopback endpoint lives).
    let out = Command::new("ip")
        .args(["netns", "exec", &o._lab.hv_ns, "python3", "-c",
            "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9469/metrics', timeout=5).read().decode())"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let series =
        format!("hvflight_drops_total{{interface=\"{uplink}\",reason=\"NETFILTER_DROP\"}} ");
    let v: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"));
    assert!(v > 0.0, "{text}");
    // The human tail says it too.
    let mut t = Command::new(common::bin())
        .args(["tail", "--socket"])
        .arg(o.agent.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(t.stdout.take().unwrap()).lines();
    let _guard = Guard(t);
    // Events (kernel log, links) come between the ticks: look a while.
    let mut seen = Vec::new();
    let line = lines
        .by_ref()
        .take(60)
        .map_while(Result::ok)
        .find(|l| {
            seen.push(l.clone());
            l.contains("kernel: NETFILTER_DROP")
        })
        .unwrap_or_else(|| {
            panic!(
                "tail never showed the kernel's drop reason:\n{}",
                seen.join("\n")
            )
        });
    eprintln!("tail: {line}");
    assert!(line.contains(&format!("uplink {uplink}")), "{line}");
    let (r, _) = analyze(&o.agent);
    assert_cited(&r, "F11", &uplink, "NETFILTER_DROP");
}

#[test]
fn uplink_tx_frozen_by_htb_shows_qdisc_drop_f1_needs_root() {
    let o = scenario(|_| Fault::UplinkTxFrozen, 56, &[]);
    let uplink = o._lab.uplink.clone();
    assert_reason_within_one_sample(&o, &uplink, "QDISC_DROP");
    let (r, _) = analyze(&o.agent);
    assert_cited(&r, "F1", &uplink, "QDISC_DROP");
}

// A bridged MTU mismatch is not PKT_TOO_BIG on 6.18 (that reason is for
// routed paths, ip_forward): the frame that does not fit is freed as
// NOT_SPECIFIED, on the port whose MTU is too small (the uplink veth here,
// whose peer in the switch namespace has the small MTU).
#[test]
fn mtu_too_small_upstream_drops_large_frames_on_the_uplink_f17_needs_root() {
    let o = scenario(|_| Fault::MtuMismatch { mtu: 1000 }, 1400, &[]);
    let uplink = o._lab.uplink.clone();
    assert_reason_within_one_sample(&o, &uplink, "NOT_SPECIFIED");
}

#[test]
fn port_mtu_too_small_on_the_host_is_cited_by_f17_needs_root() {
    let o = scenario(
        |lab| Fault::PortMtu {
            port: lab.uplink.clone(),
            mtu: 1000,
        },
        1400,
        &[],
    );
    let uplink = o._lab.uplink.clone();
    assert_reason_within_one_sample(&o, &uplink, "NOT_SPECIFIED");
    let (r, _) = analyze(&o.agent);
    assert_cited(&r, "F17", &uplink, "NOT_SPECIFIED");
}

/// Runs `prefix… hvflight sample --count 2 --json ARGS` and returns the samples.
fn samples(prefix: &[&str], args: &[&str]) -> Vec<serde_json::Value> {
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.push(common::bin());
    argv.extend(["sample", "--count", "2", "--interval-ms", "1000", "--json"]);
    argv.extend(args);
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(v.len(), 2, "{}", String::from_utf8_lossy(&out.stdout));
    v
}

/// No drops section, a `drops` failure containing `why` in every sample,
/// and every other section there, without failures.
fn assert_absent_with_reason(samples: &[serde_json::Value], why: &str) {
    for s in samples {
        assert!(s["drops"].is_null(), "{}", s["drops"]);
        let failures = s["failures"].as_array().unwrap();
        assert_eq!(failures.len(), 1, "only drops fails: {failures:?}");
        assert_eq!(failures[0]["collector"], "drops");
        let e = failures[0]["error"].as_str().unwrap();
        assert!(e.contains(why), "{e}");
        for section in [
            "links",
            "bridges",
            "fdb",
            "neighbours",
            "qdiscs",
            "conntrack",
            "softnet",
            "snmp",
            "system",
            "netfilter",
            "libvirt",
        ] {
            assert!(!s[section].is_null(), "{section} missing");
        }
        let ports = s["bridges"][0]["ports"].as_array().unwrap();
        assert!(ports.len() >= 2, "{ports:?}");
    }
}

#[test]
fn without_kernel_btf_the_section_is_absent_and_says_why_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 1,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[collect]\ndrops_btf_path = \"/nonexistent/vmlinux\"\n",
    )
    .unwrap();
    let s = samples(
        &[],
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--netns",
            &lab.hv_ns,
            "--libvirt-uri",
            &lab.libvirt_uri(),
        ],
    );
    assert_absent_with_reason(&s, "no kernel BTF at /nonexistent/vmlinux");
}

#[test]
fn without_cap_bpf_and_perfmon_the_section_is_absent_and_says_why_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 1,
        ..Default::default()
    })
    .unwrap();
    // Root, but without the capabilities BPF needs (as a hardened unit
    // without them would run): the bounding set caps what exec grants.
    let drop = "-bpf,-perfmon,-sys_admin";
    let prefix = [
        "ip",
        "netns",
        "exec",
        lab.hv_ns.as_str(),
        "setpriv",
        "--bounding-set",
        drop,
        "--inh-caps",
        drop,
    ];
    let uri = lab.libvirt_uri();
    let s = samples(&prefix, &["--libvirt-uri", &uri]);
    assert_absent_with_reason(&s, "needs CAP_BPF and CAP_PERFMON");
}
