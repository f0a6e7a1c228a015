//! Prometheus exposition: `/metrics` on loopback (config `agent.metrics_listen`,
//! default 127.0.0.1:9469; empty disables). Values come from the latest
//! sample at scrape time (an exporter-style collector), so scraping costs
//! the agent nothing between scrapes.
//!
//! Label cardinality is bounded: interfaces only for bridges and their
//! uplinks (never per vNIC), collectors by their fixed names, domains once
//! each in `hvflight_domain_info` (as many series as domains on the host).
//! The one exception, `hvflight_drops_total{interface,reason}`, adds at most
//! `agent.metrics_drop_interfaces` other interfaces (the vNICs that dropped
//! most) and sums the rest into interface="other"; reasons are the running
//! kernel's fixed enum (see `DropSeries`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::agent::print::is_vnic;
use crate::sample::Sample;

#[derive(Debug, Default)]
pub struct Snapshot {
    pub sample: Option<Sample>,
    pub samples_total: u64,
    pub collector_failures_total: BTreeMap<String, u64>,
    pub store_bytes: u64,
    pub store_dropped_records: u64,
    pub bundles: u64,
    pub last_incident_unix_s: Option<f64>,
    pub tail_clients: u64,
    pub unknown_config_keys: u64,
    /// Detector state name ("" = off), eligible and total guests.
    pub detector_state: String,
    pub eligible_guests: u64,
    pub guests: u64,
    pub drops: DropSeries,
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
}

impl Exporter {
    pub fn on_sample(&self, s: &Sample) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.samples_total += 1;
        for f in &s.failures {
            *st.collector_failures_total
                .entry(f.collector.clone())
                .or_default() += 1;
        }
        st.drops.on_sample(s);
        st.sample = Some(s.clone());
    }
}

type Labels = Vec<(String, String)>;

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

impl Collector for Exporter {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let none = Labels::new();
        counter(
            &mut enc,
            "hvflight_samples",
            "Samples taken since the agent started.",
            &[(none.clone(), st.samples_total as f64)],
        )?;
        let failures: Vec<(Labels, f64)> = st
            .collector_failures_total
            .iter()
            .map(|(c, n)| (l(&[("collector", c)]), *n as f64))
            .collect();
        counter(
            &mut enc,
            "hvflight_collector_failures",
            "Samples in which a collector failed, by collector.",
            &failures,
        )?;
        gauge(
            &mut enc,
            "hvflight_store_bytes",
            "Bytes in the flight-recorder store.",
            &[(none.clone(), st.store_bytes as f64)],
        )?;
        counter(
            &mut enc,
            "hvflight_store_dropped_records",
            "Records not stored (disk full).",
            &[(none.clone(), st.store_dropped_records as f64)],
        )?;
        gauge(
            &mut enc,
            "hvflight_bundles",
            "Bundles kept on this node.",
            &[(none.clone(), st.bundles as f64)],
        )?;
        if let Some(t) = st.last_incident_unix_s {
            gauge(
                &mut enc,
                "hvflight_last_incident_timestamp_seconds",
                "When the last incident started.",
                &[(none.clone(), t)],
            )?;
        }
        gauge(
            &mut enc,
            "hvflight_tail_clients",
            "Connected tail clients.",
            &[(none.clone(), st.tail_clients as f64)],
        )?;
        gauge(
            &mut enc,
            "hvflight_config_unknown_keys",
            "Config keys the agent ignored.",
            &[(none.clone(), st.unknown_config_keys as f64)],
        )?;
        if !st.detector_state.is_empty() {
            let states = ["healthy", "suspect", "collapsed", "recovering"];
            let series: Vec<(Labels, f64)> = states
                .iter()
                .map(|x| {
                    (
                        l(&[("state", x)]),
                        if *x == st.detector_state { 1.0 } else { 0.0 },
                    )
                })
                .collect();
            gauge(
                &mut enc,
                "hvflight_detector_state",
                "1 for the detector's current state.",
                &series,
            )?;
            gauge(
                &mut enc,
                "hvflight_detector_eligible_guests",
                "Guests whose traffic can judge the uplink now.",
                &[(none.clone(), st.eligible_guests as f64)],
            )?;
            gauge(
                &mut enc,
                "hvflight_detector_guests",
                "Guests (vNIC ports) on watched bridges.",
                &[(none.clone(), st.guests as f64)],
            )?;
        }
        let Some(s) = &st.sample else { return Ok(()) };
        gauge(
            &mut enc,
            "hvflight_sample_duration_seconds",
            "How long the last sample took.",
            &[(none.clone(), s.duration_us as f64 / 1e6)],
        )?;
        gauge(
            &mut enc,
            "hvflight_sample_lag_seconds",
            "How late the last sample started.",
            &[(none.clone(), s.lag_us as f64 / 1e6)],
        )?;
        gauge(
            &mut enc,
            "hvflight_sample_timestamp_seconds",
            "Wall time of the last sample.",
            &[(none.clone(), s.ts_unix_ns as f64 / 1e9)],
        )?;

