//! Reading what the analyzer works on into a [`View`]: a bundle, streamed
//! once and checked entry by entry, or the live store.
//!
//! A bundle may come from anywhere (a laptop, a ticket attachment), so it is
//! read as untrusted input: nothing is ever extracted to disk; an entry whose
//! name is absolute or holds `..`, or that is a link or a device, is refused
//! by name; every entry's declared size is checked against
//! `analyze.max_entry_bytes` before a byte of it is read, and all entries
//! together against `analyze.max_total_bytes` while decompressing (a
//! decompression bomb costs at most that much time and no memory); history
//! lines are read with a cap (`analyze.max_line_bytes`); only the deep-state
//! files the rules read are kept, each capped; sizes and sha256 sums are
//! checked against the manifest, so a truncated or corrupt bundle is an
//! error that names the entry.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

use super::packets;
use super::view::View;
use crate::bundle::{Manifest, BUNDLE_FORMAT_VERSION};
use crate::config::AnalyzeConfig;
use crate::sample::{Event, EventKind, Sample};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a hvflight bundle: {why}")]
    NotBundle { path: String, why: String },
    #[error("{path}: bundle format version {found} is not one this hvflight reads (it reads version {supported}); a newer hvflight may")]
    Version {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("{path}: entry {entry:?} refused: {why}")]
    Refused {
        path: String,
        entry: String,
        why: String,
    },
    #[error("{path}: entry {entry:?}: {why} (the bundle is truncated or corrupt; `hvflight bundle verify` lists all damage)")]
    Damaged {
        path: String,
        entry: String,
        why: String,
    },
    #[error("{path}: no store there (is --state-dir right? has the agent run here?)")]
    NoStore { path: String },
}

/// Deep-state and log files the rules read (prefix match); everything
/// else is checked and skipped.
const KEPT_FILES: &[&str] = &[
    "deep/bridge-vlan",
    "deep/ethtool-k-",
    "deep/proc/net/bonding/",
    "deep/ovs-vswitchd.log",
    "deep/dnsmasq",
    "deep/ip-route",
];
/// Each kept file is cut at this size (the rules look for lines, not bulk).
const MAX_KEPT_FILE_BYTES: usize = 8 << 20;

/// A reader that counts what passes through it and stops at a total.
struct Budget<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read >= self.limit {
            return Err(std::io::Error::other(format!(
                "more than analyze.max_total_bytes = {} bytes decompressed (a decompression bomb?)",
                self.limit
            )));
        }
        let room = (self.limit - self.read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Hashes and counts an entry's bytes as they are read.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

fn entry_name_ok(raw: &[u8]) -> Result<String, String> {
    let name = String::from_utf8(raw.to_vec()).map_err(|_| "name is not UTF-8".to_string())?;
    if name.is_empty() {
        return Err("empty name".into());
    }
    for c in Path::new(&name).components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path (entries must stay inside the bundle)".into())
            }
            Component::ParentDir => {
                return Err("path with `..` (entries must stay inside the bundle)".into())
            }
            _ => {}
        }
    }
    Ok(name)
}

