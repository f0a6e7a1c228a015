//! The packet ring: the recent past of captured packets in memory, bounded
//! by bytes and by time, indexed by time at chunk granularity.
//!
//! Two lanes share the byte bound: control-plane packets (what explains a
//! connectivity loss) and the sampled share of everything else, which gets
//! at most its own slice of the bytes — a bulk stream cannot push the ARP
//! of 50 s ago out of the ring.
//!
//! Each lane is a queue of fixed-size chunks; a packet is a 16-byte record
//! header (timestamp, original length, captured length, interface) followed
//! by its bytes, appended to the newest chunk. Memory is exactly
//! `chunks × chunk_bytes` (no allocation per packet). Chunks leave from the
//! front: by time (older than the window) or, when the lane is full, to
//! make room. An incident *holds* the ring: while a hold is active nothing
//! newer than its start is evicted — a full lane then refuses new packets
//! (counted) rather than lose the minutes before the incident.
//!
//! The ring also knows how far back it is complete (`complete_since`): the
//! start of capture, moved forward by every eviction, so a bundle can say
//! which span it really covers instead of implying an empty past.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Record header: ts_unix_ns i64, orig_len u32, caplen u16, iface u16.
const REC_HDR: usize = 16;

/// Which lane a packet goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Control,
    Sampled,
}

/// One packet copied out of the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub ts_unix_ns: i64,
    pub iface: u16,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

struct Chunk {
    buf: Vec<u8>,
    /// Offset of the first live record (time expiry advances it).
    head: usize,
    packets: u64,
    min_ts: i64,
    max_ts: i64,
}

impl Chunk {
    fn new(cap: usize) -> Chunk {
        Chunk {
            buf: Vec::with_capacity(cap),
            head: 0,
            packets: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.head = 0;
        self.packets = 0;
        self.min_ts = i64::MAX;
        self.max_ts = i64::MIN;
    }

    fn room(&self, need: usize) -> bool {
        self.buf.len() + need <= self.buf.capacity()
    }

    fn push(&mut self, ts: i64, iface: u16, orig_len: u32, data: &[u8]) {
        self.buf.extend_from_slice(&ts.to_le_bytes());
        self.buf.extend_from_slice(&orig_len.to_le_bytes());
        self.buf
            .extend_from_slice(&(data.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(&iface.to_le_bytes());
        self.buf.extend_from_slice(data);
        self.packets += 1;
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
    }

    /// Live records from `head`: (offset, ts, iface, orig_len, data).
    fn records(&self) -> impl Iterator<Item = (usize, i64, u16, u32, &[u8])> + '_ {
        let mut off = self.head;
        std::iter::from_fn(move || {
            if off + REC_HDR > self.buf.len() {
                return None;
            }
            let b = &self.buf[off..];
            let ts = i64::from_le_bytes(b[0..8].try_into().ok()?);
            let orig = u32::from_le_bytes(b[8..12].try_into().ok()?);
            let cap = u16::from_le_bytes(b[12..14].try_into().ok()?) as usize;
            let iface = u16::from_le_bytes(b[14..16].try_into().ok()?);
            let at = off;
            off += REC_HDR + cap;
            Some((at, ts, iface, orig, &b[REC_HDR..REC_HDR + cap]))
        })
    }
}

/// Counters of one lane (cumulative since the ring was made).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LaneStats {
    pub packets: u64,
    pub bytes: u64,
    /// Chunks in memory × chunk size.
    pub ring_bytes: u64,
    pub max_bytes: u64,
    /// Packets removed before their time to make room (the lane was full).
    pub evicted_packets: u64,
    /// Packets not kept because a hold pinned a full lane.
    pub refused_packets: u64,
    /// Packets kept right now.
    pub kept_packets: u64,
    /// The lane holds every packet it captured since this time.
    pub complete_since_unix_ns: i64,
}

struct Lane {
    chunks: VecDeque<Chunk>,
    chunk_bytes: usize,
    max_chunks: usize,
    stats: LaneStats,
}

impl Lane {
    fn new(max_bytes: u64, start_ns: i64) -> Lane {
        // 16+ chunks per lane: eviction frees at most 1/16 of it at a time.
        let chunk_bytes = ((max_bytes / 16) as usize).clamp(16 << 10, 1 << 20);
        let max_chunks = ((max_bytes as usize) / chunk_bytes).max(1);
        Lane {
            chunks: VecDeque::new(),
            chunk_bytes,
            max_chunks,
            stats: LaneStats {
                max_bytes: (max_chunks * chunk_bytes) as u64,
                complete_since_unix_ns: start_ns,
                ..Default::default()
            },
        }
    }

