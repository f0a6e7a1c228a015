//! hvflight: parse the command line, start logging, dispatch (src/commands/ does the work).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use hvflight::cli::{Cli, Command, ConfigCommand};
use hvflight::commands::{clients, generate, run};
use hvflight::config;

fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// glibc gives each thread that allocates its own malloc arena (up to 8 per
/// core); the agent's dozen mostly idle threads then keep freed memory in a
/// dozen places. Two arenas cut peak RSS on a 500-vNIC node from 60 to
/// ~46 MiB (tests/tools/bench.sh) at no measurable CPU cost. This is for
/// every command; `hvflight run` lowers it to one arena for the agent
/// (commands/run.rs `tune_malloc`). An operator's MALLOC_ARENA_MAX still wins.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes when stderr is journald or a file.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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
        } => run::run(&opts, print, json, count),
        Command::Sample {
            opts,
            once,
            json,
            count,
        } => run::sample(&opts, once, json, count),
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
        } => clients::tail(
            &opts,
            json,
            hvflight::control::client::TailFilter {
                iface,
                domain,
                events_only,
            },
            since.as_deref(),
        ),
        Command::Status { opts, json } => clients::status(&opts, json),
        Command::Trigger {
            opts,
            reason,
            case,
            timeout_s,
        } => clients::trigger(&opts, &reason, case.as_deref().unwrap_or(""), timeout_s),
        Command::Bundle { command } => clients::bundle(command),
        Command::Analyze {
            opts,
            since,
            format,
            out,
        } => clients::analyze_live(&opts, &since, &format, out.as_deref()),
        Command::History {
            opts,
            since,
            until,
            iface,
            domain,
            json,
        } => clients::history(&opts, &since, until.as_deref(), iface, domain, json),
        Command::Lab {
            guests,
            tap_guests,
            traffic,
            traffic_every,
            vnics_per_domain,
            real,
        } => hvflight::demo::hold_lab(
            hvflight::lab::LabConfig {
                guests,
                tap_guests,
                traffic,
                traffic_every,
                vnics_per_domain,
                nova_metadata: true,
                ..Default::default()
            },
            real,
        ),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_FILE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command:
                ConfigCommand::Check {
                    file,
                    allow_unknown,
                },
        } => clients::config_check(file, allow_unknown),
        Command::Generate { what } => generate::generate(what),
    }
}
