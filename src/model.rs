//! Rates and deltas from two raw samples — the only place that derives.
//!
//! `Model::new(&cur, prev)` is pure: the live view (tail, metrics, detector)
//! and replay (history, analyzer) share it, so they can never disagree.
//! Counter semantics:
//! - the interval comes from CLOCK_MONOTONIC, never the wall clock, so a
//!   clock step cannot produce a negative or huge rate; a reboot between the
//!   samples (boottime went backwards) gives no rates at all;
//! - an interface that was re-created (same name, new ifindex) or whose
//!   counter went backwards without a plausible wrap is a *reset*: its rates
//!   are absent for that interval (marked `reset`), never negative or spiking;
//! - 32-bit counters (softnet, carrier_changes) wrap at 2^32; a decrease
//!   from the top quarter into the bottom quarter is taken as a wrap.

use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::sample::{LinkStats, Sample};

/// Width of a kernel counter, for wrap handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    U32,
    U64,
}

/// Increase of a counter between two readings, or None when it was reset.
pub fn counter_delta(prev: u64, cur: u64, width: Width) -> Option<u64> {
    if cur >= prev {
        return Some(cur - prev);
    }
    match width {
        Width::U32 if prev >= 0xC000_0000 && prev <= u32::MAX as u64 && cur < 0x4000_0000 => {
            Some(cur + (1u64 << 32) - prev)
        }
        Width::U64 if prev >= 0xC000_0000_0000_0000 && cur < 0x4000_0000_0000_0000 => {
            Some(cur.wrapping_sub(prev))
        }
        _ => None,
    }
}

fn rate(prev: u64, cur: u64, width: Width, interval_s: f64) -> Option<f64> {
    counter_delta(prev, cur, width).map(|d| d as f64 / interval_s)
}

/// Per-second rates of one interface.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct LinkRates {
    pub ifindex: u32,
    pub rx_packets_per_s: f64,
    pub tx_packets_per_s: f64,
    pub rx_bytes_per_s: f64,
    pub tx_bytes_per_s: f64,
    pub rx_dropped_per_s: f64,
    pub tx_dropped_per_s: f64,
    pub rx_errors_per_s: f64,
    pub tx_errors_per_s: f64,
    /// carrier_changes increase in the interval.
    pub carrier_changes: u64,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// Seconds between the two samples (monotonic). 0 when there is no previous sample.
    pub interval_s: f64,
    /// Rates per interface name; interfaces new or reset in this interval are absent.
    pub links: BTreeMap<String, LinkRates>,
    /// Interfaces whose counters were reset (re-created or went backwards).
    pub resets: Vec<String>,
    /// Sum over CPUs of softnet drops / time_squeeze per second.
    pub softnet_dropped_per_s: Option<f64>,
    pub softnet_time_squeeze_per_s: Option<f64>,
    /// Conntrack stat rates ("drop", "early_drop", "insert_failed", …) per second.
    pub conntrack_per_s: BTreeMap<String, f64>,
    /// Qdisc drops per second, keyed "dev handle".
    pub qdisc_drops_per_s: BTreeMap<String, f64>,
    /// Fraction of CPU time busy (0..1) over the interval, all CPUs.
    pub cpu_busy: Option<f64>,
    /// Kernel drops per second by interface and reason name (the `drops`
    /// section, summed over protocols; interface "" = no device). Only
    /// reasons that dropped in the interval; empty when the program was
    /// (re)loaded in between.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub drops_per_s: DropRates,
    /// Drops the full kernel map could not count per key, per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_overflow_per_s: Option<f64>,
}

impl Model {
    /// Derives rates of `cur` against `prev`. With no usable previous sample
    /// (none, older boot, monotonic clock not advancing) the model is empty.
    pub fn new(cur: &Sample, prev: Option<&Sample>) -> Model {
        let mut m = Model::default();
        m.refresh(cur, prev);
        m
    }