    fn push(&mut self, ts: i64, iface: u16, orig_len: u32, data: &[u8], hold_from: Option<i64>) {
        let data = &data[..data
            .len()
            .min(self.chunk_bytes - REC_HDR)
            .min(u16::MAX as usize)];
        let need = REC_HDR + data.len();
        if !self.chunks.back().is_some_and(|c| c.room(need)) {
            let chunk = if self.chunks.len() < self.max_chunks {
                Chunk::new(self.chunk_bytes)
            } else {
                let front = self.chunks.front().expect("max_chunks >= 1");
                if hold_from.is_some_and(|h| front.max_ts >= h) {
                    self.stats.refused_packets += 1;
                    return;
                }
                let mut c = self.chunks.pop_front().expect("checked");
                self.stats.evicted_packets += c.packets;
                self.stats.kept_packets -= c.packets;
                self.stats.complete_since_unix_ns =
                    self.stats.complete_since_unix_ns.max(c.max_ts + 1);
                c.reset();
                c
            };
            self.chunks.push_back(chunk);
        }
        let c = self.chunks.back_mut().expect("pushed");
        c.push(ts, iface, orig_len, data);
        self.stats.packets += 1;
        self.stats.bytes += data.len() as u64;
        self.stats.kept_packets += 1;
        self.stats.ring_bytes = (self.chunks.len() * self.chunk_bytes) as u64;
    }

    /// Drops what is older than `cutoff` (whole chunks, then records at the
    /// head of the oldest chunk).
    fn expire(&mut self, cutoff: i64) {
        while self.chunks.front().is_some_and(|c| c.max_ts < cutoff) {
            let c = self.chunks.pop_front().expect("checked");
            self.stats.kept_packets -= c.packets;
        }
        if let Some(c) = self.chunks.front_mut() {
            if c.min_ts < cutoff {
                let (mut head, mut gone, mut min_ts) = (c.head, 0u64, i64::MAX);
                let mut stop = false;
                for (off, ts, _, _, data) in c.records() {
                    if !stop && ts < cutoff {
                        head = off + REC_HDR + data.len();
                        gone += 1;
                    } else {
                        stop = true;
                        min_ts = min_ts.min(ts);
                    }
                }
                c.head = head;
                c.packets -= gone;
                c.min_ts = min_ts;
                self.stats.kept_packets -= gone;
            }
        }
        self.stats.complete_since_unix_ns = self.stats.complete_since_unix_ns.max(cutoff);
        self.stats.ring_bytes = (self.chunks.len() * self.chunk_bytes) as u64;
    }

    fn copy_range(&self, from: i64, to: i64, out: &mut Vec<Packet>) {
        for c in &self.chunks {
            if c.packets == 0 || c.max_ts < from || c.min_ts > to {
                continue;
            }
            for (_, ts, iface, orig_len, data) in c.records() {
                if ts >= from && ts <= to {
                    out.push(Packet {
                        ts_unix_ns: ts,
                        iface,
                        orig_len,
                        data: data.to_vec(),
                    });
                }
            }
        }
    }

    fn oldest(&self) -> Option<i64> {
        self.chunks
            .iter()
            .filter(|c| c.packets > 0)
            .map(|c| c.min_ts)
            .min()
    }

