//! Spare buffers: the core's free list of read and scratch buffers.
//!
//! An idle connection — a keep-alive client between requests, an upstream connection waiting in
//! the pool — holds no bytes, yet its 16 KiB read buffer and 4 KiB scratch stayed allocated (and
//! partly resident) for as long as it stayed open: with 10,000 idle clients that was most of
//! the proxy's memory. Like nginx for its keep-alive connections, the core now gives an idle
//! connection's buffers back ([`Spares::shed`]) and lends it one again when its next bytes arrive
//! ([`Spares::lend`], called by the read path). Closing connections give theirs back too.
//!
//! The free list keeps at most [`KEEP`] buffers of each kind and drops the rest, so the memory
//! of thousands of idle connections goes back to the allocator, while the connections that are
//! active at any moment take and give back the same few buffers: the steady state still
//! allocates nothing (`core/tests/alloc.rs`).

use bytes::BytesMut;

use crate::connection::{Buffers, READ_CHUNK};

/// Buffers of each kind the free list keeps: enough for the connections a worker has active at
/// once under ordinary load; beyond that the allocator (and, through it, the system) gets the
/// memory back.
pub(crate) const KEEP: usize = 32;

/// The free lists. Buffers given back may still be shared with pieces of them queued on another
/// connection; they are reclaimed in place once those are written (`BytesMut::try_reclaim`).
#[derive(Debug, Default)]
pub(crate) struct Spares {
    read: Vec<BytesMut>,
    scratch: Vec<BytesMut>,
}

impl Spares {
    /// Takes back the buffers of a connection that holds no bytes (nothing read and unconsumed,
    /// nothing queued, no read buffer lent out); returns whether it did. Buffers beyond [`KEEP`]
    /// are freed.
    pub fn shed(&mut self, buf: &mut Buffers) -> bool {
        if !buf.rbuf.is_empty() || !buf.wq.is_empty() || buf.lent_at.is_some() {
            return false;
        }
        if !buf.scratch.is_empty() {
            // Written and not yet frozen: cannot happen between calls, but never lose it.
            return false;
        }
        give(&mut self.read, &mut buf.rbuf);
        give(&mut self.scratch, &mut buf.scratch);
        true
    }

    /// Gives `buf` the buffers it shed, before bytes are read into it: the smallest spare read
    /// buffer that can offer `want` bytes of room without allocating (else the most recent
    /// spare, or nothing: `Buffers::reserve_read` allocates then), and a scratch.
    pub fn lend(&mut self, buf: &mut Buffers, want: usize) {
        if buf.rbuf.capacity() == 0 {
            // The smallest that fits: a connection that reads big bodies keeps finding its big
            // buffer, so no read has to grow (reallocate) a small one.
            let want = want.max(READ_CHUNK);
            let fit = (self.read.iter_mut().enumerate())
                .filter_map(|(i, b)| b.try_reclaim(want).then_some((b.capacity(), i)))
                .min()
                .map(|(_, i)| i);
            if let Some(b) = fit
                .map(|i| self.read.swap_remove(i))
                .or_else(|| self.read.pop())
            {
                buf.rbuf = b;
            }
        }
        if buf.scratch.capacity() == 0
            && let Some(b) = self.scratch.pop()
        {
            buf.scratch = b;
        }
    }

    /// Buffers held (read, scratch): for tests and the simulation's bound.
    #[cfg(any(test, feature = "sim"))]
    pub fn held(&self) -> (usize, usize) {
        (self.read.len(), self.scratch.len())
    }
}

/// Moves `b` into `list` (or frees it when the list is full), leaving an unallocated buffer.
fn give(list: &mut Vec<BytesMut>, b: &mut BytesMut) {
    let b = std::mem::take(b);
    // A buffer read full and split off entirely offers no room now (`capacity() == 0`) yet
    // owns its storage, reclaimed once the pieces queued elsewhere are written: keep it too.
    // Only a buffer that never allocated points where an empty `BytesMut` does (dangling).
    let allocated = b.capacity() > 0 || b.as_ptr() != BytesMut::new().as_ptr();
    if allocated && list.len() < KEEP {
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
        assert_eq!(spares.held(), (1, 1));
        spares.lend(&mut b, 1024);
        assert!(b.rbuf.capacity() >= READ_CHUNK);
        assert!(b.scratch.capacity() > 0);
        assert_eq!(spares.held(), (0, 0));
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
        assert_eq!(spares.held().0, KEEP);
        // A shared spare is reclaimed in place once the piece of it is dropped.
        let mut d = Buffers::new(Time::ZERO);
        spares.lend(&mut d, 1);
        d.rbuf.extend_from_slice(b"body");
        let piece: Bytes = d.rbuf.split().freeze();
        assert!(spares.shed(&mut d));
        drop(piece);
        let mut e = Buffers::new(Time::ZERO);
        spares.lend(&mut e, READ_CHUNK);
        assert!(e.rbuf.capacity() >= READ_CHUNK);
    }
}
