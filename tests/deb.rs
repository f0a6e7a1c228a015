//! The Debian package as an operator installs it (needs root: it installs,
//! removes and purges the package on this machine). `make deb` builds it
//! (release build; this test packages the debug build, see build_deb; man pages and completions from the CLI, cargo-deb);
//! lintian finds no errors; `dpkg -i` installs it and the installed binary,
//! config and unit work; `dpkg -r` keeps the flight-recorder data and the
//! config; `dpkg -P` deletes them. The package is purged at the end whatever
//! happens, and a group this test made the package create is deleted, so the
//! machine is left as it was.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::free_port;

const STATE: &str = "/var/lib/hvflight";
const CONF: &str = "/etc/hvflight/hvflight.toml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sh(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn installed() -> bool {
    let (_, out, _) = sh(Command::new("dpkg-query").args(["-W", "-f=${Status}", "hvflight"]));
    out.contains("install ok installed")
}

fn known_to_dpkg() -> bool {
    // "deinstall ok config-files" after -r, nothing after -P.
    let (code, out, _) = sh(Command::new("dpkg-query").args(["-W", "-f=${Status}", "hvflight"]));
    code == 0 && !out.contains("not-installed") && !out.is_empty()
}

/// dpkg, retried while another dpkg/apt (another test run, install-deps)
/// holds the lock.
fn dpkg(args: &[&str]) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = sh(Command::new("dpkg").args(args));
        let locked = r.2.contains("lock") && (r.2.contains("frontend") || r.2.contains("locked"));
        if r.0 == 0 || !locked || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

fn group_exists(name: &str) -> bool {
    matches!(nix::unistd::Group::from_name(name), Ok(Some(_)))
}

/// Serialises this test across worktrees and runs: two of them would
/// install and purge the same package under each other.
// Held for its flock: released when the file closes.
struct MachineLock(#[allow(dead_code)] std::fs::File);

impl MachineLock {
    fn take() -> MachineLock {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/hvflight-deb-test.lock")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(1800);
        use std::os::fd::AsRawFd;
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            assert!(
                Instant::now() < deadline,
                "another package test holds the machine for 30 min"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        MachineLock(f)
    }
}

/// Purges the package (also on panic) and deletes the group when this test
/// made it appear.
struct Cleanup {
    group_was_there: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if known_to_dpkg() {
            let (code, out, err) = dpkg(&["-P", "hvflight"]);
            if code != 0 {
                eprintln!("cleanup: dpkg -P hvflight failed: {out}{err}");
            }
        }
        let _ = std::fs::remove_dir_all(STATE);
        if !self.group_was_there && group_exists("hvflight") {
            let _ = sh(Command::new("groupdel").arg("hvflight"));
        }
    }
}

fn build_deb() -> PathBuf {
    let t0 = Instant::now();
    // The debug build `make test` already made (DEB_PROFILE=dev): the test
    // is about the package, and a second, release build would cost CI
    // minutes. Operators' `make deb` packages the release build.
    let (code, out, err) = sh(Command::new("make")
        .args(["deb", "DEB_PROFILE=dev"])
        .current_dir(repo()));
    assert_eq!(code, 0, "make deb failed:\n{out}\n{err}");
    let name = format!("hvflight_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    let deb = repo().join("target/debian").join(&name);
    assert!(deb.is_file(), "{name} not built:\n{out}");
    println!("make deb: {:.0} s", t0.elapsed().as_secs_f64());
    deb
}

fn check_contents(deb: &Path) {
    let (_, list, _) = sh(Command::new("dpkg-deb").arg("-c").arg(deb));
    for f in [
        "./usr/bin/hvflight",
        "./etc/hvflight/hvflight.toml",
        "./usr/lib/systemd/system/hvflight.service",
        "./usr/share/man/man1/hvflight.1.gz",
        "./usr/share/man/man1/hvflight-tail.1.gz",
        "./usr/share/man/man1/hvflight-config-check.1.gz",
        "./usr/share/bash-completion/completions/hvflight",
        "./usr/share/zsh/vendor-completions/_hvflight",
        "./usr/share/fish/vendor_completions.d/hvflight.fish",
        "./usr/share/doc/hvflight/copyright",
        "./usr/share/doc/hvflight/changelog.Debian.gz",
        "./usr/share/doc/hvflight/operator-guide.md",
        "./usr/share/doc/hvflight/runbook.md",
        "./usr/share/hvflight/dashboards/hvflight.rules.yml",
        "./usr/share/hvflight/dashboards/hvflight-fleet.json",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} missing from the package:\n{list}"
        );
    }
    // The hidden generator is not documented as a command.
    assert!(!list.contains("hvflight-generate"), "{list}");
    let (_, info, _) = sh(Command::new("dpkg-deb").arg("-I").arg(deb));
    assert!(
        info.contains("Depends:") && info.contains("libvirt0"),
        "{info}"
    );
    assert!(info.contains(" conffiles"), "{info}");
    let (_, pkg, _) = sh(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Package"));
    assert_eq!(pkg.trim(), "hvflight");
    // The package's changelog names the version Cargo builds.
    let changelog = std::fs::read_to_string(repo().join("packaging/debian/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("hvflight ({}-1) ", env!("CARGO_PKG_VERSION"))),
        "packaging/debian/changelog does not start with this version"
    );
}

fn lintian(deb: &Path) {
    let (code, out, err) = sh(Command::new("lintian")
        .args([
            "--fail-on",
            "error",
            "--display-info",
            "--no-tag-display-limit",
        ])
        .arg(deb));
    // Listed in the test output (cargo test -- --nocapture shows them).
    println!("lintian (exit {code}):\n{out}{err}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty() && code == 0,
        "lintian errors:\n{out}{err}"
    );
}

fn installed_unit() -> PathBuf {
    let (_, list, _) = sh(Command::new("dpkg").args(["-L", "hvflight"]));
    PathBuf::from(
        list.lines()
            .find(|l| l.ends_with("/systemd/system/hvflight.service"))
            .unwrap_or_else(|| panic!("no unit installed:\n{list}")),
    )
}

fn check_installed() {
    assert!(installed());
    assert!(
        group_exists("hvflight"),
        "postinst did not create the group"
    );
    let st = std::fs::metadata(STATE).expect("postinst creates /var/lib/hvflight");
    assert_eq!(st.permissions().mode() & 0o7777, 0o750);
    assert_eq!((st.uid(), st.gid()), (0, 0));
    // Enabled (deb-systemd-helper makes the link also where systemd does
    // not run; it is started only where it does).
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/multi-user.target.wants/hvflight.service")
            .is_ok(),
        "unit not enabled"
    );
    let (code, out, err) = sh(Command::new("/usr/bin/hvflight").arg("--version"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("hvflight {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, err) = sh(Command::new("/usr/bin/hvflight").args(["config", "check", CONF]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");
    assert!(
        err.is_empty(),
        "config check warns on the installed files: {err}"
    );
    // What ExecStartPre runs.
    let unit = installed_unit();
    let text = std::fs::read_to_string(&unit).unwrap();
    let pre = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("ExecStartPre");
    let argv: Vec<&str> = pre.split_whitespace().collect();
    let (code, out, err) = sh(Command::new(argv[0]).args(&argv[1..]));
    assert_eq!(code, 0, "ExecStartPre {pre}: {out}{err}");
    // systemd-analyze exits 0 on unknown keys and bad values: stderr must
    // be empty. It also checks the man page in Documentation= and the binary.
    let (code, out, err) = sh(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(
        code == 0 && err.trim().is_empty(),
        "systemd-analyze verify {}: exit {code}\n{out}{err}",
        unit.display()
    );
    let (code, _, err) = sh(Command::new("man").args(["-w", "hvflight-tail"]));
    assert_eq!(code, 0, "man page not found: {err}");
}

/// The installed agent writes a real store under /var/lib/hvflight (host
/// namespace, read-only sampling, its own socket and metrics port).
fn record_something() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nmetrics_listen = \"127.0.0.1:{}\"\nsocket = \"{}\"\n",
            free_port(),
            dir.path().join("s.sock").display()
        ),
    )
    .unwrap();
    let (code, out, err) = sh(Command::new("/usr/bin/hvflight")
        .args([
            "run",
            "--count",
            "5",
            "--interval-ms",
            "100",
            "--libvirt-uri",
            "test:///default",
            "--config",
        ])
        .arg(&cfg));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        std::fs::read_dir(format!("{STATE}/store")).unwrap().count() > 0,
        "no store written"
    );
    // A bundle and a spooled upload, as the agent leaves them.
    for d in ["bundles", "spool"] {
        std::fs::create_dir_all(format!("{STATE}/{d}")).unwrap();
        std::fs::write(format!("{STATE}/{d}/evidence.tar.zst"), b"keep me").unwrap();
    }
}

