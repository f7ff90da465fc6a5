//! systemd's service notification protocol (`sd_notify(3)`), for `Type=notify` units: one
//! datagram per state change to the Unix socket named by `$NOTIFY_SOCKET` — `READY=1` once every
//! listener is bound, `RELOADING=1` then `READY=1` around a SIGHUP reload, `STOPPING=1` when a
//! shutdown begins. Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.
//!
//! Hand-written rather than a crate: the protocol is one `sendto` of a text datagram, which std's
//! `UnixDatagram` does (abstract-namespace addresses included, on Linux).

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager, if there is one.
/// A failure is logged, never fatal: the proxy works the same without systemd's bookkeeping.
pub(crate) fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target.to_string_lossy(), state) {
        log::warn!("sd_notify to {}: {e}", target.to_string_lossy());
    }
}

fn send(target: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        // An abstract socket: systemd's default for services.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::other("abstract sockets need Linux"));
        }
    }
    socket.send_to(state.as_bytes(), target)?;
    Ok(())
}
