//! Neighbour (ARP/ND) tables: entries counted by family, NUD state and
//! device from two rtnetlink dumps, plus the limits and stats the kernel
//! keeps in /proc (gc_thresh*, arp_cache/ndisc_cache — global, so absent in
//! a child namespace, which is normal and not a failure).

use std::time::Duration;

use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::fdb::nud_name;
use super::{CollectError, Collector, Context};
use crate::sample::{Neighbours, Sample};
use crate::source::netlink::RouteSocket;

pub struct NeighCollector {
    socket: Option<RouteSocket>,
    timeout: Duration,
}

impl NeighCollector {
    pub fn new(timeout: Duration) -> Self {
        NeighCollector {
            socket: None,
            timeout,
        }
    }
}

impl Collector for NeighCollector {
    fn name(&self) -> &'static str {
        "neighbours"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let names: std::collections::HashMap<u32, &str> = sample
            .links
            .iter()
            .flatten()
            .map(|l| (l.ifindex, l.name.as_str()))
            .collect();
        let mut n = Neighbours::default();
        for (family, key) in [
            (AddressFamily::Inet, "inet"),
            (AddressFamily::Inet6, "inet6"),
        ] {
            let mut req = NeighbourMessage::default();
            req.header.family = family;
            let socket = RouteSocket::ensure(&mut self.socket, self.timeout)?;
            let msgs = socket
                .dump(key, RouteNetlinkMessage::GetNeighbour(req))
                .inspect_err(|_| self.socket = None)?;
            let by_state = n.by_state.entry(key.to_string()).or_default();
            let mut total = 0u32;
            for m in &msgs {
                let RouteNetlinkMessage::NewNeighbour(m) = m else {
                    continue;
                };
                total += 1;
                *by_state.entry(nud_name(m.header.state)).or_default() += 1;
                let dev = names.get(&m.header.ifindex).copied().unwrap_or("?");
                *n.by_dev.entry(dev.to_string()).or_default() += 1;
            }
            if key == "inet" {
                n.total_inet = total;
            } else {
                n.total_inet6 = total;
            }
        }
        super::neigh_limits::read_neigh_limits(ctx)?.apply_to(&mut n);
        sample.neighbours = Some(n);
        Ok(())
    }
}