    fn newest(&self) -> Option<i64> {
        self.chunks
            .iter()
            .filter(|c| c.packets > 0)
            .map(|c| c.max_ts)
            .max()
    }
}

/// A packet inside a [`RawRange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketRef<'a> {
    pub ts_unix_ns: i64,
    pub iface: u16,
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// Raw chunks copied out of the ring (see [`Ring::raw_range`]).
pub struct RawRange {
    chunks: Vec<Vec<u8>>,
    from_ns: i64,
    to_ns: i64,
    /// (ts, chunk, offset), sorted by time; built on first use.
    index: Vec<(i64, u32, u32)>,
}

impl RawRange {
    fn chunk_records(buf: &[u8]) -> impl Iterator<Item = (usize, PacketRef<'_>)> + '_ {
        let mut off = 0;
        std::iter::from_fn(move || {
            if off + REC_HDR > buf.len() {
                return None;
            }
            let b = &buf[off..];
            let cap = u16::from_le_bytes([b[12], b[13]]) as usize;
            let r = PacketRef {
                ts_unix_ns: i64::from_le_bytes(b[0..8].try_into().ok()?),
                orig_len: u32::from_le_bytes(b[8..12].try_into().ok()?),
                iface: u16::from_le_bytes([b[14], b[15]]),
                data: b.get(REC_HDR..REC_HDR + cap)?,
            };
            let at = off;
            off += REC_HDR + cap;
            Some((at, r))
        })
    }

    /// Sorts the packets of the window by time (16 bytes per packet).
    pub fn index(&mut self) {
        let (from, to) = (self.from_ns, self.to_ns);
        let mut ix = Vec::new();
        for (ci, c) in self.chunks.iter().enumerate() {
            for (off, p) in Self::chunk_records(c) {
                if p.ts_unix_ns >= from && p.ts_unix_ns <= to {
                    ix.push((p.ts_unix_ns, ci as u32, off as u32));
                }
            }
        }
        ix.sort_unstable();
        self.index = ix;
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The packets in time order (after [`RawRange::index`]).
    pub fn iter(&self) -> impl Iterator<Item = PacketRef<'_>> + '_ {
        self.index.iter().filter_map(|&(_, ci, off)| {
            Self::chunk_records(&self.chunks[ci as usize][off as usize..])
                .next()
                .map(|(_, p)| p)
        })
    }
}

/// How the ring is bounded.
#[derive(Clone, Debug, PartialEq)]
pub struct RingLimits {
    pub max_bytes: u64,
    /// Share of `max_bytes` the sampled lane may use (0..1).
    pub sampled_share: f64,
    /// Packets older than this are dropped when no hold needs them.
    pub keep_ns: i64,
}

/// The ring: two lanes and the holds of incidents being written.
pub struct Ring {
    control: Lane,
    sampled: Lane,
    keep_ns: i64,
    /// (id, hold packets from this time, until this time at the latest).
    holds: Vec<(u64, i64, i64)>,
    next_hold: u64,
}

/// A snapshot of the ring's counters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RingStats {
    pub control: LaneStats,
    pub sampled: LaneStats,
    /// Oldest and newest packet kept (0 when empty).
    pub oldest_unix_ns: i64,
    pub newest_unix_ns: i64,
    /// Active holds (incidents whose bundle is not complete yet).
    pub holds: usize,
}

impl Ring {
    pub fn new(limits: &RingLimits, start_ns: i64) -> Ring {
        let share = limits.sampled_share.clamp(0.0, 1.0);
        let sampled = (limits.max_bytes as f64 * share) as u64;
        Ring {
            control: Lane::new(limits.max_bytes - sampled, start_ns),
            sampled: Lane::new(sampled.max(16 << 10), start_ns),
            keep_ns: limits.keep_ns,
            holds: Vec::new(),
            next_hold: 1,
        }
    }

    fn hold_from(&self) -> Option<i64> {
        self.holds.iter().map(|h| h.1).min()
    }

    pub fn push(&mut self, class: Class, ts: i64, iface: u16, orig_len: u32, data: &[u8]) {
        let hold = self.hold_from();
        match class {
            Class::Control => self.control.push(ts, iface, orig_len, data, hold),
            Class::Sampled => self.sampled.push(ts, iface, orig_len, data, hold),
        }
    }

    /// Drops packets outside the time window (keeping what holds need) and
    /// holds past their deadline.
    pub fn expire(&mut self, now_ns: i64) {
        self.holds.retain(|h| h.2 > now_ns);
        let mut cutoff = now_ns - self.keep_ns;
        if let Some(h) = self.hold_from() {
            cutoff = cutoff.min(h);
        }
        self.control.expire(cutoff);
        self.sampled.expire(cutoff);
    }

    /// Pins packets from `from_ns` on until `release` (or `deadline_ns`).
    pub fn hold(&mut self, from_ns: i64, deadline_ns: i64) -> u64 {
        let id = self.next_hold;
        self.next_hold += 1;
        self.holds.push((id, from_ns, deadline_ns));
        id
    }

