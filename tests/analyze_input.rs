//! `hvflight bundle analyze` on bad input: truncated and corrupt bundles,
//! an unknown format version, entries with `..` or absolute paths,
//! symlinks, decompression bombs. Each gives a clear error that names the
//! entry, writes nothing (not even --out), and stays within bounded memory
//! (peak RSS of the real process, from wait4).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hvflight::analyze::fixture::Scenario;

mod common;

const INCIDENT_NS: i64 = 1_425_004_200_000_000_000;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A real, good bundle (the F3 replay).
fn good_bundle(dir: &Path) -> PathBuf {
    let base = std::fs::read_to_string(fixtures().join("replay/base-sample.json")).unwrap();
    let sc = Scenario::load(&fixtures().join("replay/F3"), &base, INCIDENT_NS).unwrap();
    let p = dir.join("good.tar.zst");
    sc.write_bundle(&p, "good", "test").unwrap();
    p
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    max_rss_kib: i64,
}

/// Runs the analyzer in `cwd` with `--out cwd/out/report.html`, and
/// measures the child's peak RSS.
fn analyze(bundle: &Path, cwd: &Path, config: Option<&str>) -> Run {
    let out_dir = cwd.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(cwd)
        .args(["bundle", "analyze", "--format", "html", "--out"])
        .arg(out_dir.join("report.html"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cfg = cwd.join("hvflight.toml");
    std::fs::write(&cfg, config.unwrap_or("")).unwrap();
    cmd.arg("--config").arg(&cfg);
    cmd.arg(bundle);
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let out = {
        // Read the pipes on threads, then reap with wait4 for the rusage.
        let mut c = child;
        let mut so = c.stdout.take().unwrap();
        let mut se = c.stderr.take().unwrap();
        let t1 = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut so, &mut s).unwrap();
            s
        });
        let t2 = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut se, &mut s).unwrap();
            s
        });
        let mut status = 0;
        // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        assert_eq!(r, pid);
        std::mem::forget(c); // reaped above
        (
            std::process::ExitStatus::from_raw(status),
            t1.join().unwrap(),
            t2.join().unwrap(),
            ru.ru_maxrss,
        )
    };
    Run {
        ok: out.0.success(),
        stdout: out.1,
        stderr: out.2,
        max_rss_kib: out.3,
    }
}

fn files_under(d: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(x) = stack.pop() {
        for e in std::fs::read_dir(&x).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push(p.strip_prefix(d).unwrap().display().to_string());
            }
        }
    }
    v.sort();
    v
}

/// The error case: fails, says `needle`, and wrote nothing beside what was there.
fn refused(bundle: &Path, dir: &Path, needle: &[&str], config: Option<&str>) -> Run {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let before = files_under(dir);
    let r = analyze(bundle, &work, config);
    assert!(!r.ok, "accepted: {}", r.stdout);
    for n in needle {
        assert!(r.stderr.contains(n), "stderr lacks {n:?}: {}", r.stderr);
    }
    let after: Vec<String> = files_under(dir)
        .into_iter()
        .filter(|f| f != "work/hvflight.toml")
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|f| f != "work/hvflight.toml")
        .collect();
    assert_eq!(after, before, "something was written");
    assert!(r.max_rss_kib < 300 * 1024, "peak RSS {} KiB", r.max_rss_kib);
    r
}

/// (name, type, data, link target) of one raw tar entry.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], Option<&'a [u8]>);

/// A tar.zst with raw headers (paths the tar crate's builder would refuse).
fn raw_bundle(path: &Path, entries: &[RawEntry]) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(zstd::Encoder::new(f, 3).unwrap().auto_finish());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                g.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.finish().unwrap();
}

fn manifest(version: u32) -> Vec<u8> {
    format!(
        r#"{{"format_version":{version},"agent_version":"0.1.0","host":"h","incident":{{"id":"x","trigger":"manual","reason":"t","ts_unix_ns":0,"ts":"1970-01-01T00:00:00Z"}},"window_since":"","window_until":"","complete":true,"entries":[],"commands":[]}}"#
    )
    .into_bytes()
}

#[test]
fn a_good_bundle_gives_a_report_at_out_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let b = good_bundle(d.path());
    let work = d.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let r = analyze(&b, &work, None);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        files_under(d.path()),
        vec!["good.tar.zst", "work/hvflight.toml", "work/out/report.html"]
    );
}

#[test]
fn truncated_bundle_is_an_error_naming_the_entry() {
    let d = tempfile::tempdir().unwrap();
    let b = good_bundle(d.path());
    let bytes = std::fs::read(&b).unwrap();
    let cut = d.path().join("cut.tar.zst");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(&b).unwrap();
    refused(
        &cut,
        d.path(),
        &[
            "cut.tar.zst",
            "history/records.jsonl",
            "truncated or corrupt",
        ],
        None,
    );
}

