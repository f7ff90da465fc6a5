//! Several workers of one process: a [`Harness`] per worker, their cores sharing one ledger
//! ([`Shared`]), wake-up flags standing in for the runtime's wakers, and the idle connections
//! handed between workers ([`Output::HandOver`](crate::Output::HandOver)) carried across like
//! the runtimes' command channels do — all driven by the test, in whatever order it chooses,
//! so the interleavings of a real process (a wake-up before the connection it announces, a
//! connection arriving after its request left) can be played deterministically.
//!
//! [`Process::check_invariants`] holds the rules of the shared ledger across workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::harness::{Harness, InFlight};
use crate::{Config, Core, Shared, UpstreamId};

/// The workers of one process (see the module docs).
#[derive(Debug)]
pub struct Process {
    /// One harness per worker, in worker order.
    pub workers: Vec<Harness>,
    /// Per worker: its waker fired and it has not handled it yet.
    pub woken: Vec<Arc<AtomicBool>>,
}

impl Process {
    /// `n` workers of `config` sharing one ledger (worker `w` seeded with `w`).
    pub fn new(config: Config, n: usize) -> Process {
        let shared = Shared::new(&config, n);
        let mut workers = Vec::new();
        let mut woken = Vec::new();
        for w in 0..n {
            let flag = Arc::new(AtomicBool::new(false));
            let f = flag.clone();
            shared.set_waker(w, Box::new(move || f.store(true, Ordering::SeqCst)));
            woken.push(flag);
            let core = Core::with_shared(config.clone(), w as u64, shared.clone(), w)
                .expect("valid config");
            workers.push(Harness::with_core(core));
        }
        Process { workers, woken }
    }

    /// Starts every worker's core (warm connections, check rounds) and acts on the outputs.
    pub fn start(&mut self) {
        for h in &mut self.workers {
            let now = h.now;
            h.core.start(now);
            h.pump();
        }
    }

    /// Delivers one connection worker `from` handed over (its oldest), to the worker it was
    /// handed to; false if none is on its way from there.
    pub fn deliver_one(&mut self, from: usize) -> bool {
        if self.workers[from].handed_out.is_empty() {
            return false;
        }
        let m: InFlight = self.workers[from].handed_out.remove(0);
        let to = m.to_worker;
        // A server of the same configuration: always adopted (perhaps closed at once).
        let _ = self.workers[to].adopt_handed(m);
        true
    }

    /// Delivers every connection on its way between workers (what the runtimes' command
    /// channels do); true if there were any.
    pub fn deliver_handed(&mut self) -> bool {
        let mut any = false;
        for w in 0..self.workers.len() {
            while self.deliver_one(w) {
                any = true;
            }
        }
        any
    }

    /// Lets worker `w` act on its wake-up ([`Core::handle_shared`]) if it was woken.
    pub fn wake(&mut self, w: usize) -> bool {
        if !self.woken[w].swap(false, Ordering::SeqCst) {
            return false;
        }
        let h = &mut self.workers[w];
        let now = h.now;
        h.core.handle_shared(now);
        h.pump();
        true
    }

    /// Delivers handed connections, then wake-ups, for at most `rounds` rounds; false if they
    /// never stopped (a livelock). A runtime sends a handed connection before it wakes the
    /// receiver, so each round delivers connections first.
    pub fn settle_within(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let mut any = self.deliver_handed();
            for w in 0..self.workers.len() {
                any |= self.wake(w);
            }
            if !any {
                return true;
            }
        }
        false
    }

    /// Upstream connections open in the whole process: idle, busy, connecting, and on their
    /// way between workers.
    pub fn open(&self) -> usize {
        self.workers
            .iter()
            .map(|h| h.upstreams.values().filter(|e| !e.closed).count() + h.handed_out.len())
            .sum()
    }

    /// Handovers and adoptions counted by every worker together, over every group.
    pub fn handovers(&self) -> (u64, u64) {
        let mut t = (0, 0);
        for h in &self.workers {
            for g in &h.core.stats().groups {
                t.0 += g.handovers;
                t.1 += g.handovers_adopted;
            }
        }
        t
    }

    /// The ledger's rules across workers; panics with what broke. Call with every worker's
    /// outputs taken (the harnesses pump after every input). Per server, the ledger counts
    /// exactly the connections open to it in the whole process — those on their way between
    /// workers included — and never more than `max_conns`, and counts as idle exactly the
    /// connections idle in the workers' pools; per group, its queue length is the workers'
    /// queues together.
    pub fn check_invariants(&self) {
        let problems = ledger_problems(&self.workers);
        assert!(
            problems.is_empty(),
            "ledger invariant broken:\n  - {}",
            problems.join("\n  - ")
        );
    }
}

/// What is wrong with the ledger shared by the cores of `workers` (the workers of one process,
/// every output taken): the rules of [`Process::check_invariants`], one line per break (also
/// checked for the single core of a `World`).
pub(crate) fn ledger_problems(workers: &[Harness]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(first) = workers.first() else {
        return problems;
    };
    let now = first.now;
    let shared = first.core.shared();
    for (i, &server) in first.core.servers().iter().enumerate() {
        let (g, idx) = (server.upstream.0 as usize, server.index as usize);
        let Some(view) = shared.server(g, idx, now) else {
            problems.push(format!("server {i} is not in the ledger"));
            continue;
        };
        let mut open = 0;
        let mut idle = 0;
        for h in workers {
            for (id, e) in &h.upstreams {
                if !e.closed && e.server == Some(server) {
                    open += 1;
                    idle += usize::from(h.core.is_pooled(*id));
                }
            }
            open += h
                .handed_out
                .iter()
                .filter(|m| m.handed.server == server)
                .count();
        }
        if view.conns as usize != open {
            problems.push(format!(
                "server {i}: the ledger counts {} connections, {open} are open",
                view.conns
            ));
        }
        let cap = first.core.config().upstreams[g].servers[idx].max_conns;
        if cap > 0 && view.conns > cap {
            problems.push(format!(
                "server {i}: {} connections over max_conns = {cap}",
                view.conns
            ));
        }
        if view.idle as usize != idle {
            problems.push(format!(
                "server {i}: the ledger counts {} idle connections, the pools hold {idle}",
                view.idle
            ));
        }
    }
    for g in 0..first.core.config().upstreams.len() {
        let queued: usize = workers
            .iter()
            .map(|h| h.core.queued(UpstreamId(g as u32)))
            .sum();
        if shared.queued(g) as usize != queued {
            problems.push(format!(
                "group {g}: the ledger's queue holds {}, the workers' queues {queued}",
                shared.queued(g)
            ));
        }
    }
    problems
}