    /// `*self = Model::new(cur, prev)`, reusing this model's maps: the agent
    /// derives one model a second, and a fresh one allocated a key string
    /// per interface and per qdisc (~1000 at 500 vNICs) only to free them
    /// a second later.
    pub fn refresh(&mut self, cur: &Sample, prev: Option<&Sample>) {
        // Every kept entry is marked (a NaN rate: a real one is finite,
        // the interval being > 0); what this pair of samples gives a rate
        // to is overwritten, and what is still marked after is gone.
        let mut links = std::mem::take(&mut self.links);
        links
            .values_mut()
            .for_each(|r| r.rx_packets_per_s = f64::NAN);
        let mut qdiscs = std::mem::take(&mut self.qdisc_drops_per_s);
        qdiscs.values_mut().for_each(|v| *v = f64::NAN);
        let mut resets = std::mem::take(&mut self.resets);
        resets.clear();
        *self = Model {
            resets,
            ..Model::default()
        };
        self.derive(cur, prev, &mut links, &mut qdiscs);
        links.retain(|_, r| !r.rx_packets_per_s.is_nan());
        qdiscs.retain(|_, v| !v.is_nan());
        self.links = links;
        self.qdisc_drops_per_s = qdiscs;
    }

    /// Fills `self` (fresh but for its emptied `resets`); link rates and
    /// qdisc drop rates go into `links` and `qdiscs`, overwriting the
    /// entries they already have.
    fn derive(
        &mut self,
        cur: &Sample,
        prev: Option<&Sample>,
        links: &mut BTreeMap<String, LinkRates>,
        qdiscs: &mut BTreeMap<String, f64>,
    ) {
        let m = self;
        let Some(prev) = prev else { return };
        if cur.boot_ns != 0 && prev.boot_ns != 0 && cur.boot_ns < prev.boot_ns {
            return; // rebooted in between: counters restarted from zero
        }
        if cur.mono_ns <= prev.mono_ns {
            return;
        }
        let dt = (cur.mono_ns - prev.mono_ns) as f64 / 1e9;
        m.interval_s = dt;

        if let (Some(cl), Some(pl)) = (&cur.links, &prev.links) {
            // The kernel lists links in the same order each time: the link
            // at the same place is tried first, the map built only when
            // that misses.
            let mut prev_by_name: Option<FxHashMap<&str, _>> = None;
            for (i, l) in cl.iter().enumerate() {
                let p = match pl.get(i).filter(|p| p.name == l.name) {
                    Some(p) => p,
                    None => {
                        let by_name = prev_by_name.get_or_insert_with(|| {
                            pl.iter().map(|l| (l.name.as_str(), l)).collect()
                        });
                        let Some(p) = by_name.get(l.name.as_str()) else {
                            continue;
                        };
                        p
                    }
                };
                if p.ifindex != l.ifindex {
                    m.resets.push(l.name.clone());
                    continue;
                }
                match link_rates(&p.stats, &l.stats, dt) {
                    Some(mut r) => {
                        r.ifindex = l.ifindex;
                        r.carrier_changes = match (p.carrier_changes, l.carrier_changes) {
                            (Some(a), Some(b)) => {
                                counter_delta(a as u64, b as u64, Width::U32).unwrap_or(0)
                            }
                            _ => 0,
                        };
                        match links.get_mut(l.name.as_str()) {
                            Some(e) => *e = r,
                            None => {
                                links.insert(l.name.clone(), r);
                            }
                        }
                    }
                    None => m.resets.push(l.name.clone()),
                }
            }
        }

        if let (Some(cs), Some(ps)) = (&cur.softnet, &prev.softnet) {
            let (mut drops, mut squeeze, mut ok) = (0.0, 0.0, true);
            for c in cs {
                if let Some(p) = ps.iter().find(|p| p.cpu == c.cpu) {
                    match (
                        rate(p.dropped, c.dropped, Width::U32, dt),
                        rate(p.time_squeeze, c.time_squeeze, Width::U32, dt),
                    ) {
                        (Some(d), Some(s)) => {
                            drops += d;
                            squeeze += s;
                        }
                        _ => ok = false,
                    }
                }
            }
            if ok {
                m.softnet_dropped_per_s = Some(drops);
                m.softnet_time_squeeze_per_s = Some(squeeze);
            }
        }

        if let (Some(cc), Some(pc)) = (&cur.conntrack, &prev.conntrack) {
            for (k, v) in &cc.stats {
                if let Some(r) = pc.stats.get(k).and_then(|p| rate(*p, *v, Width::U64, dt)) {
                    m.conntrack_per_s.insert(k.clone(), r);
                }
            }
        }

        let mut key = String::new();
        if let (Some(cq), Some(pq)) = (&cur.qdiscs, &prev.qdiscs) {
            // One qdisc per vNIC at least: a scan per qdisc would be quadratic.
            let mut prev_by_key: FxHashMap<(u32, &str), &crate::sample::Qdisc> =
                FxHashMap::default();
            for p in pq {
                prev_by_key
                    .entry((p.ifindex, p.handle.as_str()))
                    .or_insert(p);
            }
            for q in cq {
                if let Some(p) = prev_by_key.get(&(q.ifindex, q.handle.as_str())) {
                    if let Some(r) = rate(p.drops, q.drops, Width::U32, dt) {
                        use std::fmt::Write as _;
                        key.clear();
                        let _ = write!(key, "{} {}", q.dev, q.handle);
                        match qdiscs.get_mut(key.as_str()) {
                            Some(v) => *v = r,
                            None => {
                                qdiscs.insert(key.clone(), r);
                            }
                        }
                    }
                }
            }
        }

        if let (Some(cd), Some(pd)) = (&cur.drops, &prev.drops) {
            (m.drops_per_s, m.drop_overflow_per_s) = drop_rates(cd, pd, dt);
        }

        if let (Some(cs), Some(ps)) = (&cur.system, &prev.system) {
            let busy = |c: &crate::sample::proc::CpuTimes| {
                c.user + c.nice + c.system + c.irq + c.softirq + c.steal
            };
            let total = |c: &crate::sample::proc::CpuTimes| busy(c) + c.idle + c.iowait;
            if let (Some(db), Some(dt_)) = (
                counter_delta(busy(&ps.cpu), busy(&cs.cpu), Width::U64),
                counter_delta(total(&ps.cpu), total(&cs.cpu), Width::U64),
            ) {
                if dt_ > 0 {
                    m.cpu_busy = Some(db as f64 / dt_ as f64);
                }
            }
        }
    }
}

