//! Configuration as plain data, with nginx's names and defaults.
//!
//! Both runtimes and embedders build a [`Config`] (by hand, from command-line flags, or — with the
//! `serde` feature — from TOML), call [`Config::validate`], and hand it to
//! [`Core::new`](crate::Core::new). Every default below is nginx's unless a comment says why
//! upkeep differs.
//!
//! # Parsing helpers
//!
//! [`parse_duration`] (`"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"1d"`, `"1m30s"`; a unit is required),
//! [`parse_size`] (`16384`, `"16k"`, `"1m"`) and [`Address::parse`] (`"127.0.0.1:8080"`,
//! `"localhost:8080"`, `"[::1]:8080"`, `"unix:/run/app.sock"`) are shared with the runtimes' CLIs.
//!
//! # TOML (feature `serde`)
//!
//! [`Config`] implements `serde::Deserialize`; a runtime loads a file with
//! `toml::from_str::<Config>(&text)` (whose errors carry line, column and a caret), then calls
//! [`Config::validate`]. Every table rejects unknown keys; every omitted key takes the default
//! documented on its field. Durations are strings with units, sizes are integers (bytes) or
//! strings such as `"16k"`, addresses are strings, enums are snake_case strings.
//!
//! - Top-level keys for the runtimes ([`RuntimeOptions`]): `workers` (0 = one per core),
//!   `admin` (address of the `/metrics` `/status` `/ready` listener), `access_log` (`"off"`,
//!   `"-"` for stdout, `"stderr"`, or a path), `shutdown_timeout` (graceful drain limit, `"30s"`),
//!   `shutdown_delay` (`/ready` fails while still serving before the drain, `"0s"`).
//! - `[[listen]]` tables with `addr` and an optional `upstream` (the group for requests that
//!   match no route; a plain string per listener is also accepted:
//!   `listen = ["127.0.0.1:8080", "unix:/run/upkeep.sock"]`). Index = [`ListenerId`](crate::ListenerId).
//!   A listener's optional `tls = { cert, key }` or `tls = { certs = [{ cert, key, names }] }`
//!   makes it a TLS listener ([`ListenerTls`]).
//! - `[[upstream]]` tables with a `name`: an **array**, not `[upstream.NAME]`, because group order
//!   is meaningful (index = [`UpstreamId`](crate::UpstreamId); the first group takes every request
//!   when no routes are configured) and TOML tables are unordered. Keys: `name`, `servers`
//!   (required), `balance` (`"round_robin"` | `"least_conn"` | `"ip_hash"`), `keepalive`,
//!   `keepalive_timeout`, `keepalive_requests`, `keepalive_time`, `pool_key` (`"server"` |
//!   `"client"`), `connect_timeout`, `read_timeout`, `send_timeout`, `next_upstream_tries`,
//!   `next_upstream_on_timeout`, `min_idle`, `resolve_interval`, `tcp_keepalive` (`"0s"` =
//!   off). Each entry of `servers` is an address string or an inline table `{ addr, weight,
//!   max_fails, fail_timeout, backup, max_conns }`; a server address may be a host name
//!   (`"app.internal:8080"`, see [`ServerConfig::parse`]), resolved by the runtime. An optional
//!   `tls = { sni, ca, verify, cert, key }` speaks TLS to the group's servers ([`UpstreamTls`]).
//!   An optional `health_check = { path, interval, timeout, fall, rise, expect }` (or an
//!   `[upstream.health_check]` table) turns on active health checks ([`HealthCheck`]).
//! - `[[route]]` tables: `host` (optional), `path_prefix` (default `"/"`), `upstream` (required).
//! - `[client_timeouts]`: `header`, `body`, `keepalive`, `send`, `lingering`.
//! - `[limits]`: `max_request_line`, `max_head`, `max_body`, `client_keepalive_requests`,
//!   `max_client_connections`, `write_high_water`, `request_buffer`, `min_upload_rate`.
//! - `[headers]`: `x_forwarded_for`, `x_forwarded_proto`, `via` (a pseudonym string, `false` for
//!   off, or `true` for the default `"upkeep"`).
//!
//! A complete file (every key shown is optional unless noted above):
//!
//! ```
//! # #[cfg(feature = "serde")] {
//! use core::time::Duration;
//! use upkeep_core::config::{Balance, Config, PoolKeyMode};
//!
//! let text = r#"
//! workers = 2
//! admin = "127.0.0.1:9901"
//! access_log = "/var/log/upkeep/access.log"
//! access_log_format = "json"
//! shutdown_timeout = "20s"
//!
//! [[listen]]
//! addr = "127.0.0.1:8080"
//!
//! [[listen]]
//! addr = "unix:/run/upkeep.sock"
//! upstream = "static"
//!
//! [[upstream]]
//! name = "app"
//! servers = [
//!     { addr = "127.0.0.1:9001", weight = 2 },
//!     { addr = "unix:/run/app.sock", backup = true, fail_timeout = "30s" },
//!     "[::1]:9003",
//! ]
//! balance = "least_conn"
//! keepalive = 64
//! keepalive_timeout = "30s"
//! keepalive_requests = 500
//! keepalive_time = "30m"
//! pool_key = "client"
//! connect_timeout = "2s"
//! read_timeout = "1m"
//! send_timeout = "1m"
//! next_upstream_tries = 3
//! next_upstream_on_timeout = true
//! tcp_keepalive = "60s"
//!
//! [[upstream]]
//! name = "static"
//! servers = ["localhost:9100"]
//!
//! [[route]]
//! host = "example.com"
//! path_prefix = "/api"
//! upstream = "app"
//!
//! [[route]]
//! upstream = "static"          # path_prefix defaults to "/", host to any
//!
//! [client_timeouts]
//! header = "10s"
//! body = "30s"
//! keepalive = "75s"
//! send = "60s"
//! lingering = "5s"
//!
//! [limits]
//! max_request_line = "8k"
//! max_head = 16384
//! max_body = "100m"
//! client_keepalive_requests = 1000
//! max_client_connections = 10000
//! write_high_water = "256k"
//!
//! [headers]
//! x_forwarded_for = true
//! x_forwarded_proto = false
//! via = false                  # or via = "my-proxy"
//! "#;
//! let config: Config = toml::from_str(text).unwrap();
//! config.validate().unwrap();
//! assert_eq!(config.listeners.len(), 2);
//! let app = &config.upstreams[0];
//! assert_eq!(app.name, "app");
//! assert_eq!(app.servers[0].weight, 2);
//! assert!(app.servers[1].backup);
//! assert_eq!(app.servers[2].addr.to_string(), "[::1]:9003");
//! assert_eq!(app.balance, Balance::LeastConn);
//! assert_eq!(app.pool_key, PoolKeyMode::Client);
//! assert_eq!(app.keepalive_timeout, Duration::from_secs(30));
//! assert_eq!(config.routes[1].path_prefix, "/");
//! assert_eq!(config.client_timeouts.header, Duration::from_secs(10));
//! assert_eq!(config.limits.max_request_line, 8192);
//! assert_eq!(config.headers.via, None);
//! assert_eq!(config.runtime.workers, 2);
//! assert_eq!(config.runtime.shutdown_timeout, Duration::from_secs(20));
//! assert_eq!(config.listeners[1].upstream.as_deref(), Some("static"));
//! # }
//! ```

