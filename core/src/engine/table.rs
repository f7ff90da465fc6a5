//! The connection table: every open connection (client or upstream) under a generation-checked
//! id, lookups by role, and the one place connections leave — closing, evicting from the pool and
//! not reusing, each with its counter.

use bytes::Bytes;
use slab::Slab;

use super::client::Client;
use super::readiness::Deadline;
use super::upstream::{UState, Upstream};
use super::{Core, Output, touch};
use crate::connection::Buffers;
use crate::pool::EvictReason;
use crate::rules::NotReusable;
use crate::{ConnId, Time};

// Slab slots are reused, so the size difference costs memory per slot, not allocations; boxing
// the client side would cost one allocation per accepted connection instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
/// Which side of the proxy a connection is.
pub(super) enum Role {
    Client(Client),
    Upstream(Upstream),
}

/// Slots below which the table never shrinks.
const SHRINK_FROM: usize = 1024;

/// The connections of one core: a slab of [`Conn`] whose ids carry a generation, so an id of a
/// closed connection never reaches the connection that reuses its slot.
#[derive(Debug, Default)]
pub(super) struct Table {
    slab: Slab<Conn>,
    /// Generation of the next connection in each slot.
    generations: Vec<u32>,
}

impl Table {
    /// Adds the connection `make` builds for its new id.
    pub(super) fn insert(&mut self, make: impl FnOnce(ConnId) -> Conn) -> ConnId {
        let entry = self.slab.vacant_entry();
        let slot = entry.key();
        if slot >= self.generations.len() {
            self.generations.resize(slot + 1, 0);
        }
        let id = ConnId {
            index: slot as u32,
            generation: self.generations[slot],
        };
        entry.insert(make(id));
        id
    }

    /// Forgets `id`; its slot's next connection gets a new generation. Returns whether the
    /// table shrank (the other per-slot structures may then shrink too: `Core::compact`).
    pub(super) fn remove(&mut self, id: ConnId) -> bool {
        if self.get(id).is_some() {
            self.slab.remove(id.index as usize);
            let g = &mut self.generations[id.index as usize];
            *g = g.wrapping_add(1);
            // After a spike (10,000 clients gone) the table gives its memory back — ~1 KiB a
            // slot — as far as the last open connection allows. Only when three quarters are
            // free, so the steady state never reallocates; slots keep their generations.
            // Whether it shrank: once the last open connection stops it, the condition holds on
            // every close, and what follows a shrink (`Core::compact`) must not run each time.
            let before = self.slab.capacity();
            if before >= SHRINK_FROM && self.slab.len() * 4 < before {
                self.slab.shrink_to_fit();
                return self.slab.capacity() < before;
            }
        }
        false
    }

    /// The connection `id`, if still open.
    pub(super) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slab.get(id.index as usize).filter(|c| c.id == id)
    }

    pub(super) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slab.get_mut(id.index as usize).filter(|c| c.id == id)
    }

    /// The connection in `slot`, whatever its generation (a timer names a slot).
    pub(super) fn at_slot_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slab.get_mut(slot as usize)
    }

    /// Two distinct connections at once (a client and its upstream).
    pub(super) fn pair_mut(&mut self, a: ConnId, b: ConnId) -> Option<(&mut Conn, &mut Conn)> {
        let (x, y) = self.slab.get2_mut(a.index as usize, b.index as usize)?;
        (x.id == a && y.id == b).then_some((x, y))
    }

    /// The client side of `id`, if it is an open client connection (likewise below).
    pub(super) fn client(&self, id: ConnId) -> Option<&Client> {
        match &self.get(id)?.role {
            Role::Client(c) => Some(c),
            Role::Upstream(_) => None,
        }
    }

    pub(super) fn client_mut(&mut self, id: ConnId) -> Option<&mut Client> {
        match &mut self.get_mut(id)?.role {
            Role::Client(c) => Some(c),
            Role::Upstream(_) => None,
        }
    }

    pub(super) fn upstream(&self, id: ConnId) -> Option<&Upstream> {
        match &self.get(id)?.role {
            Role::Upstream(u) => Some(u),
            Role::Client(_) => None,
        }
    }

    pub(super) fn upstream_mut(&mut self, id: ConnId) -> Option<&mut Upstream> {
        match &mut self.get_mut(id)?.role {
            Role::Upstream(u) => Some(u),
            Role::Client(_) => None,
        }
    }

    /// Every open connection.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.slab.iter().map(|(_, c)| c)
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

