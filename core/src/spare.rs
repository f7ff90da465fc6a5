//! Spare buffers: the core's free list of read and scratch buffers.
//!
//! An idle connection — a keep-alive client between requests, an upstream connection waiting in
//! the pool — holds no bytes, yet its 16 KiB read buffer and 4 KiB scratch stayed allocated (and
//! partly resident) for as long as it stayed open: with 10,000 idle clients that was most of
//! the proxy's memory. Like nginx for its keep-alive connections, the core now gives an idle
//! connection's buffers back ([`Spares::shed`]) and lends it one again when its next bytes arrive
//! ([`Spares::lend`], called by the read path). Closing connections give theirs back too.
//!
//! The free list keeps what it is given; a sweep every [`SWEEP`] frees the buffers beyond
//! [`KEEP`] that stayed unused for a whole interval (the list's low-water mark since the last
//! sweep) — all of them, and the lists' own storage, after an interval in which nothing was
//! lent (an idle worker) — so the memory of thousands of idle connections goes back to the
//! allocator within about a second, while connections active at once — however many: 64
//! keep-alive clients going idle together in one pass and busy again in the next — take and
//! give back the same buffers:
//! the steady state still allocates nothing (`core/tests/alloc.rs`,
//! `core/tests/alloc_concurrent.rs`). Freeing beyond a fixed bound at once instead made every
//! request allocate once more connections than the bound went idle in one pass.

use core::time::Duration;

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

use crate::Time;
use crate::connection::{Buffers, READ_CHUNK};

/// Buffers of each kind the free list keeps while the worker is busy, however long they stay
/// unused; beyond that the allocator (and, through it, the system) gets the memory back at a
/// sweep. A sweep after an interval in which nothing was lent (an idle worker) frees them too.
pub(crate) const KEEP: usize = 8;

/// Spare read buffers [`Spares::lend`] looks at (the most recently given) for the one that fits.
const PROBE: usize = 8;

/// How often the free list is looked at: buffers unused for a whole interval go (beyond [`KEEP`]
/// while the worker is busy).
pub(crate) const SWEEP: Duration = Duration::from_millis(500);

/// The free lists. Buffers given back may still be shared with pieces of them queued on another
/// connection; they are reclaimed in place once those are written (`BytesMut::try_reclaim`).
#[derive(Debug, Default)]
pub(crate) struct Spares {
    read: Vec<BytesMut>,
    scratch: Vec<BytesMut>,
    /// Write queues' storage. Small, but an idle connection that kept its own pinned the
    /// allocator's free space around it: between the 16 KiB buffers freed after a burst, one
    /// live queue per pooled connection left ~3.5 KiB of each free chunk resident that
    /// `malloc_trim` cannot return (its page edges) — 6.39 KiB per idle pooled connection,
    /// 2.47 KiB once the queues came here too (`benches/load/run.sh --memory`).
    queues: Vec<VecDeque<Bytes>>,
    /// The fewest buffers of each kind the lists held since the last sweep: that many were
    /// not needed during the interval.
    low: (usize, usize, usize),
    /// The next sweep, while the lists hold anything to free.
    due: Option<Time>,
    /// Whether anything was lent since the last sweep: if not, the worker is idle and the
    /// sweep frees even the [`KEEP`] floor (RSS after 2,000 pooled connections closed: +10.8 %
    /// of the start with the floor kept, +8.3 % without; `benches/load/run.sh --memory`).
    lent: bool,
    /// Bytes the sweeps freed since [`Spares::take_released`] last asked: the runtime returns
    /// them to the system (`malloc_trim`) once they add up.
    released: usize,
}

impl Spares {
    /// Takes back the buffers of a connection that holds no bytes (nothing read and unconsumed,
    /// nothing queued, no read buffer lent out); returns whether it did. Buffers beyond [`KEEP`]
    /// are freed by a later [`Spares::sweep`] if they stay unused.
    pub fn shed(&mut self, buf: &mut Buffers) -> bool {
        if !buf.rbuf.is_empty() || !buf.is_flushed() || buf.lent_at.is_some() {
            return false;
        }
        if !buf.scratch.is_empty() {
            // Written and not yet frozen: cannot happen between calls, but never lose it.
            return false;
        }
        give(&mut self.read, &mut buf.rbuf);
        give(&mut self.scratch, &mut buf.scratch);
        if buf.wq.capacity() > 0 {
            self.queues.push(std::mem::take(&mut buf.wq));
        }
        true
    }

    /// Gives `buf` a spare write queue if it has none, before bytes are queued on it (so a
    /// connection back from idleness queues without allocating).
    pub fn lend_queue(&mut self, buf: &mut Buffers) {
        if buf.wq.capacity() == 0
            && let Some(q) = self.queues.pop()
        {
            buf.wq = q;
            self.low.2 = self.low.2.min(self.queues.len());
            self.lent = true;
        }
    }

