//! The libvirt collector and the libvirt event source against real libvirt:
//! the in-process test driver (tests/fixtures/libvirt/node.xml), a fake
//! libvirtd that accepts and never answers (a hung daemon), and a real
//! libvirtd (session mode, run as `nobody`, everything in a temp dir:
//! nothing of the host's libvirt is touched) that is stopped and restarted.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvflight::agent::EventSource;
use hvflight::collect::libvirt::libvirt_collector;
use hvflight::collect::{CollectError, Collector, Context, Sampler};
use hvflight::sample::link::Link;
use hvflight::sample::{Event, EventKind, Libvirt, Sample};
use virt::connect::Connect;
use virt::domain::Domain;

fn fixture_node() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt/node.xml")
}

fn link(ifindex: u32, name: &str, kind: &str, mac: &str, master: Option<u32>) -> Link {
    Link {
        ifindex,
        name: name.into(),
        kind: kind.into(),
        mac: mac.into(),
        master,
        ..Default::default()
    }
}

/// The host side of node.xml, as the links collector would report it.
fn host_links() -> Vec<Link> {
    vec![
        // A decoy with web-01's host MAC, on another bridge and with a lower
        // ifindex: only the bridge preference keeps it from winning.
        link(3, "stray0", "veth", "fe:54:00:6c:1a:01", Some(9)),
        // The bridge took its lowest port's MAC, which is web-01's tap MAC.
        link(10, "br0", "bridge", "fe:54:00:6c:1a:01", None),
        // web-01's port: its target dev was renamed by the test driver, so
        // it is found by MAC.
        link(11, "vnet3", "tun", "FE:54:00:6C:1A:01", Some(10)),
        // web-02's port is named by its target dev; its MAC says nothing.
        link(12, "tap-web02", "tun", "fe:00:00:00:00:99", Some(10)),
    ]
}

fn sample_with_links() -> Sample {
    let mut s = Sample::new(1, "testhost", hvflight::clock::now());
    s.links = Some(host_links());
    s
}

fn collect(c: &mut Box<dyn Collector>) -> Result<Libvirt, CollectError> {
    let mut s = sample_with_links();
    c.collect(&Context::default(), &mut s)?;
    Ok(s.libvirt.expect("a successful collect fills the section"))
}