/// One open connection: its buffers, its side, and what its armed deadline is for.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: ConnId,
    pub(super) buf: Buffers,
    pub(super) role: Role,
    /// What the armed timer of this connection is for (its time is in `Core::timers`).
    pub(super) deadline: Option<Deadline>,
}

impl Conn {
    /// The connection on the other side of the current exchange: a client's upstream, an
    /// upstream's client.
    pub(super) fn peer(&self) -> Option<ConnId> {
        match &self.role {
            Role::Client(cl) => cl.ex.upstream,
            Role::Upstream(u) => u.client,
        }
    }
}

impl Core {
    /// Index within group `g` of the server with global index `global`.
    pub(super) fn index_in_group(&self, g: usize, global: u32) -> usize {
        (global - self.groups[g].first_server) as usize
    }

    /// Ends an upstream connection's request for the balancer (least-conn counts, max_conns).
    /// The one place that undoes `Balancer::acquire`: called when the response is done and by
    /// every close, so no path can leak an active count.
    pub(super) fn release_server(&mut self, id: ConnId) {
        let Some(u) = self.conns.upstream_mut(id) else {
            return;
        };
        if core::mem::take(&mut u.acquired) {
            let g = u.group as usize;
            let idx = (u.server - self.groups[g].first_server) as usize;
            self.groups[g].balancer.end_request(idx);
            // Someone (here or in another worker) waits: the connection may go to them (pooled
            // here, or closed to free its slot). Dispatched at the end of the call.
            if self.shared.group(g).queued() > 0 {
                self.freed.push((g as u32, true));
            }
        }
    }

    /// Closes the idle pooled connections to servers that stopped being usable (drained, set
    /// down, failed by passive or active health) since the last look, so nothing from before
    /// an outage is reused after it. Cheap when nothing changed: one atomic load per group.
    pub(super) fn close_unusable_idle(&mut self, now: Time) {
        for g in 0..self.groups.len() {
            let epoch = self.shared.group(g).epoch();
            if epoch == self.epochs[g] {
                continue;
            }
            self.epochs[g] = epoch;
            let first = self.groups[g].first_server;
            let out: Vec<ConnId> = self
                .conns
                .iter()
                .filter_map(|c| match &c.role {
                    Role::Upstream(u)
                        if u.group as usize == g
                            && u.state == UState::Idle
                            && !self.groups[g]
                                .balancer
                                .is_up(now, (u.server - first) as usize) =>
                    {
                        Some(c.id)
                    }
                    _ => None,
                })
                .collect();
            for id in out {
                self.evict(id, false, EvictReason::ServerUnusable);
            }
        }
    }

    /// Closes an idle pooled connection, counting why it leaves the pool.
    pub(super) fn evict(&mut self, id: ConnId, reset: bool, why: EvictReason) {
        if let Some(Role::Upstream(u)) = self.conns.get_mut(id).map(|c| &c.role) {
            debug_assert_eq!(u.state, UState::Idle, "only idle connections are evicted");
            self.stats.groups[u.group as usize].evictions[why as usize] += 1;
            if u.unused_warm {
                let server = u.server;
                self.warm_evicted(server, why);
            }
        }
        self.close(id, reset);
    }

    /// Closes an upstream connection that carried a request instead of pooling it, counting why.
    pub(super) fn close_upstream(&mut self, id: ConnId, reset: bool, why: NotReusable) {
        if let Some(Role::Upstream(u)) = self.conns.get_mut(id).map(|c| &c.role) {
            debug_assert_ne!(u.state, UState::Idle, "idle connections are evicted");
            self.stats.groups[u.group as usize].not_reused[why as usize] += 1;
        }
        self.close(id, reset);
    }

    /// A connection to server `idx` of group `g` may open (`max_conns`, process-wide): takes
    /// over the slot of a connection to it this core is closing, else asks the ledger.
    pub(super) fn open_slot(&mut self, g: usize, idx: usize) -> bool {
        let closing = self
            .closing_slots
            .iter()
            .position(|&(_, cg, ci)| cg as usize == g && ci as usize == idx);
        match closing {
            Some(i) => {
                self.closing_slots.swap_remove(i);
                true
            }
            None => self.groups[g].balancer.try_open(idx),
        }
    }

