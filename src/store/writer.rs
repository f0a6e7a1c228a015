//! The store writer: appends samples and event batches to the active
//! segment, rotates segments, enforces byte/age bounds and minimum free
//! space, and records wall-clock jumps.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::format::{self, SegmentHeader};
use super::index::{self, IndexWriter};
use super::table::TableEncoder;
use super::KEYFRAME_EVERY;
use crate::sample::{Event, EventKind, Sample};

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub dir: PathBuf,
    pub host: String,
    pub max_bytes: u64,
    pub max_age_s: u64,
    pub segment_bytes: u64,
    /// Close the active segment once its first record is this old (wall time).
    pub segment_max_age_s: u64,
    pub sync_interval: Duration,
    pub min_free_bytes: u64,
    pub zstd_level: i32,
}

impl WriterConfig {
    pub fn from_config(c: &crate::config::Config, host: &str) -> WriterConfig {
        WriterConfig {
            dir: c.agent.state_dir.join("store"),
            host: host.to_string(),
            max_bytes: c.store.max_bytes,
            max_age_s: c.store.max_age_s,
            segment_bytes: c.store.segment_bytes,
            segment_max_age_s: c.store.segment_max_age_s,
            sync_interval: Duration::from_millis(c.store.sync_interval_ms),
            min_free_bytes: c.store.min_free_bytes,
            zstd_level: 3,
        }
    }
}

struct Active {
    file: File,
    path: PathBuf,
    bytes: u64,
    start_unix_ns: i64,
}

pub struct StoreWriter {
    cfg: WriterConfig,
    active: Option<Active>,
    n_segments: u32,
    table: TableEncoder,
    index: Option<IndexWriter>,
    /// Latest sample time in the active segment (to index late records).
    max_sample_ts: i64,
    since_keyframe: u64,
    fallback_warned: bool,
    last_sync: Instant,
    dirty: bool,
    /// wall − monotonic of the last record, to notice clock steps.
    last_offset_ns: Option<i64>,
    /// Records not written because the disk was (nearly) full.
    pub dropped: u64,
    paused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Free bytes available to us on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Segment files of a store, oldest first (by name: first wall time, then pid and counter).
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "hvs"))
        .collect();
    v.sort();
    v
}