use core::net::SocketAddr;
use core::time::Duration;

#[cfg(feature = "serde")]
mod de;
mod health;
mod names;
mod parse;
mod quick;
mod tls;
mod validate;
mod warnings;

#[cfg(feature = "toml")]
mod file;
#[cfg(feature = "toml")]
mod plain;
#[cfg(feature = "toml")]
mod print;
#[cfg(feature = "toml")]
pub use file::FileError;
pub use health::{ExpectStatus, HealthCheck};
pub use parse::{format_duration, parse_duration, parse_size};
#[cfg(feature = "toml")]
pub use plain::{plain_message, suggest};
pub use quick::{QUICK_FLAGS, QUICK_SWITCHES, QuickConfig};
pub use tls::{CertKey, ListenerTls, UpstreamTls};
pub use validate::{ConfigError, MAX_SERVERS_PER_UPSTREAM};

/// Where to listen or connect: a TCP address or a Unix domain socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `HOST:PORT` or `[V6]:PORT` (literal IPs; the core does no name resolution: a server
    /// written with a host name carries it in [`ServerConfig::host`] until the runtime resolves
    /// it).
    Tcp(SocketAddr),
    /// `unix:/path`.
    Unix(String),
}

/// A listener (the runtime binds it; the core only needs its index and scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address to bind.
    pub addr: Address,
    /// Group for requests on this listener that match no route (nginx: a `server {}` block whose
    /// `location /` does `proxy_pass http://NAME`). `None`: the first group when no routes are
    /// configured, else 404. Also how a library user binds one virtual listener per group.
    pub upstream: Option<String>,
    /// TLS on this listener (`None`: plain HTTP). See [`ListenerTls`].
    pub tls: Option<ListenerTls>,
}

