//! rtnetlink multicast: link, neighbour (incl. bridge FDB) and address
//! changes as they happen, each stamped at receipt. Runs on its own thread.
//! When the kernel drops messages because we fell behind (ENOBUFS), a
//! `loss` event says so; the sampler's next dumps are the re-synchronisation.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::Worker;
use crate::collect::fdb::{nud_name, parse_fdb};
use crate::collect::links::parse_link;
use crate::sample::{Event, EventKind};
use crate::source::netlink::{mac_string, set_recv_timeout, RouteSocket};

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV6_IFADDR: u32 = 9;

fn open() -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(0, 0))?;
    for g in [
        RTNLGRP_LINK,
        RTNLGRP_NEIGH,
        RTNLGRP_IPV4_IFADDR,
        RTNLGRP_IPV6_IFADDR,
    ] {
        s.add_membership(g)?;
    }
    // A big buffer rides out bursts (an FDB flush on a 500-port bridge).
    // RCVBUFFORCE passes rmem_max as root; fall back to the plain option.
    let size: libc::c_int = 8 << 20;
    // SAFETY: valid fd and a pointer to a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        s.set_rx_buf_sz(size as usize)?;
    }
    set_recv_timeout(&s, Duration::from_millis(200))?;
    Ok(s)
}

/// Starts the thread. The socket is opened before returning so that a
/// change made right after `start` is seen.
pub fn start(tx: Sender<Event>) -> std::io::Result<Worker> {
    let socket = open()?;
    Worker::spawn("rtnl", move |stop| run(socket, tx, stop))
}

/// ifindex → name of every link, decoding only the kept attributes of each
/// message as they stream in (a full decode of 500 links held 6.6 MB at once).
fn names_from_dump() -> HashMap<u32, String> {
    let mut names = HashMap::new();
    if let Ok(mut s) = RouteSocket::new(Duration::from_millis(500)) {
        let _ = s.dump_raw(
            "link",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            &mut || {},
            &mut |ty, payload| {
                const RTM_NEWLINK: u16 = 16;
                if ty == RTM_NEWLINK {
                    if let Some(m) = crate::collect::links::parse_link_payload(payload) {
                        let l = parse_link(&m).link;
                        names.insert(l.ifindex, l.name);
                    }
                }
            },
        );
    }
    names
}

fn run(socket: Socket, tx: Sender<Event>, stop: Arc<AtomicBool>) {
    let mut names = names_from_dump();
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                let _ = tx.send(now_event(EventKind::Loss {
                    source: "rtnetlink".into(),
                    detail: "receive buffer overrun (ENOBUFS); state re-read by the next sample"
                        .into(),
                    count: 0,
                }));
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "rtnetlink events: receive failed; stopping");
                let _ = tx.send(now_event(EventKind::Loss {
                    source: "rtnetlink".into(),
                    detail: format!("receive failed: {e}"),
                    count: 0,
                }));
                return;
            }
        };
        let t = crate::clock::now();
        let (kinds, undecodable) = events_from_datagram(&buf[..n], &mut names);
        let loss = undecodable.map(|(count, first)| EventKind::Loss {
            source: "rtnetlink".into(),
            detail: format!("{count} message(s) not decodable, skipped: {first}"),
            count,
        });
        for kind in kinds.into_iter().chain(loss) {
            let ev = Event {
                ts_unix_ns: t.unix_ns,
                mono_ns: t.mono_ns,
                kind,
            };
            if tx.send(ev).is_err() {
                return; // agent gone
            }
        }
    }
}

