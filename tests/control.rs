//! The control socket as operators and monitoring use it: status, tail
//! (also over a real sshd on 127.0.0.1), load and bad input (needs root).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvflight::lab::{Lab, LabConfig};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hvflight")
}

/// A running agent with its own state dir and socket, killed on drop.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        // World-traversable, so the unprivileged-user test reaches the socket's own mode.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let child = Command::new(bin())
            .args(["run", "--state-dir"])
            .arg(dir.path())
            .arg("--socket")
            .arg(dir.path().join("hvflight.sock"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let a = Agent { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if a.status()
                .is_some_and(|s| s["sampling"]["last_seq"].as_u64().unwrap_or(0) >= 1)
            {
                return a;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not come up");
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("hvflight.sock")
    }
    fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(bin())
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines from a child's stdout on a thread, with arrival times.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn status_and_tail_show_the_lab_and_events_arrive_at_once_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 2,
        nova_metadata: true,
        ..Default::default()
    })
    .unwrap();
    let uri = lab.libvirt_uri();
    let agent = Agent::start(&[
        "--netns",
        &lab.hv_ns,
        "--libvirt-uri",
        &uri,
        "--interval-ms",
        "200",
    ]);
    let mut st = agent.status().unwrap();
    assert_eq!(st["libvirt"]["connected"], true);
    assert_eq!(st["libvirt"]["domains"], 2);
    assert!(st["sampling"]["last_seq"].as_u64().unwrap() >= 1);
    // The drop-reason program may still be loading in the first samples
    // (it says so); within seconds every collector must be working.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !st["collectors_failing"].as_array().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        st = agent.status().unwrap();
    }
    assert_eq!(
        st["collectors_failing"].as_array().unwrap().len(),
        0,
        "{st}"
    );

    let human = Command::new(bin())
        .args(["status", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("collectors: all OK"));

    let mut tail = Command::new(bin())
        .args(["tail", "--json", "--socket"])
        .arg(agent.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut tail);
    // A tick first: roles and domains as an operator reads them.
    let tick = loop {
        let (_, l) = rx.recv_timeout(Duration::from_secs(5)).expect("no tick");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert!(v["ts"].is_string() && v["kind"].is_string(), "{l}");
        if v["kind"] == "tick" {
            break v;
        }
    };
    assert_eq!(tick["ifaces"]["uplink0"]["role"], "uplink");
    assert_eq!(tick["ifaces"]["vnet0"]["role"], "vnic");
    assert_eq!(tick["ifaces"]["vnet0"]["domain"], "guest0");
    assert_eq!(tick["ifaces"]["br0"]["role"], "bridge");
    // An event reaches the tail within a second of the change.
    let t0 = Instant::now();
    lab.set_link(&lab.hv_ns, "vnet1", false).unwrap();
    let arrived = loop {
        let (at, l) = rx
            .recv_timeout(Duration::from_secs(3))
            .expect("no link event");
        if l.contains("\"kind\":\"link\"") && l.contains("\"vnet1\"") {
            break at;
        }
    };
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        arrived - t0 < Duration::from_secs(1),
        "event after {:?}",
        arrived - t0
    );
}

#[test]
fn twenty_clients_and_a_stuck_one_never_stall_sampling() {
    let agent = Agent::start(&[
        "--interval-ms",
        "20",
        "--libvirt-uri",
        "test:///default",
        "--config",
        &{
            let p = std::env::temp_dir().join(format!("hvf-ctl-{}.toml", std::process::id()));
            std::fs::write(&p, "[agent]\ntail_queue_lines = 50\n").unwrap();
            p.display().to_string()
        },
    ]);
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut s = UnixStream::connect(agent.socket()).unwrap();
        writeln!(s, "{{\"v\":1,\"cmd\":\"tail\"}}").unwrap();
        readers.push(std::thread::spawn(move || {
            let mut n = 0;
            let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
            let r = BufReader::new(s);
            let t = Instant::now();
            for _ in r.lines().map_while(Result::ok) {
                n += 1;
                if t.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            n
        }));
    }
    // The stuck client: asks for a tail, then does not read.
    let mut stuck = UnixStream::connect(agent.socket()).unwrap();
    writeln!(stuck, "{{\"v\":1,\"cmd\":\"tail\"}}").unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let st = agent.status().unwrap();
    assert_eq!(st["tail_clients"], 21);
    let max_lag_us = st["sampling"]["max_lag_us_last_60"].as_u64().unwrap();
    eprintln!("sample lag with 20 clients + 1 stuck, at 50 Hz: max {max_lag_us} µs over the last 60 samples");
    assert!(max_lag_us < 50_000, "sampling stalled: {max_lag_us} µs");
    for r in readers {
        assert!(r.join().unwrap() > 100);
    }
    // The stuck client resumes: it is told how much it missed.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut r = BufReader::new(stuck);
    let mut told = false;
    for _ in 0..3_000 {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        if l.contains("\"kind\":\"dropped\"") {
            told = true;
            break;
        }
    }
    assert!(
        told,
        "a client that fell behind was not told what it missed"
    );
}

