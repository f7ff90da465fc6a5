//! upkeep-core: a sans-IO, deterministic HTTP/1.1 reverse-proxy engine whose heart is the
//! upstream keepalive pool.
//!
//! The [`Core`] never touches a socket, a thread or a clock. A runtime (the `upkeep` binary on
//! mio, the smol runtime, a test, a fuzzer) feeds it what happened — bytes received, a peer
//! closed, bytes written, a connect finished — together with the current [`Time`], and drains
//! what to do next: connections to open, bytes to write, read interest to change, connections to
//! close, and the next deadline. Same inputs, same outputs, always.
//!
//! | module | holds |
//! |---|---|
//! | [`framing`] | HTTP/1.1 heads (httparse + RFC 9112 validation), body framing, chunked decoding, rewriting |
//! | [`config`] | plain-data configuration with nginx's defaults (serde behind the `serde` feature) |
//! | [`stats`] | counters for metrics exporters (pool evictions and [`NotReusable`] reasons included) |
//! | [`shared`] | the process-wide ledger of servers every worker's core shares: `max_conns` slots, the queue's order, state, health |
//! | `sim` (feature `sim`) | an in-memory runtime and scripted peers for tests and fuzzing |
//! | `pool`, `balance`, `route`, `headers` (public with feature `internals`) | the pool's bookkeeping (most-recently-used reuse, hard caps, least-recently-used eviction), balancing and passive health, Host + path routing, the Connection / hop-by-hop rules — the engine's parts, for tests, benches and fuzz targets |
//!
//! Inside, `engine/` holds [`Core`] one concern per file (connection table, readiness and
//! deadlines, client side, upstream side, exchange, relay), `rules` the decisions that define
//! the proxy — client keep-alive, upstream reusability, retries, framing, failure statuses — as
//! table-tested pure functions, and `socket` the one way a runtime moves a socket's bytes
//! ([`Core::read_with`], [`Core::write_with`]). Everything an embedder names is re-exported
//! here, at the root.
//!
//! # The drive loop
//!
//! Every call that changes state is followed by draining [`Core::poll_output`] until it returns
//! `None`; [`Core::poll_timeout`] says when to call [`Core::handle_timeout`]. Bytes go in through
//! [`Core::read_with`] (it lends the connection's buffer to the `recv`) and out through
//! [`Core::write_with`] (one vectored write of what is queued). Finished exchanges, for logs and
//! histograms, come from their own queue, [`Core::poll_exchange`], whenever convenient.
//! [`Output::Shutdown`] comes only after the last queued byte was written. Here the "network" is
//! two in-memory buffers: one client, one backend.
//!
//! ```
//! use upkeep_core::{Address, Config, Core, Input, ListenerId, Output, Time, WriteOutcome};
//!
//! let config = Config::simple(
//!     Address::parse("127.0.0.1:8080").unwrap(),
//!     vec![Address::parse("127.0.0.1:9001").unwrap()],
//! );
//! let mut core = Core::new(config, 0).unwrap();
//! let mut now = Time::ZERO;
//!
//! // What each side has received from the proxy.
//! let mut to_client = Vec::new();
//! let mut to_backend = Vec::new();
//! let mut backend_conn = None;
//!
//! let client = core.accept(now, ListenerId(0), Some("127.0.0.1".parse().unwrap())).unwrap();
//!
//! // The runtime's job, in miniature: act on every output.
//! fn drain(core: &mut Core, now: Time, client: upkeep_core::ConnId,
//!          to_client: &mut Vec<u8>, to_backend: &mut Vec<u8>,
//!          backend_conn: &mut Option<upkeep_core::ConnId>) {
//!     while let Some(out) = core.poll_output() {
//!         match out {
//!             Output::Connect { conn, .. } => {
//!                 // A real runtime starts a non-blocking connect here.
//!                 *backend_conn = Some(conn);
//!                 core.handle(now, Input::Connected { conn });
//!             }
//!             Output::Write { conn } => {
//!                 // A real runtime calls writev / sendmsg in the closure, and after a short
//!                 // write (n < offered) waits for the socket to be writable again.
//!                 let sink = if conn == client { &mut *to_client } else { &mut *to_backend };
//!                 while let Ok(WriteOutcome::Wrote { left, .. }) = core.write_with(now, conn, |iov| {
//!                     iov.iter().for_each(|slice| sink.extend_from_slice(slice));
//!                     Ok(iov.iter().map(|slice| slice.len()).sum())
//!                 }) {
//!                     if left == 0 { break; }
//!                 }
//!             }
//!             Output::Interest { .. } | Output::Shutdown { .. } | Output::Close { .. } => {}
//!             // Only a core sharing its ledger with other workers hands connections over.
//!             Output::HandOver { .. } => unreachable!(),
//!         }
//!     }
//! }
//!
//! // The client sends a request: the core opens an upstream connection and forwards it.
//! // (`read_with` lends the connection's buffer to the closure, which stands for a `recv`.)
//! let request = b"GET /hello HTTP/1.1\r\nHost: example\r\n\r\n";
//! core.read_with(now, client, request.len(), |buf| {
//!     buf.extend_from_slice(request);
//!     Ok(request.len())
//! }).unwrap();
//! drain(&mut core, now, client, &mut to_client, &mut to_backend, &mut backend_conn);
//! assert!(to_backend.starts_with(b"GET /hello HTTP/1.1\r\nHost: example\r\n"));
//!
//! // The backend answers; the response reaches the client and the upstream connection is pooled.
//! now = Time::from_millis(3);
//! let upstream = backend_conn.unwrap();
//! let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
//! core.read_with(now, upstream, response.len(), |buf| {
//!     buf.extend_from_slice(response);
//!     Ok(response.len())
//! }).unwrap();
//! drain(&mut core, now, client, &mut to_client, &mut to_backend, &mut backend_conn);
//! assert!(to_client.starts_with(b"HTTP/1.1 200 OK\r\n"));
//! assert!(to_client.ends_with(b"\r\n\r\nhi"));
//! assert!(core.is_pooled(upstream));
//!
//! // Timers are deadlines: the idle pooled connection expires after keepalive_timeout (60 s).
//! // (Earlier ones are the core's housekeeping, e.g. freeing idle buffers: nothing to do.)
//! let closed = loop {
//!     let deadline = core.poll_timeout().unwrap();
//!     core.handle_timeout(deadline);
//!     if let Some(out) = core.poll_output() {
//!         break (deadline, out);
//!     }
//! };
//! let expiry = Time::from_millis(60_003);
//! assert_eq!(closed, (expiry, Output::Close { conn: upstream, reset: false }));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

