//! libvirt's view of the node: domains with state and reason, their vNICs
//! (from the domain XML) resolved to host interfaces, and nova metadata.
//! vNIC counters are NOT taken from libvirt: the test driver fakes them and
//! a real one reports them from the guest's side; the host's own link
//! counters (links section) are the truth.

use rustc_hash::FxHashMap;
use std::time::Duration;

use super::{CollectError, Collector, Context};
use crate::kernel::domain_xml::{reason_name, state_name};
use crate::sample::link::Link;
use crate::sample::{Domain, Libvirt, Sample};
use crate::source::libvirt::{LibvirtError, LibvirtWorker};

/// How long a domain's cached XML is trusted when nothing about the domain
/// changed (new domains, restarts and state changes are fetched at once).
pub const DEFAULT_XML_REFRESH_S: u64 = 60;

/// The libvirt collector with the default XML refresh interval.
pub fn libvirt_collector(uri: String, timeout_ms: u64, reconnect_ms: u64) -> Box<dyn Collector> {
    Box::new(LibvirtCollector::new(
        uri,
        timeout_ms,
        reconnect_ms,
        DEFAULT_XML_REFRESH_S,
    ))
}

/// Default for `collect.libvirt_interval_ms`.
pub const DEFAULT_INTERVAL_MS: u64 = 5000;

pub struct LibvirtCollector {
    worker: LibvirtWorker,
    timeout: Duration,
    /// Ask libvirt at most this often; samples in between carry the last
    /// answer with its age (vNIC counters and bridge membership come from
    /// the host's own links every sample, lifecycle changes from events).
    poll_every: Duration,
    last: Option<(Vec<Domain>, std::time::Instant)>,
    /// An earlier sample's domains, handed back by `recycle`: the cached
    /// answer is copied into their strings instead of new ones.
    spare: Vec<Domain>,
}

impl LibvirtCollector {
    /// Starts the worker thread (it connects on the first sample, so this
    /// never blocks). `timeout_ms`: how long one sample waits for libvirt;
    /// `reconnect_ms`: the first reconnect delay (it doubles while libvirt
    /// stays away, up to 8×).
    pub fn new(uri: String, timeout_ms: u64, reconnect_ms: u64, xml_refresh_s: u64) -> Self {
        LibvirtCollector {
            worker: LibvirtWorker::start(
                uri,
                Duration::from_millis(reconnect_ms),
                Duration::from_secs(xml_refresh_s),
            ),
            timeout: Duration::from_millis(timeout_ms),
            poll_every: Duration::ZERO,
            last: None,
            spare: Vec::new(),
        }
    }

    /// Ask libvirt at most this often (ZERO = every sample).
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll_every = every;
        self
    }
}

/// Fills `host_ifindex`/`host_ifname` of every vNIC from the host's links:
/// by target dev when it names a real interface, else by MAC (guest MAC
/// with first octet fe). The bridge itself may carry a port's fe: MAC (it
/// takes its lowest port MAC), so bridges are never candidates, and among
/// several candidates the one enslaved to the vNIC's bridge wins.
pub fn resolve_vnics(domains: &mut [Domain], links: &[Link]) {
    use crate::detect::frames::parse_mac;
    let by_name: FxHashMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();
    // By MAC as bytes: no string per link or vNIC, in any case.
    let mut by_mac: FxHashMap<[u8; 6], Vec<&Link>> = FxHashMap::default();
    for l in links.iter().filter(|l| l.kind != "bridge") {
        if let Some(m) = parse_mac(&l.mac) {
            by_mac.entry(m).or_default().push(l);
        }
    }
    for v in domains.iter_mut().flat_map(|d| d.vnics.iter_mut()) {
        let found = by_name.get(v.target_dev.as_str()).copied().or_else(|| {
            let mut host_mac = parse_mac(&v.mac)?;
            // libvirt's convention: the host's tap is the guest MAC with
            // first octet fe (so the bridge, which takes its lowest port
            // MAC, never takes a tap's).
            host_mac[0] = 0xfe;
            let candidates = by_mac.get(&host_mac)?;
            let bridge = by_name.get(v.bridge.as_str()).map(|b| b.ifindex);
            candidates
                .iter()
                .find(|l| bridge.is_some() && l.master == bridge)
                .or_else(|| candidates.iter().min_by_key(|l| l.ifindex))
                .copied()
        });
        v.host_ifindex = found.map(|l| l.ifindex);
        match (&mut v.host_ifname, found) {
            (Some(name), Some(l)) => name.clone_from(&l.name),
            (slot, found) => *slot = found.map(|l| l.name.clone()),
        }
    }
}

