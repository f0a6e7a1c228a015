//! Sliding windows over cumulative counters: "how much did this counter
//! move in the last W seconds", from the raw values of successive samples.
//! A counter that goes backwards (an interface re-created, the agent's
//! prober restarted) starts its window afresh rather than yielding a
//! negative or huge delta.

use std::collections::{HashMap, VecDeque};

#[derive(Default, Debug)]
pub struct Windows {
    /// Per key: (monotonic ns, cumulative value), oldest first; one entry at
    /// or before the window start is kept so a delta covers the whole window.
    series: HashMap<String, Series>,
}

#[derive(Default, Debug)]
struct Series {
    points: VecDeque<(u64, f64)>,
    /// When the key was last recorded.
    seen_at: u64,
}

impl Windows {
    pub fn record(&mut self, key: &str, mono_ns: u64, value: f64) {
        // Thousands of keys per sample: allocate the key only when it is new.
        let s = match self.series.get_mut(key) {
            Some(s) => s,
            None => self.series.entry(key.to_string()).or_default(),
        };
        if s.points.back().is_some_and(|(_, v)| value < *v) {
            s.points.clear();
        }
        s.points.push_back((mono_ns, value));
        s.seen_at = mono_ns;
    }

    /// Drops what is older than the window (keeping one point at its start)
    /// and keys not recorded within it.
    pub fn trim(&mut self, now_ns: u64, window_ns: u64) {
        let start = now_ns.saturating_sub(window_ns);
        // A point a little after the start (a sample that started a few ms
        // later than this one) opens the window: otherwise half of all
        // windows would reach one whole interval further back, and every
        // signal would wait that much longer to see a clean window.
        let opens = start + window_ns / 20;
        self.series.retain(|_, s| {
            while s.points.len() > 1 && s.points[1].0 <= opens {
                s.points.pop_front();
            }
            s.seen_at > start
        });
    }

    /// How much `key` moved over the window; None when it has fewer than two points.
    pub fn delta(&self, key: &str) -> Option<f64> {
        let s = &self.series.get(key)?.points;
        if s.len() < 2 {
            return None;
        }
        Some(s.back()?.1 - s.front()?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: u64 = 1_000_000_000;

    #[test]
    fn delta_covers_the_window_and_resets_on_a_counter_reset() {
        let mut w = Windows::default();
        for i in 0..10u64 {
            w.record("a", i * S, (i * 5) as f64);
            w.trim(i * S, 2 * S);
        }
        assert_eq!(w.delta("a"), Some(10.0));
        w.record("a", 10 * S, 3.0);
        w.trim(10 * S, 2 * S);
        assert_eq!(w.delta("a"), None);
        w.record("a", 11 * S, 4.0);
        assert_eq!(w.delta("a"), Some(1.0));
        // Sampling jitter: the point 2 s back started 3 ms late; it still
        // opens the window (the delta covers 2 s, not 3 s).
        let mut j = Windows::default();
        j.record("b", 0, 0.0);
        j.record("b", S + 3_000_000, 1.0);
        j.record("b", 2 * S + 1_000_000, 5.0);
        j.record("b", 3 * S, 9.0);
        j.trim(3 * S, 2 * S);
        assert_eq!(j.delta("b"), Some(8.0));
        // A key no longer recorded goes away.
        w.trim(20 * S, 2 * S);
        assert_eq!(w.delta("a"), None);
    }
}
