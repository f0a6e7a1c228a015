//! How far the current upload is, for the progress bar and `status`:
//! bytes of finished requests plus what the paced body has handed to the
//! socket in the request under way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    /// Bytes of requests (parts) that finished.
    base: AtomicU64,
    /// The paced client's counter when the request under way started.
    mark: AtomicU64,
    /// The paced client's counter (throttle.rs).
    pub sent: Arc<AtomicU64>,
}

impl Progress {
    pub fn new(sent: Arc<AtomicU64>) -> Progress {
        Progress {
            sent,
            ..Default::default()
        }
    }

    pub fn start(&self, total: u64, already: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.base.store(already, Ordering::Relaxed);
        self.mark
            .store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A request of `bytes` is done (whatever the counter says: a retried
    /// request must not count twice).
    pub fn finished(&self, bytes: u64) {
        self.base.fetch_add(bytes, Ordering::Relaxed);
        self.mark
            .store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// A request failed: what it had sent no longer counts.
    pub fn reset_request(&self) {
        self.mark
            .store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        let in_flight = self
            .sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.mark.load(Ordering::Relaxed));
        (self.base.load(Ordering::Relaxed) + in_flight).min(self.total.load(Ordering::Relaxed))
    }
}
