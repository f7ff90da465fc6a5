//! Zero-copy bodies: payload that needs no look moves socket → pipe → socket in the runtime
//! (`splice(2)`) and the core only counts it.
//!
//! The core decides, per read, whether the next bytes of a connection may bypass it
//! ([`Core::splice_source`]): the connection's read buffer is empty, it is reading (no
//! backpressure), the body decoder says the next `k ≥ limits.splice_min` bytes are payload with
//! no framing among them (the rest of a Content-Length body or of a chunk, `opaque`), nothing
//! but earlier piped bytes is queued toward the peer (so the piped bytes stay at the front of
//! its queue), neither side speaks TLS, and a request body needs no copy kept for a re-send.
//! The runtime moves at most `max` bytes into its pipe toward the peer and reports them
//! ([`Input::Spliced`]): the decoder passes them (`BodyDecoder::pass`), and they join the
//! peer's queue as *piped* bytes ([`Buffers::piped`](crate::connection::Buffers)) — counted in
//! its length, so backpressure, send timeouts, half-closes and "flushed" mean what they mean on
//! the copying path. The runtime writes piped bytes first, with `splice(2)` from the pipe, and
//! reports them [`Input::Written`] like any others. Framing pieces the relay adds after them (a
//! chunk's CRLF, the next chunk-size line) queue behind them as usual.

use bytes::Bytes;

use super::client::Phase;
use super::exchange::Resp;
use super::relay::{Reframe, reframe};
use super::table::Role;
use super::upstream::UState;
use super::{Core, touch};
use crate::framing::OutBody;
use crate::{ConnId, Time};

/// The most a read takes while a response head comes next on a connection whose body may be
/// spliced ([`Core::read_cap`]): room for any usual head (and a small body with it) in one read.
pub const HEAD_READ: usize = 16 * 1024;

/// The same on a connection whose previous response had a body worth splicing (a
/// Content-Length of `splice_min` or more): room for a usual head and little else, so that
/// more of the next such body stays in the socket for `splice(2)`. Measured with 64 KiB
/// responses (A/B, 4 rounds, one binary with 4 KiB against one with 16 KiB): 1.07× the
/// requests/s at 0.93× the CPU per request with epoll, 1.24× at 0.83× with io_uring. Bodies of
/// 8–24 KiB then take two reads where 16 KiB took one (1–4 % more CPU in the same A/B), which is
/// why the smaller cap waits for a large body first.
pub const HEAD_READ_AFTER_LARGE: usize = 4 * 1024;

/// The cap for reading a response head on a connection whose previous response was large
/// (`after_large`) or not: [`HEAD_READ_AFTER_LARGE`] or [`HEAD_READ`].
pub(crate) fn head_read(after_large: bool) -> usize {
    if after_large {
        HEAD_READ_AFTER_LARGE
    } else {
        HEAD_READ
    }
}

/// Where the next bytes of a connection may go without entering the core
/// ([`Core::splice_source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceTo {
    /// The connection the bytes are for: the runtime's pipe toward it receives them.
    pub to: ConnId,
    /// At most this many bytes may be moved now.
    pub max: usize,
    /// Bytes are still queued toward `to` (not piped ones): write them first (a flush of
    /// `to`), then ask again — piped bytes may only follow them.
    pub flush_first: bool,
}

impl Core {
    /// Whether the runtime moves body bytes with `splice(2)`: only a runtime that does calls
    /// this (`upkeep-mio`); `limits.splice_min = 0` keeps it off anyway.
    pub fn enable_splice(&mut self, on: bool) {
        self.splice = on;
    }

