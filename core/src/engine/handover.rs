//! Handing an idle pooled upstream connection to the worker whose request is next in line
//! (issue 11, item 2).
//!
//! `max_conns` counts connections over the whole process, but pools are per worker. When the
//! request first in the queue waits in another worker and the server is full, this worker's
//! idle connection to it is what that request needs. Closing it so the other worker can open a
//! new one (what the queue did first) costs a connection per request for a backend that serves
//! one at a time, and a TLS handshake each time. Instead the connection *moves*: this core
//! forgets it and emits [`Output::HandOver`](crate::Output::HandOver); the runtime moves the
//! socket (and its TLS session) to that worker's thread, whose core takes it in with
//! [`Core::adopt_handed`] and dispatches its queue on it.
//!
//! The ledger slot (`max_conns`) stays counted throughout: the connection moves, it does not
//! close, so the cap holds and no second connection ever opens. Whatever happens to it on the
//! way, it ends in exactly one place: adopted into a pool, or — when the receiver may not keep
//! it (draining, the server went out meanwhile, the idle time ran out) — closed by the
//! receiver through the one close path, which gives the slot back once and wakes the next in
//! line. A runtime that cannot deliver it (the receiver has exited) closes it and tells the
//! sending core ([`Core::hand_over_failed`]), which gives the slot back the same way.
//!
//! Only connections of `pool_key = "server"` groups move: a `"client"` group's connections are
//! partitioned by the client that used them, which lives in the sending worker; those are still
//! closed to free the slot.

use super::table::{Conn, Role};
use super::upstream::{UState, Upstream};
use super::{Core, Output};
use crate::config::PoolKeyMode;
use crate::connection::Buffers;
use crate::pool::{EvictReason, PoolKey};
use crate::{ConnId, ServerId, Time};

/// An idle pooled upstream connection on its way to another worker of the same process (same
/// configuration generation, same ledger): what the receiving core needs to pool it with
/// [`Core::adopt_handed`]. Its TLS settings are its group's (the same configuration on both
/// sides); the runtime moves the socket and TLS session along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handed {
    /// The server it is connected to.
    pub server: ServerId,
    /// Its pool entry's expiry: it stays idle no longer than the sender would have kept it.
    pub expires: Time,
    /// When it was opened (`keepalive_time` counts from here).
    pub created: Time,
    /// Requests it carried (`keepalive_requests` counts on from here).
    pub requests: u32,
    /// A warm connection (`min_idle`) that has carried no request yet.
    pub warm: bool,
}

impl Core {
    /// Hands the idle pooled connection `id` to worker `to` (first in line for its server's
    /// slot): forgotten here without a Close, its slot still counted. False when it may not
    /// move (not idle, a `pool_key = "client"` group, no such worker): the caller closes it.
    pub(super) fn hand_over(&mut self, id: ConnId, to: usize) -> bool {
        if to == self.worker || to >= self.shared.workers() {
            return false;
        }
        let Some(entry) = self.pool.entry(id) else {
            return false;
        };
        let Some(u) = self.conns.upstream(id) else {
            return false;
        };
        let g = u.group as usize;
        if u.state != UState::Idle || self.config.upstreams[g].pool_key != PoolKeyMode::Server {
            return false;
        }
        let idx = self.index_in_group(g, u.server);
        let handed = Handed {
            server: self.servers[u.server as usize],
            expires: entry.expires,
            created: u.created,
            requests: u.requests,
            warm: u.unused_warm,
        };
        if u.unused_warm {
            // Its slot went to a request waiting elsewhere, as when it was closed for one: no
            // warm replacement takes the slot back (see `top_up`).
            let server = u.server;
            self.warm_evicted(server, EvictReason::Yielded);
        }
        // It leaves this worker's idle connections; the slot (`conns`) stays counted.
        self.shared.group(g).servers[idx].idle_changed(false);
        self.stats.groups[g].handovers += 1;
        self.pool.remove(id);
        self.timers.set(id.index, None);
        self.forget(id);
        self.out.push_back(Output::HandOver {
            conn: id,
            to_worker: to,
            handed,
        });
        true
    }