/// Reads a bundle into a view. `path` is only read, never extracted.
pub fn load_bundle(path: &Path, cfg: &AnalyzeConfig) -> Result<View, LoadError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| LoadError::Open {
        path: p.clone(),
        source,
    })?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let dec = zstd::Decoder::new(f).map_err(|e| LoadError::NotBundle {
        path: p.clone(),
        why: format!("not zstd: {e}"),
    })?;
    let mut ar = tar::Archive::new(Budget {
        inner: dec,
        read: 0,
        limit: cfg.max_total_bytes,
    });
    let entries = ar.entries().map_err(|e| LoadError::NotBundle {
        path: p.clone(),
        why: format!("not a tar archive: {e}"),
    })?;
    let damaged = |entry: &str, why: String| LoadError::Damaged {
        path: p.clone(),
        entry: entry.to_string(),
        why,
    };

    let mut manifest: Option<Manifest> = None;
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let (mut samples, mut events) = (Vec::new(), Vec::new());
    let mut files = BTreeMap::new();
    let mut capture: Option<packets::Capture> = None;
    let mut notes = Vec::new();
    let mut last_entry = String::from("(start of archive)");

    for e in entries {
        let mut e = match e {
            Ok(e) => e,
            Err(err) => {
                if manifest.is_none() {
                    return Err(LoadError::NotBundle {
                        path: p.clone(),
                        why: format!("not a tar.zst archive: {err}"),
                    });
                }
                return Err(damaged(
                    &last_entry,
                    format!("archive unreadable after this entry: {err}"),
                ));
            }
        };
        let name = entry_name_ok(&e.path_bytes()).map_err(|why| LoadError::Refused {
            path: p.clone(),
            entry: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            why,
        })?;
        let kind = e.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !(kind.is_file() || kind.is_gnu_longname() || kind.is_pax_local_extensions()) {
            let why = if kind.is_symlink() {
                "a symbolic link (bundles hold regular files only)".to_string()
            } else if kind.is_hard_link() {
                "a hard link (bundles hold regular files only)".to_string()
            } else {
                format!(
                    "entry type {:?} (bundles hold regular files only)",
                    kind.as_byte() as char
                )
            };
            return Err(LoadError::Refused {
                path: p.clone(),
                entry: name,
                why,
            });
        }
        let declared = e.header().size().unwrap_or(u64::MAX);
        if declared > cfg.max_entry_bytes {
            return Err(LoadError::Refused {
                path: p.clone(),
                entry: name,
                why: format!(
                    "declares {declared} bytes, more than analyze.max_entry_bytes = {}",
                    cfg.max_entry_bytes
                ),
            });
        }
        last_entry = name.clone();
        if manifest.is_none() {
            if name != "manifest.json" {
                return Err(LoadError::NotBundle {
                    path: p.clone(),
                    why: format!("first entry is {name:?}, not manifest.json"),
                });
            }
            let mut text = String::new();
            (&mut e)
                .take(16 << 20)
                .read_to_string(&mut text)
                .map_err(|err| damaged(&name, err.to_string()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|err| LoadError::NotBundle {
                    path: p.clone(),
                    why: format!("manifest.json: {err}"),
                })?;
            let found = v["format_version"].as_u64().unwrap_or(0) as u32;
            if found != BUNDLE_FORMAT_VERSION {
                return Err(LoadError::Version {
                    path: p.clone(),
                    found,
                    supported: BUNDLE_FORMAT_VERSION,
                });
            }
            let m: Manifest = serde_json::from_value(v).map_err(|err| LoadError::NotBundle {
                path: p.clone(),
                why: format!("manifest.json: {err}"),
            })?;
            manifest = Some(m);
            continue;
        }
        let m = manifest.as_ref().expect("set above");
        let mut r = Hashing {
            inner: &mut e,
            hash: Sha256::new(),
            size: 0,
        };
        if name == "history/records.jsonl" {
            let stride = thinning_stride(m.samples, cfg.max_samples);
            read_history(
                &mut r,
                cfg.max_line_bytes,
                stride,
                m.incident.ts_unix_ns,
                &mut samples,
                &mut events,
                &mut notes,
            )
            .map_err(|why| damaged(&name, why))?;
        } else if name.ends_with(".pcapng") {
            match packets::read_pcapng(&mut r, cfg.max_packets as usize) {
                Ok(c) => capture = Some(c),
                Err(why) => notes.push(format!("{name}: packet capture unreadable: {why}")),
            }
        } else if KEPT_FILES.iter().any(|k| name.starts_with(k)) {
            let mut b = Vec::new();
            (&mut r)
                .take(MAX_KEPT_FILE_BYTES as u64)
                .read_to_end(&mut b)
                .map_err(|err| damaged(&name, err.to_string()))?;
            files.insert(name.clone(), String::from_utf8_lossy(&b).into_owned());
        }
        // Whatever was not consumed is hashed through to the end.
        std::io::copy(&mut r, &mut std::io::sink())
            .map_err(|err| damaged(&name, err.to_string()))?;
        let sum: String = r
            .hash
            .finalize()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        seen.insert(name, (r.size, sum));
    }
    let Some(m) = manifest else {
        return Err(LoadError::NotBundle {
            path: p,
            why: "empty archive".into(),
        });
    };
    for x in &m.entries {
        match seen.get(&x.name) {
            None => {
                return Err(damaged(
                    &x.name,
                    format!("listed in the manifest but not in the archive (the file ends at byte {file_len})"),
                ))
            }
            Some((size, _)) if *size != x.size => {
                return Err(damaged(
                    &x.name,
                    format!("{size} bytes, the manifest says {}", x.size),
                ))
            }
            Some((_, sum)) if *sum != x.sha256 => {
                return Err(damaged(
                    &x.name,
                    format!("sha256 {sum}, the manifest says {}", x.sha256),
                ))
            }
            Some(_) => {}
        }
    }
    for name in seen.keys() {
        if !m.entries.iter().any(|x| &x.name == name) {
            notes.push(format!(
                "{name}: in the archive but not in the manifest (ignored)"
            ));
        }
    }
    for c in &m.commands {
        if c.timed_out || c.exit_status.is_some_and(|s| s != 0) || !c.error.is_empty() {
            notes.push(format!(
                "deep state {}: {}",
                c.name,
                if c.timed_out {
                    format!("timed out after {} ms", c.duration_ms)
                } else if !c.error.is_empty() {
                    c.error.clone()
                } else {
                    format!(
                        "exit {} {}",
                        c.exit_status.unwrap_or(-1),
                        c.stderr_tail.lines().last().unwrap_or("")
                    )
                }
            ));
        }
    }
    for w in m.store_warnings.iter().take(5) {
        notes.push(format!("store: {w}"));
    }
    Ok(View::new(m, p, samples, events, files, capture, notes))
}

