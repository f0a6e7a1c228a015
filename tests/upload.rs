//! Bundles leaving the node, against a real OpenStack Swift (s3api +
//! tempauth) on 127.0.0.1 (tests/common/swift.rs): a 52 MiB bundle
//! multipart and read back byte for byte; a store that is down when the
//! bundle is made and up two minutes later, with an agent restart in
//! between, and nothing sent twice; the store killed mid-upload and the
//! upload resumed; wrong credentials, a missing bucket, an untrusted TLS
//! certificate and a world-readable credentials file reported, the bundle
//! kept and retried.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::swift::{big_bundle, config, Swift, BUCKET, SECRET_KEY};
use hvflight::bundle::verify;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hvflight")
}

struct Agent {
    child: Child,
    state: PathBuf,
}

impl Agent {
    /// `hvflight run` on `state` with `state/hvflight.toml`; log appended to state/agent.log.
    fn start(state: &Path) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join("agent.log"))
            .unwrap();
        let child = Command::new(bin())
            .args([
                "run",
                "--interval-ms",
                "200",
                "--libvirt-uri",
                "test:///default",
            ])
            .arg("--config")
            .arg(state.join("hvflight.toml"))
            .arg("--state-dir")
            .arg(state)
            .arg("--socket")
            .arg(state.join("s.sock"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let a = Agent {
            child,
            state: state.to_path_buf(),
        };
        wait_until(Duration::from_secs(60), "agent answers status", || {
            a.status().is_object().then_some(())
        });
        a
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(bin())
            .args(["status", "--json", "--socket"])
            .arg(self.state.join("s.sock"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn trigger(&self, reason: &str) -> (String, PathBuf) {
        self.trigger_case(reason, &[])
    }

    fn trigger_case(&self, reason: &str, extra: &[&str]) -> (String, PathBuf) {
        let out = Command::new(bin())
            .args(["trigger", "--reason", reason])
            .args(extra)
            .arg("--socket")
            .arg(self.state.join("s.sock"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "trigger: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8(out.stdout).unwrap();
        let (id, p) = s.trim().split_once(' ').unwrap();
        (id.to_string(), PathBuf::from(p))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The spool entry of `bundle` (with or without a case).
fn spool_entry(state: &Path, bundle: &Path) -> Option<serde_json::Value> {
    let name = bundle.file_name()?.to_string_lossy().to_string();
    std::fs::read_dir(state.join("spool"))
        .ok()?
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|f| std::fs::read(f.path()).ok())
        .filter_map(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .find(|e| e["bundle"] == name.as_str())
}

fn successful(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains(" 200 ")).collect()
}

fn run_hvflight(args: &[&str], state: &Path) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(state.join("hvflight.toml"))
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap()
}

#[test]
fn a_52_mib_bundle_goes_up_multipart_and_reads_back_byte_for_byte() {
    let swift = Swift::start_new(false);
    swift.make_bucket(BUCKET);
    let state = tempfile::tempdir().unwrap();
    let creds = swift.credentials_file(state.path(), SECRET_KEY);
    std::fs::write(
        state.path().join("hvflight.toml"),
        config(&swift, &creds, "bandwidth_limit_bytes_per_s = 0\n"),
    )
    .unwrap();
    let bundle = big_bundle(&state.path().join("bundles"), "node-a", 52);
    let m = verify::manifest(&bundle).unwrap();
    let out = run_hvflight(
        &["bundle", "upload", &m.incident.id, "--case", "SR-4711"],
        state.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    let name = bundle.file_name().unwrap().to_string_lossy().to_string();
    let key = format!("node-a/{}/case-SR-4711/{name}", &m.incident.ts[..10]);
    assert!(
        stdout.contains(&format!("uploaded: s3://{BUCKET}/{key}")),
        "{stdout}"
    );
    // Byte for byte, and the case is in the manifest of what was uploaded.
    let local = std::fs::read(&bundle).unwrap();
    assert!(local.len() >= 52 << 20);
    let (remote, etag) = swift.get(BUCKET, &key);
    assert!(remote == local, "object differs from the local bundle");
    assert!(etag.trim_matches('"').ends_with("-11"), "ETag {etag}");
    let copy = state.path().join("downloaded.tar.zst");
    std::fs::write(&copy, &remote).unwrap();
    let (m2, problems) = verify::verify(&copy).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(m2.incident.case, "SR-4711");
    // Multipart: 11 parts of 5 MiB, each sent once.
    let parts = swift.requests("PUT", BUCKET, &key);
    let ok_parts: Vec<_> = successful(&parts)
        .into_iter()
        .filter(|l| l.contains("partNumber"))
        .collect();
    assert_eq!(ok_parts.len(), 11, "{parts:#?}");
    // `bundle list` says where it went; a second upload sends nothing.
    let list = run_hvflight(&["bundle", "list"], state.path());
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains(&format!("uploaded s3://{BUCKET}/{key}")),
        "{list}"
    );
    let again = run_hvflight(
        &["bundle", "upload", &m.incident.id, "--case", "SR-4711"],
        state.path(),
    );
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already uploaded"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(swift.requests("PUT", BUCKET, &key).len(), parts.len());
}

#[test]
fn store_down_when_the_bundle_is_made_and_up_two_minutes_later_gets_it_once_across_a_restart() {
    let mut swift = Swift::layout(false); // not running yet
    let state = tempfile::tempdir().unwrap();
    let creds = swift.credentials_file(state.path(), SECRET_KEY);
    let metrics_port = common::free_port();
    std::fs::write(
        state.path().join("hvflight.toml"),
        config(&swift, &creds, "").replace(
            "metrics_listen = \"\"",
            &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        ),
    )
    .unwrap();
    let a1 = Agent::start(state.path());
    let (id, bundle) = a1.trigger("uplink lost; the object store is unreachable too");
    let made = Instant::now();
    // It fails, says why, keeps the bundle and retries.
    let st = wait_until(Duration::from_secs(60), "two failed attempts", || {
        let st = a1.status();
        (st["upload"]["failures_total"].as_u64().unwrap_or(0) >= 2).then_some(st)
    });
    let err = st["upload"]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.contains(&swift.proxy_port.to_string()) && err.contains("unreachable"),
        "{err}"
    );
    assert_eq!(st["upload"]["spool"]["pending"], 1, "{st}");
    assert!(bundle.exists());
    let list = run_hvflight(&["bundle", "list"], state.path());
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains(&id) && list.contains("failed attempt"),
        "{list}"
    );
    assert!(a1.log().contains("upload failed"), "{}", a1.log());
    // The agent dies and comes back while the store is still down.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(made.elapsed()));
    a1.kill();
    let a2 = Agent::start(state.path());
    // The store comes back two minutes after the bundle was made.
    std::thread::sleep(Duration::from_secs(120).saturating_sub(made.elapsed()));
    swift.start();
    swift.make_bucket(BUCKET);
    let up = Instant::now();
    let st = wait_until(Duration::from_secs(120), "uploaded", || {
        let st = a2.status();
        (st["upload"]["spool"]["uploaded"] == 1 && st["upload"]["spool"]["pending"] == 0)
            .then_some(st)
    });
    eprintln!(
        "uploaded {:.1} s after the store came back; status: {}",
        up.elapsed().as_secs_f64(),
        st["upload"]
    );
    let entry = spool_entry(state.path(), &bundle).unwrap();
    let key = entry["key"].as_str().unwrap().to_string();
    let objects = swift.list(BUCKET);
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(objects[0].0, key);
    assert_eq!(swift.get(BUCKET, &key).0, std::fs::read(&bundle).unwrap());
    assert_eq!(
        successful(&swift.requests("PUT", BUCKET, &key)).len(),
        1,
        "{:#?}",
        swift.requests("PUT", BUCKET, &key)
    );
    // Metrics agree.
    let metrics = wait_until(Duration::from_secs(30), "metrics show the upload", || {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")])
            .output()
            .ok()?;
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        t.contains("hvflight_uploads_total 1").then_some(t)
    });
    for m in [
        "hvflight_spool_bundles 0",
        "hvflight_spool_bytes 0",
        "hvflight_upload_failures_total",
        "hvflight_upload_last_success_timestamp_seconds",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    // Another restart sends nothing again.
    drop(a2);
    let a3 = Agent::start(state.path());
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(a3.status()["upload"]["spool"]["uploaded"], 1);
    assert_eq!(swift.list(BUCKET).len(), 1);
    assert_eq!(successful(&swift.requests("PUT", BUCKET, &key)).len(), 1);
}

#[test]
fn store_killed_mid_upload_and_agent_killed_too_the_upload_resumes_and_the_object_is_right() {
    let mut swift = Swift::start_new(false);
    swift.make_bucket(BUCKET);
    let state = tempfile::tempdir().unwrap();
    let creds = swift.credentials_file(state.path(), SECRET_KEY);
    std::fs::write(
        state.path().join("hvflight.toml"),
        config(&swift, &creds, "bandwidth_limit_bytes_per_s = 8388608\n"),
    )
    .unwrap();
    // Made before the agent starts: the agent finds it at start and queues it.
    let bundle = big_bundle(&state.path().join("bundles"), "node-b", 52);
    let a1 = Agent::start(state.path());
    let entry = wait_until(Duration::from_secs(120), "three parts uploaded", || {
        spool_entry(state.path(), &bundle).filter(|e| {
            e["multipart"]["parts"]
                .as_array()
                .is_some_and(|p| p.len() >= 3)
        })
    });
    let upload_id = entry["multipart"]["upload_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = entry["key"].as_str().unwrap().to_string();
    swift.stop();
    let st = wait_until(Duration::from_secs(60), "the failure reported", || {
        let st = a1.status();
        (st["upload"]["failures_total"].as_u64().unwrap_or(0) >= 1).then_some(st)
    });
    eprintln!("while the store is down: {}", st["upload"]);
    a1.kill();
    let entry = spool_entry(state.path(), &bundle).unwrap();
    let done = entry["multipart"]["parts"].as_array().unwrap().len();
    assert!((3..11).contains(&done), "{entry}");
    assert_eq!(entry["multipart"]["upload_id"], upload_id.as_str());
    swift.start();
    let a2 = Agent::start(state.path());
    wait_until(
        Duration::from_secs(120),
        "uploaded after the restarts",
        || spool_entry(state.path(), &bundle).filter(|e| e["state"] == "uploaded"),
    );
    assert!(
        a2.log().contains("resuming multipart upload"),
        "{}",
        a2.log()
    );
    let (remote, etag) = swift.get(BUCKET, &key);
    assert!(remote == std::fs::read(&bundle).unwrap(), "object differs");
    assert!(etag.trim_matches('"').ends_with("-11"), "{etag}");
    // Resumed, not restarted: every part landed once, all in the same upload.
    let parts: Vec<String> = successful(&swift.requests("PUT", BUCKET, &key))
        .into_iter()
        .filter(|l| l.contains("partNumber"))
        .cloned()
        .collect();
    assert_eq!(parts.len(), 11, "{parts:#?}");
    assert!(
        parts
            .iter()
            .all(|l| l.contains(upload_id.trim_end_matches('='))),
        "{parts:#?} vs {upload_id}"
    );
    assert_eq!(swift.list(BUCKET).len(), 1);
}

/// Agent + trigger against a store that refuses; returns once the agent has
/// failed twice with an error containing `marker`, after checking the bundle
/// is kept and the log says so.
fn fails_clearly(a: &Agent, marker: &str) -> PathBuf {
    fails_clearly_case(a, marker, &[])
}

fn fails_clearly_case(a: &Agent, marker: &str, trigger_args: &[&str]) -> PathBuf {
    let (_, bundle) = a.trigger_case("upload failure test", trigger_args);
    let st = wait_until(Duration::from_secs(90), "two failed attempts", || {
        let st = a.status();
        (st["upload"]["failures_total"].as_u64().unwrap_or(0) >= 2).then_some(st)
    });
    let err = st["upload"]["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains(marker),
        "status says {err:?}, expected {marker:?}"
    );
    assert_eq!(st["upload"]["spool"]["pending"], 1, "{}", st["upload"]);
    assert!(bundle.exists(), "bundle kept");
    let entry = spool_entry(&a.state, &bundle).unwrap();
    assert!(entry["attempts"].as_u64().unwrap() >= 2, "{entry}");
    assert!(
        a.log().contains(marker),
        "log lacks {marker:?}:\n{}",
        a.log()
    );
    let text = Command::new(bin())
        .args(["status", "--socket"])
        .arg(a.state.join("s.sock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("upload: LAST ERROR") && text.contains(marker),
        "{text}"
    );
    bundle
}

fn uploaded_soon(a: &Agent, swift: &Swift, bundle: &Path) {
    wait_until(Duration::from_secs(90), "uploaded after the fix", || {
        spool_entry(&a.state, bundle).filter(|e| e["state"] == "uploaded")
    });
    let key = spool_entry(&a.state, bundle).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(swift.get(BUCKET, &key).0, std::fs::read(bundle).unwrap());
}

#[test]
fn wrong_credentials_are_reported_the_bundle_kept_and_retried() {
    let swift = Swift::start_new(false);
    swift.make_bucket(BUCKET);
    let state = tempfile::tempdir().unwrap();
    let creds = swift.credentials_file(state.path(), "not-the-secret");
    std::fs::write(
        state.path().join("hvflight.toml"),
        config(&swift, &creds, ""),
    )
    .unwrap();
    let a = Agent::start(state.path());
    let bundle = fails_clearly(&a, "SignatureDoesNotMatch");
    assert!(a.log().contains("wrong credentials?"));
    // Fixed in place: the next attempt reads the file again.
    swift.credentials_file(state.path(), SECRET_KEY);
    uploaded_soon(&a, &swift, &bundle);
}

#[test]
fn a_missing_bucket_is_reported_the_bundle_kept_and_retried() {
    let swift = Swift::start_new(false);
    let state = tempfile::tempdir().unwrap();
    let creds = swift.credentials_file(state.path(), SECRET_KEY);
    std::fs::write(
        state.path().join("hvflight.toml"),
        config(&swift, &creds, ""),
    )
    .unwrap();
    let a = Agent::start(state.path());
    // Taken with a case label: it is in the manifest and in the key.
    let bundle = fails_clearly_case(&a, "NoSuchBucket", &["--case", "INC-77"]);
    assert_eq!(verify::manifest(&bundle).unwrap().incident.case, "INC-77");
    swift.make_bucket(BUCKET);
    uploaded_soon(&a, &swift, &bundle);
    let key = swift.list(BUCKET)[0].0.clone();
    assert!(key.contains("/case-INC-77/"), "{key}");
}

#[test]
fn an_untrusted_tls_certificate_is_reported_and_a_custom_ca_fixes_it() {
    let swift = Swift::start_new(true);
    swift.make_bucket(BUCKET);
    let state = tempfile::tempdir().unwrap();
    let creds = swift.credentials_file(state.path(), SECRET_KEY);
    let cfg = config(&swift, &creds, "").replace("allow_http = true\n", "");
    std::fs::write(state.path().join("hvflight.toml"), &cfg).unwrap();
    let a = Agent::start(state.path());
    let bundle = fails_clearly(&a, "certificate");
    a.kill();
    std::fs::write(
        state.path().join("hvflight.toml"),
        format!("{cfg}ca_file = \"{}\"\n", swift.ca_file().display()),
    )
    .unwrap();
    let a = Agent::start(state.path());
    uploaded_soon(&a, &swift, &bundle);
}

#[test]
fn a_world_readable_credentials_file_is_refused_until_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let swift = Swift::start_new(false);
    swift.make_bucket(BUCKET);
    let state = tempfile::tempdir().unwrap();
    let creds = swift.credentials_file(state.path(), SECRET_KEY);
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        state.path().join("hvflight.toml"),
        config(&swift, &creds, ""),
    )
    .unwrap();
    let expected = format!("{} is mode 0644", creds.display());
    // `config check` refuses it too.
    let check = Command::new(bin())
        .args(["config", "check"])
        .arg(state.path().join("hvflight.toml"))
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(&expected),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let a = Agent::start(state.path());
    let bundle = fails_clearly(&a, &expected);
    // So does `bundle upload`, and the bundle stays queued.
    let name = bundle.file_name().unwrap().to_string_lossy().to_string();
    let out = run_hvflight(&["bundle", "upload", &name], state.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&expected) && err.contains("stays queued"),
        "{err}"
    );
    assert!(swift.list(BUCKET).is_empty());
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    uploaded_soon(&a, &swift, &bundle);
}
