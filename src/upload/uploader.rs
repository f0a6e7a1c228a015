//! The agent's uploader: a thread (with its own single-threaded tokio
//! runtime for object_store) fed by the bundle worker with every completed
//! bundle. It queues them in the spool and works through the spool oldest
//! first, one entry at a time, each when its backoff has passed — for as
//! long as it takes: the network may be down for hours during a collapse.
//!
//! At start (and every minute) it also queues bundles in bundles/ that have
//! no spool entry yet: complete ones (announced while the agent was down or
//! before upload was enabled) and incomplete ones whose incident is older
//! than the post-window plus two minutes (their agent died before
//! completing them — exactly the bundles a reboot would otherwise take).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::job::{self, Context};
use super::progress::Progress;
use super::spool::{Spool, State};
use super::status::UploadStatus;
use super::{key, Settings, UploadError};

/// Status and metrics read the uploader through this.
#[derive(Clone)]
pub struct Handle {
    pub status: Arc<Mutex<UploadStatus>>,
    pub progress: Arc<Progress>,
    pub spool: Spool,
}

impl Handle {
    pub fn to_json(&self) -> serde_json::Value {
        let mut st = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(c) = st.current.as_mut() {
            c.2 = self.progress.done();
        }
        st.to_json(&self.spool)
    }

