//! Prometheus exposition: `/metrics` on loopback (config `agent.metrics_listen`,
//! default 127.0.0.1:9469; empty disables). Values come from the latest
//! sample at scrape time (an exporter-style collector), so scraping costs
//! the agent nothing between scrapes. Every family is listed, with its
//! labels and cardinality bound, in docs/metrics.md (a test compares).
//!
//! Label cardinality is bounded: interfaces only for bridges and their
//! uplinks (never per vNIC), collectors, event sources and kernel-log
//! signatures by their fixed names, critical groups as configured, domains
//! once each in `hvflight_domain_info` (as many series as domains on the host).
//! The one exception, `hvflight_drops_total{interface,reason}`, adds at most
//! `agent.metrics_drop_interfaces` other interfaces (the vNICs that dropped
//! most) and sums the rest into interface="other"; reasons are the running
//! kernel's fixed enum (see `DropSeries`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::agent::print::is_vnic;
use crate::blast_radius::CriticalGroups;
use crate::bundle::worker::BundleStats;
use crate::sample::{Event, EventKind, Sample};

/// Event sources as `hvflight_events_total{source}` names them (one per
/// `EventKind` variant: a fixed set).
pub fn event_source(k: &EventKind) -> &'static str {
    match k {
        EventKind::Link { .. } => "link",
        EventKind::Fdb { .. } => "fdb",
        EventKind::Neigh { .. } => "neigh",
        EventKind::Addr { .. } => "addr",
        EventKind::Kmsg { .. } => "kmsg",
        EventKind::Libvirt { .. } => "libvirt",
        EventKind::LibvirtConnection { .. } => "libvirt_connection",
        EventKind::Loss { .. } => "loss",
        EventKind::Detector { .. } => "detector",
        EventKind::GuestCutOff { .. } => "guest_cut_off",
        EventKind::Degradation { .. } => "degradation",
        EventKind::Agent { .. } => "agent",
        EventKind::Capture { .. } => "capture",
    }
}

/// Every value `event_source` returns (their counters start at 0).
pub const EVENT_SOURCES: [&str; 13] = [
    "link",
    "fdb",
    "neigh",
    "addr",
    "kmsg",
    "libvirt",
    "libvirt_connection",
    "loss",
    "detector",
    "guest_cut_off",
    "degradation",
    "agent",
    "capture",
];

/// Sources of `loss` events (events/rtnetlink.rs, events/kmsg.rs).
pub const LOSS_SOURCES: [&str; 2] = ["kmsg", "rtnetlink"];

#[derive(Debug, Default)]
pub struct Snapshot {
    /// The latest sample, shared with the sampling loop (a deep copy of a
    /// 500-vNIC sample every second cost more than rendering a scrape).
    pub sample: Option<std::sync::Arc<Sample>>,
    pub samples_total: u64,
    pub collector_failures_total: BTreeMap<String, u64>,
    pub store_bytes: u64,
    pub store_dropped_records: u64,
    pub bundles: u64,
    pub bundle_bytes: u64,
    pub last_incident_unix_s: Option<f64>,
    pub tail_clients: u64,
    pub unknown_config_keys: u64,
    /// Detector state name ("" = off), eligible and total guests.
    pub detector_state: String,
    pub eligible_guests: u64,
    pub guests: u64,
    /// Incidents the detector raised (not manual triggers).
    pub incidents_total: u64,
    /// Samples that started so late that ticks were skipped.
    pub sample_overruns_total: u64,
    pub events_total: BTreeMap<&'static str, u64>,
    /// Events lost by source ("kmsg", "rtnetlink"), from `loss` events.
    pub events_lost_total: BTreeMap<String, u64>,
    /// Kernel-log lines that matched a catalogue signature, by id.
    pub kmsg_signature_lines_total: BTreeMap<String, u64>,
    /// The uploader's numbers, when `[upload]` is enabled.
    pub upload: Option<UploadMetrics>,
    /// Per bridge: (bridge, eligible guests, guests).
    pub detector_bridges: Vec<(String, u64, u64)>,
    /// Degradations in progress (what).
    pub degraded: Vec<String>,
    pub drops: DropSeries,
}

#[derive(Debug, Default, Clone)]
pub struct UploadMetrics {
    /// Bundles waiting in the spool, and their bytes.
    pub spool_bundles: u64,
    pub spool_bytes: u64,
    pub uploads_total: u64,
    pub failures_total: u64,
    pub last_success_unix_s: Option<f64>,
}

