//! `hvflight bundle upload ID|PATH [--case ID]`: queue a bundle in the spool
//! (if it is not there yet) and upload it now, in this process, with a
//! progress bar on a terminal and plain progress lines otherwise. The
//! agent's uploader and this command claim spool entries exclusively, so
//! they never send the same bundle at once; a failure leaves the bundle
//! queued for the agent to retry.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::agent;
use crate::cli::AgentOpts;
use crate::upload::job::{self, Context};
use crate::upload::spool::State;
use crate::upload::{uploader, Settings};

/// A bundle by path, or by incident id / file name under `dir`.
pub fn find_bundle(dir: &Path, id: &str) -> Result<PathBuf> {
    let p = Path::new(id);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    crate::bundle::writer::list(dir)
        .into_iter()
        .find(|b| {
            b.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(id))
        })
        .ok_or_else(|| anyhow::anyhow!("no bundle {id:?} in {}", dir.display()))
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// Shows progress until `done` is set: indicatif on a terminal, else a line every 5 s.
fn show_progress(
    progress: Arc<crate::upload::progress::Progress>,
    done: Arc<AtomicBool>,
    name: String,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        if std::io::stderr().is_terminal() {
            let total = progress.total.load(Ordering::Relaxed);
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(name);
            while !done.load(Ordering::Relaxed) {
                bar.set_length(progress.total.load(Ordering::Relaxed));
                bar.set_position(progress.done());
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.set_position(progress.done());
            bar.finish_and_clear();
        } else {
            let mut last = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    let (d, t) = (progress.done(), progress.total.load(Ordering::Relaxed));
                    eprintln!(
                        "upload: {name}: {:.1} of {:.1} MiB ({:.0}%), {:.1} s",
                        mib(d),
                        mib(t),
                        if t > 0 {
                            d as f64 * 100.0 / t as f64
                        } else {
                            0.0
                        },
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
        }
    })
}

pub fn upload(opts: &AgentOpts, id: &str, case: Option<&str>) -> Result<ExitCode> {
    let resolved = agent::resolve(opts)?;
    let cfg = &resolved.config;
    if !cfg.upload.enabled {
        bail!(
            "upload is not configured: set enabled, endpoint and bucket in [upload] of {}",
            resolved
                .file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| crate::config::DEFAULT_PATH.to_string())
        );
    }
    let settings = Settings::from_config(cfg, &agent::hostname(cfg));
    let path = find_bundle(&settings.bundles_dir, id)?;
    if let Some(c) = case {
        crate::upload::key::check_case(c).map_err(anyhow::Error::msg)?;
        crate::bundle::case::set_case(&path, c).map_err(anyhow::Error::msg)?;
    }
    let ctx = Context::new(settings);
    let (entry, _) = uploader::enqueue_bundle(&ctx, &path)?;
    let done_msg = |e: &crate::upload::spool::Entry| {
        println!(
            "already uploaded: {} ({} bytes, at {})",
            e.location,
            e.size,
            crate::clock::format_rfc3339(e.uploaded_unix_ns)
        );
        Ok(ExitCode::SUCCESS)
    };
    match entry.state {
        State::Uploaded => return done_msg(&entry),
        State::Dropped => bail!("{}: not queued: {}", path.display(), entry.last_error),
        _ => {}
    }
    let claim = match ctx.spool.claim(&entry.name, false)? {
        Some(c) => Some(c),
        None => {
            eprintln!(
                "upload: the agent is uploading {} now; waiting for it",
                entry.name
            );
            ctx.spool.claim(&entry.name, true)?
        }
    };
    let mut e = match (claim.as_ref(), ctx.spool.load(&entry.name)?) {
        (_, Some(e)) if e.state == State::Uploaded => return done_msg(&e),
        (Some(_), Some(e)) => e,
        _ => bail!("{}: spool entry vanished", entry.name),
    };
    let stop = crate::commands::run::shutdown_flag()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    ctx.progress.start(e.size, 0);
    let shown = Arc::new(AtomicBool::new(false));
    let bar = show_progress(
        Arc::clone(&ctx.progress),
        Arc::clone(&shown),
        e.name.clone(),
    );
    let r = job::attempt(&ctx, &rt, &mut e, &stop);
    shown.store(true, Ordering::Relaxed);
    let _ = bar.join();
    drop(claim);
    match r {
        Ok(u) if u.already_there => {
            println!(
                "uploaded: {} (already there from an earlier attempt; verified)",
                u.location
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(u) => {
            println!(
                "uploaded: {} ({} bytes in {:.1} s, {:.2} MiB/s; size and ETag {} verified)",
                u.location,
                e.size,
                u.seconds,
                mib(u.bytes_sent) / u.seconds.max(1e-6),
                e.expected_etag
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("hvflight bundle upload: {err}");
            if e.state.pending() {
                eprintln!(
                    "hvflight bundle upload: {} stays queued in {}; the agent retries it (attempt {}, next in {} s)",
                    e.name,
                    ctx.spool.dir.display(),
                    e.attempts + 1,
                    ((e.next_attempt_unix_ns - crate::clock::now().unix_ns) / 1_000_000_000).max(0)
                );
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
