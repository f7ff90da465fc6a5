//! Bounded waiting: for a count that settles asynchronously, and for a call that might hang
//! (a join, a drain). A test waits generously (a busy 2-core machine) but never forever.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often [`eventually`] checks its condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds or `within` passes; returns whether it held.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= within {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `f` on a thread and waits for its result at most `limit`; panics naming `what` when it
/// takes longer (the thread is left behind: the test fails instead of hanging).
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}
