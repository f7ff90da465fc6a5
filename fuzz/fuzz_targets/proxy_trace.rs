//! The whole engine in the deterministic simulation, driven by an `Arbitrary` list of actions.
//!
//! Two modes (the first byte of the input picks one):
//!
//! - `Sim`: the seeded `sim::world::World` with scripted clients and backends. The fuzzer picks
//!   the seed, a configuration (1-3 servers, pool cap, pool key, balancing, short timeouts,
//!   keepalive_requests), one `BackendScript` per server (cuts, resets, idle closes with race
//!   windows, stray 408s, refused connects, delays, Keep-Alive hints, early hints, framings) and
//!   up to 64 `Action`s (requests and pipelines of every kind, client closes / resets / stalls,
//!   backend closes / resets / stray 408s / garbage, time advances, write sizes). After every
//!   action `World::check_invariants` checks the core issue's invariants — every client gets its
//!   own response and nobody else's (no cross-client bytes), the pool only holds connections at
//!   clean boundaries and within caps, no non-idempotent request reaches a backend twice, dead
//!   peers are forgotten, deadlines are never in the past — and `World::finish` checks that
//!   nothing leaks once the clients close and time passes. A quarter of the inputs (by seed)
//!   run twice and must give the same `trace_digest`.
//!
//! - `Raw`: the bare `sim::Harness` with arbitrary bytes from both sides: client bytes (or a
//!   well-formed request), backend bytes (or a well-formed response), EOFs, resets, stalls,
//!   connects accepted or refused, time advances, write sizes. Checked after every step: no
//!   panic, deadlines not in the past, pool caps, pooled connections open with nothing queued and
//!   nothing unread, no output queued for a closed peer, reset peers forgotten; at the end, with
//!   every client closed and every timeout passed, no connection and no deadline remains; and
//!   the same input gives the same output trace.
#![no_main]

use core::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use upkeep_core::config::{Balance, PoolKeyMode, ServerConfig};
use upkeep_core::sim::Harness;
use upkeep_core::sim::world::{Action, BackendScript, ReqKind, World, tight_timeouts};
use upkeep_core::{Address, Config, ConnId, Output, UpstreamId};

const MAX_ACTIONS: usize = 64;

#[derive(Arbitrary, Debug, Clone)]
struct Setup {
    /// 1..=3 servers.
    servers: u8,
    /// 0: the default (1024), else (n - 1) idle connections (0 = pooling off).
    keepalive: u8,
    pool_key_client: bool,
    balance: u8,
    short_timeouts: bool,
    next_upstream_on_timeout: bool,
    /// 0: the default (1000), else n.
    keepalive_requests: u8,
    via: bool,
}

impl Setup {
    fn servers(&self) -> usize {
        1 + (self.servers % 3) as usize
    }

    fn config(&self) -> Config {
        let addr = |port: u16| Address::Tcp(format!("127.0.0.1:{port}").parse().unwrap());
        let n = self.servers();
        let mut cfg = Config::simple(addr(8080), (0..n).map(|i| addr(9001 + i as u16)).collect());
        let g = &mut cfg.upstreams[0];
        g.servers = (0..n)
            .map(|i| ServerConfig::new(addr(9001 + i as u16)))
            .collect();
        if !self.keepalive.is_multiple_of(5) {
            g.keepalive = (self.keepalive % 5 - 1) as usize;
        }
        if self.pool_key_client {
            g.pool_key = PoolKeyMode::Client;
        }
        g.balance = match self.balance % 3 {
            0 => Balance::RoundRobin,
            1 => Balance::LeastConn,
            _ => Balance::IpHash,
        };
        if !self.keepalive_requests.is_multiple_of(4) {
            g.keepalive_requests = u32::from(self.keepalive_requests % 4);
        }
        g.next_upstream_on_timeout = self.next_upstream_on_timeout;
        if self.short_timeouts {
            // tests/sim.rs `short_timeouts`.
            tight_timeouts(&mut cfg);
        }
        if !self.via {
            cfg.headers.via = None;
        }
        cfg.validate().expect("fuzz config is valid");
        cfg
    }
}

// ------------------------------------------------------------------------------------------
// Sim mode

#[derive(Arbitrary, Debug)]
struct SimCase {
    seed: u64,
    setup: Setup,
    scripts: [BackendScript; 3],
    actions: Vec<Action>,
}

