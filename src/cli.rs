//! The command line: clap derive definitions only; dispatch is in main.rs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hvflight",
    version,
    about = "Flight recorder for the network of a KVM/libvirt hypervisor",
    after_long_help = "Files:\n  /etc/hvflight/hvflight.toml   configuration (hvflight config check; hvflight config default)\n  /var/lib/hvflight/            store/, bundles/, spool/ (kept on package removal, deleted on purge)\n  /run/hvflight/hvflight.sock   control socket (root and group hvflight)\n\nThe agent runs as hvflight.service; /metrics on 127.0.0.1:9469.\nOperator guide, runbook and references: /usr/share/doc/hvflight/."
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "hvflight=debug". Also HVFLIGHT_LOG.
    #[arg(long, global = true, env = "HVFLIGHT_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every agent-side command accepts; each overrides a config key.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentOpts {
    /// Config file (default /etc/hvflight/hvflight.toml; a missing default file = all defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// libvirt URI (config agent.libvirt_uri), opened read-only.
    #[arg(long, value_name = "URI")]
    pub libvirt_uri: Option<String>,
    /// Directory holding store/, bundles/, spool/ (config agent.state_dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Control socket path (config agent.socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Bridge to watch; repeatable (config agent.bridges).
    #[arg(long = "bridge", value_name = "NAME")]
    pub bridges: Vec<String>,
    /// Network namespace to watch: a name under /run/netns or a path (config agent.netns).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Sampling interval in milliseconds (config agent.interval_ms).
    #[arg(long, value_name = "MS")]
    pub interval_ms: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: sample every interval until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        opts: AgentOpts,
        /// Also print one summary line per sample (and every event) to stdout.
        #[arg(long)]
        print: bool,
        /// Also print every raw sample and event to stdout as JSON lines (with "kind").
        #[arg(long, conflicts_with = "print")]
        json: bool,
        /// Stop after this many samples (for tests and benchmarks).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Take samples and print them.
    Sample {
        #[command(flatten)]
        opts: AgentOpts,
        /// Take exactly one sample.
        #[arg(long)]
        once: bool,
        /// Print the complete raw sample as JSON (one object per line).
        #[arg(long)]
        json: bool,
        /// Number of samples to take (default 1 with --once, else until interrupted).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Throwaway lab: bridge + guests in network namespaces, the agent, faults; cleans up after.
    Demo {
        /// N: N veth guests described by libvirt's test driver (fast); `real[:N]`:
        /// N qemu guests under a private libvirtd (default 2; boots take 10-60 s);
        /// `auto[:N]`: real guests when this machine can run them, else the test driver.
        #[arg(long, default_value = "4", value_name = "N|real[:N]|auto[:N]")]
        guests: crate::demo::Guests,
        /// Short run (CI): fewer seconds per phase.
        #[arg(long)]
        short: bool,
        /// Sampling interval of the agent in the demo, milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Build a namespace lab and keep it until interrupted (for benchmarks and
    /// manual experiments); prints one JSON line describing it.
    Lab {
        #[arg(long, default_value_t = 4)]
        guests: usize,
        #[arg(long, default_value_t = 0)]
        tap_guests: usize,
        /// Guests ping the gateway once a second.
        #[arg(long)]
        traffic: bool,
        /// With --traffic, only every K-th guest pings (10 = a tenth).
        #[arg(long, value_name = "K", default_value_t = 1)]
        traffic_every: usize,
        /// vNICs per libvirt domain in the test-driver node (2 = N/2 domains).
        #[arg(long, value_name = "N", default_value_t = 1)]
        vnics_per_domain: usize,
        /// Real qemu guests under a private libvirtd instead of veth guests
        /// (--tap-guests does not apply).
        #[arg(long)]
        real: bool,
    },
    /// Live stream from the running agent: one line per sample and every event.
    /// Works as `ssh node hvflight tail`. Exit codes: 0 reader gone, 1 agent went away,
    /// 3 agent not running, 4 permission denied.
    Tail {
        #[command(flatten)]
        opts: AgentOpts,
        /// One JSON object per line, each with "ts" and "kind".
        #[arg(long)]
        json: bool,
        /// Only this interface's rates and events.
        #[arg(long)]
        iface: Option<String>,
        /// Only this domain's vNICs (and its libvirt events).
        #[arg(long)]
        domain: Option<String>,
        /// Events only, no per-sample lines.
        #[arg(long)]
        events_only: bool,
        /// Start with history from the store (10m, 90s, or a UTC time).
        #[arg(long)]
        since: Option<String>,
    },
    /// Agent health: uptime, sample lag, failing collectors, libvirt, store usage.
    /// Exit codes: 0 ok, 3 agent not running, 4 permission denied.
    Status {
        #[command(flatten)]
        opts: AgentOpts,
        /// The status object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a bundle now (monitoring event handlers call this). Prints the incident id
    /// and the bundle path. Exit codes: 0 bundle written, 3 agent not running,
    /// 4 permission denied, 5 the agent could not write the bundle.
    Trigger {
        #[command(flatten)]
        opts: AgentOpts,
        /// Why (recorded in the bundle's manifest).
        #[arg(long)]
        reason: String,
        /// Support case label: recorded in the manifest and in the uploaded object's key.
        #[arg(long, value_name = "ID")]
        case: Option<String>,
        /// How long to wait for the bundle, seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Bundles in the state directory: list, show, verify, analyze, upload.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Likely causes from the live store (as `bundle analyze` does for a bundle).
    Analyze {
        #[command(flatten)]
        opts: AgentOpts,
        /// How far back: 15m, 1h, or a UTC time.
        #[arg(long, default_value = "15m")]
        since: String,
        /// text, json or html.
        #[arg(long, default_value = "text")]
        format: String,
        /// Write the report to FILE instead of stdout (needed for html).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// What the store holds for a time range (works without the agent, and while it runs).
    History {
        #[command(flatten)]
        opts: AgentOpts,
        /// Start: a duration ago (10m, 90s, 2h) or a UTC time (2026-11-24T04:30:00Z).
        #[arg(long, default_value = "10m")]
        since: String,
        /// End (same forms); default now.
        #[arg(long)]
        until: Option<String>,
        /// Only this interface (rates per second), and its events.
        #[arg(long)]
        iface: Option<String>,
        /// Only this domain's vNICs (name or UUID).
        #[arg(long)]
        domain: Option<String>,
        /// Raw records as JSON lines (samples tagged "kind": "sample").
        #[arg(long)]
        json: bool,
    },
    /// Validate or print the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write man pages or shell completions into a directory (used by `make deb`).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: GenerateCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum GenerateCommand {
    /// One man page per command (hvflight.1, hvflight-run.1, …).
    Man { dir: PathBuf },
    /// bash, zsh and fish completions (hvflight.bash, _hvflight, hvflight.fish).
    Completions { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// The bundles kept here, oldest first.
    List {
        #[command(flatten)]
        opts: AgentOpts,
        #[arg(long)]
        json: bool,
    },
    /// A bundle's manifest (by incident id, file name or path).
    Show {
        #[command(flatten)]
        opts: AgentOpts,
        id: String,
    },
    /// Check a bundle: the manifest and every entry's size and sha256. Exit 1 on any mismatch.
    Verify { path: std::path::PathBuf },
    /// Upload a bundle now (by incident id, file name or path) to the object store of
    /// `[upload]`, through the spool; a progress bar on a terminal, plain lines otherwise.
    /// Exit codes: 0 uploaded and verified (or already uploaded), 1 failed (the bundle stays
    /// queued and the agent retries), 2 usage or config error.
    Upload {
        #[command(flatten)]
        opts: AgentOpts,
        /// Incident id, bundle file name, or path.
        id: String,
        /// Support case label: recorded in the manifest and in the object key (case-ID/).
        #[arg(long, value_name = "ID")]
        case: Option<String>,
    },
    /// Likely causes, ranked, with their evidence in time order around the incident,
    /// the timeline before it and the blast radius (docs/analyzer.md).
    Analyze {
        path: std::path::PathBuf,
        /// text, json ({"findings": [{"id", "cause", "confidence", "evidence", "next"}, …], …})
        /// or html (one self-contained page with charts; needs --out).
        #[arg(long, default_value = "text")]
        format: String,
        /// Write the report to FILE instead of stdout (nothing else is written).
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
        /// Config file for [analyze] (critical groups, bounds); default
        /// /etc/hvflight/hvflight.toml, a missing default file = all defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file: errors name file, line and key; unknown keys are flagged (exit 1).
    Check {
        /// File to check (default /etc/hvflight/hvflight.toml).
        file: Option<PathBuf>,
        /// Report unknown keys but exit 0 (what the agent does with them). The
        /// systemd unit checks with it, so a config pushed to the fleet ahead of
        /// the package that understands it does not stop the agents.
        #[arg(long)]
        allow_unknown: bool,
    },
    /// Print the documented default configuration file.
    Default,
}
