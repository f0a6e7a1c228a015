//! A snapshot of the ring as one pcapng section (pcap-file): a section
//! header naming the window, the filter and how far back the ring is
//! complete; one interface block per interface that has packets in it
//! (name, "uplink of br0", nanosecond timestamps); the packets in time
//! order; and per interface a statistics block with the kernel's counters
//! (isb_filteraccept = ps_recv, isb_osdrop = ps_drop, isb_ifdrop = ps_ifdrop).
//! Wireshark, tshark and tcpdump read it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

use super::ring::PacketRef;
use super::Snapshot;
use crate::clock::format_rfc3339;

/// What the pcapng holds, for the bundle manifest.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub packets: u64,
    pub packets_before: u64,
    pub interfaces: Vec<String>,
    pub first_unix_ns: i64,
    pub last_unix_ns: i64,
}

/// The comment of the section header (also useful in logs).
pub fn describe(s: &Snapshot) -> String {
    format!(
        "hvflight packet ring {} .. {}; control plane complete since {}, sampled since {}; \
         filter: {} + sampled share {}; snaplen {}{}; evicted {}, refused {}; shedding: {}",
        format_rfc3339(s.from_unix_ns),
        format_rfc3339(s.to_unix_ns),
        format_rfc3339(s.section.complete_since_unix_ns.max(s.from_unix_ns)),
        format_rfc3339(s.section.sampled_complete_since_unix_ns.max(s.from_unix_ns)),
        s.filter,
        s.sample_share,
        s.snaplen,
        if s.headers_only { ", headers only" } else { "" },
        s.section.evicted_packets_total,
        s.section.refused_packets_total,
        s.section.shedding,
    )
}

/// The snapshot's packets as pcapng bytes.
pub fn write(s: &Snapshot) -> Result<(Vec<u8>, Summary), pcap_file::PcapError> {
    let mut out = Vec::new();
    let sum = write_to(
        s,
        s.packets.iter().map(|p| PacketRef {
            ts_unix_ns: p.ts_unix_ns,
            iface: p.iface,
            orig_len: p.orig_len,
            data: &p.data,
        }),
        &mut out,
        i64::MAX,
    )?;
    Ok((out, sum))
}

/// Streams pcapng to `out`: `meta` says what the file describes (its
/// `packets` are not used), `packets` come in time order. `split_ns`
/// counts packets at or before it into `packets_before`.
pub fn write_to<'a, W: std::io::Write>(
    meta: &Snapshot,
    packets: impl Iterator<Item = PacketRef<'a>>,
    out: W,
    split_ns: i64,
) -> Result<Summary, pcap_file::PcapError> {
    let s = meta;
    let shb = SectionHeaderBlock {
        endianness: Endianness::native(),
        options: vec![
            SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "hvflight {}",
                env!("CARGO_PKG_VERSION")
            ))),
            SectionHeaderOption::OS(Cow::Borrowed("Linux")),
            SectionHeaderOption::Comment(Cow::Owned(describe(s))),
        ],
        ..Default::default()
    };
    let mut w = PcapNgWriter::with_section_header(out, shb)?;
    // Ring ids → pcapng interface ids, in order of first use.
    let mut ids: BTreeMap<u16, u32> = BTreeMap::new();
    let mut summary = Summary::default();
    for p in packets {
        let next = ids.len() as u32;
        if let std::collections::btree_map::Entry::Vacant(e) = ids.entry(p.iface) {
            let info = s.ifaces.get(p.iface as usize);
            let name = info.map(|i| i.want.name.clone()).unwrap_or_default();
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::from(info.map(|i| i.linktype as u32).unwrap_or(1)),
                snaplen: info.map(|i| i.snaplen).unwrap_or(s.snaplen),
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                    InterfaceDescriptionOption::IfDescription(Cow::Owned(
                        info.map(|i| i.want.description()).unwrap_or_default(),
                    )),
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })?;
            e.insert(next);
            summary.interfaces.push(name);
        }
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: ids[&p.iface],
            timestamp: Duration::from_nanos(p.ts_unix_ns.max(0) as u64),
            original_len: p.orig_len,
            data: Cow::Borrowed(p.data),
            options: vec![],
        })?;
        if summary.packets == 0 {
            summary.first_unix_ns = p.ts_unix_ns;
        }
        summary.last_unix_ns = p.ts_unix_ns;
        summary.packets += 1;
        if p.ts_unix_ns <= split_ns {
            summary.packets_before += 1;
        }
    }
    for (ring_id, pid) in &ids {
        let Some(info) = s.ifaces.get(*ring_id as usize) else {
            continue;
        };
        let Some(st) = s
            .section
            .interfaces
            .iter()
            .find(|i| i.name == info.want.name)
        else {
            continue;
        };
        w.write_pcapng_block(InterfaceStatisticsBlock {
            interface_id: *pid,
            timestamp: s.to_unix_ns.max(0) as u64,
            options: vec![
                InterfaceStatisticsOption::IsbFilterAccept(st.kernel_received_total),
                InterfaceStatisticsOption::IsbOsDrop(st.kernel_dropped_total),
                InterfaceStatisticsOption::IsbIfDrop(st.interface_dropped_total),
            ],
        })?;
    }
    w.into_inner()
        .flush()
        .map_err(pcap_file::PcapError::IoError)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::ring::Packet;
    use crate::capture::select::{Role, Want};
    use crate::capture::thread::IfaceInfo;

    #[test]
    fn reads_back_with_interfaces_and_nanosecond_timestamps() {
        let iface = |n: &str| IfaceInfo {
            want: Want {
                name: n.into(),
                ifindex: 1,
                role: Role::Uplink,
                bridge: "br0".into(),
                domain: String::new(),
            },
            linktype: 1,
            snaplen: 128,
        };
        let s = Snapshot {
            from_unix_ns: 1_700_000_000_000_000_000,
            to_unix_ns: 1_700_000_060_000_000_000,
            ifaces: vec![iface("uplink0"), iface("bond1")],
            packets: vec![
                Packet {
                    ts_unix_ns: 1_700_000_001_123_456_789,
                    iface: 1,
                    orig_len: 1514,
                    data: vec![0xff; 60],
                },
                Packet {
                    ts_unix_ns: 1_700_000_002_000_000_001,
                    iface: 0,
                    orig_len: 42,
                    data: vec![0xee; 42],
                },
            ],
            filter: "arp".into(),
            snaplen: 128,
            ..Default::default()
        };
        let (bytes, sum) = write(&s).unwrap();
        assert_eq!(sum.packets, 2);
        assert_eq!(sum.interfaces, vec!["bond1", "uplink0"]);
        let mut r = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
        let mut seen = Vec::new();
        while let Some(b) = r.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(p) = b.unwrap() {
                seen.push((
                    p.interface_id,
                    p.timestamp.as_nanos(),
                    p.original_len,
                    p.data.len(),
                ));
            }
        }
        assert_eq!(
            seen,
            vec![
                (0, 1_700_000_001_123_456_789, 1514, 60),
                (1, 1_700_000_002_000_000_001, 42, 42)
            ]
        );
        assert_eq!(r.interfaces().len(), 2);
    }
}