/// The upload families. Counter names are given without `_total`: the
/// encoder appends it (hvflight_uploads_total, hvflight_upload_failures_total).
fn encode_upload(enc: &mut DescriptorEncoder, u: &UploadMetrics) -> Result<(), std::fmt::Error> {
    let none = Labels::new();
    gauge(
        enc,
        "hvflight_spool_bundles",
        "Bundles waiting in the upload spool.",
        &[(none.clone(), u.spool_bundles as f64)],
    )?;
    gauge(
        enc,
        "hvflight_spool_bytes",
        "Bytes of the bundles waiting in the upload spool.",
        &[(none.clone(), u.spool_bytes as f64)],
    )?;
    counter(
        enc,
        "hvflight_uploads",
        "Bundles uploaded and verified since the agent started.",
        &[(none.clone(), u.uploads_total as f64)],
    )?;
    counter(
        enc,
        "hvflight_upload_failures",
        "Failed upload attempts since the agent started.",
        &[(none.clone(), u.failures_total as f64)],
    )?;
    // Always there while upload is on (0 = none since the agent started), so
    // "spool backing up" can be written without absent().
    gauge(
        enc,
        "hvflight_upload_last_success_timestamp_seconds",
        "When the last upload was verified (0: none since the agent started).",
        &[(none, u.last_success_unix_s.unwrap_or(0.0))],
    )?;
    Ok(())
}

/// The bounded label set of `hvflight_drops_total`: every watched bridge and
/// uplink, plus at most `top` other interfaces (in practice vNICs) in the
/// order they start dropping most; once named, an interface keeps its
/// series while it exists, so each series stays monotonic. Drops of all
/// other interfaces go to interface="other", accumulated here from each
/// sample's increase, so "other" never goes down when an interface leaves.
/// Drops with no device are interface="none".
#[derive(Debug, Default)]
pub struct DropSeries {
    pub top: usize,
    named: BTreeSet<String>,
    other: BTreeMap<String, f64>,
    prev: Option<(u64, crate::sample::Drops)>,
}

fn label_of(iface: &str) -> &str {
    if iface.is_empty() {
        "none"
    } else {
        iface
    }
}

/// Watched bridges and their non-vNIC ports.
fn bridges_and_uplinks(s: &Sample) -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    for b in s.bridges.iter().flatten() {
        v.insert(b.name.clone());
        for p in &b.ports {
            let mac = s.link(&p.name).map(|x| x.mac.as_str()).unwrap_or("");
            if !is_vnic(s, &p.name, mac) {
                v.insert(p.name.clone());
            }
        }
    }
    v
}

impl DropSeries {
    pub fn on_sample(&mut self, s: &Sample) {
        let Some(d) = &s.drops else { return };
        let always = bridges_and_uplinks(s);
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &d.entries {
            *totals.entry(label_of(&e.interface)).or_default() += e.count;
        }
        self.named
            .retain(|n| n.as_str() == "none" || s.link(n).is_some());
        let mut candidates: Vec<(&str, u64)> = totals
            .iter()
            .filter(|(n, c)| **c > 0 && !always.contains(**n) && !self.named.contains(**n))
            .map(|(n, c)| (*n, *c))
            .collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (n, _) in candidates {
            if self.named.len() >= self.top {
                break;
            }
            self.named.insert(n.to_string());
        }
        if let Some((mono, p)) = &self.prev {
            if s.mono_ns > *mono {
                // dt = 1: the "rates" are the increases since the last sample.
                let (inc, _) = crate::model::drop_rates(d, p, 1.0);
                for (iface, by_reason) in inc {
                    let l = label_of(&iface);
                    if always.contains(l) || self.named.contains(l) {
                        continue;
                    }
                    for (reason, x) in by_reason {
                        *self.other.entry(reason).or_default() += x;
                    }
                }
            }
        }
        self.prev = Some((s.mono_ns, d.clone()));
    }

    /// (labels, cumulative drops) of the latest sample.
    fn series(&self, s: &Sample) -> Vec<(Labels, f64)> {
        let Some(d) = &s.drops else { return vec![] };
        let always = bridges_and_uplinks(s);
        let mut by: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for e in &d.entries {
            let l = label_of(&e.interface);
            if always.contains(l) || self.named.contains(l) {
                *by.entry((l, e.reason.as_str())).or_default() += e.count;
            }
        }
        let mut v: Vec<(Labels, f64)> = by
            .into_iter()
            .map(|((i, r), c)| (l(&[("interface", i), ("reason", r)]), c as f64))
            .collect();
        for (r, c) in &self.other {
            v.push((l(&[("interface", "other"), ("reason", r)]), *c));
        }
        v
    }
}

#[derive(Debug, Default)]
pub struct Exporter {
    pub state: Mutex<Snapshot>,
    /// Enabled collectors: their failure counters exist (at 0) from the start.
    collectors: Vec<String>,
    groups: CriticalGroups,
    host: String,
    bundle_stats: Option<Arc<BundleStats>>,
}

