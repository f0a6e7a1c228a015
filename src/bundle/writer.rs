//! Writing a bundle: collect deep state, stream the history window from the
//! store, then tar + zstd with the manifest first, to a temporary name,
//! fsync, rename. Bounded count and bytes; never below the filesystem's
//! minimum free space.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{
    deep, redact, CollectorFailureSummary, CommandRun, Entry, Incident, Manifest,
    BUNDLE_FORMAT_VERSION,
};
use crate::store::{scan_ref, Query, ReadReport, RecordRef};

#[derive(Clone, Debug)]
pub struct BundleConfig {
    pub dir: PathBuf,
    pub store_dir: PathBuf,
    pub host: String,
    pub before_s: u64,
    pub after_s: u64,
    pub command_timeout: Duration,
    pub max_count: usize,
    pub max_bytes: u64,
    pub min_free_bytes: u64,
    pub libvirt_uri: String,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Told the path of every complete bundle (the uploader's spool intake).
    pub announce: Option<std::sync::mpsc::Sender<PathBuf>>,
    /// Unmap the file pages each stage of a bundle touched once it is done
    /// (agent.trim_pages_after_ms > 0; see agent/trim.rs).
    pub trim_file_pages: bool,
}

impl BundleConfig {
    pub fn from_config(c: &crate::config::Config, host: &str) -> BundleConfig {
        BundleConfig {
            dir: c.agent.state_dir.join("bundles"),
            store_dir: c.agent.state_dir.join("store"),
            host: host.to_string(),
            before_s: c.bundle.before_s,
            after_s: c.bundle.after_s,
            command_timeout: Duration::from_millis(c.bundle.command_timeout_ms),
            max_count: c.bundle.max_count as usize,
            max_bytes: c.bundle.max_bytes,
            min_free_bytes: c.store.min_free_bytes,
            libvirt_uri: c.agent.libvirt_uri.clone(),
            proc_root: c.collect.proc_root.clone(),
            sys_root: c.collect.sys_root.clone(),
            announce: None,
            trim_file_pages: c.agent.trim_pages_after_ms > 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "bundle not written: {free} bytes free in {dir}, {need} needed above the {min} kept free"
    )]
    NoSpace {
        dir: String,
        free: u64,
        need: u64,
        min: u64,
    },
}

fn io(path: &Path, source: std::io::Error) -> BundleError {
    BundleError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub use super::deep::{DeepFile, DeepState};

/// Total deep-state bytes kept; the rest is cut (and marked).
const MAX_DEEP_BYTES: usize = 64 << 20;

pub fn capture_deep(cfg: &BundleConfig) -> DeepState {
    let mut d = DeepState::spooled_in(&cfg.dir);
    let mut total = 0usize;
    let nics = deep::physical_nics(&cfg.sys_root);
    for (name, argv) in deep::commands(&nics) {
        let (mut out, mut rec) = deep::run(&name, &argv, cfg.command_timeout);
        if total + out.len() > MAX_DEEP_BYTES {
            out.truncate(MAX_DEEP_BYTES.saturating_sub(total));
            rec.truncated = true;
        }
        total += out.len();
        d.add(format!("deep/{name}.txt"), &out);
        d.commands.push(rec);
    }
    for rel in deep::PROC_FILES {
        let p = cfg.proc_root.join(rel);
        if let Ok(b) = std::fs::read(&p) {
            d.add(format!("deep/proc/{rel}"), &b);
        }
    }
    // /proc/net/bonding/<bond> (the analyzer's F24) and the tail of
    // ovs-vswitchd's log (F25), when the host has them.
    if let Ok(rd) = std::fs::read_dir(cfg.proc_root.join("net/bonding")) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                let n = e.file_name().to_string_lossy().into_owned();
                d.add(format!("deep/proc/net/bonding/{n}"), &b);
            }
        }
    }
    if let Some(b) = tail(Path::new(OVS_LOG), 4 << 20) {
        d.add("deep/ovs-vswitchd.log", &b);
    }
    let (xmls, rec) = libvirt_xml(&cfg.libvirt_uri, cfg.command_timeout);
    for (n, b) in xmls {
        d.add(n, &b);
    }
    d.commands.push(rec);
    d
}

/// Open vSwitch's daemon log (Debian's path).
const OVS_LOG: &str = "/var/log/openvswitch/ovs-vswitchd.log";

/// The last `max` bytes of a file, from a line start; None when absent.
fn tail(p: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(p).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut b = Vec::new();
    f.take(max).read_to_end(&mut b).ok()?;
    if len > max {
        if let Some(i) = b.iter().position(|c| *c == b'\n') {
            b.drain(..=i);
        }
    }
    Some(b)
}

