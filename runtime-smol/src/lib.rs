//! upkeep-core on smol: an async reverse proxy ([`Proxy`]) and a pooled fan-out HTTP/1.1
//! client ([`Client`]).
//!
//! Both run the same sans-IO [`upkeep_core::Core`] as the mio binary; only the I/O around it
//! differs. Each driver thread is a single-threaded executor whose tasks share one core without
//! locks (see the `driver` module): a task wakes on readiness, feeds the core one input, and
//! acts on every output.
//!
//! - [`Proxy::start`] runs the full proxy (listeners, upstream groups, pooling, retries,
//!   timeouts, TCP and Unix sockets) on `runtime.workers` threads, with the same admin listener
//!   (`/metrics`, `/status`, `/ready`) and access log as the mio binary.
//! - [`Client`] is for an application that calls several backends per page: one core whose
//!   per-group *virtual listeners* take requests from [`Client::send`], so the core's pool gives
//!   warm keepalive connections with the same caps, idle timeout, request limit and
//!   stale-connection retry as the proxy.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod admin;
mod client;
mod driver;
mod generation;
mod listener;
mod proxy;
mod stream;

pub use client::{Body, Client, Error, Request, Response};
pub use proxy::{Proxy, ProxyHandle};
/// The counters and their renderings (shared with the mio runtime).
pub use upkeep_runtime::metrics;
