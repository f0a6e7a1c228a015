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

/// Deep state captured once per incident (at its start) and reused by the
/// complete bundle, minutes later. Its files wait in one spool file next to
/// the bundles, not in memory: at 500 vNICs they are ~2.6 MiB (more with
/// the vectors' spare room), held for the whole incident and on top of the
/// bundle writer's own peak. The spool is an unlinked temporary file, so a
/// crash leaves nothing behind; where none can be made (read-only or full
/// filesystem) the files stay in memory, as before.
#[derive(Debug, Default)]
pub struct DeepState {
    pub files: Vec<DeepFile>,
    pub commands: Vec<CommandRun>,
    spool: Spool,
}

/// One file of the deep state: where it is in the spool, its size and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    offset: u64,
}

#[derive(Debug)]
enum Spool {
    File { f: std::fs::File, len: u64 },
    Memory(Vec<u8>),
}

impl Default for Spool {
    fn default() -> Spool {
        Spool::Memory(Vec::new())
    }
}

impl DeepState {
    /// Spooled in `dir` (created if missing), else in memory.
    pub fn spooled_in(dir: &Path) -> DeepState {
        let f = std::fs::create_dir_all(dir).and_then(|_| tempfile::tempfile_in(dir));
        let spool = match f {
            Ok(f) => Spool::File { f, len: 0 },
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "deep state kept in memory: no spool file");
                Spool::Memory(Vec::new())
            }
        };
        DeepState {
            spool,
            ..Default::default()
        }
    }

    /// Held in memory (tests, small states).
    pub fn in_memory() -> DeepState {
        DeepState::default()
    }

    /// Adds a file. When the spool file cannot take it (disk full), the
    /// spool moves to memory with everything in it: nothing is lost.
    pub fn add(&mut self, name: impl Into<String>, data: &[u8]) {
        let offset = self.append(data);
        self.files.push(DeepFile {
            name: name.into(),
            size: data.len() as u64,
            sha256: super::writer::sha256_hex(data),
            offset,
        });
    }

    /// Appends to the spool; returns where the data starts.
    fn append(&mut self, data: &[u8]) -> u64 {
        if let Spool::File { f, len } = &mut self.spool {
            use std::io::Write;
            use std::os::unix::fs::FileExt;
            let at = *len;
            match f.write_all(data) {
                Ok(()) => {
                    *len += data.len() as u64;
                    return at;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deep state spool file full: kept in memory");
                    let mut all = vec![0u8; at as usize];
                    if let Err(e) = f.read_exact_at(&mut all, 0) {
                        tracing::error!(error = %e, "deep state spool unreadable; its earlier files are cut");
                    }
                    self.spool = Spool::Memory(all);
                }
            }
        }
        let Spool::Memory(v) = &mut self.spool else {
            unreachable!("a spool file returned above or became memory")
        };
        let at = v.len() as u64;
        v.extend_from_slice(data);
        at
    }

    /// The bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Reads one file's content.
    pub fn reader<'a>(&'a self, file: &DeepFile) -> Box<dyn Read + 'a> {
        match &self.spool {
            Spool::File { f, .. } => Box::new(At {
                f,
                pos: file.offset,
                end: file.offset + file.size,
            }),
            Spool::Memory(v) => {
                Box::new(&v[file.offset as usize..(file.offset + file.size) as usize])
            }
        }
    }
}

/// A reader over a range of the spool file (pread: the file's own cursor,
/// where the next file is appended, stays put).
struct At<'a> {
    f: &'a std::fs::File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.f.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "deep state spool file shorter than written",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
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

    fn content(d: &DeepState, f: &DeepFile) -> Vec<u8> {
        let mut b = Vec::new();
        d.reader(f).read_to_end(&mut b).unwrap();
        b
    }

    #[test]
    fn a_spooled_deep_state_reads_back_each_file_and_leaves_no_file_behind() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("bundles");
        let files: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| {
                (
                    format!("deep/f{i}.txt"),
                    vec![b'a' + i as u8; 70_000 * i + 1],
                )
            })
            .chain([("deep/empty.txt".to_string(), Vec::new())])
            .collect();
        for mut d in [DeepState::spooled_in(&spool_dir), DeepState::in_memory()] {
            for (n, b) in &files {
                d.add(n.clone(), b);
            }
            assert_eq!(d.files.len(), files.len());
            assert_eq!(
                d.bytes(),
                files.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
            );
            // Read out of order, twice: a read does not move the next file.
            for f in d.files.iter().rev().chain(&d.files) {
                let want = &files.iter().find(|(n, _)| *n == f.name).unwrap().1;
                assert_eq!(&content(&d, f), want, "{}", f.name);
                let hex: String = Sha256::digest(want)
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect();
                assert_eq!(f.sha256, hex);
            }
            // Added after reads: appended, not written over the first.
            d.add("deep/late.txt", b"late");
            assert_eq!(content(&d, d.files.last().unwrap()), b"late");
            assert_eq!(content(&d, &d.files[1]), files[1].1);
        }
        // The spool is unlinked: nothing in the directory, even while held.
        let held = DeepState::spooled_in(&spool_dir);
        assert!(matches!(held.spool, Spool::File { .. }));
        assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
    }

    #[test]
    fn without_a_spool_file_the_deep_state_stays_in_memory() {
        // A directory that cannot be made.
        let mut d = DeepState::spooled_in(Path::new("/proc/hvflight-no-such-dir/bundles"));
        assert!(matches!(d.spool, Spool::Memory(_)));
        d.add("deep/x.txt", b"x");
        assert_eq!(content(&d, &d.files[0]), b"x");
        // A spool file that takes nothing (ENOSPC from the first byte).
        let full = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut d = DeepState {
            spool: Spool::File { f: full, len: 0 },
            ..Default::default()
        };
        d.add("deep/y.txt", b"yy");
        assert!(matches!(d.spool, Spool::Memory(_)));
        assert_eq!(content(&d, &d.files[0]), b"yy");
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
