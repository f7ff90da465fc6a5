//! Giving freed memory back to the system after connections close.
//!
//! glibc's malloc keeps freed heap memory resident: after 10,000 client connections came and
//! went the proxy's RSS stayed at its peak (96 MiB, `benches/load/memory.sh`), because their
//! buffers and table entries were freed into the middle of the heap, where glibc only returns
//! pages on `malloc_trim`. A worker counts the connections it closes ([`Trim::closed`]) and,
//! once [`TRIM_AFTER`] have closed — or the core freed [`TRIM_AFTER_BYTES`] of idle buffers
//! ([`Trim::released`]) — and at most once per [`TRIM_EVERY`], calls [`trim`]. Its
//! cost (a walk over the free chunks) is paid only after such a burst, never per request.
//!
//! Tried instead and measured: mimalloc as the global allocator kept the RSS too (and doubled
//! the start RSS).

use std::time::{Duration, Instant};

/// Closed connections after which freed memory is worth returning.
pub const TRIM_AFTER: usize = 256;
/// Bytes of buffers the core freed (`Core::take_released`) after which a trim is worth it too:
/// glibc's own threshold for trimming the top of its heap (`M_TRIM_THRESHOLD`).
pub const TRIM_AFTER_BYTES: usize = 128 * 1024;

/// The shortest time between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);

/// When a worker trims: see the module documentation.
#[derive(Debug)]
pub struct Trim {
    closed: usize,
    released: usize,
    last: Option<Instant>,
}

impl Default for Trim {
    fn default() -> Trim {
        Trim::new()
    }
}

impl Trim {
    /// Nothing closed yet.
    pub fn new() -> Trim {
        Trim {
            closed: 0,
            released: 0,
            last: None,
        }
    }

    /// One more connection closed.
    pub fn closed(&mut self) {
        self.closed += 1;
    }

    /// The core freed `bytes` of buffers (`Core::take_released`, after each pass of the loop).
    pub fn released(&mut self, bytes: usize) {
        self.released += bytes;
    }

    /// Whether enough connections closed (or buffers were freed) for a trim (cheap: check it
    /// before reading the clock for [`Trim::tick`]).
    pub fn pending(&self) -> bool {
        self.closed >= TRIM_AFTER || self.released >= TRIM_AFTER_BYTES
    }

    /// How long the worker may sleep before the next trim is due at `now` (`None`: nothing to
    /// trim), so that a burst of closes followed by silence is trimmed too.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        if !self.pending() {
            return None;
        }
        Some(self.last.map_or(Duration::ZERO, |t| {
            (t + TRIM_EVERY).saturating_duration_since(now)
        }))
    }

    /// Trims if due at `now`; returns whether it did.
    pub fn tick(&mut self, now: Instant) -> bool {
        if self.due_in(now) != Some(Duration::ZERO) {
            return false;
        }
        self.closed = 0;
        self.released = 0;
        self.last = Some(now);
        trim();
        true
    }
}

/// Returns the free pages of the allocator's heaps to the system (glibc `malloc_trim(0)`: every
/// arena, free pages in the middle of a heap included). A no-op elsewhere.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only works on the allocator's own free lists
    // under its locks; any thread may call it at any time. Measured reason for it:
    // docs/benchmarks.md (RSS after 9,900 clients closed: 96 MiB without, see there with).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_burst_at_most_once_per_interval() {
        let mut t = Trim::new();
        let start = Instant::now();
        assert!(t.due_in(start).is_none());
        for _ in 0..TRIM_AFTER - 1 {
            t.closed();
        }
        assert!(!t.tick(start), "not enough closes yet");
        t.closed();
        assert_eq!(t.due_in(start), Some(Duration::ZERO));
        assert!(t.tick(start));
        assert!(t.due_in(start).is_none());
        for _ in 0..TRIM_AFTER {
            t.closed();
        }
        assert_eq!(t.due_in(start), Some(TRIM_EVERY));
        assert!(!t.tick(start + TRIM_EVERY / 2), "too soon after the last");
        assert!(t.tick(start + TRIM_EVERY));
        // Freed buffers count too: an idle worker's free list emptied after the last close.
        t.released(TRIM_AFTER_BYTES - 1);
        assert!(!t.pending());
        t.released(1);
        assert_eq!(t.due_in(start + TRIM_EVERY * 2), Some(Duration::ZERO));
        assert!(t.tick(start + TRIM_EVERY * 2));
        assert!(!t.pending());
    }
}
