//! Sockets as the driver uses them: TCP or Unix, registered with async-io's reactor, read and
//! written without blocking (`try_*`), awaited only for readiness.

use async_io::Async;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use upkeep_core::Address;

/// A connected socket of either family.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(Async<TcpStream>),
    Unix(Async<UnixStream>),
}

impl Stream {
    /// A non-blocking connect to `addr` (TCP with Nagle off: the core already batches writes).
    pub(crate) async fn connect(addr: &Address) -> io::Result<Stream> {
        match addr {
            Address::Tcp(sa) => {
                let s = Async::<TcpStream>::connect(*sa).await?;
                s.get_ref().set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Address::Unix(path) => Ok(Stream::Unix(Async::<UnixStream>::connect(path).await?)),
        }
    }

    /// One `read(2)`; `WouldBlock` when nothing is there.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.get_ref().read(buf),
            Stream::Unix(s) => s.get_ref().read(buf),
        }
    }

    /// One `writev(2)`; `WouldBlock` when the send buffer is full.
    pub(crate) fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.get_ref().write_vectored(bufs),
            Stream::Unix(s) => s.get_ref().write_vectored(bufs),
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
        // The peer may already be gone; the core learns that from the next read.
        let _ = match self {
            Stream::Tcp(s) => s.get_ref().shutdown(Shutdown::Write),
            Stream::Unix(s) => s.get_ref().shutdown(Shutdown::Write),
        };
    }

    /// Makes the coming close abortive (RST instead of FIN): SO_LINGER with a zero timeout.
    pub(crate) fn set_reset_on_close(&self) {
        let _ = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s.get_ref()).set_linger(Some(Duration::ZERO)),
            Stream::Unix(s) => socket2::SockRef::from(s.get_ref()).set_linger(Some(Duration::ZERO)),
        };
    }
}