/// Bounds a script so that every input runs in milliseconds.
fn bound_script(s: &BackendScript) -> BackendScript {
    let ms = |v: Option<u64>| v.map(|v| 1 + v % 2000);
    BackendScript {
        framing: s.framing,
        body_size: s.body_size % 600,
        idle_close_ms: ms(s.idle_close_ms),
        max_requests: s.max_requests.map(|v| v % 6),
        announce_close: s.announce_close,
        stray_408_ms: ms(s.stray_408_ms),
        cut_every: s.cut_every.map(|v| v % 7),
        reset_every: s.reset_every.map(|v| v % 7),
        stray_every: s.stray_every.map(|v| v % 7),
        down: s.down,
        rejected: s.rejected,
        delay_ms: s.delay_ms % 300,
        keep_alive_hint: s.keep_alive_hint.map(|v| v % 5),
        early_hints: s.early_hints,
        race_ms: s.race_ms % 30,
        check_fails: s.check_fails,
    }
}

fn bound_kind(k: ReqKind) -> ReqKind {
    match k {
        ReqKind::Post(n) => ReqKind::Post(n % 1024),
        ReqKind::PostChunked(n) => ReqKind::PostChunked(n % 1024),
        ReqKind::PostExpect(n) => ReqKind::PostExpect(n % 1024),
        ReqKind::Put(n) => ReqKind::Put(n % 1024),
        k => k,
    }
}

fn bound_action(a: &Action) -> Action {
    match a {
        Action::Send { client, kind } => Action::Send {
            client: *client,
            kind: bound_kind(*kind),
        },
        Action::Pipeline { client, kinds } => Action::Pipeline {
            client: *client,
            kinds: kinds.iter().take(6).map(|k| bound_kind(*k)).collect(),
        },
        Action::Advance { ms } => Action::Advance { ms: ms % 70_000 },
        a => a.clone(),
    }
}

fn run_sim(case: &SimCase) -> u64 {
    let cfg = case.setup.config();
    let n = case.setup.servers();
    let scripts: Vec<BackendScript> = case.scripts[..n].iter().map(bound_script).collect();
    let mut w = World::new(case.seed, cfg, scripts);
    for a in case.actions.iter().take(MAX_ACTIONS) {
        w.apply(bound_action(a));
        w.check_invariants();
    }
    // `World::finish` allows one round of timeouts for what is still in flight; a long pipeline
    // behind a backend slower than the read timeout needs one round per request (each answered
    // 504 in turn). Let time pass until no client is in the middle of an exchange first.
    let g = &w.harness.core.config().upstreams[0];
    let round = g.read_timeout.max(g.connect_timeout).max(g.send_timeout) + Duration::from_secs(1);
    let round_ms = round.as_millis() as u32;
    for _ in 0..1024 {
        if w.harness.core.client_activity().1 == 0 {
            break;
        }
        w.apply(Action::Advance { ms: round_ms });
        w.check_invariants();
    }
    w.finish();
    w.trace_digest()
}

// ------------------------------------------------------------------------------------------
// Raw mode

#[derive(Arbitrary, Debug, Clone)]
enum RawAction {
    Connect,
    ClientBytes {
        client: u8,
        bytes: Vec<u8>,
    },
    /// A well-formed request (so the fuzzer reaches the upstream side quickly).
    ClientRequest {
        client: u8,
        kind: u8,
        body: u8,
    },
    ClientEof {
        client: u8,
    },
    ClientReset {
        client: u8,
    },
    ClientStall {
        client: u8,
        stalled: bool,
    },
    AcceptConnect,
    RefuseConnect,
    BackendBytes {
        conn: u8,
        bytes: Vec<u8>,
    },
    /// A well-formed response.
    BackendResponse {
        conn: u8,
        kind: u8,
        body: u8,
    },
    BackendEof {
        conn: u8,
    },
    BackendReset {
        conn: u8,
    },
    Advance {
        ms: u16,
    },
    WriteChunk {
        size: Option<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct RawCase {
    setup: Setup,
    actions: Vec<RawAction>,
}

fn request(kind: u8, body: u8) -> Vec<u8> {
    let n = body as usize % 64;
    let payload = "x".repeat(n);
    match kind % 8 {
        0 => "GET /a HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
        1 => "HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n".to_string(),
        2 => format!("POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n{payload}"),
        3 => format!(
            "POST /d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{payload}\r\n0\r\n\r\n"
        ),
        4 => "GET /e HTTP/1.0\r\n\r\n".to_string(),
        5 => "GET /f HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_string(),
        6 => format!(
            "PUT /g HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n"
        ),
        _ => "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            .to_string(),
    }
    .into_bytes()
}

fn response(kind: u8, body: u8) -> Vec<u8> {
    let n = body as usize % 64;
    let payload = "y".repeat(n);
    match kind % 8 {
        0 => format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n{payload}"),
        1 => format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{payload}\r\n0\r\n\r\n"
        ),
        2 => format!("HTTP/1.1 200 OK\r\n\r\n{payload}"),
        3 => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
        4 => "HTTP/1.1 100 Continue\r\n\r\n".to_string(),
        5 => {
            format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n{payload}")
        }
        6 => {
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_string()
        }
        _ => "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n".to_string(),
    }
    .into_bytes()
}

struct Raw {
    h: Harness,
    clients: Vec<ConnId>,
    /// Upstream connections whose backend EOF or reset we sent.
    backend_closed: Vec<ConnId>,
    /// Every byte each peer received, in order (for the determinism check).
    bytes: Vec<(ConnId, Vec<u8>)>,
}

impl Raw {
    fn pick(v: &[ConnId], sel: u8) -> Option<&ConnId> {
        if v.is_empty() {
            None
        } else {
            v.get(sel as usize % v.len())
        }
    }