    /// Gives `buf` the buffers it shed, before bytes are read into it: among the [`PROBE`] spare
    /// read buffers given back last, the smallest that can offer `want` bytes of room without
    /// allocating (else the most recent spare, or nothing: `Buffers::reserve_read` allocates or
    /// grows then), and a scratch.
    pub fn lend(&mut self, buf: &mut Buffers, want: usize) {
        if buf.rbuf.capacity() == 0 {
            // The smallest that fits among the last PROBE given: a connection that reads big
            // bodies mostly finds its big buffer again, so its read need not grow (reallocate)
            // a small one. Bounded, and stopping at the first ordinary-sized fit: with 500
            // keep-alive clients a scan of the whole list was 5 % of the proxy's CPU (perf,
            // wrk -c500); a big buffer deeper in the list is missed (the read grows a small one).
            let want = want.max(READ_CHUNK);
            let mut fit: Option<(usize, usize)> = None;
            for i in (0..self.read.len()).rev().take(PROBE) {
                let b = &mut self.read[i];
                if b.try_reclaim(want) && fit.is_none_or(|(cap, _)| b.capacity() < cap) {
                    fit = Some((b.capacity(), i));
                    if b.capacity() < 2 * want {
                        break;
                    }
                }
            }
            let fit = fit.map(|(_, i)| i);
            if let Some(b) = fit
                .map(|i| self.read.swap_remove(i))
                .or_else(|| self.read.pop())
            {
                buf.rbuf = b;
                self.lent = true;
            }
        }
        if buf.scratch.capacity() == 0
            && let Some(b) = self.scratch.pop()
        {
            buf.scratch = b;
            self.lent = true;
        }
        self.low = (
            self.low.0.min(self.read.len()),
            self.low.1.min(self.scratch.len()),
            self.low.2,
        );
    }

    /// Schedules a sweep [`SWEEP`] after `now` if the lists hold anything and none is due (a
    /// busy worker's sweeps keep [`KEEP`] of each; an idle one's free the rest, then stop).
    pub fn schedule(&mut self, now: Time) {
        let any = !(self.read.is_empty() && self.scratch.is_empty() && self.queues.is_empty());
        if self.due.is_none() && any {
            self.due = Some(now.plus(SWEEP));
        }
    }

    /// When the next sweep is due, if any.
    pub fn due(&self) -> Option<Time> {
        self.due
    }

    /// Frees the buffers no connection needed since the last sweep — beyond [`KEEP`] if any was
    /// lent in the interval, else all of them and the emptied lists' storage — if the sweep is
    /// due at `now`.
    pub fn sweep(&mut self, now: Time) {
        if self.due.is_none_or(|d| d > now) {
            return;
        }
        self.due = None;
        let keep = if std::mem::take(&mut self.lent) {
            KEEP
        } else {
            0
        };
        for (list, low) in [
            (&mut self.read, self.low.0),
            (&mut self.scratch, self.low.1),
        ] {
            let n = surplus(list.len(), low, keep);
            self.released += list.drain(..n).map(|b| b.capacity()).sum::<usize>();
        }
        let n = surplus(self.queues.len(), self.low.2, keep);
        self.released += (self.queues.drain(..n))
            .map(|q| q.capacity() * size_of::<Bytes>())
            .sum::<usize>();
        // An idle sweep's emptied lists give their own storage (sized by the peak) back too.
        // Only an idle one's: a busy worker's lists are empty whenever every spare is lent out
        // (all requests in flight), and would allocate it again at the next give-back.
        if keep == 0 {
            release_if_empty(&mut self.read);
            release_if_empty(&mut self.scratch);
            release_if_empty(&mut self.queues);
        }
        self.low = (self.read.len(), self.scratch.len(), self.queues.len());
        self.schedule(now);
    }

    /// Bytes of buffer storage the sweeps freed since the last call.
    pub fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }

    /// Buffers held (read, scratch): for tests and the simulation's bound.
    #[cfg(any(test, feature = "sim"))]
    pub fn held(&self) -> (usize, usize) {
        (self.read.len(), self.scratch.len())
    }

    /// Write queues held.
    #[cfg(test)]
    fn queues_held(&self) -> usize {
        self.queues.len()
    }
}

/// How many of a list of `len` to free at a sweep: beyond `keep`, at most the `low` that went
/// unused since the last sweep. The oldest go (lending takes from the end).
fn surplus(len: usize, low: usize, keep: usize) -> usize {
    low.min(len.saturating_sub(keep))
}

/// Frees the storage of an empty list.
fn release_if_empty<T>(list: &mut Vec<T>) {
    if list.is_empty() {
        *list = Vec::new();
    }
}