/// Collects until it works or `within` passes; returns the section and how
/// many attempts failed first.
fn collect_until_ok(c: &mut Box<dyn Collector>, within: Duration) -> (Libvirt, usize) {
    let deadline = Instant::now() + within;
    let mut failures = 0;
    loop {
        match collect(c) {
            Ok(l) => return (l, failures),
            Err(e) if Instant::now() < deadline => {
                failures += 1;
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("libvirt did not come back within {within:?}: {e}"),
        }
    }
}

fn assert_matches_node_xml(l: &Libvirt) {
    let mut names: Vec<&str> = l.domains.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["db-01", "web-01", "web-02"]);
    let dom = |n: &str| l.domains.iter().find(|d| d.name == n).unwrap();

    let d = dom("web-01");
    assert_eq!(d.uuid, "7d3c9e1a-4b2f-4c6d-8e9f-1a2b3c4d5e01");
    assert!(d.id.is_some());
    assert_eq!(d.state, "running");
    assert_eq!(d.xml_error, None);
    assert_eq!(d.vnics.len(), 1);
    let v = &d.vnics[0];
    assert_eq!(v.mac, "52:54:00:6c:1a:01");
    assert_eq!(
        (v.bridge.as_str(), v.kind.as_str(), v.model.as_str()),
        ("br0", "bridge", "virtio")
    );
    assert_eq!(
        v.target_dev, "testnet0",
        "the test driver renames vnet* target devs"
    );
    assert_eq!(
        (v.host_ifindex, v.host_ifname.as_deref()),
        (Some(11), Some("vnet3")),
        "by MAC, the port on the vNIC's bridge, not the bridge nor the stray"
    );
    let n = d.nova.as_ref().expect("nova metadata");
    assert_eq!(
        (
            n.instance_name.as_str(),
            n.project_name.as_str(),
            n.project_id.as_str()
        ),
        (
            "tools-webproxy-01",
            "tools",
            "6b7e0ad3d4b94a7f9c8d1e2f3a4b5c6d"
        )
    );
    assert_eq!(
        (n.user_name.as_str(), n.flavor.as_str()),
        ("andrew", "m1.small")
    );

    let d = dom("web-02");
    assert_eq!(d.uuid, "7d3c9e1a-4b2f-4c6d-8e9f-1a2b3c4d5e02");
    assert_eq!(d.state, "running");
    assert!(d.nova.is_none());
    assert_eq!(d.vnics.len(), 2);
    let v = &d.vnics[0];
    assert_eq!(v.mac, "52:54:00:6c:1a:02", "lowercased");
    assert_eq!(v.host_ifname.as_deref(), Some("tap-web02"), "by target dev");
    assert_eq!((v.link_state.as_str(), v.mtu), ("down", Some(9000)));
    let v = &d.vnics[1];
    assert_eq!(
        (v.kind.as_str(), v.network.as_str()),
        ("network", "default")
    );
    assert_eq!(v.host_ifname, None, "no host interface has its MAC");

    let d = dom("db-01");
    assert_eq!(d.uuid, "7d3c9e1a-4b2f-4c6d-8e9f-1a2b3c4d5e03");
    assert_eq!((d.state.as_str(), d.id), ("shutoff", None));
    assert_eq!(d.vnics[0].mac, "52:54:00:6c:1a:03");
    assert_eq!(d.vnics[0].host_ifname, None);
}

#[test]
fn section_matches_the_node_xml_and_xml_is_cached() {
    let uri = format!("test://{}", fixture_node().display());
    let mut c = libvirt_collector(uri.clone(), 2000, 100);
    let l = collect(&mut c).unwrap();
    assert_eq!(l.uri, uri);
    assert_matches_node_xml(&l);
    let ids: Vec<_> = l.domains.iter().map(|d| (d.name.clone(), d.id)).collect();
    assert_eq!(l.xml_fetches, 3, "first round fetches every domain's XML");
    let again = collect(&mut c).unwrap();
    assert_eq!(
        again.xml_fetches, 0,
        "second round is served from the cache"
    );
    assert_matches_node_xml(&again);
    let ids_again: Vec<_> = again
        .domains
        .iter()
        .map(|d| (d.name.clone(), d.id))
        .collect();
    assert_eq!(ids, ids_again);
}

#[test]
fn between_polls_samples_repeat_the_last_answer_with_its_age() {
    let uri = format!("test://{}", fixture_node().display());
    let mut c: Box<dyn Collector> = Box::new(
        hvflight::collect::libvirt::LibvirtCollector::new(uri, 2000, 100, 60)
            .poll_every(Duration::from_millis(400)),
    );
    let first = collect(&mut c).unwrap();
    assert_eq!(first.age_ms, 0);
    std::thread::sleep(Duration::from_millis(50));
    let repeated = collect(&mut c).unwrap();
    assert!(repeated.age_ms >= 50, "age {}", repeated.age_ms);
    assert_eq!(repeated.xml_fetches, 0);
    assert_eq!(repeated.domains, first.domains, "the same answer");
    assert_matches_node_xml(&repeated);
    std::thread::sleep(Duration::from_millis(400));
    let fresh = collect(&mut c).unwrap();
    assert_eq!(fresh.age_ms, 0, "asked again once the interval passed");
    assert_matches_node_xml(&fresh);
}

#[test]
fn cached_xml_is_refetched_when_it_ages() {
    let uri = format!("test://{}", fixture_node().display());
    // Refresh after 0 s: every round re-fetches (within the per-round cap).
    let mut c: Box<dyn Collector> = Box::new(hvflight::collect::libvirt::LibvirtCollector::new(
        uri, 2000, 100, 0,
    ));
    assert_eq!(collect(&mut c).unwrap().xml_fetches, 3);
    let again = collect(&mut c).unwrap();
    assert_eq!(again.xml_fetches, 3);
    assert_matches_node_xml(&again);
}

