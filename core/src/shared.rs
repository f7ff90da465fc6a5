//! What the workers of one process share about their upstream servers: the ledger.
//!
//! Each worker runs its own [`Core`](crate::Core), but a server's limits and health belong to the
//! process: `max_conns = 1` means one request in flight to that server across every worker
//! (HAProxy's `maxconn`), a server drained, set down or failed by health checks is out for every
//! worker, and a group's queue bound counts every worker's waiting requests. A [`Shared`] is made
//! once per process (per reload generation) and handed to every worker's core with
//! [`Core::with_shared`](crate::Core::with_shared).
//!
//! Everything here is counters and flags in atomics, read and written by the cores only; no
//! clock, no I/O, no thread. Driven by one thread (the simulation, a test) it is as
//! deterministic as the rest of the core. The one way out is [`Shared::set_waker`]: the runtime
//! registers, per worker, a callback that makes that worker call
//! [`Core::handle_shared`](crate::Core::handle_shared) soon — when a slot another worker's queue
//! waits for was freed, or a server's state changed.
//!
//! # Queue order across workers
//!
//! Each worker queues its own clients' requests (they live on its connections), in FIFO order.
//! Across workers the order is kept by tickets: every queued request takes the next ticket of its
//! group, each worker publishes the ticket of its queue's head, and only the worker whose head
//! holds the smallest ticket may dispatch; a worker that frees a slot it may not use wakes that
//! one. That is exact FIFO over the whole process, except that a head which can use none of the
//! free servers (a retry that already tried them) holds back the requests behind it until a slot
//! it may use frees or its wait times out.

use core::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};

use crate::Time;
use crate::config::{Config, ConfigError, ServerState, UpstreamConfig};
use crate::health::{CheckResult, Streak};

/// A worker's wake-up call (see [`Shared::set_waker`]).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// No ticket: the worker's queue for the group is empty.
const NO_TICKET: u64 = u64::MAX;

/// The process-wide ledger of upstream servers, shared by every worker's core (cheap to clone:
/// one reference count).
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Ledger>,
}

struct Ledger {
    groups: Vec<Arc<GroupLedger>>,
    wakers: Mutex<Vec<Option<Waker>>>,
    /// The ledgers [continued](Shared::continued) from this one and the one it continues:
    /// they share server entries, so a slot freed here may be what their queues wait for.
    linked: Mutex<Vec<Weak<Ledger>>>,
    /// Some ledger was ever linked to this one: the hot paths skip the lock otherwise.
    has_links: AtomicBool,
}

/// One group's shared part: its servers, and its queue's length and order.
#[derive(Debug)]
pub(crate) struct GroupLedger {
    /// Shared (`Arc`) so that a generation [continued](Shared::continued) from this one keeps
    /// counting a server it keeps in the same entry.
    pub(crate) servers: Vec<Arc<ServerLedger>>,
    /// Requests waiting in every worker's queue for this group.
    queued: AtomicU32,
    next_ticket: AtomicU64,
    /// Per worker: the ticket at the head of its queue ([`NO_TICKET`] when empty).
    heads: Vec<AtomicU64>,
    /// Bumped whenever a server of the group may have stopped being usable (state, health):
    /// each core compares it with the value it last saw and closes idle pooled connections to
    /// servers that are out.
    epoch: AtomicU64,
}

/// One server's shared part: requests in flight, administrative state, health.
#[derive(Debug)]
pub(crate) struct ServerLedger {
    pub(crate) max_conns: u32,
    /// Requests in flight (least-conn's load, operators' view).
    inflight: AtomicU32,
    /// Connections open, busy or idle: what `max_conns` caps. Idle connections count because a
    /// backend that serves one connection at a time (seed 000) blocks on an idle one.
    conns: AtomicU32,
    state: AtomicU8,
    /// Passive health (see `balance`): failures in the current window, its start, and while
    /// the count is at `max_fails`, the end of the down period (nanoseconds of [`Time`]).
    pub(crate) fails: AtomicU32,
    pub(crate) window_start: AtomicU64,
    pub(crate) down_until: AtomicU64,
    /// Active health (`health_check`, see `engine::health`): the checks hold the server out.
    /// The verdict is consulted everywhere usability is, so checks only have to set it.
    check_failed: AtomicBool,
    /// When the next check of this server is due, for the whole process (nanoseconds of
    /// [`Time`]; 0: at once). The core that reaches it first claims the round.
    next_check: AtomicU64,
    /// The current run of check results (see [`crate::health::next_streak`]).
    check_passes: AtomicU32,
    check_fails: AtomicU32,
    /// Times the verdict changed (the simulation tells "failed all along" from "failed again").
    check_changes: AtomicU64,
    /// Checks run, by result ([`CheckResult`] index), every worker together.
    check_results: [AtomicU64; CheckResult::COUNT],
    /// The round claimed last found no connection slot: the check it should have run is owed,
    /// and runs when the check in flight (another worker's, holding the slot) ends.
    check_owed: AtomicBool,
    /// Idle pooled connections to this server, every worker together.
    pub(crate) idle: AtomicU32,
    /// The server was last reported (the operator log) as out of use: each change is reported
    /// by the one worker that flips this ([`crate::Core::claim_usability_report`]).
    reported_out: AtomicBool,
}

