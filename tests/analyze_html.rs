//! The HTML report rendered by Debian's headless Chromium (no network, a
//! fresh profile): the page is self-contained (no scripts, links, images,
//! fonts or URLs to load), every chart is there as SVG with drawn data, and
//! the screenshot is not blank. The screenshot and the page are kept as
//! test artifacts in target/test-artifacts/ (analyzer-report.png/.html).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hvflight::analyze::fixture::Scenario;

mod common;

const INCIDENT_NS: i64 = 1_425_004_200_000_000_000;

fn artifacts() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs chromium with a deadline; returns stdout.
fn chromium(args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-proxy-server",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromium (Debian package `chromium`, tests/tools/install-deps.sh) must be installed",
        );
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let mut out = out;
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// Polylines (plotters' line series) with at least `min_points` points.
fn polylines_with_data(dom: &str, min_points: usize) -> usize {
    let mut n = 0;
    for part in dom.split("<polyline").skip(1) {
        let Some(i) = part.find("points=\"") else {
            continue;
        };
        let pts = &part[i + 8..];
        let pts = &pts[..pts.find('"').unwrap_or(0)];
        if pts.split_whitespace().count() >= min_points {
            n += 1;
        }
    }
    n
}

#[test]
fn html_report_renders_in_headless_chromium_with_charts() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let base = std::fs::read_to_string(fx.join("replay/base-sample.json")).unwrap();
    let sc = Scenario::load(&fx.join("replay/F1"), &base, INCIDENT_NS).unwrap();
    let bundle = dir.path().join("f1.tar.zst");
    sc.write_bundle(&bundle, "html-test", "replay F1").unwrap();
    let html = artifacts().join("analyzer-report.html");
    let _ = std::fs::remove_file(&html);
    let out = Command::new(common::bin())
        .args(["bundle", "analyze", "--format", "html", "--out"])
        .arg(&html)
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();

    // Self-contained: nothing to fetch.
    for bad in [
        "<script", "<link", "<img", "<iframe", "src=", "@import", "url(", "https://",
    ] {
        assert!(!page.contains(bad), "the page holds {bad:?}");
    }
    let urls: Vec<&str> = page
        .match_indices("http://")
        .map(|(i, _)| &page[i..(i + 30).min(page.len())])
        .filter(|u| !u.starts_with("http://www.w3.org/"))
        .collect();
    assert!(urls.is_empty(), "URLs in the page: {urls:?}");
    assert!(page.contains("[F1]"), "the top finding is on the page");
    for id in [
        "vnic-rates",
        "uplink-rates",
        "drops",
        "conntrack",
        "neighbours",
        "softnet",
    ] {
        assert!(
            page.contains(&format!("id=\"chart-{id}\"")),
            "chart {id} missing"
        );
    }

    // Chromium's DOM: the SVG charts survived parsing, with data drawn.
    let url = format!("file://{}", html.display());
    let dom = chromium(&["--dump-dom".into(), url.clone()]);
    let svgs = dom.matches("<svg").count();
    assert!(svgs >= 6, "{svgs} SVG charts in the DOM");
    let lines = polylines_with_data(&dom, 50);
    assert!(lines >= 8, "{lines} data lines (≥ 50 points) in the DOM");

    // The screenshot is not blank.
    let png = artifacts().join("analyzer-report.png");
    let _ = std::fs::remove_file(&png);
    chromium(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1000,2600".into(),
        "--hide-scrollbars".into(),
        url,
    ]);
    let dec = png::Decoder::new(std::fs::File::open(&png).expect("screenshot written"));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bpp = info.line_size / info.width as usize;
    let px = &buf[..info.buffer_size()];
    let mut colors = std::collections::BTreeSet::new();
    let mut non_white = 0usize;
    for p in px.chunks(bpp) {
        if p[..3] != [255, 255, 255] {
            non_white += 1;
        }
        if colors.len() < 1000 {
            colors.insert((p[0], p[1], p[2]));
        }
    }
    let total = (info.width * info.height) as usize;
    eprintln!(
        "screenshot {}x{}: {:.1} % non-white, {} colours; kept at {}",
        info.width,
        info.height,
        100.0 * non_white as f64 / total as f64,
        colors.len(),
        png.display()
    );
    assert!(non_white * 100 > total, "screenshot nearly blank");
    assert!(colors.len() > 20, "screenshot has {} colours", colors.len());
}
