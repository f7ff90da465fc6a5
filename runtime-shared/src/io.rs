//! The read and write loops, the same on both runtimes, on top of the core's
//! [`Core::read_with`] / [`Core::write_with`]: reads land in place in the core's buffer
//! ([`recv_into`]), a connection reads until a short read and writes until a short write.

use std::io;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use rustix::net::{RecvFlags, SendFlags};
use socket2::SockRef;
use upkeep_core::{ConnId, Core, ReadOutcome, Time, WriteOutcome};

/// Free space asked of a connection's read buffer before each read (the read takes whatever
/// spare capacity the buffer has, at least this). The core's own chunk size: a connection that
/// only ever carries small messages keeps a small buffer.
pub const READ_SIZE: usize = 16 * 1024;

/// The same once a read has filled the space it was given: large bodies then come in 64 KiB
/// reads (one recv per 64 KiB response instead of four; measured with strace -c).
pub const READ_SIZE_BULK: usize = 64 * 1024;

/// Receives from `sock` into the spare capacity of `buf` (the core's read buffer, lent by
/// [`Core::read_with`]) and appends what arrived, at most `max` bytes (less than the spare
/// capacity when a head read must leave a body behind it in the socket: [`Core::read_cap`]):
/// no staging buffer, no copy.
pub fn recv_into(sock: SockRef<'_>, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    recv_into_with(sock, buf, max, RecvFlags::empty())
}

/// [`recv_into`] with `flags` (`MSG_DONTWAIT` for [`settle`]).
#[allow(unsafe_code)]
fn recv_into_with(
    sock: SockRef<'_>,
    buf: &mut BytesMut,
    max: usize,
    flags: RecvFlags,
) -> io::Result<usize> {
    let len = buf.len();
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    // Never an empty buffer: recv(2) would return 0, which reads as the end of the stream.
    debug_assert!(max > 0, "a read of nothing");
    let take = max.max(1).min(spare.len());
    // rustix makes the system call itself: libc's `recv` is a thread-cancellation point,
    // whose enable/disable bracket cost ~1 % of the epoll worker's CPU on 100-byte requests.
    let ((read, _), _) = rustix::net::recv(&*sock, &mut spare[..take], flags)?;
    let n = read.len();
    // SAFETY: recv(2) wrote (initialised) the first `n` bytes of the spare capacity (rustix
    // hands back that initialised prefix of the slice it was given), so `len + n <= capacity`.
    // Measured reason for not reading into an initialised staging buffer: the copy out of it
    // was ~10 % of the proxy's CPU on 64 KiB responses (perf, benches/load).
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// One non-blocking read of upstream connection `conn`, which the core holds back after its
/// response until a read finds the socket empty ([`Core::is_settling`]), for a runtime whose
/// own reads complete later (io_uring): empty, it is pooled; a byte or an end of stream
/// closes it. (The read loops here settle it on their own: they read again after a read that
/// filled its room, and after a splice.)
pub fn settle(core: &mut Core, now: Time, conn: ConnId, sock: SockRef<'_>) {
    let _ = core.read_with(now, conn, 1, |buf| {
        recv_into_with(sock, buf, usize::MAX, RecvFlags::DONTWAIT)
    });
}

/// What to do after one read ([`Reader::read`]). The core has been told what happened: drain
/// its outputs before the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStep {
    /// Read again (the read filled its space, so more may be waiting; or it was interrupted).
    Again,
    /// The socket is drained (a short read, or nothing there): wait for readability.
    Wait,
    /// Reading is over for this connection: end of stream, a failure (the core closes it), or
    /// a connection the core no longer knows.
    Done,
}

/// One connection's reading: how much to read at a time, and whether the peer's FIN was
/// announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    size: usize,
    hup: bool,
}

impl Default for Reader {
    fn default() -> Reader {
        Reader {
            size: READ_SIZE,
            hup: false,
        }
    }
}

impl Reader {
    /// A readiness event announced the peer's FIN (or an error): from now on a short read does
    /// not mean the socket is drained — the end of stream may already sit behind the data with
    /// no readiness edge to come — so read until it says so.
    pub fn hang_up(&mut self) {
        self.hup = true;
    }

