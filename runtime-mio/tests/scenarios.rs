//! The shared scenario suite (upkeep-testkit) against the mio runtime.

use upkeep_core::Config;
use upkeep_testkit::RunningProxy;

struct Running(upkeep_mio::ProxyHandle);

impl RunningProxy for Running {
    fn listen_addrs(&self) -> Vec<upkeep_core::Address> {
        self.0.listen_addrs()
    }

    fn admin_addr(&self) -> Option<upkeep_core::Address> {
        self.0.admin_addr()
    }

    fn stop(self: Box<Self>) {
        self.0.shutdown()
    }
}

fn start(config: Config) -> Box<dyn RunningProxy> {
    Box::new(Running(
        upkeep_mio::Proxy::start(config).expect("starting the mio proxy"),
    ))
}

upkeep_testkit::scenario_tests!(start);
