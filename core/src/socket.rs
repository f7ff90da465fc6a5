//! The one way for a runtime to move bytes between a socket and the core.
//!
//! rustls's `read_tls` / `write_tls` shape: the core owns the loop's bookkeeping, the runtime
//! supplies only the system call as a closure. [`Core::read_with`] lends the connection's read
//! buffer, commits exactly what was appended and classifies end-of-stream and errors;
//! [`Core::write_with`] gathers the queued bytes into one vectored write and commits what went
//! out. A runtime cannot forget the commit, commit the wrong count, or mistake `Ok(0)` for data.
//! The core still does no I/O: the closures do, and only when the runtime calls these.
//!
//! Both return `Err` only for "try again later" (`WouldBlock`, `Interrupted`), having told the
//! core nothing, so they fit an edge-triggered loop (stop on `Err`) and async readiness helpers
//! such as `async_io::Async::read_with`, which retry on `WouldBlock` after the next readiness.

use bytes::BytesMut;
use std::io::{self, IoSlice};

use crate::{ConnId, Core, Input, Time};

/// How many slices one [`Core::write_with`] offers at most (Linux's `UIO_MAXIOV` is 1024; the
/// queue rarely holds more than a head, a body piece and a chunk line, so 64 costs nothing).
pub const MAX_IOV: usize = 64;

/// What one [`Core::read_with`] did. The core has already been told; drain
/// [`Core::poll_output`] next.
#[derive(Debug)]
pub enum ReadOutcome {
    /// This many bytes arrived and were handed to the core (never 0).
    Data(usize),
    /// The peer closed its write side (the read returned 0).
    Closed,
    /// The read failed, or the reader broke the loan's contract; the core closes the connection.
    Failed(io::Error),
    /// `conn` is not a live connection of this core: nothing was read.
    Unknown,
}

/// What one [`Core::write_with`] did. The core has already been told; drain
/// [`Core::poll_output`] next.
#[derive(Debug)]
pub enum WriteOutcome {
    /// `n` of the `offered` bytes went out; `left` are still queued. `n < offered` is a short
    /// write: the socket's buffer is full, so wait for writability rather than try again now.
    /// An empty queue gives `n = offered = left = 0` without calling the writer.
    Wrote {
        /// Bytes written (and committed).
        n: usize,
        /// Bytes offered to the writer in this call (at most [`MAX_IOV`] slices).
        offered: usize,
        /// Bytes still queued for the connection afterwards.
        left: usize,
    },
    /// The write failed (or wrote nothing); the core closes the connection.
    Failed(io::Error),
    /// `conn` is not a live connection of this core: nothing was written.
    Unknown,
}