fn state_code(s: ServerState) -> u8 {
    match s {
        ServerState::Up => 0,
        ServerState::Drain => 1,
        ServerState::Down => 2,
    }
}

fn state_of(code: u8) -> ServerState {
    match code {
        0 => ServerState::Up,
        1 => ServerState::Drain,
        _ => ServerState::Down,
    }
}

impl ServerLedger {
    fn new(max_conns: u32, state: ServerState) -> ServerLedger {
        ServerLedger {
            max_conns,
            inflight: AtomicU32::new(0),
            conns: AtomicU32::new(0),
            state: AtomicU8::new(state_code(state)),
            fails: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            check_failed: AtomicBool::new(false),
            reported_out: AtomicBool::new(false),
            next_check: AtomicU64::new(0),
            check_passes: AtomicU32::new(0),
            check_fails: AtomicU32::new(0),
            check_changes: AtomicU64::new(0),
            check_owed: AtomicBool::new(false),
            check_results: Default::default(),
            idle: AtomicU32::new(0),
        }
    }

    /// Requests in flight to this server, every worker together.
    pub(crate) fn inflight(&self) -> u32 {
        self.inflight.load(SeqCst)
    }

    /// Connections open to this server (opening, busy or idle in a pool), every worker together.
    pub(crate) fn conns(&self) -> u32 {
        self.conns.load(SeqCst)
    }

    /// Whether an idle pooled connection (some worker's, of some generation) holds one of this
    /// full server's slots: a waiting request gets it only once its holder yields it.
    pub(crate) fn idle_holds_slot(&self) -> bool {
        self.max_conns > 0 && !self.has_room() && self.idle.load(SeqCst) > 0
    }

    /// Idle pooled connections to this server, every worker (and generation) together.
    pub(crate) fn idle(&self) -> u32 {
        self.idle.load(SeqCst)
    }

    /// Whether a new connection may be opened: below `max_conns` (or no cap).
    pub(crate) fn has_room(&self) -> bool {
        self.max_conns == 0 || self.conns() < self.max_conns
    }

    /// Counts a new connection if the cap allows; false when the server is full (another worker
    /// may have taken the last slot since the pick looked).
    pub(crate) fn try_open(&self) -> bool {
        let cap = self.max_conns;
        self.conns
            .fetch_update(SeqCst, SeqCst, |n| (cap == 0 || n < cap).then_some(n + 1))
            .is_ok()
    }

    /// An idle pooled connection appeared (`true`) or left the pool (`false`).
    pub(crate) fn idle_changed(&self, appeared: bool) {
        if appeared {
            self.idle.fetch_add(1, SeqCst);
        } else {
            let _ = self
                .idle
                .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
        }
    }

    /// Counts a connection whatever the cap (the balancer's unit tests).
    pub(crate) fn force_open(&self) {
        self.conns.fetch_add(1, SeqCst);
    }

    /// A connection counted by [`try_open`](ServerLedger::try_open) closed (or moved away).
    pub(crate) fn closed(&self) {
        let _ = self
            .conns
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
    }

    /// One more request in flight.
    pub(crate) fn begin_request(&self) {
        self.inflight.fetch_add(1, SeqCst);
    }

    /// One request fewer in flight.
    pub(crate) fn end_request(&self) {
        let _ = self
            .inflight
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
    }

    /// The administrative state.
    pub(crate) fn state(&self) -> ServerState {
        state_of(self.state.load(SeqCst))
    }

    /// Whether the last active checks left the server failed.
    pub(crate) fn check_failed(&self) -> bool {
        self.check_failed.load(SeqCst)
    }

    /// Records that the server is now reported `up` (or out of use); true for the one caller
    /// whose report changed what was last reported.
    pub(crate) fn claim_report(&self, up: bool) -> bool {
        self.reported_out
            .compare_exchange(up, !up, SeqCst, SeqCst)
            .is_ok()
    }

    /// When the next check of the server is due (process-wide).
    pub(crate) fn next_check(&self) -> Time {
        Time(self.next_check.load(SeqCst))
    }

