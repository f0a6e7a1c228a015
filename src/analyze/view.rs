//! The time-indexed view every rule reads: samples and events in time
//! order, times relative to the collapse, and what the samples say about
//! the host's layout (uplinks, vNICs and their domains, guest MACs).

use std::collections::{BTreeMap, BTreeSet};

use super::packets::Capture;
use super::{Evidence, EvidenceKind};
use crate::bundle::Manifest;
use crate::sample::{Event, EventKind, Sample};

/// A vNIC as libvirt and the samples describe it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VnicInfo {
    pub ifname: String,
    pub domain: String,
    pub uuid: String,
    pub mac: String,
    pub bridge: String,
    pub nova_instance: String,
    pub nova_project: String,
}

pub struct View {
    pub manifest: Manifest,
    /// A bundle path, or "store:<dir>".
    pub source: String,
    pub incident_ns: i64,
    /// In record order (the store's order: wall-clock steps keep their place).
    pub samples: Vec<Sample>,
    /// Sorted by timestamp.
    pub events: Vec<Event>,
    /// Deep-state and log files of the bundle the rules read (name → text, capped).
    pub files: BTreeMap<String, String>,
    /// The packet ring, when the bundle had one.
    pub capture: Option<Capture>,
    /// Things the loader could not read or check (they go to could_not_check).
    pub notes: Vec<String>,
    /// Bridge ports that are not vNICs, seen in any sample.
    pub uplinks: BTreeSet<String>,
    /// Bridges seen in any sample.
    pub bridges: BTreeSet<String>,
    /// Host interface name → vNIC (from libvirt's mapping).
    pub vnics: BTreeMap<String, VnicInfo>,
    /// Guest MAC (lower case) → domain name.
    pub guest_macs: BTreeMap<String, String>,
}

/// One point of a series: (seconds relative to the collapse, value).
pub type Point = (f64, f64);

impl View {
    pub fn new(
        manifest: Manifest,
        source: String,
        samples: Vec<Sample>,
        mut events: Vec<Event>,
        files: BTreeMap<String, String>,
        capture: Option<Capture>,
        notes: Vec<String>,
    ) -> View {
        events.sort_by_key(|e| e.ts_unix_ns);
        let mut v = View {
            incident_ns: manifest.incident.ts_unix_ns,
            manifest,
            source,
            samples,
            events,
            files,
            capture,
            notes,
            uplinks: BTreeSet::new(),
            bridges: BTreeSet::new(),
            vnics: BTreeMap::new(),
            guest_macs: BTreeMap::new(),
        };
        for s in &v.samples {
            for d in s.libvirt.iter().flat_map(|l| &l.domains) {
                for n in &d.vnics {
                    v.guest_macs.insert(n.mac.to_lowercase(), d.name.clone());
                    if let Some(ifn) = &n.host_ifname {
                        let nova = d.nova.clone().unwrap_or_default();
                        v.vnics.insert(
                            ifn.clone(),
                            VnicInfo {
                                ifname: ifn.clone(),
                                domain: d.name.clone(),
                                uuid: d.uuid.clone(),
                                mac: n.mac.clone(),
                                bridge: n.bridge.clone(),
                                nova_instance: nova.instance_name,
                                nova_project: if nova.project_name.is_empty() {
                                    nova.project_id
                                } else {
                                    nova.project_name
                                },
                            },
                        );
                    }
                }
            }
        }
        for s in &v.samples {
            for b in s.bridges.iter().flatten() {
                v.bridges.insert(b.name.clone());
                for p in &b.ports {
                    let mac = s.link(&p.name).map(|l| l.mac.as_str()).unwrap_or("");
                    if !v.is_vnic_in(s, &p.name, mac) {
                        v.uplinks.insert(p.name.clone());
                    }
                }
            }
        }
        v
    }

    /// Whether a port is a vNIC: libvirt's mapping decides when it has
    /// one; without libvirt data, libvirt's fe: host-MAC convention.
    fn is_vnic_in(&self, s: &Sample, ifname: &str, mac: &str) -> bool {
        if self.vnics.contains_key(ifname) {
            return true;
        }
        if !self.vnics.is_empty() {
            return false;
        }
        crate::agent::print::is_vnic(s, ifname, mac)
    }

    pub fn is_vnic(&self, ifname: &str) -> bool {
        !self.uplinks.contains(ifname)
            && (self.vnics.contains_key(ifname)
                || self.samples.iter().rev().take(1).any(|s| {
                    s.link(ifname)
                        .is_some_and(|l| self.is_vnic_in(s, ifname, &l.mac))
                }))
    }

    /// Seconds from the collapse (negative: before).
    pub fn rel(&self, ts_unix_ns: i64) -> f64 {
        (ts_unix_ns - self.incident_ns) as f64 / 1e9
    }

