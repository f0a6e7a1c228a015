//! Thin reading of /proc and sysctl files under an injectable root.

use std::path::Path;

use crate::collect::CollectError;

/// Reads `root/rel`; a missing file is `Ok(None)` (normal when a module is
/// not loaded or the file is global-only and we are in a child namespace).
pub fn read_optional(root: &Path, rel: &str) -> Result<Option<String>, CollectError> {
    let p = root.join(rel);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CollectError::io(p.display().to_string(), e)),
    }
}

pub fn read(root: &Path, rel: &str) -> Result<String, CollectError> {
    let p = root.join(rel);
    std::fs::read_to_string(&p).map_err(|e| CollectError::io(p.display().to_string(), e))
}

/// A sysctl holding one integer; missing → None, garbage → error naming the file.
pub fn read_u64(root: &Path, rel: &str) -> Result<Option<u64>, CollectError> {
    match read_optional(root, rel)? {
        None => Ok(None),
        Some(t) => t.trim().parse().map(Some).map_err(|e| CollectError::Parse {
            path: root.join(rel).display().to_string(),
            line: 1,
            msg: format!("{:?}: {e}", t.trim()),
        }),
    }
}

pub fn parse_err(root: &Path, rel: &str, line: usize, msg: String) -> CollectError {
    CollectError::Parse {
        path: root.join(rel).display().to_string(),
        line,
        msg,
    }
}
