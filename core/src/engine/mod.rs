//! The engine: client connections, upstream connections, the exchange that pairs them, and the
//! rules that decide when an upstream connection goes back to the pool, is retried or is closed.
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Core`]: construction, the public API, the drive entry points (`accept`, `handle`, `handle_timeout`, `begin_drain`) |
//! | [`io`] | [`Input`] and [`Output`]: what passes between a runtime and the core |
//! | [`table`] | the connection table, and the one place connections close, are evicted or not reused |
//! | [`readiness`] | read interest (backpressure) and deadlines, each armed with its kind |
//! | [`events`] | readable / EOF / error / written, routed to a side |
//! | [`client`] | the client side: request heads, our own error responses, keep-alive, lingering |
//! | [`exchange`] | one request and its response, and its record ([`ExchangeInfo`]) |
//! | [`upstream`] | the upstream side: server and connection choice, response heads, pooling, retries |
//! | [`relay`] | body bytes moved and reframed between the sides; tunnels |
//! | [`queue`] | requests waiting for a server slot (`max_conns`), FIFO across workers |
//! | [`handover`] | an idle pooled connection moved to the worker whose request is next |
//! | [`splice`] | body payload the runtime moves with `splice(2)`, counted but never seen |
//!
//! The decisions themselves (keep-alive, reusability, retries, framing, statuses) are pure
//! functions in [`crate::rules`]; the engine gathers their facts and acts on their verdicts.

use bytes::BytesMut;
use core::net::IpAddr;
use std::collections::VecDeque;

use crate::balance::Balancer;
use crate::config::{Address, Config};
use crate::connection::{AfterFlush, Buffers};
use crate::framing::{Head, HeadLimits};
use crate::pool::{EvictReason, Pool};
use crate::route::Router;
use crate::rules::Failure;
use crate::shared::Shared;
use crate::spare::Spares;
use crate::stats::{GroupStats, ServerStats, Stats};
use crate::timers::Timers;
use crate::{ConnId, ListenerId, ServerId, Time, UpstreamId};

mod client;
mod events;
mod exchange;
mod handoff;
mod handover;
mod health;
mod io;
mod queue;
mod readiness;
mod record;
mod relay;
mod splice;
mod table;
mod upstream;
mod warm;

pub use exchange::ExchangeInfo;
pub use handoff::Released;
pub use handover::Handed;
pub use io::{AtCapacity, Input, Output};
pub use record::{End, RequestFields, Tries, UpstreamTry};
pub use splice::{HEAD_READ, HEAD_READ_AFTER_LARGE, SpliceTo};

/// Why a server takes no requests ([`Core::server_out_because`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerOut {
    /// Passive health: `max_fails` failures within `fail_timeout`.
    Failures,
    /// Its active health check fails (`health_check`).
    HealthCheck,
    /// Its administrative state (`drain` or `down`: configured, or set on the admin listener).
    State(crate::config::ServerState),
}

use client::{Client, Phase};
use exchange::Exchange;
use table::{Conn, Role, Table};
use upstream::UState;

/// Room for what a rewritten head adds to the received one (framing, X-Forwarded-*, Via...).
const HEAD_GROWTH: usize = 256;

/// One upstream group: its balancer, where its servers start in the global server order, and
/// this worker's requests waiting for a slot.
#[derive(Debug)]
struct Group {
    balancer: Balancer,
    first_server: u32,
    queue: VecDeque<queue::Waiter>,
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
    /// Request ids generated so far, and the runtime's prefix for them (see `record`).
    request_ids: u64,
    request_id_prefix: u64,
    /// Where records' request lines and generated ids are copied to.
    record_bytes: record::RecordBytes,
    /// Copy Host, Referer and User-Agent into records.
    record_fields: bool,
    record_exchanges: bool,
    record_requests: bool,
    stats: Stats,
    head: Head,
    limits: HeadLimits,
    clients: usize,
    draining: bool,
    /// A handoff drain ([`Core::begin_handoff`]): client connections move to another core.
    handing_off: bool,
    seed: u64,
    /// Warm-connection bookkeeping per server (`min_idle`), and whether any group asks for it.
    warm: Vec<warm::WarmServer>,
    warm_on: bool,
    /// Some group has `health_check` (see `health`).
    checks_on: bool,
    /// When a warm connect backing off may be retried (earliest over the servers that lack
    /// warm connections), so that [`Core::poll_timeout`] wakes the runtime for it.
    warm_next: Option<Time>,
    /// The process-wide ledger of servers, and this core's worker index in it.
    shared: Shared,
    worker: usize,
    /// Groups in which a slot freed (or the queue's head changed) while requests wait: their
    /// queues are dispatched at the end of the call.
    freed: Vec<(u32, bool)>,
    /// Per group: some server has a `max_conns` (only then do idle connections matter to the
    /// queue).
    capped: Vec<bool>,
    /// Workers to wake once the runtime has acted on this call's outputs.
    wakes: Vec<usize>,
    /// A slot was given back in this call: wake the first in line of the linked ledgers
    /// ([`Shared::continued`]) too once the outputs are acted on.
    wake_linked: bool,
    /// Per group: the ledger's usability epoch last acted on (see `close_unusable_idle`).
    epochs: Vec<u64>,
    /// `max_conns` slots of upstream connections closed in this call whose [`Output::Close`]
    /// the runtime has not taken yet: (connection, group, server index). A slot is given back
    /// to the ledger only when its Close leaves [`Core::poll_output`] (the runtime closes the
    /// socket right then), so another worker cannot open a connection to a one-at-a-time
    /// backend before this one's FIN is on its way; a request of this core takes such a slot
    /// over directly (its Connect follows the Close in the output order).
    closing_slots: Vec<(ConnId, u32, u32)>,
    /// Read and scratch buffers idle and closed connections gave back (see `spare`).
    spares: Spares,
    /// The runtime splices body bytes ([`Core::enable_splice`]).
    splice: bool,
}

impl Core {
    /// A core for `config` (validated here). `seed` feeds every hash the core computes (client
    /// address hashing for `ip_hash` and pool partitioning), so two cores built with the same
    /// config and seed behave identically.
    pub fn new(config: Config, seed: u64) -> Result<Core, crate::config::ConfigError> {
        let shared = Shared::new(&config, 1);
        Core::with_shared(config, seed, shared, 0)
    }

    /// A core that is worker `worker` of a process whose workers share `shared` — made with
    /// [`Shared::new`] from the same `config` — so `max_conns`, the queue bound and order, server
    /// states and health hold for the process, not per worker. The runtime registers a waker
    /// per worker ([`Shared::set_waker`]) and calls [`Core::handle_shared`] when woken.
    pub fn with_shared(
        config: Config,
        seed: u64,
        shared: Shared,
        worker: usize,
    ) -> Result<Core, crate::config::ConfigError> {
        config.validate_resolved()?;
        shared.fits(&config, worker)?;
        let router = Router::new(&config);
        let mut groups = Vec::new();
        let mut servers = Vec::new();
        let mut caps = Vec::new();
        for (g, up) in config.upstreams.iter().enumerate() {
            groups.push(Group {
                balancer: Balancer::with_ledger(up, shared.group(g).clone()),
                first_server: servers.len() as u32,
                queue: VecDeque::new(),
            });
            for i in 0..up.servers.len() {
                servers.push(ServerId {
                    upstream: UpstreamId(g as u32),
                    index: i as u32,
                });
            }
            caps.push(up.keepalive);
        }
        let groups_len = groups.len();
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
            conns: Table::default(),
            timers: Timers::default(),
            out: VecDeque::new(),
            touched: Vec::new(),
            ready: VecDeque::new(),
            finished: VecDeque::new(),
            request_ids: 0,
            request_id_prefix: 0,
            record_bytes: record::RecordBytes::default(),
            record_fields: false,
            record_exchanges: false,
            record_requests: false,
            stats,
            head: Head::new(),
            limits,
            clients: 0,
            draining: false,
            handing_off: false,
            seed,
            warm: vec![warm::WarmServer::default(); servers.len()],
            warm_on: config.upstreams.iter().any(|u| u.min_idle > 0),
            warm_next: None,
            checks_on: config.upstreams.iter().any(|u| u.health_check.is_some()),
            servers,
            shared,
            worker,
            freed: Vec::new(),
            capped: config
                .upstreams
                .iter()
                .map(|u| u.servers.iter().any(|s| s.max_conns > 0))
                .collect(),
            wakes: Vec::new(),
            wake_linked: false,
            epochs: vec![0; groups_len],
            closing_slots: Vec::new(),
            spares: Spares::default(),
            splice: false,
            config,
        })
    }

    /// The process-wide ledger this core shares with the other workers.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Something the workers share changed (a slot freed for a request waiting here, a
    /// server's state changed): dispatch waiting requests, close idle pooled connections to
    /// servers that are no longer usable. Call it when the waker registered with
    /// [`Shared::set_waker`] fires; spurious calls are harmless.
    pub fn handle_shared(&mut self, now: Time) {
        for g in 0..self.groups.len() {
            if self.shared.group(g).queued() > 0 {
                self.freed.push((g as u32, false));
            }
        }
        self.close_unusable_idle(now);
        self.yield_to_linked();
        self.sync(now);
    }

    /// Requests of group `upstream` waiting in this core's queue.
    pub fn queued(&self, upstream: UpstreamId) -> usize {
        self.groups
            .get(upstream.0 as usize)
            .map_or(0, |g| g.queue.len())
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

    /// Requests in flight on `server`: connections to it that carry (or are opening for) a
    /// request — the count least-conn balances and `max_conns` caps.
    pub fn server_in_flight(&self, server: ServerId) -> u32 {
        self.groups[server.upstream.0 as usize]
            .balancer
            .active(server.index as usize)
    }

    /// Why `server` is out of use now, if it is: its administrative state, its active health
    /// check, or passive health (`max_fails` failures within `fail_timeout`).
    pub fn server_out_because(&self, now: Time, server: ServerId) -> Option<ServerOut> {
        if self.server_up(now, server) {
            return None;
        }
        let ledger = self.shared.group(server.upstream.0 as usize);
        let l = &ledger.servers[server.index as usize];
        Some(match l.state() {
            crate::config::ServerState::Up if l.check_failed() => ServerOut::HealthCheck,
            crate::config::ServerState::Up => ServerOut::Failures,
            state => ServerOut::State(state),
        })
    }

    /// Whether this core is the one to report that `server` became usable (`up`) or out of
    /// use: every worker sees the same change, and exactly one of them gets `true` for it (the
    /// process-wide ledger keeps what was last reported), so the operator log says it once.
    pub fn claim_usability_report(&self, server: ServerId, up: bool) -> bool {
        self.shared.group(server.upstream.0 as usize).servers[server.index as usize]
            .claim_report(up)
    }

    /// The administrative state of `server` (shared by every worker).
    pub fn server_state(&self, server: ServerId) -> crate::config::ServerState {
        self.shared
            .state(server.upstream.0 as usize, server.index as usize)
            .unwrap_or_default()
    }

    /// Idle pooled connections of a group.
    pub fn pool_idle(&self, upstream: UpstreamId) -> usize {
        self.pool.idle_in_group(upstream.0)
    }

    /// Open client connections.
    pub fn client_connections(&self) -> usize {
        self.clients
    }

    /// Bytes of idle buffer storage the core freed since the last call (its free list's
    /// surplus, and all of it once the worker idles): worth returning to the system
    /// (`malloc_trim`) once they add up.
    pub fn take_released(&mut self) -> usize {
        self.spares.take_released()
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

    /// Also copy each request's `METHOD target` into [`ExchangeInfo::request`] and give it a
    /// request id (the client's `X-Request-Id`, or one generated and forwarded upstream) — for
    /// access logs and the runtimes' error lines; both are copied into a shared buffer, one
    /// allocation per ~10 requests, so off by default. Implies nothing unless
    /// [`record_exchanges`](Core::record_exchanges) is on.
    pub fn record_requests(&mut self, on: bool) {
        self.record_requests = on;
    }

    /// Request lines and ids are copied: only for records that will be taken (a copy no record
    /// takes would stay in the exchange, pinning its share of `RecordBytes`, until the
    /// connection's next request).
    fn recording_requests(&self) -> bool {
        self.record_requests && self.record_exchanges
    }

    /// Also copy `Host`, `Referer` and `User-Agent` into [`ExchangeInfo::fields`] (for access
    /// logs: more bytes in the same shared buffer, so off by default). Needs
    /// [`record_requests`](Core::record_requests).
    pub fn record_request_fields(&mut self, on: bool) {
        self.record_fields = on;
    }

    /// The first 64 bits of the request ids this core generates (the rest counts requests), so
    /// ids stay unique across workers and restarts: a runtime passes something unique to the
    /// process and worker (the core itself has no clock or randomness to draw it from).
    pub fn set_request_id_prefix(&mut self, prefix: u64) {
        self.request_id_prefix = prefix;
    }

    /// The next finished exchange, if recording.
    ///
    /// Exchanges are a queue apart from [`Core::poll_output`]: they only report, never ask the
    /// runtime to act, so the order between the two queues does not matter to correctness. An
    /// exchange is queued when its response's last byte is *queued* to the client — before the
    /// [`Output::Write`] that carries it is taken — and it carries everything a log line needs
    /// (the client's address included), so it may be taken before or after the outputs of the
    /// same call, even after the client's [`Output::Close`]. Both runtimes take them once per
    /// drain, after acting on the outputs.
    pub fn poll_exchange(&mut self) -> Option<ExchangeInfo> {
        self.finished.pop_front()
    }

    /// The next thing to do, or `None` once everything has been said.
    ///
    /// Returning `None` also means the runtime has acted on every output before it: that is
    /// when other workers are woken through the shared ledger (a slot this worker freed by
    /// closing a connection is free on the wire too before another worker opens one).
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.out.pop_front();
        if let Some(Output::Close { conn, .. }) = out
            && !self.closing_slots.is_empty()
        {
            self.slot_closed(conn);
        }
        if out.is_none() {
            for w in self.wakes.drain(..) {
                self.shared.wake(w);
            }
            if core::mem::take(&mut self.wake_linked) {
                self.shared.wake_linked();
            }
        }
        out
    }

    /// The earliest deadline: call [`Core::handle_timeout`] when it is reached.
    pub fn poll_timeout(&self) -> Option<Time> {
        [
            self.timers.next(),
            self.warm_next,
            self.next_check(),
            self.spares.due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Bytes queued for `conn`, in order (empty for an unknown id) — none while piped bytes
    /// ([`Core::piped`]) go first: those leave through [`Core::write_piped_with`].
    pub fn pending(&self, conn: ConnId) -> impl Iterator<Item = &[u8]> + '_ {
        self.conns
            .get(conn)
            .filter(|c| c.buf.piped == 0)
            .into_iter()
            .flat_map(|c| c.buf.wq.iter().map(|b| &b[..]))
    }

    /// The primitive under [`Core::read_with`] — use that: it commits the count and classifies
    /// EOF and errors, so the loan cannot be misused.
    ///
    /// The read buffer of `conn`, with at least `want` bytes of spare capacity, for a runtime
    /// that reads from the socket straight into it — saving the copy [`Input::Received`] makes
    /// (measured: ~10 % of the CPU of a proxied 64 KiB response). Append only, into the spare
    /// capacity, then report the count with [`Input::Appended`] before any other input for
    /// `conn`. `None` for an unknown connection.
    #[doc(hidden)]
    pub fn read_buffer(&mut self, conn: ConnId, want: usize) -> Option<&mut BytesMut> {
        let c = self.conns.get_mut(conn)?;
        self.spares.lend(&mut c.buf, want);
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

    /// Whether upstream connection `conn` waits for a read that finds its socket empty before
    /// it is pooled ([`Input::Drained`]): its response ended on a read that filled its room or
    /// on a splice. A runtime whose reads complete asynchronously (io_uring) reads it once
    /// itself, non-blocking.
    pub fn is_settling(&self, conn: ConnId) -> bool {
        self.conns
            .upstream(conn)
            .is_some_and(|u| u.state == upstream::UState::Settling)
    }

    /// Records whether the read just made of `conn` took all the room it had (an upstream
    /// connection's [`upstream::Upstream::unread`]).
    pub(crate) fn note_read(&mut self, conn: ConnId, full: bool) {
        if let Some(u) = self.conns.upstream_mut(conn) {
            u.unread = full;
        }
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
        Ok(self.admit(now, listener, peer))
    }

    /// A client connection enters the core (accepted, or adopted from another core).
    fn admit(&mut self, now: Time, listener: ListenerId, peer: Option<IpAddr>) -> ConnId {
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
        id
    }

    /// Applies one network event.
    pub fn handle(&mut self, now: Time, input: Input<'_>) {
        match input {
            Input::Received { conn, data } | Input::ReceivedFull { conn, data } => {
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                if data.is_empty() {
                    return;
                }
                if let Role::Upstream(u) = &mut c.role {
                    u.unread = matches!(input, Input::ReceivedFull { .. });
                }
                self.spares.lend(&mut c.buf, data.len());
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
                    // A read that found nothing (the runtime's first read of a new connection,
                    // a spurious wake-up) leaves an idle connection without buffers again.
                    self.shed_if_idle(conn);
                    self.spares.schedule(now);
                    return;
                }
                touch(&mut self.touched, conn);
                self.on_readable(now, conn);
            }
            Input::Drained { conn } => self.settled(now, conn),
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
            Input::Spliced { conn, n } => {
                if n > 0 && self.conns.get(conn).is_some() {
                    self.on_spliced(now, conn, n);
                }
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
                if let Role::Upstream(u) = &c.role
                    && u.state == UState::Connecting
                    && u.check.is_some()
                {
                    self.check_connected(now, conn);
                } else if let Role::Upstream(u) = &c.role
                    && u.state == UState::Connecting
                    && u.unused_warm
                {
                    self.warm_connected(now, conn);
                } else if let Role::Upstream(u) = &mut c.role
                    && u.state == UState::Connecting
                {
                    u.state = UState::Active;
                    u.read_progress = now;
                    c.buf.write_progress = now;
                    let srv = u.server as usize;
                    let client = u.client;
                    self.stats.servers[srv].requests += 1;
                    // A backend may answer before we learn the connect finished (an overload
                    // 503 on accept): what it sent is waiting in the buffer.
                    let early = !c.buf.rbuf.is_empty();
                    if early {
                        u.responded = true;
                    }
                    self.try_connected(now, client);
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
            Input::ConnectRejected { conn } => {
                let Some(c) = self.conns.get(conn) else {
                    return;
                };
                match &c.role {
                    // Connecting, or a fresh connection the server has not answered on (TLS
                    // 1.3 refuses a client certificate only after the handshake).
                    Role::Upstream(u)
                        if u.state == UState::Connecting
                            || (u.state == UState::Active
                                && !u.reused()
                                && !u.responded
                                && c.buf.rbuf.is_empty()) =>
                    {
                        self.upstream_failed(now, conn, Failure::Rejected);
                    }
                    // Anything else is a failed connection like any other.
                    _ => self.on_error(now, conn),
                }
            }
        }
        self.sync(now);
    }

    /// Fires every deadline that is due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.spares.sweep(now);
        while let Some(slot) = self.timers.pop_expired(now) {
            let Some(c) = self.conns.at_slot_mut(slot) else {
                continue;
            };
            let id = c.id;
            let Some(kind) = c.deadline.take() else {
                continue;
            };
            // What this timeout touches lands after the current last entry (`touch` does not
            // repeat the last one, so that entry is included): only those changed.
            let from = self.touched.len().saturating_sub(1);
            touch(&mut self.touched, id);
            self.on_timeout(now, id, kind);
            // What that changed re-arms now, so a deadline due at the same instant on another
            // connection (its peer) fires for what that connection is doing now. Only what this
            // timeout touched: re-arming everything touched so far made a burst of deadlines
            // due at one instant quadratic.
            for i in from..self.touched.len() {
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
        self.drop_checks();
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
                // A handoff drain releases them to another core instead.
                Phase::Idle | Phase::Head if self.handing_off => {}
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
}

/// Notes that a connection's interest and deadline must be re-evaluated at the end of the call.
fn touch(touched: &mut Vec<ConnId>, id: ConnId) {
    if touched.last() != Some(&id) {
        touched.push(id);
    }
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
