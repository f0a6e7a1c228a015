//! `hvflight demo`: the main job in one command. Builds a throwaway lab
//! (bridge, uplink to a "switch" namespace, guests), starts the real agent
//! inside the lab's hypervisor namespace, injects faults from the catalogue
//! one after the other, shows what the agent sees, and tears everything
//! down — also on Ctrl-C or a panic. Guests are veth namespaces described
//! by libvirt's test driver, or real qemu guests under a private libvirtd
//! (`--guests real`, `--guests auto`: see docs/lab.md).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::lab::real::{RealLab, RealLabConfig};
use crate::lab::{Fault, Lab, LabConfig};

/// `--guests`: which lab, with how many guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guests {
    /// veth guests, libvirt's test driver.
    Test(usize),
    /// qemu guests under a private libvirtd.
    Real(usize),
    /// Real when the machine can run them (checked first), else Test.
    Auto(usize),
}

/// Real guests by default: each takes ~200 MB and a core for its boot.
pub const DEFAULT_REAL_GUESTS: usize = 2;

impl FromStr for Guests {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mode, n) = match s.split_once(':') {
            Some((m, n)) => (
                m,
                Some(
                    n.parse::<usize>()
                        .map_err(|_| format!("{n:?} is not a number of guests"))?,
                ),
            ),
            None => match s.parse::<usize>() {
                Ok(n) => ("test", Some(n)),
                Err(_) => (s, None),
            },
        };
        let g = match mode {
            "test" => Guests::Test(n.unwrap_or(4)),
            "real" => Guests::Real(n.unwrap_or(DEFAULT_REAL_GUESTS)),
            "auto" => Guests::Auto(n.unwrap_or(DEFAULT_REAL_GUESTS)),
            _ => return Err(format!("{s:?}: expected N, real[:N] or auto[:N]")),
        };
        match g {
            Guests::Test(0) | Guests::Real(0) | Guests::Auto(0) => Err("at least one guest".into()),
            g => Ok(g),
        }
    }
}

/// The lab the demo runs on.
enum DemoLab {
    Test(Box<Lab>),
    Real(Box<RealLab>),
}

impl DemoLab {
    fn base(&self) -> &Lab {
        match self {
            DemoLab::Test(l) => l,
            DemoLab::Real(r) => &r.base,
        }
    }

    fn libvirt_uri(&self) -> String {
        match self {
            DemoLab::Test(l) => l.libvirt_uri(),
            DemoLab::Real(r) => r.libvirt_uri(),
        }
    }

    /// Can guest 0 and the gateway reach each other? A veth guest pings
    /// from inside; a real guest has no way in, so the gateway pings it.
    fn reach(&self) -> (&'static str, bool) {
        match self {
            DemoLab::Test(l) => ("guest 0 → gateway ping", l.ping_from_guest(0, 1)),
            DemoLab::Real(r) => ("gateway → guest 0 ping", r.ping_guest(0, 1)),
        }
    }
}

fn start_test_lab(n: usize) -> Result<DemoLab> {
    println!("demo: building a lab with {n} guests …");
    let lab = Lab::start(LabConfig {
        guests: n,
        traffic: true,
        nova_metadata: true,
        ..LabConfig::default()
    })
    .context("building the lab")?;
    Ok(DemoLab::Test(Box::new(lab)))
}

fn start_real_lab(n: usize, stop: &Arc<AtomicBool>) -> Result<DemoLab> {
    println!("demo: building a lab with {n} real guests (qemu, TCG) under a private libvirtd …");
    let lab = RealLab::start(
        RealLabConfig {
            guests: n,
            traffic: true,
            nova_metadata: true,
            stop: Some(Arc::clone(stop)),
            ..RealLabConfig::default()
        },
        &mut |msg| println!("demo:   {msg}"),
    )
    .context("building the real-guest lab")?;
    Ok(DemoLab::Real(Box::new(lab)))
}