#[test]
fn unreachable_libvirt_is_a_recorded_failure_within_the_timeout() {
    let uri = "qemu:///system?socket=/nonexistent/libvirt-sock";
    let mut sampler = Sampler::new(
        Context::default(),
        "testhost".into(),
        vec![libvirt_collector(uri.into(), 1000, 100)],
    );
    let t0 = Instant::now();
    let s = sampler.sample();
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert!(s.libvirt.is_none());
    let f = s.failure("libvirt").expect("failure recorded");
    assert!(f.error.contains("/nonexistent/libvirt-sock"), "{}", f.error);
    assert!(!f.timed_out, "refused, not timed out: {}", f.error);
    // Right after, the worker waits out its backoff and says so.
    let s = sampler.sample();
    let f = s.failure("libvirt").expect("still failing");
    assert!(f.error.contains("next attempt in"), "{}", f.error);
}

#[test]
fn recovers_when_the_node_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.xml");
    let mut c = libvirt_collector(format!("test://{}", node.display()), 2000, 100);
    let e = collect(&mut c).unwrap_err();
    assert!(matches!(e, CollectError::Libvirt { .. }), "{e}");
    std::fs::copy(fixture_node(), &node).unwrap();
    let (l, _) = collect_until_ok(&mut c, Duration::from_secs(5));
    assert_matches_node_xml(&l);
}

