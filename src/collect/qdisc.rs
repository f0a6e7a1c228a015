//! Qdisc statistics (what `tc -s qdisc` prints) from one RTM_GETQDISC dump.

use std::time::Duration;

use netlink_packet_route::tc::{TcHandle, TcMessage, TcStats, TcStatsBasic, TcStatsQueue};
use netlink_packet_route::RouteNetlinkMessage;
use rustc_hash::FxHashMap;

use super::{CollectError, Collector, Context};
use crate::sample::{Qdisc, Sample};
use crate::source::netlink::RouteSocket;

pub struct QdiscCollector {
    socket: Option<RouteSocket>,
    timeout: Duration,
    /// The qdiscs of a sample nobody needs any more, filled in place by the
    /// next dump (`recycle`): ~500 qdiscs with four strings each were
    /// allocated and freed every second otherwise.
    spare: Vec<Qdisc>,
}

impl QdiscCollector {
    pub fn new(timeout: Duration) -> Self {
        QdiscCollector {
            socket: None,
            timeout,
            spare: Vec::new(),
        }
    }
}

/// `handle` into `out`, reusing its buffer.
fn write_handle(h: &TcHandle, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    if h.major == 0xffff && h.minor == 0xffff {
        out.push_str("root");
    } else {
        let _ = write!(out, "{:x}:{:x}", h.major, h.minor);
    }
}

/// Fills `q` from one RTM_NEWQDISC payload in place, its strings reused:
/// only the header, TCA_KIND, TCA_STATS and TCA_STATS2 are read, and not
/// through the crate's `TcMessage` (a vector of attributes, one of
/// TCA_STATS2's parts, the kind as a string, and each qdisc's options and
/// extended stats decoded: per qdisc, 500 per second at 500 vNICs). The
/// attributes are walked here, but each one is decoded by the crate's own
/// parsers (`TcStatsBasic`, `TcStatsQueue`, `TcStats`); tests/netlink.rs
/// checks the result against the crate's full decode. False for a payload
/// shorter than a tcmsg (`q` is then unspecified).
pub fn fill_qdisc(payload: &[u8], names: &FxHashMap<u32, &str>, q: &mut Qdisc) -> bool {
    use netlink_packet_core::NlasIterator;
    use netlink_packet_route::tc::TcHeader;
    const TCA_KIND: u16 = 1;
    const TCA_STATS: u16 = 3;
    const TCA_STATS2: u16 = 7;
    const TCA_STATS_BASIC: u16 = 1;
    const TCA_STATS_QUEUE: u16 = 3;
    const TC_HEADER_LEN: usize = 20;
    if payload.len() < TC_HEADER_LEN {
        return false;
    }
    let Ok(header) = TcHeader::parse(payload) else {
        return false;
    };
    q.ifindex = header.index as u32;
    q.dev.clear();
    q.dev
        .push_str(names.get(&q.ifindex).copied().unwrap_or_default());
    write_handle(&header.handle, &mut q.handle);
    write_handle(&header.parent, &mut q.parent);
    q.kind.clear();
    (q.bytes, q.packets, q.drops, q.overlimits) = (0, 0, 0, 0);
    (q.requeues, q.backlog_bytes, q.qlen) = (0, 0, 0);
    let mut have_stats2 = false;
    for nla in NlasIterator::new(&payload[TC_HEADER_LEN..]) {
        let Ok(nla) = nla else { break };
        let v = nla.value();
        match nla.kind() {
            TCA_KIND => {
                // A NUL-terminated string, as the crate's parse_string reads it.
                let v = v.strip_suffix(&[0]).unwrap_or(v);
                if let Ok(k) = std::str::from_utf8(v) {
                    q.kind.clear();
                    q.kind.push_str(k);
                }
            }
            TCA_STATS2 => {
                have_stats2 = true;
                for st in NlasIterator::new(v) {
                    let Ok(st) = st else { break };
                    match st.kind() {
                        TCA_STATS_BASIC => {
                            if let Ok(b) = TcStatsBasic::parse(st.value()) {
                                q.bytes = b.bytes;
                                q.packets = b.packets as u64;
                            }
                        }
                        TCA_STATS_QUEUE => {
                            if let Ok(qu) = TcStatsQueue::parse(st.value()) {
                                q.drops = qu.drops as u64;
                                q.overlimits = qu.overlimits as u64;
                                q.requeues = qu.requeues as u64;
                                q.backlog_bytes = qu.backlog as u64;
                                q.qlen = qu.qlen as u64;
                            }
                        }
                        _ => {}
                    }
                }
            }
            TCA_STATS if !have_stats2 => {
                if let Ok(s) = TcStats::parse(v) {
                    q.bytes = s.bytes;
                    q.packets = s.packets as u64;
                    q.drops = s.drops as u64;
                    q.overlimits = s.overlimits as u64;
                    q.backlog_bytes = s.backlog as u64;
                    q.qlen = s.qlen as u64;
                }
            }
            _ => {}
        }
    }
    true
}

impl Collector for QdiscCollector {
    fn name(&self) -> &'static str {
        "qdisc"
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        const RTM_NEWQDISC: u16 = 36;
        let names: FxHashMap<u32, &str> = sample
            .links
            .iter()
            .flatten()
            .map(|l| (l.ifindex, l.name.as_str()))
            .collect();
        // The recycled qdiscs and how many of them this dump filled.
        let out = std::cell::RefCell::new((std::mem::take(&mut self.spare), 0usize));
        let res = {
            let socket = RouteSocket::ensure(&mut self.socket, self.timeout)?;
            socket.dump_raw(
                "qdisc",
                RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
                &mut || out.borrow_mut().1 = 0,
                &mut |ty, payload| {
                    if ty == RTM_NEWQDISC {
                        let (qdiscs, n) = &mut *out.borrow_mut();
                        if *n == qdiscs.len() {
                            qdiscs.push(Qdisc::default());
                        }
                        if fill_qdisc(payload, &names, &mut qdiscs[*n]) {
                            *n += 1;
                        }
                    }
                },
            )
        };
        let (mut qdiscs, n) = out.into_inner();
        qdiscs.truncate(n);
        if let Err(e) = res {
            self.socket = None;
            self.spare = qdiscs;
            return Err(e);
        }
        sample.qdiscs = Some(qdiscs);
        Ok(())
    }

    fn recycle(&mut self, old: &mut Sample) {
        if let Some(q) = old.qdiscs.take() {
            self.spare = q;
        }
    }
}
