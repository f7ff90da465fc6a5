//! Socket options for accepted and upstream sockets, and the non-blocking upstream connect: one
//! set of choices for both runtimes, applied through [`SockRef`] to whatever socket type a
//! runtime wraps.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, TcpKeepalive, Type};
use upkeep_core::{Address, Core, ServerId};

/// Tunes a TCP socket (an upstream connect, or a listener: the connections it accepts inherit
/// the option): `TCP_NODELAY`, since the core already hands whole heads and bodies to one
/// write and latency matters more than Nagle's coalescing. Failure is harmless and ignored.
pub fn tune_tcp(sock: SockRef<'_>) {
    let _ = sock.set_tcp_nodelay(true);
}

/// TCP keepalive probes on an upstream socket (`tcp_keepalive`): the first after `idle` without
/// traffic, then one every `idle` (as Go's and so Caddy's dialer do), up to the kernel's probe
/// count (Linux: 9). A NAT or firewall that dropped the idle flow then answers with a reset or
/// nothing, and the kernel reports the connection dead before a request is sent on it. Zero
/// leaves probes off. Failure is harmless and ignored (a Unix socket has no such option).
pub fn set_tcp_keepalive(sock: SockRef<'_>, idle: Duration) {
    if idle.is_zero() {
        return;
    }
    // The kernel counts in whole seconds; round sub-second values up rather than to zero.
    let idle = Duration::from_secs(idle.as_secs().max(1));
    let _ = sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle).with_interval(idle));
}

/// The `tcp_keepalive` of `server`'s group: what a runtime passes to [`connect`].
pub fn upstream_keepalive(core: &Core, server: ServerId) -> Duration {
    core.config().upstreams[server.upstream.0 as usize].tcp_keepalive
}

/// Arms an abortive close: the drop that follows sends RST instead of FIN (`SO_LINGER` 0), for
/// [`upkeep_core::Output::Close`] with `reset`.
pub fn set_reset_on_close(sock: SockRef<'_>) {
    let _ = sock.set_linger(Some(Duration::ZERO));
}

/// Half-close: sends FIN, keeps reading. The peer may already be gone; the core learns that from
/// the next read, so an error here is ignored.
pub fn shutdown_write(sock: SockRef<'_>) {
    let _ = sock.shutdown(Shutdown::Write);
}

/// An upstream connect in progress: a non-blocking socket of either family. Wait for
/// writability, then ask [`connect_finished`].
#[derive(Debug)]
pub enum Connecting {
    /// A TCP connect (already tuned by [`tune_tcp`]).
    Tcp(std::net::TcpStream),
    /// A Unix-socket connect.
    Unix(UnixStream),
}

/// Starts a non-blocking connect to `addr`, with TCP keepalive probes every `tcp_keepalive`
/// ([`set_tcp_keepalive`]; the group's `tcp_keepalive`, zero = off). `EINPROGRESS` is the normal
/// answer and not an error; an immediate failure (out of descriptors or ports, refused Unix
/// socket, a full Unix backlog) is — hand it to the core with
/// [`upkeep_core::Input::connect_error`].
pub fn connect(addr: &Address, tcp_keepalive: Duration) -> io::Result<Connecting> {
    let (socket, to) = match addr {
        Address::Tcp(sa) => {
            let socket = Socket::new(Domain::for_address(*sa), Type::STREAM, Some(Protocol::TCP))?;
            // Set before connecting, so the first segment after the handshake already goes out
            // without waiting.
            tune_tcp(SockRef::from(&socket));
            set_tcp_keepalive(SockRef::from(&socket), tcp_keepalive);
            (socket, SockAddr::from(*sa))
        }
        Address::Unix(path) => (
            Socket::new(Domain::UNIX, Type::STREAM, None)?,
            SockAddr::unix(path)?,
        ),
    };
    socket.set_nonblocking(true)?;
    match socket.connect(&to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(match addr {
        Address::Tcp(_) => Connecting::Tcp(socket.into()),
        Address::Unix(_) => Connecting::Unix(socket.into()),
    })
}

/// After a writable event on a connecting socket: `Ok(true)` when connected, `Ok(false)` when
/// still in progress (a spurious wakeup: wait again), `Err` when the connect failed.
pub fn connect_finished(sock: SockRef<'_>) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `done` (a non-blocking check) until it holds, for at most ten seconds.
    fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        let start = std::time::Instant::now();
        while !done() {
            if start.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn a_connect_completes_and_a_refused_one_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp(listener.local_addr().unwrap());
        let Connecting::Tcp(s) = connect(&addr, Duration::from_secs(45)).unwrap() else {
            unreachable!()
        };
        let connected = wait_for(|| connect_finished(SockRef::from(&s)).unwrap());
        assert!(connected);
        assert!(s.nodelay().unwrap());
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE");
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(45));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(45)
        );
        drop(listener);

        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp(dead.local_addr().unwrap());
        drop(dead);
        let failed = match connect(&addr, Duration::ZERO) {
            Err(_) => true,
            Ok(Connecting::Tcp(s)) => {
                let mut result = Ok(false);
                wait_for(|| {
                    result = connect_finished(SockRef::from(&s));
                    !matches!(result, Ok(false))
                });
                result.is_err()
            }
            Ok(Connecting::Unix(_)) => unreachable!(),
        };
        assert!(failed, "a connect to a closed port fails");
    }

    #[test]
    fn zero_keepalive_leaves_probes_off_and_sub_second_rounds_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp(listener.local_addr().unwrap());
        let Connecting::Tcp(off) = connect(&addr, Duration::ZERO).unwrap() else {
            unreachable!()
        };
        assert!(!SockRef::from(&off).keepalive().unwrap());
        let Connecting::Tcp(short) = connect(&addr, Duration::from_millis(200)).unwrap() else {
            unreachable!()
        };
        let sock = SockRef::from(&short);
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
    }
}
