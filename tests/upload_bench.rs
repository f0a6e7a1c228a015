//! Upload throughput of a 52 MiB bundle to a local Swift (s3api), without a
//! bandwidth limit and under several limits: measured rate vs configured.
//! Numbers, not assertions (the machine is shared and noisy):
//!
//! ```sh
//! cargo test --release --test upload_bench -- --ignored --nocapture
//! ```

mod common;

use std::process::Command;
use std::time::Instant;

use common::swift::{big_bundle, config, Swift, BUCKET, SECRET_KEY};

#[test]
#[ignore]
fn upload_throughput_and_bandwidth_limit() {
    let swift = Swift::start_new(false);
    swift.make_bucket(BUCKET);
    let mib = 1u64 << 20;
    println!("limit (configured)   measured    ratio   wall");
    for limit in [0, 32 * mib, 16 * mib, 8 * mib, 4 * mib] {
        let state = tempfile::tempdir().unwrap();
        let creds = swift.credentials_file(state.path(), SECRET_KEY);
        std::fs::write(
            state.path().join("hvflight.toml"),
            // Default part size (8 MiB) rather than the tests' 5 MiB.
            config(
                &swift,
                &creds,
                &format!("bandwidth_limit_bytes_per_s = {limit}\n"),
            )
            .replace("part_size_bytes = 5242880", "part_size_bytes = 8388608"),
        )
        .unwrap();
        let bundle = big_bundle(&state.path().join("bundles"), "bench", 52);
        let size = std::fs::metadata(&bundle).unwrap().len();
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_hvflight"))
            .args(["bundle", "upload"])
            .arg(&bundle)
            .arg("--config")
            .arg(state.path().join("hvflight.toml"))
            .arg("--state-dir")
            .arg(state.path())
            .output()
            .unwrap();
        let wall = t0.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // "uploaded: … (N bytes in S s, R MiB/s; …)": the upload itself, without start-up.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rate: f64 = stdout
            .split(" s, ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or(size as f64 / mib as f64 / wall);
        let configured = if limit == 0 {
            "none".to_string()
        } else {
            format!("{:.1} MiB/s", limit as f64 / mib as f64)
        };
        let ratio = if limit == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", rate / (limit as f64 / mib as f64))
        };
        println!(
            "{configured:>18}   {rate:>6.2} MiB/s  {ratio:>5}   {wall:.1} s  ({:.1} MiB)",
            size as f64 / mib as f64
        );
    }
}
