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
    pub blast_radius: crate::blast_radius::BlastRadiusConfig,
    pub upload: UploadConfig,
    pub analyze: AnalyzeConfig,
    pub capture: crate::capture::CaptureConfig,
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
    /// Group allowed to use the control socket (besides root); empty = root
    /// only. The package creates `hvflight`; a group that does not exist
    /// leaves the socket root-only (with a warning).
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
    /// This long after start, the agent unmaps the pages of its binary and
    /// libraries that start-up touched (they come back on use; agent/trim.rs);
    /// 0 = never.
    pub trim_pages_after_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct CollectConfig {
    /// Receive timeout of one netlink dump.
    pub netlink_timeout_ms: u64,
    /// All link attributes are dumped when the kernel announces a change and
    /// at least this often; in between only the counters are read (0 = dump
    /// everything every sample).
    pub links_full_dump_ms: u64,
    /// Between full link dumps, the bridges' own attributes the kernel does
    /// not announce (STP topology change, root id) are re-read by a dump of
    /// the bridges alone at least this often (0 = every sample).
    pub bridges_refresh_ms: u64,
    /// How long one libvirt round may take before the section is recorded as failed.
    pub libvirt_timeout_ms: u64,
    /// Delay between reconnect attempts when libvirtd is gone.
    pub libvirt_reconnect_ms: u64,
    /// Re-read domain XML at least this often (it is also re-read on lifecycle events).
    pub libvirt_xml_refresh_s: u64,
    /// Ask libvirt for the domain list at most this often; samples in
    /// between repeat the last answer with its age (0 = every sample).
    pub libvirt_interval_ms: u64,
    /// The libvirt event connection probes libvirtd after this many seconds
    /// of silence; 3 unanswered probes and it counts as lost.
    pub libvirt_keepalive_s: u32,
    /// Cap on FDB entries kept per sample (a flooded FDB cannot blow memory).
    pub fdb_max_entries: u64,
    /// The whole FDB is dumped at least this often (and after lost
    /// announcements); in between it is kept from the kernel's
    /// announcements (0 = dump every sample).
    pub fdb_full_dump_ms: u64,
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
    /// A segment is closed after this long (so the age bound overshoots by at most this).
    pub segment_max_age_s: u64,
    pub sync_interval_ms: u64,
    /// Never write when the filesystem would have less free space than this.
    pub min_free_bytes: u64,
}

impl Config {
    /// The analyzer's settings with the critical groups of `[blast_radius]`.
    pub fn analyze_config(&self) -> AnalyzeConfig {
        AnalyzeConfig {
            critical_groups: self.blast_radius.critical_groups.clone(),
            ..self.analyze.clone()
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            interval_ms: 1000,
            libvirt_uri: "qemu:///system".into(),
            state_dir: "/var/lib/hvflight".into(),
            socket: "/run/hvflight/hvflight.sock".into(),
            socket_group: "hvflight".into(),
            tail_queue_lines: 2000,
            metrics_listen: "127.0.0.1:9469".into(),
            metrics_drop_interfaces: 10,
            bridges: Vec::new(),
            netns: String::new(),
            hostname: String::new(),
            trim_pages_after_ms: 10_000,
        }
    }
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            netlink_timeout_ms: 500,
            links_full_dump_ms: crate::collect::links::DEFAULT_FULL_DUMP_MS,
            bridges_refresh_ms: crate::collect::links::DEFAULT_BRIDGES_REFRESH_MS,
            libvirt_timeout_ms: 2000,
            libvirt_reconnect_ms: 5000,
            libvirt_xml_refresh_s: 60,
            libvirt_interval_ms: crate::collect::libvirt::DEFAULT_INTERVAL_MS,
            libvirt_keepalive_s: 5,
            fdb_max_entries: 65_536,
            fdb_full_dump_ms: crate::collect::fdb::DEFAULT_FULL_DUMP_MS,
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

/// `[upload]`: bundles leave the node for an S3-API object store through an
/// on-disk spool (docs/upload.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct UploadConfig {
    /// Upload finished bundles (needs endpoint and bucket).
    pub enabled: bool,
    /// S3 endpoint URL, e.g. "https://s3.example.net" (https unless allow_http).
    pub endpoint: String,
    /// Signing region (Swift's s3api: its `location`; Ceph: the zonegroup).
    pub region: String,
    pub bucket: String,
    /// Object key prefix; `{host}`, `{date}` (incident day, UTC) and `{case}` are expanded.
    pub key_prefix: String,
    /// Path-style addressing (endpoint/bucket/key) instead of bucket.endpoint/key.
    pub path_style: bool,
    /// TOML file with access_key_id and secret_access_key; must be readable by its owner only.
    pub credentials_file: PathBuf,
    /// PEM file with CA certificates trusted in addition to the system's.
    pub ca_file: PathBuf,
    /// Allow a plain-http endpoint (TLS is on by default).
    pub allow_http: bool,
    /// Upload rate cap, bytes per second (0 = no cap).
    pub bandwidth_limit_bytes_per_s: u64,
    /// Bundles this large or larger go multipart.
    pub multipart_threshold_bytes: u64,
    /// Size of one multipart part (at least 5 MiB, the S3 minimum).
    pub part_size_bytes: u64,
    /// Keep the local bundle after a verified upload (false: delete it).
    pub keep_local: bool,
    /// First retry delay after a failed attempt; doubles up to backoff_max_ms, with jitter.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Connecting to the endpoint may take this long.
    pub connect_timeout_ms: u64,
    /// One request (a part) may take this long.
    pub request_timeout_ms: u64,
    /// Compare the object's ETag with the MD5 computed locally after upload.
    pub verify_etag: bool,
    /// Bundles waiting in the spool at most, bytes (beyond it new bundles are not queued).
    pub spool_max_bytes: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: false,
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            key_prefix: "{host}/{date}/".into(),
            path_style: true,
            credentials_file: "/etc/hvflight/upload-credentials.toml".into(),
            ca_file: PathBuf::new(),
            allow_http: false,
            bandwidth_limit_bytes_per_s: 4 << 20,
            multipart_threshold_bytes: 16 << 20,
            part_size_bytes: 8 << 20,
            keep_local: true,
            backoff_initial_ms: 10_000,
            backoff_max_ms: 900_000,
            connect_timeout_ms: 10_000,
            request_timeout_ms: 300_000,
            verify_etag: true,
            spool_max_bytes: 4 << 30,
        }
    }
}

