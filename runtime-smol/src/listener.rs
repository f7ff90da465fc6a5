//! Listening sockets, as the shared bind policy ([`upkeep_runtime::listen`]) hands them to each
//! worker, registered with async-io's reactor.

use async_io::Async;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::unix::net::UnixListener;
use upkeep_runtime::listen::Listening;

use crate::stream::Stream;

/// A listening socket registered with the reactor.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(Async<TcpListener>),
    Unix(Async<UnixListener>),
}

impl Listener {
    /// Registers a worker's socket with the reactor (on a thread running async-io).
    pub(crate) fn register(socket: Listening) -> io::Result<Listener> {
        Ok(match socket {
            Listening::Tcp(l) => Listener::Tcp(Async::new(l)?),
            Listening::Unix(l) => Listener::Unix(Async::new(l)?),
        })
    }
}

impl Listener {
    /// One `accept(2)` without waiting; `WouldBlock` when nothing is queued. TCP connections come
    /// tuned ([`Stream::accepted_tcp`]) and with the peer's address.
    pub(crate) fn try_accept(&self) -> io::Result<(Stream, Option<IpAddr>)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.get_ref().accept()?;
                Ok((Stream::accepted_tcp(Async::new(s)?), Some(peer.ip())))
            }
            Listener::Unix(l) => {
                let (s, _) = l.get_ref().accept()?;
                Ok((Stream::Unix(Async::new(s)?), None))
            }
        }
    }

    /// Waits until a connection is queued.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.readable().await,
            Listener::Unix(l) => l.readable().await,
        }
    }
}
