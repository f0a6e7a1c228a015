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

pub fn parse_qdisc(m: &TcMessage, names: &HashMap<u32, String>) -> Qdisc {
    let ifindex = m.header.index as u32;
    let mut q = Qdisc {
        ifindex,
        dev: names.get(&ifindex).cloned().unwrap_or_default(),
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

impl Collector for QdiscCollector {
    fn name(&self) -> &'static str {
        "qdisc"
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let socket = RouteSocket::ensure(&mut self.socket, self.timeout)?;
        let msgs = socket
            .dump(
                "qdisc",
                RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            )
            .inspect_err(|_| self.socket = None)?;
        let names: HashMap<u32, String> = sample
            .links
            .iter()
            .flatten()
            .map(|l| (l.ifindex, l.name.clone()))
            .collect();
        let qdiscs = msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(m) => Some(parse_qdisc(m, &names)),
                _ => None,
            })
            .collect();
        sample.qdiscs = Some(qdiscs);
        Ok(())
    }
}