    pub fn snapshot(&self) -> UploadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct Uploader {
    tx: Sender<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub handle: Handle,
}

impl Uploader {
    pub fn start(settings: Settings) -> std::io::Result<Uploader> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Context::new(settings);
        let c = &ctx.settings.config;
        let status = Arc::new(Mutex::new(UploadStatus {
            enabled: true,
            endpoint: c.endpoint.clone(),
            bucket: c.bucket.clone(),
            bandwidth_limit_bytes_per_s: c.bandwidth_limit_bytes_per_s,
            spool: ctx.spool.summary(),
            ..Default::default()
        }));
        let handle = Handle {
            status: Arc::clone(&status),
            progress: Arc::clone(&ctx.progress),
            spool: ctx.spool.clone(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("hvflight-upload".into())
            .spawn(move || run(ctx, rt, rx, s2, status))?;
        Ok(Uploader {
            tx,
            stop,
            thread: Some(thread),
            handle,
        })
    }

    /// Where the bundle worker announces completed bundles.
    pub fn sender(&self) -> Sender<PathBuf> {
        self.tx.clone()
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Queues one bundle: key from its manifest (host, incident day, case).
pub fn enqueue_bundle(
    ctx: &Context,
    path: &Path,
) -> Result<(super::spool::Entry, bool), UploadError> {
    let m = crate::bundle::verify::manifest(path).map_err(|msg| UploadError::Bundle {
        path: path.display().to_string(),
        msg,
    })?;
    let host = if m.host.is_empty() {
        ctx.settings.host.clone()
    } else {
        m.host.clone()
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let k = key::object_key(
        &ctx.settings.config.key_prefix,
        &host,
        m.incident.ts_unix_ns,
        &m.incident.case,
        &name,
    );
    ctx.spool.enqueue(
        path,
        &m.incident.case,
        &k,
        &m.incident.id,
        ctx.settings.config.spool_max_bytes,
    )
}

fn intake(ctx: &Context, path: &Path) {
    match enqueue_bundle(ctx, path) {
        Ok((e, true)) if e.state == State::Dropped => {
            tracing::error!(bundle = %path.display(), error = %e.last_error, "upload: bundle NOT queued")
        }
        Ok((e, true)) => {
            tracing::info!(bundle = %path.display(), key = %e.key, "upload: bundle queued")
        }
        Ok((_, false)) => {}
        Err(e) => tracing::error!(error = %e, "upload: bundle not queued"),
    }
}

/// Bundles in bundles/ without a spool entry that will not be announced.
fn scan(ctx: &Context) {
    let now = crate::clock::now().unix_ns;
    let stale_ns = (ctx.settings.bundle_after_s as i64 + 120) * 1_000_000_000;
    for p in crate::bundle::writer::list(&ctx.settings.bundles_dir) {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !ctx.spool.for_bundle(&name).is_empty() {
            continue;
        }
        let Ok(m) = crate::bundle::verify::manifest(&p) else {
            continue;
        };
        if m.complete || now - m.incident.ts_unix_ns > stale_ns {
            intake(ctx, &p);
        }
    }
}

fn refresh(ctx: &Context, status: &Mutex<UploadStatus>) {
    let s = ctx.spool.summary();
    status.lock().unwrap_or_else(|e| e.into_inner()).spool = s;
}

const RESCAN: Duration = Duration::from_secs(60);
/// Uploaded records are forgotten this long after their bundle left bundles/.
const FORGET_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;

fn run(
    ctx: Context,
    rt: tokio::runtime::Runtime,
    rx: Receiver<PathBuf>,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<UploadStatus>>,
) {
    ctx.spool.clean_orphans();
    for e in ctx.spool.list().0 {
        if e.state == State::Uploaded {
            job::finish_local(&ctx, &e); // a crash between recording and removing
        }
    }
    ctx.spool.prune(&ctx.settings.bundles_dir, FORGET_NS);
    let mut last_scan: Option<Instant> = None;
    let mut reported: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if last_scan.is_none_or(|t| t.elapsed() >= RESCAN) {
            scan(&ctx);
            ctx.spool.prune(&ctx.settings.bundles_dir, FORGET_NS);
            last_scan = Some(Instant::now());
        }
        while let Ok(p) = rx.try_recv() {
            intake(&ctx, &p);
        }
        let (entries, errors) = ctx.spool.list();
        for e in errors {
            let s = e.to_string();
            if !reported.contains(&s) {
                tracing::error!(error = %s, "upload: spool entry unreadable, skipped");
                reported.push(s);
            }
        }
        refresh(&ctx, &status);
        let now = crate::clock::now().unix_ns;
        let due = entries.iter().find(|e| {
            e.state.pending() && e.next_attempt_unix_ns <= now && !ctx.spool.busy(&e.name)
        });
        let Some(due) = due else {
            let next = entries
                .iter()
                .filter(|e| e.state.pending())
                .map(|e| e.next_attempt_unix_ns)
                .min();
            let wait = next
                .map(|t| Duration::from_nanos((t - now).clamp(0, i64::MAX) as u64))
                .unwrap_or(RESCAN)
                .clamp(Duration::from_millis(200), Duration::from_secs(5));
            if let Ok(p) = rx.recv_timeout(wait) {
                intake(&ctx, &p);
            }
            continue;
        };
        let claim = match ctx.spool.claim(&due.name, false) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "upload: cannot claim spool entry");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        // Re-read under the claim: `hvflight bundle upload` may have finished it.
        let mut e = match ctx.spool.load(&due.name) {
            Ok(Some(e)) if e.state.pending() => e,
            _ => continue,
        };
        status.lock().unwrap_or_else(|x| x.into_inner()).current =
            Some((e.name.clone(), e.size, 0));
        let r = job::attempt(&ctx, &rt, &mut e, &stop);
        drop(claim);
        let now = crate::clock::now().unix_ns;
        let mut st = status.lock().unwrap_or_else(|x| x.into_inner());
        st.current = None;
        match r {
            Ok(u) => {
                st.uploads_total += 1;
                st.last_success_unix_ns = now;
                st.last_success = u.location.clone();
                let rate = u.bytes_sent as f64 / u.seconds.max(1e-6) / 1048576.0;
                tracing::info!(
                    entry = %e.name, location = %u.location, bytes = e.size,
                    seconds = format!("{:.1}", u.seconds), mib_per_s = format!("{rate:.2}"),
                    already_there = u.already_there, "upload: done and verified"
                );
            }
            Err(UploadError::Stopped) => {}
            Err(err) => {
                st.failures_total += 1;
                st.last_error = format!("{}: {err}", e.name);
                st.last_error_unix_ns = now;
                tracing::warn!(
                    entry = %e.name, attempts = e.attempts,
                    retry_in_s = (e.next_attempt_unix_ns - now) / 1_000_000_000,
                    error = %err, "upload failed; the bundle stays in the spool and is retried"
                );
            }
        }
        drop(st);
        refresh(&ctx, &status);
    }
}
