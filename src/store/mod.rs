//! The flight-recorder store: the recent past on local disk, surviving
//! SIGKILL, power loss and reboot.
//!
//! # On-disk format (version 1) — also in docs/store-format.md
//!
//! A store is a directory of segment files `seg-<sequence, 8 digits>-<first
//! record's wall time in ms, 16 digits>.hvs`, written append-only, one active
//! segment per writer; the sequence orders them even across clock steps, and
//! a clock step starts a new segment so wall time only rises within one. A writer never
//! appends to a segment it did not create: after a restart (or a crash) it
//! starts a new one, so a torn tail is only ever at the end of a closed file.
//!
//! A segment starts with a header:
//!
//! ```text
//! "HVFSTORE"  8 bytes magic
//! u32 LE      format version (1)
//! u32 LE      header length H
//! H bytes     JSON: {"format_version", "host", "agent_version", "created_unix_ns", "pid"}
//! ```
//!
//! then records, each framed:
//!
//! ```text
//! u32 LE  frame magic 0x52465648 ("HVFR")
//! u32 LE  payload length P
//! u32 LE  CRC-32 of the 22 bytes below and the payload
//! u8      kind: 1 sample, 2 events (a batch), 3 keyframe sample
//! u8      flags (0)
//! i64 LE  wall clock of the record, ns since epoch (for range queries)
//! u64 LE  CLOCK_MONOTONIC, ns
//! P bytes zstd frame of the record's JSON
//! ```
//!
//! Samples are large and change little from one second to the next, so a
//! sample (kind 1) is compressed with the last keyframe's JSON as a zstd
//! reference prefix; every `KEYFRAME_EVERY` samples (and first in every
//! segment) a keyframe (kind 3) is compressed on its own. A damaged record
//! costs only itself, unless it is a keyframe (then the samples up to the
//! next keyframe are skipped, each reported). Events are batched per sample
//! interval and compressed alone.
//!
//! Index: the frame headers carry the timestamps, so a range read walks the
//! headers (skipping payloads by length) and decompresses only records in
//! range plus their keyframe; segment names give each file's first time, so
//! files wholly outside the range are not opened.
//!
//! Crash guarantees: every record is written with one write() as soon as it
//! is made (a SIGKILL loses at most the record being built), fdatasync runs
//! every `sync_interval_ms` and on `sync_now()` (power loss loses at most
//! that interval). Readers take no lock and tolerate a torn tail; a record
//! whose CRC does not match is skipped with a warning naming the segment and
//! byte offset, and reading resynchronises on the next frame magic.

pub mod format;
pub mod history;
pub mod index;
pub mod reader;
pub mod rows;
pub mod table;
pub mod writer;

pub use reader::{read_query, read_range, scan, Query, ReadReport, Record};
pub use rows::Projection;
pub use writer::{StoreWriter, WriterConfig};

/// Samples between keyframes.
pub const KEYFRAME_EVERY: u64 = 60;
