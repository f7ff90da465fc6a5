//! A deterministic in-memory network for driving a [`Core`](crate::Core) in tests, fuzzing and
//! benchmarks (feature `sim`).
//!
//! [`Harness`] is the low-level piece: it plays the runtime's part — it drains
//! [`Output`](crate::Output)s, "writes" queued bytes into per-connection inboxes, reports
//! `Written`, and keeps a virtual clock — while the test plays both the clients and the backends
//! by hand. [`world`] builds scripted clients and backends on top of it. [`Process`] is several
//! workers' harnesses sharing one ledger, with the connections they hand each other.

pub mod direct;
mod harness;
pub mod http;
pub mod load;
pub(crate) mod process;
pub mod world;

pub use harness::{Endpoint, Harness, InFlight};
pub use process::Process;
