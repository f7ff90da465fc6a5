//! The queue: a request that finds every server of its group at `max_conns` waits here, in
//! arrival order, until a slot frees — then it goes to that server, on a pooled connection when
//! one is idle — or until `queue_timeout` (then `503` with `Retry-After`). A full queue answers
//! `503` with `Retry-After` at once; a client that leaves gives its place up at once.
//!
//! Each worker queues the requests of its own clients; the order across workers and the
//! process-wide bound live in the shared ledger ([`crate::shared`]): every waiting request holds
//! a ticket, and only the worker whose queue head holds the smallest ticket dispatches. A slot
//! freed by another worker reaches this one through the runtime's wake-up call and
//! [`Core::handle_shared`].
//!
//! While a request waits its client is not read (its body stays in the kernel's buffers and the
//! client's), so nothing is buffered beyond what arrived with the head.

use bytes::Bytes;
use std::collections::VecDeque;

use super::table::Role;
use super::upstream::UState;
use super::{Core, touch};
use crate::config::PoolKeyMode;
use crate::pool::EvictReason;
use crate::rules::{self, NoServer, NoServerFacts};
use crate::{ConnId, Time};

/// A request waiting in its group's queue.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) client: ConnId,
    ticket: u64,
    /// Dispatch on a fresh connection (a stale pooled connection's retry).
    force_fresh: bool,
    /// Bytes a failed connection never wrote, to send as they are.
    bytes: Option<VecDeque<Bytes>>,
}

impl Core {
    /// Chooses a server for a request of group `g` and secures a connection for it: the
    /// server's index in the group, and whether a new connection slot was counted (`false`:
    /// this worker holds an idle connection to it the request may reuse). `None` when no server
    /// may take it now (every candidate at `max_conns` connections, over the whole process).
    pub(super) fn take_slot(
        &mut self,
        now: Time,
        g: usize,
        hash: u64,
        tried: u64,
        fresh: bool,
    ) -> Option<(usize, bool)> {
        // A request that must go on a fresh connection (a stale one's retry) spares nothing.
        let spare = if fresh { 0 } else { self.spare_mask(g, hash) };
        // Servers a connection of this core is closing to: their slot is ours to take over
        // (the ledger still counts it until the runtime takes the Close).
        let closing = self
            .closing_slots
            .iter()
            .filter(|&&(_, cg, ci)| cg as usize == g && ci < 64)
            .fold(0u64, |m, &(_, _, ci)| m | 1u64 << ci);
        // A pick can lose the last slot to another worker between looking and taking: pick
        // again (the balancer then sees the server full), at most once per server.
        for _ in 0..=self.groups[g].balancer.len() {
            let idx = self.groups[g]
                .balancer
                .pick_with(now, hash, tried, spare | closing)?;
            if spare & (1u64 << idx) != 0 {
                return Some((idx, false));
            }
            if self.open_slot(g, idx) {
                return Some((idx, true));
            }
        }
        None
    }

    /// Servers of group `g` at `max_conns` to which this worker holds an idle connection a
    /// request from a client with `hash` may reuse (bit i = server i). Zero when no server of
    /// the group has a cap (nothing to spare).
    fn spare_mask(&self, g: usize, hash: u64) -> u64 {
        if !self.capped[g] {
            return 0;
        }
        let first = self.groups[g].first_server;
        (0..self.groups[g].balancer.len().min(64))
            .filter(|&i| {
                let key = self.pool_key(g, first + i as u32, hash);
                self.pool.idle_for_key(key) > 0
            })
            .fold(0, |m, i| m | (1u64 << i))
    }

    /// Whether some server of group `g` a request may use has a free connection slot.
    fn room_for_waiters(&self, now: Time, g: usize) -> bool {
        let ledger = self.shared.group(g);
        (0..self.groups[g].balancer.len())
            .any(|i| self.groups[g].balancer.is_up(now, i) && ledger.servers[i].has_room())
    }

