//! Retry delays: exponential (initial · 2^(attempt-1), capped) with "equal
//! jitter" — half the delay fixed, half random — so a fleet whose network
//! comes back at once does not retry in lockstep, yet no retry comes
//! sooner than half the nominal delay. Pure: the random draw is a parameter.

use std::time::Duration;

/// Delay before retry number `failures` (1 = after the first failure);
/// `unit` is a random number in [0, 1).
pub fn delay(failures: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let nominal = initial.saturating_mul(1u32 << exp).min(max);
    let half = nominal / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// `delay` with a fresh random draw.
pub fn next(failures: u32, initial: Duration, max: Duration) -> Duration {
    delay(failures, initial, max, fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let s = Duration::from_secs;
        assert_eq!(delay(1, s(10), s(900), 0.0), s(5));
        assert_eq!(delay(1, s(10), s(900), 1.0), s(10));
        assert_eq!(delay(2, s(10), s(900), 1.0), s(20));
        assert_eq!(delay(4, s(10), s(900), 0.5), s(60));
        assert_eq!(delay(8, s(10), s(900), 1.0), s(900));
        assert_eq!(delay(1000, s(10), s(900), 0.0), s(450));
        for _ in 0..100 {
            let d = next(3, s(10), s(900));
            assert!(d >= s(20) && d <= s(40), "{d:?}");
        }
    }
}