impl ListenerConfig {
    /// A listener on `addr` with no default group of its own.
    pub fn new(addr: Address) -> ListenerConfig {
        ListenerConfig {
            addr,
            upstream: None,
            tls: None,
        }
    }

    /// The scheme clients reach this listener with: `"https"` for a TLS listener, else
    /// `"http"` (the `X-Forwarded-Proto` value).
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// How a group picks a server for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Balance {
    /// nginx's default: smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest active requests (weighted), ties broken round-robin.
    LeastConn,
    /// Hash of the client address (nginx `ip_hash`): a client sticks to one server.
    IpHash,
}

/// What idle upstream connections are keyed by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum PoolKeyMode {
    /// Any client's request may reuse any idle connection to the chosen server (nginx).
    #[default]
    Server,
    /// The key is (server, client address): one client's requests never ride an upstream
    /// connection that carried another client's requests.
    Client,
}

/// The access log's line format (`access_log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum AccessLogFormat {
    /// nginx `combined` plus upstream fields as `key=value` (every server tried, its status
    /// and times, the request id...). The default: the format upkeep always wrote, so existing
    /// parsers keep working; its first nine fields are nginx `combined`'s.
    #[default]
    Upkeep,
    /// nginx `combined`, exactly: what log analysers expect.
    Combined,
    /// One JSON object per line, every field named.
    Json,
}

impl AccessLogFormat {
    /// From its name in the config file and on the command line.
    pub fn parse(name: &str) -> Option<AccessLogFormat> {
        match name {
            "upkeep" => Some(AccessLogFormat::Upkeep),
            "combined" => Some(AccessLogFormat::Combined),
            "json" => Some(AccessLogFormat::Json),
            _ => None,
        }
    }

    /// Its name in the config file (what [`AccessLogFormat::parse`] reads back).
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Upkeep => "upkeep",
            AccessLogFormat::Combined => "combined",
            AccessLogFormat::Json => "json",
        }
    }
}

/// One server of an upstream group (nginx `server` parameters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the server listens.
    pub addr: Address,
    /// Relative weight for round-robin and least-conn (nginx default 1).
    pub weight: u32,
    /// Failures within `fail_timeout` that mark the server down; 0 disables (nginx default 1).
    pub max_fails: u32,
    /// Window for counting failures, and how long a server stays down (nginx default 10s).
    pub fail_timeout: Duration,
    /// Used only when every primary server is down.
    pub backup: bool,
    /// Cap on concurrent requests to this server across the whole process (every worker
    /// together: HAProxy's `maxconn`); 0 = unlimited (nginx default). Requests beyond it wait in
    /// the group's queue (see [`UpstreamConfig::queue`]).
    pub max_conns: u32,
    /// The host name this server was written with (`app.internal` in `"app.internal:8080"`),
    /// still to be resolved by the runtime, which replaces the server by one per address the
    /// name resolves to; `addr` holds the port meanwhile. `None` for a literal address.
    pub host: Option<String>,
    /// Administrative state at start (`up`, `drain` or `down`); changeable at run time through
    /// the admin API.
    pub state: ServerState,
}

/// A server's administrative state (HAProxy's `ready` / `drain` / `maint`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum ServerState {
    /// Takes requests.
    #[default]
    Up,
    /// Takes no new requests; requests in flight finish and their connections close instead of
    /// returning to the pool; idle pooled connections are closed at once.
    Drain,
    /// Maintenance: takes no requests at all; idle pooled connections are closed at once.
    Down,
}

