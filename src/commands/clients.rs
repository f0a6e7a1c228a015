//! The client-side commands: `tail`, `status`, `trigger` (through the
//! control socket), `bundle`, `history` and `config check` (files only).

use std::process::ExitCode;

use anyhow::Result;

use crate::agent::{self, print};
use crate::cli::{AgentOpts, BundleCommand};
use crate::config;

pub fn tail(
    opts: &AgentOpts,
    json: bool,
    filter: crate::control::client::TailFilter,
    since: Option<&str>,
) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let mut out = std::io::stdout().lock();
    if let Some(since) = since {
        let now = crate::clock::now().unix_ns;
        let since_ns = crate::store::history::parse_time(since, now)
            .map_err(|e| anyhow::anyhow!("--since {e}"))?;
        let q = crate::store::history::HistoryQuery {
            since_ns,
            until_ns: i64::MAX,
            iface: filter.iface.clone(),
            domain: filter.domain.clone(),
            json,
        };
        let dir = resolved.config.agent.state_dir.join("store");
        match crate::store::history::history(&dir, &q, &mut out) {
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
    match crate::control::client::tail(&resolved.config.agent.socket, &filter, json, &mut out) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ crate::control::client::ClientError::Agent(_)) => {
            eprintln!("hvflight tail: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("hvflight tail: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

pub fn trigger(opts: &AgentOpts, reason: &str, case: &str, timeout_s: u64) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    if !case.is_empty() {
        crate::upload::key::check_case(case).map_err(anyhow::Error::msg)?;
    }
    let sock = &resolved.config.agent.socket;
    match crate::control::client::trigger(
        sock,
        reason,
        case,
        std::time::Duration::from_secs(timeout_s),
    ) {
        Ok((id, path)) => {
            println!("{id} {path}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ crate::control::client::ClientError::Agent(_)) => {
            eprintln!("hvflight trigger: {e}");
            Ok(ExitCode::from(5))
        }
        Err(e) => {
            eprintln!("hvflight trigger: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

pub fn bundle(cmd: BundleCommand) -> Result<ExitCode> {
    use crate::bundle::{verify, writer};
    match cmd {
        BundleCommand::List { opts, json } => {
            let cfg = agent::resolve(&opts)?.config;
            let dir = cfg.agent.state_dir.join("bundles");
            let spool = crate::upload::spool::Spool::new(cfg.agent.state_dir.join("spool"));
            let now = crate::clock::now().unix_ns;
            for p in writer::list(&dir) {
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let uploads = spool.for_bundle(&name);
                match verify::manifest(&p) {
                    Ok(m) if json => println!(
                        "{}",
                        serde_json::json!({"path": p, "size": size, "id": m.incident.id, "ts": m.incident.ts,
                            "trigger": m.incident.trigger, "reason": m.incident.reason, "complete": m.complete,
                            "case": m.incident.case,
                            "upload": uploads.iter().map(|e| upload_json(e, &spool, now)).collect::<Vec<_>>()})
                    ),
                    Ok(m) => println!(
                        "{}  {}  {:>9} bytes  {:<8} {}  {}{}{}",
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
                        },
                        upload_text(&uploads, &spool, now, cfg.upload.enabled)
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
        BundleCommand::Upload { opts, id, case } => {
            crate::commands::upload::upload(&opts, &id, case.as_deref())
        }
        BundleCommand::Analyze {
            path,
            format,
            out,
            config: config_file,
        } => {
            check_format(&format, out.as_deref())?;
            let cfg = config::load(config_file.as_deref())?
                .config
                .analyze_config();
            let t0 = std::time::Instant::now();
            let view = crate::analyze::load_bundle(&path, &cfg)?;
            let load_s = t0.elapsed().as_secs_f64();
            let mut r = crate::analyze::analyze(&view, &cfg);
            r.timings.insert(0, ("load".into(), load_s));
            print_report(&r, &format, out.as_deref())
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

/// An entry's upload state as `bundle list --json` shows it.
fn upload_json(
    e: &crate::upload::spool::Entry,
    spool: &crate::upload::spool::Spool,
    now: i64,
) -> serde_json::Value {
    let state = if e.state.pending() && spool.busy(&e.name) {
        "uploading"
    } else {
        e.state.name()
    };
    serde_json::json!({
        "entry": e.name, "state": state, "key": e.key, "case": e.case, "location": e.location,
        "attempts": e.attempts, "last_error": e.last_error,
        "next_attempt_in_s": if e.state.pending() { ((e.next_attempt_unix_ns - now).max(0) / 1_000_000_000) as f64 } else { 0.0 },
        "uploaded": if e.uploaded_unix_ns > 0 { crate::clock::format_rfc3339(e.uploaded_unix_ns) } else { String::new() },
    })
}

/// The upload column of `bundle list`.
fn upload_text(
    entries: &[crate::upload::spool::Entry],
    spool: &crate::upload::spool::Spool,
    now: i64,
    enabled: bool,
) -> String {
    use crate::upload::spool::State;
    if entries.is_empty() {
        return if enabled {
            "  [not queued for upload yet]".into()
        } else {
            String::new()
        };
    }
    let parts: Vec<String> = entries
        .iter()
        .map(|e| match e.state {
            State::Uploaded => format!("uploaded {}", e.location),
            State::Dropped => format!("NOT uploaded: {}", e.last_error),
            _ if spool.busy(&e.name) && e.attempts > 0 => format!(
                "uploading to {}, after {} failed attempt(s): {}",
                e.key, e.attempts, e.last_error
            ),
            _ if spool.busy(&e.name) => format!("uploading to {}", e.key),
            _ if e.attempts == 0 => format!("queued for upload to {}", e.key),
            _ => format!(
                "upload queued, {} failed attempt(s), next in {} s: {}",
                e.attempts,
                ((e.next_attempt_unix_ns - now).max(0)) / 1_000_000_000,
                e.last_error
            ),
        })
        .collect();
    format!("  [{}]", parts.join("; "))
}

pub fn status(opts: &AgentOpts, json: bool) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let v = match crate::control::client::status(&resolved.config.agent.socket) {
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

pub fn history(
    opts: &AgentOpts,
    since: &str,
    until: Option<&str>,
    iface: Option<String>,
    domain: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let now = crate::clock::now().unix_ns;
    let since_ns = crate::store::history::parse_time(since, now)
        .map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let until_ns = match until {
        Some(u) => {
            crate::store::history::parse_time(u, now).map_err(|e| anyhow::anyhow!("--until {e}"))?
        }
        None => i64::MAX,
    };
    let dir = resolved.config.agent.state_dir.join("store");
    if !dir.is_dir() {
        anyhow::bail!(
            "no store at {} (is --state-dir right? has the agent run here?)",
            dir.display()
        );
    }
    let q = crate::store::history::HistoryQuery {
        since_ns,
        until_ns,
        iface,
        domain,
        json,
    };
    let mut out = std::io::stdout().lock();
    let (shown, warnings) = match crate::store::history::history(&dir, &q, &mut out) {
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

pub fn config_check(file: Option<std::path::PathBuf>, allow_unknown: bool) -> Result<ExitCode> {
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
            Ok(if allow_unknown {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Ok(loaded) => {
            let group = &loaded.config.agent.socket_group;
            if !group.is_empty() && !matches!(nix::unistd::Group::from_name(group), Ok(Some(_))) {
                // Not an error: the agent still serves root (see control::server).
                eprintln!(
                    "{}: warning: agent.socket_group {group:?} does not exist here; the control socket would be root-only",
                    path.display()
                );
            }
            // The credentials file is checked here as the agent would (mode, owner, content).
            let u = &loaded.config.upload;
            if u.enabled {
                if let Err(e) = crate::upload::credentials::load(&u.credentials_file) {
                    eprintln!("{}: key `upload.credentials_file`: {e}", path.display());
                    return Ok(ExitCode::FAILURE);
                }
            }
            println!("{}: OK", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_format(format: &str, out: Option<&std::path::Path>) -> Result<()> {
    match format {
        "text" | "json" => Ok(()),
        "html" if out.is_some() => Ok(()),
        "html" => anyhow::bail!("--format html needs --out FILE (one self-contained page)"),
        other => anyhow::bail!("--format {other:?}: expected text, json or html"),
    }
}

/// Prints the report, or writes it to `out` (a temporary name beside it,
/// then renamed: never a half report under the final name).
fn print_report(
    report: &crate::analyze::Report,
    format: &str,
    out: Option<&std::path::Path>,
) -> Result<ExitCode> {
    use crate::analyze::report;
    let t_render = std::time::Instant::now();
    let body = match format {
        "json" => report::json::render(report) + "\n",
        "html" => report::html::render(report),
        _ => report::text::render(report),
    };
    if std::env::var_os("HVFLIGHT_TIMING").is_some() {
        for (stage, s) in &report.timings {
            eprintln!("timing: {stage} {s:.3} s");
        }
        eprintln!(
            "timing: render {format} {:.3} s",
            t_render.elapsed().as_secs_f64()
        );
    }
    match out {
        None => {
            use std::io::Write as _;
            let mut o = std::io::stdout().lock();
            if let Err(e) = o.write_all(body.as_bytes()) {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e.into());
                }
            }
        }
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))?;
            std::io::Write::write_all(&mut tmp, body.as_bytes())
                .map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))?;
            tmp.persist(path)
                .map_err(|e| anyhow::anyhow!("--out {}: {}", path.display(), e.error))?;
            eprintln!("report written to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn analyze_live(
    opts: &AgentOpts,
    since: &str,
    format: &str,
    out: Option<&std::path::Path>,
) -> Result<ExitCode> {
    check_format(format, out)?;
    let resolved = agent::resolve(opts)?;
    let now = crate::clock::now().unix_ns;
    let since_ns = crate::store::history::parse_time(since, now)
        .map_err(|e| anyhow::anyhow!("--since {e}"))?;
    let dir = resolved.config.agent.state_dir.join("store");
    if !dir.is_dir() {
        anyhow::bail!(
            "no store at {} (is --state-dir right? has the agent run here?)",
            dir.display()
        );
    }
    let view = crate::analyze::load_store(&dir, since_ns, &agent::hostname(&resolved.config))?;
    print_report(
        &crate::analyze::analyze(&view, &resolved.config.analyze_config()),
        format,
        out,
    )
}
