//! hvflight: parse the command line, start logging, dispatch.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser;

use hvflight::agent::{self, print, Agent, Output};
use hvflight::cli::{AgentOpts, BundleCommand, Cli, Command, ConfigCommand};
use hvflight::config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hvflight: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn dispatch(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Run {
            opts,
            print,
            json,
            count,
        } => run(&opts, print, json, count),
        Command::Sample {
            opts,
            once,
            json,
            count,
        } => sample(&opts, once, json, count),
        Command::Demo {
            guests,
            short,
            interval_ms,
        } => hvflight::demo::run(guests, short, interval_ms),
        Command::Tail {
            opts,
            json,
            iface,
            domain,
            events_only,
            since,
        } => tail(
            &opts,
            json,
            hvflight::control::client::TailFilter {
                iface,
                domain,
                events_only,
            },
            since.as_deref(),
        ),
        Command::Status { opts, json } => status(&opts, json),
        Command::Trigger {
            opts,
            reason,
            timeout_s,
        } => trigger(&opts, &reason, timeout_s),
        Command::Bundle { command } => bundle(command),
        Command::History {
            opts,
            since,
            until,
            iface,
            domain,
            json,
        } => history(&opts, &since, until.as_deref(), iface, domain, json),
        Command::Lab {
            guests,
            tap_guests,
            traffic,
        } => hvflight::demo::hold_lab(guests, tap_guests, traffic),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_FILE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(file),
    }
}

/// Loads settings, warns about unknown keys and enters the namespace. Runs
/// before any thread exists (setns applies to the calling thread only).
fn prepare(opts: &AgentOpts) -> Result<agent::Resolved> {
    let resolved = agent::resolve(opts)?;
    for u in &resolved.unknown {
        tracing::warn!("{u}");
    }
    if !resolved.config.agent.netns.is_empty() {
        hvflight::source::netns::enter_process(&resolved.config.agent.netns)?;
    }
    Ok(resolved)
}

fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&flag)).context("installing signal handler")?;
    }
    Ok(flag)
}