    /// Claims the check round due at or before `now` for the caller: true for exactly one
    /// caller per round, and the next round is due `interval` from `now` (a compare-exchange, so
    /// two workers reaching the same instant cannot both check).
    pub(crate) fn claim_check(&self, now: Time, interval: core::time::Duration) -> bool {
        let due = self.next_check.load(SeqCst);
        now.0 >= due
            && self
                .next_check
                .compare_exchange(due, now.plus(interval).0, SeqCst, SeqCst)
                .is_ok()
    }

    /// The round just claimed found the server's slots taken by no request (the previous
    /// round's check still finishing, or idle connections, in other workers): its check is
    /// owed, to be run by the worker that holds them.
    pub(crate) fn owe_check(&self, owed: bool) {
        self.check_owed.store(owed, SeqCst);
    }

    /// Whether a check is owed (see [`ServerLedger::owe_check`]).
    pub(crate) fn check_owed(&self) -> bool {
        self.check_owed.load(SeqCst)
    }

    /// Whether a check is owed, and no longer (the caller runs it).
    pub(crate) fn take_owed_check(&self) -> bool {
        self.check_owed.swap(false, SeqCst)
    }

    /// Counts a check's result and moves the streak on: `Some(failed)` when the verdict
    /// changed. (One check of a server runs at a time, so the streak's loads and stores do not
    /// race in practice; a lost update would only delay a flip by one check.)
    pub(crate) fn check_done(&self, result: CheckResult, fall: u32, rise: u32) -> Option<bool> {
        self.check_results[result as usize].fetch_add(1, SeqCst);
        let was = self.streak();
        let now = crate::health::next_streak(was, result, fall, rise);
        self.check_passes.store(now.passes, SeqCst);
        self.check_fails.store(now.fails, SeqCst);
        self.check_failed.store(now.failed, SeqCst);
        let changed = now.failed != was.failed;
        if changed {
            self.check_changes.fetch_add(1, SeqCst);
        }
        changed.then_some(now.failed)
    }

    fn streak(&self) -> Streak {
        Streak {
            passes: self.check_passes.load(SeqCst),
            fails: self.check_fails.load(SeqCst),
            failed: self.check_failed(),
        }
    }

    /// The checks' verdict and streaks start afresh (the group is no longer checked).
    fn forget_checks(&self) {
        self.check_failed.store(false, SeqCst);
        self.check_passes.store(0, SeqCst);
        self.check_fails.store(0, SeqCst);
        self.next_check.store(0, SeqCst);
    }

    /// Takes over the checks' streak and counts of `old` (a reload keeps them), and its
    /// schedule when the interval stays the same (a new interval starts with a check at once:
    /// the old schedule could hold the first check back for a whole old, longer interval).
    fn carry_checks(&self, old: &ServerLedger, same_interval: bool) {
        if same_interval {
            self.next_check.store(old.next_check.load(SeqCst), SeqCst);
        }
        self.check_passes
            .store(old.check_passes.load(SeqCst), SeqCst);
        self.check_fails.store(old.check_fails.load(SeqCst), SeqCst);
        self.check_failed.store(old.check_failed(), SeqCst);
        self.check_changes
            .store(old.check_changes.load(SeqCst), SeqCst);
        for (n, o) in self.check_results.iter().zip(&old.check_results) {
            n.store(o.load(SeqCst), SeqCst);
        }
    }
}

impl GroupLedger {
    /// A group's ledger for `workers` workers.
    pub(crate) fn new(cfg: &UpstreamConfig, workers: usize) -> GroupLedger {
        GroupLedger {
            servers: cfg
                .servers
                .iter()
                .map(|s| Arc::new(ServerLedger::new(s.max_conns, s.state)))
                .collect(),
            queued: AtomicU32::new(0),
            next_ticket: AtomicU64::new(0),
            heads: (0..workers.max(1))
                .map(|_| AtomicU64::new(NO_TICKET))
                .collect(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The group's usability epoch (see the field).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(SeqCst)
    }

    /// Some server of the group may have stopped (or started) being usable.
    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, SeqCst);
    }

    /// Whether an idle pooled connection holds the slot of a full server of this group.
    pub(crate) fn idle_holds_slot(&self) -> bool {
        self.servers.iter().any(|s| s.idle_holds_slot())
    }