/// Domain XML over a read-only connection (secrets it does not expose there
/// are simply absent), redacted anyway. libvirt may hang: a thread and a timeout.
/// The connection is the agent's shared one (source::libvirt_conn), opened
/// only when the process holds none: a second connection to the in-process
/// test driver parsed the whole node again (7.5 MiB of heap at 250 domains,
/// most of the agent's peak while a bundle was written).
pub fn libvirt_xml(uri: &str, timeout: Duration) -> (Vec<(String, Vec<u8>)>, CommandRun) {
    let mut rec = CommandRun {
        name: "libvirt-domain-xml".into(),
        argv: vec![format!("virDomainGetXMLDesc({uri})")],
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let uri2 = uri.to_string();
    std::thread::spawn(move || {
        virt::error::clear_error_callback();
        let r = (|| -> Result<Vec<(String, Vec<u8>)>, String> {
            let shared = crate::source::libvirt_conn::SharedConn::for_uri(&uri2);
            let mut c = shared.get(false).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let domains = match c.list_all_domains(0) {
                Ok(d) => d,
                Err(e) => {
                    // Dead, most likely: the next user opens a fresh one.
                    shared.forget(&c);
                    let _ = c.close();
                    return Err(e.to_string());
                }
            };
            for d in domains {
                let (Ok(name), Ok(xml)) = (d.get_name(), d.get_xml_desc(0)) else {
                    continue;
                };
                let safe: String = name
                    .chars()
                    .map(|ch| {
                        if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.' {
                            ch
                        } else {
                            '_'
                        }
                    })
                    .collect();
                out.push((
                    format!("libvirt/{safe}.xml"),
                    redact::redact_domain_xml(&xml).into_bytes(),
                ));
            }
            let _ = c.close();
            Ok(out)
        })();
        let _ = tx.send(r);
    });
    let files = match rx.recv_timeout(timeout) {
        Ok(Ok(f)) => {
            rec.exit_status = Some(0);
            f
        }
        Ok(Err(e)) => {
            rec.exit_status = Some(1);
            rec.error = e;
            Vec::new()
        }
        Err(_) => {
            rec.timed_out = true;
            rec.error = format!("timed out after {} ms", timeout.as_millis());
            Vec::new()
        }
    };
    rec.duration_ms = t0.elapsed().as_millis() as u64;
    (files, rec)
}

pub(super) fn sha256_hex(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bundles in the directory, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("hvflight-") && n.ends_with(".tar.zst")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn prune(cfg: &BundleConfig, keep: &Path) {
    let all = list(&cfg.dir);
    let mut total: u64 = all
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut count = all.len();
    for p in &all {
        if p == keep || (count <= cfg.max_count && total <= cfg.max_bytes) {
            continue;
        }
        let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(p).is_ok() {
            tracing::info!(bundle = %p.display(), "bundle: deleted oldest to stay within bounds");
            count -= 1;
            total = total.saturating_sub(len);
        }
    }
}

/// Writes (or rewrites) the bundle of `incident` with history up to `until_ns`.
/// Packets for the bundle: a pcapng file (a temporary file in the bundles
/// directory, so a 32 MiB ring is never held twice in memory) and what the
/// manifest says of it.
#[derive(Debug, Default)]
pub struct CaptureFile {
    pub file: Option<tempfile::NamedTempFile>,
    pub size: u64,
    pub sha256: String,
    pub summary: super::CaptureSummary,
}

pub const CAPTURE_ENTRY: &str = "capture/packets.pcapng";

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hasher.update(&b[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The packet ring's part of a bundle: packets from `incident - before`
/// to `until` (at most `after` past the incident; the ring holds them from
/// the incident on, see worker.rs).
pub fn capture_file(
    cfg: &BundleConfig,
    cap: &crate::capture::CaptureHandle,
    incident_ns: i64,
    until_ns: i64,
) -> CaptureFile {
    let c = cap.config();
    let from = incident_ns - c.before_s as i64 * 1_000_000_000;
    let to = until_ns.min(incident_ns + c.after_s as i64 * 1_000_000_000);
    let mut out = CaptureFile {
        summary: super::CaptureSummary {
            entry: CAPTURE_ENTRY.into(),
            window_since_unix_ns: from,
            window_until_unix_ns: to,
            ..Default::default()
        },
        ..Default::default()
    };
    let written = (|| -> Result<_, String> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| e.to_string())?;
        let f = tempfile::Builder::new()
            .prefix(".hvflight-capture-")
            .tempfile_in(&cfg.dir)
            .map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
        let mut w = Hashing {
            inner: std::io::BufWriter::new(f.reopen().map_err(|e| e.to_string())?),
            hasher: Sha256::new(),
            size: 0,
        };
        let (sum, meta) = cap
            .pcapng_to(from, to, incident_ns, &mut w)
            .map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())?;
        let Hashing { size, hasher, .. } = w;
        Ok((f, size, hasher.finalize(), sum, meta))
    })();
    match written {
        Ok((f, size, sha, sum, meta)) => {
            let m = &mut out.summary;
            m.packets = sum.packets;
            m.packets_before = sum.packets_before;
            m.packets_after = sum.packets - sum.packets_before;
            m.first_packet_unix_ns = sum.first_unix_ns;
            m.last_packet_unix_ns = sum.last_unix_ns;
            m.complete_since_unix_ns = meta.section.complete_since_unix_ns.max(from);
            m.sampled_complete_since_unix_ns =
                meta.section.sampled_complete_since_unix_ns.max(from);
            m.filter = meta.filter;
            m.snaplen = meta.snaplen;
            m.sample_share = meta.sample_share;
            m.headers_only = meta.headers_only;
            m.evicted_packets_total = meta.section.evicted_packets_total;
            m.refused_packets_total = meta.section.refused_packets_total;
            m.shedding = meta.section.shedding;
            m.shed_total = meta.section.shed_total;
            m.interfaces = meta.section.interfaces;
            out.file = Some(f);
            out.size = size;
            out.sha256 = sha.iter().map(|x| format!("{x:02x}")).collect();
        }
        Err(e) => {
            out.summary.entry.clear();
            out.summary.error = format!("pcapng not written: {e}");
        }
    }
    out
}

