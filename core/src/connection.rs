//! Per-connection buffers shared by both sides of the proxy: what was read and not yet consumed,
//! and what is queued for the runtime to write.
//!
//! Body bytes move between connections without copying: a piece of one side's read buffer is
//! split off, frozen into a [`Bytes`] and queued on the other side. Heads and chunk-size lines are
//! written into a small per-connection scratch buffer and frozen the same way. Once the runtime
//! reports them written the pieces are dropped, the buffers become unique again and
//! `BytesMut::reserve` reclaims their space in place — so the steady state allocates nothing.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;

use crate::Time;

/// Initial read buffer size; also the minimum free space ensured before appending.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Scratch space ensured before writing a head.
pub(crate) const SCRATCH: usize = 4 * 1024;

/// What to do once the write queue is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterFlush {
    /// Keep the connection.
    Keep,
    /// Close it.
    Close,
    /// Close it abortively (RST): what was sent is incomplete and must not look complete.
    Reset,
    /// Half-close, then read and discard until the peer closes or the lingering timeout, so the
    /// peer receives our last response instead of a reset (RFC 9112 §9.6).
    Linger,
}

#[derive(Debug)]
pub(crate) struct Buffers {
    pub rbuf: BytesMut,
    pub wq: VecDeque<Bytes>,
    /// Bytes queued, [`Buffers::piped`] included.
    pub wq_len: usize,
    /// Bytes at the front of the queue that are not in `wq` but in the runtime's pipe toward
    /// this connection (spliced from its peer's socket, `Input::Spliced`): they go out before
    /// anything in `wq`, and a runtime writes them with `splice(2)`, never with `write_with`.
    pub piped: usize,
    pub scratch: BytesMut,
    /// The runtime has been told to write and has not yet drained the queue.
    pub write_signalled: bool,
    /// Read interest last told to the runtime.
    pub reading: bool,
    /// The peer sent EOF.
    pub read_closed: bool,
    /// That EOF waits until the bytes before it, held back by backpressure, are relayed.
    pub eof_deferred: bool,
    /// The runtime takes nothing more toward this connection until some of its queue is
    /// written: its pipe refused more bytes ([`Core::pipe_full`]), or it waits for the queue to
    /// be written before it splices ([`Core::wait_for_flush`]). Its peer is held back as at
    /// `write_high_water` until then.
    pub peer_held: bool,
    pub after_flush: AfterFlush,
    /// Last time a write made progress (or the queue became non-empty).
    pub write_progress: Time,
    /// `rbuf`'s length when `Core::read_buffer` lent it out, until `Input::Appended` reports.
    pub lent_at: Option<usize>,
}

impl Buffers {
    pub fn new(now: Time) -> Buffers {
        Buffers {
            rbuf: BytesMut::new(),
            wq: VecDeque::new(),
            wq_len: 0,
            piped: 0,
            scratch: BytesMut::new(),
            write_signalled: false,
            reading: true,
            read_closed: false,
            eof_deferred: false,
            peer_held: false,
            after_flush: AfterFlush::Keep,
            write_progress: now,
            lent_at: None,
        }
    }

    /// Appends received bytes to the read buffer.
    pub fn receive(&mut self, data: &[u8]) {
        self.reserve_read(data.len());
        self.rbuf.extend_from_slice(data);
    }

    /// Ensures `want` bytes of spare read capacity (at least a [`READ_CHUNK`] when growing, so
    /// small reads do not reallocate one by one; reclaimed in place once relayed pieces drop).
    pub fn reserve_read(&mut self, want: usize) {
        if self.rbuf.capacity() - self.rbuf.len() < want {
            self.rbuf.reserve(want.max(READ_CHUNK));
        }
    }

    /// Queues bytes for writing. Returns true if the queue was empty before.
    pub fn push(&mut self, now: Time, b: Bytes) -> bool {
        if b.is_empty() {
            return false;
        }
        let was_empty = self.is_flushed();
        if was_empty {
            self.write_progress = now;
        }
        self.wq_len += b.len();
        self.wq.push_back(b);
        was_empty
    }

