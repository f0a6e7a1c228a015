//! What `hvflight status` reports, kept current by the run loop. Field names
//! are part of the interface (docs/control-protocol.md): add, never rename.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::json;

use crate::sample::{CollectorFailure, Sample};

pub struct AgentStatus {
    started: Instant,
    started_unix_ns: i64,
    pub host: String,
    pub interval_ms: u64,
    pub config_file: String,
    pub unknown_config_keys: Vec<String>,
    pub libvirt_uri: String,
    pub store_dir: Option<std::path::PathBuf>,
    pub store_dropped: u64,
    pub bundles_dir: Option<std::path::PathBuf>,
    pub tail_clients: usize,
    pub detector: serde_json::Value,
    /// The uploader, when `[upload]` is enabled.
    pub upload: Option<crate::upload::uploader::Handle>,
    /// The packet ring's section of the latest sample.
    pub capture: serde_json::Value,
    last_seq: u64,
    last_ts_unix_ns: i64,
    last_duration_us: u64,
    lags_us: VecDeque<u64>,
    failing: Vec<CollectorFailure>,
    libvirt_connected: Option<bool>,
    domains_total: usize,
    domains_running: usize,
}

impl AgentStatus {
    pub fn new(host: String, interval_ms: u64, libvirt_uri: String) -> Self {
        AgentStatus {
            started: Instant::now(),
            started_unix_ns: crate::clock::now().unix_ns,
            host,
            interval_ms,
            config_file: String::new(),
            unknown_config_keys: Vec::new(),
            libvirt_uri,
            store_dir: None,
            store_dropped: 0,
            bundles_dir: None,
            tail_clients: 0,
            detector: serde_json::Value::Null,
            upload: None,
            capture: serde_json::Value::Null,
            last_seq: 0,
            last_ts_unix_ns: 0,
            last_duration_us: 0,
            lags_us: VecDeque::new(),
            failing: Vec::new(),
            libvirt_connected: None,
            domains_total: 0,
            domains_running: 0,
        }
    }

    pub fn on_sample(&mut self, s: &Sample) {
        self.last_seq = s.seq;
        self.last_ts_unix_ns = s.ts_unix_ns;
        self.last_duration_us = s.duration_us;
        if self.lags_us.len() >= 60 {
            self.lags_us.pop_front();
        }
        self.lags_us.push_back(s.lag_us);
        self.failing = s.failures.clone();
        self.libvirt_connected = Some(s.libvirt.is_some());
        self.capture = s
            .capture
            .as_ref()
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or(serde_json::Value::Null);
        if let Some(l) = &s.libvirt {
            self.domains_total = l.domains.len();
            self.domains_running = l.domains.iter().filter(|d| d.state == "running").count();
        }
    }

    fn bundles_json(&self) -> serde_json::Value {
        let Some(dir) = &self.bundles_dir else {
            return serde_json::Value::Null;
        };
        let all = crate::bundle::writer::list(dir);
        let bytes: u64 = all
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let last = all.last().and_then(|p| {
            crate::bundle::verify::manifest(p)
                .ok()
                .map(|m| (p.clone(), m))
        });
        json!({
            "dir": dir.display().to_string(),
            "count": all.len(),
            "bytes": bytes,
            "last_incident": last.map(|(p, m)| json!({
                "id": m.incident.id, "ts": m.incident.ts, "trigger": m.incident.trigger,
                "reason": m.incident.reason, "bundle": p.display().to_string(), "complete": m.complete,
            })),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (store_bytes, segments) = self
            .store_dir
            .as_ref()
            .map(|d| {
                let segs = crate::store::writer::segments(d);
                let bytes: u64 = segs
                    .iter()
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum();
                (bytes, segs.len())
            })
            .unwrap_or((0, 0));
        let max_lag = self.lags_us.iter().copied().max().unwrap_or(0);
        let since_last_ms = if self.last_ts_unix_ns > 0 {
            (crate::clock::now().unix_ns - self.last_ts_unix_ns) / 1_000_000
        } else {
            -1
        };
        json!({
            "agent": {
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "host": self.host,
                "started": crate::clock::format_rfc3339(self.started_unix_ns),
                "uptime_s": self.started.elapsed().as_secs(),
                "config_file": self.config_file,
                "unknown_config_keys": self.unknown_config_keys,
            },
            "sampling": {
                "interval_ms": self.interval_ms,
                "last_seq": self.last_seq,
                "last_sample": if self.last_ts_unix_ns > 0 { crate::clock::format_rfc3339(self.last_ts_unix_ns) } else { String::new() },
                "ms_since_last_sample": since_last_ms,
                "last_duration_us": self.last_duration_us,
                "last_lag_us": self.lags_us.back().copied().unwrap_or(0),
                "max_lag_us_last_60": max_lag,
            },
            "collectors_failing": self.failing.iter().map(|f| json!({"collector": f.collector, "error": f.error, "timed_out": f.timed_out})).collect::<Vec<_>>(),
            "libvirt": {
                "uri": self.libvirt_uri,
                "connected": self.libvirt_connected,
                "domains": self.domains_total,
                "running": self.domains_running,
            },
            "store": {
                "dir": self.store_dir.as_ref().map(|d| d.display().to_string()),
                "bytes": store_bytes,
                "segments": segments,
                "dropped_records": self.store_dropped,
            },
            "detector": self.detector,
            "capture": self.capture,
            "bundles": self.bundles_json(),
            "upload": self.upload.as_ref().map(|u| u.to_json()).unwrap_or_else(|| json!({"enabled": false})),
            "tail_clients": self.tail_clients,
        })
    }
}
