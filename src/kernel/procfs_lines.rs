//! Line-level shape checks for the /proc files we hand to the procfs crate
//! (/proc/stat, /proc/meminfo, /proc/loadavg, /proc/pressure/*).
//!
//! procfs-core parses them well but (a) its errors say what was wrong, not
//! on which line, and (b) a few inputs make it panic instead of erring: it
//! slices at byte offsets (`&line[5..]` in PSI records, `field[..len-1]` in
//! meminfo), so a non-ASCII byte or a PSI line cut to "some" panics, and a
//! huge meminfo value overflows its ×1024 in debug builds. `guard` rejects
//! the panicking inputs up front (cheap: one ASCII scan); `first_bad_line`
//! runs only after procfs has failed, to name the line in the error.

use super::proc_error::LineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// /proc/stat: "name n n n…"
    Stat,
    /// /proc/meminfo: "Key: n [kB]"
    Meminfo,
    /// /proc/loadavg: "f f f running/total lastpid"
    Loadavg,
    /// /proc/pressure/{cpu,memory,io}: "some|full avg10=f avg60=f avg300=f total=n"
    Pressure,
}

/// Rejects input that would make procfs-core panic rather than return an error.
pub fn guard(shape: Shape, text: &str) -> Result<(), LineError> {
    if !text.is_ascii() {
        let line = text
            .lines()
            .position(|l| !l.is_ascii())
            .map_or(0, |i| i + 1);
        return Err(LineError::new(line, "non-ASCII bytes"));
    }
    if shape == Shape::Pressure {
        for (i, l) in text.lines().enumerate().take(2) {
            if (l.starts_with("some") || l.starts_with("full")) && l.len() < 6 {
                return Err(LineError::new(
                    i + 1,
                    format!("{l:?}: truncated PSI record"),
                ));
            }
        }
    }
    if shape == Shape::Meminfo {
        // Only values too large to be kB of any real machine; cheap to skip
        // when every line is short, which they always are.
        for (i, l) in text.lines().enumerate().filter(|(_, l)| l.len() > 40) {
            if let Some(e) = meminfo_line(i + 1, l) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The first line that does not look like the kernel prints it, or the
/// whole file (line 0) when every line looks right but something is missing.
pub fn first_bad_line(shape: Shape, text: &str, why: &str) -> LineError {
    let mut last = 0;
    for (i, l) in text.lines().enumerate() {
        let n = i + 1;
        last = n;
        let bad = match shape {
            Shape::Stat => stat_line(n, l),
            Shape::Meminfo => meminfo_line(n, l),
            Shape::Loadavg => (n == 1).then(|| loadavg_line(n, l)).flatten(),
            Shape::Pressure => pressure_line(n, l),
        };
        if let Some(e) = bad {
            return LineError::new(e.line, format!("{}; procfs: {why}", e.msg));
        }
    }
    if last == 0 {
        return LineError::new(1, format!("empty file; procfs: {why}"));
    }
    if !text.ends_with('\n') {
        return LineError::new(
            last,
            format!("no final newline: truncated read; procfs: {why}"),
        );
    }
    LineError::new(0, format!("procfs: {why}"))
}

fn stat_line(n: usize, l: &str) -> Option<LineError> {
    let mut it = l.split_whitespace();
    let name = it.next()?;
    let mut count = 0;
    for v in it {
        if v.parse::<u64>().is_err() {
            return Some(LineError::new(n, format!("{name}: {v:?} is not a count")));
        }
        count += 1;
    }
    (count == 0).then(|| LineError::new(n, format!("{name}: no values")))
}

fn meminfo_line(n: usize, l: &str) -> Option<LineError> {
    if l.is_empty() {
        return None;
    }
    let mut it = l.split_whitespace();
    let (Some(key), Some(v)) = (it.next(), it.next()) else {
        return Some(LineError::new(n, "expected 'Key: value [kB]'"));
    };
    if !key.ends_with(':') {
        return Some(LineError::new(n, format!("{key:?}: no ':' after the key")));
    }
    let unit = it.next();
    match (v.parse::<u64>(), unit) {
        (Err(_), _) => Some(LineError::new(n, format!("{key} {v:?} is not a number"))),
        (Ok(v), Some("kB")) if v > u64::MAX >> 10 => {
            Some(LineError::new(n, format!("{key} {v} kB overflows bytes")))
        }
        (Ok(_), Some("kB") | None) if it.next().is_none() => None,
        _ => Some(LineError::new(
            n,
            format!("{key}: unexpected unit or trailing text"),
        )),
    }
}

fn loadavg_line(n: usize, l: &str) -> Option<LineError> {
    let f: Vec<&str> = l.split_whitespace().collect();
    let ok = f.len() == 5
        && f[..3].iter().all(|v| v.parse::<f32>().is_ok())
        && f[3]
            .split_once('/')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
        && f[4].parse::<u32>().is_ok();
    (!ok).then(|| LineError::new(n, "expected 'load1 load5 load15 running/total lastpid'"))
}

fn pressure_line(n: usize, l: &str) -> Option<LineError> {
    let mut it = l.split_whitespace();
    let kind = it.next()?;
    if kind != "some" && kind != "full" {
        return Some(LineError::new(
            n,
            format!("{kind:?}: expected some or full"),
        ));
    }
    let mut keys = 0;
    for kv in it {
        let ok = match kv.split_once('=') {
            Some(("avg10" | "avg60" | "avg300", v)) => v.parse::<f32>().is_ok(),
            Some(("total", v)) => v.parse::<u64>().is_ok(),
            _ => false,
        };
        if !ok {
            return Some(LineError::new(n, format!("{kind}: bad field {kv:?}")));
        }
        keys += 1;
    }
    (keys != 4).then(|| LineError::new(n, format!("{kind}: {keys} fields, expected 4")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_files_pass() {
        for (shape, t) in [
            (
                Shape::Stat,
                include_str!("../../tests/fixtures/proc/host/stat"),
            ),
            (
                Shape::Meminfo,
                include_str!("../../tests/fixtures/proc/host/meminfo"),
            ),
            (
                Shape::Loadavg,
                include_str!("../../tests/fixtures/proc/host/loadavg"),
            ),
            (
                Shape::Pressure,
                include_str!("../../tests/fixtures/proc/host/pressure/cpu"),
            ),
            (
                Shape::Pressure,
                include_str!("../../tests/fixtures/proc/host/pressure/memory"),
            ),
            (
                Shape::Pressure,
                include_str!("../../tests/fixtures/proc/host/pressure/io"),
            ),
        ] {
            guard(shape, t).unwrap();
            assert_eq!(first_bad_line(shape, t, "x").line, 0, "{shape:?}");
        }
    }

    #[test]
    fn bad_lines_are_found() {
        let e = first_bad_line(
            Shape::Stat,
            include_str!("../../tests/fixtures/proc/malformed/stat-bad"),
            "x",
        );
        assert_eq!(e.line, 2, "{e}");
        let e = first_bad_line(
            Shape::Meminfo,
            include_str!("../../tests/fixtures/proc/malformed/meminfo-bad"),
            "x",
        );
        assert_eq!(e.line, 3, "{e}");
        let e = first_bad_line(
            Shape::Loadavg,
            include_str!("../../tests/fixtures/proc/malformed/loadavg-empty"),
            "x",
        );
        assert_eq!(e.line, 1, "{e}");
        let t = include_str!("../../tests/fixtures/proc/malformed/pressure-cpu-truncated");
        assert_eq!(guard(Shape::Pressure, t).unwrap_err().line, 1);
        assert_eq!(
            guard(Shape::Meminfo, "MemTotal:  1 kB\nMemFree: 2 kB\u{e9}\n")
                .unwrap_err()
                .line,
            2
        );
        let huge = format!(
            "MemTotal: {} kB                          \n",
            u64::MAX / 1000
        );
        assert_eq!(guard(Shape::Meminfo, &huge).unwrap_err().line, 1);
    }
}
