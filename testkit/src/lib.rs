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
//!     fn admin_addr(&self) -> Option<upkeep_core::Address> { self.0.admin_addr() }
//!     fn stop(self: Box<Self>) { self.0.shutdown() }
//! }
//! fn start(c: Config) -> Box<dyn RunningProxy> {
//!     Box::new(Running(upkeep_mio::Proxy::start(c).unwrap()))
//! }
//! upkeep_testkit::scenario_tests!(start);
//! ```

pub mod backend;
pub mod client;
pub mod health;
pub mod listeners;
pub mod observability;
pub mod over_tls;
pub mod reliability;
pub mod scenarios;
pub mod serial;
pub mod sockets;
pub mod tls;
pub mod upstreams;
pub mod wait;
pub mod wire;

pub use wait::{eventually, within};
pub use wire::{TempDir, pattern, tcp_addr};

/// `Config::simple` listening on 127.0.0.1:0 in front of `servers`, with `workers` workers (the
/// starting point of most runtime tests, which then adjust a field or two).
pub fn loopback_config(servers: Vec<upkeep_core::Address>, workers: usize) -> upkeep_core::Config {
    let listen = upkeep_core::Address::Tcp((std::net::Ipv4Addr::LOCALHOST, 0).into());
    let mut config = upkeep_core::Config::simple(listen, servers);
    config.runtime.workers = workers;
    config
}

/// A proxy started by a runtime for a scenario.
pub trait RunningProxy {
    /// The bound listener addresses, in config order (port 0 resolved to the real port).
    fn listen_addrs(&self) -> Vec<upkeep_core::Address>;
    /// The admin listener's bound address (port 0 resolved), when `runtime.admin` is set.
    fn admin_addr(&self) -> Option<upkeep_core::Address>;
    /// Stops the proxy and joins its threads.
    fn stop(self: Box<Self>);
    /// Applies a new configuration in place (a reload), where the runtime has one: `None` when
    /// it does not.
    fn reload(&self, _config: upkeep_core::Config) -> Option<Result<(), String>> {
        None
    }
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
            pipelined_burst_with_backpressure,
            chunked_response,
            close_delimited_response,
            head_request,
            large_request_and_response_bodies,
            zero_copy_bodies,
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
            stray_408_on_idle_connection,
            stale_pooled_connection_retry,
            idle_pool_cap_closes_surplus,
            upstream_keepalive_timeout,
            upstream_sockets_probe_idle_connections,
            warm_connections_before_the_first_request,
            warm_connections_replaced_ahead_of_keep_alive_timeout,
            unreusable_responses_not_pooled,
            stray_bytes_after_a_response_reach_no_client,
            early_answer_to_an_upload_survives_the_reset,
            client_keepalive_timeout,
            metrics_after_pooled_requests,
            metrics_say_why_a_connection_was_not_reused,
            access_log_line_per_request,
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

/// Expands to one `#[test]` per reliability scenario ([`reliability`]), each calling
/// `upkeep_testkit::reliability::<name>(start_fn)`.
#[macro_export]
macro_rules! reliability_tests {
    ($start:expr) => {
        $crate::reliability_tests!(@each $start;
            trailers_end_to_end,
            slow_uploads_cannot_pin_backends,
            chaos_soak,
        );
    };
    (@each $start:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::reliability::$name($start);
            }
        )*
    };
}

/// The shared scenarios again with TLS on both sides ([`over_tls`]): expands to a module
/// `over_tls` running every scenario of [`scenario_tests!`] through
/// [`over_tls::over_tls`](crate::over_tls::over_tls) and `$start`.
#[macro_export]
macro_rules! scenario_tests_tls {
    ($start:expr) => {
        mod over_tls {
            fn start(config: upkeep_core::Config) -> Box<dyn $crate::RunningProxy> {
                $crate::over_tls::over_tls(config, super::start_for_tls)
            }
            $crate::scenario_tests!(start);
            /// The idle connection handed between workers moves with its TLS session.
            #[test]
            fn single_request_backend_two_workers() {
                $crate::upstreams::single_request_backend_two_workers(start);
            }
        }
        fn start_for_tls(config: upkeep_core::Config) -> Box<dyn $crate::RunningProxy> {
            $start(config)
        }
    };
}

/// Whether the running kernel is Linux `major.minor` or later.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}
