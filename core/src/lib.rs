//! upkeep-core: a sans-IO, deterministic HTTP/1.1 reverse-proxy engine with an upstream
//! keepalive pool. (Crate docs and the drive-loop example are written with the engine.)

#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod balance;
pub mod config;
pub mod framing;
pub mod headers;
mod id;
pub mod pool;
pub mod route;
mod time;

pub use config::{Address, Config};
pub use id::{ConnId, ListenerId, ServerId, UpstreamId};
pub use time::Time;
