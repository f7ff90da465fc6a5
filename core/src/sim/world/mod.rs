//! A seeded, deterministic world of scripted clients and backends around a [`Harness`].
//!
//! The test (or proptest, or a fuzzer) feeds [`Action`]s to [`World::apply`]; after each one the
//! world drives every peer to quiescence: fake backends parse and answer what they received,
//! fake clients parse the responses they got and check each one against the request it answers.
//! [`World::check_invariants`] then panics with a readable report (seed + actions so far) if the
//! engine broke a rule. Everything is plain data and `BTreeMap`s: the same seed and actions give
//! the same trace, byte for byte ([`World::trace_digest`]).
//!
//! Request ids are paths, `/c{client}/r{n}`; backends echo them in an `X-Req-Id` header and in the
//! body, so a client can tell its own response from anyone else's.
//!
//! | module | holds |
//! |---|---|
//! | `script` | the scenario as data: [`BackendScript`], [`Action`], [`ReqKind`], [`BackendEvent`] |
//! | `client` | the scripted clients: what they send, and the check of every response they get |
//! | `backend` | the scripted backends: what they read, how they answer, when they close |
//! | `schedule` | virtual time: peer events, core deadlines, settling to quiescence |
//! | `invariants` | the rules checked after every step, and the leak checks of [`World::finish`] |
//! | `rng` | the seeded generator behind every random choice |
//!
//! Peers read HTTP with [`super::http`], the simulation's own reader, kept apart from the
//! engine's framing so a framing bug shows up as a disagreement.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

use super::harness::Harness;
use crate::{Config, ConnId, Time};

mod backend;
mod client;
mod health;
mod invariants;
mod rng;
mod schedule;
mod script;

use backend::UpConn;
use client::{SentReq, SimClient};
use schedule::Ev;

pub use rng::Rng;
pub use script::{Action, BackendEvent, BackendScript, Framing, ReqKind, STRAY, tight_timeouts};

/// A request as a backend received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// Request id (path without query).
    pub id: String,
    /// Method token.
    pub method: String,
    /// Global server index.
    pub server: usize,
    /// Upstream connection it arrived on.
    pub conn: ConnId,
    /// The backend had already closed the connection: the request was lost, not processed.
    pub lost: bool,
    /// Time of arrival.
    pub at: Time,
}

/// Counters, for tests that want more than the invariants.
#[derive(Debug, Default, Clone)]
pub struct WorldStats {
    /// Responses received by clients, by status.
    pub statuses: BTreeMap<u16, u32>,
    /// Client connections the proxy closed with a request unanswered (explained by a cut backend
    /// response or a stalled client).
    pub truncated: u32,
    /// Requests the backends lost (arrived after they closed).
    pub lost: u32,
    /// Cut responses relayed close-delimited (the client cannot see they are incomplete).
    pub undetectable_truncations: u32,
    /// ... of which the proxy ended with a FIN rather than a reset.
    pub truncated_with_fin: u32,
}