fn thinning_stride(total: u64, max: u64) -> usize {
    if max == 0 || total <= max {
        1
    } else {
        total.div_ceil(max) as usize
    }
}

/// Samples this close to the collapse are never thinned, seconds.
const KEEP_ALL_WITHIN_S: i64 = 180;

/// Lines handed to a parser thread at once (bytes, about).
const BATCH_BYTES: usize = 4 << 20;

/// One batch of history lines: (first line number, lines).
type Batch = (u64, Vec<Vec<u8>>);

#[derive(Default)]
struct Parsed {
    samples: Vec<Sample>,
    events: Vec<Event>,
    bad: u64,
    first_bad: Option<(u64, String)>,
}

/// Parses one batch. A sample far from the collapse is kept when its line
/// number falls on the thinning stride (the history alternates samples and
/// event batches, so this keeps about one sample in `stride`).
fn parse_batch(first: u64, lines: &[Vec<u8>], stride: usize, incident_ns: i64) -> Parsed {
    let mut p = Parsed::default();
    for (i, text) in lines.iter().enumerate() {
        let n = first + i as u64;
        // A substring test is the cheap way to pick the type before parsing.
        let res = if memfind(text, b"\"kind\":\"sample\"") {
            serde_json::from_slice::<Sample>(text).map(|s| {
                let near = (s.ts_unix_ns - incident_ns).abs() <= KEEP_ALL_WITHIN_S * 1_000_000_000;
                if near || stride == 1 || n % stride as u64 == 0 {
                    p.samples.push(s);
                }
            })
        } else {
            serde_json::from_slice::<Event>(text).map(|e| p.events.push(e))
        };
        if let Err(e) = res {
            p.bad += 1;
            if p.first_bad.is_none() {
                p.first_bad = Some((n, e.to_string()));
            }
        }
    }
    p
}