/// A "libvirtd" that accepts connections and never answers; dropping it
/// closes the connections and removes the socket.
struct HungDaemon {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl HungDaemon {
    fn start(path: &Path) -> HungDaemon {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        HungDaemon {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        }
    }
}

impl Drop for HungDaemon {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A real libvirtd in session mode, as `nobody`, with its socket, runtime,
/// cache and config dirs under `dir`; serves the test driver remotely
/// (`test+unix:///…/node.xml?socket=…`). Killed on drop.
struct Libvirtd {
    child: Child,
}

impl Libvirtd {
    fn prepare(dir: &Path) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["sock", "run", "cache", "cfg"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        }
        std::fs::copy(fixture_node(), dir.join("node.xml")).unwrap();
        std::fs::set_permissions(dir.join("node.xml"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::write(
            dir.join("libvirtd.conf"),
            format!("unix_sock_dir = \"{}\"\n", dir.join("sock").display()),
        )
        .unwrap();
        std::fs::set_permissions(
            dir.join("libvirtd.conf"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    fn socket(dir: &Path) -> PathBuf {
        dir.join("sock/libvirt-sock")
    }

    fn uri(dir: &Path) -> String {
        format!(
            "test+unix://{}?socket={}",
            dir.join("node.xml").display(),
            Self::socket(dir).display()
        )
    }

    /// Starts it and waits until it answers.
    fn start(dir: &Path) -> Libvirtd {
        // Our polling below fails until the socket is there; keep libvirt
        // from printing each failure.
        virt::error::clear_error_callback();
        let child = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg("/usr/sbin/libvirtd")
            .arg("--config")
            .arg(dir.join("libvirtd.conf"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir)
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env("XDG_CONFIG_HOME", dir.join("cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("libvirtd (Debian package libvirt-daemon) and setpriv");
        let d = Libvirtd { child };
        let uri = Self::uri(dir);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut c) = Connect::open_read_only(Some(&uri)) {
                let _ = c.close();
                return d;
            }
            assert!(Instant::now() < deadline, "libvirtd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // Our own child, by pid: SIGTERM, then SIGKILL if it lingers.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[test]
fn hung_libvirtd_costs_one_timeout_then_recovers_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    Libvirtd::prepare(dir.path());
    let sock = Libvirtd::socket(dir.path());
    let hung = HungDaemon::start(&sock);
    let mut c = libvirt_collector(Libvirtd::uri(dir.path()), 300, 100);

    let t0 = Instant::now();
    let e = collect(&mut c).unwrap_err();
    let waited = t0.elapsed();
    assert!(e.timed_out(), "{e}");
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_millis(1500),
        "waited {waited:?}"
    );
    // The worker is still stuck: the next samples do not wait again.
    for _ in 0..3 {
        let t0 = Instant::now();
        let e = collect(&mut c).unwrap_err();
        assert!(e.timed_out(), "{e}");
        assert!(e.to_string().contains("running for"), "{e}");
        assert!(
            t0.elapsed() < Duration::from_millis(200),
            "{:?}",
            t0.elapsed()
        );
    }

    // The hung daemon dies: the stuck call fails, the worker is free again.
    drop(hung);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match collect(&mut c) {
            Err(e) if e.timed_out() => {
                assert!(Instant::now() < deadline, "still stuck: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                assert!(matches!(e, CollectError::Libvirt { .. }), "{e}");
                break;
            }
            Ok(l) => panic!("nothing serves libvirt yet: {l:?}"),
        }
    }

    // A real libvirtd appears on the socket path: back to normal.
    let _daemon = Libvirtd::start(dir.path());
    let (l, _) = collect_until_ok(&mut c, Duration::from_secs(10));
    assert_matches_node_xml(&l);
}

fn wait_for(
    rx: &Receiver<Event>,
    within: Duration,
    what: &str,
    pred: impl Fn(&EventKind) -> bool,
) -> Event {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(ev) if pred(&ev.kind) => return ev,
            Ok(ev) => eprintln!("(skipping {:?})", ev.kind),
            Err(_) => break,
        }
    }
    panic!("no {what} within {within:?}");
}

fn connected(want: bool) -> impl Fn(&EventKind) -> bool {
    move |k| matches!(k, EventKind::LibvirtConnection { connected, .. } if *connected == want)
}

#[test]
fn collector_and_events_survive_a_libvirtd_restart_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    Libvirtd::prepare(dir.path());
    let uri = Libvirtd::uri(dir.path());
    let daemon = Libvirtd::start(dir.path());

    let mut c = libvirt_collector(uri.clone(), 2000, 100);
    assert_matches_node_xml(&collect(&mut c).unwrap());
    let (tx, rx) = mpsc::channel();
    let mut events = hvflight::events::libvirt::start(uri.clone(), 100, tx).unwrap();
    let up = wait_for(
        &rx,
        Duration::from_secs(5),
        "connected:true",
        connected(true),
    );
    assert!(matches!(&up.kind, EventKind::LibvirtConnection { uri: u, .. } if *u == uri));

    daemon.stop();
    let down = wait_for(
        &rx,
        Duration::from_secs(10),
        "connected:false",
        connected(false),
    );
    eprintln!("down: {:?}", down.kind);
    let t0 = Instant::now();
    let e = collect(&mut c).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_millis(2100),
        "{:?}",
        t0.elapsed()
    );
    assert!(matches!(e, CollectError::Libvirt { .. }), "{e}");

    let _daemon = Libvirtd::start(dir.path());
    let (l, _) = collect_until_ok(&mut c, Duration::from_secs(10));
    assert_matches_node_xml(&l);
    wait_for(
        &rx,
        Duration::from_secs(10),
        "connected:true again",
        connected(true),
    );
    let t0 = Instant::now();
    events.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t0.elapsed()
    );
}

#[test]
fn collector_and_events_share_one_connection() {
    // Each test-driver connection keeps its own copy of the node (~7 MiB at
    // 250 domains): the agent opens one per URI, not one per thread.
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.xml");
    std::fs::copy(fixture_node(), &node).unwrap();
    let uri = format!("test://{}", node.display());
    let (tx, rx) = mpsc::channel();
    let mut events = hvflight::events::libvirt::start(uri.clone(), 100, tx).unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "connected:true",
        connected(true),
    );
    let mut c = libvirt_collector(uri.clone(), 2000, 100);
    assert_matches_node_xml(&collect(&mut c).unwrap());
    assert_matches_node_xml(&collect(&mut c).unwrap());
    // A bundle's domain XML comes over the same connection too (a second
    // test-driver connection was most of the agent's peak while a bundle
    // was written at 250 domains). With the node file gone a new
    // connection cannot be opened: the XML can only come over the held one.
    std::fs::remove_file(&node).unwrap();
    let (xmls, rec) = hvflight::bundle::writer::libvirt_xml(&uri, Duration::from_secs(10));
    assert_eq!(rec.exit_status, Some(0), "{rec:?}");
    let mut names: Vec<&str> = xmls.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "libvirt/db-01.xml",
            "libvirt/web-01.xml",
            "libvirt/web-02.xml"
        ]
    );
    assert!(
        String::from_utf8_lossy(&xmls[0].1).contains("<domain"),
        "{}",
        String::from_utf8_lossy(&xmls[0].1)
    );
    let shared = hvflight::source::libvirt_conn::SharedConn::for_uri(&uri);
    assert_eq!(shared.opens(), 1, "one connection for all three");
    events.stop();
    drop(c);
}

#[test]
fn events_report_the_connection_coming_and_going() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.xml");
    let uri = format!("test://{}", node.display());
    let (tx, rx) = mpsc::channel();
    let mut events = hvflight::events::libvirt::start(uri.clone(), 100, tx).unwrap();
    let down = wait_for(
        &rx,
        Duration::from_secs(5),
        "connected:false",
        connected(false),
    );
    assert!(
        matches!(&down.kind, EventKind::LibvirtConnection { error, .. } if error.contains("node.xml")),
        "{:?}",
        down.kind
    );
    std::fs::copy(fixture_node(), &node).unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "connected:true",
        connected(true),
    );
    events.stop();
    // One connected:false per outage, not one per failed attempt.
    let extra_downs = rx.try_iter().filter(|e| connected(false)(&e.kind)).count();
    assert_eq!(extra_downs, 0);
}