    /// Requests waiting in every worker's queue.
    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(SeqCst)
    }

    /// Takes a place in the queue if fewer than `cap` wait: the request's ticket.
    pub(crate) fn try_enqueue(&self, cap: usize) -> Option<u64> {
        let cap = u32::try_from(cap).unwrap_or(u32::MAX);
        self.queued
            .fetch_update(SeqCst, SeqCst, |n| (n < cap).then_some(n + 1))
            .ok()?;
        Some(self.next_ticket.fetch_add(1, SeqCst))
    }

    /// A place in the queue is given up (dispatched, timed out, or its client left).
    pub(crate) fn dequeued(&self) {
        let _ = self
            .queued
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
    }

    /// Publishes the ticket at the head of `worker`'s queue (`None`: empty).
    pub(crate) fn set_head(&self, worker: usize, ticket: Option<u64>) {
        if let Some(h) = self.heads.get(worker) {
            h.store(ticket.unwrap_or(NO_TICKET), SeqCst);
        }
    }

    /// The worker whose queue head holds the smallest ticket, if any queue is non-empty.
    pub(crate) fn first_in_line(&self) -> Option<usize> {
        let (w, t) = self
            .heads
            .iter()
            .map(|h| h.load(SeqCst))
            .enumerate()
            .min_by_key(|&(_, t)| t)?;
        (t != NO_TICKET).then_some(w)
    }
}

impl Shared {
    /// The ledger for `config`'s groups and servers, for `workers` workers (each core gets an
    /// index below it). Servers start in their configured `state`.
    pub fn new(config: &Config, workers: usize) -> Shared {
        Shared {
            inner: Arc::new(Ledger {
                groups: config
                    .upstreams
                    .iter()
                    .map(|u| Arc::new(GroupLedger::new(u, workers)))
                    .collect(),
                wakers: Mutex::new((0..workers.max(1)).map(|_| None).collect()),
                linked: Mutex::default(),
                has_links: AtomicBool::new(false),
            }),
        }
    }

    /// The ledger of a new generation (a reload): like [`Shared::new`], but a server that keeps
    /// its group name and address keeps a state set at run time (one that differs from what the
    /// old configuration said): the operator's last word survives a reload. Otherwise the new
    /// configuration's `state` applies.
    pub fn carried_over(
        config: &Config,
        workers: usize,
        previous: &Shared,
        old: &Config,
    ) -> Shared {
        let next = Shared::new(config, workers);
        for k in kept_servers(config, old) {
            let Some(old_ledger) = previous.server_ledger(k.old) else {
                continue;
            };
            let was = old_ledger.state();
            // What was last reported of it (a server still out is not reported again).
            next.inner.groups[k.new.0].servers[k.new.1]
                .reported_out
                .store(old_ledger.reported_out.load(SeqCst), SeqCst);
            // The checks' verdict and counts belong to the server, not the generation — while
            // the group is still checked: a verdict nothing would clear again is not kept.
            if let Some(h) = &config.upstreams[k.new.0].health_check {
                let then = old.upstreams[k.old.0].health_check.as_ref();
                let same_interval = then.is_some_and(|o| o.interval == h.interval);
                next.inner.groups[k.new.0].servers[k.new.1].carry_checks(old_ledger, same_interval);
            }
            if was != old.upstreams[k.old.0].servers[k.old.1].state {
                next.inner.groups[k.new.0].servers[k.new.1]
                    .state
                    .store(state_code(was), SeqCst);
            }
        }
        next
    }

    /// The ledger of a new generation that runs *beside* `previous` while the old one drains
    /// (the smol `Client` re-resolving its names): a server that keeps its group name, address
    /// and `max_conns` keeps its very entry — connections open, requests in flight, passive
    /// health and run-time state — so `max_conns` holds over both generations together (the
    /// old generation's in-flight requests count against the new one's slots) and a slot either
    /// frees is seen by both. Its state follows [`Shared::carried_over`]'s rule: a state set at
    /// run time stays, otherwise the new configuration's `state` applies. Every other server
    /// (and every group's queue) starts afresh.
    pub fn continued(config: &Config, workers: usize, previous: &Shared, old: &Config) -> Shared {
        let mut next = Shared::new(config, workers);
        let ledger = Arc::get_mut(&mut next.inner).expect("a ledger just made is ours alone");
        for k in kept_servers(config, old) {
            let Some(entry) = previous.server_ledger(k.old) else {
                continue;
            };
            let (then, now) = (
                &old.upstreams[k.old.0].servers[k.old.1],
                &config.upstreams[k.new.0].servers[k.new.1],
            );
            if entry.max_conns != now.max_conns {
                continue;
            }
            if entry.state() == then.state && now.state != then.state {
                entry.state.store(state_code(now.state), SeqCst);
            }
            // A group no longer checked: nothing would clear a failed verdict again (the old
            // generation drains, and a draining core runs no checks).
            if config.upstreams[k.new.0].health_check.is_none() {
                entry.forget_checks();
            }
            let group = Arc::get_mut(&mut ledger.groups[k.new.0])
                .expect("a ledger just made is ours alone");
            group.servers[k.new.1] = entry.clone();
        }
        // Both ways: a slot either generation frees in a kept entry wakes the other's queue.
        // Linked directly to every generation still alive, not only to `previous`: after quick
        // reloads a generation in between may be gone (its workers exited) while an older one
        // still drains and shares the entry — a chain through it would be cut there.
        let mut alive = previous.linked_ledgers();
        alive.push(previous.inner.clone());
        for other in &alive {
            for (from, to) in [(other, &next.inner), (&next.inner, other)] {
                let mut linked = from.linked.lock().unwrap_or_else(|e| e.into_inner());
                linked.retain(|l| l.strong_count() > 0);
                linked.push(Arc::downgrade(to));
                from.has_links.store(true, SeqCst);
            }
        }
        next
    }