/// Picks and builds the lab `--guests` asks for, saying which and why.
fn start_lab(guests: Guests, stop: &Arc<AtomicBool>) -> Result<DemoLab> {
    match guests {
        Guests::Test(n) => {
            println!(
                "demo: lab mode: test driver (veth guests described by libvirt's test driver)"
            );
            start_test_lab(n)
        }
        Guests::Real(n) => {
            println!("demo: lab mode: real guests (asked for with --guests real)");
            start_real_lab(n, stop)
        }
        Guests::Auto(n) => {
            let why = crate::lab::real::prerequisites();
            if !why.is_empty() {
                println!(
                    "demo: lab mode: test driver — this machine cannot run real guests: {}",
                    why.join("; ")
                );
                return start_test_lab(n);
            }
            println!("demo: lab mode: real guests (this machine has root, libvirtd, qemu and a guest kernel)");
            match start_real_lab(n, stop) {
                Ok(l) => Ok(l),
                Err(e) if !stop.load(Ordering::Relaxed) => {
                    println!(
                        "demo: real guests did not start ({e:#}); falling back to the test driver"
                    );
                    println!("demo: lab mode: test driver (fallback)");
                    start_test_lab(n)
                }
                Err(e) => Err(e),
            }
        }
    }
}

struct AgentChild(Child);

impl Drop for AgentChild {
    fn drop(&mut self) {
        // SIGTERM first so the agent shuts down cleanly; then make sure.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pause(secs: f64, stop: &AtomicBool) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

pub fn run(guests: Guests, short: bool, interval_ms: u64) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let phase_s = if short { 2.5 } else { 6.0 };

    let removed = crate::lab::cleanup_stale();
    if removed > 0 {
        println!(
            "demo: removed {removed} namespace(s) left by an earlier lab whose process is gone"
        );
    }
    let t0 = Instant::now();
    let demo_lab = start_lab(guests, &stop)?;
    let lab = demo_lab.base();
    println!(
        "demo: lab up in {:.1} s — hypervisor namespace {}, bridge {}, uplink {} → switch namespace {} (gateway {})",
        t0.elapsed().as_secs_f64(),
        lab.hv_ns,
        lab.bridge,
        lab.uplink,
        lab.switch_ns,
        lab.gateway_ip
    );
    for g in &lab.guests {
        println!(
            "demo:   guest {} {} on port {} ({})",
            g.name, g.ip, g.host_port, g.mac
        );
    }
    match &demo_lab {
        DemoLab::Test(l) => println!("demo: libvirt test driver: {}", l.libvirt_uri()),
        DemoLab::Real(r) => println!(
            "demo: libvirtd (private, in {}): {} — boot-to-ping median {:.1} s",
            lab.hv_ns,
            r.libvirt_uri(),
            r.median_boot_to_ping().unwrap_or_default().as_secs_f64()
        ),
    }

    let state_dir = tempfile::tempdir().context("state dir")?;
    let exe = std::env::current_exe().context("locating the hvflight binary")?;
    // Short bundle windows so the demo's bundle completes within the demo.
    let after_s = if short { 2 } else { 5 };
    let cfg_path = state_dir.path().join("hvflight.toml");
    // Guests in a demo are seconds old: a short boot grace lets the detector
    // judge them. The gateway is configured, as an operator would (else it is
    // learned from the guests' own ARP, which takes a while on a new lab).
    std::fs::write(
        &cfg_path,
        format!(
            "[bundle]\nbefore_s = 300\nafter_s = {after_s}\ncommand_timeout_ms = 5000\n[detect]\nboot_grace_s = 2\n[detect.gateways]\n{} = \"{}\"\n",
            lab.bridge, lab.gateway_ip
        ),
    )?;
    let socket = state_dir.path().join("hvflight.sock");
    let mut child = Command::new(&exe)
        .args([
            "run",
            "--print",
            "--netns",
            &lab.hv_ns,
            "--libvirt-uri",
            &demo_lab.libvirt_uri(),
        ])
        .arg("--config")
        .arg(&cfg_path)
        .arg("--state-dir")
        .arg(state_dir.path())
        .arg("--socket")
        .arg(&socket)
        .args(["--interval-ms", &interval_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the agent")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let agent = AgentChild(child);
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("  agent │ {line}");
        }
    });

