//! A wake-up a thread can poll beside its sockets: an eventfd another
//! thread writes to (a stop request, new work). Lets the agent's threads
//! sleep until something happens instead of waking on a short timer to
//! look at a flag (issue #8: at 500 vNICs those timers were ~100 wake-ups
//! a second of an otherwise idle agent).
//!
//! `Stop` is the usual use: a flag plus its wake-up, set once.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An eventfd (non-blocking, close-on-exec). Without one (eventfd failed:
/// out of descriptors) `fd()` is None and pollers fall back to their timeout.
#[derive(Debug)]
pub struct Wake {
    fd: Option<OwnedFd>,
}

impl Default for Wake {
    fn default() -> Self {
        Wake::new()
    }
}

impl Wake {
    pub fn new() -> Wake {
        // SAFETY: eventfd takes no pointers; a valid descriptor is owned here.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        Wake {
            fd: (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) }),
        }
    }

    /// Makes the fd readable until `drain`.
    pub fn wake(&self) {
        if let Some(fd) = &self.fd {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Clears what `wake` set (non-blocking).
    pub fn drain(&self) {
        if let Some(fd) = &self.fd {
            let mut n: u64 = 0;
            // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
            let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        }
    }

    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// The pollfd for this wake-up (fd -1, ignored by poll, without an eventfd).
    pub fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: self.fd().unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        }
    }

    /// Waits until woken or `timeout` (None: no limit) and clears the
    /// wake-up. Without an eventfd, sleeps at most 100 ms (the caller looks
    /// at its flag again).
    pub fn wait(&self, timeout: Option<Duration>) {
        let mut pfd = [self.pollfd()];
        if self.fd.is_none() {
            std::thread::sleep(timeout.unwrap_or(FALLBACK).min(FALLBACK));
            return;
        }
        poll(&mut pfd, timeout);
        if pfd[0].revents & libc::POLLIN != 0 {
            self.drain();
        }
    }
}

/// How long a poller without an eventfd sleeps before looking at its flag.
const FALLBACK: Duration = Duration::from_millis(100);

/// poll(2) with a Duration (None: no limit; rounded up to whole ms so a
/// deadline is never woken for early). Returns poll's result.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> i32 {
    let ms = match timeout {
        None => -1,
        Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: fds is a valid array of pollfd for its length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) }
}

/// A stop request: the flag threads look at, and a wake-up they poll so
/// they see it at once.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
    wake: Wake,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.wake.wake();
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Readable once `set` was called (never drained: it stays readable).
    pub fn pollfd(&self) -> libc::pollfd {
        self.wake.pollfd()
    }

    /// Sleeps until stopped or `timeout`; returns whether stopped.
    pub fn sleep(&self, timeout: Duration) -> bool {
        if !self.is_set() {
            let mut pfd = [self.pollfd()];
            if self.wake.fd().is_none() {
                std::thread::sleep(timeout.min(FALLBACK));
            } else {
                poll(&mut pfd, Some(timeout));
            }
        }
        self.is_set()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_stop_wakes_a_sleeping_thread_at_once() {
        let stop = Arc::new(Stop::new());
        let s = Arc::clone(&stop);
        let t0 = Instant::now();
        let th = std::thread::spawn(move || s.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        stop.set();
        assert!(th.join().unwrap());
        assert!(t0.elapsed() < Duration::from_secs(5));
        // It stays set: a later sleep returns at once.
        assert!(stop.sleep(Duration::from_secs(30)));
    }

    #[test]
    fn a_wake_is_cleared_by_the_wait_that_saw_it() {
        let w = Wake::new();
        w.wake();
        w.wake();
        let t0 = Instant::now();
        w.wait(Some(Duration::from_secs(30)));
        assert!(t0.elapsed() < Duration::from_secs(5));
        let t0 = Instant::now();
        w.wait(Some(Duration::from_millis(30)));
        assert!(t0.elapsed() >= Duration::from_millis(30), "not cleared");
    }
}
