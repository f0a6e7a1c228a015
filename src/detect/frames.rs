//! Probe frames, built and parsed without touching the OS: ARP requests
//! (optionally 802.1Q-tagged, optionally padded to a full MTU), ICMP echo
//! requests with DF set, and the few things the prober reads back (ARP,
//! ICMP echo replies, DHCP messages with their router option).
//!
//! Ethernet, VLAN, IPv4, ICMP and UDP go through etherparse. Two small
//! pieces are by hand, each for a reason: the 28-byte ARP body (RFC 826) —
//! etherparse 0.16, the version the analyzer shares, has no ARP type (0.17+
//! has; move to it when the crate is bumped); and the three DHCP fields read
//! here (op, chaddr, yiaddr, options 53 and 3) — dhcproto would bring a whole
//! DNS stack (hickory-proto) into the agent for one option.

use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpNumber, Ipv4Header,
    LaxNetSlice, LaxSlicedPacket, SingleVlanHeader, TransportSlice, VlanId, VlanPcp,
};

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
/// Bytes after the Ethernet header an ARP frame carries at least (the
/// 60-byte Ethernet minimum without FCS, less the 14-byte header).
const MIN_PAYLOAD: usize = 46;

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in m.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

pub fn mac_str(m: &Mac) -> String {
    crate::source::netlink::mac_string(m)
}

/// RFC 826 over Ethernet/IPv4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sha: Mac,
    pub spa: Ipv4Addr,
    pub tha: Mac,
    pub tpa: Ipv4Addr,
}

impl Arp {
    const LEN: usize = 28;

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
        out.extend_from_slice(&self.op.to_be_bytes());
        out.extend_from_slice(&self.sha);
        out.extend_from_slice(&self.spa.octets());
        out.extend_from_slice(&self.tha);
        out.extend_from_slice(&self.tpa.octets());
    }

    fn parse(b: &[u8]) -> Option<Arp> {
        // Ethernet hardware (1), IPv4 protocol (0x0800), lengths 6 and 4.
        if b.len() < Arp::LEN || b[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
            return None;
        }
        let mac = |o: usize| -> Mac { b[o..o + 6].try_into().unwrap_or([0; 6]) };
        let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
        Some(Arp {
            op: u16::from_be_bytes([b[6], b[7]]),
            sha: mac(8),
            spa: ip(14),
            tha: mac(18),
            tpa: ip(24),
        })
    }

    /// An RFC 5227 probe: a request from 0.0.0.0 (a host checking that an
    /// address is free before it takes it).
    pub fn is_address_probe(&self) -> bool {
        self.op == 1 && self.spa.is_unspecified()
    }

    /// A gratuitous ARP / RFC 5227 announcement (sender = target).
    pub fn is_announcement(&self) -> bool {
        self.spa == self.tpa && !self.spa.is_unspecified()
    }
}

fn ethernet(src: Mac, dst: Mac, vlan: Option<u16>, ether_type: u16, out: &mut Vec<u8>) {
    let outer = if vlan.is_some() {
        EtherType::VLAN_TAGGED_FRAME
    } else {
        EtherType(ether_type)
    };
    let h = Ethernet2Header {
        source: src,
        destination: dst,
        ether_type: outer,
    };
    out.extend_from_slice(&h.to_bytes());
    if let Some(vid) = vlan {
        let v = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(vid & 0x0fff).unwrap_or(VlanId::ZERO),
            ether_type: EtherType(ether_type),
        };
        out.extend_from_slice(&v.to_bytes());
    }
}

/// An ARP request from `src` to `dst` (broadcast, or the target's known MAC
/// for a unicast probe) asking for `target`. `sender_ip` None makes it an
/// ARP probe from 0.0.0.0. `payload_len` (at least 46) pads the frame: the
/// bridge MTU makes a full-size probe that a smaller MTU on the path drops.
pub fn arp_request(
    src: Mac,
    dst: Mac,
    vlan: Option<u16>,
    sender_ip: Option<Ipv4Addr>,
    target: Ipv4Addr,
    payload_len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + payload_len.max(MIN_PAYLOAD));
    ethernet(src, dst, vlan, ETHERTYPE_ARP, &mut out);
    let start = out.len();
    Arp {
        op: 1,
        sha: src,
        spa: sender_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        // Unicast probes name the MAC they expect, as Linux's own do.
        tha: if dst == BROADCAST { [0; 6] } else { dst },
        tpa: target,
    }
    .write(&mut out);
    out.resize(start + payload_len.max(MIN_PAYLOAD), 0);
    out
}

