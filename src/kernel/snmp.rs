//! /proc/net/snmp and /proc/net/netstat (a "Proto: names" line followed by
//! a "Proto: values" line, repeated) and /proc/net/snmp6 ("Name value" per
//! line), flattened into one map keyed "Section.Field" ("Ip.InDiscards",
//! "TcpExt.IPReversePathFilter", "Ip6.InDiscards").
//!
//! Written by hand: procfs parses snmp and snmp6 into fixed structs but not
//! netstat (TcpExt, IpExt, MPTcpExt), which holds counters the catalogue
//! needs (IPReversePathFilter, TCPBacklogDrop, …); fixed structs would also
//! drop every counter a newer kernel adds. One parser for all three keeps
//! the keys uniform and the set open.

use super::proc_error::LineError;

/// "Section.Field" (the name alone without a section), without format!'s
/// machinery (this runs ~400 times a sample when keys are rebuilt).
pub(crate) fn key(section: Option<&str>, field: &str) -> String {
    let Some(section) = section else {
        return field.to_string();
    };
    let mut k = String::with_capacity(section.len() + 1 + field.len());
    k.push_str(section);
    k.push('.');
    k.push_str(field);
    k
}

/// Whether `k` is `key(section, field)`, without building it.
pub(crate) fn is_key(k: &str, section: Option<&str>, field: &str) -> bool {
    match section {
        None => k == field,
        Some(s) => {
            k.len() == s.len() + 1 + field.len()
                && k.starts_with(s)
                && k.as_bytes()[s.len()] == b'.'
                && k.ends_with(field)
        }
    }
}

/// Counters go into anything extendable: a map, or a Vec that the caller
/// turns into a map in one sorted bulk build (cheaper than ~400 inserts).
///
/// snmp / netstat format, added to `out`. Values are signed: Tcp.MaxConn is -1.
pub fn parse_paired(text: &str, out: &mut impl Extend<(String, i64)>) -> Result<(), LineError> {
    parse_paired_with(text, &mut |section, name, v| {
        out.extend([(key(section, name), v)])
    })
}

/// `parse_paired` handing each counter to `out` as (section, name, value),
/// no key built: the snmp collector keeps last sample's keys and builds one
/// only when it differs.
pub fn parse_paired_with(
    text: &str,
    out: &mut impl FnMut(Option<&str>, &str, i64),
) -> Result<(), LineError> {
    // (line number, section, names) of a names line waiting for its values.
    let mut pending: Option<(usize, &str, &str)> = None;
    let mut last = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        last = n;
        if line.trim().is_empty() {
            continue;
        }
        let Some((section, rest)) = line.split_once(':') else {
            return Err(LineError::new(n, "no 'Section:' prefix"));
        };
        let Some((_, names_section, names)) = pending.take() else {
            pending = Some((n, section, rest));
            continue;
        };
        if names_section != section {
            return Err(LineError::new(
                n,
                format!("values of {section:?} follow names of {names_section:?}"),
            ));
        }
        let (mut names, mut values) = (names.split_whitespace(), rest.split_whitespace());
        loop {
            match (names.next(), values.next()) {
                (None, None) => break,
                (Some(name), Some(v)) => {
                    let v: i64 = v
                        .parse()
                        .map_err(|e| LineError::new(n, format!("{section}.{name}: {v:?}: {e}")))?;
                    out(Some(section), name, v);
                }
                (Some(name), None) => {
                    return Err(LineError::new(n, format!("{section}: no value for {name}")))
                }
                (None, Some(v)) => {
                    return Err(LineError::new(
                        n,
                        format!("{section}: value {v:?} has no name"),
                    ))
                }
            }
        }
    }
    if let Some((n, section, _)) = pending {
        return Err(LineError::new(
            n,
            format!("{section}: names without a values line"),
        ));
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(LineError::new(last, "no final newline: truncated read"));
    }
    Ok(())
}

/// Protocol prefixes of snmp6 names, split off as the section.
const SNMP6_SECTIONS: [&str; 4] = ["UdpLite6", "Icmp6", "Udp6", "Ip6"];

/// snmp6 format, added to `out`: "Ip6InReceives  123" → "Ip6.InReceives".
/// A name with an unknown prefix is kept whole.
pub fn parse_snmp6(text: &str, out: &mut impl Extend<(String, i64)>) -> Result<(), LineError> {
    parse_snmp6_with(text, &mut |section, name, v| {
        out.extend([(key(section, name), v)])
    })
}

