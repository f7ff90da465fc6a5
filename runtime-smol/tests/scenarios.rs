//! The shared scenario suite (upkeep-testkit) against the smol proxy: the same behaviour as the
//! mio runtime, from the same core.

use upkeep_core::{Address, Config};
use upkeep_testkit::RunningProxy;

struct Running(upkeep_smol::ProxyHandle);

impl RunningProxy for Running {
    fn listen_addrs(&self) -> Vec<Address> {
        self.0.listen_addrs().to_vec()
    }

    fn admin_addr(&self) -> Option<Address> {
        self.0.admin_addr()
    }

    fn stop(self: Box<Self>) {
        self.0.shutdown()
    }
}

fn start(config: Config) -> Box<dyn RunningProxy> {
    Box::new(Running(
        upkeep_smol::Proxy::start(config).expect("start the smol proxy"),
    ))
}

upkeep_testkit::scenario_tests!(start);
upkeep_testkit::upstream_scenario_tests!(start);
upkeep_testkit::health_scenario_tests!(start);

/// Like `start`, with a refusal as the error: the listener scenarios (who may bind a listen
/// address, who may remove it) expect some.
fn try_start(config: Config) -> std::io::Result<Box<dyn RunningProxy>> {
    upkeep_smol::Proxy::start(config).map(|p| Box::new(Running(p)) as Box<dyn RunningProxy>)
}

upkeep_testkit::listener_tests!(try_start);
upkeep_testkit::observability_tests!(start);

upkeep_testkit::reliability_tests!(start);

upkeep_testkit::scenario_tests_tls!(start);
