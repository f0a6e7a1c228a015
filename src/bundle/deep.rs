//! One-shot deep state for a bundle: the real Debian tools and /proc files,
//! each under its own timeout so a wedged kernel or tool cannot wedge the
//! agent. Read-only commands only; known-dangerous ones (e.g. `ethtool -e`
//! EEPROM dumps, which stall some NICs) are never run.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::CommandRun;

/// Output kept per command (more is cut and marked `truncated`).
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// (entry name, argv). `{nic}` entries are expanded per physical NIC.
pub fn commands(nics: &[String]) -> Vec<(String, Vec<String>)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut c: Vec<(String, Vec<String>)> = vec![
        (
            "ip-link".into(),
            v(&["ip", "-d", "-s", "-s", "link", "show"]),
        ),
        ("ip-addr".into(), v(&["ip", "-d", "addr", "show"])),
        (
            "ip-route".into(),
            v(&["ip", "route", "show", "table", "all"]),
        ),
        ("ip-neigh".into(), v(&["ip", "-s", "neigh", "show"])),
        (
            "bridge-fdb".into(),
            v(&["bridge", "-d", "-s", "fdb", "show"]),
        ),
        (
            "bridge-link".into(),
            v(&["bridge", "-d", "-s", "link", "show"]),
        ),
        ("bridge-vlan".into(), v(&["bridge", "-d", "vlan", "show"])),
        ("bridge-mdb".into(), v(&["bridge", "-d", "mdb", "show"])),
        ("tc-qdisc".into(), v(&["tc", "-s", "-d", "qdisc", "show"])),
        ("nft-ruleset".into(), v(&["nft", "-a", "list", "ruleset"])),
        ("iptables-save".into(), v(&["iptables-save", "-c"])),
        ("ip6tables-save".into(), v(&["ip6tables-save", "-c"])),
        ("ebtables".into(), v(&["ebtables", "-L", "--Lc"])),
        ("conntrack-stats".into(), v(&["conntrack", "-S"])),
        ("conntrack-count".into(), v(&["conntrack", "-C"])),
        ("dmesg".into(), v(&["dmesg", "-x"])),
    ];
    for n in nics {
        c.push((format!("ethtool-S-{n}"), v(&["ethtool", "-S", n])));
        c.push((format!("ethtool-k-{n}"), v(&["ethtool", "-k", n])));
        c.push((format!("ethtool-i-{n}"), v(&["ethtool", "-i", n])));
    }
    c
}

/// /proc files copied as they are (relative to the proc root).
pub const PROC_FILES: &[&str] = &[
    "net/dev",
    "net/snmp",
    "net/netstat",
    "net/snmp6",
    "net/softnet_stat",
    "net/stat/nf_conntrack",
    "net/stat/arp_cache",
    "net/arp",
    "net/route",
    "net/ip_tables_names",
    "interrupts",
    "softirqs",
    "buddyinfo",
    "meminfo",
    "pressure/cpu",
    "pressure/memory",
    "pressure/io",
    "sys/net/netfilter/nf_conntrack_count",
    "sys/net/netfilter/nf_conntrack_max",
];

/// Runs one command with a timeout; returns its stdout and the record.
pub fn run(name: &str, argv: &[String], timeout: Duration) -> (Vec<u8>, CommandRun) {
    let mut rec = CommandRun {
        name: name.into(),
        argv: argv.to_vec(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            rec.error = format!("cannot start {}: {e}", argv[0]);
            return (Vec::new(), rec);
        }
    };
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut out_pipe)
            .take(MAX_OUTPUT_BYTES as u64 + 1)
            .read_to_end(&mut buf);
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut err_pipe).take(1 << 20).read_to_end(&mut buf);
        buf
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t0.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                rec.timed_out = true;
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                rec.error = e.to_string();
                break None;
            }
        }
    };
    rec.duration_ms = t0.elapsed().as_millis() as u64;
    rec.exit_status = status.and_then(|s| s.code());
    // A killed command's grandchildren may hold the pipes: do not wait forever.
    let mut out = join_within(out_t, Duration::from_secs(1)).unwrap_or_default();
    let err = join_within(err_t, Duration::from_secs(1)).unwrap_or_default();
    if out.len() > MAX_OUTPUT_BYTES {
        out.truncate(MAX_OUTPUT_BYTES);
        rec.truncated = true;
    }
    let err = String::from_utf8_lossy(&err);
    let tail: Vec<&str> = err.lines().rev().take(10).collect();
    rec.stderr_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    if rec.timed_out {
        rec.error = format!("timed out after {} ms", timeout.as_millis());
    }
    (out, rec)
}

fn join_within<T: Send + 'static>(h: std::thread::JoinHandle<T>, d: Duration) -> Option<T> {
    let t0 = Instant::now();
    while !h.is_finished() {
        if t0.elapsed() > d {
            return None; // leave it: the thread ends when the pipe closes
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    h.join().ok()
}

/// Physical NICs: links with no kind (not veth, tap, bridge, …), not loopback.
pub fn physical_nics(sys_root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(sys_root.join("class/net"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        // A physical device has a `device` link in sysfs.
        if name != "lo" && e.path().join("device").exists() {
            out.push(name);
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hanging_command_costs_its_timeout_only() {
        let t = Instant::now();
        let (_, rec) = run(
            "sleep",
            &["sleep".into(), "30".into()],
            Duration::from_millis(300),
        );
        assert!(rec.timed_out && rec.exit_status.is_none());
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(rec.error.contains("timed out after 300 ms"));
    }

    #[test]
    fn missing_tool_and_failing_tool_are_recorded() {
        let (_, rec) = run(
            "x",
            &["hvflight-no-such-tool".into()],
            Duration::from_secs(1),
        );
        assert!(rec.error.contains("cannot start hvflight-no-such-tool"));
        let (out, rec) = run(
            "sh",
            &[
                "sh".into(),
                "-c".into(),
                "echo out; echo oops >&2; exit 3".into(),
            ],
            Duration::from_secs(5),
        );
        assert_eq!(out, b"out\n");
        assert_eq!(rec.exit_status, Some(3));
        assert_eq!(rec.stderr_tail, "oops");
    }

    #[test]
    fn no_dangerous_commands() {
        for (_, argv) in commands(&["eth0".into()]) {
            assert!(
                !(argv[0] == "ethtool" && argv.iter().any(|a| a == "-e" || a == "--eeprom-dump"))
            );
            assert!(
                !argv
                    .iter()
                    .any(|a| a == "flush" || a == "del" || a == "-F" || a == "set"),
                "{argv:?}"
            );
        }
    }
}