    /// Gives up this worker's idle connections in group `g` to servers at `max_conns`: another
    /// worker's waiting request is first in line for their slots. With `to`, each is handed to
    /// that worker (see [`handover`](super::handover)) — one that cannot move is closed —
    /// without, closed (a fresh-connection retry of this worker needs the slot). Returns how
    /// many.
    fn yield_idle(&mut self, g: usize, to: Option<usize>) -> usize {
        if !self.capped[g] {
            return 0;
        }
        let ledger = self.shared.group(g).clone();
        let first = self.groups[g].first_server;
        let mut full: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|c| match &c.role {
                Role::Upstream(u) if u.group as usize == g && u.state == UState::Idle => {
                    let s = &ledger.servers[(u.server - first) as usize];
                    (s.max_conns > 0 && !s.has_room()).then_some(c.id)
                }
                _ => None,
            })
            .collect();
        if to.is_some() || self.config.upstreams[g].pool_key == PoolKeyMode::Client {
            // No more than there are requests waiting (any worker's): the rest stay here for
            // this worker's next requests instead of moving for nothing.
            full.truncate(ledger.queued() as usize);
        }
        let n = full.len();
        for id in full {
            if !to.is_some_and(|w| self.hand_over(id, w)) {
                self.evict(id, false, EvictReason::Yielded);
            }
        }
        n
    }

    /// Closes this core's idle connections to full servers whose slot a request waits for in
    /// a linked ledger ([`Shared::continued`](crate::Shared::continued): another generation
    /// counting the server in the same entry, whose queue this core's never sees) while nobody
    /// waits for them in this one: a worker already on the new server set would otherwise keep
    /// the slot idle while a worker still on the old one waits it out. The close wakes it.
    pub(super) fn yield_to_linked(&mut self) {
        if !self.shared.linked_waiting() {
            return;
        }
        for g in 0..self.groups.len() {
            let ledger = self.shared.group(g).clone();
            if !self.capped[g] || ledger.queued() > 0 {
                continue;
            }
            let first = self.groups[g].first_server;
            let out: Vec<ConnId> = self
                .conns
                .iter()
                .filter_map(|c| match &c.role {
                    Role::Upstream(u) if u.group as usize == g && u.state == UState::Idle => {
                        let idx = (u.server - first) as usize;
                        let s = &ledger.servers[idx];
                        (s.max_conns > 0 && !s.has_room() && self.shared.wanted_by_linked(g, idx))
                            .then_some(c.id)
                    }
                    _ => None,
                })
                .collect();
            for id in out {
                self.evict(id, false, EvictReason::Yielded);
            }
        }
    }

    /// Whether an idle connection of another core (of any generation) holds the slot of a full
    /// server of group `g` the head (which `tried` those servers) may use: more are idle
    /// process-wide than in this core. This core's own were offered to its head already
    /// ([`Core::take_slot`], [`Core::yield_idle`]), and one to a server the head may not use
    /// (out, or one it failed on) frees nothing for it: waking another generation for those
    /// spun (in the smol runtime the wake-up comes back to this very thread, whose
    /// [`Core::handle_shared`] dispatches again).
    fn idle_held_elsewhere(&self, now: Time, g: usize, tried: u64) -> bool {
        let ledger = self.shared.group(g);
        let first = self.groups[g].first_server;
        let mut own = vec![0u32; ledger.servers.len()];
        for c in self.conns.iter() {
            if let Role::Upstream(u) = &c.role
                && u.group as usize == g
                && u.state == UState::Idle
                && let Some(n) = own.get_mut((u.server - first) as usize)
            {
                *n += 1;
            }
        }
        let balancer = &self.groups[g].balancer;
        let usable = |i: usize| i < 64 && tried & (1u64 << i) == 0 && balancer.is_up(now, i);
        (ledger.servers.iter().zip(own).enumerate())
            .any(|(i, (s, own))| usable(i) && s.idle_holds_slot() && s.idle() > own)
    }

    /// Wakes `worker` once this call's outputs have been acted on (see [`Core::poll_output`]):
    /// a connection this worker closed to free a slot is closed before the other opens one.
    pub(super) fn wake_later(&mut self, worker: usize) {
        if worker != self.worker && !self.wakes.contains(&worker) {
            self.wakes.push(worker);
        }
    }

    /// Client `id`'s request found no server that may take it now: it waits in the queue, or
    /// is answered (queue full: 503; waiting would not help: the usual no-server status).
    pub(super) fn no_server(
        &mut self,
        now: Time,
        id: ConnId,
        force_fresh: bool,
        bytes: Option<VecDeque<Bytes>>,
    ) {
        let Some(cl) = self.conns.client(id) else {
            return;
        };
        let (g, tried, last) = (cl.ex.group as usize, cl.ex.tried, cl.ex.status);
        let ledger = self.shared.group(g).clone();
        let cap = self.config.upstreams[g].queue;
        let queued = ledger.queued();
        let verdict = rules::no_server(&NoServerFacts {
            queue: cap,
            queued: queued as usize,
            waitable: queued > 0 || self.groups[g].balancer.could_wait(now, tried),
        });
        let ticket = match verdict {
            NoServer::Answer => {
                self.client_error(now, id, rules::no_server_status(last));
                return;
            }
            NoServer::QueueFull => None,
            NoServer::Wait => ledger.try_enqueue(cap),
        };
        let Some(ticket) = ticket else {
            self.stats.groups[g].queue_full += 1;
            self.client_error(now, id, 503);
            return;
        };
        self.stats.groups[g].queued += 1;
        if let Some(cl) = self.conns.client_mut(id) {
            cl.ex.queued_at = Some(now);
        }
        let q = &mut self.groups[g].queue;
        q.push_back(Waiter {
            client: id,
            ticket,
            force_fresh,
            bytes,
        });
        if q.len() == 1 {
            ledger.set_head(self.worker, Some(ticket));
        }
        touch(&mut self.touched, id);
        // A slot may have freed between the failed pick and the ticket being published (the
        // worker that freed it saw no one waiting): look again before sleeping.
        self.freed.push((g as u32, false));
    }

    /// Takes client `id` out of its group's queue, if it waits there (its wait is counted).
    /// `dispatched`: it leaves with a slot (nothing freed for the next in line).
    pub(super) fn leave_queue(
        &mut self,
        now: Time,
        id: ConnId,
        dispatched: bool,
    ) -> Option<Waiter> {
        let cl = self.conns.client_mut(id)?;
        let since = cl.ex.queued_at.take()?;
        let g = cl.ex.group as usize;
        let q = &mut self.groups[g].queue;
        let pos = q.iter().position(|w| w.client == id)?;
        let w = q.remove(pos)?;
        let head = q.front().map(|w| w.ticket);
        let ledger = self.shared.group(g);
        ledger.dequeued();
        if pos == 0 {
            ledger.set_head(self.worker, head);
            // The next in line may be another worker's request, and a slot may be free for it
            // (one this head was woken for, or one it could not use): wake that worker once.
            if !dispatched && let Some(w) = ledger.first_in_line() {
                self.wake_later(w);
            }
            self.freed.push((g as u32, false));
        }
        let waited = u64::try_from(now.since(since).as_nanos()).unwrap_or(u64::MAX);
        let st = &mut self.stats.groups[g];
        st.queue_wait_nanos = st.queue_wait_nanos.saturating_add(waited);
        touch(&mut self.touched, id);
        Some(w)
    }

    /// A client that waited left (closed, reset, gave up): its place is free at once.
    pub(super) fn abandon_queue(&mut self, now: Time, id: ConnId) {
        if let Some(w) = self.leave_queue(now, id, false) {
            let g = self
                .conns
                .client(w.client)
                .map_or(0, |cl| cl.ex.group as usize);
            self.stats.groups[g].queue_abandoned += 1;
        }
    }

    /// The wait of client `id` reached `queue_timeout`: 503 with `Retry-After`.
    pub(super) fn queue_expired(&mut self, now: Time, id: ConnId) {
        let Some(g) = self.conns.client(id).map(|cl| cl.ex.group as usize) else {
            return;
        };
        if self.leave_queue(now, id, false).is_some() {
            self.stats.groups[g].queue_timeouts += 1;
            self.client_error(now, id, 503);
        }
    }

    /// Dispatches this worker's waiting requests of group `g` while it is first in line and a
    /// server has room. When another worker is first in line, hands it this worker's idle
    /// connections to full servers and wakes it; when this worker is first but finds no room,
    /// wakes the others, whose idle connections may hold the slots. `slot_freed`: a connection
    /// slot (or a pooled connection) was just freed here.
    pub(super) fn dispatch(&mut self, now: Time, g: usize, slot_freed: bool) {
        // Each pass dispatches (or drops) the head, or returns; a head that loses its slot on
        // the way goes back to the queue, so the passes are bounded by the queue's length.
        let mut passes = 2 * (self.groups[g].queue.len() + 1);
        let mut dispatched = false;
        loop {
            if passes == 0 {
                return;
            }
            passes -= 1;
            let ledger = self.shared.group(g).clone();
            match ledger.first_in_line() {
                None => return,
                Some(w) if w != self.worker => {
                    // After this worker's own waiters went, a server may still have room for
                    // the next in line (one that came back — checks, `up` — frees many slots
                    // at once): that worker may have looked before this one and gone back to
                    // sleep behind our head.
                    let room = dispatched && self.room_for_waiters(now, g);
                    if self.yield_idle(g, Some(w)) > 0 || slot_freed || room {
                        self.wake_later(w);
                    }
                    return;
                }
                Some(_) => {}
            }
            let Some(front) = self.groups[g].queue.front() else {
                return;
            };
            let id = front.client;
            let Some(cl) = self.conns.client(id) else {
                // Every close leaves the queue first; never here, but never stuck either.
                self.groups[g].queue.pop_front();
                ledger.dequeued();
                ledger.set_head(self.worker, self.groups[g].queue.front().map(|w| w.ticket));
                continue;
            };
            let (hash, tried, fresh) = (cl.peer_hash, cl.ex.tried, front.force_fresh);
            let last = cl.ex.status;
            let Some((idx, slot)) = self.take_slot(now, g, hash, tried, fresh) else {
                // A retry that needs a fresh connection would wait forever behind this worker's
                // own idle connections (suspect anyway: one of their era just went stale); so
                // would any request of a `pool_key = "client"` group behind other clients'
                // (or the health checks') idle connections, which it may never reuse.
                let client_keyed = self.config.upstreams[g].pool_key == PoolKeyMode::Client;
                if (fresh || client_keyed) && self.yield_idle(g, None) > 0 {
                    continue;
                }
                // No server it may use will free a slot (they went down, were drained, failed
                // health since it queued): waiting would turn an outage into a slower one.
                // Answered now, as a newcomer would be (see `rules::no_server`).
                if !self.groups[g].balancer.could_wait(now, tried) {
                    self.leave_queue(now, id, false);
                    self.client_error(now, id, rules::no_server_status(last));
                    continue;
                }
                if !slot_freed {
                    for w in 0..self.shared.workers() {
                        self.wake_later(w);
                    }
                    // Another generation's idle connection may hold the slot, and its workers
                    // never see this ledger's queue unless told (they then yield it). Only
                    // then: a wake-up that cannot free anything would come back here at once
                    // (in the smol runtime both generations share the worker's thread) and
                    // the two would spin.
                    if ledger.idle_holds_slot() && self.idle_held_elsewhere(now, g, tried) {
                        self.shared.wake_linked_workers();
                    }
                }
                return;
            };
            let w = self.leave_queue(now, id, true).expect("the head waits");
            dispatched = true;
            self.stats.groups[g].dequeued += 1;
            self.bind_server(now, id, g, idx, slot, w.force_fresh, w.bytes);
            // What arrived with the head (body bytes, an EOF) was left alone while it waited.
            if let Some(c) = self.conns.get(id)
                && (!c.buf.rbuf.is_empty() || c.buf.read_closed)
            {
                self.ready.push_back(id);
            }
        }
    }
}
