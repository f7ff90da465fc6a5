//! Helpers shared by the mio runtime's test files. (Each test file compiles this module and
//! uses part of it.)
#![allow(dead_code)]

pub mod spawned;

use upkeep_core::Config;
use upkeep_mio::ProxyHandle;
use upkeep_testkit::RunningProxy;
use upkeep_testkit::client::get_text;

/// A started proxy as the shared scenario suites drive it; a reload applies `adjust` to the new
/// configuration first, as the start did (`tests/scenarios.rs`, `tests/uring.rs`).
pub struct Running(pub ProxyHandle, pub fn(Config) -> Config);

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

    fn reload(&self, config: Config) -> Option<Result<(), String>> {
        Some(self.0.reload((self.1)(config)))
    }
}

/// Starts the proxy on `adjust(config)` for a shared scenario (a refusal is the error).
pub fn try_start_with(
    config: Config,
    adjust: fn(Config) -> Config,
) -> std::io::Result<Box<dyn RunningProxy>> {
    upkeep_mio::Proxy::start(adjust(config))
        .map(|p| Box::new(Running(p, adjust)) as Box<dyn RunningProxy>)
}

/// `GET path` on the proxy's admin listener: the status and the body as text.
pub fn admin_get(proxy: &ProxyHandle, path: &str) -> (u16, String) {
    get_text(&proxy.admin_addr().expect("admin listener"), path)
}

/// One sample of the proxy's `/metrics` (`upkeep_held_bytes_max`, `upkeep_pipes{state="used"}`).
pub fn metric(proxy: &ProxyHandle, sample: &str) -> u64 {
    let (status, text) = admin_get(proxy, "/metrics");
    assert_eq!(status, 200);
    upkeep_testkit::client::metric(&text, sample)
}

/// `127.0.0.1:PORT` with a port the kernel just handed out and took back: for a config file
/// that must name the same address again across a reload.
pub fn free_local_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}
