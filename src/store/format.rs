//! Framing and compression of store records (see mod.rs for the layout).

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"HVFSTORE";
/// The version this hvflight writes; it reads every version up to it.
pub const FORMAT_VERSION: u32 = 2;
pub const FRAME_MAGIC: u32 = 0x5246_5648;
pub const FRAME_HEADER_LEN: usize = 30;

/// Format 1: a sample's JSON compressed against its keyframe's JSON.
pub const KIND_SAMPLE: u8 = 1;
/// A JSON array of events (both formats).
pub const KIND_EVENTS: u8 = 2;
/// A sample's JSON compressed alone (format 1's keyframes; in format 2 the
/// fallback for a sample the row split cannot represent).
pub const KIND_KEYFRAME: u8 = 3;
/// Format 2: a sample as a table keyframe (shape dictionary + numbers).
pub const KIND_TABLE_KEYFRAME: u8 = 4;
/// Format 2: a sample as numbers relative to its table keyframe.
pub const KIND_TABLE_DELTA: u8 = 5;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SegmentHeader {
    pub format_version: u32,
    pub host: String,
    pub agent_version: String,
    pub created_unix_ns: i64,
    #[serde(default)]
    pub pid: u32,
}

pub fn encode_header(h: &SegmentHeader) -> Vec<u8> {
    let json = serde_json::to_vec(h).expect("header serializes");
    let mut out = Vec::with_capacity(16 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Parses a segment header; returns it and where the records start.
pub fn decode_header(b: &[u8]) -> Result<(SegmentHeader, usize), String> {
    if b.len() < 16 || &b[..8] != MAGIC {
        return Err("not an hvflight store segment (bad magic)".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version == 0 || version > FORMAT_VERSION {
        return Err(format!(
            "segment format version {version}; this hvflight reads up to {FORMAT_VERSION}"
        ));
    }
    let len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
    if b.len() < 16 + len {
        return Err("truncated segment header".into());
    }
    let h: SegmentHeader =
        serde_json::from_slice(&b[16..16 + len]).map_err(|e| format!("segment header: {e}"))?;
    Ok((h, 16 + len))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub crc: u32,
    pub kind: u8,
    pub ts_unix_ns: i64,
    pub mono_ns: u64,
}

pub fn encode_frame(kind: u8, ts_unix_ns: i64, mono_ns: u64, payload: &[u8]) -> Vec<u8> {
    let mut meta = [0u8; 18];
    meta[0] = kind;
    meta[1] = 0;
    meta[2..10].copy_from_slice(&ts_unix_ns.to_le_bytes());
    meta[10..18].copy_from_slice(&mono_ns.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(&meta);
    h.update(payload);
    let crc = h.finalize();
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(payload);
    out
}

/// Reads the frame header at the start of `b` (None: not a frame / too short).
pub fn decode_frame_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < FRAME_HEADER_LEN || u32::from_le_bytes(b[0..4].try_into().ok()?) != FRAME_MAGIC {
        return None;
    }
    Some(FrameHeader {
        len: u32::from_le_bytes(b[4..8].try_into().ok()?) as usize,
        crc: u32::from_le_bytes(b[8..12].try_into().ok()?),
        kind: b[12],
        ts_unix_ns: i64::from_le_bytes(b[14..22].try_into().ok()?),
        mono_ns: u64::from_le_bytes(b[22..30].try_into().ok()?),
    })
}

/// Checks the CRC of a whole frame (header + payload).
pub fn frame_ok(frame: &[u8], h: &FrameHeader) -> bool {
    let mut c = crc32fast::Hasher::new();
    c.update(&frame[4..8]);
    c.update(&frame[12..30]);
    c.update(&frame[30..30 + h.len]);
    c.finalize() == h.crc
}

/// zstd with an optional reference prefix (the last keyframe's JSON).
/// Without a prefix the thread's one context is reused: a context is ~1.3
/// MiB at level 3 and the store writer compresses a sample and an events
/// batch every second (one context each kept 2.6 MiB live, and the events'
/// was allocated and freed every batch).
pub fn compress(data: &[u8], prefix: Option<&[u8]>, level: i32) -> std::io::Result<Vec<u8>> {
    use std::cell::RefCell;
    use zstd::zstd_safe::CCtx;
    thread_local! {
        static CCTX: RefCell<CCtx<'static>> = RefCell::new(CCtx::create());
    }
    match prefix {
        // The prefix is borrowed for the context's lifetime: a fresh one.
        Some(p) => {
            let mut cctx = CCtx::create();
            let e =
                |c| std::io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(c)));
            cctx.ref_prefix(p).map_err(e)?;
            compress_with(&mut cctx, data, level)
        }
        None => CCTX.with_borrow_mut(|cctx| compress_with(cctx, data, level)),
    }
}

fn compress_with(
    cctx: &mut zstd::zstd_safe::CCtx<'_>,
    data: &[u8],
    level: i32,
) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let e = |c| std::io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(c)));
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(e)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(e)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(e)?;
    Ok(out)
}