/// Kernel drops per second by interface and reason between two `drops`
/// sections `dt` seconds apart, and the overflow rate. A key absent before
/// appeared in the interval (the program creates it at its first drop, or
/// re-creates it after the agent pruned it), so all of its count is new; a
/// count that went down is a reset. A re-load restarts every counter: no rates.
pub type DropRates = BTreeMap<String, BTreeMap<String, f64>>;

pub fn drop_rates(
    cur: &crate::sample::Drops,
    prev: &crate::sample::Drops,
    dt: f64,
) -> (DropRates, Option<f64>) {
    let mut out = DropRates::new();
    if cur.loaded_mono_ns != prev.loaded_mono_ns || cur.netns_inode != prev.netns_inode || dt <= 0.0
    {
        return (out, None);
    }
    let before: BTreeMap<(u32, &str, u16), u64> = prev
        .entries
        .iter()
        .map(|e| ((e.ifindex, e.reason.as_str(), e.protocol), e.count))
        .collect();
    for e in &cur.entries {
        let delta = match before.get(&(e.ifindex, e.reason.as_str(), e.protocol)) {
            Some(p) => counter_delta(*p, e.count, Width::U64),
            None => Some(e.count),
        };
        if let Some(d) = delta.filter(|d| *d > 0) {
            *out.entry(e.interface.clone())
                .or_default()
                .entry(e.reason.clone())
                .or_default() += d as f64 / dt;
        }
    }
    (out, rate(prev.overflow, cur.overflow, Width::U64, dt))
}

