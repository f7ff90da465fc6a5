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

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::harness::Harness;
use crate::config::PoolKeyMode;
use crate::{Config, ConnId, Time, UpstreamId};

// ----------------------------------------------------------------------------------------------
// RNG

/// splitmix64: small, seedable, good enough for a simulation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_5eed_5eed_5eed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

// ----------------------------------------------------------------------------------------------
// Scripts and actions

/// How a backend delimits its response bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Framing {
    /// `Content-Length`.
    #[default]
    ContentLength,
    /// `Transfer-Encoding: chunked` (the body in a few chunks).
    Chunked,
    /// No length: the body ends when the backend closes the connection.
    CloseDelimited,
}

/// What one upstream server does, as data. One per server, in the core's global server order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BackendScript {
    /// Response framing.
    pub framing: Framing,
    /// Padding added to each response body after the echoed request identifier.
    pub body_size: usize,
    /// Closes connections idle for this long (a short backend keepalive timeout).
    pub idle_close_ms: Option<u64>,
    /// Closes a connection after this many responses.
    pub max_requests: Option<u32>,
    /// With `max_requests`: announce the close with `Connection: close` on the last response.
    pub announce_close: bool,
    /// Sends a stray `408 Request Timeout` + close on connections idle for this long.
    pub stray_408_ms: Option<u64>,
    /// Every k-th request to this server: send half the response, then close (reset when the
    /// framing is close-delimited, where a FIN would look like a complete body).
    pub cut_every: Option<u32>,
    /// Every k-th request to this server: reset the connection instead of answering.
    pub reset_every: Option<u32>,
    /// Refuses connects.
    pub down: bool,
    /// Answers each request after this many ms.
    pub delay_ms: u64,
    /// Sends `Keep-Alive: timeout=N` (seconds).
    pub keep_alive_hint: Option<u32>,
    /// Sends `103 Early Hints` before each final response.
    pub early_hints: bool,
    /// Network delay of what the backend sends when it closes on its own (idle close, stray 408):
    /// the window of the keepalive race, during which the proxy can still reuse the connection.
    pub race_ms: u64,
}

impl Default for BackendScript {
    fn default() -> Self {
        BackendScript {
            framing: Framing::ContentLength,
            body_size: 32,
            idle_close_ms: None,
            max_requests: None,
            announce_close: true,
            stray_408_ms: None,
            cut_every: None,
            reset_every: None,
            down: false,
            delay_ms: 0,
            keep_alive_hint: None,
            early_hints: false,
            race_ms: 0,
        }
    }
}

/// A request a client can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ReqKind {
    /// `GET` (HTTP/1.1, persistent).
    Get,
    /// `HEAD`.
    Head,
    /// `POST` with a Content-Length body of this size.
    Post(u16),
    /// `POST` with a chunked body of this size.
    PostChunked(u16),
    /// `POST` with `Expect: 100-continue` and a Content-Length body (sent at once).
    PostExpect(u16),
    /// `PUT` (idempotent) with a Content-Length body.
    Put(u16),
    /// `GET` the backend answers with 204.
    NoContent,
    /// HTTP/1.0 `GET` without keep-alive (the connection closes after it).
    Http10,
    /// HTTP/1.0 `GET` with `Connection: keep-alive`.
    Http10KeepAlive,
    /// HTTP/1.1 `GET` with `Connection: close`.
    Close,
}

impl ReqKind {
    /// Whether the client may send more requests after this one.
    pub fn persistent(self) -> bool {
        !matches!(self, ReqKind::Http10 | ReqKind::Close)
    }
}

/// Something a backend does on one of its connections (picked by index among open ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum BackendEvent {
    /// Close the connection if it is idle.
    CloseIdle,
    /// Reset the connection (whatever its state).
    Reset,
    /// Send `408 Request Timeout` + close if idle.
    Stray408,
    /// Send garbage bytes if idle (keeping the connection open).
    Garbage,
}

/// One step of a scenario. Plain data: easy to generate with proptest or `arbitrary`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Action {
    /// A new client connects from 10.0.0.(ip % 4 + 1).
    Connect {
        /// Address selector.
        ip: u8,
    },
    /// Client (index modulo the number of clients) sends one request.
    Send {
        /// Client selector.
        client: u8,
        /// What.
        kind: ReqKind,
    },
    /// Client sends several requests in one write (truncated after a non-persistent one).
    Pipeline {
        /// Client selector.
        client: u8,
        /// What, in order.
        kinds: Vec<ReqKind>,
    },
    /// Client closes its write side (EOF).
    Close {
        /// Client selector.
        client: u8,
    },
    /// Client resets its connection.
    Reset {
        /// Client selector.
        client: u8,
    },
    /// Client stops (or resumes) reading.
    Stall {
        /// Client selector.
        client: u8,
        /// Stop (true) or resume (false).
        stalled: bool,
    },
    /// A backend event on an open upstream connection (index modulo their number).
    Backend {
        /// Connection selector.
        conn: u8,
        /// What.
        event: BackendEvent,
    },
    /// Virtual time passes.
    Advance {
        /// Milliseconds.
        ms: u32,
    },
    /// Largest write on the fake sockets, both directions (`None` = unlimited). Peers split
    /// their writes into random pieces up to this size.
    WriteChunk {
        /// Size.
        size: Option<u8>,
    },
}

// ----------------------------------------------------------------------------------------------
// Records

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

#[derive(Debug, Clone)]
struct SentReq {
    client: usize,
    method: &'static str,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Pending {
    id: String,
    head_only: bool,
}

