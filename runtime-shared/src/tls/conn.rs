//! One TLS connection between a socket and the core: rustls's own sans-IO connection
//! (`ServerConnection` / `ClientConnection`) in the middle, so the core keeps reading and
//! writing plaintext through [`Core::read_with`] / [`Core::write_with`] and never sees a
//! socket, a record or a random number. Both runtimes drive it the same way as the plain loops
//! of [`crate::io`]: [`TlsConn::read`] in place of [`Reader::read`](crate::io::Reader::read),
//! [`TlsConn::flush`] in place of [`flush`](crate::io::flush).

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use rustls::ServerConnection;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, HandshakeKind, ServerConfig};
use socket2::SockRef;
use upkeep_core::{ConnId, Core, Input, MAX_IOV, ReadOutcome, Time, WriteOutcome};

use super::Failure;
use crate::io::{Flushed, READ_SIZE_BULK, ReadStep};

/// nginx's answer to plain HTTP on an HTTPS port, in clear text, before the connection closes.
pub const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 49\r\nConnection: close\r\n\r\n\
The plain HTTP request was sent to an HTTPS port\n";

/// How an upstream handshake went ([`TlsConn::handshake`]).
#[derive(Debug)]
pub enum Handshake {
    /// Complete: report [`Input::Connected`] now.
    Done,
    /// Waiting for the peer (readability) or for room to write (writability).
    Pending,
    /// Failed; report [`Failure::input`] to the core.
    Failed(Failure),
}

/// Where the first bytes from a client say it speaks TLS or plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Nothing read yet (a TLS listener's connection).
    Unknown,
    /// A TLS record came first (or this is an upstream connection).
    Tls,
    /// An ASCII letter came first: an HTTP request on a TLS port.
    PlainHttp,
}

/// The socket as `io::Read` / `io::Write` for rustls's `read_tls` / `write_tls`, noting the
/// first byte a client sends.
struct SockIo<'a> {
    sock: &'a SockRef<'a>,
    probe: &'a mut Probe,
}

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&**self.sock).read(buf)?;
        if *self.probe == Probe::Unknown && n > 0 {
            // TLS records start with a content type (22 = handshake); HTTP with a method.
            *self.probe = if buf[0].is_ascii_uppercase() {
                Probe::PlainHttp
            } else {
                Probe::Tls
            };
        }
        Ok(n)
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // MSG_NOSIGNAL, as in the plain write loop: a vanished peer is an EPIPE, not a signal.
        self.sock.send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection's state beside its socket.
#[derive(Debug)]
pub struct TlsConn {
    conn: Connection,
    probe: Probe,
    /// Decrypted bytes rustls holds that the core has not taken yet.
    plaintext: usize,
    /// The peer sent close_notify: after the plaintext, the stream ends.
    peer_closed: bool,
    /// The core asked for a half-close: close_notify is queued, and the socket's write side
    /// shuts once it (and everything before it) is written.
    shutdown: bool,
    /// The socket's write side is shut.
    shut: bool,
    /// Why the connection failed, for the runtime to log and count ([`TlsConn::take_failure`]).
    failure: Option<Failure>,
    /// The core's bytes rustls encrypted whose records are not all on the socket yet: the core
    /// learns they are written only once they are ([`TlsConn::flush`]), so it never closes a
    /// connection with records still in rustls, and its queue and send timeout keep covering
    /// them.
    sealed: usize,
}