/// The simulated network: a [`Harness`] plus scripted clients and backends.
#[derive(Debug)]
pub struct World {
    /// The runtime stand-in (and the core inside it).
    pub harness: Harness,
    /// The seed.
    pub seed: u64,
    rng: Rng,
    scripts: Vec<BackendScript>,
    /// Per server: requests received (drives `cut_every` / `reset_every`).
    server_count: Vec<u32>,
    /// Per server: health checks answered (drives `check_fails`).
    check_count: Vec<u32>,
    clients: Vec<SimClient>,
    ups: BTreeMap<ConnId, UpConn>,
    events: BTreeMap<(Time, u64), Ev>,
    ev_seq: u64,
    sent: BTreeMap<String, SentReq>,
    /// Every request any backend received, in order.
    pub arrivals: Vec<Arrival>,
    /// What the backends answered, by request id: (status, body).
    produced: BTreeMap<String, Vec<(u16, Vec<u8>)>>,
    /// Requests whose backend response was cut (reset / closed mid-response).
    cut: BTreeSet<String>,
    /// Final status each request got, by id.
    pub results: BTreeMap<String, u16>,
    /// Counters.
    pub stats: WorldStats,
    violations: Vec<String>,
    log: Vec<Action>,
    chunk: Option<usize>,
    digest: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl World {
    /// A world around `config`, with one script per server (global order: group by group).
    pub fn new(seed: u64, config: Config, backends: Vec<BackendScript>) -> World {
        let mut harness = Harness::new(config);
        harness.auto_connect = false;
        // Records are checked too (`check_records`), request ids included: a runtime with an
        // access log drives the core this way.
        harness.core.record_exchanges(true);
        harness.core.record_requests(true);
        // As the runtimes do: warm connections and the first health checks start now.
        let now = harness.now;
        harness.core.start(now);
        let n = harness.core.servers().len();
        assert_eq!(backends.len(), n, "one BackendScript per server");
        World {
            harness,
            seed,
            rng: Rng::new(seed),
            scripts: backends,
            server_count: vec![0; n],
            check_count: vec![0; n],
            clients: Vec::new(),
            ups: BTreeMap::new(),
            events: BTreeMap::new(),
            ev_seq: 0,
            sent: BTreeMap::new(),
            arrivals: Vec::new(),
            produced: BTreeMap::new(),
            cut: BTreeSet::new(),
            results: BTreeMap::new(),
            stats: WorldStats::default(),
            violations: Vec::new(),
            log: Vec::new(),
            chunk: None,
            digest: FNV_OFFSET,
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.harness.now
    }

    /// Number of clients ever connected.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The actions applied so far.
    pub fn log(&self) -> &[Action] {
        &self.log
    }

    /// Applies one action, then drives every peer to quiescence.
    pub fn apply(&mut self, action: Action) {
        self.log.push(action.clone());
        match action {
            Action::Connect { ip } => {
                self.connect(ip);
            }
            Action::Send { client, kind } => {
                if let Some(c) = self.pick_client(client) {
                    self.send(c, &[kind]);
                }
            }
            Action::Pipeline { client, kinds } => {
                if let Some(c) = self.pick_client(client) {
                    self.send(c, &kinds);
                }
            }
            Action::Close { client } => {
                if let Some(c) = self.pick_existing(client) {
                    let cl = &mut self.clients[c];
                    if !cl.eof_sent && !cl.reset {
                        cl.eof_sent = true;
                        cl.no_more = true;
                        let conn = cl.conn;
                        self.harness.client_eof(conn);
                    }
                }
            }
            Action::Reset { client } => {
                if let Some(c) = self.pick_existing(client) {
                    let cl = &mut self.clients[c];
                    if !cl.reset && !cl.done {
                        cl.reset = true;
                        cl.no_more = true;
                        let conn = cl.conn;
                        if !self.harness.clients[&conn].closed {
                            self.harness.reset(conn);
                        }
                    }
                }
            }
            Action::Stall { client, stalled } => {
                if let Some(c) = self.pick_existing(client) {
                    let cl = &mut self.clients[c];
                    if !cl.reset && cl.stalled != stalled {
                        cl.stalled = stalled;
                        cl.ever_stalled |= stalled;
                        let conn = cl.conn;
                        if !self.harness.clients[&conn].closed {
                            self.harness.stall(conn, stalled);
                        }
                    }
                }
            }
            Action::Backend { conn, event } => self.backend_event(conn, event),
            Action::Advance { ms } => self.advance(Duration::from_millis(ms as u64)),
            Action::WriteChunk { size } => {
                let s = size.map(|s| (s as usize).max(1));
                self.chunk = s;
                self.harness.write_chunk = s;
            }
        }
        self.settle();
    }

    /// Applies every action, checking the invariants after each.
    pub fn run(&mut self, actions: &[Action]) {
        for a in actions {
            self.apply(a.clone());
            self.check_invariants();
        }
    }

    /// A peer (a client if `client`, else a backend) writes `data` to the proxy, in random pieces
    /// up to the current chunk size.
    fn write_split(&mut self, conn: ConnId, data: &[u8], client: bool) {
        let mut rest = data;
        while !rest.is_empty() {
            let k = match self.chunk {
                None => rest.len(),
                Some(max) => 1 + self.rng.below(max.min(rest.len()) as u64) as usize,
            };
            if client {
                self.harness.client_send(conn, &rest[..k]);
            } else {
                self.harness.upstream_send(conn, &rest[..k]);
            }
            rest = &rest[k..];
        }
    }

    /// A hash of the harness trace and of every byte the peers received.
    pub fn trace_digest(&self) -> u64 {
        let trace = format!("{:?}", self.harness.trace);
        let mut h = fnv(FNV_OFFSET, trace.as_bytes());
        h = fnv(h, &self.digest.to_le_bytes());
        fnv(h, &self.harness.now.0.to_le_bytes())
    }

    /// Requests of `id` the backends received (lost ones included).
    pub fn arrivals_of(&self, id: &str) -> usize {
        self.arrivals.iter().filter(|a| a.id == id).count()
    }

    /// Requests of `id` a backend took in: its arrivals not lost on a connection the backend
    /// had already closed.
    pub fn taken_in(&self, id: &str) -> usize {
        self.arrivals
            .iter()
            .filter(|a| a.id == id && !a.lost)
            .count()
    }

    /// The id of request `n` of client `c` (`/c{c}/r{n}`).
    pub fn req_id(c: usize, n: u32) -> String {
        format!("/c{c}/r{n}")
    }
}
