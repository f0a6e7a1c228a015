//! Store format 2's sample records: a sample split into rows (`rows/`),
//! shapes dictionary-coded per keyframe, numbers as zig-zag varint deltas
//! against the same row of the keyframe, laid out column by column, the
//! whole body one zstd frame. Byte layout in docs/store-format.md.
//!
//! Deltas go against the keyframe, not the previous record, so every record
//! decodes from its keyframe alone: a damaged record costs only itself, and
//! a range read decodes the keyframe before it and then only the records in
//! the range.

use std::sync::Arc;

use integer_encoding::VarInt;
use rustc_hash::FxHashMap;

use super::rows::{
    self, get_varint, get_zigzag, put_varint, put_zigzag, RowBuf, RowsView, ShapeInfo, Splitter,
};

/// Extra shapes (rows not in the keyframe's dictionary) beyond which a
/// sample is written as a keyframe instead: churn re-bases early rather
/// than repeating the new shapes in every record until the next keyframe.
fn too_many_extra(rows: usize, extra: usize) -> bool {
    extra > 8 + rows / 8
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot split the sample into rows: {0}")]
    Split(#[from] rows::ser::SplitError),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    #[error("{0}")]
    Bad(String),
}

fn bad<T>(what: impl Into<String>) -> Result<T, TableError> {
    Err(TableError::Bad(what.into()))
}

/// The writer's view of the current keyframe.
#[derive(Debug, Default)]
pub struct Keyframe {
    offset: u64,
    /// Each shape once, shared by the list and the dictionary: at 500 vNICs
    /// the shapes are ~1 MiB, and two copies of them were the largest
    /// block of the writer's memory.
    shapes: Vec<Arc<[u8]>>,
    /// Fx hashing: the keys are our own shapes (no untrusted input, so no
    /// need for SipHash's flooding resistance), up to ~0.5 KB each.
    dict: FxHashMap<Arc<[u8]>, u32>,
    ids: Vec<u32>,
    num_off: Vec<u32>,
    nums: Vec<u64>,
    first_occ: Vec<u32>,
    next_occ: Vec<u32>,
}

/// One encoded sample record.
#[derive(Debug)]
pub struct Encoded {
    pub keyframe: bool,
    pub payload: Vec<u8>,
    new_kf: Option<Box<Keyframe>>,
}

#[derive(Default)]
pub struct TableEncoder {
    split: Splitter,
    kf: Option<Box<Keyframe>>,
    level: i32,
    body: Vec<u8>,
    ids: Vec<u32>,
    refs: Vec<u32>,
    occ: Vec<u32>,
    counts: Vec<u32>,
}

const NONE: u32 = u32::MAX;

fn occurrences(ids: &[u32], n_shapes: usize) -> (Vec<u32>, Vec<u32>) {
    let mut first = vec![NONE; n_shapes];
    let mut last = vec![NONE; n_shapes];
    let mut next = vec![NONE; ids.len()];
    for (r, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if first[id] == NONE {
            first[id] = r as u32;
        } else {
            next[last[id] as usize] = r as u32;
        }
        last[id] = r as u32;
    }
    (first, next)
}

impl TableEncoder {
    pub fn new(level: i32) -> TableEncoder {
        TableEncoder {
            level,
            ..Default::default()
        }
    }

    /// Forgets the keyframe (a new segment starts with one).
    pub fn reset(&mut self) {
        self.kf = None;
    }

    pub fn has_keyframe(&self) -> bool {
        self.kf.is_some()
    }

    /// The record was written at `offset` of the segment: a keyframe becomes
    /// the reference of the records after it.
    pub fn commit(&mut self, enc: Encoded, offset: u64) {
        if let Some(mut k) = enc.new_kf {
            k.offset = offset;
            self.kf = Some(k);
        }
    }

    /// Encodes a sample; a keyframe when asked, when there is none, or when
    /// the sample's shapes moved too far from the keyframe's.
    pub fn encode<T: serde::Serialize>(
        &mut self,
        value: &T,
        keyframe: bool,
    ) -> Result<Encoded, TableError> {
        let rows = self.split.split(value)?;
        // Shape ids: the keyframe's row at the same place first (the common
        // case: nothing changed), then its dictionary, then new shapes.
        let mut extra: FxHashMap<&[u8], u32> = FxHashMap::default();
        let mut extra_list: Vec<&[u8]> = Vec::new();
        self.ids.clear();
        let mut as_keyframe = keyframe || self.kf.is_none();
        if !as_keyframe {
            let kf = self.kf.as_deref().expect("keyframe");
            let base = kf.shapes.len() as u32;
            // Rows since the keyframe moved by `shift` places (an FDB entry
            // or a link came or went before them): the guess for row i is
            // the keyframe's row i + shift, so one insertion costs one
            // dictionary lookup, not one for every row after it.
            let mut shift: isize = 0;
            for (i, r) in rows.iter().enumerate() {
                let guess = usize::try_from(i as isize + shift)
                    .ok()
                    .and_then(|at| kf.ids.get(at))
                    .copied();
                let id = match guess {
                    Some(g) if *kf.shapes[g as usize] == *r.shape => g,
                    _ => match kf.dict.get(r.shape.as_slice()) {
                        Some(&id) => {
                            shift = kf.first_occ[id as usize] as isize - i as isize;
                            id
                        }
                        None => *extra.entry(r.shape.as_slice()).or_insert_with(|| {
                            extra_list.push(r.shape.as_slice());
                            base + extra_list.len() as u32 - 1
                        }),
                    },
                };
                self.ids.push(id);
            }
            if too_many_extra(rows.len(), extra_list.len()) {
                as_keyframe = true;
            }
        }
        let mut new_kf = None;
        self.body.clear();
        if as_keyframe {
            // The old keyframe is not needed to encode a keyframe: freed
            // first, the two are never in memory together. Should this
            // record not be written, the next sample finds no keyframe and
            // is written as one.
            self.kf = None;
            let mut k = Keyframe::default();
            self.ids.clear();
            for r in rows {
                let id = match k.dict.get(r.shape.as_slice()) {
                    Some(&id) => id,
                    None => {
                        let id = k.shapes.len() as u32;
                        let shape: Arc<[u8]> = Arc::from(r.shape.as_slice());
                        k.shapes.push(Arc::clone(&shape));
                        k.dict.insert(shape, id);
                        id
                    }
                };
                self.ids.push(id);
            }
            put_varint(&mut self.body, 0);
            put_varint(&mut self.body, k.shapes.len() as u64);
            for s in &k.shapes {
                put_varint(&mut self.body, s.len() as u64);
                self.body.extend_from_slice(s);
            }
            put_ids(&mut self.body, &self.ids);
            self.refs.clear();
            self.refs.resize(rows.len(), NONE);
            self.counts.clear();
            self.counts.extend(rows.iter().map(|r| r.nums.len() as u32));
            put_row_numbers(&mut self.body, rows, &self.counts, &self.refs, None);
            k.ids = self.ids.clone();
            k.num_off = Vec::with_capacity(rows.len() + 1);
            k.num_off.push(0);
            for r in rows {
                k.nums.extend_from_slice(&r.nums);
                k.num_off.push(k.nums.len() as u32);
            }
            let (first, next) = occurrences(&k.ids, k.shapes.len());
            k.first_occ = first;
            k.next_occ = next;
            new_kf = Some(Box::new(k));
        } else {
            let kf = self.kf.as_deref().expect("keyframe");
            put_varint(&mut self.body, kf.offset);
            put_varint(&mut self.body, extra_list.len() as u64);
            for s in &extra_list {
                put_varint(&mut self.body, s.len() as u64);
                self.body.extend_from_slice(s);
            }
            put_ids(&mut self.body, &self.ids);
            // Reference row: the k-th row of the same shape in the keyframe.
            self.occ.clear();
            self.occ.resize(kf.shapes.len(), NONE);
            self.refs.clear();
            for &id in &self.ids {
                let id = id as usize;
                let r = if id < kf.shapes.len() {
                    let r = if self.occ[id] == NONE {
                        kf.first_occ[id]
                    } else {
                        kf.next_occ[self.occ[id] as usize]
                    };
                    if r != NONE {
                        self.occ[id] = r;
                    }
                    r
                } else {
                    NONE
                };
                self.refs.push(r);
            }
            self.counts.clear();
            self.counts.extend(rows.iter().map(|r| r.nums.len() as u32));
            put_row_numbers(&mut self.body, rows, &self.counts, &self.refs, Some(kf));
        }
        // The thread's one compression context (shared with the events batches).
        let payload = crate::store::format::compress(&self.body, None, self.level)
            .map_err(TableError::Zstd)?;
        if as_keyframe {
            // A keyframe's body holds every shape (~1 MiB at 500 vNICs), a
            // delta's a few percent of that: do not keep the keyframe's
            // capacity for the records in between.
            self.body = Vec::new();
        }
        Ok(Encoded {
            keyframe: as_keyframe,
            payload,
            new_kf,
        })
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[u32]) {
    put_varint(out, ids.len() as u64);
    let mut prev: i64 = -1;
    for &id in ids {
        put_zigzag(out, id as i64 - prev - 1);
        prev = id as i64;
    }
}

fn put_row_numbers(
    out: &mut Vec<u8>,
    rows: &[RowBuf],
    counts: &[u32],
    refs: &[u32],
    kf: Option<&Keyframe>,
) {
    let mut a = 0;
    while a < rows.len() {
        let n = counts[a];
        let mut b = a + 1;
        while b < rows.len() && counts[b] == n {
            b += 1;
        }
        for j in 0..n as usize {
            for r in a..b {
                let v = rows[r].nums[j];
                let base = match (refs[r], kf) {
                    (NONE, _) | (_, None) => 0,
                    (kr, Some(k)) => k.nums[k.num_off[kr as usize] as usize + j],
                };
                put_zigzag(out, v.wrapping_sub(base) as i64);
            }
        }
        a = b;
    }
}

/// zstd with one context per thread (creating one costs as much as
/// decompressing a delta record).
fn decompress(data: &[u8]) -> Result<Vec<u8>, TableError> {
    use std::cell::RefCell;
    use zstd::zstd_safe::DCtx;
    thread_local! {
        static DCTX: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
    }
    let e = |c| TableError::Zstd(std::io::Error::other(zstd::zstd_safe::get_error_name(c)));
    let size = match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n <= 256 << 20 => n as usize,
        _ => return bad("zstd frame without a sane content size"),
    };
    let mut out = Vec::with_capacity(size);
    DCTX.with(|d| d.borrow_mut().decompress(&mut out, data).map_err(e))?;
    Ok(out)
}

/// A decoded sample record (or keyframe): its rows with absolute numbers.
#[derive(Debug, Default)]
pub struct Decoded {
    body: Vec<u8>,
    /// This record's own shapes (a keyframe's dictionary, a delta's extras): byte ranges in `body`.
    shapes: Vec<(u32, u32)>,
    infos: Vec<ShapeInfo>,
    ids: Vec<u32>,
    num_off: Vec<u32>,
    nums: Vec<u64>,
    subtree_end: Vec<u32>,
    /// For a delta: the offset of its keyframe.
    pub keyframe_offset: Option<u64>,
    first_occ: Vec<u32>,
    next_occ: Vec<u32>,
}

impl Decoded {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// Whether two keyframes have the same shape dictionary (then their
    /// shape ids mean the same shapes).
    pub fn same_dictionary(&self, other: &Decoded) -> bool {
        self.shapes.len() == other.shapes.len()
            && self
                .shapes
                .iter()
                .zip(&other.shapes)
                .all(|(&(s, l), &(t, m))| {
                    self.body[s as usize..(s + l) as usize]
                        == other.body[t as usize..(t + m) as usize]
                })
    }

    /// Each row's shape id.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// This record's own shapes (a delta's extras), length-prefixed, appended to `out`.
    pub fn own_shapes_into(&self, out: &mut Vec<u8>) {
        for &(s, l) in &self.shapes {
            put_varint(out, l as u64);
            out.extend_from_slice(&self.body[s as usize..(s + l) as usize]);
        }
    }

    /// Whether `own_shapes_into` would give exactly `b`.
    pub fn own_shapes_eq(&self, b: &[u8]) -> bool {
        let mut pos = 0;
        for &(s, l) in &self.shapes {
            let own = &self.body[s as usize..(s + l) as usize];
            if get_varint(b, &mut pos) != Some(l as u64)
                || b.get(pos..pos + l as usize) != Some(own)
            {
                return false;
            }
            pos += l as usize;
        }
        pos == b.len()
    }
}

/// Decodes a keyframe payload.
pub fn decode_keyframe(payload: &[u8]) -> Result<Decoded, TableError> {
    let mut d = decode_body(payload, None)?;
    let (first, next) = occurrences(&d.ids, d.shapes.len());
    d.first_occ = first;
    d.next_occ = next;
    Ok(d)
}

/// Decodes a delta payload against its keyframe (at `kf_offset` in the segment).
pub fn decode_delta(kf: &Decoded, kf_offset: u64, payload: &[u8]) -> Result<Decoded, TableError> {
    decode_body(payload, Some((kf, kf_offset)))
}

/// The keyframe offset a delta payload refers to (decompresses it).
fn decode_body(payload: &[u8], kf: Option<(&Decoded, u64)>) -> Result<Decoded, TableError> {
    let body = decompress(payload)?;
    let mut d = Decoded {
        body,
        ..Default::default()
    };
    let b = &d.body;
    let mut pos = 0;
    let v = |what: &str, pos: &mut usize| {
        get_varint(b, pos).ok_or_else(|| TableError::Bad(format!("truncated body ({what})")))
    };
    let kf_off = v("keyframe offset", &mut pos)?;
    match kf {
        Some((_, want)) if kf_off != want => {
            return bad(format!(
                "refers to a keyframe at offset {kf_off}, not the one at {want}"
            ));
        }
        Some(_) => d.keyframe_offset = Some(kf_off),
        None if kf_off != 0 => return bad("keyframe with a keyframe reference"),
        None => {}
    }
    let n_shapes = v("shape count", &mut pos)? as usize;
    if n_shapes > b.len() {
        return bad("shape count larger than the record");
    }
    for _ in 0..n_shapes {
        let len = v("shape length", &mut pos)? as usize;
        let s = b
            .get(pos..pos.saturating_add(len))
            .ok_or_else(|| TableError::Bad("shape runs past the record".into()))?;
        let info = rows::shape_info(s)
            .map_err(|e| TableError::Bad(format!("shape {}: {e}", d.shapes.len())))?;
        d.shapes.push((pos as u32, len as u32));
        d.infos.push(info);
        pos += len;
    }
    let n_rows = v("row count", &mut pos)? as usize;
    if n_rows == 0 || n_rows > b.len() {
        return bad("row count out of range");
    }
    let base = kf.map_or(0, |(k, _)| k.shapes.len());
    let total_shapes = base + d.shapes.len();
    let mut prev: i64 = -1;
    d.ids.reserve(n_rows);
    for _ in 0..n_rows {
        let (delta, n) = i64::decode_var(&b[pos..])
            .ok_or_else(|| TableError::Bad("truncated body (row ids)".into()))?;
        pos += n;
        let id = prev + 1 + delta;
        if id < 0 || id as usize >= total_shapes {
            return bad(format!("row refers to shape {id} of {total_shapes}"));
        }
        d.ids.push(id as u32);
        prev = id;
    }
    let info = |id: u32| -> &ShapeInfo {
        let id = id as usize;
        match kf {
            Some((k, _)) if id < base => &k.infos[id],
            _ => &d.infos[id - base],
        }
    };
    // Numbers: offsets, references, then the runs column by column.
    d.num_off.reserve(n_rows + 1);
    d.num_off.push(0);
    let mut total = 0u64;
    for &id in &d.ids {
        total += info(id).nums as u64;
        if total > u32::MAX as u64 {
            return bad("too many numbers");
        }
        d.num_off.push(total as u32);
    }
    if total > (b.len() - pos) as u64 {
        return bad("more numbers than bytes left");
    }
    let mut refs = vec![NONE; n_rows];
    if let Some((k, _)) = kf {
        let mut occ = vec![NONE; k.shapes.len()];
        for (r, &id) in d.ids.iter().enumerate() {
            let id = id as usize;
            if id < base {
                let kr = if occ[id] == NONE {
                    k.first_occ[id]
                } else {
                    k.next_occ[occ[id] as usize]
                };
                if kr != NONE {
                    occ[id] = kr;
                    refs[r] = k.num_off[kr as usize];
                }
            }
        }
    }
    let mut nums = vec![0u64; total as usize];
    let knums: &[u64] = kf.map_or(&[], |(k, _)| &k.nums);
    let mut a = 0;
    while a < n_rows {
        let n = d.num_off[a + 1] - d.num_off[a];
        let mut b2 = a + 1;
        while b2 < n_rows && d.num_off[b2 + 1] - d.num_off[b2] == n {
            b2 += 1;
        }
        let (offs, run_refs) = (&d.num_off[a..b2], &refs[a..b2]);
        for j in 0..n {
            for (&o, &rf) in offs.iter().zip(run_refs) {
                let delta = get_zigzag(b, &mut pos)
                    .ok_or_else(|| TableError::Bad("truncated body (numbers)".into()))?;
                let base = if rf == NONE {
                    0
                } else {
                    knums[(rf + j) as usize]
                };
                nums[(o + j) as usize] = base.wrapping_add(delta as u64);
            }
        }
        a = b2;
    }
    if pos != b.len() {
        return bad(format!("{} bytes after the numbers", b.len() - pos));
    }
    // The tree: each row's subtree end, from its shape's child rows.
    let mut end = vec![0u32; n_rows];
    let mut stack: Vec<(usize, u64)> = Vec::new();
    for r in 0..n_rows {
        match stack.last_mut() {
            Some(top) if top.1 > 0 => top.1 -= 1,
            Some(_) => return bad(format!("row {r} is nobody's child")),
            None if r > 0 => return bad(format!("row {r} is after the root's rows")),
            None => {}
        }
        let inf = info(d.ids[r]);
        let mut children = inf.fixed_children as u64;
        for &c in &inf.rows_counts {
            children = children.saturating_add(nums[(d.num_off[r] + c) as usize]);
        }
        stack.push((r, children));
        while let Some(&(t, 0)) = stack.last() {
            end[t] = r as u32 + 1;
            stack.pop();
        }
    }
    if !stack.is_empty() {
        return bad("rows end before the shapes say");
    }
    d.nums = nums;
    d.subtree_end = end;
    Ok(d)
}

/// The rows of `rec` (decoded against `kf` when it is a delta), to join.
pub fn view<'a>(kf: Option<&'a Decoded>, rec: &'a Decoded) -> RowsView<'a> {
    let base = match (kf, rec.keyframe_offset) {
        (Some(k), Some(_)) => k.shapes.len(),
        _ => 0,
    };
    let shape = |id: u32| -> &'a [u8] {
        let id = id as usize;
        let (src, (s, l)) = if id < base {
            (kf.expect("keyframe"), kf.expect("keyframe").shapes[id])
        } else {
            (rec, rec.shapes[id - base])
        };
        &src.body[s as usize..(s + l) as usize]
    };
    RowsView {
        shapes: rec.ids.iter().map(|&id| shape(id)).collect(),
        nums: &rec.nums,
        num_off: &rec.num_off,
        subtree_end: &rec.subtree_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Link, LinkStats, Sample};
    use crate::store::rows::{decode_value, Projection};

    fn sample(seq: u64, names: &[&str]) -> Sample {
        Sample {
            version: 1,
            seq,
            ts_unix_ns: 1_795_000_000_000_000_000 + seq as i64 * 1_000_000_000,
            mono_ns: seq * 1_000_000_000,
            host: "n1".into(),
            links: Some(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| Link {
                        ifindex: i as u32 + 1,
                        name: n.to_string(),
                        operstate: "up".into(),
                        stats: LinkStats {
                            rx_packets: seq * (i as u64 + 1) * 1000,
                            tx_bytes: seq * 7_000_000 + i as u64,
                            ..Default::default()
                        },
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn decode(kf: &Decoded, kf_off: u64, e: &Encoded) -> Sample {
        if e.keyframe {
            let d = decode_keyframe(&e.payload).unwrap();
            decode_value(&view(None, &d), &Projection::all()).unwrap()
        } else {
            let d = decode_delta(kf, kf_off, &e.payload).unwrap();
            decode_value(&view(Some(kf), &d), &Projection::all()).unwrap()
        }
    }

    #[test]
    fn keyframe_and_deltas_round_trip_through_churn() {
        let mut enc = TableEncoder::new(3);
        let names = ["br0", "tap0", "tap1", "tap2"];
        let s0 = sample(1, &names);
        let e0 = enc.encode(&s0, false).unwrap();
        assert!(e0.keyframe, "the first record is a keyframe");
        let kf = decode_keyframe(&e0.payload).unwrap();
        let back: Sample = decode_value(&view(None, &kf), &Projection::all()).unwrap();
        assert_eq!(back, s0);
        enc.commit(e0, 1000);
        // Counters move, an interface goes, one comes, one changes state.
        let mut sizes = Vec::new();
        for seq in 2..20 {
            let mut s = sample(seq, &names);
            if seq > 10 {
                let l = s.links.as_mut().unwrap();
                l.remove(2);
                l.push(Link {
                    name: "tap9".into(),
                    ifindex: 99,
                    ..Default::default()
                });
                l[0].operstate = "down".into();
            }
            let e = enc.encode(&s, false).unwrap();
            assert!(!e.keyframe, "seq {seq}");
            sizes.push(e.payload.len());
            assert_eq!(decode(&kf, 1000, &e), s, "seq {seq}");
            enc.commit(e, 0);
        }
        // A delta names its keyframe: decoding against another one fails.
        let e = enc.encode(&sample(30, &names), false).unwrap();
        let err = decode_delta(&kf, 999, &e.payload).unwrap_err();
        assert!(err.to_string().contains("offset 1000"), "{err}");
        // Far-off shapes make a keyframe by themselves.
        let other: Vec<String> = (0..40).map(|i| format!("vnet{i}")).collect();
        let refs: Vec<&str> = other.iter().map(|s| s.as_str()).collect();
        assert!(enc.encode(&sample(31, &refs), false).unwrap().keyframe);
    }

    #[test]
    fn sections_the_store_does_not_know_are_carried_and_delta_coded() {
        // What another module adds to Sample later (with #[serde(default)]):
        // no store change, its counters are rows like the links'.
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
        struct DropReason {
            iface: String,
            reason: String,
            count: u64,
        }
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
        struct Newer {
            #[serde(flatten)]
            base: Sample,
            #[serde(default)]
            drop_reasons: Option<Vec<DropReason>>,
        }
        let newer = |seq: u64| Newer {
            base: sample(seq, &["br0", "tap0"]),
            drop_reasons: Some(
                (0..300)
                    .map(|i| DropReason {
                        iface: format!("tap{i}"),
                        reason: "NETFILTER_DROP".into(),
                        count: seq * i,
                    })
                    .collect(),
            ),
        };
        let mut enc = TableEncoder::new(3);
        let e0 = enc.encode(&newer(1), false).unwrap();
        let kf = decode_keyframe(&e0.payload).unwrap();
        let kf_len = e0.payload.len();
        enc.commit(e0, 64);
        let n2 = newer(2);
        let e = enc.encode(&n2, false).unwrap();
        assert!(
            e.payload.len() * 3 < kf_len,
            "{} vs {kf_len}",
            e.payload.len()
        );
        let d = decode_delta(&kf, 64, &e.payload).unwrap();
        let back: Newer = decode_value(&view(Some(&kf), &d), &Projection::all()).unwrap();
        assert_eq!(back, n2);
        // Today's reader reads the same record, ignoring what it does not know.
        let s: Sample = decode_value(&view(Some(&kf), &d), &Projection::all()).unwrap();
        assert_eq!(s, n2.base);
    }

    #[test]
    fn zigzag_varints_read_as_the_crate_reads_them() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            1 << 20,
            i64::MAX,
            i64::MIN,
            -12345678,
        ] {
            let mut b = Vec::new();
            put_zigzag(&mut b, v);
            let mut pos = 0;
            assert_eq!(get_zigzag(&b, &mut pos), Some(v));
            assert_eq!(i64::decode_var(&b), Some((v, pos)));
        }
        for bad in [&[][..], &[0x80][..], &[0xff; 11][..]] {
            assert_eq!(get_zigzag(bad, &mut 0), i64::decode_var(bad).map(|x| x.0));
        }
    }

    #[test]
    fn duplicate_rows_match_in_order() {
        let mut enc = TableEncoder::new(3);
        let names = ["x", "x", "x"];
        let e0 = enc.encode(&sample(1, &names), true).unwrap();
        let kf = decode_keyframe(&e0.payload).unwrap();
        enc.commit(e0, 16);
        let s = sample(2, &names);
        let e = enc.encode(&s, false).unwrap();
        assert_eq!(decode(&kf, 16, &e), s);
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let mut enc = TableEncoder::new(3);
        let e0 = enc.encode(&sample(1, &["a", "b"]), true).unwrap();
        let body = crate::store::format::decompress(&e0.payload, None).unwrap();
        for cut in 0..body.len() {
            let p = crate::store::format::compress(&body[..cut], None, 1).unwrap();
            assert!(decode_keyframe(&p).is_err(), "cut at {cut}");
        }
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] ^= 0x5a;
            let p = crate::store::format::compress(&b, None, 1).unwrap();
            if let Ok(d) = decode_keyframe(&p) {
                let _ = decode_value::<Sample>(&view(None, &d), &Projection::all());
            }
        }
    }
}