impl TlsConn {
    /// The server side of an accepted connection on a TLS listener.
    pub fn server(config: Arc<ServerConfig>) -> io::Result<TlsConn> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsConn::new(conn.into(), Probe::Unknown))
    }

    /// The client side of a connection to a TLS upstream server named `name` (SNI and
    /// verification).
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> io::Result<TlsConn> {
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(TlsConn::new(conn.into(), Probe::Tls))
    }

    fn new(conn: Connection, probe: Probe) -> TlsConn {
        TlsConn {
            conn,
            probe,
            plaintext: 0,
            peer_closed: false,
            shutdown: false,
            shut: false,
            failure: None,
            sealed: 0,
        }
    }

    /// Whether records wait to be written (an async runtime then awaits writability rather
    /// than readability while handshaking).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether rustls holds something for the core that no socket readiness will announce:
    /// decrypted bytes not taken yet (reading stopped for backpressure), or the peer's
    /// close_notify. An async runtime reads again before awaiting readability.
    pub fn has_buffered(&self) -> bool {
        self.plaintext > 0 || self.peer_closed
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the completed handshake resumed a session (`None` while handshaking).
    pub fn resumed(&self) -> Option<bool> {
        self.conn
            .handshake_kind()
            .filter(|_| !self.conn.is_handshaking())
            .map(|k| k == HandshakeKind::Resumed)
    }

    /// The SNI name a client asked for (server side).
    pub fn sni(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether this is the server side (a TLS listener's connection).
    pub fn is_server(&self) -> bool {
        matches!(self.conn, Connection::Server(_))
    }

    /// Why the connection failed, once (for the runtime's log line and counters).
    pub fn take_failure(&mut self) -> Option<Failure> {
        self.failure.take()
    }

    fn io<'a>(sock: &'a SockRef<'a>, probe: &'a mut Probe) -> SockIo<'a> {
        SockIo { sock, probe }
    }

    /// Reads records from the socket once and processes them. `Ok(true)`: something arrived;
    /// `Ok(false)`: end of stream; `Err`: `WouldBlock` / `Interrupted`, or a failure (recorded
    /// in `self.failure`, with the kind `Other`).
    fn receive(&mut self, sock: &SockRef<'_>) -> io::Result<bool> {
        let n = self.conn.read_tls(&mut Self::io(sock, &mut self.probe))?;
        if self.probe == Probe::PlainHttp {
            self.failure = Some(Failure::PlainHttp);
            return Err(io::Error::other("plain HTTP on a TLS port"));
        }
        if n == 0 {
            return Ok(false);
        }
        match self.conn.process_new_packets() {
            Ok(state) => {
                self.plaintext = state.plaintext_bytes_to_read();
                self.peer_closed = state.peer_has_closed();
                Ok(true)
            }
            Err(e) => {
                // rustls queued an alert telling the peer why: send it if the socket takes it.
                let _ = self.send_records(sock);
                let failure = Failure::from_rustls(&e);
                self.failure = Some(failure);
                Err(io::Error::other(e))
            }
        }
    }

    /// Writes queued records until none is left (`Ok`) or the socket is full (`WouldBlock`).
    fn send_records(&mut self, sock: &SockRef<'_>) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut Self::io(sock, &mut self.probe)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drives an upstream connection's handshake after the TCP connect finished: writes what
    /// is queued, reads what arrived. Call on every readiness event until it is not `Pending`.
    pub fn handshake(&mut self, sock: SockRef<'_>) -> Handshake {
        let sock = &sock;
        loop {
            match self.send_records(sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Handshake::Failed(Failure::Io(e.kind())),
            }
            if !self.conn.is_handshaking() {
                return Handshake::Done;
            }
            match self.receive(sock) {
                Ok(true) => {}
                Ok(false) => return Handshake::Failed(Failure::Closed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Handshake::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Handshake::Failed(self.failure.take().unwrap_or(Failure::Io(e.kind())));
                }
            }
        }
    }

    /// Reads once: hands decrypted bytes rustls already holds to the core, or else reads
    /// records from the socket (answering handshake messages as they come). The core has been
    /// told what happened; drain its outputs before the next call.
    ///
    /// A client that sends plain HTTP to a TLS port gets [`PLAIN_HTTP_RESPONSE`] in clear
    /// text and the connection fails (nginx's courtesy). Anything rustls rejects (garbage, a
    /// truncated or forged record) fails the connection after the alert is sent: the core
    /// closes it; [`TlsConn::take_failure`] says why.
    pub fn read(
        &mut self,
        core: &mut Core,
        now: Time,
        conn: ConnId,
        sock: SockRef<'_>,
    ) -> ReadStep {
        if self.plaintext > 0 {
            return self.deliver(core, now, conn);
        }
        let sock = &sock;
        if self.peer_closed {
            core.handle(now, Input::ReadClosed { conn });
            return ReadStep::Done;
        }
        match self.receive(sock) {
            Ok(true) => {
                // Handshake answers (ServerHello..., a KeyUpdate) go out now; what does not fit
                // is written on writability by `flush`.
                if let Err(e) = self.send_records(sock)
                    && e.kind() != io::ErrorKind::WouldBlock
                {
                    core.handle(now, Input::Errored { conn });
                    return ReadStep::Done;
                }
                ReadStep::Again
            }
            Ok(false) => {
                // A TCP FIN without close_notify: a truncation attack is only a concern for
                // close-delimited bodies, which the core already treats as unverifiable.
                core.handle(now, Input::ReadClosed { conn });
                ReadStep::Done
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadStep::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadStep::Again,
            Err(e) => {
                if self.failure == Some(Failure::PlainHttp) {
                    // Best effort, in clear: the client's TLS layer is not even there.
                    let _ = sock.send_with_flags(PLAIN_HTTP_RESPONSE, libc::MSG_NOSIGNAL);
                    let _ = sock.shutdown(std::net::Shutdown::Write);
                } else if self.failure.is_none() {
                    self.failure = Some(Failure::Io(e.kind()));
                }
                // A server refusing our client certificate says so in TLS 1.3 only after our
                // side of the handshake completed: the core hears it as what it is (see
                // `Failure::input`), not as the server failing.
                let input = match (&self.conn, self.failure) {
                    (Connection::Client(_), Some(why)) if why.is_certificate() => why.input(conn),
                    _ => Input::Errored { conn },
                };
                core.handle(now, input);
                ReadStep::Done
            }
        }
    }

    /// Moves up to one bulk read's worth of decrypted bytes into the core's read buffer.
    fn deliver(&mut self, core: &mut Core, now: Time, conn: ConnId) -> ReadStep {
        let want = self.plaintext.min(READ_SIZE_BULK);
        let reader = &mut self.conn;
        // Room for one byte more than is taken: the core reads a read that fills its room as
        // one that may have left bytes in the socket, which says nothing here (decrypted bytes
        // still held are delivered next, before this pass's writes; a record still on its way
        // is the race no HTTP/1.1 proxy can see).
        let got = core.read_with(now, conn, want + 1, |buf| {
            let start = buf.len();
            // Zeroing `want` bytes costs less than the decryption that produced them, and
            // keeps this free of `unsafe`.
            buf.resize(start + want, 0);
            match reader.reader().read(&mut buf[start..]) {
                Ok(n) => {
                    buf.truncate(start + n);
                    Ok(n)
                }
                Err(e) => {
                    buf.truncate(start);
                    Err(e)
                }
            }
        });
        match got {
            Ok(ReadOutcome::Data(n)) => {
                self.plaintext -= n;
                ReadStep::Again
            }
            // rustls reports close_notify as a read of 0 once the plaintext is drained.
            Ok(ReadOutcome::Closed | ReadOutcome::Failed(_) | ReadOutcome::Unknown) => {
                ReadStep::Done
            }
            Err(_) => {
                self.plaintext = 0;
                ReadStep::Again
            }
        }
    }

    /// Writes what the core queued for `conn`, encrypted, until the queue is empty or the
    /// socket is full. Records already encrypted go out first, so rustls holds at most one
    /// batch of the core's bytes (the core's own queue stays the backpressure signal), and a
    /// batch counts as written for the core only once all its records are on the socket: the
    /// core closes a connection once its queue is empty, and records still in rustls would then
    /// be lost (the tail of a `Connection: close` response to a slow reader).
    pub fn flush(
        &mut self,
        core: &mut Core,
        now: Time,
        conn: ConnId,
        sock: SockRef<'_>,
    ) -> Flushed {
        let sock = &sock;
        loop {
            match self.send_records(sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(e) => {
                    self.failure.get_or_insert(Failure::Io(e.kind()));
                    core.handle(now, Input::Errored { conn });
                    return Flushed::Done;
                }
            }
            if let Some(done) = self.commit(core, now, conn) {
                return done;
            }
            if self.shutdown {
                if !self.shut {
                    self.shut = true;
                    let _ = sock.shutdown(std::net::Shutdown::Write);
                }
                return Flushed::Empty;
            }
            let conn_tls = &mut self.conn;
            if conn_tls.is_handshaking() {
                // No records yet (a server's early answer, e.g. a 408 to a stalled
                // ClientHello): rustls keeps the plaintext until the handshake completes, and
                // the core may consider it written — it cannot go out sooner anyway.
                let result =
                    core.write_with(now, conn, |iov| conn_tls.writer().write_vectored(iov));
                match result {
                    Ok(WriteOutcome::Wrote { n: 0, .. }) => return Flushed::Empty,
                    Ok(WriteOutcome::Wrote { .. }) => continue,
                    Ok(WriteOutcome::Failed(_) | WriteOutcome::Unknown) => return Flushed::Done,
                    Err(_) => return Flushed::Blocked,
                }
            }
            // Encrypt the next batch without committing it (see `sealed`).
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for piece in core.pending(conn).take(MAX_IOV) {
                iov[k] = IoSlice::new(piece);
                k += 1;
            }
            if k == 0 {
                return if core.is_open(conn) {
                    Flushed::Empty
                } else {
                    Flushed::Done
                };
            }
            match conn_tls.writer().write_vectored(&iov[..k]) {
                // rustls's buffer is empty here (every record went out), so it takes some.
                Ok(0) => return Flushed::Blocked,
                Ok(n) => self.sealed = n,
                Err(e) => {
                    self.failure.get_or_insert(Failure::Io(e.kind()));
                    core.handle(now, Input::Errored { conn });
                    return Flushed::Done;
                }
            }
        }
    }

    /// Every record is on the socket: the bytes they carried are written, as far as the core
    /// knows. `Some` when the connection is gone meanwhile.
    fn commit(&mut self, core: &mut Core, now: Time, conn: ConnId) -> Option<Flushed> {
        if self.sealed == 0 {
            return None;
        }
        let n = std::mem::take(&mut self.sealed);
        match core.write_with(now, conn, |_| Ok(n)) {
            Ok(WriteOutcome::Wrote { .. }) => None,
            Ok(WriteOutcome::Failed(_) | WriteOutcome::Unknown) => Some(Flushed::Done),
            Err(_) => Some(Flushed::Blocked),
        }
    }

    /// Before a reload hands the connection to another core: the bytes rustls encrypted count
    /// as written (their records move along with this session and go out from there), so the
    /// core does not hand them over a second time as unsent.
    pub fn settle(&mut self, core: &mut Core, now: Time, conn: ConnId) {
        let _ = self.commit(core, now, conn);
    }

    /// The core's [`Output::Shutdown`](upkeep_core::Output::Shutdown): queues close_notify;
    /// the next [`TlsConn::flush`] writes it and then shuts the socket's write side.
    pub fn shutdown(&mut self) {
        if !self.shutdown {
            self.shutdown = true;
            self.conn.send_close_notify();
        }
    }

    /// Before the socket closes: close_notify (unless `reset`) and whatever records fit into
    /// the socket now. Best effort, never blocking: the core only closes once its own queue is
    /// written, so at most the last records of a socket that is full anyway are lost.
    pub fn close(&mut self, sock: SockRef<'_>, reset: bool) {
        let sock = &sock;
        if !reset && !self.shutdown && !self.conn.is_handshaking() {
            self.conn.send_close_notify();
        }
        if !reset {
            let _ = self.send_records(sock);
        }
    }
}