#[derive(Debug)]
struct SimClient {
    num: usize,
    conn: ConnId,
    ip: IpAddr,
    next: u32,
    outstanding: VecDeque<Pending>,
    inbuf: Vec<u8>,
    /// No more requests: a non-persistent request was sent, EOF was sent, or a response said close.
    no_more: bool,
    /// Requests after the one whose response announced a close may go unanswered.
    dropped_ok: usize,
    eof_sent: bool,
    reset: bool,
    stalled: bool,
    ever_stalled: bool,
    /// The proxy closed or shut down its side and we handled it.
    done: bool,
}

#[derive(Debug)]
struct Job {
    id: String,
    method: String,
    body: Vec<u8>,
    no_content: bool,
    close: bool,
}

#[derive(Debug)]
struct UpConn {
    server: usize,
    group: usize,
    inbuf: Vec<u8>,
    queue: VecDeque<Job>,
    busy: bool,
    served: u32,
    last_active: Time,
    /// The backend closed (or reset) its side.
    closed: bool,
    fin_delivered: bool,
    /// Data arrived after the backend closed: deliver a reset rather than a FIN.
    lost_data: bool,
    announced_close: bool,
    close_delimited: bool,
    /// The core closed it.
    gone: bool,
    ids: Vec<String>,
    xff: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    IdleCheck(ConnId),
    Respond(ConnId),
    Deliver(ConnId, Vec<u8>),
    Fin(ConnId),
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

/// Timeouts short enough for a simulation to hit every one of them within a few simulated
/// seconds: upstream read/send 150 ms, connect 100 ms, pool idle 300 ms, connection lifetime
/// 1 s (on every group), client timeouts 400 ms, lingering 100 ms.
pub fn tight_timeouts(cfg: &mut Config) {
    for g in &mut cfg.upstreams {
        g.read_timeout = Duration::from_millis(150);
        g.send_timeout = Duration::from_millis(150);
        g.connect_timeout = Duration::from_millis(100);
        g.keepalive_timeout = Duration::from_millis(300);
        g.keepalive_time = Duration::from_millis(1000);
    }
    let t = &mut cfg.client_timeouts;
    t.keepalive = Duration::from_millis(400);
    t.send = Duration::from_millis(400);
    t.header = Duration::from_millis(400);
    t.body = Duration::from_millis(400);
    t.lingering = Duration::from_millis(100);
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
        let n = harness.core.servers().len();
        assert_eq!(backends.len(), n, "one BackendScript per server");
        World {
            harness,
            seed,
            rng: Rng::new(seed),
            scripts: backends,
            server_count: vec![0; n],
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

    // ----- clients -----

    fn connect(&mut self, ip: u8) -> usize {
        let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip % 4 + 1));
        let num = self.clients.len();
        let conn =
            match self
                .harness
                .core
                .accept(self.harness.now, crate::ListenerId(0), Some(addr))
            {
                Ok(c) => c,
                Err(_) => panic!("accept refused"),
            };
        self.harness.clients.insert(
            conn,
            super::Endpoint {
                reading: true,
                ..Default::default()
            },
        );
        self.harness.pump();
        self.clients.push(SimClient {
            num,
            conn,
            ip: addr,
            next: 0,
            outstanding: VecDeque::new(),
            inbuf: Vec::new(),
            no_more: false,
            dropped_ok: 0,
            eof_sent: false,
            reset: false,
            stalled: false,
            ever_stalled: false,
            done: false,
        });
        num
    }

    /// A client able to send (connecting a new one if the chosen one cannot).
    fn pick_client(&mut self, sel: u8) -> Option<usize> {
        if !self.clients.is_empty() {
            let c = sel as usize % self.clients.len();
            let cl = &self.clients[c];
            if !cl.no_more && !cl.done && !cl.reset && !self.harness.clients[&cl.conn].closed {
                return Some(c);
            }
        }
        if self.clients.len() >= 64 {
            return None;
        }
        Some(self.connect(sel))
    }

    fn pick_existing(&self, sel: u8) -> Option<usize> {
        if self.clients.is_empty() {
            None
        } else {
            Some(sel as usize % self.clients.len())
        }
    }

