//! libvirt's view of the node: domains with state and reason, their vNICs
//! (from the domain XML) resolved to host interfaces, and nova metadata.
//! vNIC counters are NOT taken from libvirt: the test driver fakes them and
//! a real one reports them from the guest's side; the host's own link
//! counters (links section) are the truth.

use std::collections::HashMap;
use std::time::Duration;

use super::{CollectError, Collector, Context};
use crate::kernel::domain_xml::{reason_name, state_name};
use crate::sample::{Domain, Libvirt, Sample};
use crate::source::libvirt::LibvirtWorker;

pub struct LibvirtCollector {
    worker: LibvirtWorker,
    timeout: Duration,
}

impl LibvirtCollector {
    pub fn new(uri: String, timeout_ms: u64, reconnect_ms: u64, xml_refresh_s: u64) -> Self {
        LibvirtCollector {
            worker: LibvirtWorker::start(
                uri,
                Duration::from_millis(reconnect_ms),
                Duration::from_secs(xml_refresh_s),
            ),
            timeout: Duration::from_millis(timeout_ms),
        }
    }
}

/// The host port of a guest MAC under libvirt's convention: first octet fe.
pub fn host_mac_of(guest_mac: &str) -> String {
    match guest_mac.split_once(':') {
        Some((_, rest)) => format!("fe:{rest}"),
        None => guest_mac.to_string(),
    }
}

impl Collector for LibvirtCollector {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let uri = self.worker.uri.clone();
        let raw = self
            .worker
            .domains(self.timeout)
            .map_err(|(msg, timed_out)| {
                if timed_out {
                    CollectError::Timeout {
                        what: format!("libvirt {uri}: {msg}"),
                        ms: self.timeout.as_millis() as u64,
                    }
                } else {
                    CollectError::Libvirt {
                        uri: uri.clone(),
                        msg,
                    }
                }
            })?;
        let by_name: HashMap<&str, (u32, &str)> = sample
            .links
            .iter()
            .flatten()
            .map(|l| (l.name.as_str(), (l.ifindex, l.name.as_str())))
            .collect();
        let by_mac: HashMap<&str, (u32, &str)> = sample
            .links
            .iter()
            .flatten()
            .map(|l| (l.mac.as_str(), (l.ifindex, l.name.as_str())))
            .collect();
        let domains = raw
            .into_iter()
            .map(|d| {
                let mut vnics = d.xml.vnics;
                for v in vnics.iter_mut() {
                    let host_mac = host_mac_of(&v.mac);
                    let found = by_name
                        .get(v.target_dev.as_str())
                        .or_else(|| by_mac.get(host_mac.as_str()));
                    if let Some((ifindex, name)) = found {
                        v.host_ifindex = Some(*ifindex);
                        v.host_ifname = Some(name.to_string());
                    }
                }
                Domain {
                    name: d.name,
                    uuid: d.uuid,
                    id: d.id,
                    state: state_name(d.state).to_string(),
                    reason: reason_name(d.state, d.reason),
                    vnics,
                    nova: d.xml.nova,
                }
            })
            .collect();
        sample.libvirt = Some(Libvirt { uri, domains });
        Ok(())
    }
}
