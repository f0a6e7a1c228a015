//! The keyframe index of a segment: a sidecar file `seg-….hvi` listing
//! where each keyframe starts (and every record written out of time order),
//! so a range read starts at the keyframe before the range and stops after
//! it instead of walking the whole segment.
//!
//! The index is a hint, never the truth: every entry carries a CRC, reading
//! stops at the first bad or torn entry, and the reader checks each frame an
//! entry points at (magic, CRC, kind, time) before trusting it; a missing or
//! damaged index only makes a read walk the whole segment. It is not
//! fdatasync'ed (losing its tail costs speed, not records).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const INDEX_MAGIC: &[u8; 8] = b"HVFINDX1";
pub const ENTRY_LEN: usize = 24;

/// A keyframe (format 2 table keyframe or a JSON keyframe).
pub const ENTRY_KEYFRAME: u32 = 1;
/// A record whose time is more than a second before a sample written
/// earlier in the segment (e.g. the kernel-log backlog read at start).
pub const ENTRY_LATE: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub ts_unix_ns: i64,
    pub kind: u32,
}

pub fn index_path(segment: &Path) -> PathBuf {
    segment.with_extension("hvi")
}

fn encode(e: &Entry) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    b[0..8].copy_from_slice(&e.offset.to_le_bytes());
    b[8..16].copy_from_slice(&e.ts_unix_ns.to_le_bytes());
    b[16..20].copy_from_slice(&e.kind.to_le_bytes());
    let crc = crc32fast::hash(&b[0..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Entry> {
    let crc = u32::from_le_bytes(b[20..24].try_into().ok()?);
    if crc32fast::hash(&b[0..20]) != crc {
        return None;
    }
    Some(Entry {
        offset: u64::from_le_bytes(b[0..8].try_into().ok()?),
        ts_unix_ns: i64::from_le_bytes(b[8..16].try_into().ok()?),
        kind: u32::from_le_bytes(b[16..20].try_into().ok()?),
    })
}

/// Appends entries; after any failed write it stops (a half-written entry
/// would shift every later one), and readers fall back to walking.
pub struct IndexWriter {
    file: Option<File>,
}

impl IndexWriter {
    pub fn create(segment: &Path) -> IndexWriter {
        let path = index_path(segment);
        let file = match OpenOptions::new().create_new(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(index = %path.display(), error = %e, "store: no keyframe index for this segment");
                return IndexWriter { file: None };
            }
        };
        let mut w = IndexWriter { file: Some(file) };
        if let Some(f) = w.file.as_mut() {
            if f.write_all(INDEX_MAGIC).is_err() {
                w.file = None;
                let _ = std::fs::remove_file(&path);
            }
        }
        w
    }

    pub fn add(&mut self, e: Entry) {
        if let Some(f) = self.file.as_mut() {
            if f.write_all(&encode(&e)).is_err() {
                self.file = None;
            }
        }
    }
}

/// The valid entries of a segment's index, in file order (empty when there
/// is none).
pub fn read(segment: &Path) -> Vec<Entry> {
    let Ok(b) = std::fs::read(index_path(segment)) else {
        return Vec::new();
    };
    if b.len() < INDEX_MAGIC.len() || &b[..8] != INDEX_MAGIC {
        return Vec::new();
    }
    b[8..].chunks_exact(ENTRY_LEN).map_while(decode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_torn_or_bad_tail_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let seg = d.path().join("seg-00000001-0000000000000001.hvs");
        let mut w = IndexWriter::create(&seg);
        let es: Vec<Entry> = (0..5)
            .map(|i| Entry {
                offset: 100 + i * 1000,
                ts_unix_ns: i as i64 * 60,
                kind: if i == 3 { ENTRY_LATE } else { ENTRY_KEYFRAME },
            })
            .collect();
        for e in &es {
            w.add(*e);
        }
        drop(w);
        assert_eq!(read(&seg), es);
        let p = index_path(&seg);
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len() - 5);
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read(&seg), es[..4]);
        b[8 + ENTRY_LEN + 3] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read(&seg), es[..1]);
        std::fs::remove_file(&p).unwrap();
        assert!(read(&seg).is_empty());
        // A second writer never clobbers an existing index.
        std::fs::write(&p, b"HVFINDX1").unwrap();
        let mut w = IndexWriter::create(&seg);
        w.add(es[0]);
        assert!(read(&seg).is_empty());
    }
}
