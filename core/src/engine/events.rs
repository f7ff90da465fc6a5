//! Network events on an open connection — readable, EOF, error, written — routed to the client
//! or upstream side.

use super::client::Phase;
use super::exchange::Resp;
use super::record::End;
use super::table::Role;
use super::upstream::UState;
use super::{Core, touch};
use crate::connection::AfterFlush;
use crate::pool::EvictReason;
use crate::rules::{Failure, NotReusable};
use crate::{ConnId, Time};

/// Whether `bytes` begin with a `408` status line (`HTTP/1.x 408`): a backend's idle-timeout
/// notice, whatever follows.
fn idle_timeout_408(bytes: &[u8]) -> bool {
    bytes.len() >= 12
        && (bytes.starts_with(b"HTTP/1.1 ") || bytes.starts_with(b"HTTP/1.0 "))
        && &bytes[9..12] == b"408"
}

impl Core {
    /// Bytes were appended to the read buffer of `id`.
    pub(super) fn on_readable(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        match &mut c.role {
            Role::Client(_) => self.drive_client(now, id),
            Role::Upstream(u) => {
                u.read_progress = now;
                match u.state {
                    UState::Idle => {
                        // An idle connection must have nothing to say (RFC 9112 §9.2): a stray
                        // 408 or garbage evicts it and never reaches a client.
                        self.evict(id, true, EvictReason::UnexpectedData);
                    }
                    UState::Connecting => {
                        // Data before we were told the connect finished: keep it buffered.
                    }
                    // Bytes behind a complete response: never the next request's answer.
                    UState::Settling => self.close_upstream(id, true, NotReusable::UnexpectedData),
                    // Before any byte of its request was written, a reused connection has
                    // nothing to answer: these bytes followed the previous response (or are
                    // the backend's idle-close notice). Not an answer to this request, which
                    // is re-sent as it is on a fresh connection (the keepalive race).
                    UState::Active if u.reused() && u.written == 0 && !u.responded => {
                        // The backend's idle-timeout 408 says it took nothing in: re-sent
                        // whatever the method.
                        let why = if idle_timeout_408(&c.buf.rbuf) {
                            Failure::Reused408
                        } else {
                            Failure::Stray
                        };
                        c.buf.rbuf.clear();
                        self.upstream_failed(now, id, why);
                    }
                    UState::Active | UState::Tunnel => {
                        u.responded = true;
                        self.drive_upstream(now, id)
                    }
                    UState::Check => self.drive_check(now, id),
                }
            }
        }
    }

    /// The peer of `id` sent EOF (or an EOF deferred by backpressure is due).
    pub(super) fn on_read_closed(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        match &c.role {
            Role::Client(cl) => match cl.phase {
                // Nothing more is owed (a partial head is abandoned by the client itself), but
                // a response still being written is delivered before the close.
                Phase::Idle | Phase::Head => {
                    self.close_client_after_flush(now, id, AfterFlush::Close)
                }
                Phase::Lingering => self.close(id, false),
                Phase::Closing => {}
                Phase::Exchange => {
                    if cl.ex.resp == Resp::Tunnel {
                        self.end_tunnel(id);
                    } else if cl.ex.queued_at.is_some() {
                        // The client left while its request waited for a slot: its place goes
                        // to the next at once, and the backend never sees the request (nginx
                        // too gives up on a client that closes while waiting: its 499). A
                        // half-closing client that still wanted the answer is rare, a slot of
                        // a one-request-at-a-time backend is precious.
                        self.close_client_after_flush(now, id, AfterFlush::Close);
                    } else if !cl.ex.req_done {
                        // The rest of the request may already be buffered (a client that
                        // half-closes after sending): relay it before deciding.
                        self.drive_client(now, id);
                        if self.defer_eof(id) {
                            return;
                        }
                        if let Some(cl) = self.conns.client(id)
                            && cl.phase == Phase::Exchange
                            && !cl.ex.req_done
                        {
                            // The request will never complete: abandon the exchange. Responses
                            // to earlier pipelined requests still queued go out first; a
                            // response to this one already under way is cut with a reset.
                            let how = if cl.ex.resp_started {
                                AfterFlush::Reset
                            } else {
                                AfterFlush::Close
                            };
                            self.record_end(now, id, End::ClientAborted);
                            self.release_upstream_of(id);
                            self.close_client_after_flush(now, id, how);
                        }
                    }
                    // Otherwise a half-close after a complete request: the response (and any
                    // complete pipelined requests already buffered) are still answered;
                    // `end_exchange` closes once nothing is left.
                }
            },
            Role::Upstream(u) => match u.state {
                UState::Idle => self.evict(id, false, EvictReason::PeerClosed),
                UState::Connecting => self.upstream_failed(now, id, Failure::ConnectFailed),
                UState::Tunnel => {
                    if let Some(cl) = u.client {
                        self.end_tunnel(cl);
                    }
                }
                UState::Active => self.upstream_eof(now, id),
                UState::Check => self.check_eof(now, id),
                UState::Settling => self.close_upstream(id, false, NotReusable::ServerClosed),
            },
        }
    }