/// An ICMP echo request with DF set whose IP packet is `ip_len` bytes long
/// (at least 28): a full-MTU one fails where a smaller MTU sits on the path.
#[allow(clippy::too_many_arguments)]
pub fn icmp_echo(
    src: Mac,
    dst: Mac,
    vlan: Option<u16>,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    id: u16,
    seq: u16,
    ip_len: usize,
) -> Vec<u8> {
    let data_len = ip_len.max(28) - 28;
    // A recognisable, non-tenant payload.
    let data: Vec<u8> = (0..data_len).map(|i| b"hvflight"[i % 8]).collect();
    let icmp =
        Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq }), &data);
    let mut ip = Ipv4Header::new(
        (icmp.header_len() + data.len()) as u16,
        64,
        IpNumber::ICMP,
        src_ip.octets(),
        dst_ip.octets(),
    )
    .unwrap_or_default();
    ip.dont_fragment = true;
    ip.identification = seq;
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::with_capacity(18 + ip_len);
    ethernet(src, dst, vlan, 0x0800, &mut out);
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&icmp.to_bytes());
    out.extend_from_slice(&data);
    if out.len() < 14 + MIN_PAYLOAD + vlan.map_or(0, |_| 4) {
        out.resize(14 + MIN_PAYLOAD + vlan.map_or(0, |_| 4), 0);
    }
    out
}

/// What the prober reads from a DHCP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dhcp {
    /// 1 BOOTREQUEST (client), 2 BOOTREPLY (server).
    pub op: u8,
    /// Option 53: 1 DISCOVER, 2 OFFER, 3 REQUEST, 5 ACK, 6 NAK, …
    pub msg_type: Option<u8>,
    pub chaddr: Mac,
    pub yiaddr: Ipv4Addr,
    /// Option 3, first router.
    pub router: Option<Ipv4Addr>,
}

impl Dhcp {
    fn parse(b: &[u8]) -> Option<Dhcp> {
        // Fixed BOOTP header (236 bytes), then the magic cookie (RFC 2131).
        if b.len() < 240 || b[236..240] != [99, 130, 83, 99] || b[2] != 6 {
            return None;
        }
        let mut d = Dhcp {
            op: b[0],
            msg_type: None,
            chaddr: b[28..34].try_into().ok()?,
            yiaddr: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
            router: None,
        };
        let mut i = 240;
        while i < b.len() {
            let code = b[i];
            if code == 0 {
                i += 1;
                continue;
            }
            if code == 255 || i + 1 >= b.len() {
                break;
            }
            let len = b[i + 1] as usize;
            let Some(v) = b.get(i + 2..i + 2 + len) else {
                break;
            };
            match (code, len) {
                (53, 1..) => d.msg_type = Some(v[0]),
                (3, 4..) => d.router = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3])),
                _ => {}
            }
            i += 2 + len;
        }
        Some(d)
    }

    /// A client asking for an address (DISCOVER, REQUEST, DECLINE, INFORM).
    pub fn is_client(&self) -> bool {
        self.op == 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Arp(Arp),
    EchoReply {
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        id: u16,
        seq: u16,
        ip_len: usize,
    },
    Dhcp(Dhcp),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src: Mac,
    pub dst: Mac,
    pub vlan: Option<u16>,
    pub payload: Payload,
}

