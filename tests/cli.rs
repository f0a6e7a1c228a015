//! The command line as an operator uses it: config check, config default,
//! sample --once, and clear errors.

use std::process::Command;

fn hvflight() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hvflight"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_default_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = hvflight().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let p = write(
        &dir,
        "hvflight.toml",
        &String::from_utf8(out.stdout).unwrap(),
    );
    let out = hvflight()
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn config_check_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "bad.toml",
        "[agent]\nbridges = [\"br0\"]\ninterval_ms = -5\n",
    );
    let out = hvflight()
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3: key `agent.interval_ms`", p.display())),
        "{err}"
    );
}

#[test]
fn config_check_flags_unknown_keys_but_agent_only_warns() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "future.toml",
        "[agent]\ninterval_ms = 200\n[collect]\ndisabled = [\"libvirt\"]\nnew_knob = true\n",
    );
    let out = hvflight()
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5: key `collect.new_knob`: unknown key"),
        "{err}"
    );

    // The agent side takes the same file, warns, and still samples.
    let out = hvflight()
        .args(["sample", "--once", "--json", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("collect.new_knob"));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["seq"], 1);
}

#[test]
fn invalid_known_value_stops_the_agent_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "bad.toml", "[agent]\nstate_dir = \"relative/path\"\n");
    let out = hvflight()
        .args(["run", "--count", "1", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2: key `agent.state_dir`: must be an absolute path"),
        "{err}"
    );
}

#[test]
fn explicit_missing_config_file_is_an_error() {
    let out = hvflight()
        .args(["sample", "--once", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}

#[test]
fn unknown_netns_is_a_clear_error() {
    let out = hvflight()
        .args(["sample", "--once", "--netns", "hvf-no-such-ns"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/netns/hvf-no-such-ns"), "{err}");
}

#[test]
fn sample_once_json_is_one_versioned_sample() {
    let out = hvflight()
        .args([
            "sample",
            "--once",
            "--json",
            "--libvirt-uri",
            "test:///default",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    let s: hvflight::sample::Sample = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(s.version, hvflight::sample::SAMPLE_FORMAT_VERSION);
    assert!(s.ts_unix_ns > 0 && s.mono_ns > 0);
    assert!(!s.host.is_empty());
}

#[test]
fn man_pages_and_completions_are_generated_without_the_hidden_command() {
    let dir = tempfile::tempdir().unwrap();
    for what in ["man", "completions"] {
        let out = hvflight()
            .args(["generate", what])
            .arg(dir.path().join(what))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let man = std::fs::read_to_string(dir.path().join("man/hvflight.1")).unwrap();
    assert!(
        man.contains("hvflight\\-tail") || man.contains("hvflight-tail"),
        "{man}"
    );
    let tail = std::fs::read_to_string(dir.path().join("man/hvflight-tail.1")).unwrap();
    assert!(
        tail.contains("events\\-only") || tail.contains("events-only"),
        "{tail}"
    );
    for f in [
        "completions/hvflight.bash",
        "completions/_hvflight",
        "completions/hvflight.fish",
    ] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(text.contains("trigger"), "{f}");
        assert!(!text.contains("generate"), "{f} offers the hidden command");
    }
    assert!(!dir.path().join("man/hvflight-generate.1").exists());
}
