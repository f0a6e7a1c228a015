//! Helpers shared by end-to-end tests: the real agent with its own state
//! directory, socket and config (never the system's), killed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hvflight")
}

pub struct RunningAgent {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl RunningAgent {
    /// `hvflight run --config <config> --state-dir <tmp> --socket <tmp>/s.sock ARGS…`
    pub fn start(config: &str, args: &[&str]) -> RunningAgent {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new(bin())
            .arg("run")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(dir.path())
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        RunningAgent { child, dir }
    }

    /// The agent on a lab's hypervisor namespace and libvirt node, sampling
    /// every 200 ms, with `config`.
    pub fn on_lab(config: &str, lab: &hvflight::lab::Lab) -> RunningAgent {
        RunningAgent::start(
            config,
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

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    /// `hvflight status --json`, or Null while the agent is not up.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(bin())
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port free on loopback right now, never handed out before in this
/// test process, and outside the kernel's ephemeral range. Both matter for a
/// server that is stopped and started again on its port (Swift down for two
/// minutes): with port 0 the kernel could hand the same port meanwhile to
/// another test's server or to an outgoing connection, and the restart
/// failed to bind (seen in CI).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Below the default ephemeral range (32768–60999); a process-specific
    // start so two test processes rarely probe the same ports.
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() % SPAN as u32) as u16 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if (eph_lo..=eph_hi).contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}
pub mod swift;