        // Bridges and their uplinks (never vNICs: bounded cardinality).
        let (mut rx_p, mut tx_p, mut rx_d, mut tx_d, mut carrier, mut port_state, mut vnics) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
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
                rx_p.push((lb.clone(), link.stats.rx_packets as f64));
                tx_p.push((lb.clone(), link.stats.tx_packets as f64));
                rx_d.push((lb.clone(), link.stats.rx_dropped as f64));
                tx_d.push((lb.clone(), link.stats.tx_dropped as f64));
                if let Some(c) = link.carrier {
                    carrier.push((lb.clone(), if c { 1.0 } else { 0.0 }));
                }
                if let Some(st) = state {
                    port_state.push((lb, st as f64));
                }
            }
        }
        counter(
            &mut enc,
            "hvflight_link_receive_packets",
            "Packets received, bridges and uplinks.",
            &rx_p,
        )?;
        counter(
            &mut enc,
            "hvflight_link_transmit_packets",
            "Packets sent, bridges and uplinks.",
            &tx_p,
        )?;
        counter(
            &mut enc,
            "hvflight_link_receive_drops",
            "Receive drops, bridges and uplinks.",
            &rx_d,
        )?;
        counter(
            &mut enc,
            "hvflight_link_transmit_drops",
            "Transmit drops, bridges and uplinks.",
            &tx_d,
        )?;
        gauge(
            &mut enc,
            "hvflight_link_carrier",
            "1 if the interface has carrier.",
            &carrier,
        )?;
        gauge(
            &mut enc,
            "hvflight_bridge_port_state",
            "STP state of an uplink port (3 = forwarding).",
            &port_state,
        )?;
        gauge(
            &mut enc,
            "hvflight_bridge_vnics",
            "vNIC ports on the bridge.",
            &vnics,
        )?;
        if let Some(c) = &s.conntrack {
            if let Some(n) = c.count {
                gauge(
                    &mut enc,
                    "hvflight_conntrack_entries",
                    "Conntrack table entries.",
                    &[(none.clone(), n as f64)],
                )?;
            }
            if let Some(n) = c.max {
                gauge(
                    &mut enc,
                    "hvflight_conntrack_entries_limit",
                    "nf_conntrack_max.",
                    &[(none.clone(), n as f64)],
                )?;
            }
            if let Some(d) = c.stats.get("drop") {
                counter(
                    &mut enc,
                    "hvflight_conntrack_drops",
                    "Packets conntrack dropped.",
                    &[(none.clone(), *d as f64)],
                )?;
            }
        }
        if let Some(n) = &s.neighbours {
            gauge(
                &mut enc,
                "hvflight_neighbour_entries",
                "Neighbour table entries by family.",
                &[
                    (l(&[("family", "inet")]), n.total_inet as f64),
                    (l(&[("family", "inet6")]), n.total_inet6 as f64),
                ],
            )?;
            if let Some(t) = n.gc_thresh {
                gauge(
                    &mut enc,
                    "hvflight_neighbour_gc_thresh3",
                    "IPv4 neighbour table hard limit.",
                    &[(none.clone(), t[2] as f64)],
                )?;
            }
        }
        if let Some(sn) = &s.softnet {
            counter(
                &mut enc,
                "hvflight_softnet_drops",
                "Backlog drops, all CPUs (softnet_stat).",
                &[(
                    none.clone(),
                    sn.iter().map(|c| c.dropped).sum::<u64>() as f64,
                )],
            )?;
            counter(
                &mut enc,
                "hvflight_softnet_time_squeeze",
                "NET_RX budget exhaustions, all CPUs.",
                &[(
                    none.clone(),
                    sn.iter().map(|c| c.time_squeeze).sum::<u64>() as f64,
                )],
            )?;
        }
        if let Some(d) = &s.drops {
            counter(
                &mut enc,
                "hvflight_drops",
                "Packets the kernel dropped (skb:kfree_skb), by interface and drop reason; bounded interfaces (see docs/drop-reasons.md).",
                &st.drops.series(s),
            )?;
            counter(
                &mut enc,
                "hvflight_drops_overflow",
                "Drops not counted per interface because the kernel map was full.",
                &[(none.clone(), d.overflow as f64)],
            )?;
            gauge(
                &mut enc,
                "hvflight_drops_map_entries",
                "Keys in the in-kernel drop map (all namespaces).",
                &[(none.clone(), d.map_entries as f64)],
            )?;
            gauge(
                &mut enc,
                "hvflight_drops_map_entries_limit",
                "Bound of the in-kernel drop map (collect.drops_max_entries).",
                &[(none.clone(), d.map_max_entries as f64)],
            )?;
        }
        gauge(
            &mut enc,
            "hvflight_libvirt_up",
            "1 if libvirt answered the last sample.",
            &[(none.clone(), if s.libvirt.is_some() { 1.0 } else { 0.0 })],
        )?;
        if let Some(lv) = &s.libvirt {
            let mut by_state: BTreeMap<&str, f64> = BTreeMap::new();
            let mut info = Vec::new();
            for d in &lv.domains {
                *by_state.entry(d.state.as_str()).or_default() += 1.0;
                let nova = d.nova.clone().unwrap_or_default();
                info.push((
                    l(&[
                        ("domain", &d.name),
                        ("uuid", &d.uuid),
                        ("state", &d.state),
                        ("nova_name", &nova.instance_name),
                        ("nova_project", &nova.project_name),
                    ]),
                    1.0,
                ));
            }
            let by: Vec<(Labels, f64)> = by_state
                .into_iter()
                .map(|(k, v)| (l(&[("state", k)]), v))
                .collect();
            gauge(&mut enc, "hvflight_domains", "Domains by state.", &by)?;
            gauge(
                &mut enc,
                "hvflight_domain_info",
                "One series per domain, with nova metadata.",
                &info,
            )?;
        }
        Ok(())
    }
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
