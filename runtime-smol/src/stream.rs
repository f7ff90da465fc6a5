//! Sockets as the driver uses them: TCP or Unix, registered with async-io's reactor, read and
//! written without blocking (by the shared loops of `upkeep_runtime::io`), awaited only for
//! readiness. Options and the connect
//! itself are the shared layer's ([`upkeep_runtime::socket`]).

use async_io::Async;
use socket2::SockRef;
use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use upkeep_core::Address;
use upkeep_runtime::socket::{self, Connecting};

/// A connected socket of either family.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(Async<TcpStream>),
    Unix(Async<UnixStream>),
}

/// A connected socket on its way to another thread (see [`Stream::detach`]).
#[derive(Debug)]
pub(crate) enum Detached {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// A non-blocking connect to `addr` with TCP keepalive probes every `tcp_keepalive`
    /// ([`upkeep_runtime::socket::connect`]), awaited.
    pub(crate) async fn connect(addr: &Address, tcp_keepalive: Duration) -> io::Result<Stream> {
        let stream = match socket::connect(addr, tcp_keepalive)? {
            Connecting::Tcp(s) => Stream::Tcp(Async::new(s)?),
            Connecting::Unix(s) => Stream::Unix(Async::new(s)?),
        };
        loop {
            stream.writable().await?;
            if socket::connect_finished(stream.sock())? {
                return Ok(stream);
            }
        }
    }

    /// An accepted TCP connection: tuned already, since it inherits the options
    /// `upkeep_runtime::listen::bind_reuseport` set on its listener.
    pub(crate) fn accepted_tcp(s: Async<TcpStream>) -> Stream {
        Stream::Tcp(s)
    }

    /// The socket, for the shared option and I/O helpers.
    pub(crate) fn sock(&self) -> SockRef<'_> {
        match self {
            Stream::Tcp(s) => SockRef::from(s.get_ref()),
            Stream::Unix(s) => SockRef::from(s.get_ref()),
        }
    }

    /// Waits until a read would not block.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }

    /// Waits until a write would not block.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            Stream::Unix(s) => s.writable().await,
        }
    }

    /// Half-close: send FIN, keep reading.
    pub(crate) fn shutdown_write(&self) {
        socket::shutdown_write(self.sock());
    }

    /// The socket as a plain (blocking-API, still non-blocking) stream another thread can take
    /// over with [`Stream::attach`]: a duplicate of the descriptor, so this `Stream` — shared
    /// with its reader and writer tasks, which end on their own — may drop whenever they do
    /// (deregistering from this thread's reactor) without closing the connection.
    pub(crate) fn detach(&self) -> io::Result<Detached> {
        let sock = self.sock().try_clone()?;
        Ok(match self {
            Stream::Tcp(_) => Detached::Tcp(sock.into()),
            Stream::Unix(_) => Detached::Unix(sock.into()),
        })
    }

    /// Registers a [detached](Stream::detach) socket with this thread's reactor.
    pub(crate) fn attach(d: Detached) -> io::Result<Stream> {
        Ok(match d {
            Detached::Tcp(s) => Stream::Tcp(Async::new(s)?),
            Detached::Unix(s) => Stream::Unix(Async::new(s)?),
        })
    }

    /// Makes the coming close abortive (RST instead of FIN).
    pub(crate) fn set_reset_on_close(&self) {
        socket::set_reset_on_close(self.sock());
    }
}
