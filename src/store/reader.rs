//! Reading the store: a time range, without locks, while a writer may be
//! appending. Damage is reported, never fatal: a torn tail ends a segment,
//! a corrupt record is skipped (warning with segment and byte offset) and
//! reading resynchronises on the next frame.

use std::path::{Path, PathBuf};

use super::format::{self, FRAME_HEADER_LEN};
use super::writer::{segments, start_ms};
use crate::sample::{Event, Sample};

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Sample(Box<Sample>),
    Events(Vec<Event>),
}

impl Record {
    pub fn ts_unix_ns(&self) -> i64 {
        match self {
            Record::Sample(s) => s.ts_unix_ns,
            Record::Events(e) => e.first().map(|e| e.ts_unix_ns).unwrap_or(0),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ReadReport {
    /// "segment: offset N: what" — damaged or undecodable records skipped.
    pub warnings: Vec<String>,
    /// Segments that end in an incomplete record (a crash, or the writer's current record).
    pub torn_tails: Vec<(PathBuf, u64)>,
    pub segments_read: usize,
    pub records_decoded: usize,
}

fn find_magic(b: &[u8], from: usize) -> Option<usize> {
    let m = format::FRAME_MAGIC.to_le_bytes();
    b.get(from..)?
        .windows(4)
        .position(|w| w == m)
        .map(|p| p + from)
}

/// Reads records with since_ns ≤ wall time ≤ until_ns, in file order.
pub fn read_range(dir: &Path, since_ns: i64, until_ns: i64) -> (Vec<Record>, ReadReport) {
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    let segs = segments(dir);
    for (i, seg) in segs.iter().enumerate() {
        // Skip files wholly outside the range. Wall time only rises inside
        // a segment (the writer rotates on a clock step), so a segment that
        // starts after `until` holds nothing in range, and one whose
        // successor starts before `since` (without a step between) neither.
        let start = start_ms(seg).unwrap_or(i64::MIN / 1_000_000) as i128 * 1_000_000;
        if start > until_ns as i128 + 1_000_000_000 {
            continue;
        }
        let next_start = segs
            .get(i + 1)
            .and_then(|n| start_ms(n))
            .map(|ms| ms as i128 * 1_000_000);
        if let Some(n) = next_start {
            if n >= start && n + 1_000_000_000 < since_ns as i128 {
                continue;
            }
        }
        read_segment(seg, since_ns, until_ns, &mut out, &mut report);
    }
    (out, report)
}

pub fn read_segment(
    path: &Path,
    since_ns: i64,
    until_ns: i64,
    out: &mut Vec<Record>,
    report: &mut ReadReport,
) {
    let name = path.display().to_string();
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            report.warnings.push(format!("{name}: cannot read: {e}"));
            return;
        }
    };
    let mut off = match format::decode_header(&b) {
        Ok((_, off)) => off,
        Err(e) if b.len() < 16 => {
            report.torn_tails.push((path.to_path_buf(), 0));
            let _ = e;
            return;
        }
        Err(e) => {
            report.warnings.push(format!("{name}: {e}"));
            return;
        }
    };
    report.segments_read += 1;
    let mut keyframe: Option<Vec<u8>> = None;
    let mut keyframe_broken = false;
    while off < b.len() {
        let Some(h) = format::decode_frame_header(&b[off..]) else {
            if b.len() - off < FRAME_HEADER_LEN && find_magic(&b, off + 1).is_none() {
                report.torn_tails.push((path.to_path_buf(), off as u64));
                return;
            }
            report.warnings.push(format!(
                "{name}: offset {off}: no record header; skipping to the next record"
            ));
            match find_magic(&b, off + 1) {
                Some(n) => {
                    off = n;
                    continue;
                }
                None => return,
            }
        };
        let end = off + FRAME_HEADER_LEN + h.len;
        if end > b.len() {
            // Either a torn tail or a corrupt length: look for a later frame.
            match find_magic(&b, off + 1) {
                Some(n) => {
                    report.warnings.push(format!(
                        "{name}: offset {off}: record length runs past the end; skipped"
                    ));
                    off = n;
                    continue;
                }
                None => {
                    report.torn_tails.push((path.to_path_buf(), off as u64));
                    return;
                }
            }
        }
        let frame = &b[off..end];
        if !format::frame_ok(frame, &h) {
            report.warnings.push(format!(
                "{name}: offset {off}: corrupt record (checksum mismatch); skipped"
            ));
            if h.kind == format::KIND_KEYFRAME {
                keyframe = None;
                keyframe_broken = true;
            }
            off = find_magic(&b, off + 1).unwrap_or(b.len());
            continue;
        }
        let payload = &frame[FRAME_HEADER_LEN..];
        let in_range = h.ts_unix_ns >= since_ns && h.ts_unix_ns <= until_ns;
        match h.kind {
            format::KIND_KEYFRAME => match format::decompress(payload, None) {
                Ok(json) => {
                    if in_range {
                        push_sample(&json, &name, off, out, report);
                    }
                    keyframe = Some(json);
                    keyframe_broken = false;
                }
                Err(e) => {
                    report.warnings.push(format!(
                        "{name}: offset {off}: keyframe does not decompress: {e}"
                    ));
                    keyframe = None;
                    keyframe_broken = true;
                }
            },
            format::KIND_SAMPLE if in_range => match &keyframe {
                Some(k) => match format::decompress(payload, Some(k)) {
                    Ok(json) => push_sample(&json, &name, off, out, report),
                    Err(e) => report.warnings.push(format!(
                        "{name}: offset {off}: sample does not decompress: {e}"
                    )),
                },
                None => report.warnings.push(format!(
                    "{name}: offset {off}: sample skipped: {}",
                    if keyframe_broken {
                        "its keyframe is damaged"
                    } else {
                        "no keyframe before it"
                    }
                )),
            },
            format::KIND_EVENTS if in_range => match format::decompress(payload, None)
                .map_err(|e| e.to_string())
                .and_then(|j| serde_json::from_slice::<Vec<Event>>(&j).map_err(|e| e.to_string()))
            {
                Ok(evs) => {
                    report.records_decoded += 1;
                    out.push(Record::Events(evs));
                }
                Err(e) => report
                    .warnings
                    .push(format!("{name}: offset {off}: events do not decode: {e}")),
            },
            format::KIND_SAMPLE | format::KIND_EVENTS => {}
            k => report.warnings.push(format!(
                "{name}: offset {off}: unknown record kind {k}; skipped"
            )),
        }
        off = end;
    }
}

fn push_sample(
    json: &[u8],
    name: &str,
    off: usize,
    out: &mut Vec<Record>,
    report: &mut ReadReport,
) {
    match serde_json::from_slice::<Sample>(json) {
        Ok(s) => {
            report.records_decoded += 1;
            out.push(Record::Sample(Box::new(s)));
        }
        Err(e) => report
            .warnings
            .push(format!("{name}: offset {off}: sample does not decode: {e}")),
    }
}
