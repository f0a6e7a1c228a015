//! /proc/net/stat/{nf_conntrack,arp_cache,ndisc_cache}: the kernel's per-CPU
//! statistics tables. One header line of column names, then one row of hex
//! numbers per possible CPU, summed here into one map by column name.
//! Written by hand: the procfs crate does not cover these files.
//!
//! Keys are the kernel's own header names, so a column added by a newer
//! kernel (nf_conntrack gained `clashres`, `chainlength`, `search_restart`)
//! appears without a code change. `entries` is not a per-CPU counter but the
//! table's current size printed on every row, so it is taken once.

use std::collections::BTreeMap;

use super::proc_error::LineError;

pub fn parse(text: &str) -> Result<BTreeMap<String, u64>, LineError> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    if header.is_empty() {
        return Err(LineError::new(1, "no header of column names"));
    }
    // Names such as "add" would parse as hex, so only an all-hex line counts
    // as a missing header (a torn read that lost it).
    if header.iter().all(|h| u64::from_str_radix(h, 16).is_ok()) {
        return Err(LineError::new(
            1,
            "numbers where the header of column names should be",
        ));
    }
    let mut sums = vec![0u64; header.len()];
    let mut rows = 0;
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let mut n = 0;
        for (col, field) in line.split_whitespace().enumerate() {
            let Some(name) = header.get(col) else {
                n = col + 1;
                continue;
            };
            let v = u64::from_str_radix(field, 16).map_err(|e| {
                LineError::new(line_no, format!("column {name}: {field:?} is not hex: {e}"))
            })?;
            if *name == "entries" {
                sums[col] = v;
            } else {
                sums[col] = sums[col].wrapping_add(v);
            }
            n = col + 1;
        }
        if n != header.len() {
            return Err(LineError::new(
                line_no,
                format!("{n} columns, the header names {}", header.len()),
            ));
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(LineError::new(2, "header but no per-CPU rows"));
    }
    if !text.ends_with('\n') {
        return Err(LineError::new(rows + 1, "no final newline: truncated read"));
    }
    Ok(header.into_iter().map(str::to_string).zip(sums).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_col(text: &str, row: usize, col: usize) -> u64 {
        let f = text
            .lines()
            .nth(row)
            .unwrap()
            .split_whitespace()
            .nth(col)
            .unwrap();
        u64::from_str_radix(f, 16).unwrap()
    }

    #[test]
    fn arp_cache_of_this_machine_sums_cpus() {
        let t = include_str!("../../tests/fixtures/proc/host/net/stat/arp_cache");
        let m = parse(t).unwrap();
        // Column 1 is allocs: the sum of both CPU rows.
        assert_eq!(m["allocs"], hex_col(t, 1, 1) + hex_col(t, 2, 1));
        assert_eq!(m["entries"], hex_col(t, 1, 0), "a gauge, not summed");
        for k in [
            "table_fulls",
            "forced_gc_runs",
            "unresolved_discards",
            "periodic_gc_runs",
        ] {
            assert!(m.contains_key(k), "{k}");
        }
        assert_eq!(m.len(), 13);
    }

    #[test]
    fn ndisc_cache_and_nf_conntrack_of_this_machine() {
        let m = parse(include_str!(
            "../../tests/fixtures/proc/host/net/stat/ndisc_cache"
        ))
        .unwrap();
        assert!(m["allocs"] > 0);
        // Captured in a namespace after tracked traffic: 1 entry, printed on both CPU rows.
        let m = parse(include_str!(
            "../../tests/fixtures/proc/netns/net/stat/nf_conntrack"
        ))
        .unwrap();
        assert_eq!(m["entries"], 1);
        for k in [
            "insert_failed",
            "drop",
            "early_drop",
            "search_restart",
            "clashres",
        ] {
            assert!(m.contains_key(k), "{k}");
        }
    }

    #[test]
    fn malformed_tables_name_the_line() {
        let e = parse(include_str!(
            "../../tests/fixtures/proc/malformed/nf_conntrack-short-row"
        ))
        .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse("found drop\n00000001 zz\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("column drop"), "{e}");
        assert_eq!(parse("found drop\n1 2 3\n").unwrap_err().line, 2);
        assert_eq!(parse("").unwrap_err().line, 1);
        assert_eq!(
            parse("00000001 00000002\n").unwrap_err().line,
            1,
            "rows without a header"
        );
        assert_eq!(parse("found drop\n").unwrap_err().line, 2);
        assert_eq!(parse("found drop\n1 2\n1 2").unwrap_err().line, 3);
    }
}