// The engine's own machinery: public (for tests, benches and fuzz targets that drive it
// directly) only with the `internals` feature, so an embedder sees the proxy's API, not its parts.
// Without it, their introspection (snapshots, invariant checks, per-key counts) is unused.
#[cfg(feature = "internals")]
pub mod balance;
#[cfg(not(feature = "internals"))]
#[allow(dead_code)]
mod balance;
pub mod config;
mod connection;
mod engine;
pub mod framing;
#[cfg(feature = "internals")]
pub mod headers;
#[cfg(not(feature = "internals"))]
mod headers;
pub mod health;
mod id;
#[cfg(feature = "internals")]
pub mod pool;
#[cfg(not(feature = "internals"))]
#[allow(dead_code)]
mod pool;
#[cfg(feature = "internals")]
pub mod route;
#[cfg(not(feature = "internals"))]
mod route;
mod rules;
pub mod shared;
#[cfg(feature = "sim")]
pub mod sim;
mod socket;
mod spare;
pub mod stats;
mod time;
mod timers;
mod uploads;

// What an embedder needs, at the root.
#[cfg(feature = "toml")]
pub use config::FileError;
pub use config::{
    Address, Balance, Config, ConfigError, Limits, ListenerConfig, PoolKeyMode, QuickConfig,
    RouteConfig, RuntimeOptions, ServerConfig, ServerState, UpstreamConfig,
};
pub use engine::{
    AtCapacity, Core, End, ExchangeInfo, HEAD_READ, HEAD_READ_AFTER_LARGE, Handed, Input, Output,
    Released, RequestFields, ServerOut, SpliceTo, Tries, UpstreamTry,
};
pub use framing::{Method, Version};
pub use id::{ConnId, ListenerId, ServerId, UpstreamId};
pub use pool::EvictReason;
pub use rules::NotReusable;
pub use shared::{CheckView, ServerView, Shared};
pub use socket::{MAX_IOV, ReadOutcome, WriteOutcome, is_retry};
pub use stats::{GroupStats, ServerStats, Stats};
pub use time::Time;
