//! Readiness and deadlines: which connections the runtime should read from (backpressure), and
//! the one deadline each connection is under — chosen together with its kind, so the timer that
//! fires says what it is for.

use super::Core;
use super::client::Phase;
use super::exchange::Resp;
use super::table::Role;
use super::upstream::UState;
use crate::pool::EvictReason;
use crate::rules::{Failure, NotReusable};
use crate::{ConnId, Output, Time, uploads};

/// What a connection's one armed deadline is for: chosen with it by `Core::deadline`, acted on
/// by `Core::on_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deadline {
    /// The client has not read our output for `client_timeouts.send`.
    ClientSend,
    /// A request head (or a new connection's first byte) is late: `client_timeouts.header`.
    ClientHeader,
    /// Idle between requests for `client_timeouts.keepalive`.
    ClientKeepalive,
    /// The request body stalled for `client_timeouts.body`.
    ClientBody,
    /// Lingering after our last response for `client_timeouts.lingering`.
    Lingering,
    /// The upstream connect took `connect_timeout`.
    Connect,
    /// A pooled connection's idle expiry (held by its pool entry).
    PoolIdle,
    /// The backend has not read our request for `send_timeout`.
    UpstreamSend,
    /// The backend has not sent anything for `read_timeout` after the whole request went out.
    UpstreamRead,
    /// A tunnel saw no traffic in either direction for `read_timeout`.
    TunnelIdle,
    /// The request waited `queue_timeout` in its group's queue.
    Queue,
    /// A health check's `timeout` passed (connect included).
    Check,
    /// A settling connection was not read within [`super::upstream::SETTLE_TIMEOUT`].
    Settle,
}

impl Core {
    /// After a batch of changes: buffered pipelined requests, then read interest and deadlines
    /// of every touched connection.
    pub(super) fn sync(&mut self, now: Time) {
        self.close_unusable_idle(now);
        loop {
            // Freed slots first: a waiting request was there before any buffered one.
            if let Some((g, slot)) = self.freed.pop() {
                let mut slot_freed = slot;
                self.freed.retain(|&(x, s)| {
                    slot_freed |= x == g && s;
                    x != g
                });
                self.dispatch(now, g as usize, slot_freed);
                continue;
            }
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            self.drive_client(now, id);
            // A client that already sent EOF: the request just started from its buffer may
            // be all it will ever send — relay, then finish or abandon it as an EOF would.
            if self.conns.get(id).is_some_and(|c| c.buf.read_closed) {
                self.on_read_closed(now, id);
            }
        }
        if self.checks_on {
            self.run_checks(now);
        }
        if self.warm_on {
            self.top_up(now);
        }
        let mut touched = core::mem::take(&mut self.touched);
        for &id in &touched {
            let want = self.wants_read(id);
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if let Some(want) = want
                && want != c.buf.reading
            {
                c.buf.reading = want;
                if want {
                    // Time we refused to read does not count against the peer: the read and
                    // body timeouts run between two reads we were willing to make.
                    match &mut c.role {
                        Role::Upstream(u) => u.read_progress = now,
                        Role::Client(cl) => {
                            cl.body_progress = now;
                            cl.ex.upload_since = now;
                            cl.ex.upload_base = cl.ex.req_bytes;
                        }
                    }
                }
                self.out.push_back(Output::Interest {
                    conn: id,
                    read: want,
                });
            }
            self.arm(id);
            self.shed_if_idle(id);
        }
        touched.clear();
        self.touched = touched;
        // Buffers beyond what the free list keeps go once they stayed unused for a while.
        self.spares.schedule(now);
    }

    /// Gives the buffers of `id` back to the free list if it is idle — a client between
    /// requests, an upstream connection in the pool — and holds no bytes; its next read takes
    /// them back (`Spares::lend`).
    pub(super) fn shed_if_idle(&mut self, id: ConnId) {
        let pooled = self.pool.contains(id);
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let idle = match &c.role {
            Role::Client(cl) => cl.phase == Phase::Idle,
            Role::Upstream(_) => pooled,
        };
        if idle {
            self.spares.shed(&mut c.buf);
        }
    }

    /// Buffer capacity `id` holds (read + scratch) and the free list's size, for the
    /// simulation's invariants.
    #[cfg(feature = "sim")]
    pub(crate) fn buffers_held(&self, id: ConnId) -> (usize, (usize, usize)) {
        let held = self
            .conns
            .get(id)
            .map_or(0, |c| c.buf.rbuf.capacity() + c.buf.scratch.capacity());
        (held, self.spares.held())
    }

    /// When the free list's next sweep is due, for the simulation's invariants.
    #[cfg(feature = "sim")]
    pub(crate) fn spares_due(&self) -> Option<crate::Time> {
        self.spares.due()
    }

