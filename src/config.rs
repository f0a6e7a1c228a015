//! The configuration tree: every key with its default, validation, and
//! errors that name file, line and key.
//!
//! Unknown keys are not fatal for the agent (a config pushed to a fleet
//! before the package upgrade that understands it must not stop every
//! agent): `load` returns them as warnings and the agent counts them in its
//! status; `hvflight config check` reports them and exits non-zero. Invalid
//! values of known keys are errors everywhere.
//!
//! The set of known keys is the serialized `Config::default()` itself, so
//! the schema cannot drift from the struct.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const DEFAULT_PATH: &str = "/etc/hvflight/hvflight.toml";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
#[derive(Default)]
pub struct Config {
    pub agent: AgentConfig,
    pub collect: CollectConfig,
    pub store: StoreConfig,
    pub bundle: BundleConfig,
    pub detect: crate::detect::DetectConfig,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct AgentConfig {
    /// Sampling interval.
    pub interval_ms: u64,
    pub libvirt_uri: String,
    /// store/, bundles/ and spool/ live under it.
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Group allowed to use the control socket (besides root); empty = root only.
    pub socket_group: String,
    /// Lines a tail client may fall behind before the oldest are dropped.
    pub tail_queue_lines: u64,
    /// Prometheus endpoint (host:port); empty = off.
    pub metrics_listen: String,
    /// Interfaces besides bridges and uplinks named in hvflight_drops_total
    /// (those that drop most); the rest are summed as interface="other".
    pub metrics_drop_interfaces: u64,
    /// Bridges to watch; empty = the bridges libvirt's domains use, else all bridges.
    pub bridges: Vec<String>,
    /// Network namespace (name under /run/netns, or a path) to watch; empty = the agent's own.
    pub netns: String,
    /// Host name recorded in samples and bundles; empty = the kernel's hostname.
    pub hostname: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct CollectConfig {
    /// Receive timeout of one netlink dump.
    pub netlink_timeout_ms: u64,
    /// How long one libvirt round may take before the section is recorded as failed.
    pub libvirt_timeout_ms: u64,
    /// Delay between reconnect attempts when libvirtd is gone.
    pub libvirt_reconnect_ms: u64,
    /// Re-read domain XML at least this often (it is also re-read on lifecycle events).
    pub libvirt_xml_refresh_s: u64,
    /// Cap on FDB entries kept per sample (a flooded FDB cannot blow memory).
    pub fdb_max_entries: u64,
    /// Read the kernel log.
    pub kmsg: bool,
    pub kmsg_path: PathBuf,
    /// Kernel log lines kept per second; above it lines are counted as lost.
    pub kmsg_max_lines_per_s: u64,
    /// Collectors to skip, by name ("links", "bridge", "fdb", "neighbours", "qdisc",
    /// "conntrack", "softnet", "snmp", "system", "netfilter", "libvirt", "drops").
    pub disabled: Vec<String>,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Kernel BTF the drop-reason program is checked and relocated against.
    pub drops_btf_path: PathBuf,
    /// Bound of the in-kernel drop map, keys (namespace, interface, reason, protocol).
    pub drops_max_entries: u32,
    /// After a failed load (no BTF, no privilege), try again this often.
    pub drops_retry_s: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct StoreConfig {
    pub max_bytes: u64,
    pub max_age_s: u64,
    pub segment_bytes: u64,
    pub sync_interval_ms: u64,
    /// Never write when the filesystem would have less free space than this.
    pub min_free_bytes: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interval_ms: 1000,
            libvirt_uri: "qemu:///system".into(),
            state_dir: "/var/lib/hvflight".into(),
            socket: "/run/hvflight/hvflight.sock".into(),
            socket_group: String::new(),
            tail_queue_lines: 2000,
            metrics_listen: "127.0.0.1:9469".into(),
            metrics_drop_interfaces: 10,
            bridges: Vec::new(),
            netns: String::new(),
            hostname: String::new(),
        }
    }
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            netlink_timeout_ms: 500,
            libvirt_timeout_ms: 2000,
            libvirt_reconnect_ms: 5000,
            libvirt_xml_refresh_s: 60,
            fdb_max_entries: 65_536,
            kmsg: true,
            kmsg_path: "/dev/kmsg".into(),
            kmsg_max_lines_per_s: 2000,
            disabled: Vec::new(),
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            drops_btf_path: crate::source::bpf::DEFAULT_BTF.into(),
            drops_max_entries: 8192,
            drops_retry_s: 60,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct BundleConfig {
    /// History before the incident put into its bundle, seconds.
    pub before_s: u64,
    /// Samples after the incident: the bundle is completed this long after it.
    pub after_s: u64,
    /// Each deep-state command gets this long.
    pub command_timeout_ms: u64,
    /// Bundles kept under state_dir/bundles at most (oldest go first).
    pub max_count: u64,
    pub max_bytes: u64,
}

impl Default for BundleConfig {
    fn default() -> Self {
        BundleConfig {
            before_s: 900,
            after_s: 60,
            command_timeout_ms: 10_000,
            max_count: 20,
            max_bytes: 2 << 30,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: 2 << 30,
            max_age_s: 48 * 3600,
            segment_bytes: 64 << 20,
            sync_interval_ms: 5000,
            min_free_bytes: 1 << 30,
        }
    }
}

pub const COLLECTOR_NAMES: &[&str] = &[
    "links",
    "bridge",
    "fdb",
    "neighbours",
    "qdisc",
    "conntrack",
    "softnet",
    "snmp",
    "system",
    "netfilter",
    "libvirt",
    "drops",
];

/// Where in which file something is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub key: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            write!(f, "{}:{}: key `{}`", self.file, self.line, self.key)
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: TOML syntax error: {msg}")]
    Syntax {
        file: String,
        line: usize,
        msg: String,
    },
    #[error("{at}: {msg}")]
    Invalid { at: Location, msg: String },
}

/// A key the agent does not know (warned about, counted, not fatal for `run`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey(pub Location);

impl fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: unknown key (ignored)", self.0)
    }
}