#[test]
fn deb_builds_lints_installs_removes_and_purges_needs_root() {
    let _lock = MachineLock::take();
    assert!(
        !known_to_dpkg() && !Path::new(STATE).exists() && !Path::new(CONF).exists(),
        "hvflight is already installed (or its files are there) on this machine; \
         this test installs and purges the package, so it refuses to run"
    );
    let _cleanup = Cleanup {
        group_was_there: group_exists("hvflight"),
    };
    let deb = build_deb();
    check_contents(&deb);
    lintian(&deb);

    let (code, out, err) = dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(code, 0, "dpkg -i:\n{out}{err}");
    check_installed();
    record_something();

    let (code, out, err) = dpkg(&["-r", "hvflight"]);
    assert_eq!(code, 0, "dpkg -r:\n{out}{err}");
    assert!(!Path::new("/usr/bin/hvflight").exists());
    assert!(Path::new(CONF).exists(), "remove deleted the conffile");
    assert!(
        std::fs::read_dir(format!("{STATE}/store")).unwrap().count() > 0,
        "remove deleted the store"
    );
    for d in ["bundles", "spool"] {
        assert_eq!(
            std::fs::read(format!("{STATE}/{d}/evidence.tar.zst")).unwrap(),
            b"keep me",
            "remove deleted {d}/"
        );
    }

    let (code, out, err) = dpkg(&["-P", "hvflight"]);
    assert_eq!(code, 0, "dpkg -P:\n{out}{err}");
    assert!(!known_to_dpkg(), "dpkg still knows hvflight after purge");
    assert!(!Path::new(STATE).exists(), "purge left {STATE}");
    assert!(!Path::new(CONF).exists(), "purge left the conffile");
    assert!(
        !Path::new("/etc/hvflight").exists(),
        "purge left /etc/hvflight"
    );
    for link in [
        "/etc/systemd/system/multi-user.target.wants/hvflight.service",
        "/etc/systemd/system/hvflight.service",
    ] {
        assert!(
            std::fs::symlink_metadata(link).is_err(),
            "purge left {link}"
        );
    }
}