    /// Reads once from `sock` into `conn`'s buffer in the core, growing the read size from
    /// [`READ_SIZE`] to [`READ_SIZE_BULK`] once a read fills its space; a read that takes a
    /// response head whose body may be spliced stops at [`Core::read_cap`] bytes.
    ///
    /// A short read took everything the socket held, so the read that would only say
    /// `WouldBlock` is skipped ([`ReadStep::Wait`] at once): one syscall less per message. That
    /// relies on a new readiness edge for every later arrival, which Linux raises (mio's edge
    /// triggering) and a level-triggered re-arm (async-io) sees anyway; not after
    /// [`Reader::hang_up`].
    pub fn read(
        &mut self,
        core: &mut Core,
        now: Time,
        conn: ConnId,
        sock: SockRef<'_>,
    ) -> ReadStep {
        let mut spare = 0;
        // A response head comes next and its body may be spliced: read one head's worth.
        let cap = core.read_cap(conn).unwrap_or(usize::MAX);
        let result = core.read_with(now, conn, self.size, |buf| {
            spare = (buf.capacity() - buf.len()).min(cap);
            recv_into(sock, buf, cap)
        });
        match result {
            Ok(ReadOutcome::Data(n)) => {
                if n == spare {
                    self.size = READ_SIZE_BULK;
                    ReadStep::Again
                } else if self.hup {
                    ReadStep::Again
                } else {
                    ReadStep::Wait
                }
            }
            Ok(ReadOutcome::Closed | ReadOutcome::Failed(_) | ReadOutcome::Unknown) => {
                ReadStep::Done
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadStep::Again,
            Err(_) => ReadStep::Wait,
        }
    }
}

/// Whether a write error says the peer is gone: it reset the connection, or closed it and our
/// bytes drew a reset. What it sent before may still be unread in the socket.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// In a write, holds back an error that says the peer is gone (the core is told nothing yet:
/// `WouldBlock`) and notes it in `gone`, for [`read_then_fail`]. Any other error goes through.
pub fn withhold_gone(e: io::Error, gone: &mut bool) -> io::Error {
    if peer_gone(&e) {
        *gone = true;
        io::ErrorKind::WouldBlock.into()
    } else {
        e
    }
}

/// Reads at most this many times before a write's failure is reported ([`read_then_fail`]).
const READS_BEFORE_FAILING: usize = 16;

/// A write to `conn` found its peer gone ([`withhold_gone`]). On an upstream connection, what
/// the backend answered before it went may still be unread in the socket — an early `413` from a backend that closed without
/// reading the upload, which makes its kernel reset the connection: the core reads it first
/// (Linux hands out bytes that arrived before a reset), and then hears of the failure unless
/// the answer settled the exchange. Without this the answer was lost to a 502 about one time
/// in three (audit; nginx loses it too, HAProxy reads it). A client connection fails at once.
pub fn read_then_fail(core: &mut Core, now: Time, conn: ConnId, sock: &SockRef<'_>) {
    // Looked up here, on the failure, not on every write.
    let reads = match core.upstream_server(conn) {
        Some(_) => READS_BEFORE_FAILING,
        None => 0,
    };
    for _ in 0..reads {
        let got = core.read_with(now, conn, READ_SIZE, |buf| {
            recv_into_with(SockRef::from(&**sock), buf, usize::MAX, RecvFlags::DONTWAIT)
        });
        match got {
            Ok(ReadOutcome::Data(_)) => {}
            // The core heard the end (an EOF it may act on only once the client has taken
            // what came before: `Errored` now would cut a complete answer) or the failure.
            Ok(ReadOutcome::Closed | ReadOutcome::Failed(_) | ReadOutcome::Unknown) => return,
            Err(_) => break,
        }
    }
    // Nothing more to read yet, or more than a bounded read takes: the write failed.
    if core.is_open(conn) {
        core.handle(now, upkeep_core::Input::Errored { conn });
    }
}

/// How a [`flush`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued went out (or nothing was queued).
    Empty,
    /// A write came up short or would block: the socket's send buffer is full; wait for
    /// writability (the next attempt now would only say `WouldBlock`).
    Blocked,
    /// The connection failed (the core closes it) or the core no longer knows it.
    Done,
}

/// Writes what the core has queued for `conn` — one [`send`] per [`Core::write_with`] — until
/// the queue is empty or a write comes up short. The core has been told everything; drain its
/// outputs afterwards.
pub fn flush(core: &mut Core, now: Time, conn: ConnId, sock: SockRef<'_>) -> Flushed {
    loop {
        // MSG_NOSIGNAL: a peer that is gone is an EPIPE for the core to hear about, not a
        // SIGPIPE for a process that embeds the library and never ignored it.
        let mut gone = false;
        let result = core.write_with(now, conn, |iov| {
            send(&sock, iov).map_err(|e| withhold_gone(e, &mut gone))
        });
        if gone {
            read_then_fail(core, now, conn, &sock);
            return Flushed::Done;
        }
        match result {
            Ok(WriteOutcome::Wrote { n, offered, left }) => {
                // (Nothing offered with bytes left: they are piped, for `splice::flush`.)
                if n < offered || offered == 0 && left > 0 {
                    return Flushed::Blocked;
                }
                if left == 0 {
                    return Flushed::Empty;
                }
                // More queued than one call offers: go on.
            }
            Ok(WriteOutcome::Failed(_) | WriteOutcome::Unknown) => return Flushed::Done,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Flushed::Blocked,
        }
    }
}

/// Slices offered together up to this many bytes are gathered into one buffer by [`send`]: a
/// small response's head and body.
pub const GATHER_MAX: usize = 2048;

