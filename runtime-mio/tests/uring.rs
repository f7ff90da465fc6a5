//! The shared scenario suite (upkeep-testkit) against the mio runtime's io_uring workers
//! (`io = "uring"`): the same behaviour as the epoll workers, from the same core. TLS is not
//! offered on io_uring (the configuration is refused), so the suite runs without it.

use upkeep_core::Config;
use upkeep_core::config::Io;
use upkeep_testkit::RunningProxy;

mod common;

fn on_uring(mut config: Config) -> Config {
    config.runtime.io = Io::Uring;
    config
}

fn start(config: Config) -> Box<dyn RunningProxy> {
    common::try_start_with(config, on_uring).expect("starting the proxy on io_uring")
}

upkeep_testkit::scenario_tests!(start);
upkeep_testkit::upstream_scenario_tests!(start);
upkeep_testkit::health_scenario_tests!(start);

/// Like `start`, with a refusal as the error.
fn try_start(config: Config) -> std::io::Result<Box<dyn RunningProxy>> {
    common::try_start_with(config, on_uring)
}

upkeep_testkit::listener_tests!(try_start);
upkeep_testkit::observability_tests!(start);

upkeep_testkit::reliability_tests!(start);

/// A TLS listener is refused on io_uring, naming the setting to change.
#[test]
fn tls_is_refused() {
    let backend = upkeep_testkit::backend::Backend::builder().start().unwrap();
    let mut config = upkeep_testkit::loopback_config(vec![backend.addr()], 1);
    config.listeners[0].tls = Some(upkeep_core::config::ListenerTls::single("c.pem", "k.pem"));
    let e = upkeep_mio::Proxy::start(on_uring(config))
        .unwrap_err()
        .to_string();
    assert!(e.contains("io: \"uring\" does not support TLS yet"), "{e}");
}
