//! Handing idle client connections from one core to another: a reload without a client-visible
//! error (issue 15).
//!
//! A reload starts new cores with the new configuration and drains the old ones. Closing an old
//! core's idle keep-alive connections (what a plain drain does, and nginx) races with the
//! client's next request, which then fails. Instead the old core, in a *handoff drain*
//! ([`Core::begin_handoff`]), lets each client connection run until it is between requests —
//! requests in flight finish on the old configuration, and their responses keep the connection
//! open — and the runtime then takes it out ([`Core::release_idle`], with the bytes the core
//! still holds for it either way) and gives it to a new core ([`Core::adopt`]). The socket never
//! closes, so the client never notices.

use bytes::Bytes;
use core::net::IpAddr;
use std::collections::VecDeque;

use super::client::Phase;
use super::handover::Handed;
use super::table::Role;
use super::{AtCapacity, Core, Input, touch};
use crate::config::{Address, PoolKeyMode, UpstreamTls};
use crate::connection::AfterFlush;
use crate::pool::EvictReason;
use crate::{ConnId, ListenerId, ServerId, Time};

/// An idle client connection a core let go of, for another core to [adopt](Core::adopt): the
/// runtime moves the socket along with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The listener it arrived on (in the releasing core's configuration).
    pub listener: ListenerId,
    /// The client's address as given to [`Core::accept`].
    pub peer: Option<IpAddr>,
    /// Bytes received and not yet processed: the start of the next request, if any.
    pub received: Bytes,
    /// Bytes queued for the client and not yet written: the end of the last response, if any.
    pub unsent: VecDeque<Bytes>,
    /// Requests the connection carried so far: the adopting core counts on from there
    /// (`keepalive_requests`), and treats it as kept alive rather than new (an idle timeout,
    /// not a header timeout; closed at once by a later plain drain).
    pub requests: u32,
}

impl Core {
    /// Before a handoff drain: takes every idle pooled upstream connection out of the pool
    /// without closing it, for the runtime to hand to a new core ([`Core::adopt_pooled`]) —
    /// a reload keeps the warm connections to servers the new configuration still has. Those
    /// of a `pool_key = "client"` group are closed (their partition is this core's). Each comes
    /// with its server's address and the TLS settings of its group (what it was opened and
    /// verified under), and the instant it stops being idle-worthy (its pool entry's expiry:
    /// our `keepalive_timeout`, the backend's `Keep-Alive` hint, `keepalive_time`), for
    /// [`Core::adopt_pooled`].
    pub fn release_pooled(&mut self) -> Vec<(ConnId, Address, Option<UpstreamTls>, Time)> {
        let mut idle = Vec::new();
        for g in 0..self.pool.groups() {
            idle.extend(self.pool.group_lru(g as u32).map(|e| (e.conn, e.expires)));
        }
        self.pool.drain(&mut |_| {});
        let mut released = Vec::new();
        for (id, expires) in idle {
            let Some(u) = self.conns.upstream(id) else {
                continue;
            };
            let g = u.group as usize;
            if self.config.upstreams[g].pool_key == PoolKeyMode::Client {
                self.evict(id, false, EvictReason::Draining);
                continue;
            }
            let addr = self.server_address(self.servers[u.server as usize]).clone();
            let tls = self.config.upstreams[g].tls.clone();
            // It leaves this core: its `max_conns` slot and its place among the idle go with it
            // (the adopting core takes a slot of its own).
            let idx = (u.server - self.groups[g].first_server) as usize;
            self.shared.group(g).servers[idx].idle_changed(false);
            self.groups[g].balancer.closed(idx);
            // A request of another worker may wait for that slot (its wake-up for this worker
            // not acted on yet): told once the outputs are taken, like after a close.
            let ledger = self.shared.group(g);
            if ledger.queued() > 0
                && let Some(w) = ledger.first_in_line()
            {
                self.wake_later(w);
            }
            self.stats.groups[g].evictions[EvictReason::Draining as usize] += 1;
            self.timers.set(id.index, None);
            self.forget(id);
            released.push((id, addr, tls, expires));
        }
        released
    }

    /// Takes an idle upstream connection to `server` that another core
    /// [released](Core::release_pooled) into the pool of the first group that has a server at
    /// that address, pools by server and has the same TLS settings `tls` (or none, both); `None`
    /// if none does or this core is draining (the
    /// runtime closes it then). Idle until `expires` (as released) at the latest. Watched like
    /// any pooled connection from now on.
    pub fn adopt_pooled(
        &mut self,
        now: Time,
        server: &Address,
        tls: Option<&UpstreamTls>,
        expires: Time,
    ) -> Option<ConnId> {
        if self.draining {
            return None;
        }
        let (g, i) = self
            .config
            .upstreams
            .iter()
            .enumerate()
            .find_map(|(g, up)| {
                // The same TLS settings (SNI, verification, client certificate) or none on
                // both sides: a connection opened for one identity is never reused for another.
                let pooled = up.keepalive > 0
                    && up.pool_key == PoolKeyMode::Server
                    && up.tls.as_ref() == tls;
                let i = up.servers.iter().position(|s| s.addr == *server)?;
                pooled.then_some((g, i))
            })?;
        // A server this core may not use gets nothing from before; one at its `max_conns`
        // (process-wide) has no slot for the connection either.
        if !self.groups[g].balancer.is_up(now, i) || !self.open_slot(g, i) {
            return None;
        }
        let global = self.groups[g].first_server as usize + i;
        let id = self.pool_moved_in(
            now,
            g,
            i,
            &Handed {
                server: self.servers[global],
                expires,
                created: now,
                // It carried a request before it was pooled: its next one is a reuse (the
                // keepalive race is retried on a fresh connection, a 408 read as idle timeout).
                requests: 1,
                warm: false,
            },
        );
        // A request may wait for the slot it took: another worker's of this generation (it
        // found the server full before the move and was not told since), or one of a linked
        // generation (the releasing core's own, first in line there, so nobody woke it). This
        // worker looks again once the runtime has taken the connection in — handing it on or
        // giving it up there ([`Core::handle_shared`]); not here, before it has a socket.
        self.shared.wake(self.worker);
        self.sync(now);
        self.conns.get(id).map(|_| id)
    }

