//! A global (root-namespace) sysctl changed for a lab fault and always put
//! back: when the guard drops (fault reverted, lab dropped, test panicked),
//! and — should the process be killed before that — by the next lab that
//! starts, from a marker file naming the dead process and the old value.
//! Only for faults that cannot be made inside a namespace (catalogue F3:
//! nf_conntrack_max is global).

use std::path::{Path, PathBuf};

use super::LabError;

const MARKER_DIR: &str = "/run/hvflight-lab";

pub struct GlobalSysctl {
    path: PathBuf,
    original: String,
    marker: PathBuf,
}

impl GlobalSysctl {
    /// Writes `value` to `/proc/sys/…` `path` (read in the root namespace:
    /// the test process's own), remembering the old value on disk first.
    pub fn set(path: &str, value: &str) -> Result<GlobalSysctl, LabError> {
        let path = PathBuf::from(path);
        let original = std::fs::read_to_string(&path)?.trim().to_string();
        std::fs::create_dir_all(MARKER_DIR)?;
        let name = path.to_string_lossy().replace('/', "_");
        let marker = Path::new(MARKER_DIR).join(format!("{}-{name}", std::process::id()));
        std::fs::write(&marker, format!("{}\n{original}\n", path.display()))?;
        if let Err(e) = std::fs::write(&path, value) {
            let _ = std::fs::remove_file(&marker);
            return Err(LabError::Invalid(format!(
                "{}: cannot write {value}: {e}",
                path.display()
            )));
        }
        Ok(GlobalSysctl {
            path,
            original,
            marker,
        })
    }

    pub fn original(&self) -> &str {
        &self.original
    }
}

impl Drop for GlobalSysctl {
    fn drop(&mut self) {
        match std::fs::write(&self.path, &self.original) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.marker);
            }
            Err(e) => eprintln!(
                "lab: could not restore {} to {}: {e} (marker {} kept)",
                self.path.display(),
                self.original,
                self.marker.display()
            ),
        }
    }
}

/// Restores sysctls left changed by lab processes that died; returns how many.
pub fn restore_stale() -> usize {
    let Ok(dir) = std::fs::read_dir(MARKER_DIR) else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut lines = text.lines();
        if let (Some(path), Some(orig)) = (lines.next(), lines.next()) {
            if path.starts_with("/proc/sys/") && std::fs::write(path, orig).is_ok() {
                let _ = std::fs::remove_file(e.path());
                n += 1;
            }
        }
    }
    n
}
