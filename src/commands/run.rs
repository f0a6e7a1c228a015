//! The agent-side commands: `run` (the agent and everything it drives per
//! sample: store, detector, bundles, control socket, metrics) and `sample`.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::agent::{self, print, Agent, Output};
use crate::cli::AgentOpts;
use crate::config;

/// Loads settings, warns about unknown keys and enters the namespace. Runs
/// before any thread exists (setns applies to the calling thread only).
pub fn prepare(opts: &AgentOpts) -> Result<agent::Resolved> {
    let resolved = agent::resolve(opts)?;
    for u in &resolved.unknown {
        tracing::warn!("{u}");
    }
    if !resolved.config.agent.netns.is_empty() {
        crate::source::netns::enter_process(&resolved.config.agent.netns)?;
    }
    Ok(resolved)
}

pub fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&flag)).context("installing signal handler")?;
    }
    Ok(flag)
}

/// One malloc arena for the whole agent (glibc's default is up to 8 per
/// CPU): each thread that allocates would otherwise get an arena of its
/// own, and memory freed in one (a sample, parsed libvirt XML) is not
/// reused by the others. Measured at 500 vNICs: ~4 MiB less anonymous
/// memory, no measurable CPU (the threads besides the sampler allocate
/// little, and glibc's per-thread cache serves small blocks without the
/// arena's lock). An operator's MALLOC_ARENA_MAX (glibc reads it itself)
/// is left alone.
fn tune_malloc() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called before the
    // agent starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

