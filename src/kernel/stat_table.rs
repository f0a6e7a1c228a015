//! /proc/net/stat/{nf_conntrack,arp_cache,ndisc_cache}: a header line of
//! column names, then one row of hex numbers per CPU. Written by hand: the
//! procfs crate does not cover these files.

use std::collections::BTreeMap;

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

/// Sums the per-CPU rows by column. Columns that are global gauges repeated
/// on every row ("entries") are taken once, not summed.
pub fn parse(text: &str) -> Result<BTreeMap<String, u64>, ParseError> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or(ParseError {
            line: 1,
            msg: "empty file".into(),
        })?
        .split_whitespace()
        .collect();
    if header.is_empty() {
        return Err(ParseError {
            line: 1,
            msg: "no column names".into(),
        });
    }
    let mut out: BTreeMap<String, u64> = header.iter().map(|h| (h.to_string(), 0)).collect();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != header.len() {
            return Err(ParseError {
                line: i + 2,
                msg: format!("{} columns, header has {}", fields.len(), header.len()),
            });
        }
        for (name, f) in header.iter().zip(fields) {
            let v = u64::from_str_radix(f, 16).map_err(|e| ParseError {
                line: i + 2,
                msg: format!("column {name}: {f:?}: {e}"),
            })?;
            let slot = out.get_mut(*name).expect("header key");
            if *name == "entries" {
                *slot = v;
            } else {
                *slot += v;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_cache_of_this_machine() {
        // tests/fixtures/proc/arp_cache: /proc/net/stat/arp_cache, Debian 12, kernel 6.18, 2 CPUs.
        let m = parse(include_str!("../../tests/fixtures/proc/arp_cache")).unwrap();
        assert!(m.contains_key("table_fulls") && m.contains_key("forced_gc_runs"));
        assert!(m.contains_key("unresolved_discards"));
    }

    #[test]
    fn sums_cpus_but_not_entries() {
        let t = "entries  searched found\n0000000a 00000001 00000002\n0000000a 00000010 00000003\n";
        let m = parse(t).unwrap();
        assert_eq!(m["entries"], 10);
        assert_eq!(m["searched"], 17);
        assert_eq!(m["found"], 5);
    }

    #[test]
    fn malformed_row_names_line() {
        let e = parse("a b\n00000001 zz\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("column b"));
        assert_eq!(parse("a b\n1\n").unwrap_err().line, 2);
        assert_eq!(parse("").unwrap_err().line, 1);
    }
}