    fn body_bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789"[self.rng.below(36) as usize])
            .collect()
    }

    fn send(&mut self, c: usize, kinds: &[ReqKind]) {
        let mut wire = Vec::new();
        for &kind in kinds {
            if self.clients[c].no_more {
                break;
            }
            let num = self.clients[c].num;
            let n = self.clients[c].next;
            self.clients[c].next += 1;
            let id = format!("/c{num}/r{n}");
            let (method, body, text) = self.request_bytes(&id, kind);
            wire.extend_from_slice(&text);
            self.sent.insert(
                id.clone(),
                SentReq {
                    client: c,
                    method,
                    body,
                },
            );
            self.clients[c].outstanding.push_back(Pending {
                id,
                head_only: method == "HEAD",
            });
            if !kind.persistent() {
                self.clients[c].no_more = true;
            }
        }
        let conn = self.clients[c].conn;
        self.write_split(conn, &wire, true);
    }

    fn request_bytes(&mut self, id: &str, kind: ReqKind) -> (&'static str, Vec<u8>, Vec<u8>) {
        let host = "Host: sim\r\n";
        match kind {
            ReqKind::Get => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.1\r\n{host}\r\n").into(),
            ),
            ReqKind::Head => (
                "HEAD",
                vec![],
                format!("HEAD {id} HTTP/1.1\r\n{host}\r\n").into(),
            ),
            ReqKind::NoContent => (
                "GET",
                vec![],
                format!("GET {id}?st=204 HTTP/1.1\r\n{host}\r\n").into(),
            ),
            ReqKind::Http10 => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.0\r\n{host}\r\n").into(),
            ),
            ReqKind::Http10KeepAlive => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.0\r\n{host}Connection: keep-alive\r\n\r\n").into(),
            ),
            ReqKind::Close => (
                "GET",
                vec![],
                format!("GET {id} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").into(),
            ),
            ReqKind::Post(n) | ReqKind::Put(n) => {
                let m = if matches!(kind, ReqKind::Post(_)) {
                    "POST"
                } else {
                    "PUT"
                };
                let body = self.body_bytes(n as usize);
                let mut t: Vec<u8> =
                    format!("{m} {id} HTTP/1.1\r\n{host}Content-Length: {n}\r\n\r\n").into();
                t.extend_from_slice(&body);
                (m, body, t)
            }
            ReqKind::PostExpect(n) => {
                let body = self.body_bytes(n as usize);
                let mut t: Vec<u8> = format!(
                    "POST {id} HTTP/1.1\r\n{host}Expect: 100-continue\r\nContent-Length: {n}\r\n\r\n"
                )
                .into();
                t.extend_from_slice(&body);
                ("POST", body, t)
            }
            ReqKind::PostChunked(n) => {
                let body = self.body_bytes(n as usize);
                let mut t: Vec<u8> =
                    format!("POST {id} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n")
                        .into();
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let k = 1 + self.rng.below(rest.len() as u64) as usize;
                    t.extend_from_slice(format!("{k:x}\r\n").as_bytes());
                    t.extend_from_slice(&rest[..k]);
                    t.extend_from_slice(b"\r\n");
                    rest = &rest[k..];
                }
                t.extend_from_slice(b"0\r\n\r\n");
                ("POST", body, t)
            }
        }
    }

    /// A peer writes `data` to the proxy, in random pieces up to the current chunk size.
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

    fn violation(&mut self, msg: String) {
        self.violations
            .push(format!("t={}ms: {msg}", self.harness.now.0 / 1_000_000));
    }

    /// Reads what the proxy wrote to clients; returns whether anything happened.
    fn clients_read(&mut self) -> bool {
        let mut progress = false;
        for c in 0..self.clients.len() {
            if self.clients[c].reset || self.clients[c].done {
                continue;
            }
            let conn = self.clients[c].conn;
            let data = self.harness.take_client(conn);
            if !data.is_empty() {
                progress = true;
                self.digest = fnv(fnv(self.digest, &conn.index.to_le_bytes()), &data);
                self.clients[c].inbuf.extend_from_slice(&data);
            }
            let ep = &self.harness.clients[&conn];
            let peer_done = ep.closed || ep.shutdown;
            if !data.is_empty() || peer_done {
                self.parse_responses(c, peer_done);
            }
            if peer_done && !self.clients[c].done {
                progress = true;
                self.client_peer_done(c);
            }
        }
        progress
    }

    fn parse_responses(&mut self, c: usize, peer_done: bool) {
        loop {
            let buf = &self.clients[c].inbuf;
            if buf.is_empty() {
                return;
            }
            let num = self.clients[c].num;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            let head_len = match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return,
                Err(e) => {
                    let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
                    self.violation(format!(
                        "client c{num}: unparseable response ({e}): {text:?}"
                    ));
                    self.clients[c].inbuf.clear();
                    return;
                }
            };
            let status = resp.code.unwrap_or(0);
            let version = resp.version.unwrap_or(1);
            let mut req_id = None;
            let mut cl_len = None;
            let mut chunked = false;
            let mut conn_close = false;
            let mut conn_ka = false;
            for h in resp.headers.iter() {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                if h.name.eq_ignore_ascii_case("x-req-id") {
                    req_id = Some(String::from_utf8_lossy(h.value).into_owned());
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    cl_len = v.trim().parse::<usize>().ok();
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.contains("chunked");
                } else if h.name.eq_ignore_ascii_case("connection") {
                    conn_close |= v.contains("close");
                    conn_ka |= v.contains("keep-alive");
                }
            }
            if (100..200).contains(&status) {
                self.clients[c].inbuf.drain(..head_len);
                continue;
            }
            let Some(front) = self.clients[c].outstanding.front().cloned() else {
                let text = String::from_utf8_lossy(&buf[..head_len]).into_owned();
                self.violation(format!(
                    "client c{num}: response with no request outstanding: {text:?}"
                ));
                self.clients[c].inbuf.clear();
                return;
            };
            let rest = &buf[head_len..];
            let no_body = front.head_only || status == 204 || status == 304;
            let (body, used) = if no_body {
                (Vec::new(), 0)
            } else if chunked {
                match decode_chunked(rest) {
                    Ok(Some(x)) => x,
                    Ok(None) => return,
                    Err(e) => {
                        self.violation(format!(
                            "client c{num}: bad chunked body for {}: {e}",
                            front.id
                        ));
                        self.clients[c].inbuf.clear();
                        return;
                    }
                }
            } else if let Some(n) = cl_len {
                if rest.len() < n {
                    return;
                }
                (rest[..n].to_vec(), n)
            } else {
                if !peer_done {
                    return;
                }
                (rest.to_vec(), rest.len())
            };
            self.clients[c].inbuf.drain(..head_len + used);
            self.clients[c].outstanding.pop_front();
            let delimited_by_close = !no_body && !chunked && cl_len.is_none();
            let closing = conn_close || (version == 0 && !conn_ka) || delimited_by_close;
            if delimited_by_close && self.cut.contains(&front.id) {
                // The backend cut this response and the proxy relays it close-delimited: a FIN
                // cannot tell the client it is truncated (only a reset could).
                self.stats.undetectable_truncations += 1;
                let reset = self.harness.clients[&self.clients[c].conn].reset;
                if !reset {
                    self.stats.truncated_with_fin += 1;
                }
                let cl = &mut self.clients[c];
                cl.no_more = true;
                cl.dropped_ok = cl.outstanding.len();
                continue;
            }
            self.check_response(c, &front, status, req_id, body);
            if closing {
                let cl = &mut self.clients[c];
                cl.no_more = true;
                cl.dropped_ok = cl.outstanding.len();
            }
        }
    }

    fn check_response(
        &mut self,
        c: usize,
        front: &Pending,
        status: u16,
        req_id: Option<String>,
        body: Vec<u8>,
    ) {
        let num = self.clients[c].num;
        *self.stats.statuses.entry(status).or_default() += 1;
        self.results.insert(front.id.clone(), status);
        match req_id {
            Some(rid) => {
                if rid != front.id {
                    let owner = self.sent.get(&rid).map_or("nobody".to_string(), |s| {
                        format!("c{}", self.clients[s.client].num)
                    });
                    self.violation(format!(
                        "client c{num} waiting for {} got the response to {rid} (sent by {owner})",
                        front.id
                    ));
                    return;
                }
                let want_body = if front.head_only { None } else { Some(&body) };
                let ok = self.produced.get(&rid).is_some_and(|v| {
                    v.iter()
                        .any(|(s, b)| *s == status && want_body.is_none_or(|wb| wb == b))
                });
                if !ok {
                    self.violation(format!(
                        "client c{num}: response to {rid} (status {status}, body {:?}) is not what \
                         the backend produced ({:?})",
                        String::from_utf8_lossy(&body),
                        self.produced.get(&rid)
                    ));
                }
            }
            None => {
                if status == 408 {
                    self.violation(format!(
                        "client c{num}: got a 408 for {} (a backend's stray 408 on an idle \
                         connection reached a client)",
                        front.id
                    ));
                } else if !matches!(status, 502..=504) {
                    self.violation(format!(
                        "client c{num}: unexpected proxy-generated status {status} for {}",
                        front.id
                    ));
                }
            }
        }
    }

    fn client_peer_done(&mut self, c: usize) {
        self.clients[c].done = true;
        let cl = &self.clients[c];
        let num = cl.num;
        let unanswered = cl.outstanding.len();
        if unanswered == 0 || unanswered <= cl.dropped_ok {
            return;
        }
        let front = cl.outstanding.front().expect("non-empty").id.clone();
        let explained = self.cut.contains(&front) || cl.ever_stalled;
        self.stats.truncated += 1;
        if !explained {
            let partial = String::from_utf8_lossy(&cl.inbuf).into_owned();
            self.violation(format!(
                "client c{num}: proxy closed the connection with {unanswered} request(s) \
                 unanswered, first {front} (neither cut by a backend nor a stalled client); \
                 partial response: {partial:?}"
            ));
        }
    }

    // ----- backends -----

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.ev_seq += 1;
        self.events.insert((at, self.ev_seq), ev);
    }

    fn server_index(&self, u: ConnId) -> usize {
        let s = self.harness.upstreams[&u]
            .server
            .expect("upstream has a server");
        self.harness
            .core
            .servers()
            .iter()
            .position(|x| *x == s)
            .expect("known server")
    }

    fn handle_connects(&mut self) -> bool {
        let mut progress = false;
        while let Some(&u) = self.harness.connects.first() {
            progress = true;
            let server = self.server_index(u);
            if self.scripts[server].down {
                self.harness.refuse_connect();
            } else {
                let group = self.harness.upstreams[&u]
                    .server
                    .expect("server")
                    .upstream
                    .0 as usize;
                self.ups.insert(
                    u,
                    UpConn {
                        server,
                        group,
                        inbuf: Vec::new(),
                        queue: VecDeque::new(),
                        busy: false,
                        served: 0,
                        last_active: self.harness.now,
                        closed: false,
                        fin_delivered: false,
                        lost_data: false,
                        announced_close: false,
                        close_delimited: false,
                        gone: false,
                        ids: Vec::new(),
                        xff: BTreeSet::new(),
                    },
                );
                self.schedule_idle(u);
                self.harness.accept_connect();
            }
        }
        progress
    }

    fn schedule_idle(&mut self, u: ConnId) {
        let up = &self.ups[&u];
        let s = &self.scripts[up.server];
        let t = up.last_active;
        for ms in [s.idle_close_ms, s.stray_408_ms].into_iter().flatten() {
            self.schedule(t.plus(Duration::from_millis(ms)), Ev::IdleCheck(u));
        }
    }

    fn backends_read(&mut self) -> bool {
        let mut progress = false;
        let ids: Vec<ConnId> = self.ups.keys().copied().collect();
        for u in ids {
            if self.ups[&u].gone {
                continue;
            }
            if self.harness.upstreams[&u].closed {
                self.ups.get_mut(&u).expect("known").gone = true;
                progress = true;
                continue;
            }
            let data = self.harness.take_upstream(u);
            if !data.is_empty() {
                progress = true;
                self.digest = fnv(fnv(self.digest, &(u.index | 1 << 31).to_le_bytes()), &data);
                self.ups
                    .get_mut(&u)
                    .expect("known")
                    .inbuf
                    .extend_from_slice(&data);
                self.backend_parse(u);
            }
            if self.backend_serve(u) {
                progress = true;
            }
        }
        progress
    }

    fn backend_parse(&mut self, u: ConnId) {
        loop {
            let up = self.ups.get_mut(&u).expect("known");
            if up.inbuf.is_empty() {
                return;
            }
            let parsed = match parse_request(&up.inbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    let text = String::from_utf8_lossy(&up.inbuf).into_owned();
                    up.inbuf.clear();
                    self.violation(format!(
                        "backend got an unparseable request ({e}): {text:?}"
                    ));
                    return;
                }
            };
            up.inbuf.drain(..parsed.used);
            let lost = up.closed;
            if lost {
                up.lost_data = true;
                self.stats.lost += 1;
            }
            let server = up.server;
            up.ids.push(parsed.id.clone());
            if let Some(x) = &parsed.xff {
                up.xff.insert(x.clone());
            }
            let group = up.group;
            let xff_n = up.xff.len();
            self.arrivals.push(Arrival {
                id: parsed.id.clone(),
                method: parsed.method.clone(),
                server,
                conn: u,
                lost,
                at: self.harness.now,
            });
            if parsed.expect {
                self.violation(format!(
                    "{}: Expect was forwarded to the backend",
                    parsed.id
                ));
            }
            // What the client sent, intact?
            match self.sent.get(&parsed.id).cloned() {
                None => self.violation(format!("backend got a request nobody sent: {}", parsed.id)),
                Some(s) => {
                    if s.method != parsed.method || s.body != parsed.body {
                        let msg = format!(
                            "backend got {} {} with body {:?}; the client sent {} with body {:?}",
                            parsed.method,
                            parsed.id,
                            String::from_utf8_lossy(&parsed.body),
                            s.method,
                            String::from_utf8_lossy(&s.body)
                        );
                        self.violation(msg);
                    }
                    let cip = self.clients[s.client].ip.to_string();
                    if parsed.xff.as_deref() != Some(cip.as_str()) {
                        self.violation(format!(
                            "{}: X-Forwarded-For {:?}, client address {cip}",
                            parsed.id, parsed.xff
                        ));
                    }
                }
            }
            if self.harness.core.config().upstreams[group].pool_key == PoolKeyMode::Client
                && xff_n > 1
            {
                let seen = self.ups[&u].xff.clone();
                self.violation(format!(
                    "pool_key=client but upstream connection {u:?} carried requests of clients {seen:?}"
                ));
            }
            if parsed.method != "GET"
                && parsed.method != "HEAD"
                && parsed.method != "PUT"
                && self.arrivals.iter().filter(|a| a.id == parsed.id).count() > 1
            {
                let where_: Vec<_> = self
                    .arrivals
                    .iter()
                    .filter(|a| a.id == parsed.id)
                    .map(|a| (a.conn, a.lost))
                    .collect();
                self.violation(format!(
                    "non-idempotent {} {} reached backends twice (conn, lost): {where_:?}",
                    parsed.method, parsed.id
                ));
            }
            if !lost {
                let up = self.ups.get_mut(&u).expect("known");
                up.queue.push_back(Job {
                    id: parsed.id,
                    method: parsed.method,
                    body: parsed.body,
                    no_content: parsed.no_content,
                    close: parsed.close,
                });
            }
        }
    }

    /// Starts answering the next queued request, if any. Returns whether anything happened.
    fn backend_serve(&mut self, u: ConnId) -> bool {
        let mut progress = false;
        loop {
            let up = &self.ups[&u];
            if up.busy || up.closed || up.gone || up.queue.is_empty() {
                return progress;
            }
            progress = true;
            let delay = self.scripts[up.server].delay_ms;
            if delay > 0 {
                self.ups.get_mut(&u).expect("known").busy = true;
                let at = self.harness.now.plus(Duration::from_millis(delay));
                self.schedule(at, Ev::Respond(u));
                return progress;
            }
            self.respond(u);
        }
    }

    fn respond(&mut self, u: ConnId) {
        let up = self.ups.get_mut(&u).expect("known");
        up.busy = false;
        if up.closed || up.gone {
            return;
        }
        let Some(job) = up.queue.pop_front() else {
            return;
        };
        let server = up.server;
        let script = self.scripts[server].clone();
        self.server_count[server] += 1;
        let k = self.server_count[server];
        let up = self.ups.get_mut(&u).expect("known");
        up.served += 1;
        up.last_active = self.harness.now;
        let hits = |every: Option<u32>| every.is_some_and(|e| e > 0 && k.is_multiple_of(e));
        if hits(script.reset_every) {
            up.closed = true;
            self.cut.insert(job.id);
            self.harness.reset(u);
            return;
        }
        let last = script.max_requests.is_some_and(|m| up.served >= m);
        let head_only = job.method == "HEAD";
        let status: u16 = if job.no_content { 204 } else { 200 };
        let mut body = Vec::new();
        if status != 204 {
            body.extend_from_slice(
                format!(
                    "id={};m={};len={};sum={:016x};",
                    job.id,
                    job.method,
                    job.body.len(),
                    fnv(FNV_OFFSET, &job.body)
                )
                .as_bytes(),
            );
            for i in 0..script.body_size {
                body.push(b'a' + (i % 26) as u8);
            }
        }
        // HEAD answers carry the framing headers a GET would get, but no body.
        let framing = if status == 204 {
            Framing::ContentLength
        } else {
            script.framing
        };
        let close_after = job.close || last || (framing == Framing::CloseDelimited && !head_only);
        let mut wire: Vec<u8> = Vec::new();
        if script.early_hints {
            wire.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n");
        }
        let reason = if status == 204 { "No Content" } else { "OK" };
        wire.extend_from_slice(
            format!("HTTP/1.1 {status} {reason}\r\nX-Req-Id: {}\r\n", job.id).as_bytes(),
        );
        if let Some(h) = script.keep_alive_hint {
            wire.extend_from_slice(format!("Keep-Alive: timeout={h}\r\n").as_bytes());
        }
        if (job.close || (last && script.announce_close)) && framing != Framing::CloseDelimited {
            wire.extend_from_slice(b"Connection: close\r\n");
            up.announced_close = true;
        }
        up.close_delimited = framing == Framing::CloseDelimited && !head_only;
        let mut body_wire = Vec::new();
        match framing {
            Framing::ContentLength => {
                if status != 204 {
                    wire.extend_from_slice(
                        format!("Content-Length: {}\r\n", body.len()).as_bytes(),
                    );
                }
                if !head_only {
                    body_wire.extend_from_slice(&body);
                }
            }
            Framing::Chunked if head_only => {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            Framing::CloseDelimited if head_only => {}
            Framing::Chunked => {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let n = 1 + self.rng.below(rest.len() as u64) as usize;
                    body_wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    body_wire.extend_from_slice(&rest[..n]);
                    body_wire.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                body_wire.extend_from_slice(b"0\r\n\r\n");
            }
            Framing::CloseDelimited => body_wire.extend_from_slice(&body),
        }
        wire.extend_from_slice(b"\r\n");
        let recorded_body = if head_only { Vec::new() } else { body };
        if hits(script.cut_every) && !body_wire.is_empty() {
            let up = self.ups.get_mut(&u).expect("known");
            up.closed = true;
            self.cut.insert(job.id.clone());
            wire.extend_from_slice(&body_wire[..body_wire.len() / 2]);
            self.write_split(u, &wire, false);
            if framing == Framing::CloseDelimited {
                self.harness.reset(u);
            } else {
                self.fin(u);
            }
            return;
        }
        self.produced
            .entry(job.id.clone())
            .or_default()
            .push((status, recorded_body));
        wire.extend_from_slice(&body_wire);
        if close_after {
            self.ups.get_mut(&u).expect("known").closed = true;
        }
        self.write_split(u, &wire, false);
        if close_after {
            self.fin(u);
        } else {
            self.schedule_idle(u);
        }
    }

    /// The backend's FIN reaches the proxy now.
    fn fin(&mut self, u: ConnId) {
        let up = self.ups.get_mut(&u).expect("known");
        if up.gone || up.fin_delivered {
            return;
        }
        up.fin_delivered = true;
        if up.lost_data {
            self.harness.reset(u);
        } else {
            self.harness.upstream_eof(u);
        }
    }

    fn is_idle(&self, u: ConnId) -> bool {
        let up = &self.ups[&u];
        !up.closed
            && !up.gone
            && !up.busy
            && up.queue.is_empty()
            && up.inbuf.is_empty()
            && self.harness.upstreams[&u].received.is_empty()
    }

    fn run_event(&mut self, ev: Ev) {
        match ev {
            Ev::Respond(u) => {
                self.respond(u);
                self.backend_serve(u);
            }
            Ev::Deliver(u, bytes) => {
                if !self.ups[&u].gone && !self.ups[&u].fin_delivered {
                    self.write_split(u, &bytes, false);
                }
            }
            Ev::Fin(u) => self.fin(u),
            Ev::IdleCheck(u) => {
                if !self.is_idle(u) {
                    return;
                }
                let up = &self.ups[&u];
                let s = &self.scripts[up.server];
                let idle = self.harness.now.since(up.last_active);
                let due = |ms: Option<u64>| ms.is_some_and(|ms| idle >= Duration::from_millis(ms));
                let race = Duration::from_millis(s.race_ms);
                let at = self.harness.now.plus(race);
                if due(s.stray_408_ms) {
                    self.ups.get_mut(&u).expect("known").closed = true;
                    let b = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n".to_vec();
                    if race.is_zero() {
                        self.write_split(u, &b, false);
                        self.fin(u);
                    } else {
                        self.schedule(at, Ev::Deliver(u, b));
                        self.schedule(at, Ev::Fin(u));
                    }
                } else if due(s.idle_close_ms) {
                    self.ups.get_mut(&u).expect("known").closed = true;
                    if race.is_zero() {
                        self.fin(u);
                    } else {
                        self.schedule(at, Ev::Fin(u));
                    }
                }
            }
        }
    }

    fn backend_event(&mut self, sel: u8, event: BackendEvent) {
        let open: Vec<ConnId> = self
            .ups
            .iter()
            .filter(|(u, up)| !up.gone && !up.closed && !self.harness.upstreams[u].closed)
            .map(|(u, _)| *u)
            .collect();
        if open.is_empty() {
            return;
        }
        let u = open[sel as usize % open.len()];
        match event {
            BackendEvent::Reset => {
                let up = self.ups.get_mut(&u).expect("known");
                up.closed = true;
                up.fin_delivered = true;
                for id in up.ids.clone() {
                    self.cut.insert(id);
                }
                self.harness.reset(u);
            }
            _ if !self.is_idle(u) => {}
            BackendEvent::CloseIdle => {
                self.ups.get_mut(&u).expect("known").closed = true;
                self.fin(u);
            }
            BackendEvent::Stray408 => {
                self.ups.get_mut(&u).expect("known").closed = true;
                self.write_split(
                    u,
                    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n",
                    false,
                );
                self.fin(u);
            }
            BackendEvent::Garbage => {
                self.write_split(u, b"garbage\r\n", false);
            }
        }
    }

    // ----- driving -----

    /// Lets every peer react until nothing changes (at the current instant).
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            self.harness.pump();
            let mut progress = self.handle_connects();
            progress |= self.backends_read();
            progress |= self.clients_read();
            if !progress {
                return;
            }
        }
        panic!(
            "seed {}: no quiescence after 100000 rounds; actions: {:?}",
            self.seed, self.log
        );
    }

    /// Moves virtual time forward by `d`, firing core deadlines and peer events in order.
    pub fn advance(&mut self, d: Duration) {
        let end = self.harness.now.plus(d);
        let mut same_instant = 0u32;
        loop {
            let next_core = self.harness.core.poll_timeout();
            let next_ev = self.events.keys().next().map(|k| k.0);
            let next = match (next_core, next_ev) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            if next <= self.harness.now {
                same_instant += 1;
                if same_instant > 10_000 {
                    self.violation(format!(
                        "timer livelock: poll_timeout stays at {next:?} (now {:?})",
                        self.harness.now
                    ));
                    break;
                }
            } else {
                same_instant = 0;
            }
            self.harness.now = self.harness.now.max(next);
            self.step_instant();
        }
        self.harness.now = end;
        self.step_instant();
    }

    fn step_instant(&mut self) {
        let now = self.harness.now;
        self.harness.core.handle_timeout(now);
        self.harness.pump();
        self.settle();
        while let Some((&key, _)) = self.events.iter().next() {
            if key.0 > now {
                break;
            }
            let ev = self.events.remove(&key).expect("present");
            self.run_event(ev);
            self.settle();
        }
        if let Some(t) = self.harness.core.poll_timeout()
            && t < now
        {
            self.violation(format!("poll_timeout {t:?} is in the past (now {now:?})"));
        }
    }

    /// Closes every client (unstalling it first), lets time run past every client timeout and
    /// checks nothing leaks; then past the pool idle timeout, and checks nothing is left at all.
    pub fn finish(&mut self) {
        for c in 0..self.clients.len() {
            let cl = &mut self.clients[c];
            let conn = cl.conn;
            if cl.reset || self.harness.clients[&conn].closed {
                continue;
            }
            if cl.stalled {
                cl.stalled = false;
                self.harness.stall(conn, false);
            }
            let cl = &mut self.clients[c];
            if !cl.eof_sent {
                cl.eof_sent = true;
                cl.no_more = true;
                self.harness.client_eof(conn);
            }
            self.settle();
        }
        self.settle();
        self.check_invariants();
        let cfg = self.harness.core.config().clone();
        let t = &cfg.client_timeouts;
        let max_client = [t.header, t.body, t.keepalive, t.send, t.lingering]
            .into_iter()
            .max()
            .unwrap_or_default();
        let max_up = cfg
            .upstreams
            .iter()
            .flat_map(|g| [g.connect_timeout, g.read_timeout, g.send_timeout])
            .max()
            .unwrap_or_default();
        let max_delay = self
            .scripts
            .iter()
            .map(|s| s.delay_ms + s.race_ms)
            .max()
            .unwrap_or(0);
        let first = max_client.max(max_up) + Duration::from_millis(max_delay + 1000);
        // Every outstanding exchange ends within `first` of the previous one (answered, timed
        // out or failed), but pipelined requests are answered one after another: keep
        // advancing while exchanges are still completing, bounded by the requests outstanding.
        let outstanding = self.sent.len().saturating_sub(self.results.len());
        self.advance(first);
        for _ in 0..outstanding {
            let open = self.harness.clients.values().any(|e| !e.closed);
            if !open {
                break;
            }
            let done = self.results.len();
            self.advance(first);
            if self.results.len() == done {
                break;
            }
        }
        self.check_invariants();
        let pooled: usize = (0..cfg.upstreams.len())
            .map(|g| self.harness.core.pool_idle(UpstreamId(g as u32)))
            .sum();
        let conns = self.harness.core.connections();
        if conns != pooled {
            let open_clients: Vec<_> = self
                .harness
                .clients
                .iter()
                .filter(|(_, e)| !e.closed)
                .map(|(id, _)| *id)
                .collect();
            let open_ups: Vec<_> = self
                .harness
                .upstreams
                .iter()
                .filter(|(id, e)| !e.closed && !self.harness.core.is_pooled(**id))
                .map(|(id, _)| *id)
                .collect();
            self.violation(format!(
                "leak: after every client closed and {first:?} passed, the core holds {conns} \
                 connections but only {pooled} are pooled (open clients {open_clients:?}, \
                 open non-pooled upstreams {open_ups:?})"
            ));
        }
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if !cl.reset && !self.harness.clients[&cl.conn].closed {
                let num = cl.num;
                self.violation(format!("leak: client c{num} is still open after it closed"));
            }
        }
        self.check_invariants();
        let idle = cfg
            .upstreams
            .iter()
            .map(|g| g.keepalive_timeout.min(g.keepalive_time))
            .max()
            .unwrap_or_default();
        self.advance(idle + Duration::from_secs(1));
        let conns = self.harness.core.connections();
        if conns != 0 {
            self.violation(format!(
                "leak: {conns} connections remain after the pool idle timeout passed"
            ));
        }
        if let Some(t) = self.harness.core.poll_timeout() {
            self.violation(format!("a deadline {t:?} remains with no connection open"));
        }
        self.check_invariants();
    }

    // ----- invariants -----

    /// Panics with a report if any invariant is broken.
    pub fn check_invariants(&self) {
        let mut problems = self.violations.clone();
        let core = &self.harness.core;
        let now = self.harness.now;
        // 5. deadlines
        if let Some(t) = core.poll_timeout()
            && t < now
        {
            problems.push(format!("poll_timeout {t:?} is in the past (now {now:?})"));
        }
        // 2. pool caps and clean pooled connections
        for (g, up) in core.config().upstreams.iter().enumerate() {
            let idle = core.pool_idle(UpstreamId(g as u32));
            if idle > up.keepalive {
                problems.push(format!(
                    "pool of group {g} holds {idle} idle connections, cap {}",
                    up.keepalive
                ));
            }
        }
        for (&u, ep) in &self.harness.upstreams {
            if !core.is_pooled(u) {
                continue;
            }
            if ep.closed {
                problems.push(format!("{u:?} is pooled but the core closed it"));
                continue;
            }
            let Some(up) = self.ups.get(&u) else {
                problems.push(format!("{u:?} is pooled but never connected"));
                continue;
            };
            let mut why = Vec::new();
            if up.busy || !up.queue.is_empty() {
                why.push("the backend has a request in flight");
            }
            if !up.inbuf.is_empty() || !ep.received.is_empty() {
                why.push("the backend has unread request bytes");
            }
            if !ep.unread.is_empty() {
                why.push("the backend sent bytes the proxy has not read");
            }
            if core.pending_len(u) > 0 {
                why.push("the core has output queued on it");
            }
            if up.announced_close {
                why.push("the backend announced Connection: close");
            }
            if up.close_delimited {
                why.push("its last response was close-delimited");
            }
            if up.fin_delivered && !ep.eof_pending {
                why.push("the backend's FIN was delivered");
            }
            if !why.is_empty() {
                problems.push(format!(
                    "pooled {u:?} is not at a clean boundary: {}",
                    why.join(", ")
                ));
            }
        }
        // 3. dead peers are forgotten; nothing is queued for a closed peer
        for cl in &self.clients {
            if cl.reset && core.is_open(cl.conn) {
                problems.push(format!(
                    "client c{} reset but its connection is still open",
                    cl.num
                ));
            }
        }
        for (&u, up) in &self.ups {
            let ep = &self.harness.upstreams[&u];
            if up.fin_delivered && !ep.eof_pending && !ep.closed && core.is_open(u) && ep.reading {
                problems.push(format!(
                    "{u:?}: the backend closed (FIN/RST delivered) but the core keeps the connection"
                ));
            }
        }
        for (&id, ep) in self
            .harness
            .clients
            .iter()
            .chain(self.harness.upstreams.iter())
        {
            if ep.closed && core.pending_len(id) > 0 {
                problems.push(format!("output queued for closed peer {id:?}"));
            }
        }
        if !problems.is_empty() {
            panic!(
                "simulation invariant broken (seed {}):\n  - {}\nactions ({}): {:?}",
                self.seed,
                problems.join("\n  - "),
                self.log.len(),
                self.log
            );
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

    /// The id of request `n` of client `c` (`/c{c}/r{n}`).
    pub fn req_id(c: usize, n: u32) -> String {
        format!("/c{c}/r{n}")
    }
}

// ----------------------------------------------------------------------------------------------
// Tiny HTTP helpers for the peers

/// Decodes a complete chunked body at the start of `buf`: (body, bytes used), `None` if
/// incomplete.
fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    let line = |pos: usize| -> Option<usize> {
        buf[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i)
    };
    loop {
        let Some(eol) = line(pos) else {
            return Ok(None);
        };
        let text = core::str::from_utf8(&buf[pos..eol]).map_err(|_| "non-utf8 size line")?;
        let hex = text.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {text:?}"))?;
        pos = eol + 2;
        if size == 0 {
            loop {
                let Some(eol) = line(pos) else {
                    return Ok(None);
                };
                let empty = eol == pos;
                pos = eol + 2;
                if empty {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("missing CRLF after chunk".into());
        }
        pos += size + 2;
    }
}

struct ParsedReq {
    used: usize,
    method: String,
    id: String,
    body: Vec<u8>,
    no_content: bool,
    close: bool,
    xff: Option<String>,
    expect: bool,
}

fn parse_request(buf: &[u8]) -> Result<Option<ParsedReq>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let (id, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut cl = None;
    let mut chunked = false;
    let mut close = req.version == Some(0);
    let mut xff = None;
    let mut expect = false;
    for h in req.headers.iter() {
        let v = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("content-length") {
            cl = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| "bad content-length")?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            }
            if v.contains("keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect = true;
        } else if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            xff = v.rsplit(',').next().map(|s| s.trim().to_string());
        }
    }
    let rest = &buf[head_len..];
    let (body, used) = if chunked {
        match decode_chunked(rest)? {
            Some(x) => x,
            None => return Ok(None),
        }
    } else if let Some(n) = cl {
        if rest.len() < n {
            return Ok(None);
        }
        (rest[..n].to_vec(), n)
    } else {
        (Vec::new(), 0)
    };
    Ok(Some(ParsedReq {
        used: head_len + used,
        method,
        id,
        body,
        no_content: query.contains("st=204"),
        close,
        xff,
        expect,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoder() {
        let b = b"3\r\nabc\r\n1;x=y\r\nd\r\n0\r\nT: v\r\n\r\nrest";
        let (body, used) = decode_chunked(b).unwrap().unwrap();
        assert_eq!(body, b"abcd");
        assert_eq!(&b[used..], b"rest");
        assert_eq!(decode_chunked(b"3\r\nab").unwrap(), None);
        assert!(decode_chunked(b"zz\r\n").is_err());
    }

    #[test]
    fn request_parser() {
        let r = parse_request(b"POST /c1/r2?st=204 HTTP/1.1\r\nContent-Length: 2\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\nhiGET")
            .unwrap()
            .unwrap();
        assert_eq!(r.id, "/c1/r2");
        assert_eq!(r.body, b"hi");
        assert!(r.no_content);
        assert_eq!(r.xff.as_deref(), Some("10.0.0.1"));
        assert_eq!(r.used, b"POST /c1/r2?st=204 HTTP/1.1\r\nContent-Length: 2\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n\r\nhi".len());
    }
}