pub fn run(opts: &AgentOpts, print: bool, json: bool, count: Option<u64>) -> Result<ExitCode> {
    tune_malloc();
    let resolved = prepare(opts)?;
    // Each stage of start-up gives back the file pages it touched before the
    // next stage maps its own (agent/trim.rs): the peak since start stays
    // near the running agent's RSS.
    let mut startup =
        crate::agent::trim::Startup::new(resolved.config.agent.trim_pages_after_ms > 0);
    startup.after("config and namespace");
    let shutdown = shutdown_flag()?;
    let mut agent = Agent::new(resolved.config);
    agent.start_event_sources();
    startup.after("event sources");
    let capture = start_capture(&mut agent);
    startup.after("capture");
    tracing::info!(
        host = %agent::hostname(&agent.config),
        interval_ms = agent.config.agent.interval_ms,
        unknown_config_keys = resolved.unknown.len(),
        "agent running"
    );
    let mut store = open_store(&agent.config);
    startup.after("store");
    let status = Arc::new(std::sync::Mutex::new(agent::status::AgentStatus::new(
        agent::hostname(&agent.config),
        agent.config.agent.interval_ms,
        agent.config.agent.libvirt_uri.clone(),
    )));
    {
        let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
        st.config_file = resolved
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        st.unknown_config_keys = resolved.unknown.iter().map(|u| u.0.key.clone()).collect();
        st.store_dir = store.as_ref().map(|w| w.dir().to_path_buf());
        st.bundles_dir = Some(agent.config.agent.state_dir.join("bundles"));
    }
    let status_fn: crate::control::server::StatusFn = {
        let status = Arc::clone(&status);
        Arc::new(move || status.lock().unwrap_or_else(|e| e.into_inner()).to_json())
    };
    let uploader = if agent.config.upload.enabled {
        match crate::upload::uploader::Uploader::start(crate::upload::Settings::from_config(
            &agent.config,
            &agent::hostname(&agent.config),
        )) {
            Ok(u) => {
                tracing::info!(endpoint = %agent.config.upload.endpoint, bucket = %agent.config.upload.bucket, "uploader running");
                Some(u)
            }
            Err(e) => {
                tracing::error!(error = %e, "uploader not started: bundles stay on this node");
                None
            }
        }
    } else {
        None
    };
    if let Some(u) = &uploader {
        status.lock().unwrap_or_else(|e| e.into_inner()).upload = Some(u.handle.clone());
    }
    let mut bundle_cfg = crate::bundle::writer::BundleConfig::from_config(
        &agent.config,
        &agent::hostname(&agent.config),
    );
    bundle_cfg.announce = uploader.as_ref().map(|u| u.sender());
    startup.after("uploader");
    let bundles = match crate::bundle::worker::BundleWorker::start_with_capture(
        bundle_cfg,
        capture.as_ref().map(|c| c.handle()),
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "bundle worker not started: no bundles can be taken");
            None
        }
    };
    let trigger_fn: Option<crate::control::server::TriggerFn> = bundles.as_ref().map(|w| {
        let tx = std::sync::Mutex::new(w.sender());
        let f: crate::control::server::TriggerFn = Arc::new(move |reason: String, case: String| {
            let (rtx, rrx) = std::sync::mpsc::channel();
            let req = crate::bundle::worker::TriggerRequest {
                trigger: "manual".into(),
                reason,
                case,
                reply: Some(rtx),
            };
            tx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(req)
                .map_err(|_| "the bundle worker is gone".to_string())?;
            let (id, path) = rrx
                .recv()
                .map_err(|_| "the bundle worker stopped".to_string())??;
            Ok((id, path.display().to_string()))
        });
        f
    });
    startup.after("bundle worker");
    let control = match crate::control::server::ControlServer::start(
        &agent.config.agent.socket,
        &agent.config.agent.socket_group,
        agent.config.agent.tail_queue_lines as usize,
        crate::control::server::Handlers {
            status: status_fn,
            trigger: trigger_fn,
        },
    ) {
        Ok(c) => Some(c),
        Err(e @ crate::control::server::ControlError::InUse { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "control socket unavailable: tail and status will not reach this agent");
            None
        }
    };
    let exporter = Arc::new(crate::metrics::Exporter::new(
        &agent.config,
        &agent::hostname(&agent.config),
        bundles.as_ref().map(|w| w.stats()),
    ));
    exporter
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drops
        .top = agent.config.agent.metrics_drop_interfaces as usize;
    if !agent.config.agent.metrics_listen.is_empty() {
        match crate::metrics::serve(&agent.config.agent.metrics_listen, Arc::clone(&exporter)) {
            Ok(()) => {
                tracing::info!(listen = %agent.config.agent.metrics_listen, "metrics endpoint up")
            }
            Err(e) => {
                tracing::error!(error = %e, "metrics endpoint unavailable; the agent goes on without it")
            }
        }
    }
    exporter
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unknown_config_keys = resolved.unknown.len() as u64;
    let bundles_dir = agent.config.agent.state_dir.join("bundles");
    let mut detector = crate::detect::Detector::new(agent.config.detect.clone());
    let detect_on = agent.config.detect.enabled;
    let mut detector_reason = String::new();
    let incident_tx = bundles.as_ref().map(|w| w.sender());
    let mut pending: Vec<crate::sample::Event> = Vec::new();
    let mut out = std::io::stdout().lock();
    let trim_after = std::time::Duration::from_millis(agent.config.agent.trim_pages_after_ms);
    let mut trim_at = (!trim_after.is_zero()).then(|| std::time::Instant::now() + trim_after);
    startup.after("control socket and exporter");
    agent.run(&shutdown, count, |o| {
        if let Output::Sample { .. } = &o {
            // The first sample's full dumps are the last stage of start-up.
            startup.after("first sample");
            startup.finish();
        }
        if let (Output::Sample { .. }, Some(at)) = (&o, trim_at) {
            if std::time::Instant::now() >= at {
                trim_at = None;
                match crate::agent::trim::trim_file_pages() {
                    Ok(t) => tracing::info!(
                        mappings = t.mappings,
                        kib = t.kib,
                        "unmapped the file pages start-up touched"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not read /proc/self/smaps to trim file pages"),
                }
            }
        }
        // The detector judges every sample; what it decides becomes events
        // (stored, tailed) and, for a collapse, an incident with a bundle.
        let mut detector_events: Vec<crate::sample::Event> = Vec::new();
        if let (Output::Event(e), true) = (&o, detect_on) {
            detector.on_event(e);
        }
        if let (Output::Sample { sample, model }, true) = (&o, detect_on) {
            for a in detector.observe(sample, model) {
                use crate::detect::Action;
                let kind = match a {
                    Action::Transition { from, to, reason } => {
                        detector_reason = if to == crate::detect::State::Healthy {
                            String::new()
                        } else {
                            reason.clone()
                        };
                        if to == crate::detect::State::Suspect {
                            // The minutes before may be needed after a reboot.
                            if let Some(w) = store.as_mut() {
                                w.sync_now();
                            }
                        }
                        tracing::warn!(from = from.name(), to = to.name(), %reason, "detector");
                        crate::sample::EventKind::Detector {
                            from: from.name().into(),
                            to: to.name().into(),
                            reason,
                            eligible_guests: detector.eligible(),
                        }
                    }
                    Action::Incident { reason, kind } => {
                        exporter.on_incident();
                        if let Some(tx) = &incident_tx {
                            let _ = tx.send(crate::bundle::worker::TriggerRequest {
                                trigger: kind.trigger().into(),
                                reason,
                                case: String::new(),
                                reply: None,
                            });
                        }
                        continue;
                    }
                    Action::GuestCutOff {
                        iface,
                        domain,
                        reason,
                    } => {
                        tracing::warn!(%iface, %domain, %reason, "guest cut off");
                        crate::sample::EventKind::GuestCutOff {
                            iface,
                            domain,
                            reason,
                        }
                    }
                    Action::Degradation {
                        what,
                        reason,
                        active,
                    } => {
                        if active {
                            tracing::warn!(%what, %reason, "degraded");
                        } else {
                            tracing::info!(%what, "degradation over");
                        }
                        crate::sample::EventKind::Degradation {
                            what,
                            reason,
                            active,
                        }
                    }
                };
                detector_events.push(crate::sample::Event {
                    ts_unix_ns: sample.ts_unix_ns,
                    mono_ns: sample.mono_ns,
                    kind,
                });
            }
            let det = detector.status_json(&detector_reason);
            status.lock().unwrap_or_else(|e| e.into_inner()).detector = det;
        }
        if let Output::Event(e) = &o {
            exporter.on_event(e);
        }
        for e in &detector_events {
            exporter.on_event(e);
            pending.push(e.clone());
            if let Some(c) = control.as_ref().filter(|c| c.has_clients()) {
                c.publish(print::event_json(e));
            }
            if print {
                println!("{}", print::event_line(e));
            } else if json {
                println!("{}", serde_json::to_string(e).unwrap_or_default());
            }
        }
        if let Output::Sample { sample, .. } = &o {
            let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
            st.on_sample(sample);
            st.store_dropped = store.as_ref().map_or(0, |w| w.dropped);
            st.tail_clients = control.as_ref().map_or(0, |c| c.client_count());
            drop(st);
            exporter.on_sample(sample);
            {
                let mut ex = exporter.state.lock().unwrap_or_else(|e| e.into_inner());
                ex.detector_state = if detect_on {
                    detector.state.name().into()
                } else {
                    String::new()
                };
                ex.eligible_guests = detector.eligible() as u64;
                ex.guests = detector.total() as u64;
                ex.detector_bridges = detector
                    .last
                    .iter()
                    .map(|v| {
                        (
                            v.bridge.clone(),
                            v.eligible_guests as u64,
                            v.total_guests as u64,
                        )
                    })
                    .collect();
                ex.degraded = detector.degraded().into_iter().map(|(w, _)| w).collect();
            }
            // Directory sizes: every tenth sample is enough for a scrape.
            if sample.seq % 10 == 1 {
                let mut ex = exporter.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(w) = store.as_ref() {
                    ex.store_bytes = crate::store::writer::segments(w.dir())
                        .iter()
                        .filter_map(|p| std::fs::metadata(p).ok())
                        .map(|m| m.len())
                        .sum();
                    ex.store_dropped_records = w.dropped;
                }
                let all = crate::bundle::writer::list(&bundles_dir);
                ex.bundles = all.len() as u64;
                ex.bundle_bytes = all
                    .iter()
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum();
                ex.last_incident_unix_s = all
                    .last()
                    .and_then(|p| crate::bundle::verify::manifest(p).ok())
                    .map(|m| m.incident.ts_unix_ns as f64 / 1e9);
                ex.tail_clients = control.as_ref().map_or(0, |c| c.client_count()) as u64;
                ex.upload = uploader.as_ref().map(|u| {
                    let s = u.handle.snapshot();
                    crate::metrics::UploadMetrics {
                        spool_bundles: s.spool.pending,
                        spool_bytes: s.spool.pending_bytes,
                        uploads_total: s.uploads_total,
                        failures_total: s.failures_total,
                        last_success_unix_s: (s.last_success_unix_ns > 0)
                            .then(|| s.last_success_unix_ns as f64 / 1e9),
                    }
                });
            }
        }
        if let Some(c) = control.as_ref().filter(|c| c.has_clients()) {
            let line = match &o {
                Output::Sample { sample, model } => {
                    let mut t = crate::control::tick::tick(sample, model);
                    t.detector = if detect_on {
                        detector.state.name().into()
                    } else {
                        "off".into()
                    };
                    t.eligible_guests = detector.eligible();
                    serde_json::to_string(&t).unwrap_or_default()
                }
                Output::Event(e) => print::event_json(e),
            };
            c.publish(line);
        }
        if let Some(w) = store.as_mut() {
            let r = match &o {
                Output::Event(e) => {
                    pending.push((*e).clone());
                    Ok(true)
                }
                Output::Sample { sample, .. } => w
                    .write_events(&pending)
                    .and_then(|_| w.write_sample(sample))
                    .inspect(|_| {
                        pending.clear();
                        // The agent's start (every link announced) queues
                        // thousands of events at 500 vNICs; a second
                        // usually a handful. Do not keep the start's capacity.
                        pending.shrink_to(256);
                    }),
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "store write failed");
            }
        }
        let line = match (o, print, json) {
            (Output::Sample { sample, model }, true, _) => print::sample_line(sample, model),
            (Output::Event(e), true, _) => print::event_line(e),
            (Output::Sample { sample, .. }, _, true) => print::sample_json(sample),
            (Output::Event(e), _, true) => serde_json::to_string(e).unwrap_or_default(),
            _ => return,
        };
        use std::io::Write;
        // A closed stdout (e.g. `| head`) must not kill the agent.
        let _ = writeln!(out, "{line}").and_then(|_| out.flush());
    });
    if let Some(w) = store.as_mut() {
        let _ = w.write_events(&pending);
        w.sync_now();
    }
    drop(control);
    drop(bundles);
    drop(uploader);
    drop(capture);
    Ok(ExitCode::SUCCESS)
}

