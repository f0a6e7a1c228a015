//! The bridge forwarding database from ONE AF_BRIDGE RTM_GETNEIGH dump
//! (what `bridge fdb show` prints), decoded one entry at a time as the dump
//! streams in and capped, so a flooded FDB cannot blow the agent's memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use netlink_packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{CollectError, Collector, Context};
use crate::sample::{FdbEntry, Sample};
use crate::source::netlink::{mac_string, RouteSocket};

const RTM_NEWNEIGH: u16 = 28;

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

/// Builds the FDB section one dump message at a time, so a 100k-entry FDB
/// costs `max_entries` entries of memory, not a decoded copy of the whole
/// table: entries of the bridges in `wanted` (by NDA_MASTER; None = all),
/// at most `max_entries`; the rest are only counted.
pub struct FdbSection<'a> {
    names: &'a HashMap<u32, String>,
    wanted: Option<&'a [u32]>,
    max_entries: usize,
    pub entries: Vec<FdbEntry>,
    /// Entries left out by the cap.
    pub dropped: usize,
    /// Messages netlink-packet-route could not decode (skipped), and the first error.
    pub undecodable: usize,
    pub first_error: Option<String>,
}

impl<'a> FdbSection<'a> {
    pub fn new(
        names: &'a HashMap<u32, String>,
        wanted: Option<&'a [u32]>,
        max_entries: usize,
    ) -> Self {
        FdbSection {
            names,
            wanted,
            max_entries,
            entries: Vec::new(),
            dropped: 0,
            undecodable: 0,
            first_error: None,
        }
    }

    /// Forgets what was added (an interrupted dump is read again).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.dropped = 0;
        self.undecodable = 0;
        self.first_error = None;
    }

    pub fn add(&mut self, m: &NeighbourMessage) {
        let Some(e) = parse_fdb(m, self.names) else {
            return;
        };
        if let Some(w) = self.wanted {
            if !e.master.is_some_and(|b| w.contains(&b)) {
                return;
            }
        }
        if self.entries.len() >= self.max_entries {
            self.dropped += 1;
            return;
        }
        self.entries.push(e);
    }

    /// Adds one RTM_NEWNEIGH payload (after the netlink header).
    pub fn add_payload(&mut self, payload: &[u8]) {
        use netlink_packet_core::Parseable;
        if is_device_multicast_entry(payload) {
            return;
        }
        match NeighbourMessage::parse(payload) {
            Ok(m) => self.add(&m),
            Err(e) => {
                self.undecodable += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.to_string());
                }
            }
        }
    }
}

/// Whether a raw AF_BRIDGE neighbour payload is one of a device's own
/// multicast filter addresses (`33:33:… dev vnet5 self permanent`): the
/// kernel's FDB dump lists every device's multicast list (ndo_dflt_fdb_dump),
/// three or more per vNIC, which says nothing about forwarding. Read from the
/// raw bytes so the 60% of a 500-vNIC dump that these are is never decoded.
pub fn is_device_multicast_entry(payload: &[u8]) -> bool {
    use netlink_packet_core::NlasIterator;
    const NTF_SELF: u8 = 0x02;
    const NTF_MASTER: u8 = 0x04;
    const NDA_LLADDR: u16 = 2;
    const NDA_MASTER: u16 = 9;
    // struct ndmsg: family u8, pad u8, pad u16, ifindex i32, state u16, flags u8, type u8
    let Some(&flags) = payload.get(10) else {
        return false;
    };
    if flags & NTF_SELF == 0 || flags & NTF_MASTER != 0 {
        return false;
    }
    let mut multicast = false;
    for nla in NlasIterator::new(payload.get(12..).unwrap_or_default()) {
        let Ok(nla) = nla else { return false };
        match nla.kind() {
            NDA_MASTER => return false,
            NDA_LLADDR => multicast = nla.value().first().is_some_and(|b| b & 1 == 1),
            _ => {}
        }
    }
    multicast
}

impl Collector for FdbCollector {
    fn name(&self) -> &'static str {
        "fdb"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
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
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let section = RefCell::new(FdbSection::new(&names, wanted.as_deref(), self.max_entries));
        let socket = RouteSocket::ensure(&mut self.socket, self.timeout)?;
        socket
            .dump_raw(
                "fdb",
                RouteNetlinkMessage::GetNeighbour(req),
                &mut || section.borrow_mut().reset(),
                &mut |ty, payload| {
                    if ty == RTM_NEWNEIGH {
                        section.borrow_mut().add_payload(payload);
                    }
                },
            )
            .inspect_err(|_| self.socket = None)?;
        let FdbSection {
            entries,
            dropped,
            undecodable,
            first_error,
            ..
        } = section.into_inner();
        sample.fdb = Some(entries);
        if undecodable > 0 {
            return Err(CollectError::Netlink {
                what: "fdb".into(),
                msg: format!(
                    "{undecodable} entries not decodable, skipped: {}",
                    first_error.unwrap_or_default()
                ),
            });
        }
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
