//! /dev/kmsg records and the catalogue tagger (pure).
//!
//! A record (Documentation/ABI/testing/dev-kmsg) is one header line
//! "PRI,SEQ,TS_USEC,FLAGS[,more];TEXT" followed by zero or more
//! continuation lines " KEY=VALUE" (device info of dev_printk messages).
//! Non-printable bytes in TEXT are escaped as \xNN. Hand-written: no crate
//! parses this format (rmesg and friends wrap it in their own I/O).
//!
//! The tagger matches the text against the known failure signatures of
//! shared/failure-catalog.md; every line is kept whether it matches or not
//! (the cause may be one nobody has catalogued).

use std::sync::OnceLock;

use regex::RegexSet;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    /// Syslog severity, 0 (emerg) … 7 (debug).
    pub priority: u8,
    /// Syslog facility; 0 = kernel, 1 = user (lines written to /dev/kmsg).
    pub facility: u8,
    pub seq: u64,
    /// The kernel's timestamp: µs since boot (printk clock).
    pub boot_us: u64,
    pub text: String,
    /// Continuation lines, e.g. ("SUBSYSTEM", "net"), ("DEVICE", "n2").
    pub dict: Vec<(String, String)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KmsgError {
    #[error("kmsg record without ';' between header and text: {0:?}")]
    NoText(String),
    #[error("kmsg record header {header:?}: bad {field}")]
    BadField { header: String, field: &'static str },
}

/// Parses one record (header line plus any continuation lines).
pub fn parse_record(rec: &str) -> Result<KmsgRecord, KmsgError> {
    let mut lines = rec.split('\n');
    let first = lines.next().unwrap_or_default();
    let (head, text) = first
        .split_once(';')
        .ok_or_else(|| KmsgError::NoText(first.chars().take(80).collect()))?;
    let mut f = head.split(',');
    let mut field = |name: &'static str| {
        f.next()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(KmsgError::BadField {
                header: head.to_string(),
                field: name,
            })
    };
    let pri = field("priority")?;
    let seq = field("sequence number")?;
    let boot_us = field("timestamp")?;
    let dict = lines
        .filter_map(|l| l.strip_prefix(' '))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), unescape(v)))
        .collect();
    Ok(KmsgRecord {
        priority: (pri & 7) as u8,
        facility: ((pri >> 3) & 0xff) as u8,
        seq,
        boot_us,
        text: unescape(text),
        dict,
    })
}

/// Splits a text holding many records (a saved log, a FIFO's stream) into
/// records: a line starting with a space continues the record before it.
pub fn split_records(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        while rest.starts_with('\n') {
            rest = &rest[1..];
        }
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len();
        let mut from = 0;
        while let Some(nl) = rest[from..].find('\n') {
            let next = from + nl + 1;
            if !rest[next..].starts_with(' ') {
                end = from + nl;
                break;
            }
            from = next;
        }
        let rec = &rest[..end];
        rest = &rest[(end + 1).min(rest.len())..];
        Some(rec)
    })
}