pub fn decompress(data: &[u8], prefix: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::DCtx;
    let e = |c| std::io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(c)));
    let size = match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n <= 256 << 20 => n as usize,
        _ => {
            return Err(std::io::Error::other(
                "zstd: frame without a sane content size",
            ))
        }
    };
    let mut dctx = DCtx::create();
    if let Some(p) = prefix {
        dctx.ref_prefix(p).map_err(e)?;
    }
    let mut out = Vec::with_capacity(size);
    dctx.decompress(&mut out, data).map_err(e)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let f = encode_frame(KIND_SAMPLE, -5, 7, b"hello");
        let h = decode_frame_header(&f).unwrap();
        assert_eq!(
            (h.len, h.kind, h.ts_unix_ns, h.mono_ns),
            (5, KIND_SAMPLE, -5, 7)
        );
        assert!(frame_ok(&f, &h));
        let mut bad = f.clone();
        bad[32] ^= 1;
        assert!(!frame_ok(&bad, &h));
        let mut bad_ts = f;
        bad_ts[15] ^= 1; // timestamps are covered too
        assert!(!frame_ok(&bad_ts, &decode_frame_header(&bad_ts).unwrap()));
    }

    #[test]
    fn prefix_compression_round_trips_and_pays() {
        let a: String = (0..2000)
            .map(|i| format!("{{\"rx_packets\":{i},\"name\":\"vnet{i}\"}}"))
            .collect();
        // The next second: a few counters moved.
        let b = a
            .replace("rx_packets\":100,", "rx_packets\":107,")
            .replace("rx_packets\":1500,", "rx_packets\":1502,");
        let alone = compress(b.as_bytes(), None, 3).unwrap();
        let delta = compress(b.as_bytes(), Some(a.as_bytes()), 3).unwrap();
        assert!(
            delta.len() * 3 < alone.len(),
            "{} vs {}",
            delta.len(),
            alone.len()
        );
        assert_eq!(
            decompress(&delta, Some(a.as_bytes())).unwrap(),
            b.as_bytes()
        );
        assert_eq!(decompress(&alone, None).unwrap(), b.as_bytes());
        assert!(
            decompress(&delta, None).is_err() || decompress(&delta, None).unwrap() != b.as_bytes()
        );
    }

    #[test]
    fn header_round_trip_and_version_check() {
        let h = SegmentHeader {
            format_version: 1,
            host: "n1".into(),
            agent_version: "0.1.0".into(),
            created_unix_ns: 1,
            pid: 2,
        };
        let b = encode_header(&h);
        assert_eq!(decode_header(&b).unwrap(), (h, b.len()));
        let mut future = b.clone();
        future[8] = 9;
        assert!(decode_header(&future).unwrap_err().contains("version 9"));
        assert!(decode_header(b"garbage garbage!").is_err());
    }
}
