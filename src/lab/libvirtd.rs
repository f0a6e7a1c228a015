//! A private libvirtd (system mode, qemu driver) for the real-guest lab,
//! started by hand inside the lab's hypervisor namespace, so the taps it
//! creates and the bridge they join live there, never in the root namespace.
//!
//! Nothing of the host's libvirt is used or changed: `ip netns exec` gives
//! libvirtd a mount namespace of its own (mounts made there do not reach
//! the host), in which the lab's temp dir is bind-mounted over
//! /run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and
//! /etc/libvirt (the latter for a private qemu.conf: `stdio_handler =
//! "file"`, so no virtlogd is needed), and an empty file over /dev/kvm
//! (see `prepare`). Its sockets are in the temp dir
//! (`unix_sock_dir`, no auth), its pid file too. Because the state lives in
//! the temp dir, a libvirtd restarted the same way finds its running guests
//! again, as on a real node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::LabError;

/// The lab dir's prefix; `hvflight-real-<pid>-…` lets stale cleanup find
/// the daemons of dead labs.
pub const DIR_PREFIX: &str = "hvflight-real-";

/// Domain UUIDs of the real lab end in this marker (+ 4 hex digits of the
/// guest index) and start with the creating pid: stale cleanup finds the
/// qemu processes of dead labs by their `-uuid`.
pub const UUID_MARKER: &str = "4000-8000-6876666c";

/// (lab dir subdirectory, where libvirtd sees it). "cache" is the
/// exception: see [`Libvirtd::prepare`].
const MOUNTS: [(&str, &str); 5] = [
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("etc", "/etc/libvirt"),
];

/// The qemu driver's default user and group on Debian, and the kvm group
/// it checks /dev/kvm against: libvirtd's qemu driver refuses to start
/// without them (normally created by libvirt-daemon-system, which must not
/// be installed here: it starts a NAT network in the root namespace).
/// Creates what is missing; returns what it created.
pub fn ensure_accounts() -> Result<Vec<String>, LabError> {
    let mut created = Vec::new();
    for g in ["kvm", "libvirt-qemu"] {
        if nix::unistd::Group::from_name(g).ok().flatten().is_none() {
            super::run(&["groupadd", "--system", g])?;
            created.push(format!("group {g}"));
        }
    }
    if nix::unistd::User::from_name("libvirt-qemu")
        .ok()
        .flatten()
        .is_none()
    {
        super::run(&[
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/var/lib/libvirt",
            "--shell",
            "/usr/sbin/nologin",
            "--gid",
            "libvirt-qemu",
            "--groups",
            "kvm",
            "--comment",
            "Libvirt Qemu (created by the hvflight lab)",
            "libvirt-qemu",
        ])?;
        created.push("user libvirt-qemu".into());
    }
    Ok(created)
}

/// The bind mounts need their targets to exist on the host; creates the
/// missing ones (empty: libvirtd writes into the lab's dir, never into them).
pub fn ensure_mountpoints() -> Result<Vec<String>, LabError> {
    let mut created = Vec::new();
    for (_, target) in MOUNTS {
        if !Path::new(target).is_dir() {
            std::fs::create_dir_all(target)
                .map_err(|e| LabError::Invalid(format!("mkdir {target}: {e}")))?;
            created.push(format!("empty directory {target}"));
        }
    }
    Ok(created)
}

