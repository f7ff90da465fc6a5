//! Test support shared by the upkeep runtimes: loopback origin servers ([`backend`]), raw
//! HTTP/1.1 clients ([`client`]), and one scenario suite ([`scenarios`]) that every runtime runs
//! against itself through the [`RunningProxy`] trait.
//!
//! A runtime's `tests/scenarios.rs` is just:
//!
//! ```ignore
//! use upkeep_core::Config;
//! use upkeep_testkit::RunningProxy;
//!
//! struct Running(upkeep_mio::ProxyHandle);
//! impl RunningProxy for Running {
//!     fn listen_addrs(&self) -> Vec<upkeep_core::Address> { self.0.listen_addrs().to_vec() }
//!     fn stop(self: Box<Self>) { self.0.shutdown() }
//! }
//! fn start(c: Config) -> Box<dyn RunningProxy> {
//!     Box::new(Running(upkeep_mio::Proxy::start(c).unwrap()))
//! }
//! upkeep_testkit::scenario_tests!(start);
//! ```

pub mod backend;
pub mod client;
pub mod scenarios;
pub mod wire;

pub use wire::{TempDir, pattern};

/// A proxy started by a runtime for a scenario.
pub trait RunningProxy {
    /// The bound listener addresses, in config order (port 0 resolved to the real port).
    fn listen_addrs(&self) -> Vec<upkeep_core::Address>;
    /// Stops the proxy and joins its threads.
    fn stop(self: Box<Self>);
}

/// How a scenario starts the runtime under test: bind every listener of the config, then return.
pub type Start = fn(upkeep_core::Config) -> Box<dyn RunningProxy>;

/// Expands to one `#[test]` per shared scenario, each calling
/// `upkeep_testkit::scenarios::<name>(start_fn)`. The list below is the one place a scenario is
/// registered, so adding one here adds it to every runtime.
#[macro_export]
macro_rules! scenario_tests {
    ($start:expr) => {
        $crate::scenario_tests!(@each $start;
            pooling_one_client_connection,
            pooling_many_short_client_connections,
            pool_off_opens_per_request,
            backend_max_requests_per_connection,
            http10_client,
            pipelining,
            chunked_response,
            close_delimited_response,
            head_request,
            large_request_and_response_bodies,
            backend_keepalive_shorter_than_ours,
            backend_down_failover,
            all_backends_down_502,
            upstream_read_timeout_504,
            backend_misbehaviour_502,
            smuggling_rejected,
            slow_client_header_timeout,
            websocket_upgrade,
            unix_listener_and_upstream,
            ipv6_listener,
            hop_by_hop_and_forwarded_headers,
        );
    };
    (@each $start:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::scenarios::$name($start);
            }
        )*
    };
}
