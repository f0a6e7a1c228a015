//! A real OpenStack Swift (Debian's swift-* packages) on 127.0.0.1 for
//! tests: one node, one replica, s3api + tempauth in the proxy pipeline,
//! storage and configs in a temp dir, every server on a free port, killed
//! on drop. Laid out by tests/tools/swift-setup.py (rings through Swift's
//! RingBuilder API); the servers run in the foreground (`workers = 0`,
//! `-v`), their logs under the temp dir. Can be stopped and started again
//! on the same ports and storage (a server that goes away and comes back).
//!
//! S3 credentials: access key `test:tester`, secret `testing`, region us-east-1.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "test:tester";
pub const SECRET_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";
/// The bucket tests upload to.
pub const BUCKET: &str = "hvflight-test";

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

pub struct Swift {
    pub dir: tempfile::TempDir,
    pub proxy_port: u16,
    ports: [u16; 4],
    memcache_port: u16,
    pub tls: bool,
    procs: Vec<Child>,
}

impl Swift {
    /// Lays out a Swift (configs, rings, storage, and with `tls` a CA and a
    /// server certificate for 127.0.0.1) without starting it.
    pub fn layout(tls: bool) -> Swift {
        let dir = tempfile::Builder::new()
            .prefix("hvflight-swift-")
            .tempdir()
            .unwrap();
        let ports = [
            super::free_port(),
            super::free_port(),
            super::free_port(),
            super::free_port(),
        ];
        let memcache_port = super::free_port();
        let mut c = Command::new("/usr/bin/python3");
        c.arg(tools().join("swift-setup.py"))
            .arg(dir.path())
            .args(["--account-port", &ports[0].to_string()])
            .args(["--container-port", &ports[1].to_string()])
            .args(["--object-port", &ports[2].to_string()])
            .args(["--proxy-port", &ports[3].to_string()])
            .args(["--memcache-port", &memcache_port.to_string()])
            .args(["--region", REGION]);
        if tls {
            let st = Command::new("bash")
                .arg(tools().join("test-ca.sh"))
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "test-ca.sh failed");
            c.arg("--cert")
                .arg(dir.path().join("cert.pem"))
                .arg("--key")
                .arg(dir.path().join("key.pem"));
        }
        let out = c.output().expect("python3 with Debian's swift installed");
        assert!(
            out.status.success(),
            "swift-setup.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Swift {
            dir,
            proxy_port: ports[3],
            ports,
            memcache_port,
            tls,
            procs: Vec::new(),
        }
    }

    /// Laid out and started, ready to serve.
    pub fn start_new(tls: bool) -> Swift {
        let mut s = Swift::layout(tls);
        s.start();
        s
    }

    pub fn endpoint(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "https" } else { "http" },
            self.proxy_port
        )
    }

    /// The CA that signed the proxy's certificate (tls only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn proxy_log(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap()
    }

    /// Starts memcached and the four servers; waits until they answer.
    pub fn start(&mut self) {
        assert!(self.procs.is_empty(), "already running");
        let mc = Command::new("memcached")
            .args(["-l", "127.0.0.1", "-U", "0", "-m", "16", "-u", "root", "-p"])
            .arg(self.memcache_port.to_string())
            .stdout(Stdio::null())
            .stderr(self.log("memcached"))
            .spawn()
            .expect("memcached");
        self.procs.push(mc);
        for name in ["account", "container", "object", "proxy"] {
            let mut log = self.log(name);
            let _ = writeln!(log, "--- started");
            let child = Command::new(format!("/usr/bin/swift-{name}-server"))
                .arg(self.dir.path().join(format!("{name}-server.conf")))
                .arg("-v")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("swift-{name}-server: {e}"));
            self.procs.push(child);
        }
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(120);
        let ports: Vec<u16> = self
            .ports
            .iter()
            .copied()
            .chain([self.memcache_port])
            .collect();
        loop {
            let up = ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up && self.healthy() {
                break;
            }
            for c in self.procs.iter_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "a Swift server exited at start ({st}); logs in {}",
                        self.dir.path().display()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "Swift not ready after 120 s; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("swift: up on {} in {:?}", self.endpoint(), t0.elapsed());
    }

    fn healthy(&self) -> bool {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("{}/healthcheck", self.endpoint()));
        c.output().map(|o| o.stdout == b"200").unwrap_or(false)
    }

    /// Kills every server at once (SIGKILL), like a crashed or unplugged store.
    pub fn stop(&mut self) {
        for c in self.procs.iter_mut() {
            let _ = c.kill();
        }
        for c in self.procs.iter_mut() {
            let _ = c.wait();
        }
        self.procs.clear();
    }

    pub fn running(&self) -> bool {
        !self.procs.is_empty()
    }

    /// Creates a bucket (Swift container) through Swift's own API.
    pub fn make_bucket(&self, name: &str) {
        let out = Command::new("/usr/bin/python3")
            .arg(tools().join("swift-setup.py"))
            .args(["--make-bucket", name, "--proxy-url"])
            .arg(self.endpoint())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make bucket {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A credentials file (mode 0600) for the agent.
    pub fn credentials_file(&self, dir: &Path, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("upload-credentials.toml");
        std::fs::write(
            &p,
            format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{secret}\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// An S3 client of our own to read back what was uploaded.
    fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        let mut opts = object_store::ClientOptions::new().with_allow_http(true);
        if self.tls {
            let pem = std::fs::read(self.ca_file()).unwrap();
            opts = opts.with_root_certificate(object_store::Certificate::from_pem(&pem).unwrap());
        }
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_region(REGION)
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(true)
            .with_client_options(opts)
            .build()
            .unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The object's bytes and its ETag.
    pub fn get(&self, bucket: &str, key: &str) -> (Vec<u8>, String) {
        use object_store::ObjectStoreExt;
        let s = self.client(bucket);
        Self::rt().block_on(async {
            let r = s
                .get(&object_store::path::Path::from(key))
                .await
                .unwrap_or_else(|e| panic!("GET {bucket}/{key}: {e}"));
            let etag = r.meta.e_tag.clone().unwrap_or_default();
            (r.bytes().await.unwrap().to_vec(), etag)
        })
    }

    /// Every object in the bucket: (key, size).
    pub fn list(&self, bucket: &str) -> Vec<(String, u64)> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let s = self.client(bucket);
        Self::rt().block_on(async {
            let v: Vec<object_store::ObjectMeta> = s.list(None).try_collect().await.unwrap();
            v.into_iter()
                .map(|m| (m.location.to_string(), m.size))
                .collect()
        })
    }

    /// The proxy's access-log lines for requests (as the S3 client sent
    /// them) whose method is `method` and path starts with `/<bucket>/<key>`.
    pub fn requests(&self, method: &str, bucket: &str, key: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.proxy_log()).unwrap_or_default();
        let needle = format!(" {method} /{bucket}/{key}");
        log.lines()
            .filter(|l| l.contains(&needle))
            .map(|l| l.to_string())
            .collect()
    }
}

/// Agent config with `[upload]` pointing at `swift`; `upload_extra` lines go into `[upload]`.
pub fn config(swift: &Swift, creds: &Path, upload_extra: &str) -> String {
    format!(
        "[agent]\nmetrics_listen = \"\"\n\n[detect]\nenabled = false\n\n\
         [bundle]\nbefore_s = 5\nafter_s = 1\ncommand_timeout_ms = 3000\n\n\
         [upload]\nenabled = true\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nallow_http = true\n\
         credentials_file = \"{}\"\npart_size_bytes = 5242880\nmultipart_threshold_bytes = 8388608\n\
         backoff_initial_ms = 1000\nbackoff_max_ms = 5000\nconnect_timeout_ms = 3000\n\
         request_timeout_ms = 60000\n{upload_extra}",
        swift.endpoint(),
        creds.display()
    )
}

/// A real bundle of at least `mib` MiB (random, so it does not compress),
/// written by the bundle writer into `bundles`.
pub fn big_bundle(bundles: &Path, host: &str, mib: usize) -> PathBuf {
    let empty = tempfile::tempdir().unwrap();
    let cfg = hvflight::bundle::writer::BundleConfig {
        dir: bundles.to_path_buf(),
        store_dir: empty.path().join("store"),
        host: host.into(),
        before_s: 1,
        after_s: 0,
        command_timeout: Duration::from_secs(1),
        max_count: 20,
        max_bytes: 1 << 40,
        min_free_bytes: 0,
        libvirt_uri: "test:///default".into(),
        proc_root: "/proc".into(),
        sys_root: "/sys".into(),
        announce: None,
        trim_file_pages: false,
    };
    let now = hvflight::clock::now().unix_ns;
    let incident = hvflight::bundle::Incident {
        id: format!("{:08x}", fastrand::u32(..)),
        trigger: "manual".into(),
        reason: "large bundle for the upload test".into(),
        ts_unix_ns: now,
        ts: hvflight::clock::format_rfc3339(now),
        case: String::new(),
    };
    let mut data = vec![0u8; mib << 20];
    fastrand::fill(&mut data);
    let mut deep = hvflight::bundle::writer::DeepState::spooled_in(&cfg.dir);
    deep.add("deep/proc/random.bin", &data);
    drop(data);
    hvflight::bundle::writer::write(&cfg, &incident, &deep, None, now, true).unwrap()
}

impl Drop for Swift {
    fn drop(&mut self) {
        self.stop();
    }
}
