//! The spool under `<state_dir>/spool`: one entry per bundle (and case)
//! waiting to leave the node, surviving restarts and reboots.
//!
//! ```text
//! <entry>.tar.zst   the bundle as it was when queued (a hard link to the file in
//!                   bundles/, so pruning or rewriting bundles/ cannot touch it)
//! <entry>.json      its state (versioned JSON, replaced atomically: temp, fsync, rename)
//! ```
//!
//! `<entry>` is the bundle's name without `.tar.zst`, plus `.case-<ID>` when
//! uploaded under a case. States: `queued` → `uploading` → `uploaded`
//! (failures go back to `queued` with a later `next_attempt`); `dropped` when
//! the spool was full. Whoever uploads an entry holds an exclusive flock on
//! its `.tar.zst`, so the agent and `hvflight bundle upload` never send the
//! same entry at once; after a verified upload the `.tar.zst` goes and the
//! `.json` stays as the record that it was uploaded (never uploaded twice).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::UploadError;

pub const SPOOL_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Queued,
    Uploading,
    Uploaded,
    Dropped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Uploading => "uploading",
            State::Uploaded => "uploaded",
            State::Dropped => "dropped",
        }
    }
    /// Still to be uploaded (an `uploading` entry whose uploader died resumes).
    pub fn pending(self) -> bool {
        matches!(self, State::Queued | State::Uploading)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PartDone {
    /// 1-based, as S3 numbers parts.
    pub number: u32,
    pub size: u64,
    /// The ETag the server answered (for S3 and Swift: the part's MD5).
    pub etag: String,
    pub md5: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Multipart {
    pub upload_id: String,
    pub part_size: u64,
    pub started_unix_ns: i64,
    /// Parts on the server, in order; an upload resumes after the last.
    pub parts: Vec<PartDone>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Entry {
    pub format_version: u32,
    /// Entry name (file stem in the spool).
    pub name: String,
    /// The bundle's file name.
    pub bundle: String,
    pub incident_id: String,
    #[serde(default)]
    pub case: String,
    /// Object key, fixed when queued.
    pub key: String,
    pub size: u64,
    pub state: State,
    pub queued_unix_ns: i64,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not before this (backoff); 0 = now.
    #[serde(default)]
    pub next_attempt_unix_ns: i64,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub last_error_unix_ns: i64,
    /// The ETag a correct upload must have: MD5 (single PUT) or MD5 of the
    /// part MD5s + "-N" (multipart); computed from the spooled file.
    #[serde(default)]
    pub expected_etag: String,
    /// Part size the upload uses (0 = one PUT); fixed with expected_etag.
    #[serde(default)]
    pub part_size: u64,
    #[serde(default)]
    pub multipart: Option<Multipart>,
    #[serde(default)]
    pub uploaded_unix_ns: i64,
    /// Where it went: `s3://bucket/key` and the endpoint.
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub endpoint: String,
    /// PUT requests that carried bundle bytes (1 for a single PUT; parts for multipart).
    #[serde(default)]
    pub data_requests: u32,
}

/// Counts for status and metrics.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Entries still to upload, and their bytes.
    pub pending: u64,
    pub pending_bytes: u64,
    pub uploaded: u64,
    pub dropped: u64,
    /// Oldest pending entry, when queued (0 = none).
    pub oldest_pending_unix_ns: i64,
}

#[derive(Clone, Debug)]
pub struct Spool {
    pub dir: PathBuf,
}

fn io(path: &Path, source: std::io::Error) -> UploadError {
    UploadError::Spool {
        path: path.display().to_string(),
        source,
    }
}

pub fn entry_name(bundle: &str, case: &str) -> String {
    let stem = bundle.strip_suffix(".tar.zst").unwrap_or(bundle);
    if case.is_empty() {
        stem.to_string()
    } else {
        format!("{stem}.case-{case}")
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An exclusive claim on an entry (flock on its spooled file).
pub struct Claim {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool { dir: dir.into() }
    }

    pub fn json_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.tar.zst"))
    }

    pub fn save(&self, e: &Entry) -> Result<(), UploadError> {
        let p = self.json_path(&e.name);
        let json = serde_json::to_vec_pretty(e).expect("spool entry serializes");
        write_atomic(&p, &json).map_err(|err| io(&p, err))
    }

    pub fn load(&self, name: &str) -> Result<Option<Entry>, UploadError> {
        let p = self.json_path(name);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&p, e)),
        };
        let e: Entry = serde_json::from_slice(&text).map_err(|err| UploadError::Entry {
            path: p.display().to_string(),
            msg: format!("not a spool entry: {err}"),
        })?;
        if e.format_version > SPOOL_FORMAT_VERSION {
            return Err(UploadError::Entry {
                path: p.display().to_string(),
                msg: format!(
                    "format version {} is newer than this agent's {SPOOL_FORMAT_VERSION}",
                    e.format_version
                ),
            });
        }
        Ok(Some(e))
    }

    /// Every entry, oldest queued first, and the entries that could not be read.
    pub fn list(&self) -> (Vec<Entry>, Vec<UploadError>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return (out, errors);
        };
        for f in rd.flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            let Some(name) = n.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match self.load(name) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        out.sort_by(|a, b| (a.queued_unix_ns, &a.name).cmp(&(b.queued_unix_ns, &b.name)));
        (out, errors)
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for e in self.list().0 {
            match e.state {
                st if st.pending() => {
                    s.pending += 1;
                    s.pending_bytes += e.size;
                    if s.oldest_pending_unix_ns == 0 || e.queued_unix_ns < s.oldest_pending_unix_ns
                    {
                        s.oldest_pending_unix_ns = e.queued_unix_ns;
                    }
                }
                State::Uploaded => s.uploaded += 1,
                _ => s.dropped += 1,
            }
        }
        s
    }

    /// Queues `bundle` (its manifest gives host, incident and case) under
    /// `key`. Idempotent: an entry that exists is returned as it is, so a
    /// bundle announced twice, or found again at start, is never sent twice.
    pub fn enqueue(
        &self,
        bundle: &Path,
        case: &str,
        key: &str,
        incident_id: &str,
        max_pending_bytes: u64,
    ) -> Result<(Entry, bool), UploadError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let bname = bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = entry_name(&bname, case);
        if let Some(e) = self.load(&name)? {
            return Ok((e, false));
        }
        let size = std::fs::metadata(bundle).map_err(|e| io(bundle, e))?.len();
        let now = crate::clock::now().unix_ns;
        let mut e = Entry {
            format_version: SPOOL_FORMAT_VERSION,
            name: name.clone(),
            bundle: bname,
            incident_id: incident_id.into(),
            case: case.into(),
            key: key.into(),
            size,
            state: State::Queued,
            queued_unix_ns: now,
            ..Default::default()
        };
        let pending = self.summary().pending_bytes;
        if max_pending_bytes > 0 && pending + size > max_pending_bytes {
            e.state = State::Dropped;
            e.last_error = format!(
                "spool full: {pending} bytes waiting, {size} more would pass upload.spool_max_bytes ({max_pending_bytes})"
            );
            e.last_error_unix_ns = now;
            self.save(&e)?;
            return Ok((e, true));
        }
        // Data first, then the state that points at it: a crash in between
        // leaves an orphan file that `clean_orphans` removes.
        let data = self.data_path(&name);
        let tmp = self.dir.join(format!(".{name}.tar.zst.tmp"));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(bundle, &tmp).is_err() {
            // Another filesystem: copy (and fsync) instead.
            std::fs::copy(bundle, &tmp).map_err(|err| io(&tmp, err))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|err| io(&tmp, err))?;
        }
        std::fs::rename(&tmp, &data).map_err(|err| io(&data, err))?;
        self.save(&e)?;
        Ok((e, true))
    }

    /// Claims an entry for uploading. `wait` = block until the other
    /// uploader is done; otherwise None when it is busy. None also when the
    /// spooled file is gone (the entry was uploaded meanwhile).
    pub fn claim(&self, name: &str, wait: bool) -> Result<Option<Claim>, UploadError> {
        let p = self.data_path(name);
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&p, e)),
        };
        let arg = if wait {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockExclusiveNonblock
        };
        match nix::fcntl::Flock::lock(f, arg) {
            Ok(l) => Ok(Some(Claim { _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(io(&p, std::io::Error::from(e))),
        }
    }

    /// True when someone holds the claim on `name` now.
    pub fn busy(&self, name: &str) -> bool {
        matches!(self.claim(name, false), Ok(None)) && self.data_path(name).exists()
    }

    /// Removes spooled files no entry points at (a crash between writing
    /// the data and the state) and stale temp files.
    pub fn clean_orphans(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for f in rd.flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            let orphan = if n.starts_with('.') && n.ends_with(".tmp") {
                true
            } else if let Some(stem) = n.strip_suffix(".tar.zst") {
                !self.json_path(stem).exists()
            } else {
                false
            };
            if orphan {
                tracing::info!(file = %f.path().display(), "spool: removing orphan");
                let _ = std::fs::remove_file(f.path());
            }
        }
    }

    /// Forgets uploaded and dropped entries whose bundle is gone from
    /// `bundles_dir` and that are older than `age_ns` (while the bundle is
    /// there, its record keeps it from being queued again).
    pub fn prune(&self, bundles_dir: &Path, age_ns: i64) {
        let now = crate::clock::now().unix_ns;
        for e in self.list().0 {
            let done_at = e
                .uploaded_unix_ns
                .max(e.last_error_unix_ns)
                .max(e.queued_unix_ns);
            if !e.state.pending() && !bundles_dir.join(&e.bundle).exists() && now - done_at > age_ns
            {
                let _ = std::fs::remove_file(self.json_path(&e.name));
                let _ = std::fs::remove_file(self.data_path(&e.name));
            }
        }
    }

    /// The entries queued for bundle file `bundle` (any case).
    pub fn for_bundle(&self, bundle: &str) -> Vec<Entry> {
        self.list()
            .0
            .into_iter()
            .filter(|e| e.bundle == bundle)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_is_idempotent_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("hvflight-h-20150227T023000Z-ab12.tar.zst");
        std::fs::write(&b, b"bundle bytes").unwrap();
        let s = Spool::new(d.path().join("spool"));
        let (e, new) = s.enqueue(&b, "", "h/2015-02-27/x", "ab12", 0).unwrap();
        assert!(new);
        assert_eq!(e.name, "hvflight-h-20150227T023000Z-ab12");
        assert_eq!(e.size, 12);
        assert_eq!(e.state, State::Queued);
        // The spooled copy stays when bundles/ loses the file.
        std::fs::remove_file(&b).unwrap();
        assert_eq!(
            std::fs::read(s.data_path(&e.name)).unwrap(),
            b"bundle bytes"
        );
        std::fs::write(&b, b"rewritten").unwrap();
        let (again, new) = Spool::new(d.path().join("spool"))
            .enqueue(&b, "", "other", "ab12", 0)
            .unwrap();
        assert!(!new);
        assert_eq!(again, e);
        // Another case is another entry.
        let (c, new) = s.enqueue(&b, "SR-1", "k2", "ab12", 0).unwrap();
        assert!(new);
        assert_eq!(c.name, "hvflight-h-20150227T023000Z-ab12.case-SR-1");
        assert_eq!(s.summary().pending, 2);
        assert_eq!(s.for_bundle(&e.bundle).len(), 2);
    }

    #[test]
    fn a_full_spool_drops_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("b.tar.zst");
        std::fs::write(&b, vec![0u8; 100]).unwrap();
        let s = Spool::new(d.path().join("spool"));
        let (e, _) = s.enqueue(&b, "", "k", "i", 50).unwrap();
        assert_eq!(e.state, State::Dropped);
        assert!(e.last_error.contains("spool_max_bytes"), "{}", e.last_error);
        assert!(!s.data_path(&e.name).exists());
    }

    #[test]
    fn claims_exclude_each_other_and_orphans_go() {
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("b.tar.zst");
        std::fs::write(&b, b"x").unwrap();
        let s = Spool::new(d.path().join("spool"));
        let (e, _) = s.enqueue(&b, "", "k", "i", 0).unwrap();
        let c = s.claim(&e.name, false).unwrap();
        assert!(c.is_some());
        assert!(s.claim(&e.name, false).unwrap().is_none());
        assert!(s.busy(&e.name));
        drop(c);
        assert!(!s.busy(&e.name));
        std::fs::write(s.dir.join("lost.tar.zst"), b"x").unwrap();
        s.clean_orphans();
        assert!(!s.dir.join("lost.tar.zst").exists());
        assert!(s.data_path(&e.name).exists());
    }

    #[test]
    fn newer_format_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path());
        std::fs::write(s.json_path("x"), r#"{"format_version": 99, "name": "x", "bundle": "b", "incident_id": "", "key": "k", "size": 1, "state": "queued", "queued_unix_ns": 0}"#).unwrap();
        let e = s.load("x").unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("newer"), "{e}");
    }
}
