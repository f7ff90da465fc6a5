//! A warning that may repeat in a tight loop (every accept pause of every worker) is logged at
//! most once per interval, with a count of the repeats it held back: an operator sees the
//! condition and how often it struck, not a screenful every 100 ms.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning is logged at most.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// One throttled message: a `static` shared by every worker.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// A throttle that lets one message through per `every`.
    pub const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new(State {
                last: None,
                held_back: 0,
            }),
        }
    }

    /// Whether a message due `now` is logged: `Some(n)` with the number of messages held back
    /// since the last one logged, or `None` to hold this one back.
    pub fn pass(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                s.held_back += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.held_back))
            }
        }
    }

    /// Logs `message` as a warning unless throttled, noting how many were held back.
    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        match self.pass(Instant::now()) {
            Some(0) => log::warn!("{message}"),
            Some(n) => log::warn!("{message} ({n} more like it since the last)"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_interval_with_a_count_of_the_rest() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.pass(t0), Some(0));
        assert_eq!(t.pass(t0 + Duration::from_millis(100)), None);
        assert_eq!(t.pass(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.pass(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.pass(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.pass(t0 + Duration::from_secs(30)), Some(1));
    }
}
