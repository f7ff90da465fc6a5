//! The board: the live workers and the summed counters of the workers that have exited, under
//! one lock, so a metrics scrape counts every worker exactly once — even a worker that exits
//! while the scrape is under way (see [`Board::retire`]). Taken only by the admin listener, by
//! the proxy handle and by a worker on its way out, never on the request path.
//!
//! A runtime reaches its workers its own way (a command channel and a waker, an async channel);
//! the board only needs to ask one for a snapshot, through [`Reporter`].

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::metrics::Snapshot;

/// How long a scrape waits for one worker's snapshot.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// A live worker as the board sees it.
pub trait Reporter: Clone {
    /// Process-unique worker id.
    fn id(&self) -> u64;

    /// Asks the worker to send a snapshot of its counters on `reply`; false if it has exited.
    fn ask_snapshot(&self, reply: Sender<Snapshot>) -> bool;
}

/// Live workers and the retired totals.
#[derive(Debug)]
pub struct Board<R> {
    inner: Mutex<Inner<R>>,
}

#[derive(Debug)]
struct Inner<R> {
    live: Vec<R>,
    retired: Snapshot,
}

impl<R> Default for Board<R> {
    fn default() -> Self {
        Board {
            inner: Mutex::new(Inner {
                live: Vec::new(),
                retired: Snapshot::default(),
            }),
        }
    }
}

impl<R: Reporter> Board<R> {
    fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        // A worker that panicked holding the lock left consistent data (each update is one
        // statement); metrics must keep working.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a new worker on the board (before it can serve, so no exchange goes uncounted).
    pub fn join(&self, worker: R) {
        self.lock().live.push(worker);
    }

    /// The live workers.
    pub fn live(&self) -> Vec<R> {
        self.lock().live.clone()
    }

    /// Takes worker `id` off the board, its final counters (`last`, gauges cleared) joining the
    /// retired totals in the same step. The worker then answers the snapshot requests still in
    /// its channel with `last` too: a scrape that asked it before this step does not also find
    /// `last` in the retired totals, because it read those when it asked.
    pub fn retire(&self, id: u64, last: &Snapshot) {
        let mut inner = self.lock();
        inner.live.retain(|w| w.id() != id);
        inner.retired.add(last);
    }

    /// Every live worker's snapshot summed with the retired totals.
    pub fn collect(&self) -> Snapshot {
        let (replies, mut total) = {
            let inner = self.lock();
            (ask_all(&inner.live), inner.retired.clone())
        };
        for s in receive(replies) {
            total.add(&s);
        }
        total
    }

    /// Each live worker's own snapshot (for tests and diagnostics); [`Board::collect`] is their
    /// sum plus the retired totals.
    pub fn each(&self) -> Vec<Snapshot> {
        let live = self.live();
        receive(ask_all(&live)).collect()
    }
}

/// Asks every worker at once, so a scrape waits for the slowest worker, not for their sum.
fn ask_all<R: Reporter>(workers: &[R]) -> Vec<Receiver<Snapshot>> {
    let mut replies = Vec::with_capacity(workers.len());
    for w in workers {
        let (tx, rx) = mpsc::channel();
        if w.ask_snapshot(tx) {
            replies.push(rx);
        }
    }
    replies
}

fn receive(replies: Vec<Receiver<Snapshot>>) -> impl Iterator<Item = Snapshot> {
    replies
        .into_iter()
        .filter_map(|rx| rx.recv_timeout(SNAPSHOT_WAIT).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that answers from another thread with a fixed count.
    #[derive(Clone)]
    struct Fake {
        id: u64,
        accepted: u64,
    }

    impl Reporter for Fake {
        fn id(&self) -> u64 {
            self.id
        }
        fn ask_snapshot(&self, reply: Sender<Snapshot>) -> bool {
            let accepted = self.accepted;
            std::thread::spawn(move || {
                let _ = reply.send(Snapshot {
                    accepted,
                    ..Snapshot::default()
                });
            });
            true
        }
    }

    #[test]
    fn live_and_retired_workers_are_each_counted_once() {
        let board = Board::default();
        board.join(Fake { id: 1, accepted: 3 });
        board.join(Fake { id: 2, accepted: 5 });
        assert_eq!(board.collect().accepted, 8);
        assert_eq!(board.each().len(), 2);
        board.retire(
            1,
            &Snapshot {
                accepted: 4,
                ..Snapshot::default()
            },
        );
        assert_eq!(board.live().len(), 1);
        assert_eq!(board.collect().accepted, 9);
    }
}
