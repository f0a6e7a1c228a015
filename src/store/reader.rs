//! Reading the store: a time range, without locks, while a writer may be
//! appending. Damage is reported, never fatal: a torn tail ends a segment,
//! a corrupt record is skipped (warning with segment and byte offset) and
//! reading resynchronises on the next frame.
//!
//! Reads both formats: 1 (JSON samples against a JSON keyframe) and 2
//! (table records, `table.rs`). A `Query` can project format-2 samples to
//! what it needs (sections, rows); format-1 samples come whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{self, FrameHeader, FRAME_HEADER_LEN};
use super::index;
use super::patch::Recent;
use super::rows::{decode_value, Projection};
use super::table;
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
    /// Bytes of segment files read.
    pub bytes_read: u64,
}

/// A range and what of each record to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub since_ns: i64,
    pub until_ns: i64,
    /// For format-2 samples: the sections and rows to materialize (the
    /// others take their defaults). A hint: format-1 samples come whole.
    pub projection: Projection,
    /// Decode event records.
    pub events: bool,
}

impl Query {
    pub fn range(since_ns: i64, until_ns: i64) -> Query {
        Query {
            since_ns,
            until_ns,
            projection: Projection::all(),
            events: true,
        }
    }
}

const SLACK_NS: i64 = 1_000_000_000;

fn find_magic(b: &[u8], from: usize) -> Option<usize> {
    let m = format::FRAME_MAGIC.to_le_bytes();
    b.get(from..)?
        .windows(4)
        .position(|w| w == m)
        .map(|p| p + from)
}

/// Reads records with since_ns ≤ wall time ≤ until_ns, in file order.
pub fn read_range(dir: &Path, since_ns: i64, until_ns: i64) -> (Vec<Record>, ReadReport) {
    read_query(dir, &Query::range(since_ns, until_ns))
}

/// Like `read_range`, with a projection.
pub fn read_query(dir: &Path, q: &Query) -> (Vec<Record>, ReadReport) {
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    scan(dir, q, &mut report, &mut |r| {
        out.push(r);
        true
    });
    (out, report)
}

/// A record lent to a `scan_ref` consumer.
#[derive(Debug)]
pub enum RecordRef<'a> {
    /// A sample, and the sample handed out before it in this scan (what
    /// rates are computed against).
    Sample {
        sample: &'a Sample,
        prev: Option<&'a Sample>,
    },
    Events(Vec<Event>),
}

/// What a segment walk hands on: an owned record, or the sample now in
/// `Recent` (and the one before it).
enum Item<'a> {
    Record(Record),
    Sample(&'a Sample, Option<&'a Sample>),
}

/// Streams the records of a query to `f` in file order (memory stays
/// bounded by one segment's range); `f` returns false to stop.
pub fn scan(dir: &Path, q: &Query, report: &mut ReadReport, f: &mut dyn FnMut(Record) -> bool) {
    scan_items(dir, q, report, None, &mut |it| match it {
        Item::Record(r) => f(r),
        Item::Sample(s, _) => f(Record::Sample(Box::new(s.clone()))),
    });
}

