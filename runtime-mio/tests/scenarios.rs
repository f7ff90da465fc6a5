//! The shared scenario suite (upkeep-testkit) against the mio runtime.

use upkeep_core::Config;
use upkeep_testkit::RunningProxy;

mod common;

fn start(config: Config) -> Box<dyn RunningProxy> {
    common::try_start_with(config, |c| c).expect("starting the mio proxy")
}

upkeep_testkit::scenario_tests!(start);
upkeep_testkit::upstream_scenario_tests!(start);
upkeep_testkit::health_scenario_tests!(start);

/// Like `start`, with a refusal as the error: the listener scenarios (who may bind a listen
/// address, who may remove it) expect some.
fn try_start(config: Config) -> std::io::Result<Box<dyn RunningProxy>> {
    common::try_start_with(config, |c| c)
}

upkeep_testkit::listener_tests!(try_start);
upkeep_testkit::observability_tests!(start);

upkeep_testkit::reliability_tests!(start);

upkeep_testkit::scenario_tests_tls!(start);
