//! Entering a network namespace for the whole agent process, the way
//! `ip netns exec` does: setns(CLONE_NEWNET), then a private mount namespace
//! with /sys remounted so sysfs shows the namespace's interfaces.
//!
//! Must be called before any thread is started: setns() changes only the
//! calling thread, and threads spawned later inherit it.

use std::fs::File;
use std::path::PathBuf;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {errno}")]
    Setns { path: String, errno: nix::Error },
    #[error("remounting /sys for namespace {path}: {errno}")]
    Mount { path: String, errno: nix::Error },
}

/// `name` is a name under /run/netns or an absolute path (e.g. /proc/PID/ns/net).
pub fn path_of(name: &str) -> PathBuf {
    if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    }
}

pub fn enter_process(name: &str) -> Result<(), NetnsError> {
    let path = path_of(name);
    let p = path.display().to_string();
    let f = File::open(&path).map_err(|source| NetnsError::Open {
        path: p.clone(),
        source,
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Setns {
        path: p.clone(),
        errno,
    })?;
    let m = |errno| NetnsError::Mount {
        path: p.clone(),
        errno,
    };
    unshare(CloneFlags::CLONE_NEWNS).map_err(m)?;
    // Do not propagate our remount back to the host's mount namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(m)?;
    umount2("/sys", MntFlags::MNT_DETACH).map_err(m)?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(m)?;
    Ok(())
}

/// Enters a network namespace for the calling thread only (tests, lab
/// helpers). /proc/thread-self/net then shows the namespace; /sys does not.
pub fn enter_thread(name: &str) -> Result<(), NetnsError> {
    let path = path_of(name);
    let p = path.display().to_string();
    let f = File::open(&path).map_err(|source| NetnsError::Open {
        path: p.clone(),
        source,
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Setns { path: p, errno })
}
