//! hvflight: parse the command line, start logging, dispatch (src/commands/ does the work).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use hvflight::cli::{Cli, Command, ConfigCommand};
use hvflight::commands::{clients, run};
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
            timeout_s,
        } => clients::trigger(&opts, &reason, timeout_s),
        Command::Bundle { command } => clients::bundle(command),
        Command::Analyze {
            opts,
            since,
            format,
        } => clients::analyze_live(&opts, &since, &format),
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
            real,
        } => hvflight::demo::hold_lab(guests, tap_guests, traffic, real),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_FILE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => clients::config_check(file),
    }
}
