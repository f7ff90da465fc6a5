//! Sockets: TCP and Unix streams behind one type, and listeners as every worker gets them from
//! the shared bind policy ([`upkeep_runtime::listen`]); options, connects and the policy itself
//! live in `upkeep-runtime`.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use socket2::SockRef;
use upkeep_core::Address;
use upkeep_runtime::listen::Listening;
use upkeep_runtime::socket::{self, Connecting};

/// A connected stream of either family.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Starts a non-blocking connect to `addr`, with TCP keepalive probes every
    /// `tcp_keepalive` (see [`upkeep_runtime::socket::connect`]).
    pub(crate) fn connect(addr: &Address, tcp_keepalive: Duration) -> io::Result<Stream> {
        Ok(match socket::connect(addr, tcp_keepalive)? {
            Connecting::Tcp(s) => Stream::Tcp(TcpStream::from_std(s)),
            Connecting::Unix(s) => Stream::Unix(UnixStream::from_std(s)),
        })
    }

    /// The socket, for the shared option and I/O helpers.
    pub(crate) fn sock(&self) -> SockRef<'_> {
        match self {
            Stream::Tcp(s) => SockRef::from(s),
            Stream::Unix(s) => SockRef::from(s),
        }
    }

    /// After a writable event on a connecting socket: `Ok(true)` when connected, `Ok(false)` when
    /// still in progress (a spurious wakeup), `Err` when the connect failed.
    pub(crate) fn finish_connect(&self) -> io::Result<bool> {
        socket::connect_finished(self.sock())
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
        socket::shutdown_write(self.sock());
    }

    /// Arms an abortive close: the drop that follows sends RST instead of FIN.
    pub(crate) fn set_reset_on_close(&self) {
        socket::set_reset_on_close(self.sock());
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
    /// A worker's socket from the shared bind policy ([`upkeep_runtime::listen::Bound::for_worker`]).
    pub(crate) fn new(socket: Listening) -> Listener {
        match socket {
            Listening::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)),
            Listening::Unix(l) => Listener::Unix(UnixListener::from_std(l)),
        }
    }

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

impl Stream {
    /// Switches to blocking I/O with `timeout` on reads and writes (the admin listener serves
    /// one short request at a time, off the request path).
    pub(crate) fn make_blocking(&self, timeout: Duration) -> io::Result<()> {
        let sock = self.sock();
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))
    }

    /// Changes the read timeout of a blocking stream (the admin listener shrinks it as its
    /// per-request deadline approaches).
    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.sock().set_read_timeout(Some(timeout))
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
