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
