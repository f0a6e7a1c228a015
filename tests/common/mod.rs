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

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
pub mod swift;