    /// Whether the next bytes to read from `from` may bypass the core, and where to: see the
    /// module documentation. `None`: read them with [`Core::read_with`] as usual.
    pub fn splice_source(&self, from: ConnId) -> Option<SpliceTo> {
        let min = self.config.limits.splice_min;
        if !self.splice || min == 0 {
            return None;
        }
        let c = self.conns.get(from)?;
        if !c.buf.rbuf.is_empty() || c.buf.lent_at.is_some() || !c.buf.reading {
            return None;
        }
        let (to, opaque) = match &c.role {
            Role::Upstream(u) => {
                let cid = u.client?;
                let cl = self.conns.client(cid)?;
                let plain = self.plain(u.group, cid);
                if u.state != UState::Active || !plain || cl.ex.resp != Resp::Body {
                    return None;
                }
                response_mode(cl.ex.resp_out, cl.ex.resp_in_chunked)?;
                (cid, cl.ex.resp_decoder.opaque())
            }
            Role::Client(cl) => {
                let ex = &cl.ex;
                let u = ex.upstream?;
                let up = self.conns.upstream(u)?;
                let plain = self.plain(up.group, from);
                // A body kept for a re-send or buffered whole must be seen.
                if cl.phase != Phase::Exchange
                    || ex.resp == Resp::Tunnel
                    || ex.req_done
                    || ex.queued_at.is_some()
                    || ex.replayable
                    || ex.buffering
                    || up.state != UState::Active
                    || !plain
                {
                    return None;
                }
                let mut opaque = ex.req_decoder.opaque();
                // Never past the body limit: the byte over it is read, and answered 413.
                let max_body = self.config.limits.max_body;
                if max_body > 0 {
                    opaque = opaque.min(max_body.saturating_sub(ex.req_bytes));
                }
                (u, opaque)
            }
        };
        if opaque < min {
            return None;
        }
        let peer = self.conns.get(to)?;
        let room = self
            .config
            .limits
            .write_high_water
            .saturating_sub(peer.buf.wq_len);
        if room == 0 {
            return None;
        }
        Some(SpliceTo {
            to,
            max: usize::try_from(opaque).unwrap_or(usize::MAX).min(room),
            flush_first: !peer.buf.wq.is_empty(),
        })
    }

    /// How many bytes the next read of `from` should take at most, when it must stop short
    /// of what the socket holds: a plain upstream connection whose response head comes next,
    /// while splicing is on, reads one [`HEAD_READ`] — a large body behind the head then stays
    /// in the socket, where [`Core::splice_source`] can move it without a copy. A read that
    /// took the whole response (as a 64 KiB read does with a 64 KiB body on loopback) would
    /// leave nothing to splice. `None`: no cap (read as much as the buffer holds).
    pub fn read_cap(&self, from: ConnId) -> Option<usize> {
        if !self.splice || self.config.limits.splice_min == 0 {
            return None;
        }
        let c = self.conns.get(from)?;
        let Role::Upstream(u) = &c.role else {
            return None;
        };
        let cid = u.client?;
        let cl = self.conns.client(cid)?;
        (self.plain(u.group, cid) && cl.ex.resp == Resp::Waiting).then_some(head_read(u.large_body))
    }

    /// The cap for a read that is armed now and completes later (io_uring's receive, armed
    /// while a connection waits): [`Core::read_cap`], and the same cap for an idle pooled
    /// upstream connection of a plain group too — its next bytes, once it is reused, are a
    /// response head, and the receive armed in the pool is the one that takes it.
    pub fn armed_read_cap(&self, from: ConnId) -> Option<usize> {
        self.read_cap(from).or_else(|| {
            let splicing = self.splice && self.config.limits.splice_min > 0;
            let u = self.conns.upstream(from)?;
            let plain = self.config.upstreams[u.group as usize].tls.is_none();
            (splicing && plain && self.pool.contains(from)).then_some(head_read(u.large_body))
        })
    }

    /// Whether the bytes between client `client` and upstream group `group` are plain on
    /// both sides (TLS needs them in user space: no splice).
    fn plain(&self, group: u32, client: ConnId) -> bool {
        self.config.upstreams[group as usize].tls.is_none()
            && self.conns.client(client).is_some_and(|cl| {
                self.config
                    .listeners
                    .get(cl.listener.0 as usize)
                    .is_some_and(|l| l.tls.is_none())
            })
    }

    /// `n` bytes of `from` went into the runtime's pipe toward its peer ([`Input::Spliced`]).
    pub(super) fn on_spliced(&mut self, now: Time, from: ConnId, n: usize) {
        let hint = self.splice_source(from);
        if hint.is_none_or(|h| h.flush_first || n > h.max) {
            // Bytes the core did not allow: their place in the stream is unknown.
            debug_assert!(false, "{n} bytes spliced from {from:?} against {hint:?}");
            return self.on_error(now, from);
        }
        self.stats.spliced_bytes += n as u64;
        let Some(c) = self.conns.get_mut(from) else {
            return;
        };
        match &mut c.role {
            Role::Upstream(u) => {
                u.read_progress = now;
                u.responded = true;
                // A splice stops at the body's end whatever follows it in the socket.
                u.unread = true;
                touch(&mut self.touched, from);
                let Some(cid) = u.client else { return };
                let Some(Role::Client(cl)) = self.conns.get_mut(cid).map(|c| &mut c.role) else {
                    return;
                };
                let step = cl.ex.resp_decoder.pass(n as u64);
                let Some(mode) = response_mode(cl.ex.resp_out, cl.ex.resp_in_chunked) else {
                    return;
                };
                self.push_piped(now, cid, n, mode, &step);
                if step.done {
                    self.finish_response(now, from, cid);
                }
            }
            Role::Client(cl) => {
                cl.body_progress = now;
                let ex = &mut cl.ex;
                ex.req_bytes += n as u64;
                let step = ex.req_decoder.pass(n as u64);
                if step.done {
                    ex.req_done = true;
                }
                let mode = if ex.req_chunked {
                    Reframe::Chunks
                } else {
                    Reframe::Raw
                };
                let Some(u) = ex.upstream else { return };
                touch(&mut self.touched, from);
                self.push_piped(now, u, n, mode, &step);
                if step.done {
                    self.request_maybe_sent(now, u);
                }
            }
        }
    }

