//! Headers only: how much of a captured frame the ring keeps, so that no
//! tenant payload leaves the node in a bundle.
//!
//! The kernel already cuts every frame at the snaplen; this cuts further,
//! at the end of the last protocol header, for everything that carries
//! tenant data: TCP and UDP payload (except DHCP/DHCPv6, whose options are
//! the evidence), the payload of other IP protocols and of non-first
//! fragments, and the payload of unknown ethertypes. ARP, ICMP/ICMPv6 (whose
//! errors quote the offending headers), IGMP and the link-local control
//! frames (STP, LACP, LLDP) are kept up to the snaplen. Headers are parsed
//! with etherparse, leniently (a frame cut by the snaplen still parses).

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

const DHCP_PORTS: [u16; 4] = [67, 68, 546, 547];

fn offset_of(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize)
        .saturating_sub(whole.as_ptr() as usize)
        .min(whole.len())
}

fn link_local_control(frame: &[u8]) -> bool {
    frame.len() >= 6 && frame[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && frame[5] & 0xf0 == 0
}

/// Bytes of `frame` (Ethernet) to keep.
pub fn headers_only(frame: &[u8]) -> usize {
    if link_local_control(frame) {
        return frame.len();
    }
    let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else {
        return frame.len().min(14);
    };
    match (&p.net, &p.transport) {
        (_, Some(TransportSlice::Tcp(t))) => offset_of(frame, t.payload()),
        (_, Some(TransportSlice::Udp(u))) => {
            if DHCP_PORTS.contains(&u.source_port()) || DHCP_PORTS.contains(&u.destination_port()) {
                frame.len()
            } else {
                offset_of(frame, u.payload())
            }
        }
        (_, Some(TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_))) => frame.len(),
        (_, Some(_)) => frame.len(),
        (Some(LaxNetSlice::Arp(_)), None) => frame.len(),
        (Some(LaxNetSlice::Ipv4(ip)), None) => {
            // IGMP is control; anything else (or a later fragment) is payload.
            if ip.payload().ip_number == etherparse::IpNumber::IGMP && !ip.payload().fragmented {
                frame.len()
            } else {
                offset_of(frame, ip.payload().payload)
            }
        }
        (Some(LaxNetSlice::Ipv6(ip)), None) => offset_of(frame, ip.payload().payload),
        (None, None) => match p.ether_payload() {
            Some(e) if [0x88cc, 0x8809, 0x8035].contains(&e.ether_type.0) => frame.len(),
            Some(e) => offset_of(frame, e.payload),
            None => frame.len().min(14),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

    #[test]
    fn tcp_keeps_headers_only() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 443, 1, 65535);
        let payload = [0xabu8; 1000];
        let mut f = Vec::new();
        b.write(&mut f, &payload).unwrap();
        assert_eq!(headers_only(&f), 14 + 20 + 20);
        // Cut by the snaplen first: still headers only.
        assert_eq!(headers_only(&f[..128]), 54);
    }

    #[test]
    fn vlan_tagged_udp_keeps_headers_only_but_dhcp_is_kept() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(etherparse::VlanId::try_new(100).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 5001);
        let mut f = Vec::new();
        b.write(&mut f, &[7u8; 300]).unwrap();
        assert_eq!(headers_only(&f), 14 + 4 + 20 + 8);
        let b = PacketBuilder::ethernet2(MAC_A, [0xff; 6])
            .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
            .udp(68, 67);
        let mut f = Vec::new();
        b.write(&mut f, &[1u8; 300]).unwrap();
        assert_eq!(headers_only(&f), f.len());
    }

    #[test]
    fn icmp_arp_and_link_local_control_are_kept() {
        let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv6([0xfe; 16], [0xff; 16], 255)
            .icmpv6_echo_request(1, 1);
        let mut f = Vec::new();
        b.write(&mut f, &[0u8; 56]).unwrap();
        assert_eq!(headers_only(&f), f.len());
        // An ARP request as the kernel sends it.
        let mut arp = vec![0xff; 6];
        arp.extend(MAC_A);
        arp.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend(MAC_A);
        arp.extend([10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        assert_eq!(headers_only(&arp), arp.len());
        // STP BPDU (802.3 length field, LLC): kept because of its address.
        let mut stp = vec![0x01, 0x80, 0xc2, 0, 0, 0];
        stp.extend(MAC_A);
        stp.extend([0, 38, 0x42, 0x42, 3]);
        stp.extend([0u8; 35]);
        assert_eq!(headers_only(&stp), stp.len());
    }

    #[test]
    fn unknown_ethertype_keeps_the_ethernet_header() {
        let mut f = vec![0x02, 0, 0, 0, 0, 9];
        f.extend(MAC_A);
        f.extend([0x88, 0xb5]);
        f.extend([9u8; 100]);
        assert_eq!(headers_only(&f), 14);
        assert_eq!(headers_only(&f[..10]), 10);
    }
}
