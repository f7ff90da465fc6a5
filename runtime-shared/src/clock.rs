//! The clock: the process's monotonic `Instant`s on the core's [`Time`] scale.
//!
//! One process-wide epoch (the first time anyone asks), so every worker, every reload
//! generation and the fan-out client map instants to the same scale: exchange durations and
//! deadlines agree across threads, and converting a deadline back to an `Instant` (for a timer)
//! is exact.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use upkeep_core::Time;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// The current time on the core's scale.
pub fn now() -> Time {
    to_time(Instant::now())
}

/// `instant` on the core's scale (saturating at the epoch).
pub fn to_time(instant: Instant) -> Time {
    let nanos = instant.saturating_duration_since(epoch()).as_nanos();
    Time(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The `Instant` of a core time (a deadline from [`upkeep_core::Core::poll_timeout`]).
pub fn instant_of(t: Time) -> Instant {
    epoch() + Duration::from_nanos(t.0)
}

/// How long from now until `deadline`, rounded up to a whole millisecond so a poll that wakes
/// "on time" does not wake a hair early and spin once more.
pub fn until(deadline: Time) -> Duration {
    let left = deadline.since(now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_map_monotonically() {
        let _ = now(); // fixes the epoch before `a`
        let a = Instant::now();
        let b = a + Duration::from_millis(5);
        assert_eq!(to_time(b).since(to_time(a)), Duration::from_millis(5));
        assert_eq!(until(Time::ZERO), Duration::ZERO);
        assert_eq!(instant_of(to_time(b)), b);
    }
}