impl Collector for LibvirtCollector {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        if let Some((domains, at)) = &self.last {
            let age = at.elapsed();
            if age < self.poll_every {
                let mut spare = std::mem::take(&mut self.spare);
                spare.clone_from(domains);
                let mut domains = spare;
                resolve_vnics(&mut domains, sample.links.as_deref().unwrap_or_default());
                sample.libvirt = Some(Libvirt {
                    uri: self.worker.uri.clone(),
                    domains,
                    xml_fetches: 0,
                    age_ms: age.as_millis() as u64,
                });
                return Ok(());
            }
        }
        // A failed round is never papered over with an old answer.
        self.last = None;
        let result = self.worker.domains(self.timeout);
        let uri = &self.worker.uri;
        let snap = result.map_err(|e| match e {
            LibvirtError::Timeout { .. } | LibvirtError::Busy { .. } => CollectError::Timeout {
                what: format!("libvirt {uri}: {e}"),
                ms: self.timeout.as_millis() as u64,
            },
            e => CollectError::Libvirt {
                uri: uri.clone(),
                msg: e.to_string(),
            },
        })?;
        let mut domains: Vec<Domain> = snap
            .domains
            .into_iter()
            .map(|d| Domain {
                name: d.name,
                uuid: d.uuid,
                id: d.id,
                state: state_name(d.state).to_string(),
                reason: reason_name(d.state, d.reason),
                vnics: d.xml.vnics,
                nova: d.xml.nova,
                xml_error: d.xml_error,
            })
            .collect();
        if !self.poll_every.is_zero() {
            self.last = Some((domains.clone(), std::time::Instant::now()));
        }
        resolve_vnics(&mut domains, sample.links.as_deref().unwrap_or_default());
        sample.libvirt = Some(Libvirt {
            uri: uri.clone(),
            domains,
            xml_fetches: snap.xml_fetches,
            age_ms: 0,
        });
        Ok(())
    }

    fn recycle(&mut self, old: &mut Sample) {
        if let Some(l) = old.libvirt.take() {
            self.spare = l.domains;
        }
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use crate::sample::Vnic;

    fn link(ifindex: u32, name: &str, mac: &str, kind: &str, master: Option<u32>) -> Link {
        Link {
            ifindex,
            name: name.into(),
            mac: mac.into(),
            kind: kind.into(),
            master,
            ..Default::default()
        }
    }

    #[test]
    fn vnics_resolve_by_target_dev_else_by_the_fe_mac_on_their_bridge() {
        let links = vec![
            // The bridge took its lowest port's MAC: never a candidate.
            link(1, "br0", "fe:54:00:00:00:01", "bridge", None),
            link(2, "br1", "00:00:00:00:00:09", "bridge", None),
            // The same fe: MAC on two bridges (upper case from a driver).
            link(5, "vnet5", "FE:54:00:00:00:01", "tun", Some(2)),
            link(7, "vnet0", "fe:54:00:00:00:01", "tun", Some(1)),
            link(8, "tap-named", "aa:aa:aa:aa:aa:aa", "tun", Some(1)),
        ];
        let vnic = |mac: &str, target: &str, stale: Option<&str>| Vnic {
            mac: mac.into(),
            target_dev: target.into(),
            bridge: "br0".into(),
            // A recycled vNIC may carry an earlier sample's answer.
            host_ifname: stale.map(String::from),
            host_ifindex: stale.map(|_| 99),
            ..Default::default()
        };
        let mut domains = vec![Domain {
            vnics: vec![
                vnic("52:54:00:00:00:01", "testnet0", Some("older-name")),
                vnic("52:54:00:00:00:02", "tap-named", None),
                vnic("52:54:00:00:00:03", "testnet1", Some("older-name")),
            ],
            ..Default::default()
        }];
        resolve_vnics(&mut domains, &links);
        let got: Vec<(Option<u32>, Option<&str>)> = domains[0]
            .vnics
            .iter()
            .map(|v| (v.host_ifindex, v.host_ifname.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(7), Some("vnet0")),
                (Some(8), Some("tap-named")),
                (None, None)
            ]
        );
        // Without the vNIC's bridge among the links, the lowest ifindex wins.
        domains[0].vnics[0].bridge = "gone".into();
        resolve_vnics(&mut domains, &links);
        assert_eq!(domains[0].vnics[0].host_ifname.as_deref(), Some("vnet5"));
    }
}