    /// The runtime took the Close of `conn`: its slot, unless taken over, goes back to the
    /// ledger. (A worker waiting for it was chosen at the end of the call that closed it, and
    /// is woken once the outputs are drained — after this.)
    pub(super) fn slot_closed(&mut self, conn: ConnId) {
        let Some(i) = self.closing_slots.iter().position(|&(c, ..)| c == conn) else {
            return;
        };
        let (_, g, idx) = self.closing_slots.swap_remove(i);
        self.groups[g as usize].balancer.closed(idx as usize);
        self.wake_linked = true;
        // A request may have queued since the close (in another worker, which found the
        // server full while this Close was on its way): the worker first in line gets the slot.
        let ledger = self.shared.group(g as usize);
        if ledger.queued() > 0
            && let Some(w) = ledger.first_in_line()
        {
            self.wake_later(w);
        }
    }

    /// Removes a connection and tells the runtime to close it. Upstream connections leave
    /// through [`Core::evict`] or [`Core::close_upstream`], which count why.
    pub(super) fn close(&mut self, id: ConnId, reset: bool) {
        self.release_server(id);
        self.abandon_queue(Time(0), id);
        let Some(c) = self.conns.get(id) else { return };
        match &c.role {
            Role::Client(_) => self.clients -= 1,
            Role::Upstream(u) => {
                // Every upstream connection holds one of its server's connection slots
                // (`max_conns`), warm ones included.
                let g = u.group as usize;
                let idx = (u.server - self.groups[g].first_server) as usize;
                let (server, unconnected_warm) =
                    (u.server, u.state == UState::Connecting && u.unused_warm);
                if u.state == UState::Idle {
                    self.shared.group(g).servers[idx].idle_changed(false);
                }
                // Given back when the runtime takes the Close (see `closing_slots`).
                self.closing_slots.push((id, g as u32, idx as u32));
                if self.shared.group(g).queued() > 0 {
                    self.freed.push((g as u32, true));
                }
                if unconnected_warm {
                    self.warm_failed(server);
                }
            }
        }
        self.pool.remove(id);
        self.timers.set(id.index, None);
        if let Some(c) = self.conns.get_mut(id) {
            // Its buffers serve the next connection (the bytes left in them are dropped).
            c.buf.rbuf.clear();
            c.buf.drop_queue();
            c.buf.lent_at = None;
            self.spares.shed(&mut c.buf);
        }
        self.forget(id);
        self.out.push_back(Output::Close { conn: id, reset });
    }

    /// Removes `id` from the table; when that shrinks the table after a spike, the structures
    /// sized by the peak shrink with it (`compact`).
    pub(super) fn forget(&mut self, id: ConnId) {
        if self.conns.remove(id) {
            self.compact();
        }
    }

    /// After a spike has passed (the table shrank): the pool's entries, the timers and the
    /// output queue give back what the peak made them hold — ~0.5 MiB after 4,000 connections,
    /// which kept the RSS after they closed above the start (`benches/load/run.sh --memory`).
    /// Never in a steady state: the table shrinks only when three quarters of 1,024+ slots
    /// are free.
    fn compact(&mut self) {
        self.pool.shrink();
        self.timers.shrink();
        self.out.shrink_to(self.out.len().max(64));
        self.ready.shrink_to(self.ready.len().max(64));
    }

    /// Emits a Write for `id` if it has output, can write, and was not told already.
    pub(super) fn signal_write(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.buf.is_flushed() || c.buf.write_signalled {
            return;
        }
        if let Role::Upstream(u) = &c.role
            && u.state == UState::Connecting
        {
            return;
        }
        c.buf.write_signalled = true;
        self.out.push_back(Output::Write { conn: id });
    }

    /// Queues `b` on `id` (counted as sent for a client's exchange) and signals the write.
    pub(super) fn push(&mut self, now: Time, id: ConnId, b: Bytes) {
        if let Some(c) = self.conns.get_mut(id) {
            if let Role::Client(cl) = &mut c.role {
                cl.ex.bytes_sent += b.len() as u64;
            }
            self.spares.lend_queue(&mut c.buf);
            c.buf.push(now, b);
            touch(&mut self.touched, id);
            self.signal_write(id);
        }
    }
}
