//! The namespace lab: a throwaway hypervisor in network namespaces, shared by
//! tests, `hvflight demo` and the benchmark.
//!
//! ```text
//!  guest ns hvfNg0 ── eth0 ═ vnet0 ─┐
//!  guest ns hvfNg1 ── eth0 ═ vnet1 ─┤  hypervisor ns hvfNhv: bridge br0
//!  …                                 ├─ uplink0 ═ sw0 ── switch ns hvfNsw (gateway 10.77.0.1)
//! ```
//!
//! It drives the real Debian tools (`ip`, `bridge`, `nft`, `ping`) — what an
//! operator would type to build or break such a host — and checks every exit
//! status. Names carry the creating process id (`hvf<pid>x<n>…`) so labs run
//! in parallel and `cleanup_stale()` can remove labs of dead processes. The
//! lab is torn down on drop, which also runs when a test panics.
//!
//! Two modes: guests as veth namespaces with libvirt's test driver
//! describing them (`Lab`, this file: fast, 50 guests in 0.2 s), or real
//! qemu guests under a private libvirtd on the same bridge (`real::RealLab`:
//! real taps, counters and lifecycle events; ~10–60 s to boot).

pub mod faults;
pub mod guest_image;
pub mod libvirtd;
pub mod node_xml;
pub mod real;
pub mod sysctl;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use thiserror::Error;

pub use faults::Fault;