/// `hvflight bundle analyze` / `hvflight analyze`: blast radius and the
/// bounds that keep a hostile or damaged bundle from costing unbounded
/// memory or time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct AnalyzeConfig {
    /// A critical group (`blast_radius.critical_groups`) with at least this
    /// many members on this host is called out in the blast radius.
    pub critical_min_members: u64,
    /// The groups themselves: `blast_radius.critical_groups`, the same list
    /// /metrics exports (filled by `Config::analyze_config`, not a key here).
    #[serde(skip)]
    pub critical_groups: Vec<crate::blast_radius::CriticalGroupConfig>,
    /// The timeline shows changes this long before the collapse, seconds.
    pub timeline_before_s: u64,
    /// Largest bundle entry read (its tar header is checked before reading).
    pub max_entry_bytes: u64,
    /// Most bytes read out of one bundle, all entries together (decompressed).
    pub max_total_bytes: u64,
    /// Longest history line (one sample) accepted.
    pub max_line_bytes: u64,
    /// Samples kept in memory; beyond it, samples far from the collapse are thinned.
    pub max_samples: u64,
    /// Packets kept from the packet ring (control-plane frames only).
    pub max_packets: u64,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        AnalyzeConfig {
            critical_min_members: 2,
            critical_groups: Vec::new(),
            timeline_before_s: 600,
            max_entry_bytes: 4 << 30,
            max_total_bytes: 16 << 30,
            max_line_bytes: 64 << 20,
            max_samples: 7200,
            max_packets: 200_000,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: 2 << 30,
            max_age_s: 48 * 3600,
            segment_bytes: 64 << 20,
            segment_max_age_s: 3600,
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
    "probes",
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

/// Tables whose keys are the user's (bridge names), not a schema.
const FREE_MAPS: &[&str] = &["detect.gateways", "detect.uplinks"];

fn schema_has(schema: &toml::Table, path: &str) -> bool {
    if FREE_MAPS.iter().any(|m| {
        path.strip_prefix(m)
            .is_some_and(|rest| rest.starts_with('.'))
    }) {
        return true;
    }
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
        (
            "collect.libvirt_keepalive_s",
            c.collect.libvirt_keepalive_s as u64,
        ),
        ("store.sync_interval_ms", c.store.sync_interval_ms),
        ("store.segment_max_age_s", c.store.segment_max_age_s),
        (
            "collect.drops_max_entries",
            c.collect.drops_max_entries as u64,
        ),
        ("collect.drops_retry_s", c.collect.drops_retry_s),
        ("bundle.command_timeout_ms", c.bundle.command_timeout_ms),
        ("bundle.max_count", c.bundle.max_count),
        ("detect.collapse_after", c.detect.collapse_after as u64),
        ("detect.recover_after", c.detect.recover_after as u64),
        ("detect.probe_interval_ms", c.detect.probe_interval_ms),
        ("detect.probe_timeout_ms", c.detect.probe_timeout_ms),
        ("detect.probe_fail_after", c.detect.probe_fail_after as u64),
        (
            "detect.guest_probe_interval_s",
            c.detect.guest_probe_interval_s,
        ),
        (
            "detect.guest_probe_max_per_s",
            c.detect.guest_probe_max_per_s as u64,
        ),
        (
            "detect.min_cut_off_guests",
            c.detect.min_cut_off_guests as u64,
        ),
    ] {
        if v == 0 {
            return bad(key, "must be greater than 0".into());
        }
    }
    if !(c.detect.window_s > 0.0 && c.detect.window_s <= 3600.0) {
        return bad(
            "detect.window_s",
            format!(
                "must be above 0 and at most 3600, got {}",
                c.detect.window_s
            ),
        );
    }
    let share = c.detect.netfilter_drop_min_share;
    if !(0.05..=1.0).contains(&share) {
        // Near 0 any single drop would make a collapse.
        return bad(
            "detect.netfilter_drop_min_share",
            format!("must be between 0.05 and 1, got {share}"),
        );
    }
    let min_packets = c.detect.netfilter_drop_min_packets;
    if min_packets.is_nan() || min_packets < 1.0 {
        return bad(
            "detect.netfilter_drop_min_packets",
            format!(
                "must be at least 1, got {}",
                c.detect.netfilter_drop_min_packets
            ),
        );
    }
    for (k, v) in &c.detect.gateways {
        let (b, vid) = match k.split_once('/') {
            Some((b, vid)) => (b, Some(vid)),
            None => (k.as_str(), None),
        };
        if b.is_empty()
            || b.len() > 15
            || vid.is_some_and(|v| !v.parse::<u16>().is_ok_and(|n| (1..4095).contains(&n)))
        {
            return bad(
                &format!("detect.gateways.{k}"),
                format!("{k:?}: expected a bridge name or BRIDGE/VLAN (VLAN 1-4094)"),
            );
        }
        if v.parse::<std::net::Ipv4Addr>().is_err() {
            return bad(
                &format!("detect.gateways.{k}"),
                format!("{v:?} is not an IPv4 address"),
            );
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
    if let Some((key, msg)) = c.capture.check() {
        return bad(key, msg);
    }
    for (key, v) in [
        ("capture.before_s", c.capture.before_s),
        ("capture.retry_ms", c.capture.retry_ms),
    ] {
        if v == 0 {
            return bad(key, "must be greater than 0".into());
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
    if let Err(e) = crate::blast_radius::CriticalGroups::new(&c.blast_radius) {
        return bad("blast_radius.critical_groups", e.to_string());
    }
    for (key, v) in [
        (
            "analyze.critical_min_members",
            c.analyze.critical_min_members,
        ),
        ("analyze.max_entry_bytes", c.analyze.max_entry_bytes),
        ("analyze.max_total_bytes", c.analyze.max_total_bytes),
        ("analyze.max_line_bytes", c.analyze.max_line_bytes),
        ("analyze.max_samples", c.analyze.max_samples),
    ] {
        if v == 0 {
            return bad(key, "must be greater than 0".into());
        }
    }
    if c.store.segment_bytes < 64 * 1024 {
        return bad("store.segment_bytes", "must be at least 65536".into());
    }
    validate_upload(&c.upload, &bad)
}

fn validate_upload(
    u: &UploadConfig,
    bad: &dyn Fn(&str, String) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    const MIN_PART: u64 = 5 << 20;
    if u.part_size_bytes < MIN_PART || u.part_size_bytes > 5 << 30 {
        return bad(
            "upload.part_size_bytes",
            format!(
                "must be between 5 MiB (5242880, the S3 minimum) and 5 GiB, got {}",
                u.part_size_bytes
            ),
        );
    }
    for (key, v) in [
        ("upload.backoff_initial_ms", u.backoff_initial_ms),
        ("upload.connect_timeout_ms", u.connect_timeout_ms),
        ("upload.request_timeout_ms", u.request_timeout_ms),
    ] {
        if v == 0 {
            return bad(key, "must be greater than 0".into());
        }
    }
    if u.backoff_max_ms < u.backoff_initial_ms {
        return bad(
            "upload.backoff_max_ms",
            format!(
                "must be at least upload.backoff_initial_ms ({})",
                u.backoff_initial_ms
            ),
        );
    }
    if !u.enabled {
        return Ok(());
    }
    if u.bucket.trim().is_empty() {
        return bad("upload.bucket", "must be set when upload is enabled".into());
    }
    if u.region.trim().is_empty() {
        return bad("upload.region", "must not be empty".into());
    }
    let scheme = u.endpoint.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("https") => {}
        Some("http") if u.allow_http => {}
        Some("http") => {
            return bad(
                "upload.endpoint",
                format!(
                    "{:?} is plain http; use https, or set upload.allow_http = true",
                    u.endpoint
                ),
            )
        }
        _ => {
            return bad(
                "upload.endpoint",
                format!(
                    "must be an http(s) URL such as \"https://s3.example.net\", got {:?}",
                    u.endpoint
                ),
            )
        }
    }
    if !u.credentials_file.is_absolute() {
        return bad(
            "upload.credentials_file",
            format!("must be an absolute path, got {:?}", u.credentials_file),
        );
    }
    if let Err(e) = crate::upload::key::check_prefix(&u.key_prefix) {
        return bad("upload.key_prefix", e);
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
    fn detect_gateways_and_uplinks_are_maps_by_bridge() {
        let text = "[detect.gateways]\nbr0 = \"192.0.2.1\"\n\"br0/100\" = \"198.51.100.1\"\n[detect.uplinks]\nbr0 = [\"bond0\"]\n";
        let (c, unknown) = parse(text, "f.toml").unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(c.detect.uplinks["br0"], vec!["bond0".to_string()]);
        let g = c.detect.gateways_for("br0");
        assert_eq!(g[&None].to_string(), "192.0.2.1");
        assert_eq!(g[&Some(100)].to_string(), "198.51.100.1");
        let e = parse("[detect.gateways]\nbr0 = \"gw.example\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "f.toml:2: key `detect.gateways.br0`: \"gw.example\" is not an IPv4 address"
            ),
            "{e}"
        );
        let e = parse("[detect.gateways]\n\"br0/5000\" = \"10.0.0.1\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("VLAN 1-4094"), "{e}");
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
    fn critical_groups_parse_and_bad_ones_name_the_key() {
        let text = "[blast_radius]\ncritical_groups = [{ name = \"webproxy\", pattern = \"^tools-webproxy-[0-9]+$\" }]\n";
        let (c, unknown) = parse(text, "f.toml").unwrap();
        assert!(unknown.is_empty());
        assert_eq!(c.blast_radius.critical_groups[0].name, "webproxy");
        let e = parse(
            "[blast_radius]\n\ncritical_groups = [{ name = \"x\", pattern = \"(\" }]\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("f.toml:3: key `blast_radius.critical_groups`")
                && e.contains("bad pattern"),
            "{e}"
        );
        let e = parse(
            "[blast_radius]\ncritical_groups = [{ name = \"x\", regex = \"y\" }]\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("f.toml:2") && e.contains("regex"), "{e}");
    }

    #[test]
    fn capture_filter_and_share_are_checked_with_file_line_and_key() {
        let e = parse("[capture]\nfilter = \"arp or bogus((\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.toml:2: key `capture.filter`: libpcap rejects it"),
            "{e}"
        );
        let e = parse("[capture]\n\nsample_share = 1.5\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:3: key `capture.sample_share`"), "{e}");
        let (c, _) = parse("[capture]\nfilter = \"arp or icmp\"\n", "f.toml").unwrap();
        assert_eq!(c.capture.control_expr(), "arp or icmp");
    }

    #[test]
    fn netfilter_drop_thresholds_are_checked_with_file_line_and_key() {
        for (text, line, key) in [
            (
                "[detect]\nnetfilter_drop_min_share = 0.01\n",
                2,
                "netfilter_drop_min_share",
            ),
            (
                "[detect]\n\nnetfilter_drop_min_share = 1.5\n",
                3,
                "netfilter_drop_min_share",
            ),
            (
                "[detect]\nnetfilter_drop_min_packets = 0.0\n",
                2,
                "netfilter_drop_min_packets",
            ),
        ] {
            let e = parse(text, "f.toml").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("f.toml:{line}: key `detect.{key}`")),
                "{e}"
            );
        }
        assert!(parse("[detect]\nnetfilter_drop_min_share = 0.05\n", "f.toml").is_ok());
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
