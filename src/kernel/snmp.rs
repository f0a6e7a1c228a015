//! /proc/net/snmp and /proc/net/netstat ("Proto: names" line followed by a
//! "Proto: values" line) and /proc/net/snmp6 ("Name value"), flattened into
//! one map keyed "Section.Field". Written by hand: procfs parses snmp and
//! snmp6 into fixed structs but not netstat (TcpExt, IpExt), which holds
//! counters the catalogue needs (IPReversePathFilter, TCPBacklogDrop …);
//! one parser for all three keeps the keys uniform.

use std::collections::BTreeMap;

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

/// snmp / netstat format. Values are signed (Tcp.MaxConn is -1).
pub fn parse_paired(text: &str, out: &mut BTreeMap<String, i64>) -> Result<(), ParseError> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() % 2 != 0 {
        return Err(ParseError {
            line: lines.len(),
            msg: "odd number of lines: names without values".into(),
        });
    }
    for (pair, chunk) in lines.chunks(2).enumerate() {
        let line = pair * 2 + 2;
        let (Some((sec_a, names)), Some((sec_b, values))) =
            (chunk[0].split_once(':'), chunk[1].split_once(':'))
        else {
            return Err(ParseError {
                line,
                msg: "missing 'Section:' prefix".into(),
            });
        };
        if sec_a != sec_b {
            return Err(ParseError {
                line,
                msg: format!("section {sec_b:?} does not match names of {sec_a:?}"),
            });
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            return Err(ParseError {
                line,
                msg: format!("{} names, {} values in {sec_a}", names.len(), values.len()),
            });
        }
        for (n, v) in names.iter().zip(values) {
            let v: i64 = v.parse().map_err(|e| ParseError {
                line,
                msg: format!("{sec_a}.{n}: {v:?}: {e}"),
            })?;
            out.insert(format!("{sec_a}.{n}"), v);
        }
    }
    Ok(())
}

/// snmp6 format: "Ip6InReceives  123" → "Ip6.InReceives".
pub fn parse_snmp6(text: &str, out: &mut BTreeMap<String, i64>) -> Result<(), ParseError> {
    for (i, l) in text.lines().enumerate() {
        let mut it = l.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v: i64 = v.parse().map_err(|e| ParseError {
            line: i + 1,
            msg: format!("{k}: {v:?}: {e}"),
        })?;
        let split = ["Ip6", "Icmp6", "Udp6", "UdpLite6"]
            .iter()
            .filter(|p| k.starts_with(**p))
            .max_by_key(|p| p.len())
            .map(|p| p.len())
            .unwrap_or(0);
        let key = if split > 0 {
            format!("{}.{}", &k[..split], &k[split..])
        } else {
            k.to_string()
        };
        out.insert(key, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_files() {
        // tests/fixtures/proc/net_{snmp,netstat,snmp6}: Debian 12, kernel 6.18.
        let mut m = BTreeMap::new();
        parse_paired(include_str!("../../tests/fixtures/proc/net_snmp"), &mut m).unwrap();
        parse_paired(
            include_str!("../../tests/fixtures/proc/net_netstat"),
            &mut m,
        )
        .unwrap();
        parse_snmp6(include_str!("../../tests/fixtures/proc/net_snmp6"), &mut m).unwrap();
        assert_eq!(m["Tcp.MaxConn"], -1);
        assert!(m.contains_key("Ip.InDiscards"));
        assert!(m.contains_key("TcpExt.IPReversePathFilter"));
        assert!(m.contains_key("Ip6.InReceives") && m.contains_key("Icmp6.InErrors"));
        assert!(m.contains_key("UdpLite6.InDatagrams"));
    }

    #[test]
    fn malformed_names_line() {
        let mut m = BTreeMap::new();
        let e = parse_paired("Ip: A B\nIp: 1 2\nTcp: X Y\nTcp: 1\n", &mut m).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(parse_paired("Ip: A\n", &mut m).is_err());
        assert_eq!(
            parse_snmp6("Ip6InReceives x\n", &mut m).unwrap_err().line,
            1
        );
    }
}
