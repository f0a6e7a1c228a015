//! Bundles as an engineer gets them: `hvflight trigger` in the lab, the
//! bundle verified, its contents checked; secrets redacted; a hanging tool,
//! a full disk and a second trigger handled (needs root).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvflight::bundle::verify;
use hvflight::lab::{Lab, LabConfig};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hvflight")
}

struct Agent {
    child: Child,
    dir: PathBuf,
}
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(dir: &Path, config: &str, extra: &[&str], path_env: Option<&str>) -> Agent {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("hvflight.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut c = Command::new(bin());
    c.args(["run", "--interval-ms", "200", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir)
        .arg("--socket")
        .arg(dir.join("s.sock"));
    c.args(extra).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    let a = Agent {
        child: c.spawn().unwrap(),
        dir: dir.to_path_buf(),
    };
    // Up when its control socket answers (1.5 s at least: history to bundle).
    std::thread::sleep(Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(dir.join("s.sock")).is_err()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    a
}

fn trigger(a: &Agent, reason: &str) -> std::process::Output {
    Command::new(bin())
        .args(["trigger", "--reason", reason, "--socket"])
        .arg(a.dir.join("s.sock"))
        .output()
        .unwrap()
}

fn entry(path: &Path, name: &str) -> String {
    let f = std::fs::File::open(path).unwrap();
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == name {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            return s;
        }
    }
    panic!("{name} not in {}", path.display());
}

#[test]
fn trigger_in_the_lab_writes_a_verified_complete_bundle_needs_root() {
    let lab = Lab::start(LabConfig {
        guests: 2,
        traffic: true,
        nova_metadata: true,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = agent(
        dir.path(),
        "[bundle]\nbefore_s = 60\nafter_s = 2\n",
        &["--netns", &lab.hv_ns, "--libvirt-uri", &lab.libvirt_uri()],
        None,
    );
    let t0 = Instant::now();
    let out = trigger(&a, "shinken: tools instances down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("trigger answered in {:?}", t0.elapsed());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (id, path) = stdout.trim().split_once(' ').unwrap();
    let path = PathBuf::from(path);
    assert!(path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .ends_with(&format!("-{id}.tar.zst")));
    let m = verify::manifest(&path).unwrap();
    assert!(
        !m.complete,
        "first bundle is written at once, before the post-window"
    );
    assert_eq!(m.incident.trigger, "manual");
    assert_eq!(m.incident.reason, "shinken: tools instances down");
    // Completed after the post-window, under the same name.
    // (after_s = 2; deep-state commands take longer on a loaded machine.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let (m, problems) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let (m, problems) = verify::verify(&path).unwrap();
        if m.complete || Instant::now() > deadline {
            break (m, problems);
        }
    };
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        m.complete,
        "not completed within 30 s after the post-window"
    );
    assert!(m.samples >= 10, "{} samples", m.samples);
    // History from both sides of the incident.
    let hist = entry(&path, "history/records.jsonl");
    let ts: Vec<i64> = hist
        .lines()
        .filter(|l| l.contains("\"kind\":\"sample\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ts_unix_ns"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        ts.iter().any(|t| *t < m.incident.ts_unix_ns)
            && ts
                .iter()
                .any(|t| *t > m.incident.ts_unix_ns + 1_000_000_000)
    );
    // Deep state from the real tools, inside the lab's namespace.
    let fdb = entry(&path, "deep/bridge-fdb.txt");
    assert!(fdb.contains(&lab.guests[0].mac), "{fdb}");
    assert!(entry(&path, "deep/ip-link.txt").contains("uplink0"));
    for c in &m.commands {
        assert!(c.exit_status.is_some() || !c.error.is_empty(), "{c:?}");
    }
    assert!(m
        .commands
        .iter()
        .any(|c| c.name == "ip-link" && c.exit_status == Some(0)));
    // Domain XML, with the VNC password redacted.
    let xml = entry(&path, "libvirt/guest0.xml");
    assert!(xml.contains(&lab.guests[0].mac));
    assert!(!xml.contains("lab-vnc-secret"), "{xml}");
    // Status names the last incident and its bundle.
    let st = Command::new(bin())
        .args(["status", "--json", "--socket"])
        .arg(a.dir.join("s.sock"))
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["bundles"]["count"], 1);
    assert_eq!(st["bundles"]["last_incident"]["id"], id);
    assert_eq!(
        st["bundles"]["last_incident"]["bundle"],
        path.display().to_string()
    );
    // Listed, shown.
    let list = Command::new(bin())
        .args(["bundle", "list", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains(id));
    let show = Command::new(bin())
        .args(["bundle", "show", id, "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains("shinken: tools instances down"));
}

#[test]
fn verify_catches_a_changed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(
        dir.path(),
        "[bundle]\nbefore_s = 10\nafter_s = 0\ncommand_timeout_ms = 3000\n",
        &["--libvirt-uri", "test:///default"],
        None,
    );
    let out = trigger(&a, "tamper test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .split_once(' ')
            .unwrap()
            .1,
    );
    std::thread::sleep(Duration::from_millis(800));
    let ok = Command::new(bin())
        .args(["bundle", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The bundle is read once, manifest and entries from one stream: the
    // agent replaces a bundle by its complete version, and a verify that
    // opened the path twice compared one file's manifest with the other's
    // entries. A FIFO can be read only once, so it tells.
    let fifo = dir.path().join("once.tar.zst");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let feeder = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            // Blocks until verify opens it; a broken pipe is the reader's business.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes));
        })
    };
    let mut once = Command::new(bin())
        .args(["bundle", "verify"])
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while once.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = once.kill();
            // Unblock a second open of the FIFO so the feeder thread ends.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
            panic!("bundle verify opened the bundle a second time (hung on the FIFO)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let once = once.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    // Rebuild the archive with one entry changed, manifest untouched.
    let f = std::fs::File::open(&path).unwrap();
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
    let bad = dir.path().join("bad.tar.zst");
    let mut b = tar::Builder::new(
        zstd::Encoder::new(std::fs::File::create(&bad).unwrap(), 3)
            .unwrap()
            .auto_finish(),
    );
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if name == "deep/ip-link.txt" {
            data.extend_from_slice(b"tampered\n");
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, &name, &data[..]).unwrap();
    }
    drop(b.into_inner().unwrap());
    let out = Command::new(bin())
        .args(["bundle", "verify"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deep/ip-link.txt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_hanging_tool_is_recorded_and_the_bundle_still_comes_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    // A wedged `nft` (as on a host whose netlink is stuck).
    std::fs::write(fake.join("nft"), "#!/bin/sh\nsleep 60\n").unwrap();
    std::fs::set_permissions(
        fake.join("nft"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path_env = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        fake.display()
    );
    let a = agent(
        &dir.path().join("state"),
        "[bundle]\nbefore_s = 10\nafter_s = 0\ncommand_timeout_ms = 1000\n",
        &["--libvirt-uri", "test:///default"],
        Some(&path_env),
    );
    let t0 = Instant::now();
    let out = trigger(&a, "hang test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let path = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .split_once(' ')
            .unwrap()
            .1,
    );
    let m = verify::manifest(&path).unwrap();
    let nft = m.commands.iter().find(|c| c.name == "nft-ruleset").unwrap();
    assert!(nft.timed_out && nft.exit_status.is_none(), "{nft:?}");
    assert!(nft.duration_ms >= 1000 && nft.duration_ms < 5000, "{nft:?}");
    assert!(m
        .commands
        .iter()
        .any(|c| c.name == "ip-link" && c.exit_status == Some(0)));
}

#[test]
fn two_triggers_at_once_give_two_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(
        dir.path(),
        "[bundle]\nbefore_s = 10\nafter_s = 0\ncommand_timeout_ms = 3000\n",
        &["--libvirt-uri", "test:///default"],
        None,
    );
    let sock = a.dir.join("s.sock");
    let s2 = sock.clone();
    let other = std::thread::spawn(move || {
        Command::new(bin())
            .args(["trigger", "--reason", "second", "--socket"])
            .arg(&s2)
            .output()
            .unwrap()
    });
    let first = trigger(&a, "first");
    let second = other.join().unwrap();
    assert!(first.status.success() && second.status.success());
    let id1 = String::from_utf8(first.stdout)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let id2 = String::from_utf8(second.stdout)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(id1, id2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        hvflight::bundle::writer::list(&dir.path().join("bundles")).len(),
        2
    );
}

struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn deep_state_spool_filling_its_disk_moves_to_memory_and_loses_nothing_needs_root() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success(),
        "cannot mount a tmpfs for the disk-full test"
    );
    let _guard = Tmpfs(mnt.clone());
    let mut deep = hvflight::bundle::writer::DeepState::spooled_in(&mnt);
    let a = vec![b'a'; 700_000];
    let b: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    deep.add("deep/a.txt", &a);
    // The second does not fit into 1 MiB: written in part, then ENOSPC.
    deep.add("deep/b.txt", &b);
    deep.add("deep/c.txt", b"after");
    for (f, want) in deep.files.iter().zip([&a[..], &b[..], b"after"]) {
        let mut got = Vec::new();
        deep.reader(f).read_to_end(&mut got).unwrap();
        assert!(got == want, "{} differs after the spool filled up", f.name);
    }
    drop(deep);
    // Its file went with it.
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    let st = nix::sys::statvfs::statvfs(&mnt).unwrap();
    assert_eq!(
        st.blocks_free(),
        st.blocks(),
        "the spool's blocks are not freed"
    );
}

#[test]
fn disk_full_leaves_no_bundle_under_its_name_and_retries_when_space_returns_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let _guard = Tmpfs(mnt.clone());
    let cfg = "[store]\nmin_free_bytes = 1048576\nsegment_bytes = 262144\nmax_bytes = 1048576\n[bundle]\nbefore_s = 10\nafter_s = 0\ncommand_timeout_ms = 3000\n";
    let a = agent(
        &mnt.join("state"),
        cfg,
        &["--libvirt-uri", "test:///default"],
        None,
    );
    // Guest disks fill the filesystem.
    let free = nix::sys::statvfs::statvfs(&mnt).unwrap();
    let avail = free.blocks_available() as u64 * free.fragment_size() as u64;
    let filler = mnt.join("guest.img");
    std::fs::write(&filler, vec![0u8; (avail - 1_100_000) as usize]).unwrap();
    let out = trigger(&a, "disk full test");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("free"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundles = mnt.join("state/bundles");
    assert!(
        hvflight::bundle::writer::list(&bundles).is_empty(),
        "a bundle appeared on a full disk"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&bundles)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().ends_with(".tar.zst")),
        "{leftovers:?}"
    );
    // Space returns: the agent retries on its own.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(25);
    while hvflight::bundle::writer::list(&bundles).is_empty() {
        assert!(
            Instant::now() < deadline,
            "bundle not retried after space returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let b = &hvflight::bundle::writer::list(&bundles)[0];
    std::thread::sleep(Duration::from_millis(500));
    assert!(verify::verify(b).unwrap().1.is_empty());
    drop(a);
}

/// A deep-state tool missing (conntrack not installed) and one wedged
/// (nft): both recorded as failed, the bundle still on time; and a second
/// trigger that arrives while the first bundle is still being written
/// (its post-window open) is queued, not lost: both bundles complete.
#[test]
fn a_missing_tool_is_recorded_and_a_trigger_during_a_write_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("nft"), "#!/bin/sh\nsleep 60\n").unwrap();
    std::fs::set_permissions(
        fake.join("nft"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Only these tools exist on this "host"; conntrack and ethtool do not.
    for tool in ["ip", "bridge", "tc", "dmesg", "sh", "sleep"] {
        let real = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not installed"));
        std::os::unix::fs::symlink(real, fake.join(tool)).unwrap();
    }
    let a = agent(
        &dir.path().join("state"),
        "[bundle]\nbefore_s = 10\nafter_s = 3\ncommand_timeout_ms = 1000\n",
        &["--libvirt-uri", "test:///default"],
        Some(&fake.display().to_string()),
    );
    let first = trigger(&a, "first");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let path1 = PathBuf::from(
        String::from_utf8(first.stdout)
            .unwrap()
            .trim()
            .split_once(' ')
            .unwrap()
            .1,
    );
    let m = verify::manifest(&path1).unwrap();
    assert!(!m.complete, "the first bundle's post-window is still open");
    let ct = m
        .commands
        .iter()
        .find(|c| c.name == "conntrack-stats")
        .unwrap();
    assert!(
        !ct.timed_out && ct.exit_status.is_none() && ct.error.contains("cannot start conntrack"),
        "{ct:?}"
    );
    let nft = m.commands.iter().find(|c| c.name == "nft-ruleset").unwrap();
    assert!(nft.timed_out, "{nft:?}");
    // The second trigger, while the first bundle is still being written.
    let second = trigger(&a, "second");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = hvflight::bundle::writer::list(&dir.path().join("state").join("bundles"));
        let done: Vec<bool> = all
            .iter()
            .map(|p| verify::manifest(p).is_ok_and(|m| m.complete))
            .collect();
        if all.len() == 2 && done.iter().all(|d| *d) {
            let reasons: Vec<String> = all
                .iter()
                .map(|p| verify::manifest(p).unwrap().incident.reason)
                .collect();
            assert!(
                reasons.contains(&"first".to_string()) && reasons.contains(&"second".to_string())
            );
            break;
        }
        assert!(Instant::now() < deadline, "{all:?} complete: {done:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