/// The packet ring (docs/capture.md): a thread in the agent's namespace and
/// a collector that tells it what to capture and reports its counters.
fn start_capture(agent: &mut Agent) -> Option<crate::capture::CaptureThread> {
    if !agent.config.capture.enabled {
        return None;
    }
    match crate::capture::CaptureThread::start(
        agent.config.capture.clone(),
        None,
        Some(agent.events_sender()),
    ) {
        Ok(t) => {
            agent.add_collector(Box::new(crate::capture::collector::CaptureCollector::new(
                t.handle(),
            )));
            Some(t)
        }
        Err(e) => {
            tracing::error!(error = %e, "packet capture not started: bundles will have no packets");
            None
        }
    }
}

pub fn open_store(cfg: &config::Config) -> Option<crate::store::StoreWriter> {
    let wc = crate::store::WriterConfig::from_config(cfg, &agent::hostname(cfg));
    let dir = wc.dir.clone();
    match crate::store::StoreWriter::open(wc) {
        Ok(w) => {
            tracing::info!(dir = %dir.display(), "store open");
            Some(w)
        }
        Err(e) => {
            tracing::error!(error = %e, "store unavailable: sampling goes on, nothing is recorded on disk");
            None
        }
    }
}

pub fn sample(opts: &AgentOpts, once: bool, json: bool, count: Option<u64>) -> Result<ExitCode> {
    let resolved = prepare(opts)?;
    let shutdown = shutdown_flag()?;
    let count = count.or(if once { Some(1) } else { None });
    let mut agent = Agent::new(resolved.config);
    // A one-shot sample should be complete: let the BPF program finish loading.
    agent.wait_ready(std::time::Duration::from_secs(5));
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    agent.run(&shutdown, count, |o| {
        use std::io::Write;
        if let Output::Sample { sample, model } = o {
            let line = if json {
                serde_json::to_string(&**sample)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            } else {
                print::sample_line(sample, model)
            };
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                failed = true;
            }
        }
    });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