/// `parse_snmp6` handing each counter to `out` as (section, name, value);
/// the section is None for a name with an unknown prefix (kept whole).
pub fn parse_snmp6_with(
    text: &str,
    out: &mut impl FnMut(Option<&str>, &str, i64),
) -> Result<(), LineError> {
    let mut last = 0;
    for (i, l) in text.lines().enumerate() {
        last = i + 1;
        let mut it = l.split_whitespace();
        let Some(k) = it.next() else {
            continue;
        };
        let (Some(v), None) = (it.next(), it.next()) else {
            return Err(LineError::new(i + 1, format!("{k}: expected one value")));
        };
        let v: i64 = v
            .parse()
            .map_err(|e| LineError::new(i + 1, format!("{k}: {v:?}: {e}")))?;
        match SNMP6_SECTIONS
            .iter()
            .find(|p| k.len() > p.len() && k.starts_with(**p))
        {
            Some(p) => out(Some(p), &k[p.len()..], v),
            None => out(None, k, v),
        }
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(LineError::new(last, "no final newline: truncated read"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snmp collector keeps a key when `is_key` says it is the one it
    /// would build: exactly `key`'s, near misses not.
    #[test]
    fn is_key_matches_exactly_what_key_builds() {
        for (section, field) in [(Some("Ip"), "InReceives"), (None, "Ip6Odd")] {
            assert!(is_key(&key(section, field), section, field));
        }
        assert_eq!(key(Some("Tcp"), "MaxConn"), "Tcp.MaxConn");
        for k in [
            "Ip.InReceive",
            "Ip.InReceivesX",
            "IpXInReceives",
            "Ipx.InReceives",
            "InReceives",
        ] {
            assert!(!is_key(k, Some("Ip"), "InReceives"), "{k}");
        }
        assert!(!is_key("Ip.InReceives", None, "InReceives"));
    }
    use std::collections::BTreeMap;

    const SNMP: &str = include_str!("../../tests/fixtures/proc/host/net/snmp");
    const NETSTAT: &str = include_str!("../../tests/fixtures/proc/host/net/netstat");
    const SNMP6: &str = include_str!("../../tests/fixtures/proc/host/net/snmp6");

    /// The value the capture holds for Section.Field, found by hand.
    fn lookup(text: &str, section: &str, field: &str) -> i64 {
        let mut lines = text
            .lines()
            .filter(|l| l.starts_with(&format!("{section}:")));
        let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let i = names.iter().position(|n| *n == field).unwrap();
        values[i].parse().unwrap()
    }

    #[test]
    fn this_machines_files() {
        let mut m = BTreeMap::new();
        parse_paired(SNMP, &mut m).unwrap();
        parse_paired(NETSTAT, &mut m).unwrap();
        parse_snmp6(SNMP6, &mut m).unwrap();
        assert_eq!(m["Tcp.MaxConn"], -1);
        assert_eq!(m["Ip.InReceives"], lookup(SNMP, "Ip", "InReceives"));
        assert_eq!(m["Udp.InDatagrams"], lookup(SNMP, "Udp", "InDatagrams"));
        assert_eq!(
            m["TcpExt.IPReversePathFilter"],
            lookup(NETSTAT, "TcpExt", "IPReversePathFilter")
        );
        assert!(m.contains_key("IpExt.InOctets") && m.contains_key("TcpExt.TCPBacklogDrop"));
        assert!(m.contains_key("Ip6.InReceives") && m.contains_key("Icmp6.InErrors"));
        assert!(m.contains_key("UdpLite6.InDatagrams") && m.contains_key("Udp6.InDatagrams"));
        assert!(
            m.contains_key("Icmp6.OutType135"),
            "per-type counters (135: neighbour solicitation)"
        );
        // Every name of every file became a key: nothing silently dropped.
        let names = |t: &str| -> usize {
            t.lines()
                .step_by(2)
                .map(|l| l.split_whitespace().count() - 1)
                .sum()
        };
        let n6 = SNMP6.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(m.len(), names(SNMP) + names(NETSTAT) + n6);
    }

    #[test]
    fn a_namespace_has_its_own_counters_in_the_same_format() {
        let mut m = BTreeMap::new();
        parse_paired(
            include_str!("../../tests/fixtures/proc/netns/net/snmp"),
            &mut m,
        )
        .unwrap();
        parse_paired(
            include_str!("../../tests/fixtures/proc/netns/net/netstat"),
            &mut m,
        )
        .unwrap();
        parse_snmp6(
            include_str!("../../tests/fixtures/proc/netns/net/snmp6"),
            &mut m,
        )
        .unwrap();
        // The capture pinged 127.0.0.1 three times inside the namespace.
        assert!(m["Icmp.OutEchos"] >= 3, "{}", m["Icmp.OutEchos"]);
    }

    #[test]
    fn malformed_files_name_the_line() {
        let mut m = BTreeMap::new();
        let t = include_str!("../../tests/fixtures/proc/malformed/snmp-truncated");
        let e = parse_paired(t, &mut m).unwrap_err();
        assert_eq!(
            e.line,
            t.lines().count(),
            "the names line left without values: {e}"
        );
        assert!(e.msg.contains("UdpLite"), "{e}");
        let e = parse_paired(
            include_str!("../../tests/fixtures/proc/malformed/netstat-short-values"),
            &mut m,
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse_snmp6(
            include_str!("../../tests/fixtures/proc/malformed/snmp6-bad-value"),
            &mut m,
        )
        .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(
            parse_paired("Ip: A B\nIp: 1 2\nTcp: X Y\nUdp: 1 2\n", &mut m)
                .unwrap_err()
                .line,
            4
        );
        assert_eq!(parse_paired("Ip: A\nIp 1\n", &mut m).unwrap_err().line, 2);
        assert_eq!(parse_paired("Ip: A\nIp: 1", &mut m).unwrap_err().line, 2);
        assert_eq!(parse_snmp6("Ip6InReceives\n", &mut m).unwrap_err().line, 1);
    }
}
