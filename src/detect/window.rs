//! Sliding windows over cumulative counters: "how much did this counter
//! move in the last W seconds", from the raw values of successive samples.
//! A counter that goes backwards (an interface re-created, the agent's
//! prober restarted) starts its window afresh rather than yielding a
//! negative or huge delta.
//!
//! Links and guest probes, thousands of series at 500 vNICs, have their own
//! tables keyed by ifindex / interface name, so recording them every sample
//! formats no key and allocates nothing; the few other counters are keyed
//! by a string.

use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// The link counters the detector watches.
#[derive(Clone, Copy, Debug)]
pub enum LinkCounter {
    Rx = 0,
    Tx = 1,
    TxDropped = 2,
}

/// The guest-probe counters the detector watches (per probed interface).
#[derive(Clone, Copy, Debug)]
pub enum ProbeCounter {
    Sent = 0,
    Answered = 1,
}

#[derive(Default, Debug)]
pub struct Windows {
    /// Per key: (monotonic ns, cumulative value), oldest first; one entry at
    /// or before the window start is kept so a delta covers the whole window.
    series: FxHashMap<String, Series>,
    /// Per ifindex: the link's name and its counters. A link's series are
    /// its (name, ifindex): another name on the same ifindex starts afresh.
    links: FxHashMap<u32, LinkSeries>,
    /// Per probed interface name.
    probes: FxHashMap<String, Group<2>>,
}

#[derive(Default, Debug)]
struct Series {
    points: VecDeque<(u64, f64)>,
    /// When the key was last recorded.
    seen_at: u64,
}

/// Counters always recorded together.
#[derive(Debug)]
struct Group<const N: usize> {
    points: [VecDeque<(u64, f64)>; N],
    seen_at: u64,
}

impl<const N: usize> Default for Group<N> {
    fn default() -> Self {
        Group {
            points: std::array::from_fn(|_| VecDeque::new()),
            seen_at: 0,
        }
    }
}

#[derive(Debug)]
struct LinkSeries {
    name: String,
    counters: Group<3>,
}

fn push(points: &mut VecDeque<(u64, f64)>, mono_ns: u64, value: f64) {
    if points.back().is_some_and(|(_, v)| value < *v) {
        points.clear();
    }
    points.push_back((mono_ns, value));
}

/// Drops points older than the window's opening one.
fn trim_points(points: &mut VecDeque<(u64, f64)>, opens: u64) {
    while points.len() > 1 && points[1].0 <= opens {
        points.pop_front();
    }
}

fn delta_of(points: &VecDeque<(u64, f64)>) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    Some(points.back()?.1 - points.front()?.1)
}

impl<const N: usize> Group<N> {
    fn record(&mut self, mono_ns: u64, values: [f64; N]) {
        for (p, v) in self.points.iter_mut().zip(values) {
            push(p, mono_ns, v);
        }
        self.seen_at = mono_ns;
    }

    fn trim(&mut self, opens: u64, start: u64) -> bool {
        for p in self.points.iter_mut() {
            trim_points(p, opens);
        }
        self.seen_at > start
    }
}

impl Windows {
    pub fn record(&mut self, key: &str, mono_ns: u64, value: f64) {
        // Allocate the key only when it is new.
        let s = match self.series.get_mut(key) {
            Some(s) => s,
            None => self.series.entry(key.to_string()).or_default(),
        };
        push(&mut s.points, mono_ns, value);
        s.seen_at = mono_ns;
    }

    /// Records one link's counters, in `LinkCounter` order.
    pub fn record_link(&mut self, ifindex: u32, name: &str, mono_ns: u64, values: [f64; 3]) {
        let l = self.links.entry(ifindex).or_insert_with(|| LinkSeries {
            name: name.to_string(),
            counters: Group::default(),
        });
        if l.name != name {
            l.name = name.to_string();
            l.counters = Group::default();
        }
        l.counters.record(mono_ns, values);
    }

    /// Records one probed interface's counters, in `ProbeCounter` order.
    pub fn record_probe(&mut self, iface: &str, mono_ns: u64, values: [f64; 2]) {
        let g = match self.probes.get_mut(iface) {
            Some(g) => g,
            None => self.probes.entry(iface.to_string()).or_default(),
        };
        g.record(mono_ns, values);
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
            trim_points(&mut s.points, opens);
            s.seen_at > start
        });
        self.links.retain(|_, l| l.counters.trim(opens, start));
        self.probes.retain(|_, g| g.trim(opens, start));
    }

    /// How much `key` moved over the window; None when it has fewer than two points.
    pub fn delta(&self, key: &str) -> Option<f64> {
        delta_of(&self.series.get(key)?.points)
    }

    /// How much link `name` (at `ifindex`) counter `c` moved over the window.
    pub fn link_delta(&self, ifindex: u32, name: &str, c: LinkCounter) -> Option<f64> {
        let l = self.links.get(&ifindex).filter(|l| l.name == name)?;
        delta_of(&l.counters.points[c as usize])
    }

    /// How much probed interface `iface`'s counter `c` moved over the window.
    pub fn probe_delta(&self, iface: &str, c: ProbeCounter) -> Option<f64> {
        delta_of(&self.probes.get(iface)?.points[c as usize])
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

    #[test]
    fn a_link_series_is_its_name_and_ifindex() {
        let mut w = Windows::default();
        for i in 1..4u64 {
            w.record_link(
                7,
                "vnet0",
                i * S,
                [(i - 1) as f64, 2.0 * (i - 1) as f64, 0.0],
            );
            w.trim(i * S, 2 * S);
        }
        assert_eq!(w.link_delta(7, "vnet0", LinkCounter::Rx), Some(2.0));
        assert_eq!(w.link_delta(7, "vnet0", LinkCounter::Tx), Some(4.0));
        assert_eq!(w.link_delta(7, "vnet1", LinkCounter::Rx), None);
        assert_eq!(w.link_delta(8, "vnet0", LinkCounter::Rx), None);
        // Renamed on the same ifindex: a fresh series, the old name is gone.
        w.record_link(7, "vnet1", 4 * S, [10.0, 10.0, 0.0]);
        assert_eq!(w.link_delta(7, "vnet1", LinkCounter::Rx), None);
        assert_eq!(w.link_delta(7, "vnet0", LinkCounter::Rx), None);
        w.record_link(7, "vnet1", 5 * S, [11.0, 10.0, 0.0]);
        assert_eq!(w.link_delta(7, "vnet1", LinkCounter::Rx), Some(1.0));
        // One counter going backwards resets only that counter's window.
        w.record_link(7, "vnet1", 6 * S, [1.0, 12.0, 0.0]);
        assert_eq!(w.link_delta(7, "vnet1", LinkCounter::Rx), None);
        assert_eq!(w.link_delta(7, "vnet1", LinkCounter::Tx), Some(2.0));
        // Probes by interface name; both kinds go away when no longer recorded.
        w.record_probe("vnet1", 6 * S, [1.0, 0.0]);
        w.record_probe("vnet1", 7 * S, [3.0, 1.0]);
        assert_eq!(w.probe_delta("vnet1", ProbeCounter::Sent), Some(2.0));
        assert_eq!(w.probe_delta("vnet1", ProbeCounter::Answered), Some(1.0));
        w.trim(20 * S, 2 * S);
        assert_eq!(w.link_delta(7, "vnet1", LinkCounter::Tx), None);
        assert_eq!(w.probe_delta("vnet1", ProbeCounter::Sent), None);
    }
}