impl Exporter {
    pub fn new(
        cfg: &crate::config::Config,
        host: &str,
        bundle_stats: Option<Arc<BundleStats>>,
    ) -> Exporter {
        let collectors: Vec<String> = crate::config::COLLECTOR_NAMES
            .iter()
            .filter(|c| !cfg.collect.disabled.iter().any(|d| d == *c))
            .map(|c| c.to_string())
            .collect();
        let mut snap = Snapshot::default();
        for c in &collectors {
            snap.collector_failures_total.insert(c.clone(), 0);
        }
        for src in EVENT_SOURCES {
            snap.events_total.insert(src, 0);
        }
        for src in LOSS_SOURCES {
            snap.events_lost_total.insert(src.to_string(), 0);
        }
        for (id, _) in crate::kernel::kmsg::SIGNATURES {
            snap.kmsg_signature_lines_total.insert(id.to_string(), 0);
        }
        Exporter {
            state: Mutex::new(snap),
            collectors,
            // Validated with the config; an invalid list cannot get here.
            groups: CriticalGroups::new(&cfg.blast_radius).unwrap_or_default(),
            host: host.to_string(),
            bundle_stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn on_sample(&self, s: &std::sync::Arc<Sample>) {
        let mut st = self.lock();
        st.samples_total += 1;
        for f in &s.failures {
            *st.collector_failures_total
                .entry(f.collector.clone())
                .or_default() += 1;
        }
        st.drops.on_sample(s);
        st.sample = Some(std::sync::Arc::clone(s));
    }

    pub fn on_event(&self, e: &Event) {
        let mut st = self.lock();
        *st.events_total.entry(event_source(&e.kind)).or_default() += 1;
        match &e.kind {
            EventKind::Loss { source, count, .. } => {
                *st.events_lost_total.entry(source.clone()).or_default() += (*count).max(1);
            }
            EventKind::Kmsg { tags, .. } => {
                for t in tags {
                    *st.kmsg_signature_lines_total.entry(t.clone()).or_default() += 1;
                }
            }
            EventKind::Agent { what, .. } if what == "sample_overrun" => {
                st.sample_overruns_total += 1;
            }
            _ => {}
        }
    }

    pub fn on_incident(&self) {
        self.lock().incidents_total += 1;
    }
}

type Labels = Vec<(String, String)>;
type Series = Vec<(Labels, f64)>;

/// One metric family from (labels, value) series; `make` builds the
/// metric (a gauge or a counter) for a value.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
    make: impl Fn(f64) -> M,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, make(0.0).metric_type())?;
    if let [(labels, v)] = series {
        if labels.is_empty() {
            return make(*v).encode(m);
        }
    }
    for (labels, v) in series {
        make(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, series, ConstGauge::new)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    family(enc, name, help, series, ConstCounter::new)
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn one(v: f64) -> Series {
    vec![(Labels::new(), v)]
}

fn by<K: AsRef<str>>(label: &str, m: &BTreeMap<K, u64>) -> Series {
    m.iter()
        .map(|(k, n)| (l(&[(label, k.as_ref())]), *n as f64))
        .collect()
}

impl Exporter {
    fn encode_agent(&self, st: &Snapshot, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        gauge(
            enc,
            "hvflight_build_info",
            "Always 1: the agent's version and host name.",
            &[(
                l(&[("version", env!("CARGO_PKG_VERSION")), ("host", &self.host)]),
                1.0,
            )],
        )?;
        counter(
            enc,
            "hvflight_samples",
            "Samples taken since the agent started.",
            &one(st.samples_total as f64),
        )?;
        counter(
            enc,
            "hvflight_sample_overruns",
            "Samples that started so late that ticks were skipped.",
            &one(st.sample_overruns_total as f64),
        )?;
        counter(
            enc,
            "hvflight_collector_failures",
            "Samples in which a collector failed, by collector.",
            &by("collector", &st.collector_failures_total),
        )?;
        if let Some(s) = &st.sample {
            let up: Series = self
                .collectors
                .iter()
                .map(|c| {
                    let ok = s.failure(c).is_none();
                    (l(&[("collector", c)]), if ok { 1.0 } else { 0.0 })
                })
                .collect();
            gauge(
                enc,
                "hvflight_collector_up",
                "1 if the collector filled its section in the last sample.",
                &up,
            )?;
        }
        counter(
            enc,
            "hvflight_events",
            "Events received, by source.",
            &by("source", &st.events_total),
        )?;
        counter(
            enc,
            "hvflight_events_lost",
            "Events lost (netlink ENOBUFS, kernel-log overrun or rate cap), by source.",
            &by("source", &st.events_lost_total),
        )?;
        counter(
            enc,
            "hvflight_kmsg_signature_lines",
            "Kernel-log lines that matched a failure-catalogue signature, by catalogue id.",
            &by("signature", &st.kmsg_signature_lines_total),
        )?;
        if let Some(u) = &st.upload {
            encode_upload(enc, u)?;
        }
        gauge(
            enc,
            "hvflight_store_bytes",
            "Bytes in the flight-recorder store.",
            &one(st.store_bytes as f64),
        )?;
        counter(
            enc,
            "hvflight_store_dropped_records",
            "Records not stored (disk full).",
            &one(st.store_dropped_records as f64),
        )?;
        gauge(
            enc,
            "hvflight_bundles",
            "Bundles kept on this node.",
            &one(st.bundles as f64),
        )?;
        gauge(
            enc,
            "hvflight_bundle_bytes",
            "Bytes of the bundles kept on this node.",
            &one(st.bundle_bytes as f64),
        )?;
        if let Some(b) = &self.bundle_stats {
            counter(
                enc,
                "hvflight_bundle_writes",
                "Bundle files written (the immediate and the complete one of each incident).",
                &one(b.written.load(Ordering::Relaxed) as f64),
            )?;
            counter(
                enc,
                "hvflight_bundle_write_failures",
                "Bundle writes that failed (each is retried).",
                &one(b.write_failures.load(Ordering::Relaxed) as f64),
            )?;
            gauge(
                enc,
                "hvflight_bundle_in_progress",
                "1 while an incident's bundle is not complete yet.",
                &one(b.in_progress.load(Ordering::Relaxed) as f64),
            )?;
        }
        if let Some(t) = st.last_incident_unix_s {
            gauge(
                enc,
                "hvflight_last_incident_timestamp_seconds",
                "When the newest bundle's incident started.",
                &one(t),
            )?;
        }
        gauge(
            enc,
            "hvflight_tail_clients",
            "Connected tail clients.",
            &one(st.tail_clients as f64),
        )?;
        gauge(
            enc,
            "hvflight_config_unknown_keys",
            "Config keys the agent ignored.",
            &one(st.unknown_config_keys as f64),
        )?;
        Ok(())
    }

    fn encode_detector(st: &Snapshot, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        if st.detector_state.is_empty() {
            return Ok(());
        }
        let states = ["healthy", "suspect", "collapsed", "recovering"];
        let series: Series = states
            .iter()
            .map(|x| {
                let v = if *x == st.detector_state { 1.0 } else { 0.0 };
                (l(&[("state", x)]), v)
            })
            .collect();
        gauge(
            enc,
            "hvflight_detector_state",
            "1 for the detector's current state.",
            &series,
        )?;
        counter(
            enc,
            "hvflight_incidents",
            "Collapses the detector declared (each takes a bundle).",
            &one(st.incidents_total as f64),
        )?;
        gauge(
            enc,
            "hvflight_detector_eligible_guests",
            "Guests whose traffic can judge the uplink now.",
            &one(st.eligible_guests as f64),
        )?;
        gauge(
            enc,
            "hvflight_detector_guests",
            "Guests (vNIC ports) on watched bridges.",
            &one(st.guests as f64),
        )?;
        let per = |f: &dyn Fn(&(String, u64, u64)) -> u64| -> Vec<(Labels, f64)> {
            st.detector_bridges
                .iter()
                .map(|b| (l(&[("bridge", &b.0)]), f(b) as f64))
                .collect()
        };
        gauge(
            enc,
            "hvflight_detector_bridge_eligible_guests",
            "Guests of this bridge whose traffic can judge its uplink now.",
            &per(&|b| b.1),
        )?;
        gauge(
            enc,
            "hvflight_detector_bridge_guests",
            "Guests (vNIC ports) on this bridge.",
            &per(&|b| b.2),
        )?;
        gauge(
            enc,
            "hvflight_detector_degraded",
            "Degradations in progress (full-size frames failing, conntrack or neighbour table full).",
            &one(st.degraded.len() as f64),
        )?;
        Ok(())
    }

    fn encode_sample(&self, s: &Sample, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        gauge(
            enc,
            "hvflight_sample_duration_seconds",
            "How long the last sample took.",
            &one(s.duration_us as f64 / 1e6),
        )?;
        gauge(
            enc,
            "hvflight_sample_lag_seconds",
            "How late the last sample started.",
            &one(s.lag_us as f64 / 1e6),
        )?;
        gauge(
            enc,
            "hvflight_sample_timestamp_seconds",
            "Wall time of the last sample.",
            &one(s.ts_unix_ns as f64 / 1e9),
        )?;
        Self::encode_links(s, enc)?;
        Self::encode_tables(s, enc)?;
        self.encode_libvirt(s, enc)
    }

    /// Bridges and their uplinks (never vNICs: bounded cardinality).
    fn encode_links(s: &Sample, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        type Pick = fn(&crate::sample::LinkStats) -> u64;
        let counters: [(&str, &str, Pick); 8] = [
            ("hvflight_link_receive_packets", "Packets received", |x| {
                x.rx_packets
            }),
            ("hvflight_link_transmit_packets", "Packets sent", |x| {
                x.tx_packets
            }),
            ("hvflight_link_receive_bytes", "Bytes received", |x| {
                x.rx_bytes
            }),
            ("hvflight_link_transmit_bytes", "Bytes sent", |x| x.tx_bytes),
            ("hvflight_link_receive_drops", "Receive drops", |x| {
                x.rx_dropped
            }),
            ("hvflight_link_transmit_drops", "Transmit drops", |x| {
                x.tx_dropped
            }),
            ("hvflight_link_receive_errors", "Receive errors", |x| {
                x.rx_errors
            }),
            ("hvflight_link_transmit_errors", "Transmit errors", |x| {
                x.tx_errors
            }),
        ];
        let mut values: Vec<Series> = vec![Series::new(); counters.len()];
        let (mut carrier, mut port_state, mut vnics) = (vec![], vec![], vec![]);
        for b in s.bridges.iter().flatten() {
            let mut ifaces: Vec<(&str, &str, Option<u8>)> = vec![(b.name.as_str(), "bridge", None)];
            let mut n_vnics = 0;
            for p in &b.ports {
                let mac = s.link(&p.name).map(|x| x.mac.as_str()).unwrap_or("");
                if is_vnic(s, &p.name, mac) {
                    n_vnics += 1;
                } else {
                    ifaces.push((p.name.as_str(), "uplink", Some(p.state)));
                }
            }
            vnics.push((l(&[("bridge", &b.name)]), n_vnics as f64));
            for (name, role, state) in ifaces {
                let Some(link) = s.link(name) else { continue };
                let lb = l(&[("bridge", &b.name), ("interface", name), ("role", role)]);
                for (i, (_, _, pick)) in counters.iter().enumerate() {
                    values[i].push((lb.clone(), pick(&link.stats) as f64));
                }
                if let Some(c) = link.carrier {
                    carrier.push((lb.clone(), if c { 1.0 } else { 0.0 }));
                }
                if let Some(st) = state {
                    port_state.push((lb, st as f64));
                }
            }
        }
        for ((name, help, _), series) in counters.iter().zip(&values) {
            counter(enc, name, &format!("{help}, bridges and uplinks."), series)?;
        }
        // Gateway probes, per bridge/VLAN (bounded: one series per bridge VLAN).
        let (mut sent, mut answered, mut rtt, mut miss) = (vec![], vec![], vec![], vec![]);
        for g in s.probes.iter().flat_map(|p| &p.bridges) {
            let vlan = g.vlan.map(|v| v.to_string()).unwrap_or_default();
            let lb = l(&[("bridge", &g.bridge), ("vlan", &vlan)]);
            sent.push((lb.clone(), (g.arp_sent + g.icmp_sent + g.large_sent) as f64));
            answered.push((
                lb.clone(),
                (g.arp_answered + g.icmp_answered + g.large_answered) as f64,
            ));
            miss.push((lb.clone(), g.consecutive_unanswered as f64));
            if let Some(us) = g.last_rtt_us {
                rtt.push((lb, us as f64 / 1e6));
            }
        }
        counter(
            enc,
            "hvflight_gateway_probes_sent",
            "Gateway probes sent out through the uplink (ARP, ICMP, full-MTU).",
            &sent,
        )?;
        counter(
            enc,
            "hvflight_gateway_probes_answered",
            "Gateway probes answered.",
            &answered,
        )?;
        gauge(
            enc,
            "hvflight_gateway_probes_unanswered_in_a_row",
            "Small gateway probes unanswered in a row.",
            &miss,
        )?;
        gauge(
            enc,
            "hvflight_gateway_probe_rtt_seconds",
            "Round-trip time of the last answered gateway probe.",
            &rtt,
        )?;
        gauge(
            enc,
            "hvflight_link_carrier",
            "1 if the interface has carrier.",
            &carrier,
        )?;
        gauge(
            enc,
            "hvflight_bridge_port_state",
            "STP state of an uplink port (0 disabled, 1 listening, 2 learning, 3 forwarding, 4 blocking).",
            &port_state,
        )?;
        gauge(
            enc,
            "hvflight_bridge_vnics",
            "vNIC ports on the bridge.",
            &vnics,
        )
    }

    /// Conntrack, neighbours, softnet: the host tables that fill up.
    fn encode_tables(s: &Sample, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        if let Some(c) = &s.conntrack {
            if let Some(n) = c.count {
                gauge(
                    enc,
                    "hvflight_conntrack_entries",
                    "Conntrack table entries.",
                    &one(n as f64),
                )?;
            }
            if let Some(n) = c.max {
                gauge(
                    enc,
                    "hvflight_conntrack_entries_limit",
                    "nf_conntrack_max.",
                    &one(n as f64),
                )?;
            }
            for (key, name, help) in [
                (
                    "drop",
                    "hvflight_conntrack_drops",
                    "Packets conntrack dropped.",
                ),
                (
                    "early_drop",
                    "hvflight_conntrack_early_drops",
                    "Entries dropped early to make room (table full).",
                ),
                (
                    "insert_failed",
                    "hvflight_conntrack_insert_failures",
                    "Entries that could not be inserted.",
                ),
            ] {
                if let Some(d) = c.stats.get(key) {
                    counter(enc, name, help, &one(*d as f64))?;
                }
            }
        }
        if let Some(n) = &s.neighbours {
            gauge(
                enc,
                "hvflight_neighbour_entries",
                "Neighbour table entries by family.",
                &[
                    (l(&[("family", "inet")]), n.total_inet as f64),
                    (l(&[("family", "inet6")]), n.total_inet6 as f64),
                ],
            )?;
            let mut limits = Series::new();
            if let Some(t) = n.gc_thresh {
                limits.push((l(&[("family", "inet")]), t[2] as f64));
            }
            if let Some(t) = n.gc_thresh6 {
                limits.push((l(&[("family", "inet6")]), t[2] as f64));
            }
            gauge(
                enc,
                "hvflight_neighbour_entries_limit",
                "Neighbour table hard limit (gc_thresh3) by family.",
                &limits,
            )?;
        }
        if let Some(sn) = &s.softnet {
            counter(
                enc,
                "hvflight_softnet_drops",
                "Backlog drops, all CPUs (softnet_stat).",
                &one(sn.iter().map(|c| c.dropped).sum::<u64>() as f64),
            )?;
            counter(
                enc,
                "hvflight_softnet_time_squeeze",
                "NET_RX budget exhaustions, all CPUs.",
                &one(sn.iter().map(|c| c.time_squeeze).sum::<u64>() as f64),
            )?;
        }
        Ok(())
    }

    fn encode_libvirt(&self, s: &Sample, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        gauge(
            enc,
            "hvflight_libvirt_up",
            "1 if libvirt answered the last sample.",
            &one(if s.libvirt.is_some() { 1.0 } else { 0.0 }),
        )?;
        let Some(lv) = &s.libvirt else { return Ok(()) };
        let mut by_state: BTreeMap<&str, f64> = BTreeMap::new();
        let mut members: BTreeMap<&str, f64> = self.groups.names().map(|g| (g, 0.0)).collect();
        let mut info = Vec::new();
        for d in &lv.domains {
            *by_state.entry(d.state.as_str()).or_default() += 1.0;
            let nova = d.nova.clone().unwrap_or_default();
            let group = self.groups.group_of(d).unwrap_or("");
            if !group.is_empty() && d.state == "running" {
                *members.entry(group).or_default() += 1.0;
            }
            info.push((
                l(&[
                    ("domain", &d.name),
                    ("uuid", &d.uuid),
                    ("state", &d.state),
                    ("nova_name", &nova.instance_name),
                    ("nova_project", &nova.project_name),
                    ("critical_group", group),
                ]),
                1.0,
            ));
        }
        let by_state: Series = by_state
            .into_iter()
            .map(|(k, v)| (l(&[("state", k)]), v))
            .collect();
        gauge(enc, "hvflight_domains", "Domains by state.", &by_state)?;
        gauge(
            enc,
            "hvflight_domain_info",
            "One series per domain, with nova metadata and critical group.",
            &info,
        )?;
        let members: Series = members
            .into_iter()
            .map(|(g, n)| (l(&[("critical_group", g)]), n))
            .collect();
        gauge(
            enc,
            "hvflight_critical_group_domains",
            "Running domains of each configured critical group on this host.",
            &members,
        )
    }
}

impl Collector for Exporter {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.lock();
        self.encode_agent(&st, &mut enc)?;
        Self::encode_detector(&st, &mut enc)?;
        if let Some(s) = &st.sample {
            self.encode_sample(s, &mut enc)?;
            if let Some(c) = &s.capture {
                capture_metrics(&mut enc, c)?;
            }
            if let Some(d) = &s.drops {
                drop_metrics(&mut enc, &st.drops, s, d)?;
            }
        }
        Ok(())
    }
}

/// The kernel's drop reasons (docs/drop-reasons.md): bounded interfaces.
fn drop_metrics(
    enc: &mut DescriptorEncoder,
    series: &DropSeries,
    s: &Sample,
    d: &crate::sample::Drops,
) -> Result<(), std::fmt::Error> {
    counter(
        enc,
        "hvflight_drops",
        "Packets the kernel dropped (skb:kfree_skb), by interface and drop reason; bounded interfaces (see docs/drop-reasons.md).",
        &series.series(s),
    )?;
    counter(
        enc,
        "hvflight_drops_overflow",
        "Drops not counted per interface because the kernel map was full.",
        &one(d.overflow as f64),
    )?;
    gauge(
        enc,
        "hvflight_drops_map_entries",
        "Keys in the in-kernel drop map (all namespaces).",
        &one(d.map_entries as f64),
    )?;
    gauge(
        enc,
        "hvflight_drops_map_entries_limit",
        "Bound of the in-kernel drop map (collect.drops_max_entries).",
        &one(d.map_max_entries as f64),
    )
}

/// The packet ring (docs/capture.md); interfaces are the captured ones only
/// (uplinks, and at most capture.max_vnics vNICs).
fn capture_metrics(
    enc: &mut DescriptorEncoder,
    c: &crate::sample::capture::Capture,
) -> Result<(), std::fmt::Error> {
    let per = |f: &dyn Fn(&crate::sample::capture::CaptureIface) -> f64| -> Vec<(Labels, f64)> {
        c.interfaces
            .iter()
            .map(|i| (l(&[("iface", &i.name), ("role", &i.role)]), f(i)))
            .collect()
    };
    let none = Labels::new();
    let one = |v: f64| vec![(none.clone(), v)];
    gauge(
        enc,
        "hvflight_capture_up",
        "1 while the interface is captured, 0 while its capture fails.",
        &per(&|i| (i.state == "capturing") as u8 as f64),
    )?;
    counter(
        enc,
        "hvflight_capture_packets",
        "Packets the kernel filter passed into the ring, per interface.",
        &per(&|i| i.packets_total as f64),
    )?;
    counter(
        enc,
        "hvflight_capture_kernel_dropped_packets",
        "Packets lost because the kernel capture ring was full (pcap ps_drop).",
        &per(&|i| i.kernel_dropped_total as f64),
    )?;
    counter(
        enc,
        "hvflight_capture_interface_dropped_packets",
        "Packets dropped by the interface while captured (pcap ps_ifdrop).",
        &per(&|i| i.interface_dropped_total as f64),
    )?;
    gauge(
        enc,
        "hvflight_capture_ring_bytes",
        "Memory of the packet ring in use.",
        &one(c.ring_bytes as f64),
    )?;
    gauge(
        enc,
        "hvflight_capture_ring_max_bytes",
        "Memory the packet ring may use.",
        &one(c.ring_max_bytes as f64),
    )?;
    let span = if c.newest_unix_ns > 0 {
        (c.newest_unix_ns - c.complete_since_unix_ns).max(0) as f64 / 1e9
    } else {
        0.0
    };
    gauge(
        enc,
        "hvflight_capture_ring_complete_seconds",
        "How far back the ring holds every control-plane packet captured.",
        &one(span),
    )?;
    counter(
        enc,
        "hvflight_capture_evicted_packets",
        "Packets evicted before their time because the ring was full.",
        &one(c.evicted_packets_total as f64),
    )?;
    gauge(
        enc,
        "hvflight_capture_cpu_seconds_per_second",
        "CPU time of the capture thread in the last second.",
        &one(c.cpu_ms_last_s / 1000.0),
    )?;
    gauge(
        enc,
        "hvflight_capture_shedding",
        "1 while the sampled share is shed (CPU budget).",
        &one(c.shedding as u8 as f64),
    )?;
    counter(
        enc,
        "hvflight_capture_sheds",
        "Times the sampled share was shed.",
        &one(c.shed_total as f64),
    )
}

/// The text exposition of the exporter's current values.
pub fn render(exporter: &Arc<Exporter>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Arc::clone(exporter)));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

