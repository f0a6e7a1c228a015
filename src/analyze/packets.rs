//! The bundle's packet ring (pcapng, pcap-file crate), reduced while it
//! streams to the control-plane frames the rules read: STP BPDUs, RARP,
//! ARP, DHCP (with its message type) and IPv6 router advertisements.
//! Everything else is only counted; at most `max_packets` frames are kept.

use std::io::Read;

use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};

#[derive(Clone, Debug, PartialEq)]
pub enum PacketKind {
    /// Frames to 01:80:c2:00:00:00 (STP/RSTP BPDUs).
    Bpdu,
    /// Ethertype 0x8035 (a migrated guest announcing itself).
    Rarp,
    /// ARP request (op 1) or reply (op 2).
    Arp {
        op: u16,
        sender_ip: String,
        target_ip: String,
    },
    /// DHCPv4, with option 53's message type (1 DISCOVER … 6 NAK).
    Dhcp {
        msg_type: u8,
        xid: u32,
        client_mac: String,
    },
    /// ICMPv6 router advertisement (type 134).
    RouterAdvert,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    pub ts_unix_ns: i64,
    /// The capture interface (pcapng if_name), empty when unnamed.
    pub iface: String,
    pub src_mac: String,
    pub dst_mac: String,
    pub kind: PacketKind,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Capture {
    pub interfaces: Vec<String>,
    pub packets: Vec<Packet>,
    /// Every frame in the capture, kept or not.
    pub total: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// More control-plane frames than `max_packets`: the rest were counted, not kept.
    pub truncated: bool,
}

/// DHCP message type names (RFC 2132 option 53).
pub fn dhcp_name(t: u8) -> &'static str {
    match t {
        1 => "DISCOVER",
        2 => "OFFER",
        3 => "REQUEST",
        4 => "DECLINE",
        5 => "ACK",
        6 => "NAK",
        7 => "RELEASE",
        8 => "INFORM",
        _ => "?",
    }
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Option 53 of a BOOTP/DHCP payload. Written by hand: one option of a
/// fixed layout (236-byte BOOTP header, magic cookie, TLV options) is not
/// worth a DHCP crate.
fn dhcp_type(p: &[u8]) -> Option<(u8, u32, String)> {
    if p.len() < 240 || p[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let xid = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let chaddr = mac(&p[28..34]);
    let mut i = 240;
    while i < p.len() {
        match p[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = *p.get(i + 1)? as usize;
                if code == 53 && len == 1 {
                    return Some((*p.get(i + 2)?, xid, chaddr));
                }
                i += 2 + len;
            }
        }
    }
    None
}

/// Classifies one Ethernet frame; None for frames the rules do not read.
pub fn classify(frame: &[u8]) -> Option<(String, String, PacketKind)> {
    if frame.len() < 14 {
        return None;
    }
    let (dst, src) = (mac(&frame[0..6]), mac(&frame[6..12]));
    if frame[0..6] == [0x01, 0x80, 0xc2, 0, 0, 0] {
        return Some((src, dst, PacketKind::Bpdu));
    }
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let ethertype = match &sliced.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => e.ether_type().0,
        _ => return None,
    };
    let vlan = sliced.vlan();
    let ethertype = vlan
        .as_ref()
        .map(|v| match v {
            etherparse::VlanSlice::SingleVlan(s) => s.ether_type().0,
            etherparse::VlanSlice::DoubleVlan(d) => d.inner.ether_type().0,
        })
        .unwrap_or(ethertype);
    if ethertype == 0x8035 {
        return Some((src, dst, PacketKind::Rarp));
    }
    if ethertype == 0x0806 {
        // The ARP payload is read by hand: its fixed Ethernet/IPv4 layout
        // (RFC 826: 8-byte header, then sender MAC/IP, target MAC/IP) is read here.
        let off = 14
            + 4 * vlan.as_ref().map_or(0, |v| match v {
                etherparse::VlanSlice::SingleVlan(_) => 1,
                etherparse::VlanSlice::DoubleVlan(_) => 2,
            });
        let a = frame.get(off..off + 28)?;
        let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string();
        return Some((
            src,
            dst,
            PacketKind::Arp {
                op: u16::from_be_bytes([a[6], a[7]]),
                sender_ip: ip(&a[14..18]),
                target_ip: ip(&a[24..28]),
            },
        ));
    }
    match &sliced.transport {
        Some(etherparse::TransportSlice::Udp(u))
            if matches!((u.source_port(), u.destination_port()), (67 | 68, 67 | 68)) =>
        {
            let (t, xid, chaddr) = dhcp_type(u.payload())?;
            Some((
                src,
                dst,
                PacketKind::Dhcp {
                    msg_type: t,
                    xid,
                    client_mac: chaddr,
                },
            ))
        }
        Some(etherparse::TransportSlice::Icmpv6(i)) if i.type_u8() == 134 => {
            Some((src, dst, PacketKind::RouterAdvert))
        }
        _ => None,
    }
}