/// Events from one received datagram (the kernel may pack several messages
/// into one). Each message is framed by its own header length, so one that
/// netlink-packet-route cannot decode (a newer kernel's attribute of an
/// unexpected size, say) costs only itself, not the rest of the datagram;
/// the second value counts those, with the first error.
pub fn events_from_datagram(
    buf: &[u8],
    names: &mut HashMap<u32, String>,
) -> (Vec<EventKind>, Option<(u64, String)>) {
    const NLMSG_HDRLEN: usize = 16;
    let mut out = Vec::new();
    let mut bad = 0u64;
    let mut first_err = String::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            bad += 1;
            if first_err.is_empty() {
                first_err = format!("bad length {len} at offset {off}");
            }
            break; // framing lost: nothing after this can be trusted
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len]) {
            Ok(msg) => {
                if let NetlinkPayload::InnerMessage(m) = msg.payload {
                    out.extend(to_event(&m, names));
                }
            }
            Err(e) => {
                bad += 1;
                if first_err.is_empty() {
                    let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                    first_err = format!("message type {ty}: {e}");
                }
            }
        }
        off += (len + 3) & !3;
    }
    (out, (bad > 0).then_some((bad, first_err)))
}

fn now_event(kind: EventKind) -> Event {
    let t = crate::clock::now();
    Event {
        ts_unix_ns: t.unix_ns,
        mono_ns: t.mono_ns,
        kind,
    }
}

/// Pure conversion of one multicast message into an event.
pub fn to_event(m: &RouteNetlinkMessage, names: &mut HashMap<u32, String>) -> Option<EventKind> {
    match m {
        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
            let del = matches!(m, RouteNetlinkMessage::DelLink(_));
            link_event(l, del, names)
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let action = if matches!(m, RouteNetlinkMessage::DelNeighbour(_)) {
                "del"
            } else {
                "new"
            };
            neigh_event(n, action, names)
        }
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            let action = if matches!(m, RouteNetlinkMessage::DelAddress(_)) {
                "del"
            } else {
                "new"
            };
            addr_event(a, action, names)
        }
        _ => None,
    }
}

fn link_event(l: &LinkMessage, del: bool, names: &mut HashMap<u32, String>) -> Option<EventKind> {
    let p = parse_link(l);
    let link = p.link;
    // AF_BRIDGE link messages (port state changes) carry the port's state in
    // IFLA_PROTINFO; the generic ones carry it in the slave data.
    let port_state = p
        .port_info
        .as_ref()
        .map(|info| crate::collect::links::port_from(&link, info).state);
    if del {
        names.remove(&link.ifindex);
    } else if !link.name.is_empty() {
        names.insert(link.ifindex, link.name.clone());
    }
    Some(EventKind::Link {
        action: if del { "del" } else { "new" }.into(),
        ifindex: link.ifindex,
        name: link.name,
        operstate: link.operstate,
        carrier: link.carrier,
        admin_up: link.admin_up,
        master: link.master,
        mtu: Some(link.mtu).filter(|m| *m > 0),
        mac: link.mac,
        port_state,
    })
}

fn neigh_event(
    n: &NeighbourMessage,
    action: &str,
    names: &HashMap<u32, String>,
) -> Option<EventKind> {
    if n.header.family == AddressFamily::Bridge {
        let e = parse_fdb(n, names)?;
        return Some(EventKind::Fdb {
            action: action.into(),
            mac: e.mac,
            ifindex: e.ifindex,
            port: e.port,
            master: e.master,
            vlan: e.vlan,
            state: e.state,
        });
    }
    let mut ip = String::new();
    let mut mac = String::new();
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = v4.to_string(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = v6.to_string(),
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_string(b),
            _ => {}
        }
    }
    Some(EventKind::Neigh {
        action: action.into(),
        ip,
        mac,
        ifindex: n.header.ifindex,
        dev: names.get(&n.header.ifindex).cloned().unwrap_or_default(),
        state: nud_name(n.header.state),
    })
}

fn addr_event(a: &AddressMessage, action: &str, names: &HashMap<u32, String>) -> Option<EventKind> {
    let addr = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(ip) => Some(ip.to_string()),
        _ => None,
    })?;
    Some(EventKind::Addr {
        action: action.into(),
        ifindex: a.header.index,
        dev: names.get(&a.header.index).cloned().unwrap_or_default(),
        addr,
        prefix_len: a.header.prefix_len,
    })
}