    /// Spare buffers held (read, scratch), for the simulation's invariants.
    #[cfg(feature = "sim")]
    pub(crate) fn spares_held(&self) -> (usize, usize) {
        self.spares.held()
    }

    /// Whether the runtime should read from `id` now: backpressure holds a side back while its
    /// peer has `write_high_water` bytes queued.
    pub(super) fn wants_read(&self, id: ConnId) -> Option<bool> {
        let c = self.conns.get(id)?;
        if c.buf.read_closed {
            return Some(false);
        }
        let hw = self.config.limits.write_high_water;
        Some(match &c.role {
            Role::Client(cl) => match cl.phase {
                Phase::Idle | Phase::Head | Phase::Lingering => true,
                Phase::Closing => false,
                // Waiting for a slot: its body stays with the client until it is dispatched.
                Phase::Exchange if cl.ex.queued_at.is_some() && !cl.ex.req_done => false,
                Phase::Exchange => {
                    let peer_full = cl
                        .ex
                        .upstream
                        .and_then(|u| self.conns.get(u))
                        .is_some_and(|u| u.buf.wq_len >= hw || u.buf.peer_held);
                    if cl.ex.resp == Resp::Tunnel || !cl.ex.req_done {
                        !peer_full
                    } else {
                        // Pipelined requests wait; read a bounded amount ahead, and keep
                        // reading while our own output is small so an EOF is noticed.
                        c.buf.rbuf.len() < self.limits.max_head && c.buf.wq_len < hw
                    }
                }
            },
            Role::Upstream(u) => match u.state {
                UState::Connecting | UState::Idle | UState::Check | UState::Settling => true,
                UState::Active | UState::Tunnel => u
                    .client
                    .and_then(|cl| self.conns.get(cl))
                    .is_none_or(|cl| cl.buf.wq_len < hw && !cl.buf.peer_held),
            },
        })
    }

    /// The deadline `id` is under now, with what it is for: the earliest of those its state
    /// arms (the first considered wins a tie). The one place that decides both when a timer
    /// fires and what firing means ([`Core::on_timeout`]).
    pub(super) fn deadline(&self, id: ConnId) -> Option<(Time, Deadline)> {
        let c = self.conns.get(id)?;
        let t = &self.config.client_timeouts;
        let mut d: Option<(Time, Deadline)> = None;
        let mut consider = |at: Time, kind: Deadline| {
            if d.is_none_or(|(earliest, _)| at < earliest) {
                d = Some((at, kind));
            }
        };
        match &c.role {
            Role::Client(cl) => {
                if !c.buf.is_flushed() {
                    consider(c.buf.write_progress.plus(t.send), Deadline::ClientSend);
                }
                match cl.phase {
                    // A new connection owes us its first request within the header timeout
                    // (nginx's client_header_timeout); between requests keepalive applies.
                    Phase::Idle if cl.requests == 0 => {
                        consider(cl.since.plus(t.header), Deadline::ClientHeader)
                    }
                    // Still writing the last response: only the send timeout applies.
                    Phase::Idle if !c.buf.is_flushed() => {}
                    Phase::Idle => consider(cl.since.plus(t.keepalive), Deadline::ClientKeepalive),
                    Phase::Head => consider(cl.since.plus(t.header), Deadline::ClientHeader),
                    Phase::Exchange => {
                        if let Some(since) = cl.ex.queued_at {
                            let g = &self.config.upstreams[cl.ex.group as usize];
                            consider(since.plus(g.queue_timeout), Deadline::Queue);
                        }
                        if !cl.ex.req_done && c.buf.reading {
                            consider(cl.body_progress.plus(t.body), Deadline::ClientBody);
                            let ex = &cl.ex;
                            if let Some(at) = uploads::upload_deadline(
                                ex.upload_since,
                                t.body,
                                ex.req_bytes - ex.upload_base,
                                self.config.limits.min_upload_rate,
                            ) {
                                consider(at, Deadline::ClientBody);
                            }
                        }
                    }
                    Phase::Lingering => consider(cl.since.plus(t.lingering), Deadline::Lingering),
                    Phase::Closing => {}
                }
            }
            Role::Upstream(u) => {
                let g = &self.config.upstreams[u.group as usize];
                if let (Some(check), Some(h)) = (&u.check, &g.health_check) {
                    consider(check.started.plus(h.timeout), Deadline::Check);
                }
                match u.state {
                    UState::Connecting => {
                        consider(u.created.plus(g.connect_timeout), Deadline::Connect)
                    }
                    // The pool entry holds the idle expiry (checkout honours it too).
                    UState::Idle => {
                        if let Some(e) = self.pool.entry(id) {
                            consider(e.expires, Deadline::PoolIdle);
                        }
                    }
                    UState::Active => {
                        if !c.buf.is_flushed() {
                            let at = c.buf.write_progress.plus(g.send_timeout);
                            consider(at, Deadline::UpstreamSend);
                        } else if u.sent_all && c.buf.reading {
                            let at = u.read_progress.plus(g.read_timeout);
                            consider(at, Deadline::UpstreamRead);
                        }
                    }
                    UState::Tunnel => {
                        let last = u.read_progress.max(c.buf.write_progress);
                        consider(last.plus(g.read_timeout), Deadline::TunnelIdle);
                    }
                    // Bounded by the check's own timeout (above).
                    UState::Check => {}
                    UState::Settling => consider(
                        u.read_progress.plus(super::upstream::SETTLE_TIMEOUT),
                        Deadline::Settle,
                    ),
                }
            }
        }
        d
    }

