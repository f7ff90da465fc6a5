//! The engine: client connections, upstream connections, the exchange that pairs them, and the
//! rules that decide when an upstream connection goes back to the pool, is retried or is closed.
//!
//! Lifecycle of a client connection (see also the crate docs):
//!
//! ```text
//!   accept ─► Idle ──first byte──► Head ──complete──► Exchange ──response done──► Idle (keep-alive)
//!                                   │ bad / too big        │ error / close          │
//!                                   ▼                      ▼                        ▼
//!                          error response, Linger ──► Close ◄───────────── Connection: close
//! ```
//!
//! One exchange at a time per client connection: pipelined requests wait in the read buffer
//! until the previous response is fully queued, which is what keeps responses in request order
//! (RFC 9112 §9.3.2) and makes "which client does this upstream byte belong to" a single field.

use bytes::{Buf, Bytes, BytesMut};
use core::net::IpAddr;
use slab::Slab;
use std::collections::VecDeque;

use crate::balance::Balancer;
use crate::config::{Address, Config, PoolKeyMode};
use crate::connection::{AfterFlush, Buffers};
use crate::framing::{
    self, BodyDecoder, BodyKind, Forwarding, Head, HeadLimits, Method, OutBody, ResponseOptions,
    Version,
};
use crate::pool::{EvictReason, Pool, PoolKey};
use crate::route::Router;
use crate::rules::{
    self, Attempt, ClientFacts, Failure, NotReusable, ResponseFacts, Retry, UpstreamFacts,
};
use crate::stats::{GroupStats, ServerStats, Stats};
use crate::timers::Timers;
use crate::{ConnId, ListenerId, ServerId, Time, UpstreamId};

/// Request bodies up to this size are kept (as cheap `Bytes` references) so that a request whose
/// reused upstream connection turns out stale can be re-sent on a fresh one.
const REPLAY_LIMIT: usize = 64 * 1024;
/// Room for what a rewritten head adds to the received one (framing, X-Forwarded-*, Via...).
const HEAD_GROWTH: usize = 256;
/// A chunk-size line: up to 16 hex digits and CRLF.
const CHUNK_LINE: usize = 18;
/// A response the proxy generates itself.
const ERROR_RESPONSE: usize = 256;

/// What the runtime must do. Drain [`Core::poll_output`] after every call that changes state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a connection to `server` ([`Core::server_address`]) for `conn`; report
    /// [`Input::Connected`] or [`Input::ConnectFailed`].
    Connect {
        /// The new upstream connection.
        conn: ConnId,
        /// Where to.
        server: ServerId,
    },
    /// `conn` has bytes to write ([`Core::pending`]); report progress with [`Input::Written`].
    /// Emitted once per non-empty stretch of the queue: keep writing on writability until the
    /// queue is empty.
    Write {
        /// The connection.
        conn: ConnId,
    },
    /// Start (`true`) or stop (`false`) reading from `conn`: backpressure.
    Interest {
        /// The connection.
        conn: ConnId,
        /// Whether to read.
        read: bool,
    },
    /// Half-close `conn` (shut down its write side) and keep reading.
    Shutdown {
        /// The connection.
        conn: ConnId,
    },
    /// Close `conn` and forget it; the id is dead from now on.
    Close {
        /// The connection.
        conn: ConnId,
        /// Abortive close (RST) rather than FIN.
        reset: bool,
    },
}

/// What happened on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Bytes arrived on `conn`.
    Received {
        /// The connection.
        conn: ConnId,
        /// The bytes (copied into the connection's buffer).
        data: &'a [u8],
    },
    /// The peer closed its write side (EOF).
    ReadClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection failed (reset, broken pipe...): the core closes it.
    Errored {
        /// The connection.
        conn: ConnId,
    },
    /// `n` bytes were appended to the connection's read buffer in place, through
    /// [`Core::read_buffer`]. The same as [`Input::Received`] without its copy.
    Appended {
        /// The connection.
        conn: ConnId,
        /// How many bytes were appended (0 is ignored, like an empty `Received`).
        n: usize,
    },
    /// `n` bytes of [`Core::pending`] were written.
    Written {
        /// The connection.
        conn: ConnId,
        /// How many.
        n: usize,
    },
    /// An upstream connection requested by [`Output::Connect`] is established.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// An upstream connection could not be established.
    ConnectFailed {
        /// The connection.
        conn: ConnId,
    },
    /// The runtime could not even attempt an upstream connection for a reason of its own — out
    /// of file descriptors, ephemeral ports or memory. Unlike [`Input::ConnectFailed`] this says
    /// nothing about the server: its health is not touched, no other server is tried (they
    /// would fail the same way), and the client gets a 500, as nginx answers when `socket()`
    /// fails. [`Input::connect_error`] picks this or `ConnectFailed` from an OS error.
    ConnectAborted {
        /// The connection.
        conn: ConnId,
    },
}

impl Input<'_> {
    /// The input for a failed connect attempt: [`Input::ConnectAborted`] when `error` is a
    /// local resource shortage (Linux `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, `EADDRNOTAVAIL`),
    /// else [`Input::ConnectFailed`]. Both runtimes classify through here.
    pub fn connect_error(conn: ConnId, error: &std::io::Error) -> Input<'static> {
        // errno values of Linux (asm-generic), the platform the runtimes target.
        const LOCAL: [i32; 5] = [24, 23, 105, 12, 99];
        let local = error.kind() == std::io::ErrorKind::OutOfMemory
            || error.raw_os_error().is_some_and(|e| LOCAL.contains(&e));
        if local {
            Input::ConnectAborted { conn }
        } else {
            Input::ConnectFailed { conn }
        }
    }
}

/// `accept` refused: the per-core client connection limit is reached (or the core is draining).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtCapacity;

/// What the proxy knows about a finished exchange (for access logs and latency histograms).
///
/// Recorded when the response's last byte is queued to the client (or the proxy's own error
/// response is). Upgraded (tunnelled) exchanges and exchanges cut short by a client or upstream
/// failure mid-response are not recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeInfo {
    /// Client connection.
    pub client: ConnId,
    /// Listener the client connection arrived on.
    pub listener: ListenerId,
    /// Status sent to the client.
    pub status: u16,
    /// Server that answered, if any.
    pub server: Option<ServerId>,
    /// Whether that answer came over a reused pooled connection.
    pub reused: bool,
    /// Method and target as received (`GET /x?y`), recorded only after
    /// [`Core::record_requests`]`(true)` (one small copy per request, for access logs); empty
    /// otherwise and when the request head could not be parsed. With `version` it gives an
    /// access log's `"$request"`.
    pub request: Bytes,
    /// The client's HTTP version.
    pub version: Version,
    /// When the request began: its first byte (the accept, for a connection's first request).
    pub started: Time,
    /// When the response head was queued to the client (upstream's or our own).
    pub response_at: Option<Time>,
    /// When the response's last byte was queued to the client.
    pub finished: Time,
    /// Bytes queued to the client for this exchange (heads, interim responses and body).
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests (keep-alive idle), nothing buffered.
    Idle,
    /// Reading a request head.
    Head,
    /// An exchange is in progress.
    Exchange,
    /// Our last bytes are queued; the connection closes (or lingers) once they are written.
    Closing,
    /// Half-closed after our last response; discarding input until EOF or the deadline.
    Lingering,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resp {
    /// Waiting for the (final) response head.
    Waiting,
    /// Relaying the response body.
    Body,
    /// 101: both directions are a byte tunnel.
    Tunnel,
    /// Response fully queued to the client.
    Done,
}

#[derive(Debug)]
struct Exchange {
    method: Method,
    version: Version,
    /// The request allows a persistent connection (its own say in [`rules::client_keep_alive`]).
    persistent: bool,
    group: u32,
    req_head: Bytes,
    req_decoder: BodyDecoder,
    req_chunked: bool,
    req_done: bool,
    req_bytes: u64,
    replay: VecDeque<Bytes>,
    replay_len: usize,
    replayable: bool,
    upgrade: bool,
    upstream: Option<ConnId>,
    server: Option<u32>,
    reused: bool,
    tries: u32,
    tried: u64,
    stale_retried: bool,
    resp: Resp,
    resp_decoder: BodyDecoder,
    /// The upstream response body is chunked (its chunk boundaries can be kept).
    resp_in_chunked: bool,
    resp_out: OutBody,
    resp_started: bool,
    status: u16,
    /// For [`ExchangeInfo`]: `METHOD target` (only with `record_requests`), when the request
    /// began and its response head was queued, and the bytes queued to the client.
    request: Bytes,
    started: Time,
    response_at: Option<Time>,
    bytes_sent: u64,
}

impl Exchange {
    /// No exchange: between requests, or a request refused before its head was understood.
    /// `replay` is the previous exchange's queue, emptied, so its allocation is kept.
    fn idle(mut replay: VecDeque<Bytes>) -> Exchange {
        replay.clear();
        Exchange {
            method: Method::Get,
            version: Version::Http11,
            persistent: true,
            group: 0,
            req_head: Bytes::new(),
            req_decoder: BodyDecoder::new(BodyKind::Empty),
            req_chunked: false,
            req_done: true,
            req_bytes: 0,
            replay,
            replay_len: 0,
            replayable: true,
            upgrade: false,
            upstream: None,
            server: None,
            reused: false,
            tries: 0,
            tried: 0,
            stale_retried: false,
            resp: Resp::Done,
            resp_decoder: BodyDecoder::new(BodyKind::Empty),
            resp_in_chunked: false,
            resp_out: OutBody::None,
            resp_started: false,
            status: 0,
            request: Bytes::new(),
            started: Time::ZERO,
            response_at: None,
            bytes_sent: 0,
        }
    }