/// /dev/kmsg escapes non-printable bytes (and backslash) as \xNN.
fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_string();
    }
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            if let (Some(h), Some(l)) = (hex(b[i + 2]), hex(b[i + 3])) {
                out.push(h << 4 | l);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (catalogue id, pattern): the kernel-log evidence of
/// shared/failure-catalog.md, verbatim unless a note says otherwise.
pub const SIGNATURES: &[(&str, &str)] = &[
    (
        "F1",
        r"NETDEV WATCHDOG: (\S+) \((\S+)\): transmit queue (\d+) timed out",
    ),
    // Not in the catalogue: since Linux 6.7 dev_watchdog() logs through
    // netdev_crit() as "<driver> <bus id> <ifname>: NETDEV WATCHDOG: CPU: 3:
    // transmit queue 0 timed out 5184 ms", which the pattern above misses
    // (this machine runs 6.18).
    (
        "F1",
        r"NETDEV WATCHDOG: CPU: (\d+): transmit queue (\d+) timed out",
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
    // The catalogue has "Out of memory: Kill…"; a cgroup OOM (qemu runs in
    // machine.slice) logs "Memory cgroup out of memory: Killed process …".
    (
        "F22",
        r"[Oo]ut of memory: Kill(ed)? process (\d+) \((\S+)\)",
    ),
    ("F22", r"invoked oom-killer"),
    ("F23", r"BUG: soft lockup - CPU#(\d+) stuck for (\d+)s!"),
    ("F23", r"blocked for more than \d+ seconds"),
    // The catalogue's `rcu_.*stall` also matched the boot command line
    // ("rcupdate.rcu_cpu_stall_cputime=1"); anchored on the kernel's wording
    // ("rcu_sched self-detected stall on CPU", "rcu_preempt detected
    // expedited stalls on CPUs/tasks").
    ("F23", r"rcu_\w+ (self-)?detected (expedited )?stalls?"),
    // Not in the catalogue, same family: the hard-lockup detector.
    ("F23", r"Watchdog detected hard LOCKUP on cpu \d+"),
    (
        "F24",
        r"bond\d+: .*(link status definitely down|No 802\.3ad response)",
    ),
];

/// All signatures as one set. A set reports only which patterns matched, so
/// it builds no capture machinery: compiled one by one, the one-pass DFAs
/// for their (unused) groups cost the agent ~1 MiB of heap; and a line is
/// scanned once instead of once per pattern.
fn compiled() -> Option<&'static RegexSet> {
    static C: OnceLock<Option<RegexSet>> = OnceLock::new();
    C.get_or_init(|| match RegexSet::new(SIGNATURES.iter().map(|(_, p)| p)) {
        Ok(set) => Some(set),
        // Constant patterns, covered by a test; never panic the agent.
        // regex's error quotes the pattern that does not compile.
        Err(e) => {
            tracing::error!(error = %e, "bad kmsg signature");
            None
        }
    })
    .as_ref()
}

/// Catalogue ids whose pattern matches `text`, deduplicated, in catalogue order.
pub fn tags(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(set) = compiled() else {
        return out;
    };
    // Set matches come in pattern order, which is catalogue order.
    for i in set.matches(text).iter() {
        let id = SIGNATURES[i].0;
        if !out.iter().any(|t| t == id) {
            out.push(id.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of this machine (see tests/fixtures/PROVENANCE.md).
    fn fixture(name: &str) -> Vec<KmsgRecord> {
        let text = match name {
            "boot" => include_str!("../../tests/fixtures/kmsg/boot.txt"),
            "lab" => include_str!("../../tests/fixtures/kmsg/lab.txt"),
            _ => unreachable!(),
        };
        split_records(text)
            .map(|r| parse_record(r).unwrap_or_else(|e| panic!("{name}: {e}")))
            .collect()
    }

    #[test]
    fn parses_real_records_of_this_machine() {
        let boot = fixture("boot");
        assert!(boot.len() > 200, "{}", boot.len());
        assert!(boot.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(boot.windows(2).all(|w| w[0].boot_us <= w[1].boot_us));
        assert!(boot[0].text.starts_with("Linux version"));
        assert_eq!((boot[0].priority, boot[0].facility, boot[0].seq), (5, 0, 0));
        let lab = fixture("lab");
        assert!(lab.len() > 200, "{}", lab.len());
        assert!(lab
            .iter()
            .any(|r| r.text.contains("entered forwarding state")));
        assert!(lab.iter().all(|r| r.facility == 0 && r.dict.is_empty()));
    }

    #[test]
    fn fields_continuation_and_escapes() {
        // The example record of Documentation/ABI/testing/dev-kmsg.
        let r = parse_record(
            "7,160,424069,-;pci_root PNP0A03:00: host bridge window [io  0x0000-0x0cf7] (ignored)\n SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A03:00\n",
        )
        .unwrap();
        assert_eq!(
            (r.priority, r.facility, r.seq, r.boot_us),
            (7, 0, 160, 424_069)
        );
        assert_eq!(
            r.text,
            "pci_root PNP0A03:00: host bridge window [io  0x0000-0x0cf7] (ignored)"
        );
        assert_eq!(
            r.dict,
            vec![
                ("SUBSYSTEM".to_string(), "acpi".to_string()),
                ("DEVICE".to_string(), "+acpi:PNP0A03:00".to_string())
            ]
        );
        // With the caller id of CONFIG_PRINTK_CALLER, and an escaped tab.
        let r = parse_record("14,7,9,-,caller=T1;hello\\x09world\\x5c").unwrap();
        assert_eq!((r.facility, r.priority), (1, 6));
        assert_eq!(r.text, "hello\tworld\\");
        assert_eq!(parse_record("6,1,2,-;a\\xzz").unwrap().text, "a\\xzz");
        assert!(matches!(parse_record("garbage"), Err(KmsgError::NoText(_))));
        assert_eq!(
            parse_record("x,1,2,-;t"),
            Err(KmsgError::BadField {
                header: "x,1,2,-".into(),
                field: "priority"
            })
        );
        assert!(parse_record("6,1;t").is_err());
    }

    #[test]
    fn records_split_on_non_continuation_lines() {
        let text = "6,1,10,-;one\n SUBSYSTEM=net\n DEVICE=n2\n6,2,11,-;two\n\n6,3,12,-;three";
        let recs: Vec<&str> = split_records(text).collect();
        assert_eq!(
            recs,
            [
                "6,1,10,-;one\n SUBSYSTEM=net\n DEVICE=n2",
                "6,2,11,-;two",
                "6,3,12,-;three"
            ]
        );
        assert_eq!(parse_record(recs[0]).unwrap().dict.len(), 2);
        assert_eq!(split_records("").count(), 0);
    }

    /// Constructed from the catalogue's patterns and the kernel's format
    /// strings (NETDEV WATCHDOG's 6.7+ format from net/sched/sch_generic.c),
    /// except the F6 and F2/F8 lines, which this machine logged (lab.txt).
    pub const CATALOGUE_LINES: &[(&str, &str)] = &[
        ("NETDEV WATCHDOG: eth0 (ixgbe): transmit queue 3 timed out 5184 ms", "F1"),
        ("ixgbe 0000:03:00.0 eth2: NETDEV WATCHDOG: CPU: 1: transmit queue 3 timed out 5184 ms", "F1"),
        ("e1000e 0000:00:19.0 eth0: Detected Hardware Unit Hang:", "F1"),
        ("ixgbe 0000:03:00.0 eth2: Reset adapter", "F1"),
        ("ixgbe 0000:03:00.0 eth2: NIC Link is Down", "F2"),
        ("br0: port 1(uplink0) entered disabled state", "F2"),
        ("nf_conntrack: nf_conntrack: table full, dropping packet", "F3"),
        ("nf_conntrack: table full, dropping packet", "F3"),
        ("neighbour: arp_cache: neighbor table overflow!", "F4"),
        ("br0: received packet on p0 with own address as source address (addr:52:e8:61:76:12:57, vlan:0)", "F6"),
        ("br0: port 2(vnet0) entered blocking state", "F8"),
        ("qemu-system-x86: page allocation failure: order:4, mode:0x40cc0(GFP_KERNEL|__GFP_COMP), nodemask=(null)", "F21"),
        ("Out of memory: Killed process 4242 (qemu-system-x86) total-vm:4194304kB, anon-rss:2097152kB", "F22"),
        ("Memory cgroup out of memory: Killed process 4242 (qemu-system-x86) total-vm:4194304kB", "F22"),
        ("dnsmasq invoked oom-killer: gfp_mask=0x100cca(GFP_HIGHUSER_MOVABLE), order=0, oom_score_adj=0", "F22"),
        ("watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [ksoftirqd/3:29]", "F23"),
        ("INFO: task kworker/0:1:12 blocked for more than 120 seconds.", "F23"),
        ("rcu: INFO: rcu_sched self-detected stall on CPU", "F23"),
        ("rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: {", "F23"),
        ("Watchdog detected hard LOCKUP on cpu 2", "F23"),
        ("bond0: (slave eth1): link status definitely down, disabling slave", "F24"),
        ("bond0: (slave eth1): No 802.3ad response from the link partner for any adapters in the bond", "F24"),
    ];

    #[test]
    fn catalogue_lines_are_tagged() {
        for (line, id) in CATALOGUE_LINES {
            assert!(
                tags(line).contains(&id.to_string()),
                "{line:?} not tagged {id}: {:?}",
                tags(line)
            );
        }
        // The real F6 warnings this machine logged (lab.txt) are tagged F6.
        let lab = fixture("lab");
        let own: Vec<_> = lab
            .iter()
            .filter(|r| r.text.contains("own address"))
            .collect();
        assert!(!own.is_empty());
        assert!(own.iter().all(|r| tags(&r.text) == ["F6"]));
        // Port-state lines are both F2 (disabled) and F8 (any state), once each.
        assert_eq!(
            tags("br0: port 1(uplink0) entered disabled state"),
            ["F2", "F8"]
        );
        assert_eq!(
            compiled().map(|s| s.len()),
            Some(SIGNATURES.len()),
            "every pattern compiles"
        );
    }

    #[test]
    fn ordinary_lines_are_not_tagged() {
        // The whole boot log of this machine: none of it is a failure.
        for r in fixture("boot") {
            assert!(
                tags(&r.text).is_empty(),
                "{:?} tagged {:?}",
                r.text,
                tags(&r.text)
            );
        }
        // The lab's churn: only bridge port-state lines (catalogue F2/F8
        // evidence; the analyzer keeps those about uplinks) are tagged.
        for r in fixture("lab") {
            let t = tags(&r.text);
            let port_state = r.text.contains(") entered ") && r.text.ends_with(" state");
            assert!(
                t.is_empty() || port_state || t == ["F6"],
                "{:?} tagged {t:?}",
                r.text
            );
        }
        for line in [
            "virtio_net virtio0 eth0: renamed from veth",
            "Kernel command line: rcupdate.rcu_cpu_stall_cputime=1",
            "vnet0: entered promiscuous mode",
            "IPv6: ADDRCONF(NETDEV_CHANGE): vnet0: link becomes ready",
            "e1000e 0000:00:19.0 eth0: NIC Link is Up 1000 Mbps Full Duplex",
        ] {
            assert!(tags(line).is_empty(), "{line:?} tagged {:?}", tags(line));
        }
    }
}
