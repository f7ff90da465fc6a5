//! One process-wide monotonic epoch, so every worker (and every reload generation) maps
//! `Instant`s to the same [`Time`] scale: exchange durations and deadlines agree across threads.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use upkeep_core::Time;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// The current time on the core's scale.
pub(crate) fn now() -> Time {
    to_time(Instant::now())
}

/// `instant` on the core's scale (saturating at the epoch).
pub(crate) fn to_time(instant: Instant) -> Time {
    let nanos = instant.saturating_duration_since(epoch()).as_nanos();
    Time(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// How long from now until `deadline`, rounded up to a whole millisecond so a poll that wakes
/// "on time" does not wake a hair early and spin once more.
pub(crate) fn until(deadline: Time) -> Duration {
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
    }
}