    /// Takes in an idle upstream connection another worker of this process
    /// [handed over](crate::Output::HandOver): pooled without taking a new `max_conns` slot —
    /// it brings its own — and the queue is dispatched on it. The runtime watches its socket under the returned id,
    /// then takes the outputs: when this core may not keep it (draining, the server is out,
    /// its idle time is over) they close it, which gives its slot back and wakes the next in
    /// line. `None` for a server this configuration does not have (never within one
    /// generation: the runtime closes the socket; nothing of this ledger was counted for it).
    pub fn adopt_handed(&mut self, now: Time, handed: Handed) -> Option<ConnId> {
        let g = handed.server.upstream.0 as usize;
        let i = handed.server.index as usize;
        if self.config.upstreams.get(g)?.servers.len() <= i {
            return None;
        }
        let id = self.pool_moved_in(now, g, i, &handed);
        self.stats.groups[g].handovers_adopted += 1;
        let why = if self.draining {
            Some(EvictReason::Draining)
        } else if !self.groups[g].balancer.is_up(now, i) {
            Some(EvictReason::ServerUnusable)
        } else if handed.expires <= now {
            Some(EvictReason::IdleTimeout)
        } else {
            None
        };
        match why {
            // The one close path: its slot is given back when the runtime takes the Close,
            // and the worker first in line is woken for it.
            Some(why) => self.evict(id, false, why),
            // The request it was handed for (or whoever is first in line now) gets it.
            // With nobody of this generation waiting any more (the request it was handed for
            // left while it moved), another generation's request may wait for its slot: it
            // queued while the connection was on its way (nothing idle, so nobody was woken).
            None => {
                self.freed.push((g as u32, true));
                self.yield_to_linked();
            }
        }
        self.sync(now);
        Some(id)
    }

    /// A connection this core [handed over](crate::Output::HandOver) could not be delivered
    /// (the receiving worker has exited): the runtime has closed its socket. Its `max_conns`
    /// slot goes back to the ledger and the worker first in line is woken for it — as if it
    /// had been closed to free the slot. (Not adopted back: the worker it was meant for may
    /// still be first in line, and would be handed it again.)
    pub fn hand_over_failed(&mut self, now: Time, handed: Handed) {
        let g = handed.server.upstream.0 as usize;
        let i = handed.server.index as usize;
        if self
            .config
            .upstreams
            .get(g)
            .is_none_or(|up| up.servers.len() <= i)
        {
            return;
        }
        self.groups[g].balancer.closed(i);
        self.stats.groups[g].evictions[EvictReason::Yielded as usize] += 1;
        self.wake_linked = true;
        let ledger = self.shared.group(g);
        if ledger.queued() > 0 {
            if let Some(w) = ledger.first_in_line() {
                self.wake_later(w);
            }
            self.freed.push((g as u32, true));
        }
        self.sync(now);
    }

    /// Pools an idle connection that moved in from another core (a reload's
    /// [`Core::adopt_pooled`], a sibling worker's [`Core::adopt_handed`]) under server `i` of
    /// group `g`: idle until `from.expires` at the latest, its age and request count as `from`
    /// says. Its `max_conns` slot is the caller's business.
    pub(super) fn pool_moved_in(&mut self, now: Time, g: usize, i: usize, from: &Handed) -> ConnId {
        let gcfg = &self.config.upstreams[g];
        // Never idle longer than the sending core would have kept it (the backend may have
        // asked for less), nor than this configuration allows.
        let expires = from
            .expires
            .min(now.plus(gcfg.keepalive_timeout.min(gcfg.keepalive_time)));
        let global = self.groups[g].first_server + i as u32;
        let key = PoolKey {
            server: global,
            partition: 0,
        };
        let id = self.conns.insert(|id| Conn {
            id,
            buf: Buffers::new(now),
            deadline: None,
            role: Role::Upstream(Upstream {
                state: UState::Idle,
                created: from.created,
                requests: from.requests,
                sent_all: true,
                unused_warm: from.warm,
                ..Upstream::warming(global, g as u32, key, now)
            }),
        });
        self.checkin(g, i, id, key, expires);
        id
    }
}