/// Reads a pcapng stream; timestamps honour each interface's if_tsresol
/// (pcap-file hands over raw ticks) and if_tsoffset.
pub fn read_pcapng(r: impl Read, max_packets: usize) -> Result<Capture, String> {
    let mut rd = PcapNgReader::new(r).map_err(|e| e.to_string())?;
    let mut c = Capture::default();
    // (name, ns per tick numerator/denominator as (mul, div), offset s)
    let mut ifs: Vec<(String, u128, u128, i64)> = Vec::new();
    while let Some(b) = rd.next_block() {
        let b = b.map_err(|e| format!("after {} packets: {e}", c.total))?;
        match b {
            Block::InterfaceDescription(idb) => {
                let (mut name, mut mul, mut div, mut off) = (String::new(), 1000u128, 1u128, 0i64);
                for o in &idb.options {
                    match o {
                        InterfaceDescriptionOption::IfName(n) => name = n.to_string(),
                        InterfaceDescriptionOption::IfTsResol(v) => {
                            // MSB clear: 10^-v s per tick; set: 2^-v.
                            if v & 0x80 == 0 {
                                let e = (*v as u32).min(18);
                                if e <= 9 {
                                    (mul, div) = (10u128.pow(9 - e), 1);
                                } else {
                                    (mul, div) = (1, 10u128.pow(e - 9));
                                }
                            } else {
                                (mul, div) = (1_000_000_000, 1u128 << ((v & 0x7f).min(100) as u32));
                            }
                        }
                        InterfaceDescriptionOption::IfTsOffset(s) => off = *s as i64,
                        _ => {}
                    }
                }
                c.interfaces.push(name.clone());
                ifs.push((name, mul, div, off));
            }
            Block::EnhancedPacket(p) => {
                c.total += 1;
                let (name, mul, div, off) = ifs.get(p.interface_id as usize).cloned().unwrap_or((
                    String::new(),
                    1000,
                    1,
                    0,
                ));
                let ticks = p.timestamp.as_nanos();
                let ts = (ticks * mul / div) as i64 + off * 1_000_000_000;
                c.first_ns = Some(c.first_ns.map_or(ts, |f| f.min(ts)));
                c.last_ns = Some(c.last_ns.map_or(ts, |l| l.max(ts)));
                if let Some((src_mac, dst_mac, kind)) = classify(&p.data) {
                    if c.packets.len() < max_packets {
                        c.packets.push(Packet {
                            ts_unix_ns: ts,
                            iface: name,
                            src_mac,
                            dst_mac,
                            kind,
                        });
                    } else {
                        c.truncated = true;
                    }
                }
            }
            _ => {}
        }
    }
    c.packets.sort_by_key(|p| p.ts_unix_ns);
    Ok(c)
}

/// Builders for tests and fixtures: real frames, written as pcapng.
pub mod build {
    use std::borrow::Cow;
    use std::time::Duration;

    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::DataLink;

    fn parse_mac(m: &str) -> [u8; 6] {
        let mut out = [0u8; 6];
        for (i, p) in m.split(':').take(6).enumerate() {
            out[i] = u8::from_str_radix(p, 16).unwrap_or(0);
        }
        out
    }