    fn open_client(&self, sel: u8) -> Option<ConnId> {
        let open: Vec<ConnId> = self
            .clients
            .iter()
            .copied()
            .filter(|c| !self.h.clients[c].closed)
            .collect();
        Raw::pick(&open, sel).copied()
    }

    fn open_upstream(&self, sel: u8) -> Option<ConnId> {
        let open: Vec<ConnId> = self
            .h
            .upstreams
            .iter()
            .filter(|(u, ep)| ep.connected && !ep.closed && !self.backend_closed.contains(u))
            .map(|(u, _)| *u)
            .collect();
        Raw::pick(&open, sel).copied()
    }

    fn apply(&mut self, a: &RawAction) {
        match a {
            RawAction::Connect => {
                if self.clients.len() < 32 {
                    let c = self.h.connect_client();
                    self.clients.push(c);
                }
            }
            RawAction::ClientBytes { client, bytes } => {
                if let Some(c) = self.open_client(*client) {
                    self.h.client_send(c, bytes);
                }
            }
            RawAction::ClientRequest { client, kind, body } => {
                let c = match self.open_client(*client) {
                    Some(c) => c,
                    None if self.clients.len() < 32 => {
                        let c = self.h.connect_client();
                        self.clients.push(c);
                        c
                    }
                    None => return,
                };
                self.h.client_send(c, &request(*kind, *body));
            }
            RawAction::ClientEof { client } => {
                if let Some(c) = self.open_client(*client) {
                    self.h.client_eof(c);
                }
            }
            RawAction::ClientReset { client } => {
                if let Some(c) = self.open_client(*client) {
                    self.h.reset(c);
                    assert!(!self.h.core.is_open(c), "reset client {c:?} still open");
                }
            }
            RawAction::ClientStall { client, stalled } => {
                if let Some(c) = self.open_client(*client) {
                    self.h.stall(c, *stalled);
                }
            }
            RawAction::AcceptConnect => {
                self.h.accept_connect();
            }
            RawAction::RefuseConnect => {
                self.h.refuse_connect();
            }
            RawAction::BackendBytes { conn, bytes } => {
                if let Some(u) = self.open_upstream(*conn) {
                    self.h.upstream_send(u, bytes);
                }
            }
            RawAction::BackendResponse { conn, kind, body } => {
                if let Some(u) = self.open_upstream(*conn) {
                    self.h.upstream_send(u, &response(*kind, *body));
                }
            }
            RawAction::BackendEof { conn } => {
                if let Some(u) = self.open_upstream(*conn) {
                    self.backend_closed.push(u);
                    self.h.upstream_eof(u);
                }
            }
            RawAction::BackendReset { conn } => {
                if let Some(u) = self.open_upstream(*conn) {
                    self.backend_closed.push(u);
                    self.h.reset(u);
                    assert!(!self.h.core.is_open(u), "reset upstream {u:?} still open");
                }
            }
            RawAction::Advance { ms } => self.h.advance(Duration::from_millis(u64::from(*ms))),
            RawAction::WriteChunk { size } => {
                self.h.write_chunk = size.map(|s| (s as usize).max(1));
            }
        }
        self.collect();
    }

    /// The peers take what the proxy wrote to them.
    fn collect(&mut self) {
        let ids: Vec<ConnId> = self.h.clients.keys().copied().collect();
        for c in ids {
            let b = self.h.take_client(c);
            if !b.is_empty() {
                self.bytes.push((c, b));
            }
        }
        let ids: Vec<ConnId> = self.h.upstreams.keys().copied().collect();
        for u in ids {
            let b = self.h.take_upstream(u);
            if !b.is_empty() {
                self.bytes.push((u, b));
            }
        }
    }

