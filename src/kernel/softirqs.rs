//! /proc/softirqs: per-CPU counts of each softirq (NET_RX, NET_TX, …), a
//! header of CPU names, then one "NAME: n n n" row per softirq. NET_RX
//! stopping on one CPU while traffic arrives is a stall signature (F15, F23).
//! Written by hand: the procfs crate does not parse this file.

use std::collections::BTreeMap;

use super::proc_error::LineError;

/// Rows by softirq name ("NET_RX" → one count per CPU of the header).
pub fn parse(text: &str) -> Result<BTreeMap<String, Vec<u64>>, LineError> {
    let mut lines = text.lines();
    let ncpu = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter(|c| c.starts_with("CPU"))
        .count();
    if ncpu == 0 {
        return Err(LineError::new(1, "no CPU columns in the header"));
    }
    let mut out = BTreeMap::new();
    let mut last = 1;
    for (i, l) in lines.enumerate() {
        let n = i + 2;
        last = n;
        if l.trim().is_empty() {
            continue;
        }
        let Some((name, rest)) = l.split_once(':') else {
            return Err(LineError::new(n, "no 'NAME:' prefix"));
        };
        let name = name.trim();
        let mut counts = Vec::with_capacity(ncpu);
        for v in rest.split_whitespace() {
            counts.push(
                v.parse()
                    .map_err(|e| LineError::new(n, format!("{name}: {v:?}: {e}")))?,
            );
        }
        if counts.len() != ncpu {
            return Err(LineError::new(
                n,
                format!("{name}: {} counts for {ncpu} CPUs", counts.len()),
            ));
        }
        out.insert(name.to_string(), counts);
    }
    if !text.ends_with('\n') {
        return Err(LineError::new(last, "no final newline: truncated read"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_file() {
        let t = include_str!("../../tests/fixtures/proc/host/softirqs");
        let s = parse(t).unwrap();
        let row: Vec<u64> = t
            .lines()
            .find(|l| l.trim_start().starts_with("NET_RX:"))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(s["NET_RX"], row);
        assert_eq!(s["NET_TX"].len(), 2);
        assert_eq!(s.len(), 10, "HI … RCU");
    }

    #[test]
    fn malformed_files_name_the_line() {
        let e = parse(include_str!(
            "../../tests/fixtures/proc/malformed/softirqs-truncated"
        ))
        .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert_eq!(parse("CPU0\nNET_RX: 1 x\n").unwrap_err().line, 2);
        assert_eq!(parse("").unwrap_err().line, 1);
        assert_eq!(parse("CPU0\nNET_RX 1\n").unwrap_err().line, 2);
    }
}
