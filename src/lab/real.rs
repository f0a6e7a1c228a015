//! The lab with real guests: the namespace lab's hypervisor (bridge, uplink,
//! switch namespace with the gateway) plus a private libvirtd in the
//! hypervisor namespace running `type='qemu'` (TCG) guests that boot the
//! Debian cloud kernel with a busybox initramfs. libvirt creates the taps
//! (vnetN, fe:54:… MACs) on the lab bridge, reports real counters and real
//! lifecycle events, and the guests answer ping and ARP.
//!
//! ```text
//!  qemu guest0 ── eth0 ═ vnetN (tap, by libvirtd) ─┐  hypervisor ns: bridge br0,
//!  qemu guest1 ── eth0 ═ vnetM ────────────────────┤  private libvirtd
//!                                                  └─ uplink0 ═ sw0 ── switch ns (gateway 10.77.0.1)
//! ```
//!
//! Everything is torn down on drop (also on panic): domains destroyed,
//! libvirtd stopped, leftover qemu killed, namespaces and temp dirs removed.
//! On a panic the guests' console logs and libvirt's logs are kept in the
//! artifacts directory first. Processes of labs whose creator died are
//! found and killed by `lab::cleanup_stale()`.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::guest_image::{self, GuestImage};
use super::libvirtd::{self, Libvirtd, DIR_PREFIX, UUID_MARKER};
use super::{Guest, Lab, LabConfig, LabError};

#[derive(Clone, Debug)]
pub struct RealLabConfig {
    pub guests: usize,
    /// Each guest pings the gateway once a second (the detector's evidence).
    pub traffic: bool,
    /// Put nova metadata into the domain XML.
    pub nova_metadata: bool,
    /// Where the kernel and initramfs are cached (see guest_image).
    pub build_dir: PathBuf,
    /// Where console and libvirt logs are kept when the lab is dropped by a panic.
    pub artifacts_dir: PathBuf,
    /// How long a guest may take from `virsh start` to answering ping.
    pub boot_timeout: Duration,
    /// Set (by a signal handler) to give up waiting for guests to boot.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for RealLabConfig {
    fn default() -> Self {
        RealLabConfig {
            guests: 2,
            traffic: true,
            nova_metadata: false,
            build_dir: guest_image::default_build_dir(),
            artifacts_dir: guest_image::default_artifacts_dir(),
            // TCG boots take ~10 s on an idle core, minutes on a loaded one.
            boot_timeout: Duration::from_secs(300),
            stop: None,
        }
    }
}

/// Guest memory, MiB.
pub const GUEST_MEMORY_MIB: u32 = 128;

#[derive(Clone, Debug)]
pub struct RealGuest {
    /// libvirt domain name (guest0, guest1, …).
    pub name: String,
    pub uuid: String,
    /// Guest MAC, 52:54:00:…; libvirt gives its tap fe:54:00:….
    pub mac: String,
    pub host_mac: String,
    pub ip: Ipv4Addr,
    /// The serial console, written by qemu.
    pub console_log: PathBuf,
}

pub struct RealLab {
    /// Namespaces, bridge, uplink, switch. Its `guests` mirror the real ones
    /// (no namespace; `host_port` = the current tap) so faults naming a
    /// guest (FDB hijack, learning off) work on the real lab too.
    pub base: Lab,
    pub guests: Vec<RealGuest>,
    pub image: GuestImage,
    pub daemon: Libvirtd,
    /// Boot-to-ping time of every guest start the lab waited for.
    pub boot_to_ping: Vec<Duration>,
    /// What this start created on the host (accounts, empty mount points).
    pub created: Vec<String>,
    artifacts_dir: PathBuf,
    nova_metadata: bool,
    traffic: bool,
    stop: Option<Arc<AtomicBool>>,
    dir: tempfile::TempDir,
}