#[derive(Debug, Error)]
pub enum LabError {
    #[error("lab command `{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("lab: cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("lab: {0}")]
    Io(#[from] std::io::Error),
    #[error("lab: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Guests on veth ports.
    pub guests: usize,
    /// Extra guests on tap ports, held open by a process that never reads
    /// (used for the "tap not drained" fault, F14).
    pub tap_guests: usize,
    pub bridge: String,
    /// Each veth guest pings the gateway once a second.
    pub traffic: bool,
    /// With `traffic`: only every k-th guest pings (1 = all; the scale
    /// benchmark uses 10 for "light traffic on a tenth").
    pub traffic_every: usize,
    /// vNICs per libvirt domain in the node XML (1 = one domain per guest;
    /// 2 = N/2 domains with two vNICs each, as the scale benchmark wants).
    pub vnics_per_domain: usize,
    /// Put nova metadata into the libvirt node XML.
    pub nova_metadata: bool,
    /// Give the bridge an address (10.77.0.2/16) and a default route via
    /// the gateway, as a host managed through its guest bridge has.
    pub host_ip: bool,
    /// Guests declared in the libvirt node XML but not created: `add_guest`
    /// starts them later (guest churn: libvirt knows them, ports come and go).
    pub spare_guests: usize,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            guests: 2,
            tap_guests: 0,
            bridge: "br0".into(),
            traffic: false,
            traffic_every: 1,
            vnics_per_domain: 1,
            nova_metadata: false,
            host_ip: false,
            spare_guests: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Guest {
    pub name: String,
    pub uuid: String,
    /// The guest's own namespace (None for tap guests: the "guest" is a holder process).
    pub ns: Option<String>,
    /// Guest-side MAC, 52:54:00:…
    pub mac: String,
    /// Host-side port on the bridge (vnetN or tapN).
    pub host_port: String,
    /// Host-side MAC, fe:54:00:… (libvirt's convention: keeps the bridge MAC stable).
    pub host_mac: String,
    pub ip: Ipv4Addr,
    pub tap: bool,
    /// Its port exists now (spare guests start absent, `remove_guest` ends one).
    pub present: bool,
}

pub struct Lab {
    pub id: String,
    pub hv_ns: String,
    pub switch_ns: String,
    pub bridge: String,
    /// The bridge's uplink port in the hypervisor namespace.
    pub uplink: String,
    /// The uplink's peer in the switch namespace.
    pub switch_port: String,
    pub gateway_ip: Ipv4Addr,
    pub guests: Vec<Guest>,
    pub node_xml: PathBuf,
    dir: tempfile::TempDir,
    children: std::sync::Mutex<Vec<Child>>,
    /// Tap name → pid of the process holding it open.
    tap_holders: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Taps toward which a TapNotDrained flood already runs (one per tap).
    tap_floods: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Guest index → its traffic (ping) process.
    guest_traffic: std::sync::Mutex<std::collections::HashMap<usize, Child>>,
    /// Processes a fault runs until it is reverted, by name.
    fault_children: std::sync::Mutex<std::collections::HashMap<String, Child>>,
    traffic: bool,
    /// Global sysctls a fault changed, restored when reverted or on drop.
    pub(crate) sysctls: std::sync::Mutex<Vec<sysctl::GlobalSysctl>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
const PREFIX: &str = "hvf";

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(args: &[&str]) -> Result<String, LabError> {
    run_input(args, None)
}

fn run_input(args: &[&str], input: Option<&str>) -> Result<String, LabError> {
    let cmd = args.join(" ");
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if input.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().map_err(|source| LabError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if let Some(text) = input {
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes())?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let mut shown = cmd;
        shown.truncate(200);
        return Err(LabError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS -batch -`: one process for many link operations (50 guests in one call).
fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let script = lines.join("\n") + "\n";
    match ns {
        Some(ns) => run_input(&["ip", "-n", ns, "-batch", "-"], Some(&script)),
        None => run_input(&["ip", "-batch", "-"], Some(&script)),
    }
    .map(|_| ())
}

/// `ip [-force] -batch -` with `netns add|del NAME` lines: one process for
/// all of a lab's namespaces (iproute2 ≥ 4.x returns to its own namespace
/// after each `netns add`, so this is safe in batch mode).
fn netns_batch(verb: &str, names: &[String], force: bool) -> Result<(), LabError> {
    let lines: Vec<String> = names.iter().map(|n| format!("netns {verb} {n}")).collect();
    if lines.is_empty() {
        return Ok(());
    }
    let script = lines.join("\n") + "\n";
    let args: &[&str] = if force {
        &["ip", "-force", "-batch", "-"]
    } else {
        &["ip", "-batch", "-"]
    };
    run_input(args, Some(&script)).map(|_| ())
}

/// Names of all network namespaces (`ip netns list`), the lab's and others'.
pub fn list_namespaces() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Removes namespaces of labs whose creating process is gone (a test run
/// that was SIGKILLed, a crashed demo); returns how many. Lab namespaces are
/// named `hvf<pid>…`; one whose pid is alive is left alone, so labs of other
/// running processes are safe. `Lab::start` calls this itself. The libvirtd
/// and qemu processes of dead real-guest labs are killed first (they would
/// keep the namespace and its taps alive).
pub fn cleanup_stale() -> usize {
    cleanup_stale_older_than(STALE_MIN_AGE)
}

/// Namespaces younger than this are left to `cleanup_stale()`: one that a
/// process is adding this very moment could otherwise be removed mid-add
/// (its pid test can race with the `ip netns add` of another process).
pub const STALE_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// `cleanup_stale()` for namespaces at least `min_age` old (by the time of
/// their /run/netns entry; an entry whose age cannot be read counts as old).
pub fn cleanup_stale_older_than(min_age: std::time::Duration) -> usize {
    let killed = libvirtd::cleanup_stale_processes();
    if killed > 0 {
        tracing::info!(
            killed,
            "killed libvirtd/qemu processes of real-guest labs whose process is gone"
        );
    }
    let mut removed = 0;
    for ns in list_namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let young = std::fs::metadata(format!("/run/netns/{ns}"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < min_age);
        if young {
            continue;
        }
        if run(&["ip", "netns", "del", &ns]).is_ok() {
            removed += 1;
        }
    }
    remove_stale_dirs(&std::env::temp_dir(), min_age);
    removed
}

/// Prefix of a lab's temp dir (node.xml, guest scripts): `hvflight-lab-<pid>-…`.
pub const DIR_PREFIX: &str = "hvflight-lab-";

/// Removes the lab temp dirs under `tmp` whose creating process is gone and
/// that are at least `min_age` old; returns how many. A killed test run
/// leaves them behind like its namespaces.
pub fn remove_stale_dirs(tmp: &std::path::Path, min_age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        // Only `<pid>-…`: other names under the prefix (e.g. artifacts) are not labs.
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if !rest[pid.to_string().len()..].starts_with('-')
            || std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < min_age);
        if !young
            && e.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Guest i's MAC under `prefix` (the last three octets encode i + 1).
pub fn mac(prefix: &str, i: usize) -> String {
    let n = i + 1;
    format!(
        "{prefix}:{:02x}:{:02x}:{:02x}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// Deterministic UUID per lab and guest (the test driver needs valid ones).
fn uuid(lab: u32, pid: u32, i: usize) -> String {
    format!("{pid:08x}-{:04x}-4000-8000-{:012x}", lab & 0xffff, i)
}

impl Lab {
    /// Builds the lab (0.2–0.4 s for 50 guests here); everything built so far is
    /// removed again if a step fails.
    pub fn start(cfg: LabConfig) -> Result<Lab, LabError> {
        if cfg.bridge.is_empty() || cfg.bridge.len() > 15 {
            return Err(LabError::Invalid(format!(
                "bad bridge name {:?}",
                cfg.bridge
            )));
        }
        let total = cfg.guests + cfg.tap_guests;
        if total > 4000 {
            return Err(LabError::Invalid("at most 4000 guests".into()));
        }
        // Leftovers of crashed runs would otherwise pile up on a test machine
        // (and a global sysctl a killed run lowered is put back).
        cleanup_stale();
        sysctl::restore_stale();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{PREFIX}{pid}x{n}");
        // The pid in the name lets `cleanup_stale` remove the dir of a killed run.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{pid}-"))
            .tempdir()?;
        let mut lab = Lab {
            hv_ns: format!("{id}hv"),
            switch_ns: format!("{id}sw"),
            bridge: cfg.bridge.clone(),
            uplink: "uplink0".into(),
            switch_port: "sw0".into(),
            gateway_ip: Ipv4Addr::new(10, 77, 0, 1),
            guests: Vec::new(),
            node_xml: dir.path().join("node.xml"),
            id,
            dir,
            children: Default::default(),
            tap_holders: Default::default(),
            tap_floods: Default::default(),
            guest_traffic: Default::default(),
            fault_children: Default::default(),
            traffic: cfg.traffic,
            sysctls: Default::default(),
        };
        // From here on, Drop cleans up whatever was built if a step fails.
        lab.build(&cfg)?;
        Ok(lab)
    }

    fn build(&mut self, cfg: &LabConfig) -> Result<(), LabError> {
        let (hv, sw) = (self.hv_ns.clone(), self.switch_ns.clone());
        run(&["ip", "netns", "add", &hv])?;
        run(&["ip", "netns", "add", &sw])?;
        let br = &self.bridge;
        ip_batch(
            Some(&hv),
            &[
                "link set lo up".into(),
                format!("link add {br} type bridge stp_state 0 forward_delay 0"),
                format!(
                    // A fixed MAC: a random one could start with fe:
                    // (libvirt's vNIC prefix) and pass for a guest.
                    "link add {} address 02:00:00:00:00:01 type veth peer name {} netns {sw}",
                    self.uplink, self.switch_port
                ),
                format!("link set {} master {br} up", self.uplink),
                format!("link set {br} up"),
            ],
        )?;
        ip_batch(
            Some(&sw),
            &[
                "link set lo up".into(),
                format!("addr add {}/16 dev {}", self.gateway_ip, self.switch_port),
                format!("link set {} up", self.switch_port),
            ],
        )?;
        if cfg.host_ip {
            ip_batch(
                Some(&hv),
                &[
                    format!("addr add {}/16 dev {br}", self.host_ip()),
                    format!("route add default via {}", self.gateway_ip),
                ],
            )?;
        }

        let pid = std::process::id();
        let lab_n: u32 = self
            .id
            .rsplit('x')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let total = cfg.guests + cfg.tap_guests + cfg.spare_guests;
        let mut hv_lines = Vec::new();
        for i in 0..total {
            let tap = i >= cfg.guests && i < cfg.guests + cfg.tap_guests;
            let spare = i >= cfg.guests + cfg.tap_guests;
            let host_port = if tap {
                format!("tap{}", i - cfg.guests)
            } else {
                format!("vnet{i}")
            };
            let ip = Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, 10 + (i % 250) as u8);
            let g = Guest {
                name: format!("guest{i}"),
                uuid: uuid(lab_n, pid, i),
                ns: if tap {
                    None
                } else {
                    Some(format!("{}g{i}", self.id))
                },
                mac: mac("52:54:00", i),
                host_port: host_port.clone(),
                host_mac: mac("fe:54:00", i),
                ip,
                tap,
                present: !spare,
            };
            if spare {
                self.guests.push(g);
                continue;
            }
            if let Some(ns) = &g.ns {
                hv_lines.push(format!(
                    "link add {host_port} address {} type veth peer name eth0 address {} netns {ns}",
                    g.host_mac, g.mac
                ));
            } else {
                hv_lines.push(format!("tuntap add dev {host_port} mode tap"));
                hv_lines.push(format!(
                    "link set {host_port} address {} txqueuelen 16",
                    g.host_mac
                ));
            }
            hv_lines.push(format!("link set {host_port} master {br} up"));
            self.guests.push(g);
        }
        // Pushed before they exist: if this fails half-way, Drop still
        // deletes whichever of them were created.
        let guest_ns: Vec<String> = self
            .guests
            .iter()
            .filter(|g| g.present)
            .filter_map(|g| g.ns.clone())
            .collect();
        netns_batch("add", &guest_ns, false)?;
        ip_batch(Some(&hv), &hv_lines)?;
        for g in self.guests.iter().filter(|g| g.present) {
            if let Some(ns) = &g.ns {
                ip_batch(
                    Some(ns),
                    &[
                        "link set lo up".into(),
                        format!("addr add {}/16 dev eth0", g.ip),
                        "link set eth0 up".into(),
                        format!("route add default via {}", self.gateway_ip),
                    ],
                )?;
            }
        }
        for g in self.guests.clone() {
            if g.tap {
                let child = faults::hold_tap(self, &g)?;
                self.tap_holders
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(g.host_port.clone(), child.id());
                self.spawned(child);
            }
        }
        if cfg.traffic {
            for i in (0..self.guests.len()).step_by(cfg.traffic_every.max(1)) {
                if self.guests[i].present {
                    self.start_traffic(i)?;
                }
            }
        }
        std::fs::write(
            &self.node_xml,
            node_xml::render(self, cfg.nova_metadata, cfg.vnics_per_domain),
        )?;
        Ok(())
    }

    /// The bridge's own address when `host_ip` is set.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 2)
    }

    /// Guest `i` pings the gateway once a second (veth guests only).
    pub fn start_traffic(&self, i: usize) -> Result<(), LabError> {
        let Some(ns) = self.guests.get(i).and_then(|g| g.ns.clone()) else {
            return Ok(());
        };
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "ping",
                "-q",
                "-i",
                "1",
                &self.gateway_ip.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: "ping".into(),
                source,
            })?;
        if let Some(mut old) = self
            .guest_traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i, child)
        {
            let _ = old.kill();
            let _ = old.wait();
        }
        Ok(())
    }

    /// Guest `i` goes quiet (an idle guest).
    pub fn stop_traffic(&self, i: usize) {
        if let Some(mut c) = self
            .guest_traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&i)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the first spare veth guest (its domain is in the node XML
    /// from the start, as libvirt knows a defined guest); returns its index.
    pub fn add_guest(&mut self) -> Result<usize, LabError> {
        let i = self
            .guests
            .iter()
            .position(|g| !g.present && !g.tap && g.ns.is_some())
            .ok_or_else(|| LabError::Invalid("no spare guest left".into()))?;
        let g = self.guests[i].clone();
        let ns = g.ns.clone().unwrap_or_default();
        netns_batch("add", std::slice::from_ref(&ns), false)?;
        self.guests[i].present = true;
        ip_batch(
            Some(&self.hv_ns),
            &[
                format!(
                    "link add {} address {} type veth peer name eth0 address {} netns {ns}",
                    g.host_port, g.host_mac, g.mac
                ),
                format!("link set {} master {} up", g.host_port, self.bridge),
            ],
        )?;
        ip_batch(
            Some(&ns),
            &[
                "link set lo up".into(),
                format!("addr add {}/16 dev eth0", g.ip),
                "link set eth0 up".into(),
                format!("route add default via {}", self.gateway_ip),
            ],
        )?;
        if self.traffic {
            self.start_traffic(i)?;
        }
        Ok(i)
    }

    /// Stops guest `i`: its traffic ends, its port and namespace go away
    /// (a guest shut down; libvirt keeps it defined).
    pub fn remove_guest(&mut self, i: usize) -> Result<(), LabError> {
        let g = self
            .guests
            .get(i)
            .cloned()
            .ok_or_else(|| LabError::Invalid(format!("no guest {i}")))?;
        if let Some(mut c) = self
            .guest_traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&i)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        run(&["ip", "-n", &self.hv_ns, "link", "del", &g.host_port])?;
        if let Some(ns) = &g.ns {
            run(&["ip", "netns", "del", ns])?;
        }
        self.guests[i].present = false;
        Ok(())
    }

    /// Adds another bridge (no uplink) to the hypervisor namespace.
    pub fn add_bridge(&self, name: &str) -> Result<(), LabError> {
        ip_batch(
            Some(&self.hv_ns),
            &[
                format!("link add {name} type bridge stp_state 0 forward_delay 0"),
                format!("link set {name} up"),
            ],
        )
    }

    /// Moves a port to another bridge (what a migration looks like from the
    /// source bridge, catalogue F26).
    pub fn move_port(&self, port: &str, bridge: &str) -> Result<(), LabError> {
        run(&[
            "ip",
            "-n",
            &self.hv_ns,
            "link",
            "set",
            port,
            "master",
            bridge,
        ])
        .map(|_| ())
    }

    /// A process a fault runs until reverted (replaces one of the same name).
    pub(crate) fn fault_child(&self, name: &str, child: Child) {
        if let Some(mut old) = self
            .fault_children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), child)
        {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    pub(crate) fn stop_fault_child(&self, name: &str) {
        if let Some(mut c) = self
            .fault_children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Keeps a child process to be killed when the lab goes away.
    pub fn spawned(&self, child: Child) {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
    }

    /// Marks a flood toward `tap` as running; false if one already was.
    pub(crate) fn start_tap_flood(&self, tap: &str) -> bool {
        self.tap_floods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tap.to_string())
    }

    pub(crate) fn tap_holder(&self, tap: &str) -> Option<u32> {
        self.tap_holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tap)
            .copied()
    }

    /// `test:///…/node.xml` for libvirt's in-process test driver.
    pub fn libvirt_uri(&self) -> String {
        format!("test://{}", self.node_xml.display())
    }

    /// The lab's temp dir (holds node.xml; removed with the lab).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Runs a command inside a namespace of the lab.
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Pings the gateway from guest `i`, 0.2 s apart; true once `count`
    /// replies arrived within `count + 1` seconds (early losses, e.g. while
    /// ARP resolves after a revert, are retried). False for tap guests.
    pub fn ping_from_guest(&self, i: usize, count: u32) -> bool {
        let Some(ns) = self.guests.get(i).and_then(|g| g.ns.clone()) else {
            return false;
        };
        let c = count.max(1).to_string();
        let deadline = (count.max(1) + 1).to_string();
        self.exec_in(
            &ns,
            &[
                "ping",
                "-q",
                "-c",
                &c,
                "-i",
                "0.2",
                "-w",
                &deadline,
                &self.gateway_ip.to_string(),
            ],
        )
        .is_ok()
    }

    /// `ip -n NS link set DEV up|down` (e.g. a guest's port, or the switch side).
    pub fn set_link(&self, ns: &str, dev: &str, up: bool) -> Result<(), LabError> {
        run(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            dev,
            if up { "up" } else { "down" },
        ])
        .map(|_| ())
    }

    /// Breaks the lab the way `f` describes (see [`Fault`]).
    pub fn inject(&self, f: &Fault) -> Result<(), LabError> {
        faults::inject(self, f)
    }

    /// Undoes [`Lab::inject`] of the same fault.
    pub fn revert(&self, f: &Fault) -> Result<(), LabError> {
        faults::revert(self, f)
    }

    /// Namespaces this lab created.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.hv_ns.clone(), self.switch_ns.clone()];
        v.extend(self.guests.iter().filter_map(|g| g.ns.clone()));
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|e| e.into_inner());
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let faults = self
            .fault_children
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for c in faults.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let traffic = self
            .guest_traffic
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for c in traffic.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Global sysctls back first: they affect the whole machine.
        self.sysctls
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Deleting a namespace removes the veths and taps inside it. `-force`
        // goes on past names that were never created (a failed start); its
        // error then only says so.
        let _ = netns_batch("del", &self.namespaces(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_libvirts_convention_and_are_unique() {
        let a: Vec<String> = (0..1000).map(|i| mac("52:54:00", i)).collect();
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
        assert_eq!(mac("fe:54:00", 3)[3..], mac("52:54:00", 3)[3..]);
    }

    #[test]
    fn stale_dirs_of_dead_processes_go_and_the_rest_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let make = |n: &str| {
            let d = tmp.path().join(n);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("node.xml"), "<node/>").unwrap();
            d
        };
        let stale = make(&format!("{DIR_PREFIX}{dead}-abc"));
        let live = make(&format!("{DIR_PREFIX}{me}-abc"));
        let other = make(&format!("{DIR_PREFIX}artifacts"));
        // Young dirs are left: a lab of a process that just started.
        assert_eq!(remove_stale_dirs(tmp.path(), STALE_MIN_AGE), 0);
        assert!(stale.exists());
        assert_eq!(remove_stale_dirs(tmp.path(), std::time::Duration::ZERO), 1);
        assert!(!stale.exists(), "a dead run's dir was kept");
        assert!(live.exists(), "a live process's dir was removed");
        assert!(other.exists(), "a dir that is not a lab's was removed");
    }
}
