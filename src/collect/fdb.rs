//! The bridge forwarding database from ONE AF_BRIDGE RTM_GETNEIGH dump
//! (what `bridge fdb show` prints), capped so a flooded FDB cannot blow
//! the agent's memory.

use std::collections::HashMap;
use std::time::Duration;

use netlink_packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{CollectError, Collector, Context};
use crate::sample::{FdbEntry, Sample};
use crate::source::netlink::{mac_string, RouteSocket};

pub struct FdbCollector {
    socket: Option<RouteSocket>,
    timeout: Duration,
    max_entries: usize,
}

impl FdbCollector {
    pub fn new(timeout: Duration, max_entries: usize) -> Self {
        FdbCollector {
            socket: None,
            timeout,
            max_entries,
        }
    }
}

/// NUD state as `bridge fdb` names it.
pub fn fdb_state(s: NeighbourState) -> &'static str {
    match s {
        NeighbourState::Permanent => "permanent",
        NeighbourState::Noarp => "static",
        NeighbourState::Reachable | NeighbourState::Stale => "dynamic",
        _ => "other",
    }
}

pub fn nud_name(s: NeighbourState) -> String {
    format!("{s:?}").to_lowercase()
}

/// Pure conversion of one AF_BRIDGE neighbour message (dump reply or event).
pub fn parse_fdb(m: &NeighbourMessage, names: &HashMap<u32, String>) -> Option<FdbEntry> {
    let mut e = FdbEntry {
        ifindex: m.header.ifindex,
        state: fdb_state(m.header.state).to_string(),
        is_self: m.header.flags.contains(NeighbourFlags::Own),
        extern_learn: m.header.flags.contains(NeighbourFlags::ExtLearned),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => e.mac = mac_string(b),
            NeighbourAttribute::Vlan(v) => e.vlan = Some(*v),
            NeighbourAttribute::Controller(v) => e.master = Some(*v),
            // NDA_CACHEINFO times are in clock ticks (USER_HZ = 100).
            NeighbourAttribute::CacheInfo(c) => e.updated_s = Some(c.updated / 100),
            _ => {}
        }
    }
    if e.mac.is_empty() {
        return None;
    }
    e.port = names.get(&e.ifindex).cloned().unwrap_or_default();
    Some(e)
}

impl Collector for FdbCollector {
    fn name(&self) -> &'static str {
        "fdb"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let socket = RouteSocket::ensure(&mut self.socket, self.timeout)?;
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let msgs = socket
            .dump("fdb", RouteNetlinkMessage::GetNeighbour(req))
            .inspect_err(|_| self.socket = None)?;
        let names: HashMap<u32, String> = sample
            .links
            .iter()
            .flatten()
            .map(|l| (l.ifindex, l.name.clone()))
            .collect();
        // Only entries of the watched bridges (NDA_MASTER), when bridges are named.
        let wanted: Option<Vec<u32>> = if ctx.bridges.is_empty() {
            None
        } else {
            Some(
                sample
                    .links
                    .iter()
                    .flatten()
                    .filter(|l| ctx.bridges.contains(&l.name))
                    .map(|l| l.ifindex)
                    .collect(),
            )
        };
        let mut entries = Vec::new();
        let mut dropped = 0usize;
        for m in &msgs {
            let RouteNetlinkMessage::NewNeighbour(m) = m else {
                continue;
            };
            let Some(e) = parse_fdb(m, &names) else {
                continue;
            };
            if let Some(w) = &wanted {
                if !e.master.is_some_and(|b| w.contains(&b)) {
                    continue;
                }
            }
            if entries.len() >= self.max_entries {
                dropped += 1;
                continue;
            }
            entries.push(e);
        }
        sample.fdb = Some(entries);
        if dropped > 0 {
            // The section is kept (capped); the cap is recorded like a failure.
            return Err(CollectError::Unavailable(format!(
                "fdb capped at {} entries, {dropped} not recorded",
                self.max_entries
            )));
        }
        Ok(())
    }
}