    /// Whether a request waits, in a ledger linked to this one ([`Shared::continued`],
    /// transitively), in a group that counts server `index` of `group` in the very same entry:
    /// an idle connection of this ledger holding that server's slot keeps it from that request.
    pub(crate) fn wanted_by_linked(&self, group: usize, index: usize) -> bool {
        let Some(entry) = self.server_ledger((group, index)) else {
            return false;
        };
        self.linked_ledgers().iter().any(|l| {
            l.groups
                .iter()
                .any(|g| g.queued() > 0 && g.servers.iter().any(|s| Arc::ptr_eq(s, entry)))
        })
    }

    /// Whether a ledger was ever [continued](Shared::continued) from this one or this one from
    /// another (one atomic load).
    pub(crate) fn has_links(&self) -> bool {
        self.inner.has_links.load(SeqCst)
    }

    /// The ledgers linked to this one, transitively (not itself); none but rarely.
    fn linked_ledgers(&self) -> Vec<Arc<Ledger>> {
        if !self.has_links() {
            return Vec::new();
        }
        let mut seen: Vec<*const Ledger> = vec![Arc::as_ptr(&self.inner)];
        let mut out: Vec<Arc<Ledger>> = Vec::new();
        let mut i = 0;
        let mut from: Arc<Ledger> = self.inner.clone();
        loop {
            {
                let mut linked = from.linked.lock().unwrap_or_else(|e| e.into_inner());
                // Generations that are gone: forgotten, and once none is left the hot paths
                // are back to one atomic load (a link is only ever added under this lock).
                linked.retain(|l| l.strong_count() > 0);
                if linked.is_empty() {
                    from.has_links.store(false, SeqCst);
                }
                for next in linked.iter().filter_map(Weak::upgrade) {
                    if !seen.contains(&Arc::as_ptr(&next)) {
                        seen.push(Arc::as_ptr(&next));
                        out.push(next);
                    }
                }
            }
            let Some(next) = out.get(i) else {
                return out;
            };
            from = next.clone();
            i += 1;
        }
    }

    /// Whether a request waits in any ledger linked to this one (cheap when none is).
    pub(crate) fn linked_waiting(&self) -> bool {
        self.has_links()
            && self
                .linked_ledgers()
                .iter()
                .any(|l| l.groups.iter().any(|g| g.queued() > 0))
    }

    /// A `max_conns` slot of this ledger was given back: the worker first in line of every
    /// group of the ledgers linked to it ([`Shared::continued`], transitively) is woken too —
    /// they count the kept servers in the same entries, and their own ledgers' wakers never
    /// hear of a slot freed here (a request of the new server set waiting in another worker
    /// while the old set's connection closes). Cheap when nothing is linked.
    pub(crate) fn wake_linked(&self) {
        for l in self.linked_ledgers() {
            let other = Shared { inner: l };
            for g in &other.inner.groups {
                if g.queued() > 0
                    && let Some(w) = g.first_in_line()
                {
                    other.wake(w);
                }
            }
        }
    }

    /// Every worker of every ledger linked to this one ([`Shared::continued`], transitively):
    /// a request here found no room, and an idle connection of another generation may hold
    /// the slot it waits for — that generation's workers (other threads than this ledger's,
    /// in the mio runtime) only give it up ([`Core::handle_shared`](crate::Core::handle_shared))
    /// once told. Cheap when nothing is linked.
    pub(crate) fn wake_linked_workers(&self) {
        for l in self.linked_ledgers() {
            Shared { inner: l }.wake_others(usize::MAX);
        }
    }

