//! /proc/net/softnet_stat: one row per online CPU, hex columns, no header.
//! Written by hand: the procfs crate does not parse this file.
//!
//! The columns, from `softnet_seq_show()` in net/core/net-procfs.c (0-based):
//!
//! | col | meaning | since |
//! |-----|---------|-------|
//! | 0 | processed (packets taken off the backlog / by NAPI) | always |
//! | 1 | dropped (backlog full: netdev_max_backlog) — catalogue F15 | always |
//! | 2 | time_squeeze (net_rx_action ran out of budget or time) | always |
//! | 3–7 | always 0 (were fastroute) | |
//! | 8 | cpu_collision (0 since 4.x) | always |
//! | 9 | received_rps (IPIs received for RPS) | 2.6.35 |
//! | 10 | flow_limit_count | 3.11 |
//! | 11 | backlog_len (input_pkt_queue + process_queue) | 5.10 |
//! | 12 | cpu index | 5.10 |
//! | 13, 14 | input_qlen, process_qlen separately | 6.4 |
//!
//! So 9 columns on 2.6.32, 10 on 3.10 (RHEL 7), 11 on 3.11–5.9 (the seed
//! incident's 3.13), 13 on 5.10–6.3, 15 from 6.4 on (this machine's 6.18).
//! The kernel skips offline CPUs, so before 5.10 the row number is only the
//! CPU number when every CPU is online; from 5.10 on we take column 12.
//! Counters are the kernel's u32 and wrap; the model handles that.

use super::proc_error::LineError;
use crate::sample::SoftnetCpu;

/// Fewest columns any kernel printed (2.6.32).
const MIN_COLUMNS: usize = 9;

pub fn parse(text: &str) -> Result<Vec<SoftnetCpu>, LineError> {
    let mut out = Vec::with_capacity(8);
    let mut width = None;
    let mut cols: Vec<u64> = Vec::with_capacity(16);
    let mut last = 0;
    for (i, line) in text.lines().enumerate() {
        last = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        cols.clear();
        for (c, field) in line.split_whitespace().enumerate() {
            let v = u64::from_str_radix(field, 16).map_err(|e| {
                LineError::new(i + 1, format!("column {c}: {field:?} is not hex: {e}"))
            })?;
            cols.push(v);
        }
        if cols.len() < MIN_COLUMNS {
            return Err(LineError::new(
                i + 1,
                format!("{} columns, expected at least {MIN_COLUMNS}", cols.len()),
            ));
        }
        // Every row has the same width; a short row is a torn read, and
        // taking it at face value would silently switch layouts mid-file.
        match width {
            None => width = Some(cols.len()),
            Some(w) if w != cols.len() => {
                return Err(LineError::new(
                    i + 1,
                    format!("{} columns, the first row has {w}", cols.len()),
                ))
            }
            Some(_) => {}
        }
        let cpu = match cols.get(12) {
            Some(&c) => u32::try_from(c)
                .map_err(|_| LineError::new(i + 1, format!("cpu index {c} out of range")))?,
            None => out.len() as u32,
        };
        out.push(SoftnetCpu {
            cpu,
            processed: cols[0],
            dropped: cols[1],
            time_squeeze: cols[2],
            received_rps: cols.get(9).copied().unwrap_or(0),
            flow_limit_count: cols.get(10).copied().unwrap_or(0),
            backlog_len: cols.get(11).copied(),
        });
    }
    if out.is_empty() {
        return Err(LineError::new(last.max(1), "no CPU rows"));
    }
    if !text.ends_with('\n') {
        return Err(LineError::new(last, "no final newline: truncated read"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = include_str!("../../tests/fixtures/proc/host/net/softnet_stat");

    #[test]
    fn this_machines_file_15_columns() {
        // Root namespace of this machine (6.18, 2 CPUs): see PROVENANCE.md.
        let rows = parse(HOST).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].cpu, rows[1].cpu), (0, 1));
        assert!(rows[0].processed > 0 && rows[1].processed > 0);
        // Column 11 (backlog_len) is present on 6.x, though 0 when idle.
        assert!(rows.iter().all(|r| r.backlog_len.is_some()));
        // The first row of the capture, decoded by hand.
        let first: Vec<&str> = HOST.lines().next().unwrap().split(' ').collect();
        assert_eq!(
            rows[0].processed,
            u64::from_str_radix(first[0], 16).unwrap()
        );
        assert_eq!(
            rows[0].time_squeeze,
            u64::from_str_radix(first[2], 16).unwrap()
        );
    }

    #[test]
    fn a_namespace_sees_the_same_global_file() {
        let rows = parse(include_str!(
            "../../tests/fixtures/proc/netns/net/softnet_stat"
        ))
        .unwrap();
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn old_kernels_use_the_row_number_and_lack_later_columns() {
        // Constructed from the seq_printf of each version (PROVENANCE.md).
        let r = parse(include_str!(
            "../../tests/fixtures/proc/constructed/softnet_stat-2.6.32"
        ))
        .unwrap();
        assert_eq!(
            (r[0].cpu, r[0].processed, r[0].dropped, r[0].time_squeeze),
            (0, 123456, 7, 42)
        );
        assert_eq!(
            (r[1].cpu, r[1].received_rps, r[1].backlog_len),
            (1, 0, None)
        );
        let r = parse(include_str!(
            "../../tests/fixtures/proc/constructed/softnet_stat-3.10"
        ))
        .unwrap();
        assert_eq!(
            (r[0].received_rps, r[1].received_rps, r[1].flow_limit_count),
            (11, 12, 0)
        );
        let r = parse(include_str!(
            "../../tests/fixtures/proc/constructed/softnet_stat-3.13"
        ))
        .unwrap();
        assert_eq!((r[0].cpu, r[0].dropped, r[0].time_squeeze), (0, 2, 16));
        assert_eq!(
            (r[1].cpu, r[1].flow_limit_count, r[1].backlog_len),
            (1, 3, None)
        );
    }

    #[test]
    fn from_5_10_the_cpu_column_names_the_cpu_even_with_one_offline() {
        // CPU 1 offline: the kernel prints rows for CPUs 0 and 2.
        let r = parse(include_str!(
            "../../tests/fixtures/proc/constructed/softnet_stat-5.10"
        ))
        .unwrap();
        assert_eq!((r[0].cpu, r[1].cpu), (0, 2));
        assert_eq!((r[0].processed, r[0].backlog_len), (0xffff_ffff, Some(17)));
    }

    #[test]
    fn malformed_files_name_the_line() {
        let e = parse(include_str!(
            "../../tests/fixtures/proc/malformed/softnet_stat-truncated"
        ))
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse(include_str!(
            "../../tests/fixtures/proc/malformed/softnet_stat-not-hex"
        ))
        .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.msg.contains("column 0"), "{e}");
        // A row torn inside its last column keeps 15 columns; the missing newline gives it away.
        let torn = &HOST[..HOST.len() - 4];
        assert_eq!(parse(torn).unwrap_err().line, 2);
        assert_eq!(parse("").unwrap_err().line, 1);
        // A short row after full ones: a torn read, not a layout change.
        let short = format!(
            "{}{}\n",
            HOST.lines().next().unwrap(),
            "\n00000001 0 0 0 0 0 0 0 0 0 0 0 1"
        );
        assert_eq!(parse(&short).unwrap_err().line, 2);
    }
}
