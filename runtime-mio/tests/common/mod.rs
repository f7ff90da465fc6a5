//! Helpers shared by the mio runtime's test files.

use upkeep_mio::ProxyHandle;
use upkeep_testkit::client::get_text;

/// `GET path` on the proxy's admin listener: the status and the body as text.
pub fn admin_get(proxy: &ProxyHandle, path: &str) -> (u16, String) {
    get_text(&proxy.admin_addr().expect("admin listener"), path)
}