    /// Server `index` of group `group`'s entry.
    fn server_ledger(&self, (group, index): (usize, usize)) -> Option<&Arc<ServerLedger>> {
        self.inner.groups.get(group)?.servers.get(index)
    }

    /// Whether `self` and `other` are the same ledger (one generation of the process).
    pub fn same(&self, other: &Shared) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A connection [handed over](crate::Output::HandOver) under this ledger found no core of
    /// it to adopt it (the receiving worker's generation finished meanwhile): the runtime has
    /// closed its socket. Its `max_conns` slot goes back and the worker first in line is woken
    /// — what [`Core::hand_over_failed`](crate::Core::hand_over_failed) does when the sender
    /// learns it at once.
    pub fn hand_over_lost(&self, handed: &crate::Handed) {
        let Some(g) = self.inner.groups.get(handed.server.upstream.0 as usize) else {
            return;
        };
        let Some(s) = g.servers.get(handed.server.index as usize) else {
            return;
        };
        s.closed();
        if g.queued() > 0
            && let Some(w) = g.first_in_line()
        {
            self.wake(w);
        }
        self.wake_linked();
    }

    /// Registers the wake-up call of `worker`: called (from any worker's thread) when that
    /// worker should call [`Core::handle_shared`](crate::Core::handle_shared). Keep it short
    /// and non-blocking (a `mio::Waker::wake`, an event notification).
    pub fn set_waker(&self, worker: usize, waker: Waker) {
        let mut w = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = w.get_mut(worker) {
            *slot = Some(waker);
        }
    }

    /// Wakes `worker` (nothing if it registered no waker).
    pub(crate) fn wake(&self, worker: usize) {
        let w = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(f)) = w.get(worker) {
            f();
        }
    }

    /// Wakes every worker but `except`.
    pub(crate) fn wake_others(&self, except: usize) {
        let w = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        for (i, f) in w.iter().enumerate() {
            if i != except
                && let Some(f) = f
            {
                f();
            }
        }
    }

    /// Whether this ledger was made for `config` (same groups, same number of servers each) and
    /// has room for worker `worker`.
    pub fn fits(&self, config: &Config, worker: usize) -> Result<(), ConfigError> {
        let shape = |c: &Config| {
            c.upstreams
                .iter()
                .map(|u| u.servers.len())
                .collect::<Vec<_>>()
        };
        let mine: Vec<usize> = self.inner.groups.iter().map(|g| g.servers.len()).collect();
        if mine != shape(config) {
            return Err(ConfigError::new(
                "upstream",
                "the shared ledger was made for another configuration's groups",
            ));
        }
        if worker >= self.workers() {
            return Err(ConfigError::new(
                "workers",
                format!("worker {worker} of a ledger made for {}", self.workers()),
            ));
        }
        Ok(())
    }

    /// Number of workers the ledger was made for.
    pub fn workers(&self) -> usize {
        self.inner.wakers.lock().map_or(1, |w| w.len())
    }

    pub(crate) fn group(&self, g: usize) -> &Arc<GroupLedger> {
        &self.inner.groups[g]
    }

    /// The administrative state of server `index` of group `group` (None: no such server).
    pub fn state(&self, group: usize, index: usize) -> Option<ServerState> {
        let s = self.inner.groups.get(group)?.servers.get(index)?;
        Some(s.state())
    }

    /// Sets the administrative state of a server for every worker and wakes them all, so each
    /// closes its idle pooled connections to a server that stopped being usable and dispatches
    /// waiting requests to one that came back. Returns the new state (None: no such server).
    pub fn set_state(&self, group: usize, index: usize, state: ServerState) -> Option<ServerState> {
        let g = self.inner.groups.get(group)?;
        g.servers.get(index)?.state.store(state_code(state), SeqCst);
        g.bump();
        self.wake_others(usize::MAX);
        Some(state)
    }

    /// A view of one server for operators.
    pub fn server(&self, group: usize, index: usize, now: Time) -> Option<ServerView> {
        let s = self.inner.groups.get(group)?.servers.get(index)?;
        let passive_down = s.fails.load(SeqCst) > 0 && now.0 < s.down_until.load(SeqCst);
        Some(ServerView {
            state: s.state(),
            healthy: !passive_down && !s.check_failed(),
            inflight: s.inflight(),
            conns: s.conns(),
            idle: s.idle.load(SeqCst),
        })
    }

    /// The active health checks of one server: results so far and the verdict (None: no such
    /// server). All zero for a group without `health_check`.
    pub fn checks(&self, group: usize, index: usize) -> Option<CheckView> {
        let s = self.inner.groups.get(group)?.servers.get(index)?;
        Some(CheckView {
            results: core::array::from_fn(|i| s.check_results[i].load(SeqCst)),
            streak: s.streak(),
            changes: s.check_changes.load(SeqCst),
        })
    }

    /// Requests waiting in group `group`'s queue, every worker together.
    pub fn queued(&self, group: usize) -> u32 {
        self.inner.groups.get(group).map_or(0, |g| g.queued())
    }
}