/// Rates of one interface, or None if any main counter went backwards
/// (the interface was reset; 64-bit kernel counters do not wrap in practice).
fn link_rates(p: &LinkStats, c: &LinkStats, dt: f64) -> Option<LinkRates> {
    let r = |a: u64, b: u64| rate(a, b, Width::U64, dt);
    Some(LinkRates {
        ifindex: 0,
        rx_packets_per_s: r(p.rx_packets, c.rx_packets)?,
        tx_packets_per_s: r(p.tx_packets, c.tx_packets)?,
        rx_bytes_per_s: r(p.rx_bytes, c.rx_bytes)?,
        tx_bytes_per_s: r(p.tx_bytes, c.tx_bytes)?,
        rx_dropped_per_s: r(p.rx_dropped, c.rx_dropped)?,
        tx_dropped_per_s: r(p.tx_dropped, c.tx_dropped)?,
        rx_errors_per_s: r(p.rx_errors, c.rx_errors)?,
        tx_errors_per_s: r(p.tx_errors, c.tx_errors)?,
        carrier_changes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Link, SoftnetCpu};

    fn sample(mono_s: u64, links: Vec<Link>) -> Sample {
        Sample {
            mono_ns: mono_s * 1_000_000_000,
            boot_ns: mono_s * 1_000_000_000,
            links: Some(links),
            ..Default::default()
        }
    }

    fn link(name: &str, ifindex: u32, rx_packets: u64, tx_bytes: u64) -> Link {
        Link {
            name: name.into(),
            ifindex,
            stats: LinkStats {
                rx_packets,
                tx_bytes,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_refreshed_model_is_the_model_new_derives() {
        // The agent refreshes one model a second: whatever the model held
        // before (links and qdiscs since gone, reset, renamed, multi-queue
        // children sharing a key), it must equal a fresh one.
        fn qdisc(dev: &str, ifindex: u32, handle: &str, drops: u64) -> crate::sample::Qdisc {
            crate::sample::Qdisc {
                ifindex,
                dev: dev.into(),
                handle: handle.into(),
                drops,
                ..Default::default()
            }
        }
        let with = |mono_s: u64, links: Vec<Link>, q: Vec<crate::sample::Qdisc>| Sample {
            qdiscs: Some(q),
            ..sample(mono_s, links)
        };
        let seq = [
            with(
                1,
                vec![
                    link("a", 1, 10, 10),
                    link("b", 2, 10, 10),
                    link("c", 3, 5, 5),
                ],
                vec![
                    qdisc("a", 1, "0:", 1),
                    qdisc("eth0", 9, "0:", 3),
                    qdisc("eth0", 9, "0:", 4),
                ],
            ),
            with(
                2,
                vec![
                    link("a", 1, 20, 30),
                    link("b", 2, 30, 30),
                    link("c", 3, 9, 9),
                ],
                vec![
                    qdisc("a", 1, "0:", 2),
                    qdisc("eth0", 9, "0:", 5),
                    qdisc("eth0", 9, "0:", 9),
                ],
            ),
            // b went away, c was re-created, d is new; a's qdisc went away.
            with(
                3,
                vec![link("d", 7, 1, 1), link("a", 1, 40, 50), link("c", 8, 1, 1)],
                vec![qdisc("eth0", 9, "0:", 6), qdisc("eth0", 9, "0:", 12)],
            ),
            // a's counters went backwards (a reset).
            with(
                4,
                vec![link("d", 7, 5, 5), link("a", 1, 1, 1), link("c", 8, 3, 3)],
                vec![qdisc("eth0", 9, "0:", 7), qdisc("d", 7, "0:", 1)],
            ),
            with(
                5,
                vec![link("d", 7, 9, 9), link("a", 1, 6, 6), link("c", 8, 4, 4)],
                vec![qdisc("eth0", 9, "0:", 8), qdisc("d", 7, "0:", 3)],
            ),
        ];
        let mut m = Model::default();
        m.refresh(&seq[0], None);
        assert_eq!(m, Model::new(&seq[0], None));
        for w in seq.windows(2) {
            m.refresh(&w[1], Some(&w[0]));
            let fresh = Model::new(&w[1], Some(&w[0]));
            assert_eq!(m, fresh, "at t={}", w[1].mono_ns / 1_000_000_000);
            assert!(!fresh.links.is_empty());
        }
        // The pairs above exercise what they should.
        let at3 = Model::new(&seq[2], Some(&seq[1]));
        assert_eq!(at3.links.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(at3.resets, ["c"]);
        assert_eq!(at3.qdisc_drops_per_s.len(), 1);
        let at4 = Model::new(&seq[3], Some(&seq[2]));
        assert_eq!(at4.resets, ["a"]);
        // A pair without rates (no previous sample) empties it again.
        m.refresh(&seq[4], None);
        assert_eq!(m, Model::default());
        assert_eq!(m, Model::new(&seq[4], None));
    }

    #[test]
    fn rates_are_per_second_of_monotonic_time() {
        let a = sample(10, vec![link("vnet0", 5, 100, 1000)]);
        let b = sample(12, vec![link("vnet0", 5, 300, 5000)]);
        let m = Model::new(&b, Some(&a));
        assert_eq!(m.interval_s, 2.0);
        let r = &m.links["vnet0"];
        assert_eq!(r.rx_packets_per_s, 100.0);
        assert_eq!(r.tx_bytes_per_s, 2000.0);
    }

    #[test]
    fn missing_samples_average_over_the_gap() {
        // Samples at t=10 and t=15 (four missed): the rate is the average, not a spike.
        let a = sample(10, vec![link("br0", 1, 0, 0)]);
        let b = sample(15, vec![link("br0", 1, 500, 0)]);
        assert_eq!(
            Model::new(&b, Some(&a)).links["br0"].rx_packets_per_s,
            100.0
        );
    }

    #[test]
    fn recreated_interface_is_a_reset_not_a_spike() {
        let a = sample(10, vec![link("vnet0", 5, 1_000_000, 0)]);
        let b = sample(11, vec![link("vnet0", 9, 10, 0)]);
        let m = Model::new(&b, Some(&a));
        assert!(!m.links.contains_key("vnet0"));
        assert_eq!(m.resets, vec!["vnet0".to_string()]);
    }

    #[test]
    fn counter_going_backwards_is_a_reset() {
        let a = sample(10, vec![link("vnet0", 5, 1_000_000, 0)]);
        let b = sample(11, vec![link("vnet0", 5, 10, 0)]);
        let m = Model::new(&b, Some(&a));
        assert!(m.links.is_empty());
        assert_eq!(m.resets.len(), 1);
    }

    #[test]
    fn u32_counters_wrap() {
        assert_eq!(counter_delta(0xFFFF_FFF0, 0x10, Width::U32), Some(0x20));
        assert_eq!(counter_delta(5, 3, Width::U32), None);
        assert_eq!(counter_delta(u64::MAX - 1, 3, Width::U64), Some(5));
        let mut a = sample(1, vec![]);
        let mut b = sample(2, vec![]);
        a.softnet = Some(vec![SoftnetCpu {
            cpu: 0,
            dropped: 0xFFFF_FFFE,
            ..Default::default()
        }]);
        b.softnet = Some(vec![SoftnetCpu {
            cpu: 0,
            dropped: 3,
            ..Default::default()
        }]);
        assert_eq!(Model::new(&b, Some(&a)).softnet_dropped_per_s, Some(5.0));
    }

    #[test]
    fn drop_reason_rates_per_interface_new_keys_and_reloads() {
        use crate::sample::{DropCount, Drops};
        let e = |iface: &str, ifindex, reason: &str, protocol, count| DropCount {
            ifindex,
            interface: iface.into(),
            reason: reason.into(),
            protocol,
            count,
        };
        let d = |loaded, entries| Drops {
            netns_inode: 7,
            loaded_mono_ns: loaded,
            entries,
            ..Default::default()
        };
        let mut a = sample(10, vec![]);
        let mut b = sample(12, vec![]);
        a.drops = Some(d(1, vec![e("uplink0", 3, "QDISC_DROP", 0x800, 100)]));
        b.drops = Some(d(
            1,
            vec![
                e("uplink0", 3, "QDISC_DROP", 0x800, 300),
                e("uplink0", 3, "QDISC_DROP", 0x86dd, 20), // new key: all of it is new
                e("vnet0", 4, "NETFILTER_DROP", 0x800, 0),
            ],
        ));
        let m = Model::new(&b, Some(&a));
        assert_eq!(m.drops_per_s["uplink0"]["QDISC_DROP"], 110.0);
        assert!(!m.drops_per_s.contains_key("vnet0"), "no drops, no rate");
        // The program was re-loaded (agent restart in between): no rates.
        let mut c = sample(13, vec![]);
        c.drops = Some(d(2, vec![e("uplink0", 3, "QDISC_DROP", 0x800, 5)]));
        assert!(Model::new(&c, Some(&b)).drops_per_s.is_empty());
        // Older records without the section: nothing, no panic.
        assert!(Model::new(&b, Some(&sample(9, vec![])))
            .drops_per_s
            .is_empty());
    }

    #[test]
    fn wall_clock_step_does_not_matter_and_reboot_gives_nothing() {
        let mut a = sample(10, vec![link("br0", 1, 0, 0)]);
        let mut b = sample(11, vec![link("br0", 1, 50, 0)]);
        a.ts_unix_ns = 2_000_000_000_000_000_000;
        b.ts_unix_ns = 1_000_000_000_000_000_000; // wall clock stepped back
        assert_eq!(Model::new(&b, Some(&a)).links["br0"].rx_packets_per_s, 50.0);
        let mut c = sample(3, vec![link("br0", 1, 5, 0)]);
        c.boot_ns = 3; // rebooted
        assert!(Model::new(&c, Some(&b)).links.is_empty());
        assert_eq!(Model::new(&c, None), Model::default());
    }
}