    pub fn release(&mut self, id: u64) {
        self.holds.retain(|h| h.0 != id);
    }

    /// Copies the packets with `from <= ts <= to`, in time order.
    pub fn copy_range(&self, from_ns: i64, to_ns: i64) -> Vec<Packet> {
        let mut v = Vec::new();
        self.control.copy_range(from_ns, to_ns, &mut v);
        self.sampled.copy_range(from_ns, to_ns, &mut v);
        v.sort_by_key(|p| p.ts_unix_ns);
        v
    }

    /// The packets with `from <= ts <= to` as raw records: the overlapping
    /// chunks are copied whole (a few memcpy, so the capture thread waits
    /// for the lock only briefly) and indexed by time outside the lock by
    /// the caller ([`RawRange::iter`]).
    pub fn raw_range(&self, from_ns: i64, to_ns: i64) -> RawRange {
        let mut chunks = Vec::new();
        for lane in [&self.control, &self.sampled] {
            for c in &lane.chunks {
                if c.packets == 0 || c.max_ts < from_ns || c.min_ts > to_ns {
                    continue;
                }
                chunks.push(c.buf[c.head..].to_vec());
            }
        }
        RawRange {
            chunks,
            from_ns,
            to_ns,
            index: Vec::new(),
        }
    }

    /// Interface ids referenced by packets in the ring.
    pub fn ifaces_in_use(&self) -> std::collections::BTreeSet<u16> {
        let mut s = std::collections::BTreeSet::new();
        for lane in [&self.control, &self.sampled] {
            for c in &lane.chunks {
                for (_, _, iface, _, _) in c.records() {
                    s.insert(iface);
                }
            }
        }
        s
    }

