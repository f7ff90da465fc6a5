//! The mapping between the process's monotonic clock and the core's [`Time`].
//!
//! Every worker and the client share one epoch (the first time anyone asks), so a `Time` means
//! the same instant everywhere and converting a deadline back to an `Instant` for
//! [`async_io::Timer`] is exact.

use std::sync::OnceLock;
use std::time::{Duration, Instant};
use upkeep_core::Time;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// The current time as the core sees it.
pub(crate) fn now() -> Time {
    Time(u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// The `Instant` of a core deadline.
pub(crate) fn instant_of(t: Time) -> Instant {
    epoch() + Duration::from_nanos(t.0)
}
