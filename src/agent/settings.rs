//! Resolves the effective configuration: file (or defaults), then the
//! command-line options on top, then the namespace is entered.

use crate::cli::AgentOpts;
use crate::config::{self, Config, ConfigError, UnknownKey};

pub struct Resolved {
    pub config: Config,
    pub unknown: Vec<UnknownKey>,
    /// The config file read, if any.
    pub file: Option<std::path::PathBuf>,
}

pub fn resolve(opts: &AgentOpts) -> Result<Resolved, ConfigError> {
    let loaded = config::load(opts.config.as_deref())?;
    let mut c = loaded.config;
    if let Some(u) = &opts.libvirt_uri {
        c.agent.libvirt_uri = u.clone();
    }
    if let Some(d) = &opts.state_dir {
        c.agent.state_dir = d.clone();
    }
    if let Some(s) = &opts.socket {
        c.agent.socket = s.clone();
    }
    if !opts.bridges.is_empty() {
        c.agent.bridges = opts.bridges.clone();
    }
    if let Some(n) = &opts.netns {
        c.agent.netns = n.clone();
    }
    if let Some(i) = opts.interval_ms {
        c.agent.interval_ms = i;
    }
    // Re-validate with the overrides applied, naming the option instead of a file.
    let text = toml::to_string(&c).expect("config serializes");
    config::parse(&text, "command line")?;
    Ok(Resolved {
        config: c,
        unknown: loaded.unknown,
        file: loaded.file,
    })
}