/// A server both configurations have: same group name, same address (group, index in each).
struct Kept {
    new: (usize, usize),
    old: (usize, usize),
}

/// Every server of `config` that `old` has too (see [`Kept`]).
fn kept_servers(config: &Config, old: &Config) -> Vec<Kept> {
    let mut kept = Vec::new();
    for (g, up) in config.upstreams.iter().enumerate() {
        let Some(og) = old.upstreams.iter().position(|o| o.name == up.name) else {
            continue;
        };
        for (i, s) in up.servers.iter().enumerate() {
            if let Some(oi) = old.upstreams[og]
                .servers
                .iter()
                .position(|o| o.addr == s.addr)
            {
                kept.push(Kept {
                    new: (g, i),
                    old: (og, oi),
                });
            }
        }
    }
    kept
}

/// What an operator sees of one server ([`Shared::server`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerView {
    /// Administrative state.
    pub state: ServerState,
    /// Neither passive health nor the active checks hold it out right now.
    pub healthy: bool,
    /// Requests in flight, every worker together.
    pub inflight: u32,
    /// Connections open (busy or idle), every worker together.
    pub conns: u32,
    /// Idle pooled connections, every worker together.
    pub idle: u32,
}

/// What the active health checks say of one server ([`Shared::checks`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckView {
    /// Checks run, by result (index: [`CheckResult`] as usize), every worker together.
    pub results: [u64; CheckResult::COUNT],
    /// The current run of results and the verdict.
    pub streak: Streak,
    /// Times the verdict changed.
    pub changes: u64,
}

impl CheckView {
    /// Checks that ended with `result`.
    pub fn count(&self, result: CheckResult) -> u64 {
        self.results[result as usize]
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("groups", &self.inner.groups)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Address, ServerConfig};

    fn cfg(max_conns: u32) -> UpstreamConfig {
        let mut s = ServerConfig::new(Address::parse("127.0.0.1:9").unwrap());
        s.max_conns = max_conns;
        UpstreamConfig::new("g", vec![s])
    }

    #[test]
    fn slots_never_exceed_the_cap() {
        let g = GroupLedger::new(&cfg(2), 1);
        let s = &g.servers[0];
        assert!(s.try_open() && s.try_open());
        assert!(!s.try_open());
        s.closed();
        assert!(s.try_open());
        let g = GroupLedger::new(&cfg(0), 1);
        assert!((0..100).all(|_| g.servers[0].try_open()));
    }

    #[test]
    fn queue_bound_and_first_in_line() {
        let g = GroupLedger::new(&cfg(1), 3);
        assert_eq!(g.first_in_line(), None);
        let a = g.try_enqueue(2).unwrap();
        let b = g.try_enqueue(2).unwrap();
        assert!(a < b);
        assert_eq!(g.try_enqueue(2), None, "full");
        g.set_head(2, Some(b));
        g.set_head(1, Some(a));
        assert_eq!(g.first_in_line(), Some(1));
        g.set_head(1, None);
        g.dequeued();
        assert_eq!(g.first_in_line(), Some(2));
        assert!(g.try_enqueue(2).is_some());
    }