    let faults: Vec<(Fault, &str)> = vec![
        (
            Fault::PortDisabled {
                port: lab.uplink.clone(),
            },
            "uplink bridge port leaves forwarding (F8)",
        ),
        (
            Fault::UplinkDown,
            "uplink peer down on the switch side (F2)",
        ),
        (
            Fault::FdbHijack { guest: 0 },
            "guest 0's MAC pinned on the uplink in the FDB (F6)",
        ),
    ];
    let mut ok = pause(phase_s, &stop);
    for (fault, what) in &faults {
        if !ok {
            break;
        }
        println!("demo: ── injecting: {what}");
        lab.inject(fault)
            .with_context(|| format!("injecting {what}"))?;
        ok = pause(phase_s, &stop);
        let (what_ping, reach) = demo_lab.reach();
        println!(
            "demo:    {what_ping}: {}",
            if reach { "answered" } else { "NO ANSWER" }
        );
        println!("demo: ── reverting: {what}");
        lab.revert(fault)
            .with_context(|| format!("reverting {what}"))?;
        ok = ok && pause(phase_s, &stop);
    }

    // An incident, frozen: the uplink goes down again and an operator (or a
    // monitoring event handler) asks for a bundle.
    if ok {
        println!("demo: ── injecting again: uplink peer down, then `hvflight trigger --reason …`");
        lab.inject(&Fault::UplinkDown)?;
        pause(1.5, &stop);
        match crate::control::client::trigger(
            &socket,
            "demo: all guests lost the gateway",
            "",
            Duration::from_secs(60),
        ) {
            Ok((id, path)) => {
                println!("demo:    incident {id}: bundle {path}");
                pause(after_s as f64, &stop);
                // The complete bundle comes a moment after the post-window
                // (later on a busy machine): wait for it, up to 30 s.
                let end = Instant::now() + Duration::from_secs(30);
                while Instant::now() < end
                    && !crate::bundle::verify::manifest(std::path::Path::new(&path))
                        .is_ok_and(|m| m.complete)
                    && pause(0.25, &stop)
                {}
                lab.revert(&Fault::UplinkDown)?;
                match crate::bundle::verify::verify(std::path::Path::new(&path)) {
                    Ok((m, problems)) => {
                        println!(
                            "demo:    bundle verified: {} — {} entries, {} samples and {} events from {} to {}, complete: {}",
                            if problems.is_empty() { "OK" } else { "PROBLEMS" },
                            m.entries.len(),
                            m.samples,
                            m.events,
                            m.window_since,
                            m.window_until,
                            m.complete
                        );
                        if let Some(c) = &m.capture {
                            println!(
                                "demo:    packets: {} in {} ({} before the trigger, {} after) on {}{}",
                                c.packets,
                                c.entry,
                                c.packets_before,
                                c.packets_after,
                                c.interfaces
                                    .iter()
                                    .map(|i| format!("{} ({})", i.name, i.role))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                if c.error.is_empty() {
                                    String::new()
                                } else {
                                    format!(" — {}", c.error)
                                }
                            );
                        }
                        let failed: Vec<String> = m
                            .commands
                            .iter()
                            .filter(|c| c.exit_status != Some(0))
                            .map(|c| {
                                let why = if c.timed_out {
                                    "timed out".to_string()
                                } else if !c.error.is_empty() {
                                    c.error.clone()
                                } else {
                                    format!(
                                        "exit {}: {}",
                                        c.exit_status.map_or("?".into(), |x| x.to_string()),
                                        c.stderr_tail.lines().last().unwrap_or("")
                                    )
                                };
                                format!("{} ({why})", c.name)
                            })
                            .collect();
                        if !failed.is_empty() {
                            println!(
                                "demo:    deep-state commands that did not succeed: {}",
                                failed.join(", ")
                            );
                        }
                        for p in &problems {
                            println!("demo:    {p}");
                        }
                    }
                    Err(e) => println!("demo:    cannot read the bundle: {e}"),
                }
            }
            Err(e) => {
                println!("demo:    trigger failed: {e}");
                lab.revert(&Fault::UplinkDown)?;
            }
        }
    }
    drop(agent);
    let _ = relay.join();
    println!("demo: bundles taken (the detector's and the trigger's):");
    let taken = crate::bundle::writer::list(&state_dir.path().join("bundles"));
    for b in &taken {
        if let Ok(m) = crate::bundle::verify::manifest(b) {
            println!(
                "demo:    {} {} {:<8} {}",
                m.incident.id, m.incident.ts, m.incident.trigger, m.incident.reason
            );
        }
    }
    if let Some(first) = taken.first() {
        println!("demo: `hvflight bundle analyze` on the first one:");
        let cfg = crate::config::AnalyzeConfig::default();
        match crate::analyze::load_bundle(first, &cfg) {
            Ok(view) => {
                let r = crate::analyze::analyze(&view, &cfg);
                for l in crate::analyze::report::text::render(&r).lines() {
                    println!("  analyze │ {l}");
                }
            }
            Err(e) => println!("demo:    cannot analyze: {e}"),
        }
    }
    println!("demo: the store kept what the agent saw (`hvflight history --state-dir … --iface uplink0`):");
    let q = crate::store::history::HistoryQuery {
        since_ns: crate::clock::now().unix_ns - 20_000_000_000,
        until_ns: i64::MAX,
        iface: Some(lab.uplink.clone()),
        domain: None,
        json: false,
    };
    let mut buf = Vec::new();
    let _ = crate::store::history::history(&state_dir.path().join("store"), &q, &mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(8)..] {
        println!("  history │ {l}");
    }
    let names = lab.namespaces();
    let real = matches!(demo_lab, DemoLab::Real(_));
    drop(demo_lab);
    let left: Vec<String> = crate::lab::list_namespaces()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    let procs = if real {
        own_lab_processes()
    } else {
        Vec::new()
    };
    if left.is_empty() && procs.is_empty() {
        if real {
            println!("demo: lab torn down, no namespace, libvirtd or qemu left behind");
        } else {
            println!("demo: lab torn down, no namespace left behind");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("demo: left behind: namespaces {left:?}, processes {procs:?}");
        Ok(ExitCode::FAILURE)
    }
}

/// libvirtd/qemu processes of real labs made by this process (pids).
fn own_lab_processes() -> Vec<u32> {
    let me = std::process::id();
    crate::lab::libvirtd::lab_processes()
        .into_iter()
        .filter(|(_, creator)| *creator == me)
        .map(|(pid, _)| pid)
        .collect()
}

/// `hvflight lab`: builds a lab, prints it as one JSON line, and holds it
/// until SIGINT/SIGTERM (or stdin closes), then tears it down.
pub fn hold_lab(cfg: LabConfig, real: bool) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    crate::lab::cleanup_stale();
    let t0 = Instant::now();
    let lab = if real {
        DemoLab::Real(Box::new(RealLab::start(
            RealLabConfig {
                guests: cfg.guests,
                traffic: cfg.traffic,
                nova_metadata: true,
                stop: Some(Arc::clone(&stop)),
                ..RealLabConfig::default()
            },
            &mut |msg| eprintln!("lab: {msg}"),
        )?))
    } else {
        DemoLab::Test(Box::new(Lab::start(cfg)?))
    };
    let base = lab.base();
    let mut desc = serde_json::json!({
        "hv_ns": base.hv_ns,
        "switch_ns": base.switch_ns,
        "bridge": base.bridge,
        "uplink": base.uplink,
        "libvirt_uri": lab.libvirt_uri(),
        "guests": base.guests.len(),
        "build_ms": t0.elapsed().as_millis() as u64,
    });
    if let DemoLab::Real(r) = &lab {
        desc["real"] = serde_json::json!({
            "dir": r.dir(),
            "libvirtd_pid": r.daemon.pid(),
            "boot_to_ping_ms": r.boot_to_ping.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(),
            "taps": r.base.guests.iter().map(|g| g.host_port.clone()).collect::<Vec<_>>(),
        });
    }
    println!("{desc}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // stdin closing (the caller went away) also ends the lab.
    let stdin_closed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stdin_closed);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        flag.store(true, Ordering::Relaxed);
    });
    while !stop.load(Ordering::Relaxed) && !stdin_closed.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(lab);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_option_parses() {
        assert_eq!("4".parse(), Ok(Guests::Test(4)));
        assert_eq!("test:3".parse(), Ok(Guests::Test(3)));
        assert_eq!("real".parse(), Ok(Guests::Real(DEFAULT_REAL_GUESTS)));
        assert_eq!("real:3".parse(), Ok(Guests::Real(3)));
        assert_eq!("auto".parse(), Ok(Guests::Auto(DEFAULT_REAL_GUESTS)));
        assert!("0".parse::<Guests>().is_err());
        assert!("real:x".parse::<Guests>().unwrap_err().contains("\"x\""));
        assert!("kvm".parse::<Guests>().unwrap_err().contains("real[:N]"));
    }
}