    /// The server an upstream connection belongs to in *this* configuration (`None` for a
    /// client or unknown connection): what a runtime labels an [adopted](Core::adopt_pooled)
    /// connection with, since the releasing core may have numbered its groups differently.
    pub fn upstream_server(&self, conn: ConnId) -> Option<ServerId> {
        match &self.conns.get(conn)?.role {
            Role::Upstream(u) => self.servers.get(u.server as usize).copied(),
            Role::Client(_) => None,
        }
    }

    /// Drains like [`Core::begin_drain`] (no more accepts, the idle pool is closed, exchanges
    /// in flight finish), except that client connections are not closed: each one becomes
    /// [idle](Core::idle_clients) once between requests, for the runtime to
    /// [release](Core::release_idle) and hand to a new core.
    pub fn begin_handoff(&mut self, now: Time) {
        self.handing_off = true;
        self.begin_drain(now);
    }

    /// Whether responses announce a close because of a drain: not in a handoff drain, where
    /// the connection lives on in another core.
    pub(super) fn closing_clients(&self) -> bool {
        self.draining && !self.handing_off
    }

    /// Client connections that can be [released](Core::release_idle) now: between requests
    /// (or with only part of the next head received), the client still sending, and the
    /// connection not on its way to closing.
    pub fn idle_clients(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|c| match &c.role {
                Role::Client(cl) => {
                    matches!(cl.phase, Phase::Idle | Phase::Head)
                        && cl.ex.upstream.is_none()
                        && !c.buf.read_closed
                        && c.buf.lent_at.is_none()
                        // Bytes still in this runtime's pipe cannot move with the socket.
                        && c.buf.piped == 0
                        && c.buf.after_flush == AfterFlush::Keep
                }
                Role::Upstream(_) => false,
            })
            .map(|c| c.id)
            .collect()
    }

    /// Closes the [idle](Core::idle_clients) client connections that arrived on `listener`
    /// once what is queued for each is written: in a handoff drain whose new configuration has
    /// no such listener, they have nowhere to move, and releasing them would lose the end of a
    /// response still being written. A pipelined request already buffered is answered here
    /// first.
    pub fn close_idle_on(&mut self, now: Time, listener: ListenerId) {
        for id in self.idle_clients() {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            if !matches!(&c.role, Role::Client(cl) if cl.listener == listener) {
                continue;
            }
            if c.buf.rbuf.is_empty() {
                self.close_client_after_flush(now, id, AfterFlush::Close);
            } else {
                self.ready.push_back(id);
            }
        }
        self.sync(now);
    }

    /// Lets go of the idle client connection `id` (see [`Core::idle_clients`]; `None` if it is
    /// not): the core forgets it without an [`Output::Close`](crate::Output::Close) — the
    /// runtime keeps the socket for the core that [adopts](Core::adopt) it.
    pub fn release_idle(&mut self, id: ConnId) -> Option<Released> {
        if !self.idle_clients().contains(&id) {
            return None;
        }
        let c = self.conns.get_mut(id)?;
        let Role::Client(cl) = &c.role else {
            return None;
        };
        let released = Released {
            listener: cl.listener,
            peer: cl.peer,
            received: c.buf.rbuf.split().freeze(),
            unsent: core::mem::take(&mut c.buf.wq),
            requests: cl.requests,
        };
        self.clients -= 1;
        self.stats.handed_off += 1;
        self.timers.set(id.index, None);
        self.forget(id);
        self.ready.retain(|&r| r != id);
        Some(released)
    }

    /// Takes over a connection another core [released](Core::release_idle): accepted on
    /// `listener` (of this core's configuration) like a new connection, with what the other
    /// core still held queued to write and processed as received. Refused only while this core
    /// drains; `max_client_connections` does not apply — the connection is open already
    /// (refusing it frees no descriptor), and closing it would fail the client's next request;
    /// accepting stays paused until the count is under the limit again.
    pub fn adopt(
        &mut self,
        now: Time,
        listener: ListenerId,
        released: &Released,
    ) -> Result<ConnId, AtCapacity> {
        if self.draining {
            return Err(AtCapacity);
        }
        let id = self.admit(now, listener, released.peer);
        self.stats.adopted += 1;
        if let Some(c) = self.conns.get_mut(id) {
            if let Role::Client(cl) = &mut c.role {
                cl.requests = released.requests;
            }
            self.spares.lend_queue(&mut c.buf);
            for b in &released.unsent {
                c.buf.push(now, b.clone());
            }
            touch(&mut self.touched, id);
            self.signal_write(id);
        }
        if released.received.is_empty() {
            self.sync(now);
        } else {
            self.handle(
                now,
                Input::Received {
                    conn: id,
                    data: &released.received,
                },
            );
        }
        Ok(id)
    }
}