fn raw_exchange(sock: &Path, send: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    let _ = s.write_all(send);
    let _ = s.shutdown(std::net::Shutdown::Write);
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn garbage_oversized_and_unknown_requests_get_an_error_and_the_agent_is_unaffected() {
    let agent = Agent::start(&["--interval-ms", "100", "--libvirt-uri", "test:///default"]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"hello\n".to_vec(), "not a JSON object"),
        (vec![b'x'; 100_000], "longer than"),
        (
            b"{\"v\":1,\"cmd\":\"format-disk\"}\n".to_vec(),
            "unknown command",
        ),
        (
            b"{\"v\":99,\"cmd\":\"tail\"}\n".to_vec(),
            "protocol version 99",
        ),
        (vec![0xff, 0xfe, b'\n'], "not a JSON object"),
    ];
    for (send, want) in cases {
        let reply = raw_exchange(&agent.socket(), &send);
        let v: serde_json::Value =
            serde_json::from_str(reply.lines().next().unwrap_or("{}")).unwrap();
        assert_eq!(v["kind"], "error", "{reply}");
        assert!(v["error"].as_str().unwrap().contains(want), "{reply}");
        assert_eq!(
            reply.lines().count(),
            1,
            "connection not closed after the error: {reply}"
        );
    }
    let before = agent.status().unwrap()["sampling"]["last_seq"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after = agent.status().unwrap()["sampling"]["last_seq"]
        .as_u64()
        .unwrap();
    assert!(after > before, "agent stopped sampling");
}

#[test]
fn a_user_outside_the_group_cannot_connect_needs_root() {
    let agent = Agent::start(&["--interval-ms", "200", "--libvirt-uri", "test:///default"]);
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", bin(), "status", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    let mode = std::fs::metadata(agent.socket())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o660);
    // The configured group may: nobody's group on Debian is nogroup.
    let cfg = agent.dir.path().join("g.toml");
    std::fs::write(&cfg, "[agent]\nsocket_group = \"nogroup\"\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let sock = dir.path().join("g.sock");
    let mut grouped = Command::new(bin())
        .args([
            "run",
            "--interval-ms",
            "200",
            "--libvirt-uri",
            "test:///default",
            "--config",
        ])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", bin(), "status", "--json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    let _ = grouped.kill();
    let _ = grouped.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_agent_is_said_plainly_with_exit_code_3() {
    for cmd in ["status", "tail"] {
        let out = Command::new(bin())
            .args([cmd, "--socket", "/nonexistent/hvflight.sock"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the agent is not running"),
            "{cmd}"
        );
    }
}

/// A real OpenSSH server on 127.0.0.1 with its own keys, killed on drop.
struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let keygen = |name: &str| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(name))
                .status()
                .unwrap();
            assert!(ok.success());
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin_dir = Path::new(bin()).parent().unwrap().display().to_string();
        let cfg = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {h}\nPidFile {p}\nAuthorizedKeysFile {a}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\nSetEnv PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin\n",
            h = d.join("host_key").display(),
            p = d.join("sshd.pid").display(),
            a = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { child, dir, port }
    }

    fn ssh(&self, tty: bool, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-p", &self.port.to_string(), "-i"])
            .arg(self.dir.path().join("client_key"))
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ]);
        if tty {
            c.arg("-tt");
        }
        c.arg("root@127.0.0.1")
            .arg(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail_running(marker: &str) -> bool {
    let out = Command::new("pgrep").args(["-f", marker]).output().unwrap();
    // Zombies of PID 1 count as gone (machine-notes).
    String::from_utf8_lossy(&out.stdout).lines().any(|pid| {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .map(|s| s.split(") ").nth(1).is_some_and(|r| !r.starts_with('Z')))
            .unwrap_or(false)
    })
}

#[test]
fn tail_over_ssh_streams_line_by_line_and_ends_with_the_client_needs_root() {
    let agent = Agent::start(&["--interval-ms", "200", "--libvirt-uri", "test:///default"]);
    let sshd = Sshd::start();
    for tty in [false, true] {
        let sock = agent.socket().display().to_string();
        let remote = format!("hvflight tail --json --socket {sock}");
        let mut ssh = sshd.ssh(tty, &remote).spawn().unwrap();
        let rx = lines_of(&mut ssh);
        // Gaps between consecutive lines (the first waits for ssh itself).
        let mut last: Option<Instant> = None;
        let mut ticks = 0;
        while ticks < 8 {
            let (at, l) = rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("no line over ssh (tty={tty})"));
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l.trim_end_matches('\r')) else {
                continue;
            };
            if v["kind"] == "tick" {
                // Each line arrives within a second of the sample it reports.
                let age_ms = (hvflight::clock::now().unix_ns - v["ts_unix_ns"].as_i64().unwrap())
                    / 1_000_000;
                assert!(age_ms < 1000, "line {age_ms} ms old (tty={tty})");
                if let Some(last) = last {
                    assert!(
                        at - last < Duration::from_secs(1),
                        "lines buffered (tty={tty})"
                    );
                }
                last = Some(at);
                ticks += 1;
            }
        }
        assert!(tail_running(&format!("tail --json --socket {sock}")));
        // The engineer's ssh goes away: the remote tail must end too.
        let _ = ssh.kill();
        let _ = ssh.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tail_running(&format!("tail --json --socket {sock}")) {
            assert!(
                Instant::now() < deadline,
                "remote hvflight tail still running 5 s after the ssh client died (tty={tty})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn tail_since_starts_with_history_then_goes_live() {
    let agent = Agent::start(&["--interval-ms", "100", "--libvirt-uri", "test:///default"]);
    std::thread::sleep(Duration::from_millis(1200));
    let mut tail = Command::new(bin())
        .args(["tail", "--json", "--since", "1m", "--state-dir"])
        .arg(agent.dir.path())
        .arg("--socket")
        .arg(agent.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut tail);
    let started = hvflight::clock::now().unix_ns;
    let (mut old, mut live) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while live < 3 && Instant::now() < deadline {
        let Ok((_, l)) = rx.recv_timeout(Duration::from_secs(2)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        match v["kind"].as_str() {
            Some("sample") if v["ts_unix_ns"].as_i64().unwrap() < started => old += 1,
            Some("tick") => live += 1,
            _ => {}
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        old >= 5,
        "{old} samples from the store before the live stream"
    );
    assert_eq!(live, 3, "no live ticks after the history");
}
