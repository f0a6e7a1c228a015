//! /dev/kmsg records ("PRI,SEQ,TS_USEC,FLAGS[,…];TEXT" plus continuation
//! lines " KEY=VALUE") and the catalogue tagger: known failure signatures of
//! shared/failure-catalog.md as regular expressions. Every line is kept —
//! the cause may be one nobody has catalogued — and matches are tagged.

use std::sync::OnceLock;

use regex::Regex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    pub priority: u8,
    pub facility: u8,
    pub seq: u64,
    pub boot_us: u64,
    pub text: String,
}

/// Parses one record; continuation lines (device info) are ignored.
pub fn parse_record(rec: &str) -> Option<KmsgRecord> {
    let first = rec.lines().next()?;
    let (head, text) = first.split_once(';')?;
    let mut f = head.split(',');
    let pri: u32 = f.next()?.trim().parse().ok()?;
    let seq: u64 = f.next()?.parse().ok()?;
    let boot_us: u64 = f.next()?.parse().ok()?;
    Some(KmsgRecord {
        priority: (pri & 7) as u8,
        facility: (pri >> 3) as u8,
        seq,
        boot_us,
        text: unescape(text),
    })
}

/// /dev/kmsg escapes non-printable bytes as \xNN.
fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (catalogue id, pattern) — from shared/failure-catalog.md's evidence column.
const SIGNATURES: &[(&str, &str)] = &[
    (
        "F1",
        r"NETDEV WATCHDOG: (\S+) \((\S+)\): transmit queue (\d+) timed out",
    ),
    ("F1", r"Detected (Hardware|Tx) Unit Hang"),
    ("F1", r"Reset adapter"),
    ("F2", r"[Ll]ink is [Dd]own"),
    ("F2", r"entered disabled state"),
    (
        "F3",
        r"nf_conntrack: (nf_conntrack: )?table full, dropping packet",
    ),
    ("F4", r"[Nn]eighbou?r table overflow"),
    (
        "F6",
        r"received packet on (\S+) with own address as source address",
    ),
    ("F8", r"port (\d+)\((\S+)\) entered (\w+) state"),
    ("F21", r"page allocation failure: ?order:(\d+)"),
    ("F22", r"Out of memory: Kill(ed)? process (\d+) \((\S+)\)"),
    ("F22", r"invoked oom-killer"),
    ("F23", r"BUG: soft lockup - CPU#(\d+) stuck for (\d+)s!"),
    ("F23", r"blocked for more than \d+ seconds"),
    // The catalogue's `rcu_.*stall` also matched the boot command line
    // ("rcupdate.rcu_cpu_stall_cputime=1"); anchored on the kernel's wording.
    ("F23", r"rcu_\w+ (self-)?detected stalls?"),
    (
        "F24",
        r"bond\d+: .*(link status definitely down|No 802\.3ad response)",
    ),
];

fn compiled() -> &'static Vec<(&'static str, Regex)> {
    static C: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    C.get_or_init(|| {
        SIGNATURES
            .iter()
            .map(|(id, p)| (*id, Regex::new(p).expect("catalogue pattern compiles")))
            .collect()
    })
}

/// Catalogue ids whose pattern matches `text`, deduplicated, in catalogue order.
pub fn tags(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (id, re) in compiled() {
        if re.is_match(text) && !out.iter().any(|t| t == id) {
            out.push(id.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_records_of_this_machine() {
        // tests/fixtures/kmsg/boot.txt: records read from /dev/kmsg on the
        // Debian 12 / 6.18 test machine, one per line.
        let text = include_str!("../../tests/fixtures/kmsg/boot.txt");
        let recs: Vec<KmsgRecord> = text.lines().filter_map(parse_record).collect();
        assert!(recs.len() > 20, "{}", recs.len());
        assert!(recs.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(recs.iter().any(|r| r.text.starts_with("Linux version")));
    }

    #[test]
    fn fields_and_continuation() {
        let r = parse_record(
            "4,1234,5678901,-;br0: port 1(uplink0) entered disabled state\n SUBSYSTEM=net\n",
        )
        .unwrap();
        assert_eq!(
            (r.priority, r.facility, r.seq, r.boot_us),
            (4, 0, 1234, 5_678_901)
        );
        assert_eq!(r.text, "br0: port 1(uplink0) entered disabled state");
        assert_eq!(
            parse_record("14,7,9,-,caller=T1;hello\\x09world")
                .unwrap()
                .text,
            "hello\tworld"
        );
        assert_eq!(
            parse_record("14,7,9,-,caller=T1;hello").unwrap().facility,
            1
        );
        assert!(parse_record("garbage").is_none());
        assert!(parse_record("x,1,2,-;t").is_none());
    }

    #[test]
    fn catalogue_lines_are_tagged() {
        // Lines constructed from the catalogue's patterns and the kernel's format strings.
        let cases = [
            ("NETDEV WATCHDOG: eth0 (ixgbe): transmit queue 3 timed out 5184 ms", "F1"),
            ("e1000e 0000:00:19.0 eth0: Detected Hardware Unit Hang:", "F1"),
            ("ixgbe 0000:03:00.0 eth2: Reset adapter", "F1"),
            ("ixgbe 0000:03:00.0 eth2: NIC Link is Down", "F2"),
            ("nf_conntrack: nf_conntrack: table full, dropping packet", "F3"),
            ("neighbour: arp_cache: neighbor table overflow!", "F4"),
            ("br0: received packet on eth0 with own address as source address (addr:52:54:00:12:34:56, vlan:0)", "F6"),
            ("br0: port 2(vnet0) entered blocking state", "F8"),
            ("qemu-system-x86: page allocation failure: order:4, mode:0x40cc0", "F21"),
            ("Out of memory: Killed process 4242 (qemu-system-x86) total-vm:4194304kB", "F22"),
            ("dnsmasq invoked oom-killer: gfp_mask=0x100cca", "F22"),
            ("watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [ksoftirqd/3:29]", "F23"),
            ("INFO: task kworker/0:1:12 blocked for more than 120 seconds.", "F23"),
            ("rcu: INFO: rcu_sched self-detected stall on CPU", "F23"),
            ("bond0: (slave eth1): link status definitely down, disabling slave", "F24"),
        ];
        for (line, id) in cases {
            assert!(
                tags(line).contains(&id.to_string()),
                "{line:?} not tagged {id}: {:?}",
                tags(line)
            );
        }
    }

    #[test]
    fn ordinary_lines_are_not_tagged() {
        for line in include_str!("../../tests/fixtures/kmsg/boot.txt")
            .lines()
            .filter_map(parse_record)
        {
            let t = tags(&line.text);
            assert!(
                t.is_empty() || line.text.contains("state"),
                "{:?} tagged {t:?}",
                line.text
            );
        }
        assert!(tags("virtio_net virtio0 eth0: renamed from veth").is_empty());
    }
}