    #[test]
    fn one_claim_per_check_round_and_the_verdict_survives_a_reload() {
        let a = Config::simple(
            Address::parse("127.0.0.1:8080").unwrap(),
            vec![Address::parse("127.0.0.1:9001").unwrap()],
        );
        let mut checked = a.clone();
        checked.upstreams[0].health_check = Some(crate::config::HealthCheck::default());
        let shared = Shared::new(&checked, 2);
        let s = &shared.group(0).servers[0];
        let second = core::time::Duration::from_secs(1);
        assert!(s.claim_check(Time::from_millis(5), second), "due at once");
        assert!(
            !s.claim_check(Time::from_millis(5), second),
            "claimed already"
        );
        assert!(
            !s.claim_check(Time::from_millis(1004), second),
            "not due yet"
        );
        assert!(s.claim_check(Time::from_millis(1005), second));
        assert_eq!(s.next_check(), Time::from_millis(2005));
        assert_eq!(s.check_done(CheckResult::Timeout, 1, 1), Some(true));
        assert_eq!(
            shared.server(0, 0, Time::ZERO).map(|v| v.healthy),
            Some(false)
        );
        let next = Shared::carried_over(&checked, 2, &shared, &checked);
        let v = next.checks(0, 0).unwrap();
        assert!(v.streak.failed);
        assert_eq!((v.count(CheckResult::Timeout), v.changes), (1, 1));
        assert_eq!(
            next.group(0).servers[0].next_check(),
            Time::from_millis(2005)
        );
        // A new interval: the verdict stays, the first round is due at once (not at the end
        // of the old, longer interval).
        let mut faster = checked.clone();
        faster.upstreams[0].health_check.as_mut().unwrap().interval =
            core::time::Duration::from_millis(100);
        faster.upstreams[0].health_check.as_mut().unwrap().timeout =
            core::time::Duration::from_millis(100);
        let next = Shared::carried_over(&faster, 2, &shared, &checked);
        assert!(next.checks(0, 0).unwrap().streak.failed);
        assert_eq!(next.group(0).servers[0].next_check(), Time::ZERO);
        // Checks turned off by the new file: nothing would clear the verdict, so it is not kept.
        let off = Shared::carried_over(&a, 2, &shared, &checked);
        assert_eq!(off.checks(0, 0).unwrap(), CheckView::default());
        assert_eq!(off.server(0, 0, Time::ZERO).map(|v| v.healthy), Some(true));
    }

    #[test]
    fn run_time_state_survives_a_reload() {
        let mut a = Config::simple(
            Address::parse("127.0.0.1:8080").unwrap(),
            vec![
                Address::parse("127.0.0.1:9001").unwrap(),
                Address::parse("127.0.0.1:9002").unwrap(),
            ],
        );
        let shared = Shared::new(&a, 2);
        shared.set_state(0, 1, ServerState::Drain).unwrap();
        // The new file swaps the servers' order and sets the first one down.
        let mut b = a.clone();
        b.upstreams[0].servers.reverse();
        b.upstreams[0].servers[1].state = ServerState::Down;
        let next = Shared::carried_over(&b, 2, &shared, &a);
        assert_eq!(
            next.state(0, 0),
            Some(ServerState::Drain),
            "run-time drain kept"
        );
        assert_eq!(
            next.state(0, 1),
            Some(ServerState::Down),
            "the file's new state"
        );
        a.upstreams.clear();
        assert_eq!(next.state(1, 0), None);
    }

    #[test]
    fn a_continued_generation_counts_kept_servers_in_the_same_entry() {
        let a = |s: &str| Address::parse(s).unwrap();
        let mut old = Config::simple(a("127.0.0.1:8080"), vec![a("127.0.0.1:9001")]);
        old.upstreams[0].servers[0].max_conns = 1;
        old.upstreams[0]
            .servers
            .push(ServerConfig::new(a("127.0.0.2:9001")));
        let previous = Shared::new(&old, 1);
        assert!(previous.group(0).servers[0].try_open(), "one in flight");
        // Re-resolution: 127.0.0.2 gone, 127.0.0.3 new, 127.0.0.1 kept (now listed second).
        let mut new = old.clone();
        new.upstreams[0].servers[1].addr = a("127.0.0.1:9001");
        new.upstreams[0].servers[1].max_conns = 1;
        new.upstreams[0].servers[0] = ServerConfig::new(a("127.0.0.3:9001"));
        let next = Shared::continued(&new, 1, &previous, &old);
        let kept = &next.group(0).servers[1];
        assert!(
            !kept.try_open(),
            "the old generation's connection holds the only slot"
        );
        previous.group(0).servers[0].closed();
        assert!(kept.try_open(), "the slot it freed is the new generation's");
        assert!(
            next.group(0).servers[0].try_open(),
            "a new server starts empty"
        );
        // A different cap is a new entry.
        new.upstreams[0].servers[1].max_conns = 2;
        let other = Shared::continued(&new, 1, &previous, &old);
        assert_eq!(other.group(0).servers[1].conns(), 0);
    }

    #[test]
    fn linked_generations_are_forgotten_once_gone() {
        let a = |s: &str| Address::parse(s).unwrap();
        let cfg = Config::simple(a("127.0.0.1:8080"), vec![a("127.0.0.1:9001")]);
        let previous = Shared::new(&cfg, 1);
        assert!(!previous.has_links());
        let next = Shared::continued(&cfg, 1, &previous, &cfg);
        assert!(previous.has_links() && next.has_links());
        assert!(!next.linked_waiting());
        assert!(previous.group(0).try_enqueue(4).is_some());
        assert!(next.linked_waiting(), "the old generation's queue is seen");
        drop(previous);
        assert!(!next.linked_waiting());
        assert!(!next.has_links(), "back to the one atomic load");
    }
}