    fn check(&self, step: usize) {
        let core = &self.h.core;
        let now = self.h.now;
        let mut problems: Vec<String> = Vec::new();
        if let Some(t) = core.poll_timeout()
            && t < now
        {
            problems.push(format!("poll_timeout {t:?} is in the past (now {now:?})"));
        }
        for (g, up) in core.config().upstreams.iter().enumerate() {
            let idle = core.pool_idle(UpstreamId(g as u32));
            if idle > up.keepalive {
                problems.push(format!("group {g}: {idle} idle > cap {}", up.keepalive));
            }
        }
        for (&u, ep) in &self.h.upstreams {
            if core.is_pooled(u) {
                if ep.closed {
                    problems.push(format!("{u:?} pooled but closed"));
                }
                if core.pending_len(u) > 0 {
                    problems.push(format!("{u:?} pooled with output queued"));
                }
                if !ep.unread.is_empty() {
                    problems.push(format!("{u:?} pooled with unread backend bytes"));
                }
                if !ep.reading {
                    problems.push(format!("{u:?} pooled without read interest"));
                }
                if self.backend_closed.contains(&u) && !ep.eof_pending {
                    problems.push(format!("{u:?} pooled after the backend closed it"));
                }
            }
            if self.backend_closed.contains(&u)
                && !ep.eof_pending
                && !ep.closed
                && ep.reading
                && core.is_open(u)
            {
                problems.push(format!("{u:?}: backend closed but the core keeps it"));
            }
        }
        for (&id, ep) in self.h.clients.iter().chain(self.h.upstreams.iter()) {
            if ep.closed && core.pending_len(id) > 0 {
                problems.push(format!("output queued for closed peer {id:?}"));
            }
        }
        assert!(problems.is_empty(), "after step {step}: {problems:#?}");
    }

    /// Every client closes; after every timeout nothing is left.
    fn finish(&mut self) {
        let ids: Vec<ConnId> = self.clients.clone();
        for c in ids {
            let ep = &self.h.clients[&c];
            if ep.closed {
                continue;
            }
            if ep.stalled {
                self.h.stall(c, false);
            }
            self.h.client_eof(c);
        }
        self.collect();
        self.check(usize::MAX);
        // Nothing answers from now on (pending connects stay pending, backends stay silent): the
        // core's own deadlines must close everything. Follow them; a connection left with no
        // deadline at all, or still open after a virtual day, is a leak.
        let start = self.h.now;
        let mut rounds = 0u32;
        while self.h.core.connections() > 0 {
            let open: Vec<(ConnId, bool)> = self
                .h
                .clients
                .iter()
                .map(|(c, e)| (*c, e.closed))
                .chain(self.h.upstreams.iter().map(|(u, e)| (*u, e.closed)))
                .filter(|(c, _)| self.h.core.is_open(*c))
                .collect();
            let Some(t) = self.h.core.poll_timeout() else {
                panic!(
                    "leak: {} connections open with no deadline after every client closed: \
                     {open:?}",
                    self.h.core.connections()
                );
            };
            rounds += 1;
            assert!(
                t.since(start) < Duration::from_secs(86_400) && rounds < 100_000,
                "leak: connections still open a virtual day after every client closed: {open:?}"
            );
            self.h
                .advance(t.since(self.h.now) + Duration::from_millis(1));
            self.collect();
            self.check(usize::MAX);
        }
        // With nothing open only housekeeping may remain: the free list's sweeps, at most two
        // (one that may still have seen buffers lent, then an idle one that frees the rest and
        // stops). A deadline beyond them is a leak, and so is a core that never goes quiet.
        for _ in 0..2 {
            let Some(t) = self.h.core.poll_timeout() else {
                break;
            };
            self.h
                .advance(t.since(self.h.now) + Duration::from_millis(1));
            assert_eq!(self.h.core.connections(), 0, "nothing opens by itself");
        }
        assert_eq!(
            self.h.core.poll_timeout(),
            None,
            "a deadline remains with nothing open"
        );
    }
}

fn run_raw(case: &RawCase) -> (Vec<Output>, Vec<(ConnId, Vec<u8>)>) {
    let mut h = Harness::new(case.setup.config());
    h.auto_connect = false;
    let mut r = Raw {
        h,
        clients: Vec::new(),
        backend_closed: Vec::new(),
        bytes: Vec::new(),
    };
    for (i, a) in case.actions.iter().take(MAX_ACTIONS).enumerate() {
        r.apply(a);
        r.check(i);
    }
    r.finish();
    (r.h.trace, r.bytes)
}

// ------------------------------------------------------------------------------------------

// One value per fuzz input, built once and consumed: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Arbitrary, Debug)]
enum Case {
    Sim(SimCase),
    Raw(RawCase),
}

fuzz_target!(|case: Case| {
    match &case {
        Case::Sim(c) => {
            let d = run_sim(c);
            if c.seed % 4 == 0 {
                assert_eq!(run_sim(c), d, "same seed and actions, different trace");
            }
        }
        Case::Raw(c) => {
            let a = run_raw(c);
            let b = run_raw(c);
            assert!(a == b, "same actions, different trace");
        }
    }
});
