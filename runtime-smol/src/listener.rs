//! Listening sockets: one SO_REUSEPORT TCP socket per worker (the kernel spreads connections
//! across them), one shared Unix socket (each worker registers its own duplicate).

use async_io::Async;
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use upkeep_core::Address;

/// A bound, listening socket, not yet registered with the reactor.
#[derive(Debug)]
pub(crate) enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Bound {
    /// Binds `addr`. A TCP port 0 is resolved by this first socket; [`Bound::sibling`] binds the
    /// other workers' sockets to the resolved address.
    pub(crate) fn bind(addr: &Address) -> io::Result<Bound> {
        match addr {
            Address::Tcp(sa) => {
                refuse_taken_port(*sa)?;
                bind_tcp(*sa).map(Bound::Tcp)
            }
            Address::Unix(path) => bind_unix(path).map(Bound::Unix),
        }
    }

    /// The actual address (with the real port when 0 was asked for).
    pub(crate) fn local_address(&self) -> io::Result<Address> {
        match self {
            Bound::Tcp(l) => Ok(Address::Tcp(l.local_addr()?)),
            Bound::Unix(l) => {
                let a = l.local_addr()?;
                let p = a.as_pathname().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "unnamed unix socket")
                })?;
                Ok(Address::Unix(p.to_string_lossy().into_owned()))
            }
        }
    }

    /// Another worker's socket for the same address: a fresh SO_REUSEPORT socket for TCP (so the
    /// kernel balances accepts), a duplicate descriptor for Unix sockets.
    pub(crate) fn sibling(&self) -> io::Result<Bound> {
        match self {
            Bound::Tcp(l) => bind_tcp(l.local_addr()?).map(Bound::Tcp),
            Bound::Unix(l) => l.try_clone().map(Bound::Unix),
        }
    }

    /// Registers the socket with the reactor (it must be used on a thread running async-io).
    pub(crate) fn into_async(self) -> io::Result<Listener> {
        Ok(match self {
            Bound::Tcp(l) => Listener::Tcp(Async::new(l)?),
            Bound::Unix(l) => Listener::Unix(Async::new(l)?),
        })
    }
}

/// A listening socket registered with the reactor.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(Async<TcpListener>),
    Unix(Async<UnixListener>),
}

/// Fails with `AddrInUse` when something already listens on `sa`. Our own sockets set
/// SO_REUSEPORT so the workers can share a port, but that also lets any other socket of the
/// same user with SO_REUSEPORT (a second proxy started by mistake, say) bind the same port and
/// silently take a share of the connections. A probe bound *without* SO_REUSEPORT conflicts with
/// every listening socket there, so the first bind refuses a taken port as a plain bind would.
fn refuse_taken_port(sa: SocketAddr) -> io::Result<()> {
    if sa.port() == 0 {
        // The kernel picks a free port.
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
    // SO_REUSEADDR still conflicts with a listener, but not with TIME_WAIT leftovers of a
    // previous run.
    probe.set_reuse_address(true)?;
    if sa.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&sa.into())
}

fn bind_tcp(sa: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if sa.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&sa.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds a Unix socket path, replacing a stale socket file left by a dead process but never a
/// live one (a connect that succeeds means someone is serving there) or a non-socket file.
fn bind_unix(path: &str) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket || UnixStream::connect(path).is_ok() {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        other => other,
    }
}
