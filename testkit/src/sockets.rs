//! The kernel's view of this machine's TCP sockets, through `ss` (iproute2): what a test cannot
//! read with `getsockopt` because the socket belongs to the proxy under test.

use std::process::Command;

use upkeep_core::Address;

/// The timer column (`timer:(keepalive,29sec,0)`, or `""` when none is armed) of every
/// established TCP connection whose remote end is `to`: for a backend's address, the proxy's
/// upstream sockets. `None` when `ss` is not available (the caller skips its check).
pub fn timers_of_connections_to(to: &Address) -> Option<Vec<String>> {
    let Address::Tcp(to) = to else {
        return Some(Vec::new());
    };
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", "dst"])
        .arg(to.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("timer:("))
                    .unwrap_or("")
                    .to_owned()
            })
            .collect(),
    )
}