/// Like `scan`, lending each sample (with the one before it) instead of
/// handing it over: the reader keeps the last two and, when a record's
/// rows have the shapes of the one two back, writes its numbers into that
/// one in place (`patch.rs`) — the fastest way to read a window (what
/// `hvflight history` does). The samples are exactly `scan`'s.
pub fn scan_ref(
    dir: &Path,
    q: &Query,
    report: &mut ReadReport,
    f: &mut dyn FnMut(RecordRef<'_>) -> bool,
) {
    let mut recent = Recent::default();
    scan_ref_counting(dir, q, report, &mut recent, f);
}

/// `scan_ref` with its buffers: tests and the benchmark read how many
/// records took the fast path.
pub(crate) fn scan_ref_counting(
    dir: &Path,
    q: &Query,
    report: &mut ReadReport,
    recent: &mut Recent,
    f: &mut dyn FnMut(RecordRef<'_>) -> bool,
) {
    scan_items(dir, q, report, Some(recent), &mut |it| match it {
        Item::Record(Record::Events(e)) => f(RecordRef::Events(e)),
        Item::Record(Record::Sample(s)) => f(RecordRef::Sample {
            sample: &s,
            prev: None,
        }),
        Item::Sample(sample, prev) => f(RecordRef::Sample { sample, prev }),
    });
}

/// Samples read by patching the one before and by the generic path, in a
/// `scan_ref` of `q` (for tests and the benchmark).
pub fn scan_ref_stats(dir: &Path, q: &Query) -> (u64, u64) {
    let mut recent = Recent::default();
    let mut report = ReadReport::default();
    scan_ref_counting(dir, q, &mut report, &mut recent, &mut |_| true);
    (recent.patched, recent.generic)
}

fn scan_items(
    dir: &Path,
    q: &Query,
    report: &mut ReadReport,
    mut recent: Option<&mut Recent>,
    f: &mut dyn FnMut(Item<'_>) -> bool,
) {
    let segs = segments(dir);
    for (i, seg) in segs.iter().enumerate() {
        // Skip files wholly outside the range. Wall time only rises inside
        // a segment (the writer rotates on a clock step), so a segment that
        // starts after `until` holds nothing in range, and one whose
        // successor starts before `since` (without a step between) neither.
        let start = start_ms(seg).unwrap_or(i64::MIN / 1_000_000) as i128 * 1_000_000;
        if start > q.until_ns as i128 + SLACK_NS as i128 {
            // Only its late records can be in range: the kernel log read
            // when the agent started (after a reboot: the boot's lines,
            // older than the segment's first sample). The index lists them.
            let late_in_range = q.events
                && index::read(seg)
                    .iter()
                    .any(|e| e.kind == index::ENTRY_LATE && e.ts_unix_ns <= q.until_ns);
            if late_in_range && !scan_segment(seg, q, report, None, true, f) {
                return;
            }
            continue;
        }
        let next_start = segs
            .get(i + 1)
            .and_then(|n| start_ms(n))
            .map(|ms| ms as i128 * 1_000_000);
        if let Some(n) = next_start {
            if n >= start && n + (SLACK_NS as i128) < q.since_ns as i128 {
                continue;
            }
        }
        if !scan_segment(seg, q, report, recent.as_deref_mut(), false, f) {
            return;
        }
    }
}

/// Reads one segment's records in [since_ns, until_ns] into `out`.
pub fn read_segment(
    path: &Path,
    since_ns: i64,
    until_ns: i64,
    out: &mut Vec<Record>,
    report: &mut ReadReport,
) {
    let q = Query::range(since_ns, until_ns);
    scan_segment(path, &q, report, None, false, &mut |it| {
        out.push(match it {
            Item::Record(r) => r,
            Item::Sample(s, _) => Record::Sample(Box::new(s.clone())),
        });
        true
    });
}

/// The part of a segment a walk holds: the file from `base` to `hi`, read
/// a piece (`READ_PIECE`) at a time up to `end` (the next keyframe past
/// the query's range, or the end of the file). A bundle's window is 15
/// minutes of history, ~4 MiB at 500 vNICs, which a whole-range read held
/// on top of the decoded samples.
struct Window<'f> {
    file: &'f File,
    len: u64,
    b: Vec<u8>,
    base: u64,
    hi: u64,
    end: u64,
}

/// What a segment walk reads at a time.
const READ_PIECE: usize = 256 << 10;

impl<'f> Window<'f> {
    fn new(file: &'f File, len: u64, start: u64, end: u64) -> Window<'f> {
        Window {
            file,
            len,
            b: Vec::new(),
            base: start,
            hi: start,
            end,
        }
    }

    /// Appends at least `at_least` bytes (a piece, at most up to `end`).
    fn read(&mut self, at_least: usize) -> std::io::Result<()> {
        let to = self
            .hi
            .saturating_add(READ_PIECE.max(at_least) as u64)
            .min(self.end);
        let n = to.saturating_sub(self.hi) as usize;
        let at = self.b.len();
        self.b.resize(at + n, 0);
        if let Err(e) = self.file.read_exact_at(&mut self.b[at..], self.hi) {
            self.b.truncate(at);
            return Err(e);
        }
        self.hi = to;
        Ok(())
    }

    /// Drops what the walk has passed (`off` moves with it) and reads on;
    /// with `to_len`, past `end` to the end of the file (a record the index
    /// bound cut). False when there is nothing more to read.
    fn more(
        &mut self,
        off: &mut usize,
        at_least: usize,
        to_len: bool,
        report: &mut ReadReport,
    ) -> bool {
        if self.hi >= self.end {
            if !to_len || self.end >= self.len {
                return false;
            }
            self.end = self.len;
        }
        self.b.drain(..*off);
        self.base += *off as u64;
        *off = 0;
        let from = self.hi;
        let ok = self.read(at_least).is_ok();
        report.bytes_read += self.hi - from;
        ok
    }

    /// Everything up to `end`: the rare paths that search for the next
    /// frame after damage look at all of it, as a whole read did.
    fn read_all(&mut self, off: &mut usize, report: &mut ReadReport) {
        while self.more(off, usize::MAX, false, report) {}
    }
}

fn read_at(file: &File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; to.saturating_sub(from) as usize];
    file.read_exact_at(&mut b, from)?;
    Ok(b)
}

/// The decoding state of one segment walk.
struct Walk<'q, 'r> {
    name: String,
    q: &'q Query,
    /// Format 1: the last JSON keyframe.
    json_kf: Option<Vec<u8>>,
    /// Format 2: the last table keyframe's offset and payload, decoded on
    /// first use.
    table_kf: Option<(u64, Vec<u8>)>,
    table_kf_dec: Option<table::Decoded>,
    /// The keyframe before it (`scan_ref`): when the next one has the same
    /// shape dictionary it keeps its number, so samples stay patchable
    /// across keyframes.
    prev_kf_dec: Option<table::Decoded>,
    /// The last keyframe (either format) was damaged.
    kf_broken: bool,
    /// `scan_ref`: the samples lent out, and the number `recent` gave the
    /// decoded keyframe.
    recent: Option<&'r mut Recent>,
    kf_gen: u64,
}

/// A sample decoded: owned, or in `Recent`.
enum Got {
    Owned(Record),
    Recent,
}

impl Walk<'_, '_> {
    fn warn(&self, report: &mut ReadReport, off: u64, what: impl std::fmt::Display) {
        report
            .warnings
            .push(format!("{}: offset {off}: {what}", self.name));
    }

    fn no_keyframe(&self) -> &'static str {
        if self.kf_broken {
            "its keyframe is damaged"
        } else {
            "no keyframe before it"
        }
    }

    /// Handles one intact frame; false when the consumer wants no more.
    fn frame(
        &mut self,
        off: u64,
        h: &FrameHeader,
        payload: &[u8],
        report: &mut ReadReport,
        f: &mut dyn FnMut(Item<'_>) -> bool,
    ) -> bool {
        let in_range = h.ts_unix_ns >= self.q.since_ns && h.ts_unix_ns <= self.q.until_ns;
        if h.kind == format::KIND_TABLE_KEYFRAME {
            self.table_kf = Some((off, payload.to_vec()));
            if self.recent.is_some() {
                if let Some(d) = self.table_kf_dec.take() {
                    self.prev_kf_dec = Some(d);
                }
            }
            self.table_kf_dec = None;
            self.kf_broken = false;
            if !in_range {
                return true;
            }
            let got = self.table_sample(off, None, report);
            return self.hand(got, report, f);
        }
        if h.kind == format::KIND_TABLE_DELTA && in_range {
            let got = self.table_sample(off, Some(payload), report);
            return self.hand(got, report, f);
        }
        let rec = match h.kind {
            format::KIND_KEYFRAME => match format::decompress(payload, None) {
                Ok(json) => {
                    let r = in_range.then(|| json_sample(&json)).transpose();
                    // A JSON keyframe anchors format-1 deltas only.
                    self.json_kf = Some(json);
                    r.unwrap_or_else(|e| {
                        self.warn(report, off, format!("sample does not decode: {e}"));
                        None
                    })
                }
                Err(e) => {
                    self.warn(report, off, format!("keyframe does not decompress: {e}"));
                    self.json_kf = None;
                    None
                }
            },
            format::KIND_SAMPLE if in_range => match &self.json_kf {
                Some(k) => match format::decompress(payload, Some(k)) {
                    Ok(json) => json_sample(&json).map(Some).unwrap_or_else(|e| {
                        self.warn(report, off, format!("sample does not decode: {e}"));
                        None
                    }),
                    Err(e) => {
                        self.warn(report, off, format!("sample does not decompress: {e}"));
                        None
                    }
                },
                None => {
                    let why = self.no_keyframe();
                    self.warn(report, off, format!("sample skipped: {why}"));
                    None
                }
            },
            // A batch is filed under its first event's time; its later events
            // may fall in a range that starts after it: each event is judged
            // by its own time.
            format::KIND_EVENTS if h.ts_unix_ns <= self.q.until_ns && self.q.events => {
                match format::decompress(payload, None)
                    .map_err(|e| e.to_string())
                    .and_then(|j| {
                        serde_json::from_slice::<Vec<Event>>(&j).map_err(|e| e.to_string())
                    }) {
                    Ok(mut evs) => {
                        evs.retain(|e| {
                            e.ts_unix_ns >= self.q.since_ns && e.ts_unix_ns <= self.q.until_ns
                        });
                        (!evs.is_empty()).then_some(Record::Events(evs))
                    }
                    Err(e) => {
                        self.warn(report, off, format!("events do not decode: {e}"));
                        None
                    }
                }
            }
            format::KIND_SAMPLE | format::KIND_EVENTS | format::KIND_TABLE_DELTA => None,
            k => {
                self.warn(report, off, format!("unknown record kind {k}; skipped"));
                None
            }
        };
        self.hand(rec.map(Got::Owned), report, f)
    }

    /// Hands a decoded record on; false when the consumer wants no more.
    fn hand(
        &mut self,
        got: Option<Got>,
        report: &mut ReadReport,
        f: &mut dyn FnMut(Item<'_>) -> bool,
    ) -> bool {
        let Some(got) = got else { return true };
        report.records_decoded += 1;
        match (got, self.recent.as_deref_mut()) {
            (Got::Owned(Record::Sample(s)), Some(rc)) => rc.put(s),
            (Got::Owned(r), _) => return f(Item::Record(r)),
            (Got::Recent, _) => {}
        }
        match self.recent.as_deref().and_then(|rc| rc.pair()) {
            Some((s, prev)) => f(Item::Sample(s, prev)),
            None => true,
        }
    }

    /// A format-2 sample: the keyframe itself (`delta` None) or a delta.
    fn table_sample(
        &mut self,
        off: u64,
        delta: Option<&[u8]>,
        report: &mut ReadReport,
    ) -> Option<Got> {
        let Some((kf_off, kf_payload)) = &self.table_kf else {
            let why = self.no_keyframe();
            self.warn(report, off, format!("sample skipped: {why}"));
            return None;
        };
        let kf_off = *kf_off;
        if self.table_kf_dec.is_none() {
            match table::decode_keyframe(kf_payload) {
                Ok(d) => {
                    if let Some(rc) = self.recent.as_deref_mut() {
                        let same = self
                            .prev_kf_dec
                            .take()
                            .is_some_and(|p| self.kf_gen != 0 && p.same_dictionary(&d));
                        if !same {
                            self.kf_gen = rc.keyframe_gen();
                        }
                    }
                    self.table_kf_dec = Some(d);
                }
                Err(e) => {
                    self.warn(report, kf_off, format!("keyframe does not decode: {e}"));
                    self.table_kf = None;
                    self.kf_broken = true;
                    if delta.is_some() {
                        self.warn(report, off, "sample skipped: its keyframe is damaged");
                    }
                    return None;
                }
            }
        }
        let kf = self.table_kf_dec.as_ref().expect("decoded");
        let decoded;
        let (view, rec) = match delta {
            None => (table::view(None, kf), kf),
            Some(p) => match table::decode_delta(kf, kf_off, p) {
                Ok(d) => {
                    decoded = d;
                    (table::view(Some(kf), &decoded), &decoded)
                }
                Err(e) => {
                    self.warn(report, off, format!("sample does not decode: {e}"));
                    return None;
                }
            },
        };
        let res = match self.recent.as_deref_mut() {
            Some(rc) => rc
                .table(self.kf_gen, rec, delta.is_some(), &view, &self.q.projection)
                .map(|()| Got::Recent),
            None => decode_value::<Sample>(&view, &self.q.projection)
                .map(|s| Got::Owned(Record::Sample(Box::new(s)))),
        };
        match res {
            Ok(g) => Some(g),
            Err(e) => {
                self.warn(report, off, format!("sample does not decode: {e}"));
                None
            }
        }
    }
}

fn json_sample(json: &[u8]) -> Result<Record, serde_json::Error> {
    serde_json::from_slice::<Sample>(json).map(|s| Record::Sample(Box::new(s)))
}

/// Reads one segment for a query (with `late_only`, only the records its
/// index lists as late); false when the consumer wants no more.
fn scan_segment(
    path: &Path,
    q: &Query,
    report: &mut ReadReport,
    recent: Option<&mut Recent>,
    late_only: bool,
    f: &mut dyn FnMut(Item<'_>) -> bool,
) -> bool {
    let name = path.display().to_string();
    let opened = File::open(path).and_then(|file| file.metadata().map(|m| (file, m.len())));
    let (file, len) = match opened {
        Ok(x) => x,
        Err(e) => {
            report.warnings.push(format!("{name}: cannot read: {e}"));
            return true;
        }
    };
    // The header: magic, version, length, JSON.
    let head = match read_at(&file, 0, len.min(16)) {
        Ok(b) => b,
        Err(e) => {
            report.warnings.push(format!("{name}: cannot read: {e}"));
            return true;
        }
    };
    if head.len() < 16 {
        report.torn_tails.push((path.to_path_buf(), 0));
        return true;
    }
    let hlen = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as u64;
    let header = read_at(&file, 0, len.min(16 + hlen)).unwrap_or_default();
    let hdr_end = match format::decode_header(&header) {
        Ok((_, off)) => off as u64,
        Err(e) => {
            report.warnings.push(format!("{name}: {e}"));
            return true;
        }
    };
    report.segments_read += 1;

    // Where to start and stop, from the keyframe index when it has one.
    let entries = index::read(path);
    let keyframes: Vec<&index::Entry> = entries
        .iter()
        .filter(|e| e.kind == index::ENTRY_KEYFRAME && e.offset >= hdr_end && e.offset < len)
        .collect();
    let since = q.since_ns.saturating_sub(SLACK_NS);
    let until = q.until_ns.saturating_add(SLACK_NS);
    let mut start = hdr_end;
    let mut start_ts = None;
    if let Some(e) = keyframes.iter().rev().find(|e| e.ts_unix_ns <= since) {
        start = e.offset;
        start_ts = Some(e.ts_unix_ns);
    }
    let mut end = keyframes
        .iter()
        .find(|e| e.ts_unix_ns > until && e.offset > start)
        .map_or(len, |e| e.offset);
    if late_only {
        (start, start_ts, end) = (hdr_end, None, hdr_end);
    }
    // The range is read a piece at a time (`Window`), not whole.
    // The first frame whole (the index check below reads it).
    let first = read_at(&file, start, (start + FRAME_HEADER_LEN as u64).min(end))
        .ok()
        .and_then(|hb| format::decode_frame_header(&hb))
        .map_or(0, |h| FRAME_HEADER_LEN + h.len);
    let mut win = Window::new(&file, len, start, end);
    if let Err(e) = win.read(first) {
        report.warnings.push(format!("{name}: cannot read: {e}"));
        return true;
    }
    // Trust the index only where the frame it names is what it says.
    if let Some(ts) = start_ts {
        let b = &win.b;
        let ok = format::decode_frame_header(b).is_some_and(|h| {
            FRAME_HEADER_LEN + h.len <= b.len()
                && h.ts_unix_ns == ts
                && h.kind == format::KIND_TABLE_KEYFRAME
                && format::frame_ok(&b[..FRAME_HEADER_LEN + h.len], &h)
        });
        if !ok {
            (start, end) = (hdr_end, len);
            win = Window::new(&file, len, start, end);
            let _ = win.read(0);
        }
    }
    report.bytes_read += win.hi - start;

    let mut w = Walk {
        name: name.clone(),
        q,
        json_kf: None,
        table_kf: None,
        table_kf_dec: None,
        prev_kf_dec: None,
        kf_broken: false,
        recent,
        kf_gen: 0,
    };
    // Records written out of time order, outside the part we walk.
    let late: Vec<&index::Entry> = entries
        .iter()
        .filter(|e| {
            e.kind == index::ENTRY_LATE
                && (e.offset < start || e.offset >= end)
                && e.offset < len
                // Filed under its first event's time: its later events may
                // be in range (each is kept by its own time, in `frame`).
                && e.ts_unix_ns <= q.until_ns
        })
        .collect();
    for e in late.iter().filter(|e| e.offset < start) {
        if !late_record(&file, len, e.offset, &mut w, report, f) {
            return false;
        }
    }

    let mut off = 0usize;
    loop {
        if off >= win.b.len() && !win.more(&mut off, 0, false, report) {
            break;
        }
        let abs = win.base + off as u64;
        let Some(h) = format::decode_frame_header(&win.b[off..]) else {
            if win.b.len() - off < FRAME_HEADER_LEN
                && win.more(&mut off, FRAME_HEADER_LEN, false, report)
            {
                continue;
            }
            win.read_all(&mut off, report);
            if win.b.len() - off < FRAME_HEADER_LEN && find_magic(&win.b, off + 1).is_none() {
                if win.more(&mut off, usize::MAX, true, report) {
                    win.read_all(&mut off, report);
                    continue;
                }
                report.torn_tails.push((path.to_path_buf(), abs));
                return true;
            }
            w.warn(report, abs, "no record header; skipping to the next record");
            match find_magic(&win.b, off + 1) {
                Some(n) => {
                    off = n;
                    continue;
                }
                None => return true,
            }
        };
        let need = FRAME_HEADER_LEN + h.len;
        if off + need > win.b.len() {
            // The rest of the record: in the next piece, or past the
            // index's bound (it cut a record: read on to the end).
            if win.more(&mut off, need, true, report) {
                continue;
            }
            // Either a torn tail or a corrupt length: look for a later frame.
            match find_magic(&win.b, off + 1) {
                Some(n) => {
                    w.warn(report, abs, "record length runs past the end; skipped");
                    off = n;
                    continue;
                }
                None => {
                    report.torn_tails.push((path.to_path_buf(), abs));
                    return true;
                }
            }
        }
        let fend = off + need;
        let frame = &win.b[off..fend];
        if !format::frame_ok(frame, &h) {
            w.warn(report, abs, "corrupt record (checksum mismatch); skipped");
            if h.kind == format::KIND_KEYFRAME || h.kind == format::KIND_TABLE_KEYFRAME {
                w.json_kf = None;
                w.table_kf = None;
                w.table_kf_dec = None;
                w.kf_broken = true;
            }
            win.read_all(&mut off, report);
            off = find_magic(&win.b, off + 1).unwrap_or(win.b.len());
            continue;
        }
        if !w.frame(abs, &h, &frame[FRAME_HEADER_LEN..], report, f) {
            return false;
        }
        off = fend;
    }
    let end = win.end;
    for e in late.iter().filter(|e| e.offset >= end) {
        if !late_record(&file, len, e.offset, &mut w, report, f) {
            return false;
        }
    }
    true
}

/// One record the index lists as late, read on its own.
fn late_record(
    file: &File,
    len: u64,
    off: u64,
    w: &mut Walk,
    report: &mut ReadReport,
    f: &mut dyn FnMut(Item<'_>) -> bool,
) -> bool {
    let Ok(hb) = read_at(file, off, (off + FRAME_HEADER_LEN as u64).min(len)) else {
        return true;
    };
    let Some(h) = format::decode_frame_header(&hb) else {
        return true;
    };
    if h.kind != format::KIND_EVENTS || off + (FRAME_HEADER_LEN + h.len) as u64 > len {
        return true;
    }
    let Ok(frame) = read_at(file, off, off + (FRAME_HEADER_LEN + h.len) as u64) else {
        return true;
    };
    if !format::frame_ok(&frame, &h) {
        return true;
    }
    report.bytes_read += frame.len() as u64;
    w.frame(off, &h, &frame[FRAME_HEADER_LEN..], report, f)
}