/// Reads the history: this thread decompresses, hashes and splits lines
/// (each capped at `max_line`); parser threads turn batches into samples
/// and events; results are put back in line order. At most a few batches
/// are in flight, so memory stays bounded by what is kept.
fn read_history(
    r: &mut impl Read,
    max_line: u64,
    stride: usize,
    incident_ns: i64,
    samples: &mut Vec<Sample>,
    events: &mut Vec<Event>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(workers);
    let rx = std::sync::Mutex::new(rx);
    let mut results: Vec<(u64, Parsed)> = Vec::new();
    let mut n = 0u64;
    let read_res = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = &rx;
                sc.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let next = rx.lock().map(|r| r.recv());
                        let Ok(Ok((first, lines))) = next else { break };
                        out.push((first, parse_batch(first, &lines, stride, incident_ns)));
                    }
                    out
                })
            })
            .collect();
        let res = (|| -> Result<(), String> {
            let mut br = BufReader::with_capacity(1 << 20, r);
            let (mut batch, mut bytes, mut first) = (Vec::new(), 0usize, 1u64);
            loop {
                let mut line = Vec::new();
                let got = (&mut br)
                    .take(max_line + 1)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| format!("after line {n}: {e}"))?;
                if got == 0 {
                    break;
                }
                n += 1;
                if got as u64 > max_line {
                    return Err(format!(
                        "line {n} is longer than analyze.max_line_bytes = {max_line}"
                    ));
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                bytes += line.len();
                batch.push(line);
                if bytes >= BATCH_BYTES {
                    let b = std::mem::take(&mut batch);
                    if tx.send((first, b)).is_err() {
                        break;
                    }
                    bytes = 0;
                    first = n + 1;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send((first, batch));
            }
            Ok(())
        })();
        drop(tx);
        for h in handles {
            results.extend(h.join().unwrap_or_default());
        }
        res
    });
    read_res?;
    results.sort_by_key(|r| r.0);
    let (mut bad, mut first_bad) = (0u64, None);
    for (_, p) in results {
        samples.extend(p.samples);
        events.extend(p.events);
        bad += p.bad;
        if first_bad.is_none() {
            first_bad = p.first_bad;
        }
    }
    if let Some((line, e)) = first_bad {
        notes.push(format!(
            "history/records.jsonl: {bad} of {n} lines not understood (first: line {line}: {e})"
        ));
    }
    if stride > 1 {
        notes.push(format!(
            "history thinned: about 1 sample in {stride} kept farther than {KEEP_ALL_WITHIN_S} s from the collapse (analyze.max_samples)"
        ));
    }
    Ok(())
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    // Unescaped quotes: the tag cannot occur inside a JSON string value.
    memchr::memmem::find(hay, needle).is_some()
}

/// The live store as an incident: the last collapse the detector recorded
/// in the range, else now (`hvflight analyze --since`).
pub fn load_store(store_dir: &Path, since_ns: i64, host: &str) -> Result<View, LoadError> {
    if !store_dir.is_dir() {
        return Err(LoadError::NoStore {
            path: store_dir.display().to_string(),
        });
    }
    let now = crate::clock::now().unix_ns;
    let (records, report) = crate::store::read_range(store_dir, since_ns, i64::MAX);
    let (mut samples, mut events) = (Vec::new(), Vec::new());
    for r in records {
        match r {
            crate::store::Record::Sample(s) => samples.push(*s),
            crate::store::Record::Events(e) => events.extend(e),
        }
    }
    let collapse = events.iter().rev().find_map(|e| match &e.kind {
        EventKind::Detector { to, reason, .. } if to == "collapsed" => {
            Some((e.ts_unix_ns, reason.clone()))
        }
        _ => None,
    });
    let (ts, trigger, reason) = match collapse {
        Some((t, r)) => (t, "detector", r),
        None => (
            now,
            "live",
            "analysis of the live store (no collapse recorded in the range)".to_string(),
        ),
    };
    let manifest = Manifest {
        format_version: BUNDLE_FORMAT_VERSION,
        host: host.to_string(),
        incident: crate::bundle::Incident {
            id: "live".into(),
            trigger: trigger.into(),
            reason,
            ts_unix_ns: ts,
            ts: crate::clock::format_rfc3339(ts),
            ..Default::default()
        },
        store_warnings: report.warnings.clone(),
        ..Default::default()
    };
    let mut notes: Vec<String> = report
        .warnings
        .iter()
        .take(5)
        .map(|w| format!("store: {w}"))
        .collect();
    notes.push("live store: no deep state and no packet capture (take a bundle with `hvflight trigger` for those)".into());
    Ok(View::new(
        manifest,
        format!("store:{}", store_dir.display()),
        samples,
        events,
        BTreeMap::new(),
        None,
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        assert!(entry_name_ok(b"history/records.jsonl").is_ok());
        assert!(entry_name_ok(b"./deep/x.txt").is_ok());
        assert!(entry_name_ok(b"/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        assert!(entry_name_ok(b"deep/../../x").unwrap_err().contains(".."));
        assert!(entry_name_ok(b"").is_err());
    }

    #[test]
    fn stride() {
        assert_eq!(thinning_stride(100, 7200), 1);
        assert_eq!(thinning_stride(14_400, 7200), 2);
        assert_eq!(thinning_stride(14_401, 7200), 3);
    }

    #[test]
    fn budget_stops_reading() {
        let mut b = Budget {
            inner: std::io::repeat(0),
            read: 0,
            limit: 1000,
        };
        let mut buf = vec![0u8; 300];
        let mut total = 0;
        let err = loop {
            match b.read(&mut buf) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(total, 1000);
        assert!(err.to_string().contains("max_total_bytes"));
    }
}
