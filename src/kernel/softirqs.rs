//! /proc/softirqs (NET_RX / NET_TX per CPU) and /proc/buddyinfo (free blocks
//! per order). Written by hand: procfs does not parse either.

use std::collections::BTreeMap;

/// Rows of /proc/softirqs by name ("NET_RX" → per-CPU counts).
pub fn parse_softirqs(text: &str) -> Result<BTreeMap<String, Vec<u64>>, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, l) in text.lines().enumerate().skip(1) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        let v: Result<Vec<u64>, _> = rest.split_whitespace().map(str::parse).collect();
        out.insert(
            name.trim().to_string(),
            v.map_err(|e| (i + 1, format!("{}: {e}", name.trim())))?,
        );
    }
    Ok(out)
}

/// Free blocks per order summed over nodes and zones.
pub fn parse_buddyinfo(text: &str) -> Result<Vec<u64>, (usize, String)> {
    let mut sum: Vec<u64> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        // "Node 0, zone   Normal   12  4 …"
        let Some(rest) = l.split_once("zone").map(|(_, r)| r) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        it.next(); // zone name
        for (order, v) in it.enumerate() {
            let v: u64 = v
                .parse()
                .map_err(|e| (i + 1, format!("order {order}: {e}")))?;
            if sum.len() <= order {
                sum.resize(order + 1, 0);
            }
            sum[order] += v;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_files() {
        // tests/fixtures/proc/{softirqs,buddyinfo}: Debian 12, kernel 6.18, 2 CPUs.
        let s = parse_softirqs(include_str!("../../tests/fixtures/proc/softirqs")).unwrap();
        assert_eq!(s["NET_RX"].len(), 2);
        let b = parse_buddyinfo(include_str!("../../tests/fixtures/proc/buddyinfo")).unwrap();
        assert_eq!(b.len(), 11);
    }

    #[test]
    fn malformed_is_an_error_with_line() {
        assert_eq!(parse_softirqs("CPU0\nNET_RX: 1 x\n").unwrap_err().0, 2);
        assert_eq!(
            parse_buddyinfo("Node 0, zone DMA 1 2 z\n").unwrap_err().0,
            1
        );
    }
}
