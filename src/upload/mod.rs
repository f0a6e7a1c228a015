//! Bundles leave the node: an on-disk spool under `<state_dir>/spool` and an
//! uploader that ships each spooled bundle to an S3-API object store (AWS S3,
//! Ceph RGW, OpenStack Swift's s3api, MinIO) through the `object_store`
//! crate, retrying with exponential backoff and jitter until it works.
//!
//! ```text
//! bundle worker ──(complete bundle)──► spool::enqueue ──► <state_dir>/spool/<entry>.json + .tar.zst (hard link)
//!                                                              │
//!       uploader thread (agent) / `hvflight bundle upload` ────┤ job::attempt: HEAD (already there?),
//!                                                              │ PUT or multipart (parts recorded as they land),
//!                                                              │ HEAD again: size + ETag = local MD5s
//!                                                              ▼
//!                                                  state "uploaded", spool copy removed
//! ```
//!
//! Layout, state machine, key layout and retry policy: docs/upload.md.

pub mod backoff;
pub mod client;
pub mod credentials;
pub mod job;
pub mod key;
pub mod progress;
pub mod spool;
pub mod status;
pub mod throttle;
pub mod uploader;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("credentials file {path}: {msg}")]
    Credentials { path: String, msg: String },
    #[error(
        "credentials file {path} is mode {mode:04o} (readable by group or others); \
         it must be readable by its owner only: chmod 600 {path}"
    )]
    CredentialsMode { path: String, mode: u32 },
    #[error("CA file {path}: {msg}")]
    Ca { path: String, msg: String },
    #[error("spool {path}: {source}")]
    Spool {
        path: String,
        source: std::io::Error,
    },
    #[error("spool entry {path}: {msg}")]
    Entry { path: String, msg: String },
    #[error("bundle {path}: {msg}")]
    Bundle { path: String, msg: String },
    #[error("object store {endpoint}, bucket {bucket}: {msg}")]
    Store {
        endpoint: String,
        bucket: String,
        msg: String,
    },
    #[error("s3://{bucket}/{key}: uploaded object does not match: {msg}")]
    Verify {
        bucket: String,
        key: String,
        msg: String,
    },
    #[error("upload interrupted (agent stopping); it resumes on the next start")]
    Stopped,
}

/// Everything an upload needs besides the spool entry, from `[upload]` and
/// `agent.state_dir`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config: crate::config::UploadConfig,
    pub spool_dir: PathBuf,
    pub bundles_dir: PathBuf,
    /// Host name used in keys when a bundle's manifest has none.
    pub host: String,
    /// `bundle.after_s`: an incomplete bundle older than this (plus a
    /// margin) will never be completed and is shipped as it is.
    pub bundle_after_s: u64,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config, host: &str) -> Settings {
        Settings {
            config: c.upload.clone(),
            spool_dir: c.agent.state_dir.join("spool"),
            bundles_dir: c.agent.state_dir.join("bundles"),
            host: host.to_string(),
            bundle_after_s: c.bundle.after_s,
        }
    }
}

/// An error and its causes on one line (object_store and reqwest nest the
/// useful part — "connection refused", "invalid peer certificate" — deep).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}