#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file it came from; None when the default path did not exist.
    pub file: Option<PathBuf>,
    pub unknown: Vec<UnknownKey>,
}

/// Loads `path`, or the defaults when `path` is None and the default file is
/// missing (a missing default file = all defaults; a missing explicit file is an error).
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let (file, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                config: Config::default(),
                file: None,
                unknown: Vec::new(),
            })
        }
        Err(source) => {
            return Err(ConfigError::Read {
                file: file.display().to_string(),
                source,
            })
        }
    };
    let (config, unknown) = parse(&text, &file.display().to_string())?;
    Ok(Loaded {
        config,
        file: Some(file),
        unknown,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Parses and validates config text; `file` is used in messages only.
pub fn parse(text: &str, file: &str) -> Result<(Config, Vec<UnknownKey>), ConfigError> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        file: file.into(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        msg: e.message().trim().to_string(),
    })?;
    let schema = toml::Table::try_from(Config::default()).expect("default config serializes");
    let mut keys = Vec::new();
    walk(doc.get_ref(), "", text, &mut keys);

    let mut unknown = Vec::new();
    for (path, line, _) in &keys {
        if !schema_has(&schema, path) && !parent_unknown(&schema, path) {
            unknown.push(UnknownKey(Location {
                file: file.into(),
                line: *line,
                key: path.clone(),
            }));
        }
    }

    let locate = |key: &str| -> Location {
        let line = keys
            .iter()
            .find(|(p, _, _)| p == key)
            .map(|(_, l, _)| *l)
            .unwrap_or(0);
        Location {
            file: file.into(),
            line,
            key: key.into(),
        }
    };

    let config: Config = toml::from_str(text).map_err(|e| {
        // Name the innermost key whose value contains the error.
        let at = e
            .span()
            .and_then(|s| {
                keys.iter()
                    .filter(|(_, _, v)| v.start <= s.start && s.end <= v.end.max(s.start + 1))
                    .max_by_key(|(p, _, _)| p.len())
                    .map(|(p, _, _)| locate(p))
            })
            .unwrap_or(Location {
                file: file.into(),
                line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
                key: String::new(),
            });
        ConfigError::Invalid {
            at,
            msg: e.message().trim().to_string(),
        }
    })?;
    validate(&config, &locate)?;
    Ok((config, unknown))
}

type KeySpan = (String, usize, std::ops::Range<usize>);

fn walk(t: &toml::de::DeTable<'_>, prefix: &str, text: &str, out: &mut Vec<KeySpan>) {
    for (k, v) in t.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.push((path.clone(), line_of(text, k.span().start), v.span()));
        if let toml::de::DeValue::Table(inner) = v.get_ref() {
            walk(inner, &path, text, out);
        }
    }
}

fn schema_has(schema: &toml::Table, path: &str) -> bool {
    let mut cur = schema;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        match cur.get(*p) {
            Some(toml::Value::Table(t)) if i + 1 < parts.len() => cur = t,
            Some(_) if i + 1 == parts.len() => return true,
            _ => return false,
        }
    }
    false
}

/// True when an ancestor of `path` is already unknown (report only the top one).
fn parent_unknown(schema: &toml::Table, path: &str) -> bool {
    let mut acc = String::new();
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        if !acc.is_empty() {
            acc.push('.');
        }
        acc.push_str(p);
        if !schema_has(schema, &acc) {
            return true;
        }
    }
    false
}