    /// The exchange of the request whose head was just parsed, begun at `started`.
    fn start(head: &Head, started: Time, request: Bytes, replay: VecDeque<Bytes>) -> Exchange {
        Exchange {
            method: head.method,
            version: head.version,
            persistent: head.persistent(),
            req_decoder: BodyDecoder::new(head.body),
            req_chunked: head.body == BodyKind::Chunked,
            req_done: matches!(head.body, BodyKind::Empty | BodyKind::Length(0)),
            upgrade: head.version == Version::Http11
                && head.connection.upgrade
                && head.upgrade.is_some()
                && head.body == BodyKind::Empty,
            resp: Resp::Waiting,
            request,
            started,
            ..Exchange::idle(replay)
        }
    }
}

#[derive(Debug)]
struct Client {
    listener: ListenerId,
    peer: Option<IpAddr>,
    peer_hash: u64,
    requests: u32,
    phase: Phase,
    /// Start of the current idle / head / lingering period.
    since: Time,
    /// Last progress reading the request body.
    body_progress: Time,
    ex: Exchange,
}

impl Client {
    /// What the connection and its current exchange say about keeping it open, as far as known
    /// before the response is complete (callers refine the last three facts).
    fn keep_alive_facts(&self, max_requests: u32, draining: bool) -> ClientFacts {
        ClientFacts {
            request_persistent: self.ex.persistent,
            requests: self.requests,
            max_requests,
            draining,
            request_abandoned: false,
            close_delimited: self.ex.resp_out == OutBody::Close,
            framing_broken: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UState {
    Connecting,
    Active,
    Idle,
    Tunnel,
}

#[derive(Debug)]
struct Upstream {
    server: u32,
    group: u32,
    key: PoolKey,
    state: UState,
    client: Option<ConnId>,
    created: Time,
    requests: u32,
    /// Bytes of the current request written to the socket.
    written: u64,
    /// The whole request has been written.
    sent_all: bool,
    read_progress: Time,
    /// What the current response's head said about reuse, and when it arrived (the start of
    /// its `Keep-Alive: timeout`).
    response: ResponseFacts,
    response_at: Time,
    /// Bytes arrived after the current response was complete.
    extra_data: bool,
    /// Counted as an active request of its server by the balancer (least-conn, max_conns).
    acquired: bool,
    /// Some response bytes (even an interim 1xx) arrived for the current request: it can no
    /// longer be retried.
    responded: bool,
}

impl Upstream {
    /// The current request is not the connection's first: it came out of the pool. The one
    /// definition of "reused" (the keepalive race, a 408 as idle timeout, access logs).
    fn reused(&self) -> bool {
        self.requests > 1
    }
}

// Slab slots are reused, so the size difference costs memory per slot, not allocations; boxing
// the client side would cost one allocation per accepted connection instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Role {
    Client(Client),
    Upstream(Upstream),
}

/// The connections of one core: a slab of [`Conn`] whose ids carry a generation, so an id of a
/// closed connection never reaches the connection that reuses its slot.
#[derive(Debug, Default)]
struct Table {
    slab: Slab<Conn>,
    /// Generation of the next connection in each slot.
    generations: Vec<u32>,
}

impl Table {
    fn insert(&mut self, make: impl FnOnce(ConnId) -> Conn) -> ConnId {
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

    /// Forgets `id`; its slot's next connection gets a new generation.
    fn remove(&mut self, id: ConnId) {
        if self.get(id).is_some() {
            self.slab.remove(id.index as usize);
            let g = &mut self.generations[id.index as usize];
            *g = g.wrapping_add(1);
        }
    }

    fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slab.get(id.index as usize).filter(|c| c.id == id)
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.slab.get_mut(id.index as usize).filter(|c| c.id == id)
    }

    /// The connection in `slot`, whatever its generation (a timer names a slot).
    fn at_slot_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slab.get_mut(slot as usize)
    }

    /// Two distinct connections at once (a client and its upstream).
    fn pair_mut(&mut self, a: ConnId, b: ConnId) -> Option<(&mut Conn, &mut Conn)> {
        let (x, y) = self.slab.get2_mut(a.index as usize, b.index as usize)?;
        (x.id == a && y.id == b).then_some((x, y))
    }

    fn client(&self, id: ConnId) -> Option<&Client> {
        match &self.get(id)?.role {
            Role::Client(c) => Some(c),
            Role::Upstream(_) => None,
        }
    }

    fn client_mut(&mut self, id: ConnId) -> Option<&mut Client> {
        match &mut self.get_mut(id)?.role {
            Role::Client(c) => Some(c),
            Role::Upstream(_) => None,
        }
    }

    fn upstream(&self, id: ConnId) -> Option<&Upstream> {
        match &self.get(id)?.role {
            Role::Upstream(u) => Some(u),
            Role::Client(_) => None,
        }
    }

    fn upstream_mut(&mut self, id: ConnId) -> Option<&mut Upstream> {
        match &mut self.get_mut(id)?.role {
            Role::Upstream(u) => Some(u),
            Role::Client(_) => None,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.slab.iter().map(|(_, c)| c)
    }

    fn len(&self) -> usize {
        self.slab.len()
    }

    fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    buf: Buffers,
    role: Role,
    /// What the armed timer of this connection is for (its time is in `Core::timers`).
    deadline: Option<Deadline>,
}

/// What a connection's one armed deadline is for: chosen with it by `Core::deadline`, acted on
/// by `Core::on_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
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
}

#[derive(Debug)]
struct Group {
    balancer: Balancer,
    first_server: u32,
}

/// The sans-IO proxy engine. See the crate documentation for the drive loop.
#[derive(Debug)]
pub struct Core {
    config: Config,
    router: Router,
    groups: Vec<Group>,
    servers: Vec<ServerId>,
    pool: Pool,
    conns: Table,
    timers: Timers,
    out: VecDeque<Output>,
    touched: Vec<ConnId>,
    /// Client connections with buffered requests to process (see `end_exchange`).
    ready: VecDeque<ConnId>,
    finished: VecDeque<ExchangeInfo>,
    record_exchanges: bool,
    record_requests: bool,
    stats: Stats,
    head: Head,
    limits: HeadLimits,
    clients: usize,
    draining: bool,
    seed: u64,
}

impl Core {
    /// A core for `config` (validated here). `seed` feeds every hash the core computes (client
    /// address hashing for `ip_hash` and pool partitioning), so two cores built with the same
    /// config and seed behave identically.
    pub fn new(config: Config, seed: u64) -> Result<Core, crate::config::ConfigError> {
        config.validate()?;
        let router = Router::new(&config);
        let mut groups = Vec::new();
        let mut servers = Vec::new();
        let mut caps = Vec::new();
        for (g, up) in config.upstreams.iter().enumerate() {
            groups.push(Group {
                balancer: Balancer::new(up),
                first_server: servers.len() as u32,
            });
            for i in 0..up.servers.len() {
                servers.push(ServerId {
                    upstream: UpstreamId(g as u32),
                    index: i as u32,
                });
            }
            caps.push(up.keepalive);
        }
        let stats = Stats {
            groups: vec![GroupStats::default(); groups.len()],
            servers: vec![ServerStats::default(); servers.len()],
            ..Stats::default()
        };
        let limits = HeadLimits {
            max_request_line: config.limits.max_request_line,
            max_head: config.limits.max_head,
        };
        Ok(Core {
            pool: Pool::new(&caps),
            router,
            groups,
            servers,
            conns: Table::default(),
            timers: Timers::default(),
            out: VecDeque::new(),
            touched: Vec::new(),
            ready: VecDeque::new(),
            finished: VecDeque::new(),
            record_exchanges: false,
            record_requests: false,
            stats,
            head: Head::new(),
            limits,
            clients: 0,
            draining: false,
            seed,
            config,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every server of every group, in global order (the index used by [`Stats::servers`]).
    pub fn servers(&self) -> &[ServerId] {
        &self.servers
    }

    /// Where `server` listens.
    pub fn server_address(&self, server: ServerId) -> &Address {
        &self.config.upstreams[server.upstream.0 as usize].servers[server.index as usize].addr
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether `server` is currently usable (passive health).
    pub fn server_up(&self, now: Time, server: ServerId) -> bool {
        self.groups[server.upstream.0 as usize]
            .balancer
            .is_up(now, server.index as usize)
    }

    /// Idle pooled connections of a group.
    pub fn pool_idle(&self, upstream: UpstreamId) -> usize {
        self.pool.idle_in_group(upstream.0)
    }

    /// Open client connections.
    pub fn client_connections(&self) -> usize {
        self.clients
    }

    /// Open connections of either kind.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Client connections by what they are doing: (reading a request, writing a response,
    /// waiting idle) — nginx `stub_status`'s Reading / Writing / Waiting.
    pub fn client_activity(&self) -> (usize, usize, usize) {
        let (mut r, mut w, mut idle) = (0, 0, 0);
        for c in self.conns.iter() {
            if let Role::Client(cl) = &c.role {
                match cl.phase {
                    Phase::Idle => idle += 1,
                    Phase::Head => r += 1,
                    _ => w += 1,
                }
            }
        }
        (r, w, idle)
    }

    /// Record an [`ExchangeInfo`] for every finished exchange, to be taken with
    /// [`Core::poll_exchange`] (off by default; status counters and latency histograms turn it
    /// on). Take records after every call: they queue until taken. Allocation-free once the
    /// queue has grown to its working size.
    pub fn record_exchanges(&mut self, on: bool) {
        self.record_exchanges = on;
    }

    /// Also copy each request's `METHOD target` into [`ExchangeInfo::request`] (for access logs;
    /// one small allocation per request, so off by default). Implies nothing unless
    /// [`record_exchanges`](Core::record_exchanges) is on.
    pub fn record_requests(&mut self, on: bool) {
        self.record_requests = on;
    }

    /// The next finished exchange, if recording.
    pub fn poll_exchange(&mut self) -> Option<ExchangeInfo> {
        self.finished.pop_front()
    }

    /// The next thing to do, or `None` once everything has been said.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest deadline: call [`Core::handle_timeout`] when it is reached.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    /// Bytes queued for `conn`, in order (empty for an unknown id).
    pub fn pending(&self, conn: ConnId) -> impl Iterator<Item = &[u8]> + '_ {
        self.conns
            .get(conn)
            .into_iter()
            .flat_map(|c| c.buf.wq.iter().map(|b| &b[..]))
    }

    /// The read buffer of `conn`, with at least `want` bytes of spare capacity, for a runtime
    /// that reads from the socket straight into it — saving the copy [`Input::Received`] makes
    /// (measured: ~10 % of the CPU of a proxied 64 KiB response). Append only, into the spare
    /// capacity (e.g. `spare_capacity_mut` + `recv` + `set_len`), then report the count with
    /// [`Input::Appended`] before any other input for `conn`. `None` for an unknown
    /// connection.
    pub fn read_buffer(&mut self, conn: ConnId, want: usize) -> Option<&mut BytesMut> {
        let c = self.conns.get_mut(conn)?;
        c.buf.reserve_read(want);
        c.buf.lent_at = Some(c.buf.rbuf.len());
        Some(&mut c.buf.rbuf)
    }

    /// Number of bytes queued for `conn`.
    pub fn pending_len(&self, conn: ConnId) -> usize {
        self.conns.get(conn).map_or(0, |c| c.buf.wq_len)
    }

    /// Whether `conn` is a live connection of this core.
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some()
    }

    /// Whether `conn` is an idle connection in the pool.
    pub fn is_pooled(&self, conn: ConnId) -> bool {
        self.pool.contains(conn)
    }

    /// Whether a drain has finished: nothing left open.
    pub fn is_drained(&self) -> bool {
        self.draining && self.conns.is_empty()
    }

    /// A new client connection from `peer` (None for Unix sockets) on `listener`.
    pub fn accept(
        &mut self,
        now: Time,
        listener: ListenerId,
        peer: Option<IpAddr>,
    ) -> Result<ConnId, AtCapacity> {
        if self.draining || self.clients >= self.config.limits.max_client_connections {
            self.stats.refused += 1;
            return Err(AtCapacity);
        }
        self.stats.accepted += 1;
        self.clients += 1;
        let peer_hash = hash_ip(self.seed, peer);
        let id = self.conns.insert(|id| Conn {
            id,
            buf: Buffers::new(now),
            deadline: None,
            role: Role::Client(Client {
                listener,
                peer,
                peer_hash,
                requests: 0,
                phase: Phase::Idle,
                since: now,
                body_progress: now,
                ex: Exchange::idle(VecDeque::new()),
            }),
        });
        touch(&mut self.touched, id);
        self.sync(now);
        Ok(id)
    }

    /// Applies one network event.
    pub fn handle(&mut self, now: Time, input: Input<'_>) {
        match input {
            Input::Received { conn, data } => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                if data.is_empty() {
                    return;
                }
                c.buf.receive(data);
                touch(&mut self.touched, conn);
                self.on_readable(now, conn);
            }
            Input::Appended { conn, n } => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                // Only what `read_buffer` handed out may have been appended: anything else
                // would be a runtime bug, and the bytes are dropped rather than trusted.
                let before = c.buf.lent_at.take();
                if n == 0 || before.map(|at| at + n) != Some(c.buf.rbuf.len()) {
                    if let Some(at) = before {
                        c.buf.rbuf.truncate(at);
                    }
                    return;
                }
                touch(&mut self.touched, conn);
                self.on_readable(now, conn);
            }
            Input::ReadClosed { conn } => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                c.buf.read_closed = true;
                touch(&mut self.touched, conn);
                self.on_read_closed(now, conn);
            }
            Input::Errored { conn } => {
                if self.conns.get(conn).is_none() {
                    return;
                }
                self.on_error(now, conn);
            }
            Input::Written { conn, n } => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                c.buf.advance(now, n);
                if let Role::Upstream(u) = &mut c.role {
                    u.written += n as u64;
                }
                touch(&mut self.touched, conn);
                self.on_written(now, conn);
            }
            Input::Connected { conn } => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                if let Role::Upstream(u) = &mut c.role
                    && u.state == UState::Connecting
                {
                    u.state = UState::Active;
                    u.read_progress = now;
                    c.buf.write_progress = now;
                    let srv = u.server as usize;
                    self.stats.servers[srv].requests += 1;
                    // A backend may answer before we learn the connect finished (an overload
                    // 503 on accept): what it sent is waiting in the buffer.
                    let early = !c.buf.rbuf.is_empty();
                    if early {
                        u.responded = true;
                    }
                    touch(&mut self.touched, conn);
                    self.signal_write(conn);
                    self.request_maybe_sent(now, conn);
                    if early {
                        self.drive_upstream(now, conn);
                    }
                }
            }
            Input::ConnectFailed { conn } => {
                let Some(c) = self.conns.get(conn) else {
                    return;
                };
                if let Role::Upstream(u) = &c.role
                    && u.state == UState::Connecting
                {
                    let srv = u.server as usize;
                    self.stats.servers[srv].connect_failures += 1;
                    self.upstream_failed(now, conn, Failure::ConnectFailed);
                }
            }
            Input::ConnectAborted { conn } => {
                let Some(c) = self.conns.get(conn) else {
                    return;
                };
                if let Role::Upstream(u) = &c.role
                    && u.state == UState::Connecting
                {
                    self.upstream_failed(now, conn, Failure::Local);
                }
            }
        }
        self.sync(now);
    }

    /// Fires every deadline that is due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(slot) = self.timers.pop_expired(now) {
            let Some(c) = self.conns.at_slot_mut(slot) else {
                continue;
            };
            let id = c.id;
            let Some(kind) = c.deadline.take() else {
                continue;
            };
            touch(&mut self.touched, id);
            self.on_timeout(now, id, kind);
            // What that changed re-arms now, so a deadline due at the same instant on another
            // connection (its peer) fires for what that connection is doing now.
            for i in 0..self.touched.len() {
                self.arm(self.touched[i]);
            }
        }
        self.sync(now);
    }

    /// Graceful shutdown: stop accepting, close idle pooled and idle client connections now, and
    /// close every other client connection after its current exchange. [`Core::is_drained`]
    /// turns true when nothing is left.
    pub fn begin_drain(&mut self, now: Time) {
        self.draining = true;
        let mut idle = Vec::new();
        self.pool.drain(&mut |c| idle.push(c));
        for c in idle {
            self.evict(c, false, EvictReason::Draining);
        }
        let clients: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| matches!(c.role, Role::Client(_)))
            .map(|c| c.id)
            .collect();
        for id in clients {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            let Role::Client(cl) = &mut c.role else {
                continue;
            };
            match cl.phase {
                // A new connection that has not finished its first request yet: the client is
                // about to send it, so closing now would meet it with a reset. nginx waits for
                // it too (only connections between requests are idle to nginx); the header
                // deadline still bounds the wait, and the answer carries `Connection: close`.
                Phase::Idle | Phase::Head if cl.requests == 0 => {}
                // Between requests (perhaps still flushing the last response), or with only
                // part of a later head received — not an exchange we promised to finish.
                Phase::Idle | Phase::Head => {
                    self.close_client_after_flush(now, id, AfterFlush::Close)
                }
                // Finished, then closed: `rules::client_keep_alive` sees the drain.
                Phase::Exchange | Phase::Closing | Phase::Lingering => {}
            }
        }
        self.sync(now);
    }

    // ----- connection table -----

    /// Index within group `g` of the server with global index `global`.
    fn index_in_group(&self, g: usize, global: u32) -> usize {
        (global - self.groups[g].first_server) as usize
    }

    /// Ends an upstream connection's request for the balancer (least-conn counts, max_conns).
    /// The one place that undoes `Balancer::acquire`: called when the response is done and by
    /// every close, so no path can leak an active count.
    fn release_server(&mut self, id: ConnId) {
        let Some(u) = self.conns.upstream_mut(id) else {
            return;
        };
        if core::mem::take(&mut u.acquired) {
            let g = u.group as usize;
            let idx = (u.server - self.groups[g].first_server) as usize;
            self.groups[g].balancer.release(idx);
        }
    }

    /// Closes an idle pooled connection, counting why it leaves the pool.
    fn evict(&mut self, id: ConnId, reset: bool, why: EvictReason) {
        if let Some(Role::Upstream(u)) = self.conns.get_mut(id).map(|c| &c.role) {
            debug_assert_eq!(u.state, UState::Idle, "only idle connections are evicted");
            self.stats.groups[u.group as usize].evictions[why as usize] += 1;
        }
        self.close(id, reset);
    }

    /// Closes an upstream connection that carried a request instead of pooling it, counting why.
    fn close_upstream(&mut self, id: ConnId, reset: bool, why: NotReusable) {
        if let Some(Role::Upstream(u)) = self.conns.get_mut(id).map(|c| &c.role) {
            debug_assert_ne!(u.state, UState::Idle, "idle connections are evicted");
            self.stats.groups[u.group as usize].not_reused[why as usize] += 1;
        }
        self.close(id, reset);
    }

    /// Removes a connection and tells the runtime to close it. Upstream connections leave
    /// through [`Core::evict`] or [`Core::close_upstream`], which count why.
    fn close(&mut self, id: ConnId, reset: bool) {
        self.release_server(id);
        let Some(c) = self.conns.get(id) else { return };
        if matches!(c.role, Role::Client(_)) {
            self.clients -= 1;
        }
        self.pool.remove(id);
        self.timers.set(id.index, None);
        self.conns.remove(id);
        self.out.push_back(Output::Close { conn: id, reset });
    }

    /// Emits a Write for `id` if it has output, can write, and was not told already.
    fn signal_write(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.buf.wq.is_empty() || c.buf.write_signalled {
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

    fn push(&mut self, now: Time, id: ConnId, b: Bytes) {
        if let Some(c) = self.conns.get_mut(id) {
            if let Role::Client(cl) = &mut c.role {
                cl.ex.bytes_sent += b.len() as u64;
            }
            c.buf.push(now, b);
            touch(&mut self.touched, id);
            self.signal_write(id);
        }
    }

    /// After a batch of changes: buffered pipelined requests, then read interest and deadlines
    /// of every touched connection.
    fn sync(&mut self, now: Time) {
        while let Some(id) = self.ready.pop_front() {
            self.drive_client(now, id);
            // A client that already sent EOF: the request just started from its buffer may
            // be all it will ever send — relay, then finish or abandon it as an EOF would.
            if self.conns.get(id).is_some_and(|c| c.buf.read_closed) {
                self.on_read_closed(now, id);
            }
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
                        Role::Client(cl) => cl.body_progress = now,
                    }
                }
                self.out.push_back(Output::Interest {
                    conn: id,
                    read: want,
                });
            }
            self.arm(id);
        }
        touched.clear();
        self.touched = touched;
    }

    fn wants_read(&self, id: ConnId) -> Option<bool> {
        let c = self.conns.get(id)?;
        if c.buf.read_closed {
            return Some(false);
        }
        let hw = self.config.limits.write_high_water;
        Some(match &c.role {
            Role::Client(cl) => match cl.phase {
                Phase::Idle | Phase::Head | Phase::Lingering => true,
                Phase::Closing => false,
                Phase::Exchange => {
                    let peer_full = cl
                        .ex
                        .upstream
                        .and_then(|u| self.conns.get(u))
                        .is_some_and(|u| u.buf.wq_len >= hw);
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
                UState::Connecting => true,
                UState::Idle => true,
                UState::Active | UState::Tunnel => u
                    .client
                    .and_then(|cl| self.conns.get(cl))
                    .is_none_or(|cl| cl.buf.wq_len < hw),
            },
        })
    }

    /// The deadline `id` is under now, with what it is for: the earliest of those its state
    /// arms (the first considered wins a tie). The one place that decides both when a timer
    /// fires and what firing means ([`Core::on_timeout`]).
    fn deadline(&self, id: ConnId) -> Option<(Time, Deadline)> {
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
                if !c.buf.wq.is_empty() {
                    consider(c.buf.write_progress.plus(t.send), Deadline::ClientSend);
                }
                match cl.phase {
                    // A new connection owes us its first request within the header timeout
                    // (nginx's client_header_timeout); between requests keepalive applies.
                    Phase::Idle if cl.requests == 0 => {
                        consider(cl.since.plus(t.header), Deadline::ClientHeader)
                    }
                    // Still writing the last response: only the send timeout applies.
                    Phase::Idle if !c.buf.wq.is_empty() => {}
                    Phase::Idle => consider(cl.since.plus(t.keepalive), Deadline::ClientKeepalive),
                    Phase::Head => consider(cl.since.plus(t.header), Deadline::ClientHeader),
                    Phase::Exchange => {
                        if !cl.ex.req_done && c.buf.reading {
                            consider(cl.body_progress.plus(t.body), Deadline::ClientBody);
                        }
                    }
                    Phase::Lingering => consider(cl.since.plus(t.lingering), Deadline::Lingering),
                    Phase::Closing => {}
                }
            }
            Role::Upstream(u) => {
                let g = &self.config.upstreams[u.group as usize];
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
                        if !c.buf.wq.is_empty() {
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
                }
            }
        }
        d
    }

    /// Arms the timer of `id` for its current state, remembering what it is for.
    fn arm(&mut self, id: ConnId) {
        let deadline = self.deadline(id);
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.deadline = deadline.map(|(_, kind)| kind);
        self.timers.set(id.index, deadline.map(|(at, _)| at));
    }

    // ----- events -----

    fn on_readable(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        match &mut c.role {
            Role::Client(_) => self.drive_client(now, id),
            Role::Upstream(u) => {
                u.read_progress = now;
                match u.state {
                    UState::Idle => {
                        // An idle connection must have nothing to say (RFC 9112 §9.2): a stray
                        // 408 or garbage evicts it and never reaches a client.
                        self.evict(id, true, EvictReason::UnexpectedData);
                    }
                    UState::Connecting => {
                        // Data before we were told the connect finished: keep it buffered.
                    }
                    UState::Active | UState::Tunnel => {
                        u.responded = true;
                        self.drive_upstream(now, id)
                    }
                }
            }
        }
    }

    fn on_read_closed(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        match &c.role {
            Role::Client(cl) => match cl.phase {
                // Nothing more is owed (a partial head is abandoned by the client itself), but
                // a response still being written is delivered before the close.
                Phase::Idle | Phase::Head => {
                    self.close_client_after_flush(now, id, AfterFlush::Close)
                }
                Phase::Lingering => self.close(id, false),
                Phase::Closing => {}
                Phase::Exchange => {
                    if cl.ex.resp == Resp::Tunnel {
                        self.end_tunnel(id);
                    } else if !cl.ex.req_done {
                        // The rest of the request may already be buffered (a client that
                        // half-closes after sending): relay it before deciding.
                        self.drive_client(now, id);
                        if self.defer_eof(id) {
                            return;
                        }
                        if let Some(cl) = self.conns.client(id)
                            && cl.phase == Phase::Exchange
                            && !cl.ex.req_done
                        {
                            // The request will never complete: abandon the exchange. Responses
                            // to earlier pipelined requests still queued go out first; a
                            // response to this one already under way is cut with a reset.
                            let how = if cl.ex.resp_started {
                                AfterFlush::Reset
                            } else {
                                AfterFlush::Close
                            };
                            self.release_upstream_of(id);
                            self.close_client_after_flush(now, id, how);
                        }
                    }
                    // Otherwise a half-close after a complete request: the response (and any
                    // complete pipelined requests already buffered) are still answered;
                    // `end_exchange` closes once nothing is left.
                }
            },
            Role::Upstream(u) => match u.state {
                UState::Idle => self.evict(id, false, EvictReason::PeerClosed),
                UState::Connecting => self.upstream_failed(now, id, Failure::ConnectFailed),
                UState::Tunnel => {
                    if let Some(cl) = u.client {
                        self.end_tunnel(cl);
                    }
                }
                UState::Active => self.upstream_eof(now, id),
            },
        }
    }

    fn on_error(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        match &c.role {
            Role::Client(cl) => {
                if cl.phase == Phase::Exchange {
                    self.abort_exchange(id);
                }
                self.close(id, true);
            }
            Role::Upstream(u) => match u.state {
                UState::Idle => self.evict(id, true, EvictReason::PeerClosed),
                UState::Connecting => {
                    let srv = u.server as usize;
                    self.stats.servers[srv].connect_failures += 1;
                    self.upstream_failed(now, id, Failure::ConnectFailed)
                }
                UState::Tunnel => {
                    if let Some(cl) = u.client {
                        self.end_tunnel(cl);
                    }
                    self.close_upstream(id, true, NotReusable::Upgraded);
                }
                UState::Active => self.upstream_failed(now, id, Failure::Closed),
            },
        }
    }

    fn on_written(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // Our output shrank: the other side may be read again (its interest is re-evaluated).
        let peer = match &c.role {
            Role::Client(cl) => cl.ex.upstream,
            Role::Upstream(u) => u.client,
        };
        let is_client = matches!(c.role, Role::Client(_));
        let empty = c.buf.wq.is_empty();
        if empty {
            c.buf.write_signalled = false;
            // Keep-alive idleness starts when the last response byte is out, not when queued.
            if let Role::Client(cl) = &mut c.role
                && cl.phase == Phase::Idle
            {
                cl.since = now;
            }
        }
        let below = c.buf.wq_len < self.config.limits.write_high_water;
        let after = c.buf.after_flush;
        if let Some(p) = peer {
            touch(&mut self.touched, p);
            if below {
                // The peer may have input waiting that backpressure held back — perhaps
                // followed by an EOF we deferred until that input was relayed.
                let deferred = self.conns.get(p).is_some_and(|pc| pc.buf.eof_deferred);
                if deferred {
                    self.on_read_closed(now, p);
                } else if is_client {
                    self.drive_upstream(now, p);
                } else {
                    self.drive_client(now, p);
                }
            }
        }
        if !empty || self.conns.get(id).is_none() {
            return;
        }
        if after == AfterFlush::Keep {
            if !is_client {
                self.request_maybe_sent(now, id);
            }
        } else {
            self.flushed(now, id);
        }
    }

    /// The write queue of `id` is empty and it was to close afterwards: do so.
    fn flushed(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        let reset = match c.buf.after_flush {
            AfterFlush::Keep => return,
            AfterFlush::Linger => return self.start_linger(now, id),
            AfterFlush::Close => false,
            AfterFlush::Reset => true,
        };
        match c.role {
            Role::Client(_) => self.close(id, reset),
            // Only a tunnel's upstream closes after a flush (see `end_tunnel`).
            Role::Upstream(_) => self.close_upstream(id, reset, NotReusable::Upgraded),
        }
    }

    /// After an EOF on `id`, relaying what it had already sent may be held back by backpressure
    /// toward its peer. Then the EOF must wait until those bytes are through (`on_written`
    /// replays it): acting on it now would cut short a message that arrived whole.
    fn defer_eof(&mut self, id: ConnId) -> bool {
        let hw = self.config.limits.write_high_water;
        let Some(c) = self.conns.get(id) else {
            return false;
        };
        let peer = match &c.role {
            Role::Client(cl) => cl.ex.upstream,
            Role::Upstream(u) => u.client,
        };
        let blocked = !c.buf.rbuf.is_empty()
            && peer
                .and_then(|p| self.conns.get(p))
                .is_some_and(|p| p.buf.wq_len >= hw);
        if let Some(c) = self.conns.get_mut(id) {
            c.buf.eof_deferred = blocked;
        }
        blocked
    }

    /// Marks the request as fully written once the client's body is complete and the queue empty.
    fn request_maybe_sent(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        let Role::Upstream(u) = &c.role else { return };
        if u.sent_all || !c.buf.wq.is_empty() || u.state != UState::Active {
            return;
        }
        let Some(cl) = u.client else { return };
        let req_done = self.conns.client(cl).is_some_and(|cl| cl.ex.req_done);
        if req_done {
            if let Some(u) = self.conns.upstream_mut(id) {
                u.sent_all = true;
                u.read_progress = now;
            }
            touch(&mut self.touched, id);
        }
    }

    /// The deadline `kind` armed for `id` passed.
    fn on_timeout(&mut self, now: Time, id: ConnId, kind: Deadline) {
        let Some(c) = self.conns.get(id) else { return };
        match (kind, &c.role) {
            (Deadline::ClientSend, Role::Client(cl)) => {
                // A client that stopped reading: give up on it (and on its upstream).
                if cl.phase == Phase::Exchange {
                    self.abort_exchange(id);
                }
                self.close(id, true);
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
                    self.abort_exchange(id);
                    self.close(id, true);
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
            (Deadline::ClientSend | Deadline::ClientBody | Deadline::TunnelIdle, _) => {
                debug_assert!(false, "{kind:?} armed for the other role");
            }
        }
    }

    // ----- client side -----

    /// Processes whatever the client's read buffer holds, as far as the current state allows.
    fn drive_client(&mut self, now: Time, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            let Role::Client(cl) = &mut c.role else {
                return;
            };
            match cl.phase {
                Phase::Closing => {
                    c.buf.rbuf.clear();
                    return;
                }
                Phase::Lingering => {
                    c.buf.rbuf.clear();
                    return;
                }
                Phase::Idle | Phase::Head => {
                    if c.buf.rbuf.is_empty() {
                        return;
                    }
                    if cl.phase == Phase::Idle {
                        cl.phase = Phase::Head;
                        // The first request's header deadline runs from the accept (nginx arms
                        // client_header_timeout there); later ones from their first byte.
                        if cl.requests > 0 {
                            cl.since = now;
                        }
                    }
                    if !self.start_exchange(now, id) {
                        return;
                    }
                }
                Phase::Exchange => {
                    if cl.ex.resp == Resp::Tunnel {
                        let data = c.buf.rbuf.split().freeze();
                        if let Some(u) = cl.ex.upstream {
                            self.push(now, u, data);
                        }
                        return;
                    }
                    if cl.ex.req_done {
                        return;
                    }
                    if !self.relay_request_body(now, id) {
                        return;
                    }
                }
            }
        }
    }

    /// Parses a request head and starts its exchange. Returns whether to keep processing.
    fn start_exchange(&mut self, now: Time, id: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        let parsed = self.head.parse_request(&c.buf.rbuf, &self.limits);
        let head = &self.head;
        match parsed {
            Ok(false) => {
                if c.buf.read_closed {
                    // The client closed with only part of a request sent: nothing to answer.
                    self.close_client_after_flush(now, id, AfterFlush::Close);
                }
                return false;
            }
            Err(e) => {
                self.client_error(now, id, e.status());
                return false;
            }
            Ok(true) => {}
        }
        let Role::Client(cl) = &mut c.role else {
            return false;
        };
        cl.requests += 1;
        let request = if self.record_requests {
            let target = head.target.of(&c.buf.rbuf);
            let method = head.method_name.of(&c.buf.rbuf);
            let mut line = Vec::with_capacity(method.len() + 1 + target.len());
            line.extend_from_slice(method);
            line.push(b' ');
            line.extend_from_slice(target);
            Bytes::from(line)
        } else {
            Bytes::new()
        };
        let replay = core::mem::take(&mut cl.ex.replay);
        cl.ex = Exchange::start(head, cl.since, request, replay);
        let ex = &mut cl.ex;
        let target = head.target.of(&c.buf.rbuf);
        let path = target.split(|&b| b == b'?').next().unwrap_or(target);
        let host = head.host.map(|h| h.of(&c.buf.rbuf));
        let route = self.router.route_from(cl.listener, host, path);
        let max_body = self.config.limits.max_body;
        let too_big = matches!(head.body, BodyKind::Length(n) if max_body > 0 && n > max_body);
        let out_body = rules::request_framing(head.body);
        // Only worth sending while the client is actually waiting: no body bytes yet.
        let expect = head.expect_continue && !ex.req_done && c.buf.rbuf.len() == head.len;
        cl.phase = Phase::Exchange;
        cl.body_progress = now;
        let peer = cl.peer;
        let Some(group) = route else {
            c.buf.rbuf.advance(head.len);
            self.client_error(now, id, 404);
            return true;
        };
        if too_big {
            c.buf.rbuf.advance(head.len);
            self.client_error(now, id, 413);
            return false;
        }
        ex.group = group.0;
        let fwd = Forwarding {
            client_ip: peer,
            x_forwarded_for: self.config.headers.x_forwarded_for,
            proto: self.config.headers.x_forwarded_proto.then_some("http"),
            via: self.config.headers.via.as_deref(),
            default_host: &self.config.upstreams[group.0 as usize].name,
        };
        let upgrade = ex.upgrade;
        let req_head = c.buf.rewrite(head.len + HEAD_GROWTH, |buf, out| {
            framing::write_request_head(head, buf, out_body, upgrade, &fwd, out)
        });
        c.buf.rbuf.advance(head.len);
        let Role::Client(cl) = &mut c.role else {
            return false;
        };
        cl.ex.req_head = req_head;
        if expect {
            // nginx's model: we answer 100 Continue ourselves and stream the body upstream
            // without Expect, so no upstream 1xx is ours to suppress or forward.
            self.push(now, id, Bytes::from_static(framing::CONTINUE_100));
        }
        self.assign_upstream(now, id, false, None);
        true
    }

    /// Moves request body bytes from the client to the upstream. Returns whether to continue.
    fn relay_request_body(&mut self, now: Time, id: ConnId) -> bool {
        let hw = self.config.limits.write_high_water;
        let max_body = self.config.limits.max_body;
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return false;
            };
            let Role::Client(cl) = &mut c.role else {
                return false;
            };
            let ex = &mut cl.ex;
            let upstream = ex.upstream;
            if let Some(u) = upstream
                && self.conns.get(u).is_some_and(|u| u.buf.wq_len >= hw)
            {
                return false;
            }
            let Some(c) = self.conns.get_mut(id) else {
                return false;
            };
            let Role::Client(cl) = &mut c.role else {
                return false;
            };
            let ex = &mut cl.ex;
            if c.buf.rbuf.is_empty() && !ex.req_decoder.is_done() {
                return false;
            }
            let step = match ex.req_decoder.step(&c.buf.rbuf) {
                Ok(s) => s,
                Err(_) => {
                    self.release_upstream_of(id);
                    self.client_error(now, id, 400);
                    return false;
                }
            };
            if step.skip == 0 && step.data == 0 && !step.done {
                return false;
            }
            cl.body_progress = now;
            c.buf.rbuf.advance(step.skip);
            if step.data > 0 {
                ex.req_bytes += step.data as u64;
                if max_body > 0 && ex.req_bytes > max_body {
                    self.release_upstream_of(id);
                    self.client_error(now, id, 413);
                    return false;
                }
            }
            let data = c.buf.rbuf.split_to(step.data).freeze();
            let mode = if ex.req_chunked {
                Reframe::Chunks
            } else {
                Reframe::Raw
            };
            let pieces = reframe(mode, &step, data, &mut c.buf);
            let Role::Client(cl) = &mut c.role else {
                return false;
            };
            let ex = &mut cl.ex;
            if step.done {
                ex.req_done = true;
            }
            for p in &pieces {
                if p.is_empty() {
                    continue;
                }
                if ex.replayable {
                    ex.replay_len += p.len();
                    if ex.replay_len > REPLAY_LIMIT {
                        ex.replayable = false;
                        ex.replay.clear();
                    } else {
                        ex.replay.push_back(p.clone());
                    }
                }
            }
            let done = ex.req_done;
            if let Some(u) = upstream {
                for p in pieces {
                    self.push(now, u, p);
                }
                if done {
                    self.request_maybe_sent(now, u);
                }
            }
            if done {
                touch(&mut self.touched, id);
                return true;
            }
        }
    }

    /// Finds a server for the current request and hands it a connection (pooled or new), then
    /// queues the request on it: `queued` when given (bytes a failed connection never wrote),
    /// otherwise the rewritten head and the body received so far (the replay copy).
    fn assign_upstream(
        &mut self,
        now: Time,
        id: ConnId,
        force_fresh: bool,
        queued: Option<VecDeque<Bytes>>,
    ) {
        let Some(cl) = self.conns.client(id) else {
            return;
        };
        let (g, hash, tried, last_status) = (
            cl.ex.group as usize,
            cl.peer_hash,
            cl.ex.tried,
            cl.ex.status,
        );
        // A stale-connection retry goes back to the same (healthy) server on a fresh connection.
        let same = match (force_fresh, cl.ex.server) {
            (true, Some(s)) => Some(self.index_in_group(g, s)),
            _ => None,
        };
        let Some(idx) = same.or_else(|| self.groups[g].balancer.pick(now, hash, tried)) else {
            self.client_error(now, id, rules::no_server_status(last_status));
            return;
        };
        let server = self.groups[g].first_server + idx as u32;
        let partition = match self.config.upstreams[g].pool_key {
            PoolKeyMode::Server => 0,
            PoolKeyMode::Client => hash | 1,
        };
        let key = PoolKey { server, partition };
        self.groups[g].balancer.acquire(idx);
        let mut expired = Vec::new();
        let pooled = if force_fresh {
            None
        } else {
            self.pool.checkout(now, key, &mut |c| expired.push(c))
        };
        for c in expired {
            self.evict(c, false, EvictReason::IdleTimeout);
        }
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        let ex = &mut cl.ex;
        ex.tries += 1;
        ex.tried |= 1u64 << idx;
        ex.server = Some(server);
        let head = ex.req_head.clone();
        let replay_ok = ex.replayable;
        let uid = match pooled {
            Some(uid) => {
                self.stats.groups[g].pool_hits += 1;
                self.stats.servers[server as usize].requests += 1;
                let u = self.conns.get_mut(uid).expect("pooled connection is open");
                let Role::Upstream(up) = &mut u.role else {
                    unreachable!("pool holds upstreams")
                };
                up.state = UState::Active;
                up.acquired = true;
                up.responded = false;
                up.client = Some(id);
                up.written = 0;
                up.sent_all = false;
                up.extra_data = false;
                up.response = ResponseFacts::default();
                up.read_progress = now;
                uid
            }
            None => {
                self.stats.groups[g].pool_misses += 1;
                self.stats.servers[server as usize].connects += 1;
                let uid = self.conns.insert(|uid| Conn {
                    id: uid,
                    buf: Buffers::new(now),
                    deadline: None,
                    role: Role::Upstream(Upstream {
                        server,
                        group: g as u32,
                        key,
                        state: UState::Connecting,
                        client: Some(id),
                        created: now,
                        requests: 0,
                        written: 0,
                        sent_all: false,
                        read_progress: now,
                        response: ResponseFacts::default(),
                        response_at: now,
                        extra_data: false,
                        acquired: true,
                        responded: false,
                    }),
                });
                self.out.push_back(Output::Connect {
                    conn: uid,
                    server: self.servers[server as usize],
                });
                uid
            }
        };
        let mut reused = false;
        if let Some(u) = self.conns.upstream_mut(uid) {
            u.requests += 1;
            reused = u.reused();
        }
        if let Some(cl) = self.conns.client_mut(id) {
            cl.ex.upstream = Some(uid);
            cl.ex.reused = reused;
        }
        touch(&mut self.touched, uid);
        match queued {
            Some(bytes) => {
                if let Some(u) = self.conns.get_mut(uid) {
                    for b in bytes {
                        u.buf.push(now, b);
                    }
                }
            }
            None => {
                let Some((c, u)) = self.conns.pair_mut(id, uid) else {
                    return;
                };
                let Role::Client(cl) = &c.role else { return };
                u.buf.push(now, head);
                if replay_ok {
                    for p in &cl.ex.replay {
                        u.buf.push(now, p.clone());
                    }
                }
            }
        }
        self.signal_write(uid);
        self.request_maybe_sent(now, uid);
    }

    /// Queues a response the proxy generates itself and ends the exchange. The connection stays
    /// open only when the request was fully read and the client allows it.
    fn client_error(&mut self, now: Time, id: ConnId, status: u16) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        let in_exchange = cl.phase == Phase::Exchange;
        if !in_exchange {
            // No exchange started (an unparsable head, a timeout): nothing of the previous
            // exchange belongs in this one's record.
            let mut request = Bytes::new();
            let mut version = cl.ex.version;
            if self.record_requests
                && let Some((line, v)) =
                    request_line_of(&c.buf.rbuf, self.config.limits.max_request_line)
            {
                // nginx logs the request line of a request it refuses (missing Host, bad
                // header...) when the line itself was well formed.
                request = Bytes::copy_from_slice(line);
                version = v;
            }
            let replay = core::mem::take(&mut cl.ex.replay);
            cl.ex = Exchange {
                version,
                request,
                started: cl.since,
                ..Exchange::idle(replay)
            };
        }
        if in_exchange && cl.ex.resp_started {
            // A response is already on its way: a second one would be read as part of its body.
            // The only honest signal left is an abortive close.
            self.abort_exchange(id);
            return;
        }
        // After an error in the request itself (or an unread body) the connection's framing
        // can't be trusted; after an upstream failure on a complete request it can (nginx too
        // keeps the client connection after a 502/504).
        let keep = in_exchange
            && rules::client_keep_alive(&ClientFacts {
                request_abandoned: !cl.ex.req_done,
                framing_broken: rules::breaks_framing(status),
                ..cl.keep_alive_facts(self.config.limits.client_keepalive_requests, self.draining)
            });
        let head_only = in_exchange && cl.ex.method == Method::Head;
        framing::write_error_response(status, !keep, head_only, c.buf.scratch(ERROR_RESPONSE));
        let b = c.buf.take_scratch();
        self.stats.responses[(status / 100) as usize % 6] += 1;
        self.stats.local_responses += 1;
        if let Some(cl) = self.conns.client_mut(id) {
            cl.ex.status = status;
            cl.ex.resp = Resp::Done;
            cl.ex.response_at = Some(now);
        }
        self.push(now, id, b);
        self.record(now, id);
        if keep {
            self.end_exchange(now, id, true);
        } else {
            self.close_client_after_flush(now, id, AfterFlush::Linger);
        }
    }

    /// The client gets no more from us: close once the queue is flushed, lingering if unread
    /// input may follow (so it reads our response instead of a reset).
    fn close_client_after_flush(&mut self, now: Time, id: ConnId, how: AfterFlush) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        cl.phase = Phase::Closing;
        c.buf.rbuf.clear();
        // Lingering only makes sense while the client may still send.
        c.buf.after_flush = match how {
            AfterFlush::Linger if c.buf.read_closed => AfterFlush::Close,
            AfterFlush::Keep => AfterFlush::Close,
            other => other,
        };
        touch(&mut self.touched, id);
        if c.buf.wq.is_empty() {
            self.flushed(now, id);
        }
    }

    fn start_linger(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // Only clients linger (see `close_client_after_flush`).
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        cl.phase = Phase::Lingering;
        cl.since = now;
        c.buf.after_flush = AfterFlush::Close;
        touch(&mut self.touched, id);
        self.out.push_back(Output::Shutdown { conn: id });
    }

    fn record(&mut self, now: Time, id: ConnId) {
        if !self.record_exchanges {
            return;
        }
        let Some(cl) = self.conns.client(id) else {
            return;
        };
        let ex = &cl.ex;
        let request = ex.request.clone();
        let info = ExchangeInfo {
            client: id,
            listener: cl.listener,
            status: ex.status,
            server: ex.server.map(|s| self.servers[s as usize]),
            reused: ex.reused,
            request,
            version: ex.version,
            started: ex.started,
            response_at: ex.response_at,
            finished: now,
            bytes_sent: ex.bytes_sent,
            bytes_received: ex.req_bytes,
        };
        self.finished.push_back(info);
    }

    /// The response is fully queued and the request fully read: next request if `keep` (the
    /// verdict of [`rules::client_keep_alive`]), or close.
    fn end_exchange(&mut self, now: Time, id: ConnId, keep: bool) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Role::Client(cl) = &mut c.role else {
            return;
        };
        cl.ex.upstream = None;
        cl.ex.replay.clear();
        cl.ex.req_head = Bytes::new();
        if keep {
            cl.phase = Phase::Idle;
            cl.since = now;
            touch(&mut self.touched, id);
            // Pipelined requests already buffered start next, in order. Queued rather than
            // driven from here: this may run inside `drive_client` itself, and a burst of
            // requests answered locally (404s, 502s) must not recurse once per request.
            if !c.buf.rbuf.is_empty() {
                self.ready.push_back(id);
            } else if c.buf.read_closed {
                self.close_client_after_flush(now, id, AfterFlush::Close);
            }
        } else {
            self.close_client_after_flush(now, id, AfterFlush::Close);
        }
    }

    /// The client went away (or stopped reading) mid-exchange: drop the upstream side unless it
    /// is already clean.
    fn abort_exchange(&mut self, id: ConnId) {
        self.release_upstream_of(id);
        self.close(id, true);
    }

    /// Detaches the current upstream connection from client `id` and closes it (it is mid-
    /// exchange, so never pooled).
    fn release_upstream_of(&mut self, id: ConnId) {
        let Some(cl) = self.conns.client_mut(id) else {
            return;
        };
        let Some(u) = cl.ex.upstream.take() else {
            return;
        };
        self.close_upstream(u, true, NotReusable::ClientAborted);
    }

    fn end_tunnel(&mut self, client: ConnId) {
        let u = match self.conns.get(client).map(|c| &c.role) {
            Some(Role::Client(cl)) => cl.ex.upstream,
            _ => None,
        };
        for id in [Some(client), u].into_iter().flatten() {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            c.buf.after_flush = AfterFlush::Close;
            if let Role::Client(cl) = &mut c.role {
                cl.phase = Phase::Closing;
            }
            touch(&mut self.touched, id);
            if c.buf.wq.is_empty() {
                match c.role {
                    Role::Client(_) => self.close(id, false),
                    Role::Upstream(_) => self.close_upstream(id, false, NotReusable::Upgraded),
                }
            }
        }
    }

    // ----- upstream side -----

    fn drive_upstream(&mut self, now: Time, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            let Role::Upstream(u) = &mut c.role else {
                return;
            };
            let Some(cid) = u.client else {
                // Not attached (shouldn't happen for Active): drop it.
                self.close_upstream(id, true, NotReusable::ClientAborted);
                return;
            };
            if u.state == UState::Tunnel {
                let data = c.buf.rbuf.split().freeze();
                self.push(now, cid, data);
                return;
            }
            let Some(Role::Client(cl)) = self.conns.get(cid).map(|c| &c.role) else {
                self.close_upstream(id, true, NotReusable::ClientAborted);
                return;
            };
            match cl.ex.resp {
                Resp::Waiting => {
                    if !self.response_head(now, id, cid) {
                        return;
                    }
                }
                Resp::Body => {
                    if !self.relay_response_body(now, id, cid) {
                        return;
                    }
                }
                Resp::Tunnel | Resp::Done => {
                    // Bytes after a complete response: the connection is not reusable.
                    let Some(c) = self.conns.get_mut(id) else {
                        return;
                    };
                    if !c.buf.rbuf.is_empty() {
                        c.buf.rbuf.clear();
                        if let Role::Upstream(u) = &mut c.role {
                            u.extra_data = true;
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Parses the upstream response head. Returns whether to keep processing.
    fn response_head(&mut self, now: Time, id: ConnId, cid: ConnId) -> bool {
        let max_requests = self.config.limits.client_keepalive_requests;
        let (method, client_version, client_ka, upgrade) = match self.conns.client(cid) {
            Some(cl) => (
                cl.ex.method,
                cl.ex.version,
                cl.keep_alive_facts(max_requests, self.draining),
                cl.ex.upgrade,
            ),
            None => return false,
        };
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        let parsed = self.head.parse_response(&c.buf.rbuf, method, &self.limits);
        match parsed {
            Ok(false) => return false,
            Err(_) => {
                self.upstream_failed(now, id, Failure::BadResponse);
                return false;
            }
            Ok(true) => {}
        }
        let head = &self.head;
        let status = head.status;
        if (100..200).contains(&status) && status != 101 {
            // Interim responses: forward to HTTP/1.1 clients (103 Early Hints...), except 100,
            // which only our own Expect handling could have asked for.
            if status != 100 && client_version == Version::Http11 {
                let Some((c, cc)) = self.conns.pair_mut(id, cid) else {
                    return false;
                };
                framing::write_informational(
                    head,
                    &c.buf.rbuf,
                    cc.buf.scratch(head.len + HEAD_GROWTH),
                );
                let b = cc.buf.take_scratch();
                self.push(now, cid, b);
            }
            let Some(c) = self.conns.get_mut(id) else {
                return false;
            };
            c.buf.rbuf.advance(self.head.len);
            return true;
        }
        let reused = self.conns.upstream(id).is_some_and(Upstream::reused);
        if status == 408 && reused {
            // On a reused connection a 408 is the backend's idle timeout racing our request
            // (Node, HAProxy and others send one before closing), not an answer to it.
            self.upstream_failed(now, id, Failure::Reused408);
            return false;
        }
        if status == 101 && !upgrade {
            self.upstream_failed(now, id, Failure::BadResponse);
            return false;
        }
        let tunnel = status == 101;
        let body = head.body;
        let facts = ResponseFacts {
            http10: head.version == Version::Http10,
            close: !head.persistent(),
            close_delimited: body == BodyKind::UntilClose,
            idle_hint: head.keep_alive_timeout.map(rules::keep_alive_hint),
        };
        let out =
            rules::response_framing(body, head.content_length, method, status, client_version);
        let close_client = !rules::client_keep_alive(&ClientFacts {
            close_delimited: out == OutBody::Close,
            ..client_ka
        });
        // From here on the request can never be re-sent: let go of its replay copies, which
        // also lets the client's scratch buffer be reclaimed in place for the response head.
        if let Some(cl) = self.conns.client_mut(cid) {
            cl.ex.req_head = Bytes::new();
            cl.ex.replay.clear();
            cl.ex.replayable = false;
        }
        let head = &self.head;
        let opts = ResponseOptions {
            body: out,
            close: close_client && !tunnel,
            keep_alive_10: !close_client && client_version == Version::Http10,
            upgrade: tunnel,
            via: self.config.headers.via.as_deref(),
        };
        let Some((c, cc)) = self.conns.pair_mut(id, cid) else {
            return false;
        };
        framing::write_response_head(
            head,
            &c.buf.rbuf,
            &opts,
            cc.buf.scratch(head.len + HEAD_GROWTH),
        );
        let b = cc.buf.take_scratch();
        let len = head.len;
        c.buf.rbuf.advance(len);
        let Role::Upstream(u) = &mut c.role else {
            return false;
        };
        u.response = facts;
        u.response_at = now;
        let (g, srv) = (u.group as usize, u.server);
        let idx = (srv - self.groups[g].first_server) as usize;
        if tunnel {
            u.state = UState::Tunnel;
        }
        self.groups[g].balancer.success(now, idx);
        let Some(cl) = self.conns.client_mut(cid) else {
            return false;
        };
        cl.ex.status = status;
        cl.ex.resp_started = true;
        cl.ex.response_at = Some(now);
        cl.ex.resp_decoder = BodyDecoder::new(body);
        cl.ex.resp_in_chunked = body == BodyKind::Chunked;
        cl.ex.resp_out = out;
        cl.ex.resp = if tunnel { Resp::Tunnel } else { Resp::Body };
        self.stats.responses[(status / 100) as usize % 6] += 1;
        self.push(now, cid, b);
        if tunnel {
            // Bytes the client sent after its upgrade request belong to the new protocol.
            touch(&mut self.touched, cid);
            if let Some(cc) = self.conns.get_mut(cid)
                && !cc.buf.rbuf.is_empty()
            {
                let data = cc.buf.rbuf.split().freeze();
                self.push(now, id, data);
            }
            if let Some(cl) = self.conns.client_mut(cid) {
                cl.ex.req_done = true;
            }
        }
        true
    }

    /// Moves response body bytes to the client. Returns whether to keep processing.
    fn relay_response_body(&mut self, now: Time, id: ConnId, cid: ConnId) -> bool {
        let hw = self.config.limits.write_high_water;
        loop {
            if self.conns.get(cid).is_none_or(|c| c.buf.wq_len >= hw) {
                return false;
            }
            let Some((c, cc)) = self.conns.pair_mut(id, cid) else {
                return false;
            };
            let Role::Client(cl) = &mut cc.role else {
                return false;
            };
            let step = match cl.ex.resp_decoder.step(&c.buf.rbuf) {
                Ok(s) => s,
                Err(_) => {
                    self.upstream_failed(now, id, Failure::BadResponse);
                    return false;
                }
            };
            if step.skip == 0 && step.data == 0 && !step.done {
                return false;
            }
            let mode = match (cl.ex.resp_out, cl.ex.resp_in_chunked) {
                (OutBody::Chunked, true) => Reframe::Chunks,
                (OutBody::Chunked, false) => Reframe::EachRead,
                _ => Reframe::Raw,
            };
            c.buf.rbuf.advance(step.skip);
            let data = c.buf.rbuf.split_to(step.data).freeze();
            for p in reframe(mode, &step, data, &mut cc.buf) {
                self.push(now, cid, p);
            }
            if step.done {
                self.finish_response(now, id, cid);
                return false;
            }
        }
    }

    fn upstream_eof(&mut self, now: Time, id: ConnId) {
        let Some(u) = self.conns.upstream(id) else {
            return;
        };
        let Some(cid) = u.client else {
            self.close_upstream(id, false, NotReusable::ClientAborted);
            return;
        };
        let Some(cl) = self.conns.client(cid) else {
            self.close_upstream(id, false, NotReusable::ClientAborted);
            return;
        };
        if cl.ex.resp == Resp::Body {
            // Let the decoder see everything that arrived before the EOF.
            self.drive_upstream(now, id);
            if self.defer_eof(id) {
                return;
            }
            let Some(cl) = self.conns.client(cid) else {
                return;
            };
            if cl.ex.resp != Resp::Body || self.conns.get(id).is_none() {
                return;
            }
            if cl.ex.resp_decoder.on_eof().is_ok() {
                // Close-delimited body: complete.
                if cl.ex.resp_out == OutBody::Chunked {
                    self.push(now, cid, Bytes::from_static(framing::LAST_CHUNK));
                }
                self.finish_response(now, id, cid);
                return;
            }
        }
        self.upstream_failed(now, id, Failure::Closed);
    }

    /// The response is fully relayed: pool or close the upstream connection, then end the
    /// exchange if the request side is done too.
    fn finish_response(&mut self, now: Time, id: ConnId, cid: ConnId) {
        let Some(c) = self.conns.get(id) else { return };
        let Role::Upstream(u) = &c.role else { return };
        let g = u.group as usize;
        let gcfg = &self.config.upstreams[g];
        let req_done = self.conns.client(cid).is_some_and(|cl| cl.ex.req_done);
        let verdict = rules::upstream_reusable(&UpstreamFacts {
            pooling: gcfg.keepalive > 0,
            draining: self.draining,
            response: u.response,
            request_sent: req_done && u.sent_all && c.buf.wq.is_empty(),
            extra_data: u.extra_data || !c.buf.rbuf.is_empty(),
            peer_closed: c.buf.read_closed,
            requests: u.requests,
            max_requests: gcfg.keepalive_requests,
            age: now.since(u.created),
            max_age: gcfg.keepalive_time,
        });
        let key = u.key;
        // Idle until the first of: our keepalive_timeout, the backend's Keep-Alive hint, the
        // connection's keepalive_time. The pool entry is the one record of it.
        let hinted = match u.response.idle_hint {
            Some(hint) => u.response_at.plus(hint),
            None => Time(u64::MAX),
        };
        let expires = now
            .plus(gcfg.keepalive_timeout)
            .min(hinted)
            .min(u.created.plus(gcfg.keepalive_time));
        self.release_server(id);
        match verdict {
            Ok(()) => {
                let Some(u) = self.conns.upstream_mut(id) else {
                    return;
                };
                u.state = UState::Idle;
                u.client = None;
                self.stats.groups[g].pool_checkins += 1;
                if let Some(evicted) = self.pool.checkin(now, key, g as u32, id, expires) {
                    self.evict(evicted, false, EvictReason::Capacity);
                }
                touch(&mut self.touched, id);
            }
            Err(why) => self.close_upstream(id, false, why),
        }
        let Some(cl) = self.conns.client_mut(cid) else {
            return;
        };
        cl.ex.resp = Resp::Done;
        cl.ex.upstream = None;
        self.record(now, cid);
        let Some(cl) = self.conns.client(cid) else {
            return;
        };
        if cl.ex.req_done {
            let keep = rules::client_keep_alive(
                &cl.keep_alive_facts(self.config.limits.client_keepalive_requests, self.draining),
            );
            self.end_exchange(now, cid, keep);
        } else {
            // The upstream answered before the request body was complete (e.g. 413): we will
            // not read the rest, so the connection cannot continue.
            self.close_client_after_flush(now, cid, AfterFlush::Linger);
        }
    }

    /// An upstream attempt failed: retry (stale pooled connection, or next server when safe),
    /// or answer 502/504, or abort a response already under way.
    fn upstream_failed(&mut self, now: Time, id: ConnId, why: Failure) {
        let Some(c) = self.conns.get(id) else { return };
        let Role::Upstream(u) = &c.role else { return };
        let (g, srv, written) = (u.group as usize, u.server, u.written);
        let responded = u.responded || !c.buf.rbuf.is_empty();
        let race = rules::keepalive_race(why, u.reused(), responded);
        let idx = self.index_in_group(g, srv);
        let client = u.client;
        // Whatever was queued but never written can move to the next connection as is.
        let unsent = if client.is_some() && written == 0 && why != Failure::BadResponse {
            let c = self.conns.get_mut(id).expect("checked above");
            Some(core::mem::take(&mut c.buf.wq))
        } else {
            None
        };
        let reason = rules::failure_reason(why, race);
        self.close_upstream(id, client.is_none() || why != Failure::BadResponse, reason);
        let Some(cid) = client else { return };
        let Some(cl) = self.conns.client_mut(cid) else {
            return;
        };
        let ex = &mut cl.ex;
        ex.upstream = None;
        if ex.resp_started {
            // Part of the response already went out. The client must see it cut short: after
            // what is queued, an abortive close — a FIN would make a close-delimited body look
            // complete.
            self.close_client_after_flush(now, cid, AfterFlush::Reset);
            return;
        }
        let gcfg = &self.config.upstreams[g];
        let retry = rules::retry(&Attempt {
            why,
            race,
            stale_retried: ex.stale_retried,
            written: written > 0,
            replayable: unsent.is_some() || ex.replayable,
            idempotent: ex.method.is_idempotent(),
            tries: ex.tries,
            max_tries: gcfg.next_upstream_tries,
            next_on_timeout: gcfg.next_upstream_on_timeout,
        });
        match retry {
            Retry::Fresh => {
                // Not a sign of ill health: re-send once on a fresh connection to the same
                // server, as if this attempt had not happened.
                ex.stale_retried = true;
                ex.tries -= 1;
                ex.tried &= !(1u64 << idx);
                self.stats.groups[g].stale_retries += 1;
            }
            Retry::Next => self.stats.groups[g].next_upstream += 1,
            Retry::Answer => {}
        }
        if retry != Retry::Fresh && rules::counts_against_server(why, race) {
            self.stats.servers[srv as usize].failures += 1;
            self.groups[g].balancer.failure(now, idx);
        }
        let status = rules::failure_status(why);
        if retry == Retry::Answer {
            self.client_error(now, cid, status);
            return;
        }
        if let Some(cl) = self.conns.client_mut(cid) {
            cl.ex.status = status;
        }
        // Exactly the unsent bytes when nothing was written, else head + replay copy.
        self.assign_upstream(now, cid, retry == Retry::Fresh, unsent);
    }
}

/// `METHOD SP target` and the version of a well-formed first line `METHOD SP target SP
/// HTTP/1.x CRLF` at the start of `buf`, for the record of a refused request.
fn request_line_of(buf: &[u8], max: usize) -> Option<(&[u8], Version)> {
    let end = buf.iter().take(max).position(|&b| b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let (rest, version) = if let Some(r) = line.strip_suffix(b" HTTP/1.1") {
        (r, Version::Http11)
    } else {
        (line.strip_suffix(b" HTTP/1.0")?, Version::Http10)
    };
    let sp = rest.iter().position(|&b| b == b' ')?;
    let (method, target) = (&rest[..sp], &rest[sp + 1..]);
    let visible = |b: &u8| b.is_ascii_graphic();
    (!method.is_empty()
        && method.iter().all(visible)
        && !target.is_empty()
        && target.iter().all(visible))
    .then_some((rest, version))
}

/// Notes that a connection's interest and deadline must be re-evaluated at the end of the call.
fn touch(touched: &mut Vec<ConnId>, id: ConnId) {
    if touched.last() != Some(&id) {
        touched.push(id);
    }
}

/// How body bytes are framed on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reframe {
    /// As they came (Content-Length on both sides, or close-delimited toward an HTTP/1.0 client).
    Raw,
    /// Chunked in, chunked out: the sender's chunk boundaries are kept, so the output does not
    /// depend on how reads split the input (and a 1-byte read does not become a 1-byte chunk).
    Chunks,
    /// Close-delimited in, chunked out: each read becomes a chunk.
    EachRead,
}

/// The pieces to queue for one decoder step: chunk-size line, payload, chunk CRLF, last chunk.
/// Small framing pieces come from `buf`'s scratch or are static; the payload is passed through.
fn reframe(mode: Reframe, step: &framing::Step, data: Bytes, buf: &mut Buffers) -> [Bytes; 4] {
    let mut out = [Bytes::new(), Bytes::new(), Bytes::new(), Bytes::new()];
    match mode {
        Reframe::Raw => out[1] = data,
        Reframe::Chunks => {
            if let Some(size) = step.chunk_start {
                framing::write_chunk_size(size, buf.scratch(CHUNK_LINE));
                out[0] = buf.take_scratch();
            }
            out[1] = data;
            if step.chunk_end {
                out[2] = Bytes::from_static(framing::CRLF);
            }
            if step.done {
                out[3] = Bytes::from_static(framing::LAST_CHUNK);
            }
        }
        Reframe::EachRead => {
            if !data.is_empty() {
                framing::write_chunk_size(data.len() as u64, buf.scratch(CHUNK_LINE));
                out[0] = buf.take_scratch();
                out[1] = data;
                out[2] = Bytes::from_static(framing::CRLF);
            }
        }
    }
    out
}

/// Hash of a client address (seeded FNV-1a then a finaliser): deterministic for a given seed.
fn hash_ip(seed: u64, ip: Option<IpAddr>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    match ip {
        Some(IpAddr::V4(v4)) => v4.octets().into_iter().for_each(&mut eat),
        Some(IpAddr::V6(v6)) => v6.octets().into_iter().for_each(&mut eat),
        None => eat(0),
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}
