//! The three clocks a sample carries: wall (for humans and correlation with
//! logs), monotonic (for rates: never steps) and boottime (tells a reboot
//! from a clock step).

use nix::time::{clock_gettime, ClockId};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Instant {
    pub unix_ns: i64,
    pub mono_ns: u64,
    pub boot_ns: u64,
}

fn ns(id: ClockId) -> i64 {
    // clock_gettime on these clocks cannot fail on Linux with a valid id.
    match clock_gettime(id) {
        Ok(ts) => ts.tv_sec() * 1_000_000_000 + ts.tv_nsec(),
        Err(_) => 0,
    }
}

pub fn now() -> Instant {
    Instant {
        unix_ns: ns(ClockId::CLOCK_REALTIME),
        mono_ns: ns(ClockId::CLOCK_MONOTONIC) as u64,
        boot_ns: ns(ClockId::CLOCK_BOOTTIME) as u64,
    }
}

/// Formats a unix-ns timestamp as RFC 3339 UTC with milliseconds, by hand
/// (civil-from-days, Howard Hinnant's algorithm) to avoid a date crate for one
/// function.
pub fn format_rfc3339(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let ms = unix_ns.rem_euclid(1_000_000_000) / 1_000_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        // The seed incident: 2015-02-27 02:30 UTC.
        assert_eq!(
            format_rfc3339(1_425_004_200_123_000_000),
            "2015-02-27T02:30:00.123Z"
        );
        assert_eq!(
            format_rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn clocks_are_populated() {
        let t = now();
        assert!(t.unix_ns > 1_600_000_000_000_000_000);
        assert!(t.mono_ns > 0 && t.boot_ns >= t.mono_ns);
    }
}
