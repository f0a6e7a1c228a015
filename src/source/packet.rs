//! Thin access to link-layer sockets for the detector's probes: one
//! send-only AF_PACKET socket that writes a frame onto any interface by
//! ifindex, and small libpcap captures (non-promiscuous, in-kernel filter,
//! non-blocking) for the answers.
//!
//! The sender is a raw AF_PACKET socket rather than a pcap handle because a
//! pcap handle sends only on its own device, and guest probes go out on each
//! guest's port: one socket with protocol 0 receives nothing and sends
//! anywhere. libc has no safe wrapper for sockaddr_ll, hence the FFI here.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub struct RawSender {
    fd: OwnedFd,
}

impl RawSender {
    pub fn open() -> std::io::Result<RawSender> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        Ok(RawSender {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Writes one complete Ethernet frame onto `ifindex`, never blocking
    /// (a full device queue is an error — ENOBUFS/EAGAIN — not a wait).
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
        if frame.len() < 14 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "frame shorter than an Ethernet header",
            ));
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[0..6]);
        // SAFETY: buffer and address are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                libc::MSG_DONTWAIT,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// A non-promiscuous, non-blocking capture on `dev` with the BPF `filter`.
pub fn open_capture(
    dev: &str,
    filter: &str,
    snaplen: i32,
    buffer_bytes: i32,
) -> Result<pcap::Capture<pcap::Active>, String> {
    let cap = pcap::Capture::from_device(dev)
        .map_err(|e| format!("{dev}: {e}"))?
        .promisc(false)
        .snaplen(snaplen)
        .immediate_mode(true)
        .buffer_size(buffer_bytes)
        .open()
        .map_err(|e| format!("{dev}: {e}"))?;
    let mut cap = cap.setnonblock().map_err(|e| format!("{dev}: {e}"))?;
    cap.filter(filter, true)
        .map_err(|e| format!("{dev}: filter {filter:?}: {e}"))?;
    Ok(cap)
}

/// The host's IPv4 view the probes need, dumped over rtnetlink.
#[derive(Clone, Debug, Default)]
pub struct HostIpv4 {
    /// ifindex → addresses with prefix length.
    pub addrs: Vec<(u32, std::net::Ipv4Addr, u8)>,
    /// Default routes: (oif, gateway).
    pub default_routes: Vec<(u32, std::net::Ipv4Addr)>,
    /// Neighbour entries: (ifindex, ip, mac).
    pub neighbours: Vec<(u32, std::net::Ipv4Addr, [u8; 6])>,
}

pub fn host_ipv4(
    sock: &mut crate::source::netlink::RouteSocket,
) -> Result<HostIpv4, crate::collect::CollectError> {
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as M};
    let mut out = HostIpv4::default();
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet;
    for m in sock.dump("addresses", M::GetAddress(req))? {
        if let M::NewAddress(a) = m {
            for attr in &a.attributes {
                if let AddressAttribute::Local(std::net::IpAddr::V4(ip))
                | AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attr
                {
                    if !out
                        .addrs
                        .contains(&(a.header.index, *ip, a.header.prefix_len))
                    {
                        out.addrs.push((a.header.index, *ip, a.header.prefix_len));
                    }
                }
            }
        }
    }
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet;
    for m in sock.dump("routes", M::GetRoute(req))? {
        if let M::NewRoute(r) = m {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            let oif = r.attributes.iter().find_map(|a| {
                if let RouteAttribute::Oif(i) = a {
                    Some(*i)
                } else {
                    None
                }
            });
            let gw = r.attributes.iter().find_map(|a| {
                if let RouteAttribute::Gateway(RouteAddress::Inet(g)) = a {
                    Some(*g)
                } else {
                    None
                }
            });
            if let (Some(oif), Some(gw)) = (oif, gw) {
                out.default_routes.push((oif, gw));
            }
        }
    }
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Inet;
    for m in sock.dump("neighbours", M::GetNeighbour(req))? {
        if let M::NewNeighbour(n) = m {
            let ip = n.attributes.iter().find_map(|a| {
                if let NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) = a {
                    Some(*i)
                } else {
                    None
                }
            });
            let mac = n.attributes.iter().find_map(|a| {
                if let NeighbourAttribute::LinkLayerAddress(m) = a {
                    <[u8; 6]>::try_from(m.as_slice()).ok()
                } else {
                    None
                }
            });
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.neighbours.push((n.header.ifindex, ip, mac));
            }
        }
    }
    Ok(out)
}