pub fn write(
    cfg: &BundleConfig,
    incident: &Incident,
    deep: &DeepState,
    capture: Option<&CaptureFile>,
    until_ns: i64,
    complete: bool,
) -> Result<PathBuf, BundleError> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| io(&cfg.dir, e))?;
    let name = super::bundle_name(&cfg.host, incident.ts_unix_ns, &incident.id);
    let final_path = cfg.dir.join(&name);
    let tmp_dir = tempfile::Builder::new()
        .prefix(".hvflight-bundle-")
        .tempdir_in(&cfg.dir)
        .map_err(|e| io(&cfg.dir, e))?;
    let since_ns = incident.ts_unix_ns - cfg.before_s as i64 * 1_000_000_000;

    // History, streamed a record at a time: memory stays two decoded
    // samples (lent by the reader, which patches each into the one two
    // back: the fast read). (Read a minute at a time, the 60 decoded
    // samples of a minute at 500 vNICs were ~70 MiB of the agent's peak.)
    let hist_path = tmp_dir.path().join("records.jsonl");
    let mut hist = Hashing {
        inner: std::io::BufWriter::new(
            std::fs::File::create(&hist_path).map_err(|e| io(&hist_path, e))?,
        ),
        hasher: Sha256::new(),
        size: 0,
    };
    let (mut samples, mut events) = (0u64, 0u64);
    let mut failures: std::collections::BTreeMap<String, CollectorFailureSummary> =
        Default::default();
    let mut drop_summary = super::drops::DropSummary::default();
    let mut report = ReadReport::default();
    let mut write_err = None;
    scan_ref(
        &cfg.store_dir,
        &Query::range(since_ns, until_ns),
        &mut report,
        &mut |r| {
            // Each record straight into the file: a sample's JSON line is
            // never held whole in memory.
            let res = match &r {
                RecordRef::Sample { sample: s, .. } => {
                    samples += 1;
                    drop_summary.add(s, incident.ts_unix_ns);
                    for f in &s.failures {
                        let e = failures.entry(f.collector.clone()).or_insert_with(|| {
                            CollectorFailureSummary {
                                collector: f.collector.clone(),
                                ..Default::default()
                            }
                        });
                        e.samples += 1;
                        e.last_error = f.error.clone();
                    }
                    crate::agent::print::write_sample_json(&mut hist, s)
                        .and_then(|_| hist.write_all(b"\n"))
                }
                RecordRef::Events(evs) => {
                    events += evs.len() as u64;
                    evs.iter().try_for_each(|e| {
                        let line = crate::agent::print::event_json(e);
                        if line.is_empty() {
                            return Ok(());
                        }
                        hist.write_all(line.as_bytes())
                            .and_then(|_| hist.write_all(b"\n"))
                    })
                }
            };
            match res {
                Ok(()) => true,
                Err(e) => {
                    write_err = Some(e);
                    false
                }
            }
        },
    );
    if let Some(e) = write_err {
        return Err(io(&hist_path, e));
    }
    // The scan's decoded samples and read buffers (~4 MiB at 500 vNICs)
    // are free now, in pieces zstd's one-block context cannot reuse: given
    // back first, the bundle's peak is the larger of the two, not the sum.
    super::release_freed_memory();
    let mut store_warnings = report.warnings;
    hist.flush().map_err(|e| io(&hist_path, e))?;
    let Hashing {
        hasher,
        size: hist_size,
        ..
    } = hist;
    store_warnings.truncate(100);

    let mut entries = vec![Entry {
        name: "history/records.jsonl".into(),
        size: hist_size,
        sha256: hasher
            .finalize()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect(),
    }];
    let generated = vec![(
        "deep/drop_reasons.txt".to_string(),
        drop_summary.text(incident.ts_unix_ns).into_bytes(),
    )];
    for f in &deep.files {
        entries.push(Entry {
            name: f.name.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
        });
    }
    for (n, b) in &generated {
        entries.push(Entry {
            name: n.clone(),
            size: b.len() as u64,
            sha256: sha256_hex(b),
        });
    }
    let pcap = capture.filter(|c| c.file.is_some() && !c.summary.entry.is_empty());
    if let Some(c) = pcap {
        entries.push(Entry {
            name: c.summary.entry.clone(),
            size: c.size,
            sha256: c.sha256.clone(),
        });
    }
    let manifest = Manifest {
        format_version: BUNDLE_FORMAT_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        host: cfg.host.clone(),
        incident: incident.clone(),
        window_since: crate::clock::format_rfc3339(since_ns),
        window_until: crate::clock::format_rfc3339(until_ns),
        window_since_unix_ns: since_ns,
        window_until_unix_ns: until_ns,
        complete,
        samples,
        events,
        entries,
        commands: deep.commands.clone(),
        collector_failures: failures.into_values().collect(),
        store_warnings,
        capture: capture.map(|c| c.summary.clone()),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");

    // Room for it? Estimate: the history compresses ~10x, deep state ~4x.
    let need = hist_size / 8 + deep.bytes() / 3 + pcap.map_or(0, |c| c.size / 2) + 65536;
    if let Some(free) = crate::store::writer::free_bytes(&cfg.dir) {
        if free < cfg.min_free_bytes + need {
            prune(cfg, &final_path);
            let free = crate::store::writer::free_bytes(&cfg.dir).unwrap_or(free);
            if free < cfg.min_free_bytes + need {
                return Err(BundleError::NoSpace {
                    dir: cfg.dir.display().to_string(),
                    free,
                    need,
                    min: cfg.min_free_bytes,
                });
            }
        }
    }

    let tmp_path = cfg.dir.join(format!(".{name}.tmp"));
    let res = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp_path)?;
        let enc = zstd::Encoder::new(f, 3)?;
        let mut tar = tar::Builder::new(enc);
        // Every entry: a regular file, owner-only, the incident's time.
        let add = |tar: &mut tar::Builder<zstd::Encoder<'static, std::fs::File>>,
                   path: &str,
                   size: u64,
                   data: &mut dyn std::io::Read|
         -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o600);
            h.set_mtime((incident.ts_unix_ns / 1_000_000_000).max(0) as u64);
            h.set_cksum();
            tar.append_data(&mut h, path, data)
        };
        add(
            &mut tar,
            "manifest.json",
            manifest_json.len() as u64,
            &mut &manifest_json[..],
        )?;
        add(
            &mut tar,
            "history/records.jsonl",
            hist_size,
            &mut std::fs::File::open(&hist_path)?,
        )?;
        for f in &deep.files {
            add(&mut tar, &f.name, f.size, &mut deep.reader(f))?;
        }
        for (n, b) in &generated {
            add(&mut tar, n, b.len() as u64, &mut &b[..])?;
        }
        if let Some((c, f)) = pcap.and_then(|c| Some((c, c.file.as_ref()?))) {
            add(&mut tar, &c.summary.entry, c.size, &mut f.reopen()?)?;
        }
        let enc = tar.into_inner()?;
        let f = enc.finish()?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp_path);
        return Err(io(&tmp_path, e));
    }
    std::fs::rename(&tmp_path, &final_path).map_err(|e| io(&final_path, e))?;
    if let Ok(d) = std::fs::File::open(&cfg.dir) {
        let _ = d.sync_all();
    }
    prune(cfg, &final_path);
    Ok(final_path)
}
