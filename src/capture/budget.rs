//! The capture thread's CPU budget: fed the thread's own CPU time once a
//! second, it says when to shed the sampled share (keep the control plane
//! only) and when to take it back. Hysteresis both ways; the wait before
//! restoring doubles when shedding follows soon after a restore (capped),
//! so steady overload does not flap every few seconds.

#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub ms_per_s: f64,
    pub shed_after_s: u64,
    pub restore_after_s: u64,
    over_s: u64,
    under_s: u64,
    pub shedding: bool,
    restore_wait_s: u64,
    /// Seconds since the last restore (None before the first).
    since_restore_s: Option<u64>,
    /// Times it shed.
    pub shed_count: u64,
    /// Seconds spent shedding.
    pub shed_seconds: u64,
    /// Seconds over budget even with the control plane only.
    pub over_while_shed_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Keep,
    Shed,
    Restore,
}

const MAX_RESTORE_WAIT_S: u64 = 600;

impl Budget {
    pub fn new(ms_per_s: f64, shed_after_s: u64, restore_after_s: u64) -> Budget {
        Budget {
            ms_per_s,
            shed_after_s: shed_after_s.max(1),
            restore_after_s: restore_after_s.max(1),
            over_s: 0,
            under_s: 0,
            shedding: false,
            restore_wait_s: restore_after_s.max(1),
            since_restore_s: None,
            shed_count: 0,
            shed_seconds: 0,
            over_while_shed_s: 0,
        }
    }

    /// One second's CPU time of the capture thread, milliseconds.
    pub fn observe(&mut self, cpu_ms: f64) -> Step {
        if let Some(s) = self.since_restore_s.as_mut() {
            *s += 1;
        }
        if self.shedding {
            self.shed_seconds += 1;
            if cpu_ms > self.ms_per_s {
                self.over_while_shed_s += 1;
            }
            if cpu_ms < self.ms_per_s / 2.0 {
                self.under_s += 1;
            } else {
                self.under_s = 0;
            }
            if self.under_s >= self.restore_wait_s {
                self.shedding = false;
                self.under_s = 0;
                self.over_s = 0;
                self.since_restore_s = Some(0);
                return Step::Restore;
            }
            return Step::Keep;
        }
        if cpu_ms > self.ms_per_s {
            self.over_s += 1;
        } else {
            self.over_s = 0;
        }
        if self.over_s >= self.shed_after_s {
            self.shedding = true;
            self.over_s = 0;
            self.under_s = 0;
            self.shed_count += 1;
            // Overload again soon after coming back: wait longer next time.
            self.restore_wait_s = match self.since_restore_s {
                Some(s) if s < 2 * self.restore_wait_s => {
                    (self.restore_wait_s * 2).min(MAX_RESTORE_WAIT_S)
                }
                _ => self.restore_after_s,
            };
            return Step::Shed;
        }
        Step::Keep
    }

    /// Seconds under half the budget needed before the next restore.
    pub fn restore_wait_s(&self) -> u64 {
        self.restore_wait_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_after_consecutive_seconds_over_and_restores_after_quiet() {
        let mut b = Budget::new(20.0, 2, 3);
        assert_eq!(b.observe(25.0), Step::Keep);
        assert_eq!(b.observe(5.0), Step::Keep, "one second over is not enough");
        assert_eq!(b.observe(25.0), Step::Keep);
        assert_eq!(b.observe(25.0), Step::Shed);
        assert!(b.shedding);
        assert_eq!(b.observe(15.0), Step::Keep, "not under half the budget");
        assert_eq!(b.observe(5.0), Step::Keep);
        assert_eq!(b.observe(5.0), Step::Keep);
        assert_eq!(b.observe(5.0), Step::Restore);
        assert_eq!(b.shed_count, 1);
        assert_eq!(b.shed_seconds, 4);
    }

    #[test]
    fn shedding_soon_after_a_restore_doubles_the_wait() {
        let mut b = Budget::new(10.0, 1, 2);
        assert_eq!(b.observe(50.0), Step::Shed);
        b.observe(50.0);
        assert_eq!(b.over_while_shed_s, 1);
        b.observe(1.0);
        assert_eq!(b.observe(1.0), Step::Restore);
        assert_eq!(b.observe(50.0), Step::Shed);
        assert_eq!(b.restore_wait_s(), 4);
        for _ in 0..3 {
            assert_eq!(b.observe(1.0), Step::Keep);
        }
        assert_eq!(b.observe(1.0), Step::Restore);
    }
}