fn run(opts: &AgentOpts, print: bool, json: bool, count: Option<u64>) -> Result<ExitCode> {
    let resolved = prepare(opts)?;
    let shutdown = shutdown_flag()?;
    let mut agent = Agent::new(resolved.config);
    agent.start_event_sources();
    tracing::info!(
        host = %agent::hostname(&agent.config),
        interval_ms = agent.config.agent.interval_ms,
        unknown_config_keys = resolved.unknown.len(),
        "agent running"
    );
    let mut store = open_store(&agent.config);
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
    let status_fn: hvflight::control::server::StatusFn = {
        let status = Arc::clone(&status);
        Arc::new(move || status.lock().unwrap_or_else(|e| e.into_inner()).to_json())
    };
    let bundles = match hvflight::bundle::worker::BundleWorker::start(
        hvflight::bundle::writer::BundleConfig::from_config(
            &agent.config,
            &agent::hostname(&agent.config),
        ),
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "bundle worker not started: no bundles can be taken");
            None
        }
    };
    let trigger_fn: Option<hvflight::control::server::TriggerFn> = bundles.as_ref().map(|w| {
        let tx = std::sync::Mutex::new(w.sender());
        let f: hvflight::control::server::TriggerFn = Arc::new(move |reason: String| {
            let (rtx, rrx) = std::sync::mpsc::channel();
            let req = hvflight::bundle::worker::TriggerRequest {
                trigger: "manual".into(),
                reason,
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
    let control = match hvflight::control::server::ControlServer::start(
        &agent.config.agent.socket,
        &agent.config.agent.socket_group,
        agent.config.agent.tail_queue_lines as usize,
        hvflight::control::server::Handlers {
            status: status_fn,
            trigger: trigger_fn,
        },
    ) {
        Ok(c) => Some(c),
        Err(e @ hvflight::control::server::ControlError::InUse { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "control socket unavailable: tail and status will not reach this agent");
            None
        }
    };
    let exporter = Arc::new(hvflight::metrics::Exporter::default());
    if !agent.config.agent.metrics_listen.is_empty() {
        match hvflight::metrics::serve(&agent.config.agent.metrics_listen, Arc::clone(&exporter)) {
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
    let mut detector = hvflight::detect::Detector::new(agent.config.detect.clone());
    let detect_on = agent.config.detect.enabled;
    let mut detector_reason = String::new();
    let incident_tx = bundles.as_ref().map(|w| w.sender());
    let mut pending: Vec<hvflight::sample::Event> = Vec::new();
    let mut out = std::io::stdout().lock();
    agent.run(&shutdown, count, |o| {
        // The detector judges every sample; what it decides becomes events
        // (stored, tailed) and, for a collapse, an incident with a bundle.
        let mut detector_events: Vec<hvflight::sample::Event> = Vec::new();
        if let (Output::Sample { sample, model }, true) = (&o, detect_on) {
            for a in detector.observe(sample, model) {
                use hvflight::detect::Action;
                let kind = match a {
                    Action::Transition { from, to, reason } => {
                        detector_reason = if to == hvflight::detect::State::Healthy {
                            String::new()
                        } else {
                            reason.clone()
                        };
                        if to == hvflight::detect::State::Suspect {
                            // The minutes before may be needed after a reboot.
                            if let Some(w) = store.as_mut() {
                                w.sync_now();
                            }
                        }
                        tracing::warn!(from = from.name(), to = to.name(), %reason, "detector");
                        hvflight::sample::EventKind::Detector {
                            from: from.name().into(),
                            to: to.name().into(),
                            reason,
                            eligible_guests: detector.eligible(),
                        }
                    }
                    Action::Incident { reason } => {
                        if let Some(tx) = &incident_tx {
                            let _ = tx.send(hvflight::bundle::worker::TriggerRequest {
                                trigger: "detector".into(),
                                reason,
                                reply: None,
                            });
                        }
                        continue;
                    }
                    Action::GuestCutOff { iface, domain } => {
                        tracing::warn!(%iface, %domain, "guest cut off");
                        hvflight::sample::EventKind::GuestCutOff { iface, domain }
                    }
                };
                detector_events.push(hvflight::sample::Event {
                    ts_unix_ns: sample.ts_unix_ns,
                    mono_ns: sample.mono_ns,
                    kind,
                });
            }
            let det = serde_json::json!({
                "state": detector.state.name(),
                "eligible_guests": detector.eligible(),
                "total_guests": detector.total(),
                "reason": detector_reason,
            });
            status.lock().unwrap_or_else(|e| e.into_inner()).detector = det;
        }
        for e in &detector_events {
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
            }
            // Directory sizes: every tenth sample is enough for a scrape.
            if sample.seq % 10 == 1 {
                let mut ex = exporter.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(w) = store.as_ref() {
                    ex.store_bytes = hvflight::store::writer::segments(w.dir())
                        .iter()
                        .filter_map(|p| std::fs::metadata(p).ok())
                        .map(|m| m.len())
                        .sum();
                    ex.store_dropped_records = w.dropped;
                }
                let all = hvflight::bundle::writer::list(&bundles_dir);
                ex.bundles = all.len() as u64;
                ex.last_incident_unix_s = all
                    .last()
                    .and_then(|p| hvflight::bundle::verify::manifest(p).ok())
                    .map(|m| m.incident.ts_unix_ns as f64 / 1e9);
                ex.tail_clients = control.as_ref().map_or(0, |c| c.client_count()) as u64;
            }
        }
        if let Some(c) = control.as_ref().filter(|c| c.has_clients()) {
            let line = match &o {
                Output::Sample { sample, model } => {
                    let mut t = hvflight::control::tick::tick(sample, model);
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
                    .inspect(|_| pending.clear()),
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
    Ok(ExitCode::SUCCESS)
}

fn tail(
    opts: &AgentOpts,
    json: bool,
    filter: hvflight::control::client::TailFilter,
    since: Option<&str>,
) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let mut out = std::io::stdout().lock();
    if let Some(since) = since {
        let now = hvflight::clock::now().unix_ns;
        let since_ns = hvflight::store::history::parse_time(since, now)
            .map_err(|e| anyhow::anyhow!("--since {e}"))?;
        let q = hvflight::store::history::HistoryQuery {
            since_ns,
            until_ns: i64::MAX,
            iface: filter.iface.clone(),
            domain: filter.domain.clone(),
            json,
        };
        let dir = resolved.config.agent.state_dir.join("store");
        match hvflight::store::history::history(&dir, &q, &mut out) {
            Ok((_, warnings)) => warnings
                .iter()
                .for_each(|w| eprintln!("hvflight tail: warning: {w}")),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => eprintln!(
                "hvflight tail: cannot read history from {}: {e}",
                dir.display()
            ),
        }
    }
    match hvflight::control::client::tail(&resolved.config.agent.socket, &filter, json, &mut out) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ hvflight::control::client::ClientError::Agent(_)) => {
            eprintln!("hvflight tail: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("hvflight tail: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

fn trigger(opts: &AgentOpts, reason: &str, timeout_s: u64) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let sock = &resolved.config.agent.socket;
    match hvflight::control::client::trigger(
        sock,
        reason,
        std::time::Duration::from_secs(timeout_s),
    ) {
        Ok((id, path)) => {
            println!("{id} {path}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ hvflight::control::client::ClientError::Agent(_)) => {
            eprintln!("hvflight trigger: {e}");
            Ok(ExitCode::from(5))
        }
        Err(e) => {
            eprintln!("hvflight trigger: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

fn bundle(cmd: BundleCommand) -> Result<ExitCode> {
    use hvflight::bundle::{verify, writer};
    match cmd {
        BundleCommand::List { opts, json } => {
            let dir = agent::resolve(&opts)?
                .config
                .agent
                .state_dir
                .join("bundles");
            for p in writer::list(&dir) {
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                match verify::manifest(&p) {
                    Ok(m) if json => println!(
                        "{}",
                        serde_json::json!({"path": p, "size": size, "id": m.incident.id, "ts": m.incident.ts,
                            "trigger": m.incident.trigger, "reason": m.incident.reason, "complete": m.complete})
                    ),
                    Ok(m) => println!(
                        "{}  {}  {:>9} bytes  {:<8} {}  {}{}",
                        m.incident.id,
                        m.incident.ts,
                        size,
                        m.incident.trigger,
                        m.incident.reason,
                        p.display(),
                        if m.complete {
                            ""
                        } else {
                            "  (post-window pending)"
                        }
                    ),
                    Err(e) => eprintln!("hvflight bundle list: {e}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Show { opts, id } => {
            let dir = agent::resolve(&opts)?
                .config
                .agent
                .state_dir
                .join("bundles");
            let p = std::path::Path::new(&id);
            let path = if p.exists() {
                p.to_path_buf()
            } else {
                writer::list(&dir)
                    .into_iter()
                    .find(|b| {
                        b.file_name()
                            .is_some_and(|n| n.to_string_lossy().contains(&id))
                    })
                    .ok_or_else(|| anyhow::anyhow!("no bundle {id:?} in {}", dir.display()))?
            };
            let m = verify::manifest(&path).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Verify { path } => match verify::verify(&path) {
            Ok((m, problems)) if problems.is_empty() => {
                println!(
                    "{}: OK ({} entries, incident {}, {})",
                    path.display(),
                    m.entries.len(),
                    m.incident.id,
                    if m.complete {
                        "complete"
                    } else {
                        "post-window pending"
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
            Ok((_, problems)) => {
                for p in problems {
                    eprintln!("{}: {p}", path.display());
                }
                Ok(ExitCode::FAILURE)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

fn status(opts: &AgentOpts, json: bool) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let v = match hvflight::control::client::status(&resolved.config.agent.socket) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("hvflight status: {e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    if json {
        println!("{v}");
    } else {
        print!("{}", print::status_text(&v));
    }
    Ok(ExitCode::SUCCESS)
}

fn open_store(cfg: &config::Config) -> Option<hvflight::store::StoreWriter> {
    let wc = hvflight::store::WriterConfig::from_config(cfg, &agent::hostname(cfg));
    let dir = wc.dir.clone();
    match hvflight::store::StoreWriter::open(wc) {
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

fn history(
    opts: &AgentOpts,
    since: &str,
    until: Option<&str>,
    iface: Option<String>,
    domain: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let now = hvflight::clock::now().unix_ns;
    let since_ns = hvflight::store::history::parse_time(since, now)
        .map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let until_ns = match until {
        Some(u) => hvflight::store::history::parse_time(u, now)
            .map_err(|e| anyhow::anyhow!("--until {e}"))?,
        None => i64::MAX,
    };
    let dir = resolved.config.agent.state_dir.join("store");
    if !dir.is_dir() {
        anyhow::bail!(
            "no store at {} (is --state-dir right? has the agent run here?)",
            dir.display()
        );
    }
    let q = hvflight::store::history::HistoryQuery {
        since_ns,
        until_ns,
        iface,
        domain,
        json,
    };
    let mut out = std::io::stdout().lock();
    let (shown, warnings) = match hvflight::store::history::history(&dir, &q, &mut out) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e.into()),
    };
    for w in &warnings {
        eprintln!("hvflight history: warning: {w}");
    }
    if shown == 0 {
        eprintln!("hvflight history: nothing recorded in that range");
    }
    Ok(ExitCode::SUCCESS)
}

fn sample(opts: &AgentOpts, once: bool, json: bool, count: Option<u64>) -> Result<ExitCode> {
    let resolved = prepare(opts)?;
    let shutdown = shutdown_flag()?;
    let count = count.or(if once { Some(1) } else { None });
    let mut agent = Agent::new(resolved.config);
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    agent.run(&shutdown, count, |o| {
        use std::io::Write;
        if let Output::Sample { sample, model } = o {
            let line = if json {
                serde_json::to_string(sample).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
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

fn config_check(file: Option<std::path::PathBuf>) -> Result<ExitCode> {
    let path = file.unwrap_or_else(|| config::DEFAULT_PATH.into());
    match config::load(Some(&path)) {
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
        Ok(loaded) if !loaded.unknown.is_empty() => {
            for u in &loaded.unknown {
                eprintln!("{u}");
            }
            eprintln!(
                "{}: {} unknown key(s); the agent would ignore them",
                path.display(),
                loaded.unknown.len()
            );
            Ok(ExitCode::FAILURE)
        }
        Ok(_) => {
            println!("{}: OK", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
