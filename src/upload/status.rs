//! The uploader's live state for `hvflight status` (the `upload` object) and
//! /metrics. Field names are part of the interface: add, never rename.

use serde_json::json;

use super::spool::{Spool, Summary};

#[derive(Debug, Default, Clone)]
pub struct UploadStatus {
    pub enabled: bool,
    pub endpoint: String,
    pub bucket: String,
    pub bandwidth_limit_bytes_per_s: u64,
    /// The entry being uploaded now, its size and bytes done.
    pub current: Option<(String, u64, u64)>,
    pub uploads_total: u64,
    pub failures_total: u64,
    pub last_success_unix_ns: i64,
    pub last_success: String,
    pub last_error: String,
    pub last_error_unix_ns: i64,
    /// Refreshed by the uploader after each change.
    pub spool: Summary,
}

fn ts(ns: i64) -> serde_json::Value {
    if ns > 0 {
        crate::clock::format_rfc3339(ns).into()
    } else {
        serde_json::Value::Null
    }
}

impl UploadStatus {
    pub fn to_json(&self, spool: &Spool) -> serde_json::Value {
        let (entries, _) = spool.list();
        let now = crate::clock::now().unix_ns;
        let pending: Vec<serde_json::Value> = entries
            .iter()
            .filter(|e| e.state.pending())
            .take(20)
            .map(|e| {
                json!({
                    "entry": e.name, "key": e.key, "size": e.size, "state": e.state.name(),
                    "attempts": e.attempts, "last_error": e.last_error,
                    "next_attempt_in_s": ((e.next_attempt_unix_ns - now).max(0) as f64 / 1e9).round(),
                    "parts_done": e.multipart.as_ref().map(|m| m.parts.len()),
                })
            })
            .collect();
        let s = &self.spool;
        json!({
            "enabled": self.enabled,
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "bandwidth_limit_bytes_per_s": self.bandwidth_limit_bytes_per_s,
            "uploading": self.current.as_ref().map(|(n, size, done)| json!({"entry": n, "size": size, "bytes_done": done})),
            "uploads_total": self.uploads_total,
            "failures_total": self.failures_total,
            "last_success": ts(self.last_success_unix_ns),
            "last_success_location": self.last_success,
            "last_error": self.last_error,
            "last_error_ts": ts(self.last_error_unix_ns),
            "spool": {
                "dir": spool.dir.display().to_string(),
                "pending": s.pending,
                "pending_bytes": s.pending_bytes,
                "uploaded": s.uploaded,
                "dropped": s.dropped,
                "oldest_pending": ts(s.oldest_pending_unix_ns),
                "entries": pending,
            },
        })
    }
}