/// Serves `/metrics` on `listen` from a thread.
pub fn serve(listen: &str, exporter: Arc<Exporter>) -> Result<(), String> {
    let server =
        tiny_http::Server::http(listen).map_err(|e| format!("metrics endpoint {listen}: {e}"))?;
    std::thread::Builder::new()
        .name("hvflight-metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let resp = if req.url() == "/metrics" {
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4; charset=utf-8"[..],
                    )
                    .expect("static header");
                    tiny_http::Response::from_string(render(&exporter)).with_header(header)
                } else {
                    tiny_http::Response::from_string("hvflight: see /metrics\n")
                        .with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_has_a_listed_source() {
        let kinds = [
            EventKind::Link {
                action: String::new(),
                ifindex: 0,
                name: String::new(),
                operstate: String::new(),
                carrier: None,
                admin_up: false,
                master: None,
                mtu: None,
                mac: String::new(),
                port_state: None,
            },
            EventKind::Loss {
                source: "kmsg".into(),
                detail: String::new(),
                count: 3,
            },
            EventKind::Agent {
                what: "sample_overrun".into(),
                detail: String::new(),
            },
        ];
        for k in &kinds {
            assert!(EVENT_SOURCES.contains(&event_source(k)));
        }
        let ex = Exporter::new(&crate::config::Config::default(), "h", None);
        for k in kinds {
            ex.on_event(&Event {
                ts_unix_ns: 0,
                mono_ns: 0,
                kind: k,
            });
        }
        let text = render(&Arc::new(ex));
        assert!(
            text.contains("hvflight_events_lost_total{source=\"kmsg\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("hvflight_events_lost_total{source=\"rtnetlink\"} 0"),
            "{text}"
        );
        assert!(text.contains("hvflight_sample_overruns_total 1"), "{text}");
        assert!(
            text.contains("hvflight_events_total{source=\"fdb\"} 0"),
            "{text}"
        );
    }

    use crate::sample::{Bridge, BridgePort, DropCount, Drops, Link};

    fn sample(t: u64, counts: &[(&str, u64)]) -> Sample {
        let links: Vec<Link> = ["br0", "uplink0", "vnet0", "vnet1", "vnet2"]
            .iter()
            .enumerate()
            .map(|(i, n)| Link {
                name: n.to_string(),
                ifindex: i as u32 + 1,
                mac: if n.starts_with("vnet") {
                    format!("fe:54:00:00:00:0{i}")
                } else {
                    format!("02:00:00:00:00:0{i}")
                },
                ..Default::default()
            })
            .collect();
        let ports = links[1..]
            .iter()
            .map(|l| BridgePort {
                name: l.name.clone(),
                ifindex: l.ifindex,
                state: 3,
                ..Default::default()
            })
            .collect();
        let entries = counts
            .iter()
            .map(|(n, c)| DropCount {
                ifindex: links.iter().find(|l| l.name == *n).unwrap().ifindex,
                interface: n.to_string(),
                reason: "NETFILTER_DROP".into(),
                protocol: 0x800,
                count: *c,
            })
            .collect();
        Sample {
            mono_ns: t * 1_000_000_000,
            links: Some(links),
            bridges: Some(vec![Bridge {
                name: "br0".into(),
                ifindex: 1,
                ports,
                ..Default::default()
            }]),
            drops: Some(Drops {
                netns_inode: 1,
                loaded_mono_ns: 1,
                entries,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn shown(d: &DropSeries, s: &Sample) -> Vec<(String, f64)> {
        d.series(s)
            .into_iter()
            .map(|(l, v)| (l[0].1.clone(), v))
            .collect()
    }

    #[test]
    fn drop_series_name_uplinks_and_the_top_vnics_and_sum_the_rest() {
        let mut d = DropSeries {
            top: 1,
            ..Default::default()
        };
        let a = sample(
            1,
            &[("uplink0", 5), ("vnet0", 1), ("vnet1", 9), ("vnet2", 2)],
        );
        d.on_sample(&a);
        // The uplink always, vnet1 (most drops) as the one other name.
        assert_eq!(
            shown(&d, &a),
            vec![("uplink0".into(), 5.0), ("vnet1".into(), 9.0)]
        );
        // vnet0 and vnet2 grow: their increase goes to "other"; vnet1 stays named
        // even though vnet0 now drops more.
        let b = sample(
            2,
            &[("uplink0", 5), ("vnet0", 50), ("vnet1", 10), ("vnet2", 4)],
        );
        d.on_sample(&b);
        assert_eq!(
            shown(&d, &b),
            vec![
                ("uplink0".into(), 5.0),
                ("vnet1".into(), 10.0),
                ("other".into(), 51.0)
            ]
        );
        // vnet2's entry disappears: "other" does not go down.
        let c = sample(3, &[("uplink0", 5), ("vnet0", 50), ("vnet1", 10)]);
        d.on_sample(&c);
        assert_eq!(shown(&d, &c).last().unwrap(), &("other".into(), 51.0));
    }
}
