//! Helpers shared by the mio runtime's test files. (Each test file compiles this module and
//! uses part of it.)
#![allow(dead_code)]

pub mod spawned;

use upkeep_mio::ProxyHandle;
use upkeep_testkit::client::get_text;

/// `GET path` on the proxy's admin listener: the status and the body as text.
pub fn admin_get(proxy: &ProxyHandle, path: &str) -> (u16, String) {
    get_text(&proxy.admin_addr().expect("admin listener"), path)
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