    /// A series over the samples (points where `get` has a value).
    pub fn series(&self, get: impl Fn(&Sample) -> Option<f64>) -> Vec<Point> {
        self.samples
            .iter()
            .filter_map(|s| get(s).map(|v| (self.rel(s.ts_unix_ns), v)))
            .collect()
    }

    /// A link counter as a series; a re-created interface (new ifindex)
    /// restarts the series' baseline, so a reset never reads as a fall.
    pub fn link_counter(
        &self,
        name: &str,
        get: impl Fn(&crate::sample::LinkStats) -> u64,
    ) -> Vec<Point> {
        let mut out = Vec::new();
        let (mut base, mut last_idx, mut last_v) = (0f64, None, 0f64);
        // Links keep their order from sample to sample: try the last position first.
        let mut hint = 0usize;
        for s in &self.samples {
            let Some(links) = s.links.as_ref() else {
                continue;
            };
            let l = match links.get(hint).filter(|l| l.name == name) {
                Some(l) => l,
                None => match links.iter().position(|l| l.name == name) {
                    Some(i) => {
                        hint = i;
                        &links[i]
                    }
                    None => continue,
                },
            };
            let v = get(&l.stats) as f64;
            if last_idx.is_some_and(|i| i != l.ifindex) || v < last_v {
                base += last_v;
            }
            last_idx = Some(l.ifindex);
            last_v = v;
            out.push((self.rel(s.ts_unix_ns), base + v));
        }
        out
    }

    /// The last sample at or before `t_rel_s`.
    pub fn sample_at(&self, t_rel_s: f64) -> Option<&Sample> {
        self.samples
            .iter()
            .rev()
            .find(|s| self.rel(s.ts_unix_ns) <= t_rel_s)
            .or(self.samples.first())
    }

    /// Kernel log lines in a window around the collapse, with their catalogue tags.
    pub fn kmsg(&self, from_s: f64, to_s: f64) -> impl Iterator<Item = (f64, &str, &[String])> {
        self.events.iter().filter_map(move |e| match &e.kind {
            EventKind::Kmsg { text, tags, .. } => {
                let t = self.rel(e.ts_unix_ns);
                (from_s..=to_s)
                    .contains(&t)
                    .then_some((t, text.as_str(), tags.as_slice()))
            }
            _ => None,
        })
    }

    /// The sampling interval the history shows (median), seconds.
    pub fn interval_s(&self) -> f64 {
        let mut d: Vec<f64> = self
            .samples
            .windows(2)
            .map(|w| w[1].mono_ns.saturating_sub(w[0].mono_ns) as f64 / 1e9)
            .filter(|x| *x > 0.0)
            .collect();
        if d.is_empty() {
            return 1.0;
        }
        d.sort_by(f64::total_cmp);
        d[d.len() / 2]
    }

    /// Whether any sample had this section (a collector that ran).
    pub fn has(&self, section: impl Fn(&Sample) -> bool) -> bool {
        self.samples.iter().any(section)
    }
}

/// Value of a series at (the last point at or before) `t`, or its first point.
pub fn value_at(series: &[Point], t: f64) -> Option<f64> {
    series
        .iter()
        .rev()
        .find(|p| p.0 <= t)
        .or(series.first())
        .map(|p| p.1)
}

/// How much a counter rose between two times.
pub fn rise(series: &[Point], from: f64, to: f64) -> f64 {
    match (value_at(series, from), value_at(series, to)) {
        (Some(a), Some(b)) => (b - a).max(0.0),
        _ => 0.0,
    }
}

/// When a series last changed value at or before `upto` (a counter that froze).
pub fn last_change(series: &[Point], upto: f64) -> Option<f64> {
    let pts: Vec<&Point> = series.iter().filter(|p| p.0 <= upto).collect();
    pts.windows(2)
        .rev()
        .find(|w| w[1].1 != w[0].1)
        .map(|w| w[1].0)
}

/// Counter evidence: `series` went from its value at `from` to its value at `to`.
pub fn counter_evidence(
    series_name: &str,
    series: &[Point],
    from: f64,
    to: f64,
    what: String,
) -> Evidence {
    let t_from = series
        .iter()
        .rev()
        .find(|p| p.0 <= from)
        .or(series.first())
        .map(|p| p.0);
    let t_to = series
        .iter()
        .rev()
        .find(|p| p.0 <= to)
        .or(series.first())
        .map(|p| p.0);
    Evidence {
        t_rel_s: t_to.unwrap_or(to),
        what,
        kind: EvidenceKind::Counter,
        series: Some(series_name.to_string()),
        before: value_at(series, from),
        after: value_at(series, to),
        t_before_rel_s: t_from,
    }
}

/// Seconds formatted for humans, signed ("-12.3 s").
pub fn secs(t: f64) -> String {
    format!("{t:+.1} s")
}
