//! /proc/buddyinfo: free blocks per allocation order, per node and zone.
//! Empty high orders while the kernel logs "page allocation failure" is
//! catalogue F21 (atomic skb allocations failing on fragmented memory).
//! Written by hand: procfs 0.18 does not parse this file.

use super::proc_error::LineError;

/// Free blocks per order (index = order), summed over nodes and zones.
pub fn parse(text: &str) -> Result<Vec<u64>, LineError> {
    let mut sum: Vec<u64> = Vec::with_capacity(11);
    let mut last = 0;
    for (i, l) in text.lines().enumerate() {
        let n = i + 1;
        last = n;
        if l.trim().is_empty() {
            continue;
        }
        // "Node 0, zone   Normal   12  4 …"
        let Some((_, rest)) = l.split_once(" zone ").filter(|_| l.starts_with("Node ")) else {
            return Err(LineError::new(n, "not a 'Node N, zone NAME counts…' line"));
        };
        let mut it = rest.split_whitespace();
        let zone = it.next().unwrap_or("?");
        let mut orders = 0;
        for (order, v) in it.enumerate() {
            let v: u64 = v
                .parse()
                .map_err(|e| LineError::new(n, format!("zone {zone} order {order}: {v:?}: {e}")))?;
            if sum.len() <= order {
                sum.resize(order + 1, 0);
            }
            sum[order] += v;
            orders += 1;
        }
        if orders == 0 {
            return Err(LineError::new(n, format!("zone {zone}: no counts")));
        }
    }
    if sum.is_empty() {
        return Err(LineError::new(1, "no zones"));
    }
    if !text.ends_with('\n') {
        return Err(LineError::new(last, "no final newline: truncated read"));
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_file_sums_zones() {
        let t = include_str!("../../tests/fixtures/proc/host/buddyinfo");
        let b = parse(t).unwrap();
        assert_eq!(b.len(), 11, "orders 0..=10");
        let order0: u64 = t
            .lines()
            .map(|l| l.split_whitespace().nth(4).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(b[0], order0);
    }

    #[test]
    fn malformed_files_name_the_line() {
        let e = parse(include_str!(
            "../../tests/fixtures/proc/malformed/buddyinfo-bad"
        ))
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.msg.contains("DMA32 order 0"), "{e}");
        assert_eq!(parse("Node 0, zone DMA 1 2 z\n").unwrap_err().line, 1);
        assert_eq!(parse("garbage\n").unwrap_err().line, 1);
        assert_eq!(parse("").unwrap_err().line, 1);
    }
}