    /// Queues `n` piped payload bytes for `to`, then what the relay adds after them.
    fn push_piped(
        &mut self,
        now: Time,
        to: ConnId,
        n: usize,
        mode: Reframe,
        step: &crate::framing::Step,
    ) {
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        if let Role::Client(cl) = &mut c.role {
            cl.ex.bytes_sent += n as u64;
        }
        c.buf.push_piped(now, n);
        // After passed payload: a chunk's CRLF (the size line came before it, the last chunk
        // is only ever after framing the relay reads).
        let after = reframe(mode, step, Bytes::new(), &mut c.buf);
        touch(&mut self.touched, to);
        self.signal_write(to);
        for piece in after {
            self.push(now, to, piece);
        }
    }

    /// The runtime's pipe toward `to` took no more bytes (a splice into it stopped with bytes
    /// still inside: the pipe may be full — `EAGAIN` does not say whether it was the pipe or
    /// the socket). Its peer is held back as at `write_high_water` until some piped bytes are
    /// written: not read, and so not under a read or body deadline. Without this a client
    /// pausing for less than its send timeout left the upstream "reading" with nobody reading
    /// it, and its read timeout cut the response and blamed the server (the review's
    /// reproduction in `runtime-mio/tests/splice.rs`).
    pub fn pipe_full(&mut self, now: Time, to: ConnId) {
        if self.piped(to) > 0 {
            self.hold_peer(now, to);
        }
    }

    /// The runtime waits for what is queued toward `to` to be written before it splices toward
    /// it ([`SpliceTo::flush_first`]), because its writes complete later (io_uring: a send is
    /// in flight). `to`'s peer is held back as by [`Core::pipe_full`] — not read, and so under
    /// no read or body deadline — until some of `to`'s queue is written; then it is asked for
    /// again (`Output::Interest`). Without this the peer counted as read while nobody read it,
    /// and a slow client let the upstream's read timeout cut the response (the review's
    /// reproduction: a chunked response to a pausing client, on io_uring).
    pub fn wait_for_flush(&mut self, now: Time, to: ConnId) {
        if self.pending_len(to) > 0 {
            self.hold_peer(now, to);
        }
    }

    /// Holds the peer of `to` back until some of `to`'s queue is written (`peer_held`).
    fn hold_peer(&mut self, now: Time, to: ConnId) {
        let Some(c) = self.conns.get_mut(to) else {
            return;
        };
        c.buf.peer_held = true;
        if let Some(p) = c.peer() {
            touch(&mut self.touched, p);
        }
        self.sync(now);
    }

    /// Bytes queued for `conn` that sit in the runtime's pipe and go out first.
    pub fn piped(&self, conn: ConnId) -> usize {
        self.conns.get(conn).map_or(0, |c| c.buf.piped)
    }
}

/// How a response body is framed on the way out, when its payload may pass unseen: not a
/// close-delimited body made chunked (each read becomes a chunk, so the relay must see reads).
fn response_mode(out: OutBody, in_chunked: bool) -> Option<Reframe> {
    match (out, in_chunked) {
        (OutBody::Chunked, true) => Some(Reframe::Chunks),
        (OutBody::Chunked, false) => None,
        _ => Some(Reframe::Raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_read_table() {
        // (the previous response was large, the cap)
        for (after_large, cap) in [(false, HEAD_READ), (true, HEAD_READ_AFTER_LARGE)] {
            assert_eq!(head_read(after_large), cap, "after_large {after_large}");
        }
        // Room for a usual head either way; the defaults leave a 64 KiB body worth splicing.
        const { assert!(HEAD_READ_AFTER_LARGE >= 4096 && HEAD_READ_AFTER_LARGE < HEAD_READ) };
    }
}