/// Moves `b` into `list`, leaving an unallocated buffer.
fn give(list: &mut Vec<BytesMut>, b: &mut BytesMut) {
    let b = std::mem::take(b);
    // A buffer read full and split off entirely offers no room now (`capacity() == 0`) yet
    // owns its storage, reclaimed once the pieces queued elsewhere are written: keep it too.
    // Only a buffer that never allocated points where an empty `BytesMut` does (dangling).
    let allocated = b.capacity() > 0 || b.as_ptr() != BytesMut::new().as_ptr();
    if allocated {
        list.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Time;
    use bytes::Bytes;

    #[test]
    fn idle_buffers_go_back_and_return_on_the_next_read() {
        let mut spares = Spares::default();
        let mut b = Buffers::new(Time::ZERO);
        b.receive(b"GET / HTTP/1.1\r\n\r\n");
        b.scratch(10).extend_from_slice(b"head");
        let head = b.take_scratch();
        // Bytes still unconsumed or queued: kept.
        assert!(!spares.shed(&mut b));
        b.rbuf.clear();
        b.push(Time::ZERO, head);
        assert!(!spares.shed(&mut b));
        b.advance(Time::ZERO, 4);
        assert!(spares.shed(&mut b));
        assert_eq!((b.rbuf.capacity(), b.scratch.capacity()), (0, 0));
        assert_eq!(b.wq.capacity(), 0, "the queue's storage went back too");
        assert_eq!((spares.held(), spares.queues_held()), ((1, 1), 1));
        spares.lend(&mut b, 1024);
        spares.lend_queue(&mut b);
        assert!(b.rbuf.capacity() >= READ_CHUNK);
        assert!(b.scratch.capacity() > 0);
        assert!(b.wq.capacity() > 0);
        assert_eq!((spares.held(), spares.queues_held()), ((0, 0), 0));
    }

    #[test]
    fn lending_looks_at_the_most_recent_spares_only() {
        let mut spares = Spares::default();
        let mut big = Buffers::new(Time::ZERO);
        big.reserve_read(64 * 1024);
        assert!(spares.shed(&mut big));
        for _ in 0..PROBE {
            let mut c = Buffers::new(Time::ZERO);
            c.reserve_read(1);
            assert!(spares.shed(&mut c));
        }
        // The big one is beyond the probe: the most recent is lent (the read grows it).
        let mut b = Buffers::new(Time::ZERO);
        spares.lend(&mut b, 64 * 1024);
        assert!(b.rbuf.capacity() >= READ_CHUNK && b.rbuf.capacity() < 64 * 1024);
        // One fewer in front of it: found.
        let mut b = Buffers::new(Time::ZERO);
        spares.lend(&mut b, 64 * 1024);
        assert!(b.rbuf.capacity() >= 64 * 1024);
    }

    #[test]
    fn a_buffer_with_room_is_preferred_and_the_list_is_bounded() {
        let mut spares = Spares::default();
        let mut big = Buffers::new(Time::ZERO);
        big.reserve_read(64 * 1024);
        let mut small = Buffers::new(Time::ZERO);
        small.reserve_read(1);
        assert!(spares.shed(&mut big));
        assert!(spares.shed(&mut small));
        let mut b = Buffers::new(Time::ZERO);
        spares.lend(&mut b, 64 * 1024);
        assert!(
            b.rbuf.capacity() >= 64 * 1024,
            "the big one, not the last given"
        );
        for _ in 0..KEEP + 5 {
            let mut c = Buffers::new(Time::ZERO);
            c.reserve_read(1);
            spares.shed(&mut c);
        }
        // The surplus goes once it stayed unused for a whole interval: the first sweep sees
        // the list was short during its interval, the second frees what nobody took since.
        let start = Time::ZERO;
        let n = spares.held().0;
        assert!(n > KEEP);
        spares.schedule(start);
        assert_eq!(spares.due(), Some(start.plus(SWEEP)));
        spares.sweep(start.plus(SWEEP / 2));
        assert_eq!(spares.held().0, n, "not due yet");
        spares.sweep(start.plus(SWEEP));
        assert_eq!(spares.held().0, n, "the list was short during the interval");
        // A busy worker (something lent and given back during the interval) keeps KEEP.
        let mut c = Buffers::new(Time::ZERO);
        spares.lend(&mut c, 1);
        assert!(spares.shed(&mut c));
        spares.sweep(start.plus(SWEEP * 2));
        assert_eq!(spares.held().0, KEEP);
        assert!(spares.take_released() >= (n - KEEP) * READ_CHUNK);
        // An idle one (nothing lent for a whole interval) frees the rest, then stops sweeping.
        assert_eq!(spares.due(), Some(start.plus(SWEEP * 3)));
        spares.sweep(start.plus(SWEEP * 3));
        assert_eq!(spares.held(), (0, 0));
        assert!(spares.take_released() >= KEEP * READ_CHUNK);
        assert_eq!(spares.due(), None, "nothing left: no sweep");
        // A shared spare is reclaimed in place once the piece of it is dropped.
        let mut d = Buffers::new(Time::ZERO);
        d.reserve_read(1);
        d.rbuf.extend_from_slice(b"body");
        let piece: Bytes = d.rbuf.split().freeze();
        assert!(spares.shed(&mut d));
        drop(piece);
        let mut e = Buffers::new(Time::ZERO);
        spares.lend(&mut e, READ_CHUNK);
        assert!(e.rbuf.capacity() >= READ_CHUNK);
    }
}
