//! upkeep-core: a sans-IO, deterministic HTTP/1.1 reverse-proxy engine with an upstream
//! keepalive pool. (Crate docs and the drive-loop example are written with the engine.)

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod balance;
pub mod config;
mod connection;
pub mod framing;
pub mod headers;
mod id;
pub mod pool;
mod proxy;
pub mod route;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stats;
mod time;
mod timers;

pub use config::{Address, Config};
pub use id::{ConnId, ListenerId, ServerId, UpstreamId};
pub use proxy::{AtCapacity, Core, ExchangeInfo, Input, Output};
pub use stats::Stats;
pub use time::Time;