    pub fn stats(&self) -> RingStats {
        let oldest = [self.control.oldest(), self.sampled.oldest()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        let newest = [self.control.newest(), self.sampled.newest()]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        RingStats {
            control: self.control.stats.clone(),
            sampled: self.sampled.stats.clone(),
            oldest_unix_ns: oldest,
            newest_unix_ns: newest,
            holds: self.holds.len(),
        }
    }

    /// Bytes the ring may occupy at most (both lanes).
    pub fn max_bytes(&self) -> u64 {
        self.control.stats.max_bytes + self.sampled.stats.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn ring(max: u64, keep_s: i64) -> Ring {
        Ring::new(
            &RingLimits {
                max_bytes: max,
                sampled_share: 0.25,
                keep_ns: keep_s * S,
            },
            0,
        )
    }

    #[test]
    fn keeps_packets_in_time_order_and_copies_a_range() {
        let mut r = ring(1 << 20, 60);
        for i in 0..100i64 {
            let class = if i % 10 == 0 {
                Class::Sampled
            } else {
                Class::Control
            };
            r.push(
                class,
                i * S / 10,
                (i % 3) as u16,
                60 + i as u32,
                &[i as u8; 42],
            );
        }
        let all = r.copy_range(0, i64::MAX);
        assert_eq!(all.len(), 100);
        assert!(all.windows(2).all(|w| w[0].ts_unix_ns <= w[1].ts_unix_ns));
        assert_eq!(all[7].data, vec![7u8; 42]);
        assert_eq!(all[7].orig_len, 67);
        assert_eq!(all[7].iface, 1);
        let some = r.copy_range(2 * S, 3 * S);
        assert_eq!(some.len(), 11);
        let st = r.stats();
        assert_eq!(st.control.kept_packets + st.sampled.kept_packets, 100);
        assert_eq!(st.oldest_unix_ns, 0);
        assert_eq!(st.newest_unix_ns, 99 * S / 10);
    }

    #[test]
    fn a_raw_range_holds_the_same_packets_as_a_copy() {
        let mut r = ring(1 << 20, 60);
        for i in 0..5000i64 {
            let class = if i % 7 == 0 {
                Class::Sampled
            } else {
                Class::Control
            };
            // Slightly out of order, as kernel timestamps are.
            let ts = i * 1000 + if i % 5 == 0 { -1500 } else { 0 };
            r.push(class, ts, (i % 4) as u16, 100, &(i as u32).to_le_bytes());
        }
        let (from, to) = (1_000_000, 3_000_000);
        let copy = r.copy_range(from, to);
        let mut raw = r.raw_range(from, to);
        raw.index();
        assert_eq!(raw.len(), copy.len());
        let got: Vec<Packet> = raw
            .iter()
            .map(|p| Packet {
                ts_unix_ns: p.ts_unix_ns,
                iface: p.iface,
                orig_len: p.orig_len,
                data: p.data.to_vec(),
            })
            .collect();
        let key = |p: &Packet| (p.ts_unix_ns, p.data.clone());
        let mut a: Vec<_> = copy.iter().map(key).collect();
        let mut b: Vec<_> = got.iter().map(key).collect();
        assert!(got.windows(2).all(|w| w[0].ts_unix_ns <= w[1].ts_unix_ns));
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn stays_within_its_byte_bound_and_says_since_when_it_is_complete() {
        let max = 1 << 20;
        let mut r = ring(max, 3600);
        for i in 0..100_000i64 {
            r.push(Class::Control, i, 0, 128, &[0u8; 112]);
            let st = r.stats();
            assert!(st.control.ring_bytes + st.sampled.ring_bytes <= max);
        }
        let st = r.stats();
        assert!(st.control.evicted_packets > 0);
        assert_eq!(
            st.control.kept_packets + st.control.evicted_packets,
            100_000
        );
        // Everything after complete_since is there; the oldest kept packet is right after it.
        assert!(st.control.complete_since_unix_ns > 0);
        assert_eq!(st.oldest_unix_ns, st.control.complete_since_unix_ns);
        let kept = r.copy_range(0, i64::MAX);
        assert_eq!(kept.len() as u64, st.control.kept_packets);
    }

    #[test]
    fn sampled_bulk_does_not_push_control_packets_out() {
        let mut r = ring(1 << 20, 3600);
        r.push(Class::Control, 1, 0, 42, &[1u8; 42]);
        for i in 0..200_000i64 {
            r.push(Class::Sampled, 10 + i, 0, 1500, &[0u8; 54]);
        }
        let st = r.stats();
        assert!(st.sampled.evicted_packets > 0);
        assert_eq!(st.control.kept_packets, 1);
        assert_eq!(r.copy_range(0, 5)[0].data, vec![1u8; 42]);
        assert!(st.sampled.ring_bytes <= (1 << 20) / 4);
    }

    #[test]
    fn expires_by_time_and_a_hold_pins_the_past() {
        let mut r = ring(1 << 20, 10);
        for i in 0..100i64 {
            r.push(Class::Control, i * S, 0, 42, &[0u8; 42]);
        }
        r.expire(100 * S);
        let kept = r.copy_range(0, i64::MAX);
        assert_eq!(kept.first().unwrap().ts_unix_ns, 90 * S);
        assert_eq!(r.stats().control.complete_since_unix_ns, 90 * S);
        // A hold from 95 s: time expiry must not take it away.
        let h = r.hold(95 * S, 1000 * S);
        r.expire(200 * S);
        assert_eq!(
            r.copy_range(0, i64::MAX).first().unwrap().ts_unix_ns,
            95 * S
        );
        r.release(h);
        r.expire(200 * S);
        assert!(r.copy_range(0, i64::MAX).is_empty());
        assert_eq!(r.stats().control.kept_packets, 0);
    }

    #[test]
    fn a_held_full_lane_refuses_instead_of_evicting() {
        let mut r = ring(256 << 10, 3600);
        r.hold(0, i64::MAX);
        for i in 0..100_000i64 {
            r.push(Class::Control, i, 0, 100, &[0u8; 100]);
        }
        let st = r.stats();
        assert_eq!(st.control.evicted_packets, 0);
        assert!(st.control.refused_packets > 0);
        assert_eq!(
            r.copy_range(0, 0).len(),
            1,
            "the first packet is still there"
        );
    }

    #[test]
    fn a_hold_expires_at_its_deadline() {
        let mut r = ring(1 << 20, 10);
        r.push(Class::Control, 0, 0, 42, &[0u8; 42]);
        r.hold(0, 50 * S);
        r.expire(40 * S);
        assert_eq!(r.copy_range(0, i64::MAX).len(), 1);
        r.expire(60 * S);
        assert_eq!(r.copy_range(0, i64::MAX).len(), 0);
        assert_eq!(r.stats().holds, 0);
    }
}
