//! Time as plain data.
//!
//! The core never reads a clock: every call that can change state takes `now: Time`, and the
//! runtime converts its own monotonic clock (`Instant`) once per loop pass. That keeps the core
//! deterministic — a replay of the same inputs at the same `Time`s gives the same outputs — and
//! lets tests jump time forward instead of sleeping.

use core::time::Duration;

/// Nanoseconds since an epoch the runtime chooses (typically the moment it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// The epoch itself.
    pub const ZERO: Time = Time(0);

    /// `ms` milliseconds after the epoch (handy in tests and examples).
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1_000_000))
    }

    /// `self + d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }

    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Time(u64::MAX - 1).plus(Duration::from_secs(1)),
            Time(u64::MAX)
        );
        assert_eq!(
            Time::from_millis(1500).since(Time::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(Time::ZERO.since(Time(10)), Duration::ZERO);
    }
}
