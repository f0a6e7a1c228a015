//! /proc/net/softnet_stat: one row per CPU, hex columns. Written by hand:
//! the procfs crate does not parse it. Column layout (net/core/net-procfs.c):
//! 0 processed, 1 dropped, 2 time_squeeze, 3-7 zero, 8 cpu_collision (0 since
//! 4.x), 9 received_rps, 10 flow_limit_count; 11 backlog_len (since 5.10),
//! 12 cpu index (since 5.10), 13 input_qlen + 14 process_qlen (6.x).
//! Older kernels have 10 or 11 columns; the CPU index then is the row number
//! (which is wrong when CPUs are offline, hence the later column).

use crate::sample::SoftnetCpu;

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

pub fn parse(text: &str) -> Result<Vec<SoftnetCpu>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Result<Vec<u64>, _> = line
            .split_whitespace()
            .map(|c| u64::from_str_radix(c, 16))
            .collect();
        let cols = cols.map_err(|e| ParseError {
            line: i + 1,
            msg: format!("not hex: {e}"),
        })?;
        if cols.len() < 10 {
            return Err(ParseError {
                line: i + 1,
                msg: format!("{} columns, expected at least 10", cols.len()),
            });
        }
        out.push(SoftnetCpu {
            cpu: if cols.len() >= 13 {
                cols[12] as u32
            } else {
                i as u32
            },
            processed: cols[0],
            dropped: cols[1],
            time_squeeze: cols[2],
            received_rps: cols[9],
            flow_limit_count: cols.get(10).copied().unwrap_or(0),
            backlog_len: cols.get(11).copied(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_file() {
        // tests/fixtures/proc/net_softnet_stat: Debian 12, kernel 6.18, 2 CPUs (15 columns).
        let rows = parse(include_str!("../../tests/fixtures/proc/net_softnet_stat")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].cpu, 1);
        assert!(rows[0].processed > 0);
    }

    #[test]
    fn old_kernel_format_uses_row_number() {
        // 11 columns as printed by 3.13 (the seed incident's kernel): see net/core/net-procfs.c of v3.13.
        let t = "0000a000 00000002 00000010 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n\
                 0000b000 00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003\n";
        let rows = parse(t).unwrap();
        assert_eq!(
            (rows[0].cpu, rows[0].dropped, rows[0].time_squeeze),
            (0, 2, 16)
        );
        assert_eq!(
            (rows[1].cpu, rows[1].flow_limit_count, rows[1].backlog_len),
            (1, 3, None)
        );
    }

    #[test]
    fn malformed_names_line() {
        assert_eq!(parse("00000001 00000002\n").unwrap_err().line, 1);
        let t = "00000001 00000002 00000003 0 0 0 0 0 0 0 0\nzz\n";
        assert_eq!(parse(t).unwrap_err().line, 2);
    }
}