fn validate(c: &Config, locate: &dyn Fn(&str) -> Location) -> Result<(), ConfigError> {
    let bad = |key: &str, msg: String| {
        Err(ConfigError::Invalid {
            at: locate(key),
            msg,
        })
    };
    if !(10..=60_000).contains(&c.agent.interval_ms) {
        return bad(
            "agent.interval_ms",
            format!("must be between 10 and 60000, got {}", c.agent.interval_ms),
        );
    }
    if c.agent.libvirt_uri.trim().is_empty() {
        return bad("agent.libvirt_uri", "must not be empty".into());
    }
    if !c.agent.state_dir.is_absolute() {
        return bad(
            "agent.state_dir",
            format!("must be an absolute path, got {:?}", c.agent.state_dir),
        );
    }
    if !c.agent.socket.is_absolute() {
        return bad(
            "agent.socket",
            format!("must be an absolute path, got {:?}", c.agent.socket),
        );
    }
    for b in &c.agent.bridges {
        if b.is_empty() || b.len() > 15 || b.contains('/') || b.contains(char::is_whitespace) {
            return bad(
                "agent.bridges",
                format!("{b:?} is not a valid interface name"),
            );
        }
    }
    for (key, v) in [
        ("agent.tail_queue_lines", c.agent.tail_queue_lines),
        ("collect.netlink_timeout_ms", c.collect.netlink_timeout_ms),
        ("collect.libvirt_timeout_ms", c.collect.libvirt_timeout_ms),
        (
            "collect.libvirt_reconnect_ms",
            c.collect.libvirt_reconnect_ms,
        ),
        ("store.sync_interval_ms", c.store.sync_interval_ms),
        (
            "collect.drops_max_entries",
            c.collect.drops_max_entries as u64,
        ),
        ("collect.drops_retry_s", c.collect.drops_retry_s),
        ("bundle.command_timeout_ms", c.bundle.command_timeout_ms),
        ("bundle.max_count", c.bundle.max_count),
        ("detect.collapse_after", c.detect.collapse_after as u64),
        ("detect.recover_after", c.detect.recover_after as u64),
    ] {
        if v == 0 {
            return bad(key, "must be greater than 0".into());
        }
    }
    for d in &c.collect.disabled {
        if !COLLECTOR_NAMES.contains(&d.as_str()) {
            return bad(
                "collect.disabled",
                format!(
                    "unknown collector {d:?}; known: {}",
                    COLLECTOR_NAMES.join(", ")
                ),
            );
        }
    }
    if c.store.max_bytes < c.store.segment_bytes {
        return bad(
            "store.max_bytes",
            format!(
                "must be at least store.segment_bytes ({})",
                c.store.segment_bytes
            ),
        );
    }
    if c.store.segment_bytes < 64 * 1024 {
        return bad("store.segment_bytes", "must be at least 65536".into());
    }
    Ok(())
}

/// The documented default file (`hvflight config default`, packaged as the conffile).
pub const DEFAULT_FILE: &str = include_str!("../packaging/hvflight.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_file_equals_built_in_defaults() {
        let (c, unknown) = parse(DEFAULT_FILE, "hvflight.toml").unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn every_default_key_is_documented() {
        let schema = toml::Table::try_from(Config::default()).unwrap();
        for (section, t) in schema {
            for key in t.as_table().unwrap().keys() {
                assert!(
                    DEFAULT_FILE.contains(&format!("\n{key} ="))
                        || DEFAULT_FILE.contains(&format!("\n# {key} =")),
                    "{section}.{key} missing from packaging/hvflight.toml"
                );
            }
        }
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("", "x").unwrap().0, Config::default());
    }

    #[test]
    fn unknown_keys_are_warnings_with_line() {
        let text = "[agent]\ninterval_ms = 500\nfrobnicate = 1\n[future]\nx = 1\n";
        let (c, unknown) = parse(text, "/etc/hvflight/hvflight.toml").unwrap();
        assert_eq!(c.agent.interval_ms, 500);
        let shown: Vec<String> = unknown.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "/etc/hvflight/hvflight.toml:3: key `agent.frobnicate`: unknown key (ignored)",
                "/etc/hvflight/hvflight.toml:4: key `future`: unknown key (ignored)",
            ]
        );
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let text = "[agent]\nlibvirt_uri = \"test:///default\"\ninterval_ms = \"fast\"\n";
        let e = parse(text, "f.toml").unwrap_err().to_string();
        assert!(e.starts_with("f.toml:3: key `agent.interval_ms`"), "{e}");
    }

    #[test]
    fn invalid_value_names_file_line_and_key() {
        let text = "\n[agent]\ninterval_ms = 0\n";
        let e = parse(text, "f.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("f.toml:3: key `agent.interval_ms`: must be between"),
            "{e}"
        );
        let e = parse("[collect]\ndisabled = [\"links\", \"bogus\"]\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.toml:2: key `collect.disabled`") && e.contains("bogus"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let e = parse("[agent]\ninterval_ms = = 3\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:2: TOML syntax error"), "{e}");
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_explicit_file_is_an_error() {
        let e = load(Some(Path::new("/nonexistent/hvflight.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/hvflight.toml"), "{e}");
    }
}
