//! Listening sockets, as the shared bind policy ([`upkeep_runtime::listen`]) hands them to each
//! worker, registered with async-io's reactor.

use async_io::Async;
use std::io;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use upkeep_runtime::listen::Listening;

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