    /// Arms the timer of `id` for its current state, remembering what it is for.
    pub(super) fn arm(&mut self, id: ConnId) {
        #[cfg(test)]
        tests::ARMED.with(|n| n.set(n.get() + 1));
        let deadline = self.deadline(id);
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.deadline = deadline.map(|(_, kind)| kind);
        self.timers.set(id.index, deadline.map(|(at, _)| at));
    }

    /// The deadline `kind` armed for `id` passed.
    pub(super) fn on_timeout(&mut self, now: Time, id: ConnId, kind: Deadline) {
        let Some(c) = self.conns.get(id) else { return };
        match (kind, &c.role) {
            (Deadline::ClientSend, Role::Client(cl)) => {
                // A client that stopped reading: give up on it (and on its upstream).
                if cl.phase == Phase::Exchange {
                    self.abort_exchange(now, id);
                } else {
                    self.close(id, true);
                }
            }
            (Deadline::ClientHeader, _) => {
                if c.buf.rbuf.is_empty() {
                    self.close(id, false);
                } else {
                    self.client_error(now, id, 408);
                }
            }
            (Deadline::ClientKeepalive | Deadline::Lingering, _) => self.close(id, false),
            (Deadline::ClientBody, Role::Client(cl)) => {
                if cl.ex.resp_started {
                    self.abort_exchange(now, id);
                } else {
                    self.release_upstream_of(id);
                    self.client_error(now, id, 408);
                }
            }
            (Deadline::Connect, _) => self.upstream_failed(now, id, Failure::ConnectTimeout),
            (Deadline::PoolIdle, _) => self.evict(id, false, EvictReason::IdleTimeout),
            (Deadline::UpstreamSend, _) => self.upstream_failed(now, id, Failure::SendTimeout),
            (Deadline::UpstreamRead, _) => self.upstream_failed(now, id, Failure::ReadTimeout),
            (Deadline::TunnelIdle, Role::Upstream(u)) => {
                if let Some(cl) = u.client {
                    self.end_tunnel(cl);
                }
                self.close_upstream(id, false, NotReusable::Upgraded);
            }
            (Deadline::Queue, _) => self.queue_expired(now, id),
            (Deadline::Check, _) => self.check_timed_out(now, id),
            (Deadline::Settle, _) => self.close_upstream(id, false, NotReusable::Timeout),
            (Deadline::ClientSend | Deadline::ClientBody | Deadline::TunnelIdle, _) => {
                debug_assert!(false, "{kind:?} armed for the other role");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;

    use crate::{Address, Config, Core, ListenerId, Time};

    thread_local! {
        /// How many times `Core::arm` ran on this thread.
        pub(super) static ARMED: Cell<usize> = const { Cell::new(0) };
    }

    #[test]
    fn deadlines_due_at_one_instant_are_rearmed_once_each_not_once_per_timer() {
        // Connections accepted in the same millisecond share their header deadline; firing
        // them must cost in proportion to their number (it once re-armed every connection
        // touched so far after each timer: quadratic, ~0.4 s of one worker for 16k).
        let n = 2000;
        let mut config = Config::simple(
            Address::parse("127.0.0.1:8080").unwrap(),
            vec![Address::parse("127.0.0.1:9001").unwrap()],
        );
        config.limits.max_client_connections = n;
        let mut core = Core::new(config, 0).unwrap();
        for _ in 0..n {
            core.accept(Time::ZERO, ListenerId(0), None).unwrap();
        }
        while core.poll_output().is_some() {}
        ARMED.with(|a| a.set(0));
        core.handle_timeout(Time::from_millis(3_600_000));
        assert_eq!(core.connections(), 0);
        let armed = ARMED.with(Cell::get);
        assert!(armed <= 4 * n, "{armed} re-arms for {n} timers");
    }
}