/// Parses what the prober cares about; None for anything else. Lax: the
/// captures keep the first bytes of a frame only, so a full-MTU echo reply
/// arrives truncated.
pub fn parse(data: &[u8]) -> Option<Frame> {
    let p = LaxSlicedPacket::from_ethernet(data).ok()?;
    let eth = match &p.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => e,
        _ => return None,
    };
    let (src, dst) = (eth.source(), eth.destination());
    let vlan_slice = p.vlan();
    let vlan = match &vlan_slice {
        Some(etherparse::VlanSlice::SingleVlan(v)) => Some(v.vlan_identifier().value()),
        Some(etherparse::VlanSlice::DoubleVlan(v)) => Some(v.inner.vlan_identifier().value()),
        None => None,
    };
    let frame = |payload| {
        Some(Frame {
            src,
            dst,
            vlan,
            payload,
        })
    };
    if let Some(LaxNetSlice::Ipv4(ip)) = &p.net {
        let h = ip.header();
        match &p.transport {
            Some(TransportSlice::Icmpv4(icmp)) => {
                if let Icmpv4Type::EchoReply(e) = icmp.icmp_type() {
                    return frame(Payload::EchoReply {
                        src_ip: h.source_addr(),
                        dst_ip: h.destination_addr(),
                        id: e.id,
                        seq: e.seq,
                        ip_len: h.total_len() as usize,
                    });
                }
                return None;
            }
            Some(TransportSlice::Udp(u)) => {
                let ports = (u.source_port(), u.destination_port());
                if matches!(ports, (67, 68) | (68, 67) | (67, 67)) {
                    return frame(Payload::Dhcp(Dhcp::parse(u.payload())?));
                }
                return None;
            }
            _ => return None,
        }
    }
    let payload = match &vlan_slice {
        Some(v) => v.payload(),
        None => eth.payload(),
    };
    if payload.ether_type == EtherType(ETHERTYPE_ARP) {
        return frame(Payload::Arp(Arp::parse(payload.payload)?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BR: Mac = [0x02, 0, 0, 0, 0, 1];
    const GW: Mac = [0x02, 0xaa, 0, 0, 0, 9];

    #[test]
    fn arp_probe_from_zero_round_trips_and_pads_to_the_mtu() {
        let gw = Ipv4Addr::new(10, 77, 0, 1);
        let f = arp_request(BR, BROADCAST, None, None, gw, 0);
        assert_eq!(f.len(), 60, "Ethernet minimum without FCS");
        let p = parse(&f).unwrap();
        assert_eq!((p.src, p.dst, p.vlan), (BR, BROADCAST, None));
        let Payload::Arp(a) = p.payload else { panic!() };
        assert!(a.is_address_probe());
        assert_eq!((a.op, a.tpa, a.tha), (1, gw, [0; 6]));
        let big = arp_request(
            BR,
            GW,
            Some(100),
            Some(Ipv4Addr::new(10, 77, 0, 2)),
            gw,
            1500,
        );
        assert_eq!(big.len(), 14 + 4 + 1500);
        let p = parse(&big).unwrap();
        assert_eq!(p.vlan, Some(100));
        let Payload::Arp(a) = p.payload else { panic!() };
        assert_eq!((a.spa, a.tha), (Ipv4Addr::new(10, 77, 0, 2), GW));
        assert!(!a.is_address_probe() && !a.is_announcement());
    }

    #[test]
    fn echo_request_has_df_the_asked_size_and_a_valid_checksum() {
        let f = icmp_echo(
            BR,
            GW,
            None,
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            7,
            9,
            1500,
        );
        assert_eq!(f.len(), 14 + 1500);
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        assert!(ip.header().dont_fragment());
        assert_eq!(ip.header().total_len(), 1500);
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!()
        };
        let h = icmp.header();
        assert_eq!(
            h.checksum,
            Icmpv4Header::with_checksum(h.icmp_type.clone(), icmp.payload()).checksum
        );
        // The reply the gateway sends back parses as one.
        let mut reply = f.clone();
        reply[0..6].copy_from_slice(&BR);
        reply[6..12].copy_from_slice(&GW);
        let ipo = 14;
        let (s, d) = (
            reply[ipo + 12..ipo + 16].to_vec(),
            reply[ipo + 16..ipo + 20].to_vec(),
        );
        reply[ipo + 12..ipo + 16].copy_from_slice(&d);
        reply[ipo + 16..ipo + 20].copy_from_slice(&s);
        reply[ipo + 20] = 0; // echo reply
                             // As the capture keeps it: the first 700 bytes.
        let p = parse(&reply[..700]).unwrap();
        assert_eq!(
            p.payload,
            Payload::EchoReply {
                src_ip: Ipv4Addr::new(10, 0, 0, 1),
                dst_ip: Ipv4Addr::new(10, 0, 0, 2),
                id: 7,
                seq: 9,
                ip_len: 1500
            }
        );
    }

    /// A DHCPACK as dnsmasq sends it (fields that matter set, options 53, 54, 3, 1, end).
    fn dhcp_ack(router: Option<[u8; 4]>) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 2;
        b[1] = 1;
        b[2] = 6;
        b[16..20].copy_from_slice(&[10, 77, 1, 10]);
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, 5, 54, 4, 10, 77, 0, 1, 0, 0]);
        if let Some(r) = router {
            b.extend_from_slice(&[3, 4]);
            b.extend_from_slice(&r);
        }
        b.extend_from_slice(&[1, 4, 255, 255, 0, 0, 255]);
        let udp = etherparse::PacketBuilder::ethernet2(GW, [0x52, 0x54, 0, 0, 0, 1])
            .ipv4([10, 77, 0, 1], [10, 77, 1, 10], 64)
            .udp(67, 68);
        let mut out = Vec::new();
        udp.write(&mut out, &b).unwrap();
        out
    }

    #[test]
    fn dhcp_ack_gives_router_and_address() {
        let p = parse(&dhcp_ack(Some([10, 77, 0, 1]))).unwrap();
        let Payload::Dhcp(d) = p.payload else {
            panic!()
        };
        assert_eq!(d.msg_type, Some(5));
        assert_eq!(d.router, Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(d.yiaddr, Ipv4Addr::new(10, 77, 1, 10));
        assert_eq!(d.chaddr, [0x52, 0x54, 0, 0, 0, 1]);
        assert!(!d.is_client());
        let Payload::Dhcp(d) = parse(&dhcp_ack(None)).unwrap().payload else {
            panic!()
        };
        assert_eq!(d.router, None);
        // Truncated options end the walk, never a panic.
        let mut t = dhcp_ack(Some([10, 77, 0, 1]));
        t.truncate(t.len() - 9);
        let _ = parse(&t);
    }

    #[test]
    fn other_frames_are_ignored() {
        let tcp = etherparse::PacketBuilder::ethernet2(GW, BR)
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .tcp(1, 2, 3, 4);
        let mut out = Vec::new();
        tcp.write(&mut out, b"x").unwrap();
        assert_eq!(parse(&out), None);
        assert_eq!(parse(&[0u8; 10]), None);
        assert_eq!(
            parse_mac("52:54:00:00:00:0a"),
            Some([0x52, 0x54, 0, 0, 0, 10])
        );
        assert_eq!(parse_mac("52:54:00:00:00"), None);
    }
}
