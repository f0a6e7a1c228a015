//! The capability set of the shipped unit (packaging/hvflight.service) is
//! enough for the agent, and each capability in it is needed. The agent runs
//! as root under `setpriv --bounding-set` with the unit's list (and its
//! Nice/batch/best-effort-7 priority, no-new-privs), samples a lab and the
//! host, reads /dev/kmsg, serves its socket to a group and writes a bundle;
//! then once per capability without it, to see that what
//! docs/operator-guide.md says breaks does break. systemd is not PID 1 on
//! the CI machines, so this is how the unit's capabilities are exercised.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::bin;

use hvflight::lab::{Lab, LabConfig};

fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/hvflight.service"),
    )
    .unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `-all,+net_admin,…` for setpriv.
fn bounding_set(caps: &[String]) -> String {
    let mut s = String::from("-all");
    for c in caps {
        s.push_str(&format!(
            ",+{}",
            c.trim_start_matches("CAP_").to_lowercase()
        ));
    }
    s
}

/// The unit's set plus the drop-in docs/operator-guide.md gives for
/// `agent.netns` (the lab runs watch a lab namespace).
fn with_netns(caps: &[String]) -> Vec<String> {
    let mut c = caps.to_vec();
    c.push("CAP_SYS_ADMIN".into());
    c
}

fn without(caps: &[String], drop: &str) -> Vec<String> {
    assert!(caps.iter().any(|c| c == drop), "{drop} is not in the unit");
    caps.iter().filter(|c| *c != drop).cloned().collect()
}

/// What one run of the agent under a bounding set showed.
#[derive(Debug, Default)]
struct Outcome {
    /// The agent exited before serving its socket: its stderr.
    start_error: Option<String>,
    /// Collectors that failed in the bundle's window, with the last error.
    collector_failures: Vec<(String, String)>,
    kmsg_seen: bool,
    /// A sample holds the kernel's drop reasons (the eBPF program loaded:
    /// CAP_BPF + CAP_PERFMON are enough).
    drops_loaded: bool,
    socket_gid: u32,
    /// Bundle commands that did not exit 0: (name, exit, stderr tail).
    failed_commands: Vec<(String, Option<i64>, String)>,
    commands: Vec<String>,
}

fn gid_of(group: &str) -> u32 {
    nix::unistd::Group::from_name(group)
        .unwrap()
        .unwrap_or_else(|| panic!("group {group} missing"))
        .gid
        .as_raw()
}

