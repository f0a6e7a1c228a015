//! Qdisc statistics (what `tc -s qdisc` prints) from one RTM_GETQDISC dump.

use std::collections::HashMap;
use std::time::Duration;

use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcStats2};
use netlink_packet_route::RouteNetlinkMessage;

use super::{CollectError, Collector, Context};
use crate::sample::{Qdisc, Sample};
use crate::source::netlink::RouteSocket;

pub struct QdiscCollector {
    socket: Option<RouteSocket>,
    timeout: Duration,
}

impl QdiscCollector {
    pub fn new(timeout: Duration) -> Self {
        QdiscCollector {
            socket: None,
            timeout,
        }
    }
}

fn handle(h: &TcHandle) -> String {
    if h.major == 0xffff && h.minor == 0xffff {
        return "root".into();
    }
    format!("{:x}:{:x}", h.major, h.minor)
}

pub fn parse_qdisc<S: AsRef<str>>(m: &TcMessage, names: &HashMap<u32, S>) -> Qdisc {
    let ifindex = m.header.index as u32;
    let mut q = Qdisc {
        ifindex,
        dev: names
            .get(&ifindex)
            .map(|n| n.as_ref().to_string())
            .unwrap_or_default(),
        handle: handle(&m.header.handle),
        parent: handle(&m.header.parent),
        ..Default::default()
    };
    let mut have_stats2 = false;
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => q.kind = k.clone(),
            TcAttribute::Stats2(s) => {
                have_stats2 = true;
                for st in s {
                    match st {
                        TcStats2::Basic(b) => {
                            q.bytes = b.bytes;
                            q.packets = b.packets as u64;
                        }
                        TcStats2::Queue(qu) => {
                            q.drops = qu.drops as u64;
                            q.overlimits = qu.overlimits as u64;
                            q.requeues = qu.requeues as u64;
                            q.backlog_bytes = qu.backlog as u64;
                            q.qlen = qu.qlen as u64;
                        }
                        _ => {}
                    }
                }
            }
            TcAttribute::Stats(s) if !have_stats2 => {
                q.bytes = s.bytes;
                q.packets = s.packets as u64;
                q.drops = s.drops as u64;
                q.overlimits = s.overlimits as u64;
                q.backlog_bytes = s.backlog as u64;
                q.qlen = s.qlen as u64;
            }
            _ => {}
        }
    }
    q
}

/// Decodes one RTM_NEWQDISC payload, but only the attributes a sample keeps
/// (TCA_KIND, TCA_STATS, TCA_STATS2): each qdisc's options and extended
/// stats are decoded by the crate into vectors of their own, which at 500
/// vNICs cost more than the rest of the message.
pub fn parse_qdisc_payload(payload: &[u8]) -> Option<TcMessage> {
    use netlink_packet_core::{NlasIterator, ParseableParametrized};
    use netlink_packet_route::tc::TcHeader;
    const TCA_KIND: u16 = 1;
    const TCA_STATS: u16 = 3;
    const TCA_STATS2: u16 = 7;
    const TC_HEADER_LEN: usize = 20;
    if payload.len() < TC_HEADER_LEN {
        return None;
    }
    let mut m = TcMessage::default();
    m.header = TcHeader::parse(payload).ok()?;
    let mut kind = String::new();
    for nla in NlasIterator::new(&payload[TC_HEADER_LEN..]) {
        let Ok(nla) = nla else { break };
        if ![TCA_KIND, TCA_STATS, TCA_STATS2].contains(&nla.kind()) {
            continue;
        }
        if let Ok(a) = TcAttribute::parse_with_param(&nla, kind.as_str()) {
            if let TcAttribute::Kind(k) = &a {
                kind.clone_from(k);
            }
            m.attributes.push(a);
        }
    }
    Some(m)
}

impl Collector for QdiscCollector {
    fn name(&self) -> &'static str {
        "qdisc"
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        const RTM_NEWQDISC: u16 = 36;
        let names: HashMap<u32, &str> = sample
            .links
            .iter()
            .flatten()
            .map(|l| (l.ifindex, l.name.as_str()))
            .collect();
        let mut qdiscs: Vec<Qdisc> = Vec::new();
        let res = {
            let out = std::cell::RefCell::new(&mut qdiscs);
            let socket = RouteSocket::ensure(&mut self.socket, self.timeout)?;
            socket.dump_raw(
                "qdisc",
                RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
                &mut || out.borrow_mut().clear(),
                &mut |ty, payload| {
                    if ty == RTM_NEWQDISC {
                        if let Some(m) = parse_qdisc_payload(payload) {
                            out.borrow_mut().push(parse_qdisc(&m, &names));
                        }
                    }
                },
            )
        };
        if let Err(e) = res {
            self.socket = None;
            return Err(e);
        }
        sample.qdiscs = Some(qdiscs);
        Ok(())
    }
}