/// Why this machine cannot run the real-guest lab (empty: it can). Quick:
/// one dpkg-query and a few stats, no network.
pub fn prerequisites() -> Vec<String> {
    let mut why = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        why.push("not root".into());
    }
    let pkgs = [
        "libvirt-daemon",
        "libvirt-daemon-driver-qemu",
        "libvirt-clients",
        "qemu-system-x86",
        "busybox-static",
        "cpio",
    ];
    let mut args = vec!["dpkg-query", "-W", "-f=${Package} ${Status}\\n"];
    args.extend(pkgs);
    // dpkg-query exits 1 when a package is unknown but still lists the others.
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for p in pkgs {
        let ok = out
            .lines()
            .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"));
        if !ok {
            why.push(format!("package {p} not installed"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        why.push("no /dev/net/tun".into());
    }
    let build = guest_image::default_build_dir();
    if !guest_image::is_cached(&build) {
        // Not an obstacle by itself: the first start fetches it through apt.
        if let Err(e) = guest_image::resolve_package() {
            why.push(format!(
                "no guest kernel cached in {} and {e}",
                build.display()
            ));
        }
    }
    why
}

/// `{pid:08x}-{lab:04x}-4000-8000-6876666c{i:04x}`: the pid and marker let
/// stale cleanup find qemu processes of dead labs.
fn real_uuid(pid: u32, lab_n: u32, i: usize) -> String {
    format!(
        "{pid:08x}-{:04x}-{UUID_MARKER}{:04x}",
        lab_n & 0xffff,
        i & 0xffff
    )
}

/// The libvirt domain of guest `g` (pure; tested below).
pub fn domain_xml(
    g: &RealGuest,
    i: usize,
    image: &GuestImage,
    bridge: &str,
    gateway: Ipv4Addr,
    traffic: bool,
    nova: bool,
) -> String {
    let nova_xml = if nova {
        format!(
            "  <metadata>\n    <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\n      <nova:name>{}</nova:name>\n      <nova:flavor name='m1.tiny'/>\n      <nova:owner>\n        <nova:user uuid='00000000-0000-4000-8000-00000000a001'>demo</nova:user>\n        <nova:project uuid='00000000-0000-4000-8000-00000000b00{}'>{}</nova:project>\n      </nova:owner>\n    </nova:instance>\n  </metadata>\n",
            if i == 0 {
                "tools-webproxy-01".to_string()
            } else {
                format!("instance-{i:04}")
            },
            i % 2,
            if i % 2 == 0 { "tools" } else { "deployment-prep" }
        )
    } else {
        String::new()
    };
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
{nova_xml}  <memory unit='MiB'>{GUEST_MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 hvf.ip={ip}/16 hvf.gw={gateway} hvf.ping={ping}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{bridge}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
        name = g.name,
        uuid = g.uuid,
        kernel = image.kernel.display(),
        initrd = image.initrd.display(),
        ip = g.ip,
        ping = u8::from(traffic),
        mac = g.mac,
        console = g.console_log.display(),
    )
}

/// `virsh domiflist` (with -q) → the tap of the interface with `mac`.
pub fn parse_domiflist(out: &str, mac: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 5 && f[4].eq_ignore_ascii_case(mac) && f[0] != "-").then(|| f[0].to_string())
    })
}

/// `virsh domstate --reason` → ("running", "booted"), ("shut off", "crashed").
pub fn parse_domstate(out: &str) -> (String, String) {
    let s = out.trim();
    match s.rsplit_once(" (") {
        Some((state, reason)) => (state.to_string(), reason.trim_end_matches(')').to_string()),
        None => (s.to_string(), String::new()),
    }
}