impl ServerState {
    /// The state's name as configured and reported (`up`, `drain`, `down`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Drain => "drain",
            ServerState::Down => "down",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<ServerState> {
        [ServerState::Up, ServerState::Drain, ServerState::Down]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

impl ServerConfig {
    /// A server at `addr` with nginx's defaults.
    pub fn new(addr: Address) -> ServerConfig {
        ServerConfig {
            addr,
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            backup: false,
            max_conns: 0,
            host: None,
            state: ServerState::Up,
        }
    }
}

/// The default idle-connection cap per group per worker.
///
/// nginx 1.29.7+ defaults to 32 and closes a connection whenever a release finds the cache full,
/// so a busy site with more concurrency than the cap keeps opening connections (measured here:
/// `keepalive 16` behind 64 busy clients opened ~57,000 connections in 10 s). upkeep's default is
/// large enough that steady concurrency up to a thousand never churns; surplus connections age out
/// instead, because reuse is most-recently-used first and the idle timeout closes the cold tail.
pub const DEFAULT_KEEPALIVE: usize = 1024;

/// The default number of requests per upstream connection.
///
/// nginx retires an upstream connection after 1000 requests because its per-connection memory
/// pools only grow; a connection here holds nothing that grows, so the limit only costs a new
/// connection (handshake, slow start, a TIME_WAIT socket) every N requests. At 1000, a busy
/// worker behind 64 clients opens ~100 connections per 100k requests for that alone; at 10,000,
/// ~10. `keepalive_time` (1 h) still bounds a connection's life.
pub const DEFAULT_KEEPALIVE_REQUESTS: u32 = 10_000;

/// The default TCP keepalive idle time and probe interval on upstream sockets.
///
/// Caddy's 30 s. nginx leaves probes off, and the kernel's own default idle time is 2 h — far
/// longer than the idle-flow timeouts of NATs and firewalls (AWS NAT gateway: 350 s), which
/// silently drop a pooled connection so that the next request sent on it meets a reset or
/// hangs. At 30 s a dropped flow is noticed (and the connection closed) long before it could be
/// reused; the cost is one empty segment per idle connection every 30 s.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// A named group of servers with its pool and timeout settings (nginx `upstream {}` plus the
/// `proxy_*` directives that apply to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Name used by routes, metrics and logs.
    pub name: String,
    /// The servers (at most 64).
    pub servers: Vec<ServerConfig>,
    /// Balancing strategy.
    pub balance: Balance,
    /// Hard cap on idle pooled connections per worker for this group (nginx `keepalive N`);
    /// 0 disables pooling.
    pub keepalive: usize,
    /// Idle pooled connection lifetime (nginx `keepalive_timeout`, 60s).
    pub keepalive_timeout: Duration,
    /// Requests per upstream connection before it is retired (nginx `keepalive_requests`).
    /// Default [`DEFAULT_KEEPALIVE_REQUESTS`] (nginx: 1000).
    pub keepalive_requests: u32,
    /// Maximum age of an upstream connection before it is retired (nginx `keepalive_time`, 1h).
    pub keepalive_time: Duration,
    /// Partitioning of the pool.
    pub pool_key: PoolKeyMode,
    /// Longest a TCP or Unix connect to a server may take before the next server is tried (or
    /// 504): 5s. nginx's `proxy_connect_timeout` is 60s, which holds every request bound for a
    /// server that silently drops packets for a minute before failover; Envoy defaults to 5s,
    /// Caddy's `dial_timeout` to 3s, and HAProxy's documentation uses `timeout connect 5s`.
    pub connect_timeout: Duration,
    /// `proxy_read_timeout` (60s): between two reads of the response; before the response head
    /// it answers 504.
    pub read_timeout: Duration,
    /// `proxy_send_timeout` (60s): between two writes of the request.
    pub send_timeout: Duration,
    /// `proxy_next_upstream_tries`: servers tried per request. nginx's 0 means unlimited;
    /// upkeep's default is a finite 2.
    pub next_upstream_tries: u32,
    /// `proxy_next_upstream timeout`: also move an idempotent request to the next server when the
    /// response header times out (off by default; connect timeouts always move on).
    pub next_upstream_on_timeout: bool,
    /// TLS toward this group's servers (`None`: plain HTTP). See [`UpstreamTls`].
    pub tls: Option<UpstreamTls>,
    /// Warm connections kept ready per server per worker: opened in the background at start and
    /// whenever one leaves the pool, so a burst after a quiet period does not pay connection
    /// setup (0, the default: none). At most `keepalive`; needs `pool_key = "server"`.
    pub min_idle: usize,
    /// How often the runtime re-resolves the group's host names while running; a changed
    /// address set is applied like a reload. Zero (the default): names are resolved at start and
    /// on reload only.
    pub resolve_interval: Duration,
    /// TCP keepalive probes on this group's upstream sockets (nginx `proxy_socket_keepalive`):
    /// idle time before the first probe, and the interval between probes. Default
    /// [`DEFAULT_TCP_KEEPALIVE`]; zero turns probes off. Applied by the runtimes.
    pub tcp_keepalive: Duration,
    /// Requests that may wait, process-wide, for a server of this group to free a slot when
    /// every candidate is at its `max_conns` (HAProxy's backend queue, nginx Plus `queue`);
    /// beyond it a request is answered `503` with `Retry-After`. 0 = no queue: a request that
    /// finds every server full is answered 502 at once (nginx open source). Default
    /// [`DEFAULT_QUEUE`]; only matters when some server has a `max_conns`.
    pub queue: usize,
    /// Longest a request waits in the queue before a `503` with `Retry-After` (nginx Plus
    /// `queue timeout=`, 60s; HAProxy's `timeout queue` falls back to `timeout connect`, also
    /// 60s here).
    pub queue_timeout: Duration,
    /// Active health checks of the servers (`None`, the default: passive health only). See
    /// [`HealthCheck`] and `docs/health.md`.
    pub health_check: Option<HealthCheck>,
}

/// The default queue length per group (see `docs/queue.md` for why).
pub const DEFAULT_QUEUE: usize = 1024;

impl UpstreamConfig {
    /// A group with nginx's defaults (and upkeep's non-churning keepalive default).
    pub fn new(name: impl Into<String>, servers: Vec<ServerConfig>) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            servers,
            balance: Balance::RoundRobin,
            keepalive: DEFAULT_KEEPALIVE,
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: DEFAULT_KEEPALIVE_REQUESTS,
            keepalive_time: Duration::from_secs(3600),
            pool_key: PoolKeyMode::Server,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            next_upstream_tries: 2,
            next_upstream_on_timeout: false,
            tls: None,
            min_idle: 0,
            resolve_interval: Duration::ZERO,
            tcp_keepalive: DEFAULT_TCP_KEEPALIVE,
            queue: DEFAULT_QUEUE,
            queue_timeout: Duration::from_secs(60),
            health_check: None,
        }
    }
}