    /// `id` failed (reset, broken pipe): it closes, and what it was part of ends.
    pub(super) fn on_error(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        match &c.role {
            Role::Client(cl) => {
                if cl.phase == Phase::Exchange {
                    self.abort_exchange(now, id);
                } else {
                    self.close(id, true);
                }
            }
            Role::Upstream(u) => match u.state {
                UState::Idle => self.evict(id, true, EvictReason::PeerClosed),
                UState::Connecting => {
                    let srv = u.server as usize;
                    self.stats.servers[srv].connect_failures += 1;
                    self.upstream_failed(now, id, Failure::ConnectFailed)
                }
                UState::Tunnel => {
                    if let Some(cl) = u.client {
                        self.end_tunnel(cl);
                    }
                    self.close_upstream(id, true, NotReusable::Upgraded);
                }
                UState::Active | UState::Check => self.upstream_failed(now, id, Failure::Closed),
                UState::Settling => self.close_upstream(id, true, NotReusable::ServerClosed),
            },
        }
    }

    /// Bytes of `id` were written: its peer may be read again, and a flushed queue may finish
    /// the request or close the connection.
    pub(super) fn on_written(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // Our output shrank: the other side may be read again (its interest is re-evaluated).
        let peer = c.peer();
        let is_client = matches!(c.role, Role::Client(_));
        let empty = c.buf.is_flushed();
        if empty {
            c.buf.write_signalled = false;
            // Keep-alive idleness starts when the last response byte is out, not when queued.
            if let Role::Client(cl) = &mut c.role
                && cl.phase == Phase::Idle
            {
                cl.since = now;
            }
        }
        let below = c.buf.wq_len < self.config.limits.write_high_water;
        let after = c.buf.after_flush;
        if let Some(p) = peer {
            touch(&mut self.touched, p);
            if below {
                // The peer may have input waiting that backpressure held back — perhaps
                // followed by an EOF we deferred until that input was relayed.
                let deferred = self.conns.get(p).is_some_and(|pc| pc.buf.eof_deferred);
                if deferred {
                    self.on_read_closed(now, p);
                } else if is_client {
                    self.drive_upstream(now, p);
                } else {
                    self.drive_client(now, p);
                }
            }
        }
        if !empty || self.conns.get(id).is_none() {
            return;
        }
        if after == AfterFlush::Keep {
            if !is_client {
                self.request_maybe_sent(now, id);
            }
        } else {
            self.flushed(now, id);
        }
    }

    /// The write queue of `id` is empty and it was to close afterwards: do so.
    pub(super) fn flushed(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        let reset = match c.buf.after_flush {
            AfterFlush::Keep => return,
            AfterFlush::Linger => return self.start_linger(now, id),
            AfterFlush::Close => false,
            AfterFlush::Reset => true,
        };
        match c.role {
            Role::Client(_) => self.close(id, reset),
            // Only a tunnel's upstream closes after a flush (see `end_tunnel`).
            Role::Upstream(_) => self.close_upstream(id, reset, NotReusable::Upgraded),
        }
    }

    /// After an EOF on `id`, relaying what it had already sent may be held back by backpressure
    /// toward its peer. Then the EOF must wait until those bytes are through (`on_written`
    /// replays it): acting on it now would cut short a message that arrived whole.
    pub(super) fn defer_eof(&mut self, id: ConnId) -> bool {
        let hw = self.config.limits.write_high_water;
        let Some(c) = self.conns.get(id) else {
            return false;
        };
        let peer = c.peer();
        let blocked = !c.buf.rbuf.is_empty()
            && peer
                .and_then(|p| self.conns.get(p))
                .is_some_and(|p| p.buf.wq_len >= hw);
        if let Some(c) = self.conns.get_mut(id) {
            c.buf.eof_deferred = blocked;
        }
        blocked
    }
}