impl StoreWriter {
    pub fn open(cfg: WriterConfig) -> Result<StoreWriter, StoreError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| io(&cfg.dir, e))?;
        let level = cfg.zstd_level;
        Ok(StoreWriter {
            cfg,
            active: None,
            n_segments: 0,
            table: TableEncoder::new(level),
            index: None,
            max_sample_ts: i64::MIN,
            since_keyframe: 0,
            fallback_warned: false,
            last_sync: Instant::now(),
            dirty: false,
            last_offset_ns: None,
            dropped: 0,
            paused: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    fn new_segment(&mut self, ts_unix_ns: i64) -> Result<(), StoreError> {
        self.close_active();
        // Sequence first: file order is write order even when the wall
        // clock steps backwards; the first record's wall time second.
        let seq = segments(&self.cfg.dir)
            .last()
            .and_then(|p| seq_of(p))
            .map_or(1, |n| n + 1);
        let name = format!("seg-{seq:08}-{:016}.hvs", ts_unix_ns.max(0) / 1_000_000);
        self.n_segments += 1;
        let path = self.cfg.dir.join(name);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let header = format::encode_header(&SegmentHeader {
            format_version: format::FORMAT_VERSION,
            host: self.cfg.host.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            created_unix_ns: ts_unix_ns,
            pid: std::process::id(),
        });
        if let Err(e) = file.write_all(&header) {
            let _ = std::fs::remove_file(&path);
            return Err(io(&path, e));
        }
        // Directory entry durable too, or a crash could lose the whole file.
        if let Ok(d) = File::open(&self.cfg.dir) {
            let _ = d.sync_all();
        }
        self.index = Some(IndexWriter::create(&path));
        self.active = Some(Active {
            file,
            path,
            bytes: header.len() as u64,
            start_unix_ns: ts_unix_ns,
        });
        self.table.reset(); // each segment starts with a keyframe
        self.max_sample_ts = i64::MIN;
        Ok(())
    }

    fn close_active(&mut self) {
        if let Some(a) = self.active.take() {
            let _ = a.file.sync_data();
        }
    }

    /// Deletes the oldest closed segments while over the byte or age bound.
    pub fn enforce_retention(&mut self, now_unix_ns: i64) {
        let segs = segments(&self.cfg.dir);
        let active = self.active.as_ref().map(|a| a.path.clone());
        let mut total: u64 = segs
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let age_limit_ms = (now_unix_ns / 1_000_000) - (self.cfg.max_age_s as i64 * 1000);
        for (i, p) in segs.iter().enumerate() {
            if Some(p) == active.as_ref() {
                break;
            }
            // A segment is past the age bound when the NEXT one started before the limit.
            let next_start = segs
                .get(i + 1)
                .and_then(|n| start_ms(n))
                .unwrap_or(i64::MAX);
            let too_old = next_start < age_limit_ms;
            if total <= self.cfg.max_bytes && !too_old {
                break;
            }
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            if remove_segment(p).is_ok() {
                total = total.saturating_sub(len);
                tracing::info!(segment = %p.display(), too_old, "store: deleted oldest segment");
            }
        }
    }

    /// Makes room when the filesystem is below its minimum free space by
    /// deleting our oldest closed segments; true if there is room now.
    fn ensure_space(&mut self, need: u64) -> bool {
        loop {
            match free_bytes(&self.cfg.dir) {
                Some(free) if free >= self.cfg.min_free_bytes + need => return true,
                None => return true, // cannot tell: try, the write reports errors
                Some(_) => {}
            }
            let active = self.active.as_ref().map(|a| a.path.clone());
            let oldest = segments(&self.cfg.dir)
                .into_iter()
                .find(|p| Some(p) != active.as_ref());
            match oldest {
                Some(p) => {
                    tracing::warn!(segment = %p.display(), "store: filesystem low on space; deleting oldest segment");
                    let _ = remove_segment(&p);
                }
                None => return false,
            }
        }
    }

    fn append(
        &mut self,
        kind: u8,
        ts_unix_ns: i64,
        mono_ns: u64,
        payload: &[u8],
    ) -> Result<bool, StoreError> {
        let frame = format::encode_frame(kind, ts_unix_ns, mono_ns, payload);
        if !self.ensure_space(frame.len() as u64) {
            self.dropped += 1;
            if !self.paused {
                self.paused = true;
                tracing::error!(dir = %self.cfg.dir.display(), min_free_bytes = self.cfg.min_free_bytes,
                    "store: filesystem full; recording paused until space returns (nothing written is damaged)");
            }
            return Ok(false);
        }
        if self.paused {
            self.paused = false;
            tracing::warn!(
                dropped = self.dropped,
                "store: space is back; recording resumed"
            );
        }
        let a = self.active.as_mut().expect("segment open");
        if let Err(e) = a.file.write_all(&frame) {
            // A partial frame may be on disk: the reader skips it by CRC. Start
            // a fresh segment next time so nothing is appended after garbage.
            let path = a.path.clone();
            self.active = None;
            self.dropped += 1;
            if !self.paused {
                self.paused = true;
                tracing::error!(segment = %path.display(), error = %e, "store: write failed; will retry with a new segment");
            }
            return Ok(false);
        }
        a.bytes += frame.len() as u64;
        self.dirty = true;
        Ok(true)
    }

    fn needs_new_segment(&self, ts_unix_ns: i64) -> bool {
        let max_age_ns = (self.cfg.segment_max_age_s as i64).saturating_mul(1_000_000_000);
        self.active.as_ref().is_none_or(|a| {
            a.bytes >= self.cfg.segment_bytes
                || ts_unix_ns.saturating_sub(a.start_unix_ns) >= max_age_ns
        })
    }

    /// Writes one sample; returns false if it was dropped (disk full).
    pub fn write_sample(&mut self, s: &Sample) -> Result<bool, StoreError> {
        let jumped = self.check_clock(s.ts_unix_ns, s.mono_ns)?;
        // A new segment after a clock step keeps wall time monotonic inside
        // each segment, which is what lets readers skip segments by name.
        if self.needs_new_segment(s.ts_unix_ns) || jumped {
            self.new_segment(s.ts_unix_ns)?;
        }
        let keyframe = !self.table.has_keyframe() || self.since_keyframe >= KEYFRAME_EVERY;
        if keyframe {
            // Once a keyframe interval, not only at rotation: a segment can
            // last an hour, and the age bound should not overshoot by that.
            self.enforce_retention(s.ts_unix_ns);
        }
        let offset = self.active.as_ref().map_or(0, |a| a.bytes);
        let encoded = match self.table.encode(s, keyframe) {
            Ok(e) => Some(e),
            Err(e) => {
                if !self.fallback_warned {
                    self.fallback_warned = true;
                    tracing::warn!(error = %e, "store: sample stored as JSON (the table encoding cannot represent it)");
                }
                None
            }
        };
        let written = match &encoded {
            Some(e) => {
                let kind = if e.keyframe {
                    format::KIND_TABLE_KEYFRAME
                } else {
                    format::KIND_TABLE_DELTA
                };
                self.append(kind, s.ts_unix_ns, s.mono_ns, &e.payload)?
            }
            None => {
                let json = serde_json::to_vec(s).expect("sample serializes");
                let payload = format::compress(&json, None, self.cfg.zstd_level)
                    .map_err(|e| io(&self.cfg.dir, e))?;
                self.append(format::KIND_KEYFRAME, s.ts_unix_ns, s.mono_ns, &payload)?
            }
        };
        if written {
            self.max_sample_ts = self.max_sample_ts.max(s.ts_unix_ns);
            if let Some(e) = encoded {
                if e.keyframe {
                    self.since_keyframe = 0;
                    self.index_entry(offset, s.ts_unix_ns, index::ENTRY_KEYFRAME);
                } else {
                    self.since_keyframe += 1;
                }
                self.table.commit(e, offset);
            }
        }
        self.maybe_sync();
        Ok(written)
    }

    fn index_entry(&mut self, offset: u64, ts_unix_ns: i64, kind: u32) {
        if let Some(i) = self.index.as_mut() {
            i.add(index::Entry {
                offset,
                ts_unix_ns,
                kind,
            });
        }
    }

    /// Writes a batch of events (those that arrived during one interval).
    pub fn write_events(&mut self, events: &[Event]) -> Result<bool, StoreError> {
        let Some(first) = events.first() else {
            return Ok(true);
        };
        if self.needs_new_segment(first.ts_unix_ns) {
            self.new_segment(first.ts_unix_ns)?;
        }
        let json = serde_json::to_vec(events).expect("events serialize");
        let payload =
            format::compress(&json, None, self.cfg.zstd_level).map_err(|e| io(&self.cfg.dir, e))?;
        let offset = self.active.as_ref().map_or(0, |a| a.bytes);
        let w = self.append(
            format::KIND_EVENTS,
            first.ts_unix_ns,
            first.mono_ns,
            &payload,
        )?;
        // Older than samples already written (the kernel-log backlog): the
        // index points at it, so range reads that stop early still find it.
        if w && first.ts_unix_ns < self.max_sample_ts.saturating_sub(1_000_000_000) {
            self.index_entry(offset, first.ts_unix_ns, index::ENTRY_LATE);
        }
        self.maybe_sync();
        Ok(w)
    }

    /// Records a wall-clock step (wall − monotonic moved by more than 1 s);
    /// true if there was one.
    fn check_clock(&mut self, unix_ns: i64, mono_ns: u64) -> Result<bool, StoreError> {
        let mut jumped = false;
        let offset = unix_ns - mono_ns as i64;
        if let Some(prev) = self.last_offset_ns {
            let jump = offset - prev;
            if jump.abs() > 1_000_000_000 {
                let ev = Event {
                    ts_unix_ns: unix_ns,
                    mono_ns,
                    kind: EventKind::Agent {
                        what: "clock_jump".into(),
                        detail: format!("wall clock stepped {:+.3} s", jump as f64 / 1e9),
                    },
                };
                tracing::warn!(jump_s = jump as f64 / 1e9, "wall clock stepped");
                self.write_events(&[ev])?;
                jumped = true;
            }
        }
        self.last_offset_ns = Some(offset);
        Ok(jumped)
    }

    fn maybe_sync(&mut self) {
        if self.dirty && self.last_sync.elapsed() >= self.cfg.sync_interval {
            self.sync_now();
        }
    }

    /// fdatasync now (the detector calls this when it turns suspect).
    pub fn sync_now(&mut self) {
        if let Some(a) = &self.active {
            if let Err(e) = a.file.sync_data() {
                tracing::warn!(segment = %a.path.display(), error = %e, "store: fdatasync failed");
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.close_active();
    }
}

/// Deletes a segment and its keyframe index.
pub fn remove_segment(p: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(index::index_path(p));
    std::fs::remove_file(p)
}

/// The write-order sequence number of a segment, from its name.
pub fn seq_of(p: &Path) -> Option<u64> {
    p.file_name()?
        .to_str()?
        .strip_prefix("seg-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The first wall time (ms) of a segment, from its name.
pub fn start_ms(p: &Path) -> Option<i64> {
    p.file_name()?
        .to_str()?
        .strip_prefix("seg-")?
        .split('-')
        .nth(1)?
        .trim_end_matches(".hvs")
        .parse()
        .ok()
}