/// Whether an I/O error only means "not now": the caller tries again after the next readiness.
pub fn is_retry(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Core {
    /// Reads once from a socket straight into `conn`'s read buffer and hands the result to the
    /// core.
    ///
    /// `read` gets the buffer with at least `want` bytes (never none) of spare capacity and must only
    /// *append* to it (e.g. `recv` into `spare_capacity_mut()`, then `set_len`), returning how
    /// many bytes it appended, as `io::Read::read` would. The core commits exactly those bytes
    /// (saving the copy [`Input::Received`] makes); `Ok(0)` is the peer's end of stream. A
    /// reader that reports a count other than what it appended, or shrinks the buffer, breaks
    /// the connection's byte stream: its bytes are dropped and the connection is failed.
    ///
    /// Returns `Err` only for `WouldBlock` / `Interrupted` (nothing handed to the core).
    ///
    /// ```
    /// # use upkeep_core::{Address, Config, Core, ListenerId, ReadOutcome, Time};
    /// # let config = Config::simple(Address::parse("127.0.0.1:8080").unwrap(),
    /// #     vec![Address::parse("127.0.0.1:9001").unwrap()]);
    /// # let mut core = Core::new(config, 0).unwrap();
    /// let client = core.accept(Time::ZERO, ListenerId(0), None).unwrap();
    /// let mut socket: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"; // stands for a TcpStream
    /// let got = core.read_with(Time::ZERO, client, 16 * 1024, |buf| {
    ///     let n = socket.len().min(buf.capacity() - buf.len());
    ///     buf.extend_from_slice(&socket[..n]); // a real runtime: recv into the spare capacity
    ///     socket = &socket[n..];
    ///     Ok(n)
    /// });
    /// assert!(matches!(got, Ok(ReadOutcome::Data(27))));
    /// ```
    pub fn read_with(
        &mut self,
        now: Time,
        conn: ConnId,
        want: usize,
        read: impl FnOnce(&mut BytesMut) -> io::Result<usize>,
    ) -> io::Result<ReadOutcome> {
        // What a runtime's read may take: the spare room, up to the core's cap
        // (`upkeep_runtime::io::Reader` reads exactly that). A read that takes all of it may
        // have left bytes in the socket.
        let cap = self.read_cap(conn).unwrap_or(usize::MAX);
        // A `recv` into no room returns 0, which would read as the peer's end of stream: the
        // loan always has room for at least one byte, whatever `want` says.
        let Some(buf) = self.read_buffer(conn, want.max(1)) else {
            return Ok(ReadOutcome::Unknown);
        };
        let before = buf.len();
        let room = (buf.capacity() - before).min(cap);
        let result = read(buf);
        let appended = buf.len().checked_sub(before);
        match result {
            Ok(n) if Some(n) != appended => {
                // Closes the loan (the core drops whatever was appended), then fails the
                // connection: its stream position is no longer known.
                self.handle(now, Input::Appended { conn, n: 0 });
                self.handle(now, Input::Errored { conn });
                Ok(ReadOutcome::Failed(io::Error::other(format!(
                    "read_with: the reader reported {n} bytes but appended {appended:?}"
                ))))
            }
            Ok(0) => {
                self.handle(now, Input::Appended { conn, n: 0 });
                self.handle(now, Input::ReadClosed { conn });
                Ok(ReadOutcome::Closed)
            }
            Ok(n) => {
                self.note_read(conn, n >= room);
                self.handle(now, Input::Appended { conn, n });
                Ok(ReadOutcome::Data(n))
            }
            Err(e) => {
                self.handle(now, Input::Appended { conn, n: 0 });
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.handle(now, Input::Drained { conn });
                }
                if is_retry(&e) {
                    return Err(e);
                }
                self.handle(now, Input::Errored { conn });
                Ok(ReadOutcome::Failed(e))
            }
        }
    }

    /// Moves the next body bytes of `from` without reading them, when the core allows it
    /// ([`Core::splice_source`]; `None` otherwise: read with [`Core::read_with`]).
    ///
    /// `splice` gets the destination connection and the most it may move, moves bytes from
    /// `from`'s socket into the runtime's pipe toward that connection (`splice(2)`), and returns
    /// the count; `Ok(0)` is `from`'s end of stream. The core commits them
    /// ([`Input::Spliced`]) as it would a read. A hint that says `flush_first` is not called:
    /// flush the destination and ask again.
    ///
    /// Returns `Some(Err)` only for `WouldBlock` / `Interrupted` (nothing handed to the core):
    /// the socket is drained, or the pipe full.
    pub fn splice_with(
        &mut self,
        now: Time,
        from: ConnId,
        splice: impl FnOnce(ConnId, usize) -> io::Result<usize>,
    ) -> Option<io::Result<ReadOutcome>> {
        let hint = self.splice_source(from)?;
        if hint.flush_first {
            return None;
        }
        Some(match splice(hint.to, hint.max) {
            Ok(0) => {
                self.handle(now, Input::ReadClosed { conn: from });
                Ok(ReadOutcome::Closed)
            }
            Ok(n) if n > hint.max => {
                self.handle(now, Input::Errored { conn: from });
                Ok(ReadOutcome::Failed(io::Error::other(format!(
                    "splice_with: {n} bytes moved, {} allowed",
                    hint.max
                ))))
            }
            Ok(n) => {
                self.handle(now, Input::Spliced { conn: from, n });
                Ok(ReadOutcome::Data(n))
            }
            Err(e) if is_retry(&e) => Err(e),
            Err(e) => {
                self.handle(now, Input::Errored { conn: from });
                Ok(ReadOutcome::Failed(e))
            }
        })
    }

    /// Writes once from the runtime's pipe toward `conn`: `write` gets the number of piped
    /// bytes ([`Core::piped`]) and moves up to that many from the pipe to the socket
    /// (`splice(2)`), returning the count, which is committed ([`Input::Written`]). Nothing
    /// piped: `n = offered = 0` without calling the writer. Errors as [`Core::write_with`].
    pub fn write_piped_with(
        &mut self,
        now: Time,
        conn: ConnId,
        write: impl FnOnce(usize) -> io::Result<usize>,
    ) -> io::Result<WriteOutcome> {
        let offered = self.piped(conn);
        if offered == 0 {
            if !self.is_open(conn) {
                return Ok(WriteOutcome::Unknown);
            }
            let left = self.pending_len(conn);
            return Ok(WriteOutcome::Wrote {
                n: 0,
                offered,
                left,
            });
        }
        let result = write(offered);
        self.commit_write(now, conn, offered, result)
    }

    /// Writes once: gathers up to [`MAX_IOV`] slices of what is queued for `conn`
    /// ([`Core::pending`]), calls `write` with them (a `writev` / `sendmsg`), and commits what
    /// went out ([`Input::Written`]).
    ///
    /// Returns `Err` only for `WouldBlock` / `Interrupted` (nothing committed). `Ok(0)` from
    /// the writer fails the connection (`WriteZero`), as does any other error.
    ///
    /// ```
    /// # use upkeep_core::{Address, Config, Core, ListenerId, WriteOutcome, Time};
    /// # let config = Config::simple(Address::parse("127.0.0.1:8080").unwrap(),
    /// #     vec![Address::parse("127.0.0.1:9001").unwrap()]);
    /// # let mut core = Core::new(config, 0).unwrap();
    /// let client = core.accept(Time::ZERO, ListenerId(0), None).unwrap();
    /// let mut socket = Vec::new(); // stands for a TcpStream
    /// let sent = core.write_with(Time::ZERO, client, |iov| {
    ///     iov.iter().for_each(|s| socket.extend_from_slice(s));
    ///     Ok(iov.iter().map(|s| s.len()).sum())
    /// });
    /// // Nothing queued yet: the writer was not even called.
    /// assert!(matches!(sent, Ok(WriteOutcome::Wrote { n: 0, offered: 0, left: 0 })));
    /// ```
    pub fn write_with(
        &mut self,
        now: Time,
        conn: ConnId,
        write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<WriteOutcome> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut k = 0;
        let mut offered = 0;
        for piece in self.pending(conn).take(MAX_IOV) {
            iov[k] = IoSlice::new(piece);
            offered += piece.len();
            k += 1;
        }
        // One lookup on the hot path: an unknown connection has nothing pending either.
        if offered == 0 {
            if !self.is_open(conn) {
                return Ok(WriteOutcome::Unknown);
            }
            // What is left, if anything, is piped: `write_piped_with` writes it.
            return Ok(WriteOutcome::Wrote {
                n: 0,
                offered: 0,
                left: self.pending_len(conn),
            });
        }
        let result = write(&iov[..k]);
        self.commit_write(now, conn, offered, result)
    }

    /// Tells the core what a write of `offered` bytes of `conn`'s queue did (the commit step of
    /// [`Core::write_with`] and [`Core::write_piped_with`]).
    fn commit_write(
        &mut self,
        now: Time,
        conn: ConnId,
        offered: usize,
        result: io::Result<usize>,
    ) -> io::Result<WriteOutcome> {
        match result {
            Ok(0) => {
                self.handle(now, Input::Errored { conn });
                Ok(WriteOutcome::Failed(io::ErrorKind::WriteZero.into()))
            }
            Ok(n) => {
                // A writer cannot have written more than it was offered; clamp rather than let
                // a runtime bug advance the queue past bytes that never went out.
                let n = n.min(offered);
                self.handle(now, Input::Written { conn, n });
                Ok(WriteOutcome::Wrote {
                    n,
                    offered,
                    left: self.pending_len(conn),
                })
            }
            Err(e) if is_retry(&e) => Err(e),
            Err(e) => {
                self.handle(now, Input::Errored { conn });
                Ok(WriteOutcome::Failed(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, Config, ListenerId, Output};

    fn core_with_client() -> (Core, ConnId) {
        let config = Config::simple(
            Address::parse("127.0.0.1:8080").unwrap(),
            vec![Address::parse("127.0.0.1:9001").unwrap()],
        );
        let mut core = Core::new(config, 0).unwrap();
        let client = core.accept(Time::ZERO, ListenerId(0), None).unwrap();
        (core, client)
    }

    fn outputs(core: &mut Core) -> Vec<Output> {
        std::iter::from_fn(|| core.poll_output()).collect()
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn read_with_commits_appended_bytes() {
        let (mut core, client) = core_with_client();
        let got = core.read_with(Time::ZERO, client, 1024, |buf| {
            assert!(buf.capacity() - buf.len() >= 1024);
            buf.extend_from_slice(REQUEST);
            Ok(REQUEST.len())
        });
        assert!(matches!(got, Ok(ReadOutcome::Data(n)) if n == REQUEST.len()));
        // The request was parsed: an upstream connect follows.
        assert!(
            outputs(&mut core)
                .iter()
                .any(|o| matches!(o, Output::Connect { .. }))
        );
    }

    #[test]
    fn read_with_zero_is_end_of_stream() {
        let (mut core, client) = core_with_client();
        let got = core.read_with(Time::ZERO, client, 1024, |_| Ok(0));
        assert!(matches!(got, Ok(ReadOutcome::Closed)));
        // An idle client that closed is closed in turn.
        assert!(
            outputs(&mut core)
                .iter()
                .any(|o| matches!(o, Output::Close { conn, .. } if *conn == client))
        );
    }

    #[test]
    fn read_with_would_block_tells_the_core_nothing() {
        let (mut core, client) = core_with_client();
        let got = core.read_with(Time::ZERO, client, 1024, |buf| {
            // A reader that appended and then reported WouldBlock: dropped, loan closed.
            buf.extend_from_slice(b"junk");
            Err(io::ErrorKind::WouldBlock.into())
        });
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(core.is_open(client));
        assert!(outputs(&mut core).is_empty());
        // The next read starts from a clean buffer: the junk never reaches the parser.
        let got = core.read_with(Time::ZERO, client, 1024, |buf| {
            buf.extend_from_slice(REQUEST);
            Ok(REQUEST.len())
        });
        assert!(matches!(got, Ok(ReadOutcome::Data(_))));
        assert!(
            outputs(&mut core)
                .iter()
                .any(|o| matches!(o, Output::Connect { .. }))
        );
    }

    #[test]
    fn read_with_miscount_fails_the_connection() {
        let (mut core, client) = core_with_client();
        let got = core.read_with(Time::ZERO, client, 1024, |buf| {
            buf.extend_from_slice(REQUEST);
            Ok(3)
        });
        assert!(matches!(got, Ok(ReadOutcome::Failed(_))));
        assert!(!core.is_open(client));
        let got = core.read_with(Time::ZERO, client, 1024, |_| Ok(1));
        assert!(matches!(got, Ok(ReadOutcome::Unknown)));
    }

    #[test]
    fn read_with_want_zero_never_reads_as_end_of_stream() {
        let (mut core, client) = core_with_client();
        // A reader that, like `recv`, fills only the room it is given.
        let got = core.read_with(Time::ZERO, client, 0, |buf| {
            let n = REQUEST.len().min(buf.capacity() - buf.len());
            buf.extend_from_slice(&REQUEST[..n]);
            Ok(n)
        });
        assert!(matches!(got, Ok(ReadOutcome::Data(_))), "{got:?}");
        assert!(core.is_open(client));
    }

    #[test]
    fn read_with_error_fails_the_connection() {
        let (mut core, client) = core_with_client();
        let got = core.read_with(Time::ZERO, client, 1024, |_| {
            Err(io::ErrorKind::ConnectionReset.into())
        });
        assert!(
            matches!(got, Ok(ReadOutcome::Failed(e)) if e.kind() == io::ErrorKind::ConnectionReset)
        );
        assert!(!core.is_open(client));
    }

    /// A client whose request was refused (400): the core queues a response for it.
    fn core_with_queued_response() -> (Core, ConnId, usize) {
        let (mut core, client) = core_with_client();
        core.handle(
            Time::ZERO,
            Input::Received {
                conn: client,
                data: b"BAD\r\n\r\n",
            },
        );
        outputs(&mut core);
        let queued = core.pending_len(client);
        assert!(queued > 0);
        (core, client, queued)
    }

    #[test]
    fn write_with_short_write_leaves_the_rest() {
        let (mut core, client, queued) = core_with_queued_response();
        let mut sink = Vec::new();
        let got = core.write_with(Time::ZERO, client, |iov| {
            sink.extend_from_slice(&iov[0][..5]);
            Ok(5)
        });
        match got {
            Ok(WriteOutcome::Wrote { n, offered, left }) => {
                assert_eq!((n, offered, left), (5, queued, queued - 5));
            }
            other => panic!("{other:?}"),
        }
        let got = core.write_with(Time::ZERO, client, |iov| {
            iov.iter().for_each(|s| sink.extend_from_slice(s));
            Ok(iov.iter().map(|s| s.len()).sum())
        });
        assert!(matches!(got, Ok(WriteOutcome::Wrote { left: 0, .. })));
        assert!(sink.starts_with(b"HTTP/1.1 400 "));
        assert_eq!(sink.len(), queued);
    }

    #[test]
    fn write_with_errors() {
        let (mut core, client, _) = core_with_queued_response();
        let got = core.write_with(
            Time::ZERO,
            client,
            |_| Err(io::ErrorKind::WouldBlock.into()),
        );
        assert!(got.is_err());
        assert!(core.is_open(client));
        let got = core.write_with(Time::ZERO, client, |_| Ok(0));
        assert!(matches!(got, Ok(WriteOutcome::Failed(e)) if e.kind() == io::ErrorKind::WriteZero));
        assert!(!core.is_open(client));
        let got = core.write_with(Time::ZERO, client, |_| Ok(1));
        assert!(matches!(got, Ok(WriteOutcome::Unknown)));
    }
}