    /// Queues `n` bytes the runtime moved into its pipe toward this connection. Only while
    /// nothing else is queued behind earlier piped bytes (`wq` empty), so the piped bytes stay
    /// at the front. Returns true if the queue was empty before.
    pub fn push_piped(&mut self, now: Time, n: usize) -> bool {
        debug_assert!(
            self.wq.is_empty(),
            "piped bytes go to the front of the queue"
        );
        let was_empty = self.is_flushed();
        if was_empty {
            self.write_progress = now;
        }
        self.piped += n;
        self.wq_len += n;
        was_empty
    }

    /// Nothing is queued: every byte pushed (piped ones included) was reported written.
    pub fn is_flushed(&self) -> bool {
        self.wq_len == 0
    }

    /// Forgets whatever is queued (the connection closes).
    pub fn drop_queue(&mut self) {
        self.wq.clear();
        self.wq_len = 0;
        self.piped = 0;
    }

    /// Scratch space for writing at least `need` bytes (a head, a chunk-size line); freeze what
    /// was written with [`Buffers::take_scratch`].
    ///
    /// Reserving only what is needed matters: pieces frozen earlier may still be queued, and a
    /// buffer that is not unique cannot be reclaimed in place — so asking for more than the
    /// remaining space would allocate a fresh buffer where the tail of the current one suffices.
    pub fn scratch(&mut self, need: usize) -> &mut BytesMut {
        if self.scratch.capacity() == 0 {
            self.scratch.reserve(SCRATCH.max(need));
        } else {
            self.scratch.reserve(need);
        }
        &mut self.scratch
    }

    /// Writes into the scratch with the read buffer at hand (a head rewritten from the bytes it
    /// was parsed from, at most about `need` bytes), and freezes the result.
    pub fn rewrite(&mut self, need: usize, f: impl FnOnce(&[u8], &mut BytesMut)) -> Bytes {
        self.scratch(need);
        f(&self.rbuf, &mut self.scratch);
        self.take_scratch()
    }

    /// What was written into the scratch since the last call.
    pub fn take_scratch(&mut self) -> Bytes {
        self.scratch.split().freeze()
    }

    /// Drops `n` written bytes from the front of the queue (piped ones first).
    pub fn advance(&mut self, now: Time, mut n: usize) {
        n = n.min(self.wq_len);
        if n > 0 {
            self.write_progress = now;
        }
        self.wq_len -= n;
        if n > 0 {
            self.peer_held = false;
        }
        let piped = n.min(self.piped);
        self.piped -= piped;
        n -= piped;
        while n > 0 {
            let front = self.wq.front_mut().expect("queue holds wq_len bytes");
            if front.len() <= n {
                n -= front.len();
                self.wq.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_across_pieces() {
        let mut b = Buffers::new(Time::ZERO);
        b.push(Time::ZERO, Bytes::from_static(b"abc"));
        b.push(Time::ZERO, Bytes::from_static(b"defg"));
        b.advance(Time(5), 4);
        assert_eq!(b.wq_len, 3);
        assert_eq!(&b.wq[0][..], b"efg");
        assert_eq!(b.write_progress, Time(5));
        b.advance(Time(6), 10);
        assert!(b.wq.is_empty());
        assert_eq!(b.wq_len, 0);
    }

    #[test]
    fn piped_bytes_go_out_before_the_pieces_queued_behind_them() {
        let mut b = Buffers::new(Time::ZERO);
        assert!(b.push_piped(Time::ZERO, 10));
        assert!(!b.push(Time::ZERO, Bytes::from_static(b"\r\n")));
        assert_eq!(b.wq_len, 12);
        b.advance(Time(1), 7);
        assert_eq!((b.piped, b.wq_len, &b.wq[0][..]), (3, 5, &b"\r\n"[..]));
        b.advance(Time(2), 4);
        assert_eq!((b.piped, b.wq_len, &b.wq[0][..]), (0, 1, &b"\n"[..]));
        b.advance(Time(3), 1);
        assert!(b.is_flushed());
    }
}
