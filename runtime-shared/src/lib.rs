//! upkeep-runtime: the layer both runtimes (`upkeep-mio`, `upkeep-smol`) share.
//!
//! A runtime only moves bytes and time between the operating system and an
//! [`upkeep_core::Core`]; everything else it does with the OS (how a listener is bound, which
//! socket options are set, how a read lands in the core's buffer, how a write is gathered, what
//! the clock is, how many workers run) and everything it shows operators (the admin listener,
//! the metrics text, the access log) lives here, once.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod board;
pub mod clock;
pub mod config_diff;
pub mod descriptors;
pub mod io;
pub mod listen;
pub mod metrics;
pub mod preflight;
pub mod process;
pub mod recorder;
pub mod resolve;
pub mod socket;
pub mod splice;
pub mod throttle;
pub mod tls;
pub mod trim;
pub mod trouble;
pub mod upstream_metrics;
pub mod upstreams;
pub mod workers;