/// Sends the slices the core offers (`MSG_NOSIGNAL`) in one syscall: `send` for one slice, or
/// for several that together fit [`GATHER_MAX`] (copied into one stack buffer first), else
/// `sendmsg`. Why not always `sendmsg`: Linux walks a single user buffer on a fast path, while
/// `sendmsg` also copies in the message header and the iovec array and walks the segments. For
/// a 142-byte head and a 100-byte body the gathered `send` took 0.83× and 0.99× of `sendmsg`'s
/// time per call in two runs of `cargo bench -p upkeep-benches --bench send` (and 0.94–0.97×
/// of its CPU in a plain loop of 300,000 calls); perf had shown upkeep's `_copy_from_iter` at
/// ~4× HAProxy's samples under the same load (HAProxy sends one buffer).
///
/// One buffer goes through rustix, which makes the system call itself (libc's `send` is a
/// thread-cancellation point: see [`recv_into`]).
pub fn send(sock: &SockRef<'_>, iov: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let send_one = |buf: &[u8]| Ok(rustix::net::send(&**sock, buf, SendFlags::NOSIGNAL)?);
    match iov {
        [one] => send_one(one),
        _ if iov.iter().map(|s| s.len()).sum::<usize>() <= GATHER_MAX => {
            let mut buf = [0u8; GATHER_MAX];
            let mut at = 0;
            for s in iov {
                buf[at..at + s.len()].copy_from_slice(s);
                at += s.len();
            }
            send_one(&buf[..at])
        }
        _ => sock.send_vectored_with_flags(iov, libc::MSG_NOSIGNAL),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixStream;
    use upkeep_core::{Address, Config, ListenerId, Output};

    /// A core for at most `clients` client connections, one of them open (also for the accept
    /// policy's tests).
    pub(crate) fn core_with_clients(clients: usize) -> (Core, ConnId) {
        let local = |port| Address::Tcp((Ipv4Addr::LOCALHOST, port).into());
        let mut config = Config::simple(local(8080), vec![local(9001)]);
        config.limits.max_client_connections = clients;
        let mut core = Core::new(config, 0).unwrap();
        let client = core.accept(Time::ZERO, ListenerId(0), None).unwrap();
        (core, client)
    }

    fn core_with_client() -> (Core, ConnId) {
        core_with_clients(16)
    }

    #[test]
    fn send_takes_one_slice_gathered_slices_and_many_in_order() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let sock = SockRef::from(&ours);
        let big = vec![b'b'; GATHER_MAX];
        let cases: [&[&[u8]]; 3] = [&[b"one"], &[b"head ", b"and body"], &[b"head ", &big]];
        for slices in cases {
            let iov: Vec<io::IoSlice<'_>> = slices.iter().map(|s| io::IoSlice::new(s)).collect();
            let want: Vec<u8> = slices.concat();
            assert_eq!(send(&sock, &iov).unwrap(), want.len());
            let mut got = vec![0; want.len()];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn reads_land_in_the_core_and_a_short_read_waits() {
        let (mut core, client) = core_with_client();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut reader = Reader::default();
        let sock = SockRef::from(&ours);
        assert_eq!(
            reader.read(&mut core, Time::ZERO, client, sock),
            ReadStep::Wait
        );
        peer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        assert_eq!(
            reader.read(&mut core, Time::ZERO, client, SockRef::from(&ours)),
            ReadStep::Wait,
            "a short read drained the socket"
        );
        let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
        assert!(
            outputs.iter().any(|o| matches!(o, Output::Connect { .. })),
            "the request reached the core: {outputs:?}"
        );
        reader.hang_up();
        drop(peer);
        assert_eq!(
            reader.read(&mut core, Time::ZERO, client, SockRef::from(&ours)),
            ReadStep::Done,
            "end of stream"
        );
    }

    #[test]
    fn a_full_read_grows_the_read_size() {
        let (mut core, client) = core_with_client();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        // A request head larger than one read: the first read fills its space.
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        head.resize(READ_SIZE * 3, b'a');
        peer.write_all(&head).unwrap();
        let mut reader = Reader::default();
        assert_eq!(
            reader.read(&mut core, Time::ZERO, client, SockRef::from(&ours)),
            ReadStep::Again
        );
        assert_eq!(reader.size, READ_SIZE_BULK);
    }

    #[test]
    fn flush_writes_everything_queued_then_reports_empty() {
        let (mut core, client) = core_with_client();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        // An unparsable request: the core queues a 400 for the client.
        core.handle(
            Time::ZERO,
            upkeep_core::Input::Received {
                conn: client,
                data: b"\x01\x02 nonsense\r\n\r\n",
            },
        );
        let queued = core.pending_len(client);
        assert!(queued > 0);
        assert_eq!(
            flush(&mut core, Time::ZERO, client, SockRef::from(&ours)),
            Flushed::Empty
        );
        assert_eq!(core.pending_len(client), 0);
        let mut got = vec![0; queued];
        peer.read_exact(&mut got).unwrap();
        assert!(
            got.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
}