/// `hvflight run` under the unit's priority settings and `caps`; watches
/// `netns` (or this namespace), then takes one bundle and reads it back.
fn run_agent(caps: &[String], netns: Option<&str>, libvirt_uri: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    // The socket's directory must be traversable for the group check.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[agent]\nsocket_group = \"nogroup\"\nmetrics_listen = \"\"\n\
         [bundle]\nbefore_s = 5\nafter_s = 1\ncommand_timeout_ms = 5000\n",
    )
    .unwrap();
    let sock = dir.path().join("s.sock");
    let mut cmd = Command::new("chrt");
    cmd.args([
        "--batch", "0", "nice", "-n", "10", "ionice", "-c", "2", "-n", "7",
    ])
    .args(["setpriv", "--inh-caps=-all", "--no-new-privs"])
    .arg(format!("--bounding-set={}", bounding_set(caps)))
    .args(["--", bin(), "run", "--interval-ms", "200", "--config"])
    .arg(&cfg)
    .arg("--state-dir")
    .arg(dir.path())
    .arg("--socket")
    .arg(&sock)
    .args(["--libvirt-uri", libvirt_uri]);
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    let stderr = dir.path().join("stderr");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("chrt/nice/ionice/setpriv (util-linux, coreutils)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(&mut child);
    let mut out = Outcome::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Ok(Some(_)) = child.0.try_wait() {
            out.start_error = Some(std::fs::read_to_string(&stderr).unwrap_or_default());
            return out;
        }
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    out.socket_gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(&sock).unwrap());
    std::thread::sleep(Duration::from_millis(500));
    let marker = format!(
        "hvflight capability test {} {:?}",
        std::process::id(),
        std::thread::current().id()
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("<6>{marker}\n").as_bytes()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let tr = Command::new(bin())
        .args(["trigger", "--reason", "capability test", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        tr.status.success(),
        "trigger: {}{}",
        String::from_utf8_lossy(&tr.stdout),
        String::from_utf8_lossy(&tr.stderr)
    );
    let path = String::from_utf8_lossy(&tr.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    // Wait for the complete bundle (after_s = 1).
    let deadline = Instant::now() + Duration::from_secs(60);
    let manifest = loop {
        let show = Command::new(bin())
            .args(["bundle", "show", &path, "--state-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let m: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        if m["complete"] == true {
            break m;
        }
        assert!(Instant::now() < deadline, "bundle never completed: {m}");
        std::thread::sleep(Duration::from_millis(300));
    };
    drop(child);
    for f in manifest["collector_failures"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.collector_failures.push((
            f["collector"].as_str().unwrap_or("").into(),
            f["last_error"].as_str().unwrap_or("").into(),
        ));
    }
    for c in manifest["commands"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        out.commands.push(name.clone());
        if c["exit_status"].as_i64() != Some(0) {
            out.failed_commands.push((
                name,
                c["exit_status"].as_i64(),
                c["stderr_tail"].as_str().unwrap_or("").into(),
            ));
        }
    }
    let hist = Command::new(bin())
        .args(["history", "--since", "2m", "--json", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    out.kmsg_seen = String::from_utf8_lossy(&hist.stdout).contains(&marker);
    out.drops_loaded = String::from_utf8_lossy(&hist.stdout).contains("\"drops\":{");
    out
}

/// Collector failures other than the drop-reason program still loading in
/// the first samples (it loads on its own thread so sampling never waits).
fn real_collector_failures(o: &Outcome) -> Vec<&(String, String)> {
    o.collector_failures
        .iter()
        .filter(|(c, e)| !(c == "drops" && e.contains("still loading")))
        .collect()
}

/// `bridge vlan show` fails on kernels without bridge VLAN filtering
/// (this CI kernel): not a capability problem.
fn real_failures(o: &Outcome) -> Vec<&(String, Option<i64>, String)> {
    o.failed_commands
        .iter()
        .filter(|(n, _, err)| !(n == "bridge-vlan" && err.contains("Operation not supported")))
        .collect()
}

fn lab() -> Lab {
    Lab::start(LabConfig {
        guests: 2,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn the_units_capabilities_are_enough_needs_root() {
    let caps = unit_capabilities();
    assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{caps:?}");
    let lab = lab();
    // A lab namespace, as with agent.netns (and its drop-in).
    let o = run_agent(&with_netns(&caps), Some(&lab.hv_ns), &lab.libvirt_uri());
    assert!(o.start_error.is_none(), "{o:?}");
    assert!(real_collector_failures(&o).is_empty(), "{o:?}");
    assert!(
        o.drops_loaded,
        "the drop-reason program never loaded: {o:?}"
    );
    assert!(o.kmsg_seen, "no kernel-log lines: {o:?}");
    assert_eq!(o.socket_gid, gid_of("nogroup"), "{o:?}");
    assert!(real_failures(&o).is_empty(), "{o:?}");
    assert!(o.commands.iter().any(|c| c == "nft-ruleset"), "{o:?}");
    // The host's own namespace, as the unit runs it: physical NICs get
    // their ethtool commands (read-only).
    let o = run_agent(&caps, None, "test:///default");
    assert!(o.start_error.is_none(), "{o:?}");
    assert!(real_collector_failures(&o).is_empty(), "{o:?}");
    assert!(
        o.drops_loaded,
        "the drop-reason program never loaded: {o:?}"
    );
    assert!(real_failures(&o).is_empty(), "{o:?}");
    assert!(o.kmsg_seen, "{o:?}");
}

#[test]
fn without_cap_net_admin_netfilter_state_is_lost_needs_root() {
    let caps = without(&unit_capabilities(), "CAP_NET_ADMIN");
    let lab = lab();
    let o = run_agent(&with_netns(&caps), Some(&lab.hv_ns), &lab.libvirt_uri());
    assert!(
        o.collector_failures
            .iter()
            .any(|(c, e)| c == "netfilter" && e.contains("not permitted")),
        "{o:?}"
    );
    let failed: Vec<&str> = real_failures(&o).iter().map(|f| f.0.as_str()).collect();
    for c in ["nft-ruleset", "iptables-save", "conntrack-stats"] {
        assert!(failed.contains(&c), "{c} did not fail: {o:?}");
    }
}

#[test]
fn agent_netns_needs_the_cap_sys_admin_drop_in_needs_root() {
    let caps = unit_capabilities();
    let lab = lab();
    let o = run_agent(&caps, Some(&lab.hv_ns), &lab.libvirt_uri());
    let err = o.start_error.clone().unwrap_or_default();
    assert!(
        err.contains("entering network namespace") && err.contains("EPERM"),
        "{o:?}"
    );
}

#[test]
fn without_cap_syslog_or_cap_chown_needs_root() {
    let lab = lab();
    let o = run_agent(
        &with_netns(&without(&unit_capabilities(), "CAP_SYSLOG")),
        Some(&lab.hv_ns),
        &lab.libvirt_uri(),
    );
    assert!(o.start_error.is_none(), "{o:?}");
    assert!(!o.kmsg_seen, "kernel log read without CAP_SYSLOG: {o:?}");
    assert!(real_failures(&o).iter().any(|f| f.0 == "dmesg"), "{o:?}");
    let o = run_agent(
        &with_netns(&without(&unit_capabilities(), "CAP_CHOWN")),
        Some(&lab.hv_ns),
        &lab.libvirt_uri(),
    );
    assert!(o.start_error.is_none(), "{o:?}");
    assert_eq!(
        o.socket_gid, 0,
        "socket given to its group without CAP_CHOWN"
    );
}

/// What the capture, the probes (CAP_NET_RAW) and the drop-reason program
/// (CAP_BPF + CAP_PERFMON) will do, tried directly under the same bounding
/// sets: open packet and raw sockets, load a tracepoint BPF program (two
/// instructions: r0 = 0; exit).
const PROBE: &str = r#"
import ctypes, os, socket, struct, sys
what = sys.argv[1]
if what == "raw":
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
else:
    insns = bytes.fromhex("b700000000000000" "9500000000000000")
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD: prog_type=TRACEPOINT(5), insn_cnt, insns, license
    attr = struct.pack("IIQQIIQI", 5, 2, ctypes.addressof(ibuf), ctypes.addressof(lic), 0, 0, 0, 0)
    abuf = ctypes.create_string_buffer(attr, 128)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(321, 5, abuf, 128)  # SYS_bpf, BPF_PROG_LOAD
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, "bpf(BPF_PROG_LOAD): " + os.strerror(e))
print("ok")
"#;

fn probe(caps: &[String], what: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .arg(format!("--bounding-set={}", bounding_set(caps)))
        .args([
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
            "python3",
            "-c",
            PROBE,
            what,
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn capture_probes_and_bpf_need_their_capabilities_needs_root() {
    let caps = unit_capabilities();
    let (ok, out) = probe(&caps, "raw");
    assert!(ok, "packet/raw sockets under the unit's set: {out}");
    let (ok, out) = probe(&without(&caps, "CAP_NET_RAW"), "raw");
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    let (ok, out) = probe(&caps, "bpf");
    assert!(ok, "tracepoint program under the unit's set: {out}");
    for drop in ["CAP_BPF", "CAP_PERFMON"] {
        let (ok, out) = probe(&without(&caps, drop), "bpf");
        assert!(
            !ok && out.contains("Operation not permitted"),
            "without {drop}: {out}"
        );
    }
}
