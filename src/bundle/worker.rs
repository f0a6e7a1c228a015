//! The bundle worker: a thread that turns incidents into bundles so the
//! sampling loop never waits for deep-state commands or compression. A
//! trigger arriving while a bundle is being written is queued, not lost; a
//! bundle that cannot be written (disk full) is retried until it can.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use super::writer::{self, BundleConfig};
use super::Incident;

pub struct TriggerRequest {
    pub trigger: String,
    pub reason: String,
    /// Support case label, recorded in the manifest (empty = none).
    pub case: String,
    /// Answered once the first (immediate) bundle is on disk.
    pub reply: Option<Sender<Result<(String, PathBuf), String>>>,
}

pub struct BundleWorker {
    tx: Sender<TriggerRequest>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<BundleStats>,
}

/// What the worker has done, for /metrics.
#[derive(Debug, Default)]
pub struct BundleStats {
    /// Bundle files written (the immediate one and the complete one each count).
    pub written: AtomicU64,
    /// Attempts that failed (each is retried).
    pub write_failures: AtomicU64,
    /// 1 while an incident's bundle is not complete yet.
    pub in_progress: AtomicU64,
}

fn incident_id(ts: i64) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(
        format!(
            "{ts}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .as_bytes(),
    );
    d.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

/// Retry delay when a bundle could not be written.
const RETRY: Duration = Duration::from_secs(10);

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

impl BundleWorker {
    pub fn start(cfg: BundleConfig) -> std::io::Result<BundleWorker> {
        Self::start_with_capture(cfg, None)
    }

    /// With the packet ring: each bundle gets its packets as pcapng.
    pub fn start_with_capture(
        cfg: BundleConfig,
        capture: Option<crate::capture::CaptureHandle>,
    ) -> std::io::Result<BundleWorker> {
        let (tx, rx) = mpsc::channel::<TriggerRequest>();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let stats = Arc::new(BundleStats::default());
        let st2 = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("hvflight-bundle".into())
            .spawn(move || run(cfg, capture, rx, s2, &st2))?;
        Ok(BundleWorker {
            tx,
            stop,
            thread: Some(thread),
            stats,
        })
    }

    pub fn stats(&self) -> Arc<BundleStats> {
        Arc::clone(&self.stats)
    }

    pub fn sender(&self) -> Sender<TriggerRequest> {
        self.tx.clone()
    }
}

impl Drop for BundleWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    cfg: BundleConfig,
    capture: Option<crate::capture::CaptureHandle>,
    rx: Receiver<TriggerRequest>,
    stop: Arc<AtomicBool>,
    stats: &BundleStats,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(req) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let now = crate::clock::now().unix_ns;
        let incident = Incident {
            id: incident_id(now),
            trigger: req.trigger.clone(),
            reason: req.reason.clone(),
            ts_unix_ns: now,
            ts: crate::clock::format_rfc3339(now),
            case: req.case.clone(),
        };
        tracing::warn!(id = %incident.id, trigger = %incident.trigger, reason = %incident.reason, "incident: writing bundle");
        stats.in_progress.store(1, Ordering::Relaxed);
        // The ring keeps what this incident needs until its bundle is
        // complete (the deadline covers a worker that never gets there).
        let hold = capture.as_ref().map(|c| {
            let before = c.config().before_s as i64 * 1_000_000_000;
            let after = (cfg.after_s.max(c.config().after_s) + 120) as i64 * 1_000_000_000;
            (
                c,
                c.hold(incident.ts_unix_ns - before, incident.ts_unix_ns + after),
            )
        });
        super::give_back(cfg.trim_file_pages, "before");
        let deep = writer::capture_deep(&cfg);
        super::give_back(cfg.trim_file_pages, "deep state");
        // First: at once, with what happened before (a reboot may follow).
        let mut reply = req.reply;
        loop {
            let now = crate::clock::now().unix_ns;
            let pcap = capture
                .as_ref()
                .map(|c| writer::capture_file(&cfg, c, incident.ts_unix_ns, now));
            match writer::write(&cfg, &incident, &deep, pcap.as_ref(), now, false) {
                Ok(p) => {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(bundle = %p.display(), "bundle written (incident start)");
                    super::give_back(cfg.trim_file_pages, "first write");
                    if let Some(r) = reply.take() {
                        let _ = r.send(Ok((incident.id.clone(), p)));
                    }
                    break;
                }
                Err(e) => {
                    stats.write_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "bundle not written; retrying in {} s", RETRY.as_secs());
                    if let Some(r) = reply.take() {
                        let _ = r.send(Err(format!("{e} (the agent retries in the background)")));
                    }
                    if !sleep_unless_stopped(RETRY, &stop) {
                        return;
                    }
                }
            }
        }
        // Then complete, after the post-incident window.
        let until = incident.ts_unix_ns + cfg.after_s as i64 * 1_000_000_000;
        let wait = Duration::from_nanos((until - crate::clock::now().unix_ns).max(0) as u64)
            + Duration::from_millis(200);
        if !sleep_unless_stopped(wait, &stop) {
            return;
        }
        let pcap = capture
            .as_ref()
            .map(|c| writer::capture_file(&cfg, c, incident.ts_unix_ns, until));
        if let Some((c, id)) = hold {
            c.release(id);
        }
        loop {
            match writer::write(&cfg, &incident, &deep, pcap.as_ref(), until, true) {
                Ok(p) => {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                    stats.in_progress.store(0, Ordering::Relaxed);
                    tracing::info!(bundle = %p.display(), "bundle complete");
                    super::give_back(cfg.trim_file_pages, "complete write");
                    if let Some(a) = &cfg.announce {
                        let _ = a.send(p);
                    }
                    break;
                }
                Err(e) => {
                    stats.write_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "complete bundle not written; retrying in {} s", RETRY.as_secs());
                    if !sleep_unless_stopped(RETRY, &stop) {
                        return;
                    }
                }
            }
        }
    }
}