/// A routing rule: requests whose Host matches (if set) and whose path starts with `path_prefix`
/// go to `upstream`. The longest matching prefix wins; among equals, the first listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Host to match, case-insensitively and without port; `None` matches any.
    pub host: Option<String>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Name of the upstream group.
    pub upstream: String,
}

/// Client-side timeouts (nginx core module defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Total time to receive a request head (nginx `client_header_timeout`, 60s). A total deadline,
    /// not per read, so a slowloris client cannot stretch it.
    pub header: Duration,
    /// Between two reads of a request body (`client_body_timeout`, 60s) → 408.
    pub body: Duration,
    /// Idle keep-alive client connection (`keepalive_timeout`, 75s).
    pub keepalive: Duration,
    /// Between two successful writes to a slow client (`send_timeout`, 60s) → close.
    pub send: Duration,
    /// Bounded read-and-discard after a close-after-error response (`lingering_timeout`, 5s).
    pub lingering: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            header: Duration::from_secs(60),
            body: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
            send: Duration::from_secs(60),
            lingering: Duration::from_secs(5),
        }
    }
}

/// Size and count limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (→ 414). nginx: a line must fit `large_client_header_buffers` (8k).
    pub max_request_line: usize,
    /// Largest request or response head (→ 431 / 502).
    pub max_head: usize,
    /// Largest request body → 413; 0 (the default) = unlimited. nginx's `client_max_body_size`
    /// defaults to 1m because nginx buffers bodies (to disk); upkeep streams them with bounded
    /// memory, as HAProxy, Envoy and Caddy do, and none of those caps bodies by default.
    pub max_body: u64,
    /// Requests per client connection (`keepalive_requests`, 1000).
    pub client_keepalive_requests: u32,
    /// Concurrent client connections per worker; `accept` refuses beyond it.
    pub max_client_connections: usize,
    /// Bytes queued toward one peer before the core stops reading from the other side.
    pub write_high_water: usize,
    /// Request buffering (nginx `proxy_request_buffering`, 64k; 0 = off): a request body up to
    /// this size (a Content-Length one, or a chunked one until it grows past it) is read in
    /// full before an upstream connection is taken, so a slow uploader holds no backend
    /// connection meanwhile; a stale-connection retry can re-send up to this much (at least
    /// 64k). Larger bodies stream.
    pub request_buffer: u64,
    /// Slowest request body accepted, in bytes per second (0 = off; 500 by default, Apache
    /// `mod_reqtimeout`'s `MinRate`): after `client_timeouts.body`, a body must have arrived
    /// at this average rate since its request began, or the client gets a 408 — so a body too
    /// large to buffer cannot pin a backend connection at 1 byte/s either.
    pub min_upload_rate: u64,
    /// Zero-copy bodies (HAProxy's `option splice-auto`; 0 = off): on a runtime that can
    /// (`upkeep-mio` on Linux) and a plain (not TLS) connection on both sides, body payload
    /// known to run on for at least this many bytes — the rest of a Content-Length body, or of
    /// a chunk — moves socket → pipe → socket with `splice(2)`, never entering the process.
    /// Framing, limits, backpressure and timeouts are the same as on the copying path.
    pub splice_min: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            max_body: 0,
            client_keepalive_requests: 1000,
            max_client_connections: 10_000,
            write_high_water: 256 * 1024,
            request_buffer: 64 * 1024,
            min_upload_rate: 500,
            splice_min: 32 * 1024,
        }
    }
}

