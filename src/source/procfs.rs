//! Thin reading of /proc and /proc/sys files under an injectable root
//! (`Context::proc_root`): whole-file reads, "absent is normal" reads, and
//! one-integer sysctls, each failure naming the full path. No parsing
//! beyond a sysctl's single number lives here.
//!
//! Absent is normal for: modules not loaded (nf_conntrack, br_netfilter,
//! ip_tables), files that exist only in the root namespace (gc_thresh*,
//! /proc/net/stat/arp_cache), IPv6 disabled (snmp6), PSI off.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::collect::CollectError;
use crate::kernel::proc_error::LineError;

pub fn path(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

fn io_err(root: &Path, rel: &str, e: std::io::Error) -> CollectError {
    CollectError::io(path(root, rel).display().to_string(), e)
}

/// Reads `root/rel` into `buf` (cleared first, capacity kept for the next
/// sample). Ok(false) when the file does not exist.
pub fn read_into(root: &Path, rel: &str, buf: &mut String) -> Result<bool, CollectError> {
    buf.clear();
    let mut f = match std::fs::File::open(path(root, rel)) {
        Ok(f) => f,
        Err(e) if absent(&e) => return Ok(false),
        Err(e) => return Err(io_err(root, rel, e)),
    };
    f.read_to_string(buf).map_err(|e| io_err(root, rel, e))?;
    Ok(true)
}

/// NotFound, and EOPNOTSUPP from /proc/pressure/* when PSI is compiled in
/// but switched off (psi=0).
fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::Unsupported
    )
}

/// A file that must exist, into `buf`: absence is an error naming the path.
pub fn read_required_into(root: &Path, rel: &str, buf: &mut String) -> Result<(), CollectError> {
    if read_into(root, rel, buf)? {
        Ok(())
    } else {
        Err(io_err(root, rel, std::io::ErrorKind::NotFound.into()))
    }
}

/// A file that must exist.
pub fn read(root: &Path, rel: &str) -> Result<String, CollectError> {
    let mut s = String::new();
    read_required_into(root, rel, &mut s)?;
    Ok(s)
}

/// A file whose absence is normal: Ok(None).
pub fn read_optional(root: &Path, rel: &str) -> Result<Option<String>, CollectError> {
    let mut s = String::new();
    Ok(read_into(root, rel, &mut s)?.then_some(s))
}

/// A sysctl holding one unsigned integer; absent → None, anything else
/// than one number → an error naming the file and line 1.
pub fn read_u64(root: &Path, rel: &str) -> Result<Option<u64>, CollectError> {
    let Some(t) = read_optional(root, rel)? else {
        return Ok(None);
    };
    let v = t.trim();
    v.parse().map(Some).map_err(|e| {
        parse_err(
            root,
            rel,
            LineError::new(1, format!("{v:?} is not one unsigned number: {e}")),
        )
    })
}

/// `gc_thresh1..3`-style triples: all three files present → Some, none → None.
pub fn read_u32_triple(root: &Path, rels: [&str; 3]) -> Result<Option<[u32; 3]>, CollectError> {
    let mut out = [0u32; 3];
    for (slot, rel) in out.iter_mut().zip(rels) {
        let Some(v) = read_u64(root, rel)? else {
            return Ok(None);
        };
        *slot = u32::try_from(v)
            .map_err(|_| parse_err(root, rel, LineError::new(1, format!("{v} exceeds u32"))))?;
    }
    Ok(Some(out))
}

pub fn parse_err(root: &Path, rel: &str, e: LineError) -> CollectError {
    CollectError::Parse {
        path: path(root, rel).display().to_string(),
        line: e.line,
        msg: e.msg,
    }
}