/// One private libvirtd. Started with [`Libvirtd::start`]; stopped (and
/// resumed first if paused) on drop. Domains keep running when it stops.
pub struct Libvirtd {
    hv_ns: String,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Libvirtd {
    /// Writes the configs and the start script into `dir/` (the lab's
    /// libvirt directory, mode 0755 so qemu can reach its files).
    /// `cache_dir` is bound over /var/cache/libvirt instead of `dir/cache`:
    /// it holds only libvirt's qemu capabilities cache, whose probing of
    /// every qemu binary takes 10–60 s on a busy machine; libvirt checks the
    /// cache against the binaries and the host itself, and writes it by
    /// rename, so labs can share it.
    pub fn prepare(hv_ns: &str, dir: &Path, cache_dir: &Path) -> Result<Libvirtd, LabError> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        for sub in MOUNTS.iter().map(|m| m.0).chain(["sock"]) {
            std::fs::create_dir_all(dir.join(sub))?;
            std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o755))?;
        }
        // Clients inside the namespace would read these; keep what the host has.
        if let Ok(rd) = std::fs::read_dir("/etc/libvirt") {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::copy(e.path(), dir.join("etc").join(e.file_name()));
                }
            }
        }
        let d = dir.display();
        std::fs::write(
            dir.join("libvirtd.conf"),
            format!(
                "# hvflight real-guest lab: a private libvirtd (see src/lab/libvirtd.rs)\n\
                 unix_sock_dir = \"{d}/sock\"\n\
                 unix_sock_ro_perms = \"0777\"\n\
                 unix_sock_rw_perms = \"0700\"\n\
                 unix_sock_admin_perms = \"0700\"\n\
                 auth_unix_ro = \"none\"\n\
                 auth_unix_rw = \"none\"\n\
                 log_outputs = \"3:file:{d}/libvirtd.log\"\n"
            ),
        )?;
        std::fs::write(
            dir.join("etc/qemu.conf"),
            "# hvflight real-guest lab (private /etc/libvirt of its libvirtd)\n\
             user = \"libvirt-qemu\"\n\
             group = \"libvirt-qemu\"\n\
             # qemu's stdout/stderr to /var/log/libvirt/qemu/NAME.log directly: no virtlogd.\n\
             stdio_handler = \"file\"\n\
             # Guests share one kernel file: no ownership bookkeeping in xattrs.\n\
             remember_owner = 0\n\
             # No private /dev per guest: libvirt would try to move the\n\
             # /dev/kvm stand-in (a file mount) into it, and fail.\n\
             namespaces = []\n",
        )?;
        std::fs::create_dir_all(cache_dir)?;
        std::fs::set_permissions(cache_dir, std::fs::Permissions::from_mode(0o755))?;
        let mut script = String::from("set -e\n");
        for (sub, target) in MOUNTS {
            let from = if sub == "cache" {
                cache_dir.display().to_string()
            } else {
                format!("{d}/{sub}")
            };
            script.push_str(&format!("mount --bind '{from}' '{target}'\n"));
        }
        // /dev/kvm exists on this kernel but guests cannot use it (kvm_pvm),
        // and it is root-only: libvirt's probe (as libvirt-qemu) finds KVM
        // working while its access check says it is not, so it throws the
        // capabilities cache away on every start (a minute of probing). An
        // empty root-only file over /dev/kvm, in this mount namespace only,
        // makes both agree: no KVM, which is true for type='qemu' guests.
        std::fs::write(dir.join("no-kvm"), b"")?;
        std::fs::set_permissions(dir.join("no-kvm"), std::fs::Permissions::from_mode(0o600))?;
        script.push_str(&format!(
            "if [ -e /dev/kvm ]; then mount --bind '{d}/no-kvm' /dev/kvm; fi\n"
        ));
        script.push_str(&format!(
            "exec /usr/sbin/libvirtd -f '{d}/libvirtd.conf' -p '{d}/libvirtd.pid'\n"
        ));
        std::fs::write(dir.join("start.sh"), script)?;
        Ok(Libvirtd {
            hv_ns: hv_ns.to_string(),
            dir: dir.to_path_buf(),
            child: None,
            paused: false,
        })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock/libvirt-sock")
    }

    /// What clients (the agent, virsh) connect to.
    pub fn uri(&self) -> String {
        format!("qemu:///system?socket={}", self.socket().display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts libvirtd and waits until it answers (capability probing of
    /// qemu takes a few seconds on a busy machine).
    pub fn start(&mut self, timeout: Duration) -> Result<(), LabError> {
        if self.running() {
            return Ok(());
        }
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.dir.join("libvirtd.stderr"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hv_ns, "sh"])
            .arg(self.dir.join("start.sh"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: "ip netns exec … libvirtd".into(),
                source,
            })?;
        // `ip netns exec` and sh both exec: the child's pid is libvirtd's.
        self.child = Some(child);
        self.paused = false;
        virt::error::clear_error_callback();
        let uri = self.uri();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut c) = virt::connect::Connect::open_read_only(Some(&uri)) {
                let _ = c.close();
                return Ok(());
            }
            if !self.running() {
                self.child = None;
                return Err(LabError::Invalid(format!(
                    "libvirtd exited at start: {}",
                    self.stderr_tail()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Invalid(format!(
                    "libvirtd did not answer on {} within {timeout:?}: {}",
                    self.socket().display(),
                    self.stderr_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr_tail(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("libvirtd.stderr")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default());
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn signal(&self, sig: Signal) -> Result<(), LabError> {
        let pid = self
            .pid()
            .ok_or_else(|| LabError::Invalid("libvirtd is not running".into()))?;
        kill(Pid::from_raw(pid as i32), sig)
            .map_err(|e| LabError::Invalid(format!("{sig} to libvirtd {pid}: {e}")))
    }

    /// SIGTERM (SIGKILL after 10 s); its guests keep running.
    pub fn stop(&mut self) -> Result<(), LabError> {
        if self.paused {
            self.resume()?;
        }
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// SIGSTOP: libvirtd hangs (its sockets stay open, nothing answers).
    pub fn pause(&mut self) -> Result<(), LabError> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// SIGCONT after [`Libvirtd::pause`].
    pub fn resume(&mut self) -> Result<(), LabError> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// The pid of a running domain's qemu (libvirt's pid file).
    pub fn qemu_pid(&self, domain: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("run/qemu").join(format!("{domain}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// libvirtd's own log and each domain's qemu log.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v = vec![
            self.dir.join("libvirtd.log"),
            self.dir.join("libvirtd.stderr"),
        ];
        if let Ok(rd) = std::fs::read_dir(self.dir.join("log/qemu")) {
            v.extend(rd.flatten().map(|e| e.path()));
        }
        v
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The creating pid encoded in a real-lab domain UUID, if it is one.
pub fn uuid_creator(uuid: &str) -> Option<u32> {
    let (pid, rest) = uuid.split_once('-')?;
    let tail = rest.split_once('-')?.1;
    let idx = tail.strip_prefix(UUID_MARKER)?;
    if pid.len() != 8 || idx.len() != 4 || !idx.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

/// The creating pid in a `hvflight-real-<pid>-…` path.
pub fn dir_creator(arg: &str) -> Option<u32> {
    let rest = &arg[arg.find(DIR_PREFIX)? + DIR_PREFIX.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    rest[digits.len()..].starts_with('-').then_some(())?;
    digits.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// libvirtd and qemu processes made by real labs: (pid, creating pid).
pub fn lab_processes() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(exe) = args.first() else { continue };
        let creator = if exe.ends_with("libvirtd") {
            args.iter().find_map(|a| dir_creator(a))
        } else if exe.contains("qemu-system") {
            args.windows(2)
                .find(|w| w[0] == "-uuid")
                .and_then(|w| uuid_creator(&w[1]))
        } else {
            None
        };
        if let Some(c) = creator {
            out.push((pid, c));
        }
    }
    out
}

/// Kills the libvirtd and qemu processes of real labs whose creating
/// process is gone (a SIGKILLed test run), and removes their temp dirs;
/// returns how many processes it killed. Processes of live labs, and
/// anything not made by a lab, are left alone.
pub fn cleanup_stale_processes() -> usize {
    let mut killed = 0;
    for (pid, creator) in lab_processes() {
        // SIGKILL also ends a stopped (SIGSTOPped) process.
        if !alive(creator) && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(DIR_PREFIX) && dir_creator(&name).is_some_and(|c| !alive(c)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creators_are_read_from_uuids_and_dirs() {
        assert_eq!(
            uuid_creator("000004d2-0001-4000-8000-6876666c0003"),
            Some(1234)
        );
        assert_eq!(uuid_creator("000004d2-0001-4000-8000-000000000003"), None);
        assert_eq!(uuid_creator("7d3c9e1a-4b2f-4c6d-8e9f-1a2b3c4d5e01"), None);
        assert_eq!(
            dir_creator("/tmp/hvflight-real-4321-AbC/libvirtd.conf"),
            Some(4321)
        );
        assert_eq!(dir_creator("/tmp/hvflight-real-x/libvirtd.conf"), None);
        assert_eq!(dir_creator("/etc/libvirt/libvirtd.conf"), None);
    }
}
