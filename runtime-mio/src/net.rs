//! Sockets: TCP and Unix streams behind one type, and listeners bound the way every worker needs
//! them (one `SO_REUSEPORT` TCP socket per worker, one Unix socket shared by all).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use upkeep_core::Address;

/// Listen backlog (nginx's default on Linux is 511; a reverse proxy in front of bursts wants more).
const BACKLOG: i32 = 1024;

/// A connected stream of either family.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Starts a non-blocking connect to `addr`.
    pub(crate) fn connect(addr: &Address) -> io::Result<Stream> {
        match addr {
            Address::Tcp(sa) => TcpStream::connect(*sa).map(Stream::Tcp),
            Address::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
        }
    }

    /// After a writable event on a connecting socket: `Ok(true)` when connected, `Ok(false)` when
    /// still in progress (a spurious wakeup), `Err` when the connect failed.
    pub(crate) fn finish_connect(&self) -> io::Result<bool> {
        let (err, peer) = match self {
            Stream::Tcp(s) => (s.take_error(), s.peer_addr().map(|_| ())),
            Stream::Unix(s) => (s.take_error(), s.peer_addr().map(|_| ())),
        };
        if let Some(e) = err? {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Disables Nagle on TCP (the proxy writes whole heads and bodies; latency matters more).
    pub(crate) fn set_nodelay(&self) {
        if let Stream::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    pub(crate) fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Arms an abortive close: the drop that follows sends RST instead of FIN.
    pub(crate) fn set_reset_on_close(&self) {
        let _ = match self {
            Stream::Tcp(s) => SockRef::from(s).set_linger(Some(Duration::ZERO)),
            Stream::Unix(s) => SockRef::from(s).set_linger(Some(Duration::ZERO)),
        };
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        // Both interests once, for the socket's lifetime: mio is edge-triggered, so a socket we
        // stop reading (backpressure) just stays quiet until we read it again; no re-registration
        // syscalls per interest change.
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self {
            Stream::Tcp(s) => registry.register(s, token, interest),
            Stream::Unix(s) => registry.register(s, token, interest),
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Stream::Tcp(s) => registry.deregister(s),
            Stream::Unix(s) => registry.deregister(s),
        };
    }
}

/// A listening socket of either family, as one worker owns it.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted connection and, for TCP, its peer.
pub(crate) type Accepted = (Stream, Option<SocketAddr>);

impl Listener {
    pub(crate) fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), Some(a))),
            Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), None)),
        }
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => registry.register(l, token, Interest::READABLE),
            Listener::Unix(l) => registry.register(l, token, Interest::READABLE),
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Listener::Tcp(l) => registry.deregister(l),
            Listener::Unix(l) => registry.deregister(l),
        };
    }
}

/// One configured listen address, bound: what a new worker needs to get its own socket.
#[derive(Debug)]
pub(crate) enum Bound {
    /// A TCP address (port 0 already resolved): every worker binds its own `SO_REUSEPORT`
    /// socket here, so the kernel spreads connections across workers.
    Tcp {
        addr: SocketAddr,
        /// The first socket, bound while resolving port 0; handed to the first worker that asks.
        first: Option<std::net::TcpListener>,
    },
    /// A Unix socket: one socket, cloned into every worker (Unix sockets have no reuseport
    /// balancing; workers race for accepts, which the kernel settles).
    Unix {
        path: String,
        socket: StdUnixListener,
    },
}

impl Bound {
    /// Binds `addr`: resolves a TCP port 0, removes a stale Unix socket file first.
    pub(crate) fn bind(addr: &Address) -> io::Result<Bound> {
        match addr {
            Address::Tcp(sa) => {
                let first = bind_reuseport(*sa)?;
                let addr = first.local_addr()?;
                Ok(Bound::Tcp {
                    addr,
                    first: Some(first),
                })
            }
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let socket = StdUnixListener::bind(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("bind {path}: {e}")))?;
                socket.set_nonblocking(true)?;
                Ok(Bound::Unix {
                    path: path.clone(),
                    socket,
                })
            }
        }
    }

    /// A second binding of the same address for a new generation of workers: a fresh
    /// reuseport socket for TCP, a clone of the very same socket for Unix (rebinding the path
    /// would orphan the old socket's queue).
    pub(crate) fn share(&self) -> io::Result<Bound> {
        match self {
            Bound::Tcp { addr, .. } => Ok(Bound::Tcp {
                addr: *addr,
                first: Some(bind_reuseport(*addr)?),
            }),
            Bound::Unix { path, socket } => Ok(Bound::Unix {
                path: path.clone(),
                socket: socket.try_clone()?,
            }),
        }
    }

    /// The actual address (with the resolved port).
    pub(crate) fn address(&self) -> Address {
        match self {
            Bound::Tcp { addr, .. } => Address::Tcp(*addr),
            Bound::Unix { path, .. } => Address::Unix(path.clone()),
        }
    }

    /// A listener for one worker.
    pub(crate) fn for_worker(&mut self) -> io::Result<Listener> {
        match self {
            Bound::Tcp { addr, first } => {
                let std = match first.take() {
                    Some(s) => s,
                    None => bind_reuseport(*addr)?,
                };
                Ok(Listener::Tcp(TcpListener::from_std(std)))
            }
            Bound::Unix { socket, .. } => {
                Ok(Listener::Unix(UnixListener::from_std(socket.try_clone()?)))
            }
        }
    }
}

/// A non-blocking TCP listener with `SO_REUSEADDR` and `SO_REUSEPORT` (nginx `listen ... reuseport`).
fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Removes a socket file left behind by a previous run, but never a regular file (a typo in the
/// config must not delete someone's data).
fn remove_stale_socket(path: &str) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(Path::new(path)) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{path} exists and is not a socket"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Stream {
    /// Switches to blocking I/O with `timeout` on reads and writes (the admin listener serves
    /// one short request at a time, off the request path).
    pub(crate) fn make_blocking(&self, timeout: Duration) -> io::Result<()> {
        let sock = match self {
            Stream::Tcp(s) => SockRef::from(s),
            Stream::Unix(s) => SockRef::from(s),
        };
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))
    }

    /// Writes all of `data` (blocking streams only).
    pub(crate) fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.write_vectored(&[IoSlice::new(data)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
