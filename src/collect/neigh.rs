//! Neighbour (ARP/ND) tables: entries counted by family, NUD state and
//! device from two rtnetlink dumps, plus the limits and stats the kernel
//! keeps in /proc (gc_thresh*, arp_cache/ndisc_cache — global, so absent in
//! a child namespace, which is normal and not a failure).
//!
//! Only the 12-byte ndmsg header of each entry is read, as the dump streams
//! in: a table at its limit during an F4 storm (tens of thousands of
//! entries) costs a few counters, not a decoded copy of the table.

use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::time::Duration;

use netlink_packet_route::neighbour::{NeighbourHeader, NeighbourMessage, NeighbourState};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::fdb::nud_name;
use super::{CollectError, Collector, Context};
use crate::sample::{Neighbours, Sample};
use crate::source::netlink::RouteSocket;

const RTM_NEWNEIGH: u16 = 28;

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

/// One family's entries, counted as the dump streams in (keys are raw:
/// NUD state and ifindex; names are looked up once at the end).
#[derive(Default, Debug)]
pub struct FamilyCount {
    pub total: u32,
    pub by_state: FxHashMap<u16, u32>,
    pub by_ifindex: FxHashMap<u32, u32>,
    /// Payloads too short to hold an ndmsg header (skipped).
    pub undecodable: u32,
}

impl FamilyCount {
    pub fn add_header(&mut self, h: &NeighbourHeader) {
        self.total += 1;
        *self.by_state.entry(u16::from(h.state)).or_default() += 1;
        *self.by_ifindex.entry(h.ifindex).or_default() += 1;
    }

    /// Adds one RTM_NEWNEIGH payload (after the netlink header).
    pub fn add_payload(&mut self, payload: &[u8]) {
        match NeighbourHeader::parse(payload) {
            Ok(h) => self.add_header(&h),
            Err(_) => self.undecodable += 1,
        }
    }

    /// Moves the counts into `n` under `key` ("inet" or "inet6"); devices
    /// are named from the sample's links ("?" when unknown: gone meanwhile).
    pub fn apply_to(self, n: &mut Neighbours, key: &str, names: &FxHashMap<u32, &str>) {
        let by_state = n.by_state.entry(key.to_string()).or_default();
        for (state, count) in self.by_state {
            *by_state
                .entry(nud_name(NeighbourState::from(state)))
                .or_default() += count;
        }
        for (ifindex, count) in self.by_ifindex {
            let dev = names.get(&ifindex).copied().unwrap_or("?");
            *n.by_dev.entry(dev.to_string()).or_default() += count;
        }
        if key == "inet" {
            n.total_inet = self.total;
        } else {
            n.total_inet6 = self.total;
        }
    }
}

impl Collector for NeighCollector {
    fn name(&self) -> &'static str {
        "neighbours"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let names: FxHashMap<u32, &str> = sample
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
            let count = RefCell::new(FamilyCount::default());
            let socket = RouteSocket::ensure(&mut self.socket, self.timeout)?;
            socket
                .dump_raw(
                    key,
                    RouteNetlinkMessage::GetNeighbour(req),
                    &mut || *count.borrow_mut() = FamilyCount::default(),
                    &mut |ty, payload| {
                        if ty == RTM_NEWNEIGH {
                            count.borrow_mut().add_payload(payload);
                        }
                    },
                )
                .inspect_err(|_| self.socket = None)?;
            let count = count.into_inner();
            if count.undecodable > 0 {
                return Err(CollectError::Netlink {
                    what: key.into(),
                    msg: format!(
                        "{} neighbour entries too short to decode",
                        count.undecodable
                    ),
                });
            }
            count.apply_to(&mut n, key, &names);
        }
        super::neigh_limits::read_neigh_limits(ctx)?.apply_to(&mut n);
        sample.neighbours = Some(n);
        Ok(())
    }
}