impl RealLab {
    /// Builds the lab and boots every guest, waiting until each answers
    /// ping from the switch namespace. `progress` hears about each step
    /// (image fetched or cached, accounts created, guests up).
    pub fn start(cfg: RealLabConfig, progress: &mut dyn FnMut(&str)) -> Result<RealLab, LabError> {
        super::cleanup_stale();
        let why = prerequisites();
        if !why.is_empty() {
            return Err(LabError::Invalid(format!(
                "real guests need: {}",
                why.join("; ")
            )));
        }
        let mut created = libvirtd::ensure_accounts()?;
        created.extend(libvirtd::ensure_mountpoints()?);
        for c in &created {
            progress(&format!("created {c} (needed by libvirtd's qemu driver)"));
        }
        let image = guest_image::ensure(&cfg.build_dir, progress)?;
        progress(&format!(
            "guest image {} ({}): {}, {}",
            image.kernel_version,
            image.how,
            image.kernel.display(),
            image.initrd.display()
        ));
        let base = Lab::start(LabConfig {
            guests: 0,
            tap_guests: 0,
            traffic: false,
            ..LabConfig::default()
        })?;
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{pid}-"))
            .tempdir()?;
        // qemu runs as libvirt-qemu and writes its console log in here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let daemon = Libvirtd::prepare(
            &base.hv_ns,
            &dir.path().join("libvirt"),
            &cfg.build_dir.join("libvirt-cache"),
        )?;
        let lab_n: u32 = base
            .id
            .rsplit('x')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let guests = (0..cfg.guests)
            .map(|i| RealGuest {
                name: format!("guest{i}"),
                uuid: real_uuid(pid, lab_n, i),
                mac: super::mac("52:54:00", i),
                host_mac: super::mac("fe:54:00", i),
                ip: Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, 10 + (i % 250) as u8),
                console_log: dir.path().join(format!("guest{i}.console.log")),
            })
            .collect();
        // From here on, Drop tears down whatever was built.
        let mut lab = RealLab {
            base,
            guests,
            image,
            daemon,
            boot_to_ping: Vec::new(),
            created,
            artifacts_dir: cfg.artifacts_dir.clone(),
            nova_metadata: cfg.nova_metadata,
            traffic: cfg.traffic,
            stop: cfg.stop.clone(),
            dir,
        };
        progress(&format!(
            "starting a private libvirtd in namespace {}",
            lab.base.hv_ns
        ));
        lab.daemon.start(Duration::from_secs(120))?;
        for i in 0..lab.guests.len() {
            lab.define(i)?;
        }
        progress(&format!(
            "booting {} guest(s) (qemu TCG, {GUEST_MEMORY_MIB} MiB each) …",
            lab.guests.len()
        ));
        let all: Vec<usize> = (0..lab.guests.len()).collect();
        let times = lab.boot(&all, cfg.boot_timeout)?;
        for (i, t) in all.iter().zip(&times) {
            let g = &lab.guests[*i];
            progress(&format!(
                "{} {} answered ping {:.1} s after `virsh start` (tap {})",
                g.name,
                g.ip,
                t.as_secs_f64(),
                lab.tap(*i).unwrap_or_else(|| "?".into())
            ));
        }
        Ok(lab)
    }

    /// `qemu:///system?socket=…` of the lab's libvirtd.
    pub fn libvirt_uri(&self) -> String {
        self.daemon.uri()
    }

    /// The lab's temp dir (libvirt state, console logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `virsh -q -c URI ARGS…`
    pub fn virsh(&self, args: &[&str]) -> Result<String, LabError> {
        let uri = self.libvirt_uri();
        let mut full = vec!["virsh", "-q", "-c", uri.as_str()];
        full.extend_from_slice(args);
        super::run(&full)
    }

    fn define(&self, i: usize) -> Result<(), LabError> {
        let g = &self.guests[i];
        let xml = domain_xml(
            g,
            i,
            &self.image,
            &self.base.bridge,
            self.base.gateway_ip,
            self.traffic,
            self.nova_metadata,
        );
        let path = self.dir.path().join(format!("{}.xml", g.name));
        std::fs::write(&path, xml)?;
        self.virsh(&["define", &path.display().to_string()])?;
        Ok(())
    }

    /// Starts guests `which` at once and waits until each answers ping;
    /// returns each one's boot-to-ping time (also kept in `boot_to_ping`).
    pub fn boot(&mut self, which: &[usize], timeout: Duration) -> Result<Vec<Duration>, LabError> {
        let results: Vec<Result<Duration, LabError>> = std::thread::scope(|s| {
            let handles: Vec<_> = which
                .iter()
                .map(|&i| {
                    let lab = &*self;
                    s.spawn(move || {
                        let t0 = Instant::now();
                        lab.virsh(&["start", &lab.guests[i].name])?;
                        lab.wait_for_ping(i, t0, timeout)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(LabError::Invalid("boot thread panicked".into())))
                })
                .collect()
        });
        let mut times = Vec::new();
        for r in results {
            times.push(r?);
        }
        self.boot_to_ping.extend(&times);
        for &i in which {
            self.refresh_base_guest(i);
        }
        Ok(times)
    }

    /// Puts the lab back into its starting shape after whatever a test did:
    /// libvirtd running (resumed, or started again), guests `which` running
    /// (booted again if they are not). Returns what it had to repair.
    pub fn heal(&mut self, which: &[usize], timeout: Duration) -> Result<Vec<String>, LabError> {
        let mut done = Vec::new();
        if self.daemon.running() && self.daemon.is_paused() {
            self.daemon.resume()?;
            done.push("resumed libvirtd".to_string());
        }
        if !self.daemon.running() {
            self.daemon.start(Duration::from_secs(120))?;
            done.push("started libvirtd".to_string());
        }
        let down: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.domstate(i).map(|s| s.0 != "running").unwrap_or(true))
            .collect();
        if !down.is_empty() {
            self.boot(&down, timeout)?;
            done.extend(
                down.iter()
                    .map(|&i| format!("booted {}", self.guests[i].name)),
            );
        }
        Ok(done)
    }

    /// Starts guest `i` without waiting for it to boot.
    pub fn start_guest(&mut self, i: usize) -> Result<(), LabError> {
        self.virsh(&["start", &self.guests[i].name])?;
        self.refresh_base_guest(i);
        Ok(())
    }

    /// `virsh shutdown` (ACPI power button; the guest powers off).
    pub fn shutdown_guest(&self, i: usize) -> Result<(), LabError> {
        self.virsh(&["shutdown", &self.guests[i].name]).map(|_| ())
    }

    /// `virsh destroy` (pulls the plug).
    pub fn destroy_guest(&self, i: usize) -> Result<(), LabError> {
        self.virsh(&["destroy", &self.guests[i].name]).map(|_| ())
    }

    /// Kills guest `i`'s qemu with SIGKILL (a crash, as libvirt sees it);
    /// returns the pid killed.
    pub fn crash_guest(&self, i: usize) -> Result<u32, LabError> {
        let name = &self.guests[i].name;
        let pid = self.daemon.qemu_pid(name).ok_or_else(|| {
            LabError::Invalid(format!("{name} has no qemu pid file (not running?)"))
        })?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| LabError::Invalid(format!("kill -9 {pid} ({name}'s qemu): {e}")))?;
        Ok(pid)
    }

    /// ("running", "booted"), ("shut off", "crashed"), … as virsh says.
    pub fn domstate(&self, i: usize) -> Result<(String, String), LabError> {
        self.virsh(&["domstate", "--reason", &self.guests[i].name])
            .map(|o| parse_domstate(&o))
    }

    /// Waits until guest `i`'s state is `state` (as virsh names it).
    pub fn wait_state(&self, i: usize, state: &str, timeout: Duration) -> Result<String, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (s, reason) = self.domstate(i)?;
            if s == state {
                return Ok(reason);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "{} still {s} ({reason}) after {timeout:?}, not {state}",
                    self.guests[i].name
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Guest `i`'s tap as libvirt reports it (None while not running).
    pub fn tap(&self, i: usize) -> Option<String> {
        let g = &self.guests[i];
        let out = self.virsh(&["domiflist", &g.name]).ok()?;
        parse_domiflist(&out, &g.mac)
    }

    fn refresh_base_guest(&mut self, i: usize) {
        let tap = self.tap(i).unwrap_or_default();
        let g = &self.guests[i];
        let mirror = Guest {
            name: g.name.clone(),
            uuid: g.uuid.clone(),
            ns: None,
            mac: g.mac.clone(),
            host_port: tap,
            host_mac: g.host_mac.clone(),
            ip: g.ip,
            tap: false,
            present: true,
        };
        match self.base.guests.iter_mut().find(|b| b.name == mirror.name) {
            Some(b) => *b = mirror,
            None => self.base.guests.push(mirror),
        }
    }

    /// One ping from the switch namespace (the gateway's side) to guest `i`.
    fn ping_once(&self, i: usize) -> bool {
        let ip = self.guests[i].ip.to_string();
        self.base
            .exec_in(
                &self.base.switch_ns,
                &["ping", "-q", "-c", "1", "-W", "1", &ip],
            )
            .is_ok()
    }

    /// Pings guest `i` from the switch side, 0.2 s apart; true once `count`
    /// replies arrived within `count + 1` seconds.
    pub fn ping_guest(&self, i: usize, count: u32) -> bool {
        let ip = self.guests[i].ip.to_string();
        let c = count.max(1).to_string();
        let deadline = (count.max(1) + 1).to_string();
        self.base
            .exec_in(
                &self.base.switch_ns,
                &["ping", "-q", "-c", &c, "-i", "0.2", "-w", &deadline, &ip],
            )
            .is_ok()
    }

    /// Waits until guest `i` answers ping; the time since `since`.
    pub fn wait_for_ping(
        &self,
        i: usize,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, LabError> {
        let mut last_state_check = Instant::now();
        loop {
            if self.ping_once(i) {
                return Ok(since.elapsed());
            }
            if self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                return Err(LabError::Invalid(format!(
                    "interrupted while waiting for {} to boot",
                    self.guests[i].name
                )));
            }
            if since.elapsed() >= timeout {
                return Err(LabError::Invalid(format!(
                    "{} ({}) did not answer ping within {timeout:?}; console: {}",
                    self.guests[i].name,
                    self.guests[i].ip,
                    self.console_tail(i, 5)
                )));
            }
            if last_state_check.elapsed() >= Duration::from_secs(5) {
                last_state_check = Instant::now();
                if let Ok((s, reason)) = self.domstate(i) {
                    if s != "running" {
                        return Err(LabError::Invalid(format!(
                            "{} is {s} ({reason}) while booting; console: {}",
                            self.guests[i].name,
                            self.console_tail(i, 5)
                        )));
                    }
                }
            }
        }
    }

    /// The last `n` lines of guest `i`'s serial console.
    pub fn console_tail(&self, i: usize, n: usize) -> String {
        let s = std::fs::read_to_string(&self.guests[i].console_log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    /// Copies the guests' console logs and libvirt's logs to
    /// `<artifacts dir>/<label>-<lab id>/`; returns that directory.
    pub fn save_artifacts(&self, label: &str) -> std::io::Result<PathBuf> {
        let dest = self.artifacts_dir.join(format!("{label}-{}", self.base.id));
        std::fs::create_dir_all(&dest)?;
        let files = self
            .guests
            .iter()
            .map(|g| g.console_log.clone())
            .chain(self.daemon.log_files());
        for f in files {
            if let Some(name) = f.file_name() {
                let _ = std::fs::copy(&f, dest.join(name));
            }
        }
        Ok(dest)
    }

    /// Median of the boot-to-ping times so far.
    pub fn median_boot_to_ping(&self) -> Option<Duration> {
        let mut v = self.boot_to_ping.clone();
        v.sort();
        v.get(v.len() / 2).copied()
    }
}

impl Drop for RealLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            match self.save_artifacts("panic") {
                Ok(d) => eprintln!("real lab: console and libvirt logs kept in {}", d.display()),
                Err(e) => eprintln!("real lab: could not keep the logs: {e}"),
            }
        }
        let qemu: Vec<u32> = self
            .guests
            .iter()
            .filter_map(|g| self.daemon.qemu_pid(&g.name))
            .collect();
        if self.daemon.running() {
            // A hung (stopped) daemon answers nothing: wake it first.
            let _ = self.daemon.resume();
            for g in &self.guests {
                let _ = self.virsh(&["destroy", &g.name]);
            }
        }
        let _ = self.daemon.stop();
        // Whatever libvirt did not end (it was not running, or failed).
        for pid in qemu {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Then `base` removes the namespaces and `dir` the temp dir.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_xml_is_what_the_collector_parses() {
        let g = RealGuest {
            name: "guest1".into(),
            uuid: real_uuid(1234, 2, 1),
            mac: "52:54:00:00:00:02".into(),
            host_mac: "fe:54:00:00:00:02".into(),
            ip: Ipv4Addr::new(10, 77, 1, 11),
            console_log: "/tmp/x/guest1.console.log".into(),
        };
        let image = GuestImage {
            kernel_version: "6.1.0-57-cloud-amd64".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd-x.img".into(),
            how: "cached".into(),
        };
        let x = domain_xml(
            &g,
            1,
            &image,
            "br0",
            Ipv4Addr::new(10, 77, 0, 1),
            true,
            true,
        );
        assert!(x.contains("hvf.ip=10.77.1.11/16 hvf.gw=10.77.0.1 hvf.ping=1"));
        assert_eq!(libvirtd::uuid_creator(&g.uuid), Some(1234));
        let d = crate::kernel::domain_xml::parse(&x).unwrap();
        assert_eq!(d.vnics.len(), 1);
        assert_eq!(
            (d.vnics[0].mac.as_str(), d.vnics[0].bridge.as_str()),
            ("52:54:00:00:00:02", "br0")
        );
        assert_eq!(d.nova.unwrap().project_name, "deployment-prep");
    }

    #[test]
    fn virsh_output_is_parsed() {
        // virsh 9.0 `-q domiflist` and `domstate --reason`, captured here.
        let out = " vnet2       bridge   br0      virtio   52:54:00:00:00:01\n";
        assert_eq!(
            parse_domiflist(out, "52:54:00:00:00:01").as_deref(),
            Some("vnet2")
        );
        assert_eq!(parse_domiflist(out, "52:54:00:00:00:02"), None);
        assert_eq!(
            parse_domiflist(
                " -   bridge  br0  virtio  52:54:00:00:00:01\n",
                "52:54:00:00:00:01"
            ),
            None
        );
        assert_eq!(
            parse_domstate("shut off (crashed)\n\n"),
            ("shut off".into(), "crashed".into())
        );
        assert_eq!(
            parse_domstate("running (booted)"),
            ("running".into(), "booted".into())
        );
    }
}