#[test]
fn lifecycle_events_of_changes_through_the_same_connection() {
    // The test driver tells only the connection that made a change, so the
    // test makes its changes through the events thread's own connection.
    let uri = format!("test://{}", fixture_node().display());
    let shared: Arc<Mutex<Option<Connect>>> = Arc::new(Mutex::new(None));
    let keep = Arc::clone(&shared);
    let target = uri.clone();
    let opener = Box::new(move || {
        let c = Connect::open(Some(&target))?;
        *keep.lock().unwrap() = Some(c.clone());
        Ok(c)
    });
    let (tx, rx) = mpsc::channel();
    let mut events = hvflight::events::libvirt::start_with_opener(uri, opener, 100, tx).unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "connected:true",
        connected(true),
    );
    let mut conn = shared.lock().unwrap().take().expect("the opener ran");

    let lifecycle = |want_event: &'static str, want_detail: &'static str| {
        move |k: &EventKind| {
            matches!(k, EventKind::Libvirt { domain, uuid, event, detail }
                if domain == "web-01"
                    && uuid == "7d3c9e1a-4b2f-4c6d-8e9f-1a2b3c4d5e01"
                    && event == want_event
                    && detail == want_detail)
        }
    };
    let dom = Domain::lookup_by_name(&conn, "web-01").unwrap();
    dom.suspend().unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "suspended/paused",
        lifecycle("suspended", "paused"),
    );
    dom.resume().unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "resumed/unpaused",
        lifecycle("resumed", "unpaused"),
    );
    dom.destroy().unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "stopped/destroyed",
        lifecycle("stopped", "destroyed"),
    );
    dom.create().unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "started/booted",
        lifecycle("started", "booted"),
    );
    drop(dom);
    events.stop();
    let _ = conn.close();
}