    /// An 802.1D configuration BPDU (LLC 42 42 03), as a switch or a guest sends it.
    pub fn bpdu(src: &str) -> Vec<u8> {
        let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0];
        f.extend(parse_mac(src));
        f.extend([0x00, 0x26, 0x42, 0x42, 0x03, 0, 0, 0, 0, 0]);
        f.resize(60, 0);
        f
    }

    /// RARP request (op 3) as qemu announces a migrated guest.
    pub fn rarp(src: &str) -> Vec<u8> {
        let m = parse_mac(src);
        let mut f = vec![0xff; 6];
        f.extend(m);
        f.extend([0x80, 0x35, 0, 1, 0x08, 0, 6, 4, 0, 3]);
        f.extend(m);
        f.extend([0; 4]);
        f.extend(m);
        f.extend([0; 4]);
        f.resize(60, 0);
        f
    }

    /// A DHCP message of `msg_type` from `client` (a real BOOTP layout via etherparse's UDP/IPv4).
    pub fn dhcp(client: &str, msg_type: u8, xid: u32, from_server: bool) -> Vec<u8> {
        let cm = parse_mac(client);
        let mut bootp = vec![0u8; 240];
        bootp[0] = if from_server { 2 } else { 1 };
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&xid.to_be_bytes());
        bootp[28..34].copy_from_slice(&cm);
        bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
        bootp.extend([53, 1, msg_type, 255]);
        let (src, dst, sip, dip, sp, dp) = if from_server {
            (
                [0x52, 0x54, 0, 0xee, 0, 1],
                cm,
                [10, 77, 0, 1],
                [255, 255, 255, 255],
                67,
                68,
            )
        } else {
            (cm, [0xff; 6], [0, 0, 0, 0], [255, 255, 255, 255], 68, 67)
        };
        let b = etherparse::PacketBuilder::ethernet2(src, dst)
            .ipv4(sip, dip, 64)
            .udp(sp, dp);
        let mut out = Vec::with_capacity(b.size(bootp.len()));
        b.write(&mut out, &bootp).expect("vec write");
        out
    }

    /// Writes frames `(ts_unix_ns, iface index, frame)` with named interfaces (µs resolution).
    pub fn pcapng(ifaces: &[&str], frames: &[(i64, u32, Vec<u8>)]) -> Vec<u8> {
        let mut w = PcapNgWriter::new(Vec::new()).expect("pcapng header");
        for n in ifaces {
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: 262_144,
                options: vec![InterfaceDescriptionOption::IfName(Cow::Owned(
                    n.to_string(),
                ))],
            })
            .expect("idb");
        }
        for (ts, i, f) in frames {
            // µs ticks (the default if_tsresol); pcap-file writes raw ticks.
            let ticks = (*ts / 1000) as u64;
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: *i,
                timestamp: Duration::from_nanos(ticks),
                original_len: f.len() as u32,
                data: Cow::Borrowed(f),
                options: vec![],
            })
            .expect("epb");
        }
        w.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_real_layouts() {
        let g = "52:54:00:aa:00:01";
        assert_eq!(classify(&build::bpdu(g)).unwrap().2, PacketKind::Bpdu);
        assert_eq!(classify(&build::rarp(g)).unwrap().2, PacketKind::Rarp);
        let (src, _, k) = classify(&build::dhcp(g, 1, 7, false)).unwrap();
        assert_eq!(src, g);
        assert_eq!(
            k,
            PacketKind::Dhcp {
                msg_type: 1,
                xid: 7,
                client_mac: g.into()
            }
        );
    }

    #[test]
    fn pcapng_round_trip_with_timestamps() {
        let t0 = 1_700_000_000_123_456_000i64;
        let bytes = build::pcapng(
            &["uplink0", "vnet0"],
            &[
                (t0, 0, build::bpdu("52:54:00:aa:00:01")),
                (t0 + 1_000_000, 1, vec![0u8; 60]),
                (t0 + 2_000_000, 1, build::rarp("52:54:00:aa:00:02")),
            ],
        );
        let c = read_pcapng(&bytes[..], 10).unwrap();
        assert_eq!(c.interfaces, vec!["uplink0", "vnet0"]);
        assert_eq!(c.total, 3);
        assert_eq!(c.packets.len(), 2);
        assert_eq!(c.packets[0].ts_unix_ns, t0);
        assert_eq!(c.packets[0].iface, "uplink0");
        assert_eq!(c.packets[1].kind, PacketKind::Rarp);
        assert_eq!(c.packets[1].iface, "vnet0");
        let c = read_pcapng(&bytes[..], 1).unwrap();
        assert!(c.truncated && c.packets.len() == 1);
        assert!(read_pcapng(&bytes[..bytes.len() - 7], 10).is_err());
    }
}
