//! The flight-recorder store: the recent past on local disk, surviving
//! SIGKILL, power loss and reboot.
//!
//! # On-disk format (version 2; reads 1) — byte by byte in docs/store-format.md
//!
//! A store is a directory of segment files `seg-<sequence, 8 digits>-<first
//! record's wall time in ms, 16 digits>.hvs`, written append-only, one active
//! segment per writer; the sequence orders them even across clock steps, and
//! a clock step starts a new segment so wall time only rises within one. A
//! writer never appends to a segment it did not create: after a restart (or
//! a crash) it starts a new one, so a torn tail is only ever at the end of a
//! closed file. Segments close at `segment_bytes` or `segment_max_age_s`.
//!
//! A segment is a header (magic, version, JSON with host and agent version)
//! then CRC-framed records (`format.rs`). Samples are split into rows
//! (`rows/`): each interface, port, FDB entry, domain, section is a row of
//! a *shape* (structure, names, strings) and *numbers* (counters). A
//! keyframe (`table.rs`) holds the shapes as a dictionary and the numbers;
//! the samples after it hold row ids and each number's zig-zag varint
//! difference to the same row of the keyframe, column by column, in one
//! zstd frame. Sections the store knows nothing about are split the same
//! way, so new `Sample` sections need no store change. Events are batches
//! of JSON. A sidecar index (`index.rs`) lists the keyframes, so a range
//! read decompresses only its keyframe and the records in range; a query
//! can also decode only the sections and rows it needs. `scan_ref` lends
//! samples instead of handing them over, and reads a record whose rows have
//! the shapes of the one two back by patching its numbers into that sample
//! in place (`patch.rs`).
//!
//! Crash guarantees: every record is written with one write() as soon as it
//! is made (a SIGKILL loses at most the record being built), fdatasync runs
//! every `sync_interval_ms` and on `sync_now()` (power loss loses at most
//! that interval). Readers take no lock and tolerate a torn tail; a record
//! whose CRC does not match is skipped with a warning naming the segment and
//! byte offset, and reading resynchronises on the next frame magic. Every
//! record decodes from its keyframe alone: a damaged record costs itself, a
//! damaged keyframe the samples up to the next one (each reported).

pub mod format;
pub mod history;
pub mod index;
mod patch;
pub mod reader;
pub mod rows;
pub mod table;
pub mod writer;

pub use reader::{
    read_query, read_range, scan, scan_ref, scan_ref_stats, Query, ReadReport, Record, RecordRef,
};
pub use rows::Projection;
pub use writer::{StoreWriter, WriterConfig};

/// Delta records between keyframes.
pub const KEYFRAME_EVERY: u64 = 60;
