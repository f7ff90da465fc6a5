//! Sockets: TCP and Unix streams behind one type, and listeners bound the way every worker needs
//! them (one `SO_REUSEPORT` TCP socket per worker, one Unix socket shared by all).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
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

    /// Reads into the spare capacity of `buf` (the core's read buffer for this connection, see
    /// `Core::read_buffer`) and appends what arrived: no staging buffer, no copy.
    #[allow(unsafe_code)]
    pub(crate) fn read_into(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let sock = match self {
            Stream::Tcp(s) => SockRef::from(s),
            Stream::Unix(s) => SockRef::from(s),
        };
        let len = buf.len();
        let n = sock.recv(buf.spare_capacity_mut())?;
        // SAFETY: recv(2) wrote (initialised) the first `n` bytes of the spare capacity, and
        // socket2 returns at most the length it was given, so `len + n <= capacity`. Measured
        // reason for not reading into an initialised staging buffer: the copy out of it was
        // ~10 % of the proxy's CPU on 64 KiB responses (perf, benches/load).
        unsafe { buf.set_len(len + n) };
        Ok(n)
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
///
/// The proxy keeps its own descriptor for every listening socket it made, and a reload hands
/// those very sockets (duplicated) to the next generation of workers. An old worker then only
/// stops watching its copy: the socket stays open, and connections the kernel had already
/// queued on it are accepted by the new worker that shares it. (Closing a `SO_REUSEPORT` socket
/// resets the connections queued on it, and a fresh socket per reload would close one per old
/// worker: clients connecting during a reload saw resets.)
#[derive(Debug)]
pub(crate) enum Bound {
    /// A TCP address (port 0 already resolved): one `SO_REUSEPORT` socket per worker, so the
    /// kernel spreads connections across workers.
    Tcp {
        addr: SocketAddr,
        /// Every per-worker socket, in worker order (the first bound while resolving port 0).
        sockets: Vec<std::net::TcpListener>,
        /// How many of `sockets` this generation's workers have taken.
        handed: usize,
    },
    /// A Unix socket: one socket, cloned into every worker (Unix sockets have no reuseport
    /// balancing; workers race for accepts, which the kernel settles). `None` once closed.
    Unix {
        path: String,
        socket: Option<StdUnixListener>,
    },
}

impl Bound {
    /// Binds `addr`: resolves a TCP port 0, removes a stale Unix socket file first.
    pub(crate) fn bind(addr: &Address) -> io::Result<Bound> {
        match addr {
            Address::Tcp(sa) => {
                refuse_taken_port(*sa)?;
                let first = bind_reuseport(*sa)?;
                let addr = first.local_addr()?;
                Ok(Bound::Tcp {
                    addr,
                    sockets: vec![first],
                    handed: 0,
                })
            }
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let socket = StdUnixListener::bind(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("bind {path}: {e}")))?;
                socket.set_nonblocking(true)?;
                Ok(Bound::Unix {
                    path: path.clone(),
                    socket: Some(socket),
                })
            }
        }
    }

    /// The same address for a new generation of workers: the very same sockets, duplicated
    /// (see the type's documentation).
    pub(crate) fn share(&self) -> io::Result<Bound> {
        match self {
            Bound::Tcp { addr, sockets, .. } => Ok(Bound::Tcp {
                addr: *addr,
                sockets: sockets
                    .iter()
                    .map(std::net::TcpListener::try_clone)
                    .collect::<io::Result<_>>()?,
                handed: 0,
            }),
            Bound::Unix { path, socket } => Ok(Bound::Unix {
                path: path.clone(),
                socket: Some(open(socket)?.try_clone()?),
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

    /// A listener for the next worker: a duplicate of the next socket, bound now if there is
    /// none left.
    pub(crate) fn for_worker(&mut self) -> io::Result<Listener> {
        match self {
            Bound::Tcp {
                addr,
                sockets,
                handed,
            } => {
                if *handed == sockets.len() {
                    sockets.push(bind_reuseport(*addr)?);
                }
                let std = sockets[*handed].try_clone()?;
                *handed += 1;
                Ok(Listener::Tcp(TcpListener::from_std(std)))
            }
            Bound::Unix { socket, .. } => Ok(Listener::Unix(UnixListener::from_std(
                open(socket)?.try_clone()?,
            ))),
        }
    }

    /// Once every worker of the generation has its listener: forgets TCP sockets no worker
    /// took (a reload to fewer workers), so they close with the old workers' copies.
    pub(crate) fn settle(&mut self) {
        if let Bound::Tcp {
            sockets, handed, ..
        } = self
        {
            sockets.truncate(*handed);
        }
    }

    /// Drops the proxy's own descriptors (on drain): once the workers close theirs, the
    /// sockets close and new connections are refused, instead of queueing on a socket nobody
    /// accepts from.
    pub(crate) fn close(&mut self) {
        match self {
            Bound::Tcp { sockets, .. } => sockets.clear(),
            Bound::Unix { socket, .. } => *socket = None,
        }
    }
}

fn open(socket: &Option<StdUnixListener>) -> io::Result<&StdUnixListener> {
    socket
        .as_ref()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "listener closed"))
}

/// Fails with `AddrInUse` when something already listens on `addr`. Our sockets set
/// SO_REUSEPORT so workers can share a port, which would also let a second `upkeep` (or anything
/// else of the same user with SO_REUSEPORT) bind the port and silently take a share of the
/// connections. A probe bound *without* SO_REUSEPORT conflicts with every listener there.
/// (Reloads keep their own sockets, see `Bound::share`, and never probe.)
fn refuse_taken_port(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR still conflicts with a listener, not with TIME_WAIT leftovers of a restart.
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))
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

    /// Changes the read timeout of a blocking stream (the admin listener shrinks it as its
    /// per-request deadline approaches).
    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        let sock = match self {
            Stream::Tcp(s) => SockRef::from(s),
            Stream::Unix(s) => SockRef::from(s),
        };
        sock.set_read_timeout(Some(timeout))
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