#[test]
fn corrupt_bundle_is_an_error_naming_the_entry() {
    let d = tempfile::tempdir().unwrap();
    let b = good_bundle(d.path());
    let mut bytes = std::fs::read(&b).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&b, &bytes).unwrap();
    refused(
        &b,
        d.path(),
        &["good.tar.zst", "truncated or corrupt"],
        None,
    );
}

#[test]
fn not_a_bundle_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("notes.txt");
    std::fs::write(&p, "just text\n").unwrap();
    refused(&p, d.path(), &["not a hvflight bundle"], None);
}

#[test]
fn unknown_format_version_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v99.tar.zst");
    raw_bundle(
        &p,
        &[(
            b"manifest.json",
            tar::EntryType::Regular,
            &manifest(99),
            None,
        )],
    );
    refused(
        &p,
        d.path(),
        &["format version 99", "reads version 1"],
        None,
    );
}

#[test]
fn parent_dir_entry_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dotdot.tar.zst");
    raw_bundle(
        &p,
        &[
            (
                b"manifest.json",
                tar::EntryType::Regular,
                &manifest(1),
                None,
            ),
            (
                b"deep/../../evil.sh",
                tar::EntryType::Regular,
                b"#!/bin/sh\necho owned\n",
                None,
            ),
        ],
    );
    refused(&p, d.path(), &["\"deep/../../evil.sh\"", "`..`"], None);
}

#[test]
fn absolute_entry_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("abs.tar.zst");
    let target = format!("/tmp/hvflight-evil-{}", std::process::id());
    raw_bundle(
        &p,
        &[
            (
                b"manifest.json",
                tar::EntryType::Regular,
                &manifest(1),
                None,
            ),
            (target.as_bytes(), tar::EntryType::Regular, b"owned\n", None),
        ],
    );
    refused(&p, d.path(), &[&target, "absolute path"], None);
    assert!(!Path::new(&target).exists());
}

#[test]
fn symlink_entry_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("link.tar.zst");
    raw_bundle(
        &p,
        &[
            (
                b"manifest.json",
                tar::EntryType::Regular,
                &manifest(1),
                None,
            ),
            (
                b"deep/passwd",
                tar::EntryType::Symlink,
                b"",
                Some(b"/etc/passwd"),
            ),
        ],
    );
    refused(&p, d.path(), &["\"deep/passwd\"", "symbolic link"], None);
    let p = d.path().join("hard.tar.zst");
    raw_bundle(
        &p,
        &[
            (
                b"manifest.json",
                tar::EntryType::Regular,
                &manifest(1),
                None,
            ),
            (
                b"deep/shadow",
                tar::EntryType::Link,
                b"",
                Some(b"/etc/shadow"),
            ),
        ],
    );
    refused(&p, d.path(), &["\"deep/shadow\"", "hard link"], None);
}

/// 284 KiB that expand to 8 GiB (tests/fixtures/bad/make-bombs.sh).
#[test]
fn decompression_bomb_is_refused_by_its_declared_size() {
    let d = tempfile::tempdir().unwrap();
    let r = refused(
        &fixtures().join("bad/bomb-8g.tar.zst"),
        d.path(),
        &[
            "\"deep/proc/net/bonding/bond0\"",
            "8589934592 bytes",
            "max_entry_bytes",
        ],
        None,
    );
    eprintln!("8 GiB bomb: peak RSS {} KiB", r.max_rss_kib);
}

/// With a per-entry cap that lets it in, the total cap stops it while it
/// streams (the kept file itself is capped in memory).
#[test]
fn decompression_bomb_is_stopped_by_the_total_budget() {
    let d = tempfile::tempdir().unwrap();
    let r = refused(
        &fixtures().join("bad/bomb-8g.tar.zst"),
        d.path(),
        &["deep/proc/net/bonding/bond0", "max_total_bytes"],
        Some("[analyze]\nmax_entry_bytes = 17179869184\nmax_total_bytes = 134217728\n"),
    );
    eprintln!("8 GiB bomb, 128 MiB budget: peak RSS {} KiB", r.max_rss_kib);
}

/// A 1 GiB history "line" without a newline: refused at analyze.max_line_bytes.
#[test]
fn endless_history_line_is_refused_at_the_line_cap() {
    let d = tempfile::tempdir().unwrap();
    let r = refused(
        &fixtures().join("bad/line-bomb.tar.zst"),
        d.path(),
        &["history/records.jsonl", "max_line_bytes"],
        None,
    );
    eprintln!("line bomb: peak RSS {} KiB", r.max_rss_kib);
}