/// Headers the proxy adds to forwarded requests and responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderOptions {
    /// Append the client address to `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Set `X-Forwarded-Proto` to the listener's scheme.
    pub x_forwarded_proto: bool,
    /// Append `Via: 1.1 <pseudonym>` to requests and responses (RFC 9110 §7.6.3); `None` = off.
    pub via: Option<String>,
}

impl Default for HeaderOptions {
    fn default() -> Self {
        HeaderOptions {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            via: Some("upkeep".into()),
        }
    }
}

/// Process-level settings the runtimes share (the core itself ignores them; they live here so one
/// file, one parser and one validator serve the mio binary and the smol proxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Worker threads, each with its own core and pool (nginx `worker_processes`); 0 = one per
    /// CPU core (nginx `auto`).
    pub workers: usize,
    /// Admin listener serving `/metrics`, `/status` and `/ready`; `None` = off.
    pub admin: Option<Address>,
    /// Access log: `None` = off, `"-"` = stdout, `"stderr"`, or a file path (appended to,
    /// reopened on SIGUSR1).
    pub access_log: Option<String>,
    /// The access log's line format.
    pub access_log_format: AccessLogFormat,
    /// Longest a graceful drain (SIGTERM/SIGQUIT, or the old workers after a reload) may take
    /// before the remaining connections are closed.
    pub shutdown_timeout: Duration,
    /// How long after SIGTERM/SIGQUIT the proxy keeps accepting and serving while `/ready`
    /// answers 503, before it starts draining: the time a load balancer needs to see the
    /// failing health check and stop sending new connections. Zero (the default) drains at once.
    pub shutdown_delay: Duration,
    /// How the `upkeep` binary's workers wait for and move bytes (nginx `use`): epoll (the
    /// default) or io_uring.
    pub io: Io,
}

/// The I/O interface a worker of the `upkeep` binary runs on (`io` in the config file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Io {
    /// Readiness from epoll, a `recv`/`send` system call per read and write: works everywhere,
    /// with every feature (TLS, zero-copy `splice` bodies).
    #[default]
    Epoll,
    /// io_uring (Linux 6.1+): multishot receives into a provided-buffer ring, and
    /// every operation of a loop pass submitted in one system call. Plain TCP and Unix sockets
    /// only (no TLS), and bodies are copied (no `splice`). Fewer kernel entries per request:
    /// `benches/load` measures what it saves.
    Uring,
}

impl Io {
    /// Its name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Io::Epoll => "epoll",
            Io::Uring => "uring",
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            workers: 0,
            admin: None,
            access_log: None,
            access_log_format: AccessLogFormat::default(),
            shutdown_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            io: Io::Epoll,
        }
    }
}

/// Everything a [`Core`](crate::Core) needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Listeners, indexed by [`ListenerId`](crate::ListenerId).
    pub listeners: Vec<ListenerConfig>,
    /// Upstream groups, indexed by [`UpstreamId`](crate::UpstreamId).
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes; when empty, every request goes to the first group.
    pub routes: Vec<RouteConfig>,
    /// Client timeouts.
    pub client_timeouts: ClientTimeouts,
    /// Limits.
    pub limits: Limits,
    /// Added headers.
    pub headers: HeaderOptions,
    /// Process-level settings for the runtimes (TOML: top-level `workers`, `admin`,
    /// `access_log`, `shutdown_timeout`).
    pub runtime: RuntimeOptions,
}

impl Config {
    /// One listener in front of one round-robin group of `servers`, everything else default.
    pub fn simple(listen: Address, servers: Vec<Address>) -> Config {
        Config {
            listeners: vec![ListenerConfig::new(listen)],
            upstreams: vec![UpstreamConfig::new(
                "default",
                servers.into_iter().map(ServerConfig::new).collect(),
            )],
            routes: Vec::new(),
            client_timeouts: ClientTimeouts::default(),
            limits: Limits::default(),
            headers: HeaderOptions::default(),
            runtime: RuntimeOptions::default(),
        }
    }
}
