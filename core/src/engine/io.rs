//! What passes between a runtime and the core: the network events it reports ([`Input`]) and
//! the actions it performs ([`Output`]).

#[cfg(doc)]
use crate::Core;
use crate::{ConnId, Handed, ServerId};

/// What the runtime must do. Drain [`Core::poll_output`] after every call that changes state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a connection to `server` ([`Core::server_address`]) for `conn`; report
    /// [`Input::Connected`] or [`Input::ConnectFailed`].
    Connect {
        /// The new upstream connection.
        conn: ConnId,
        /// Where to.
        server: ServerId,
    },
    /// `conn` has bytes to write ([`Core::pending`]); report progress with [`Input::Written`].
    /// Emitted once per non-empty stretch of the queue: keep writing on writability until the
    /// queue is empty.
    Write {
        /// The connection.
        conn: ConnId,
    },
    /// Start (`true`) or stop (`false`) reading from `conn`: backpressure.
    Interest {
        /// The connection.
        conn: ConnId,
        /// Whether to read.
        read: bool,
    },
    /// Half-close `conn`: shut down its write side (`shutdown(SHUT_WR)`) now, and keep reading
    /// and reporting what arrives.
    ///
    /// The contract: it comes only once everything queued for `conn` has been reported
    /// [`Input::Written`] ([`Core::pending_len`] is 0), so the runtime needs no flag of its own
    /// to shut down "after the flush"; the core queues nothing more for `conn` afterwards and
    /// ends it with [`Output::Close`] when the peer closes or a deadline passes (lingering,
    /// RFC 9112 §9.6). Emitted at most once per connection.
    Shutdown {
        /// The connection.
        conn: ConnId,
    },
    /// Move the idle pooled upstream connection `conn` (socket and TLS session) to worker
    /// `to_worker` of the same process and generation, whose core takes it in with
    /// [`Core::adopt_handed`]; the id is dead here from now on, and the socket must not be
    /// closed — its `max_conns` slot stays counted while it moves. Send it first, then the
    /// core wakes that worker (once the outputs are drained). If that worker is gone, close
    /// the socket and call [`Core::hand_over_failed`].
    /// Only emitted by a core that shares its ledger with other workers
    /// ([`Core::with_shared`]).
    HandOver {
        /// The connection.
        conn: ConnId,
        /// The worker index (as given to [`Core::with_shared`]) to move it to.
        to_worker: usize,
        /// What the receiving core needs to pool it.
        handed: Handed,
    },
    /// Close `conn` and forget it; the id is dead from now on.
    Close {
        /// The connection.
        conn: ConnId,
        /// Abortive close (RST) rather than FIN.
        reset: bool,
    },
}

/// What happened on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// Bytes arrived on `conn`, copied in. A runtime reading a socket uses [`Core::read_with`]
    /// instead (no copy, and it classifies EOF and errors); this suits tests and in-memory
    /// peers.
    Received {
        /// The connection.
        conn: ConnId,
        /// The bytes (copied into the connection's buffer).
        data: &'a [u8],
    },
    /// As [`Input::Received`], from a read that filled all the room it had: the socket may hold
    /// more behind these bytes. A response they complete is pooled only after a read finds the
    /// socket empty ([`Input::Drained`]), so that bytes a backend sent beyond its response never
    /// answer the next request. ([`Core::read_with`] tells the two apart itself.)
    ReceivedFull {
        /// The connection.
        conn: ConnId,
        /// The bytes (copied into the connection's buffer).
        data: &'a [u8],
    },
    /// A read of `conn` found its socket empty (`WouldBlock`; [`Core::read_with`] sends it):
    /// an upstream connection whose response ended on a read that filled its room
    /// ([`Input::ReceivedFull`]) or on a splice joins the pool now.
    Drained {
        /// The connection.
        conn: ConnId,
    },
    /// The peer closed its write side (EOF).
    ReadClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection failed (reset, broken pipe...): the core closes it.
    Errored {
        /// The connection.
        conn: ConnId,
    },
    /// `n` bytes were appended to the connection's read buffer in place (the commit step of
    /// [`Core::read_with`], which sends it; ignored unless the buffer was lent out and grew by
    /// exactly `n`). The same as [`Input::Received`] without its copy.
    #[doc(hidden)]
    Appended {
        /// The connection.
        conn: ConnId,
        /// How many bytes were appended (0 is ignored, like an empty `Received`).
        n: usize,
    },
    /// `n` body bytes of `conn` went straight into the runtime's pipe toward the connection
    /// [`Core::splice_source`] named, at most its `max`; they join that connection's queue
    /// ahead of everything else ([`Core::piped`]), to be written from the pipe and reported
    /// [`Input::Written`]. The end of stream and failures of a splice are reported as for a
    /// read ([`Input::ReadClosed`], [`Input::Errored`]).
    Spliced {
        /// The connection the bytes came from.
        conn: ConnId,
        /// How many.
        n: usize,
    },
    /// `n` bytes of [`Core::pending`] (piped ones first, [`Core::piped`]) were written.
    Written {
        /// The connection.
        conn: ConnId,
        /// How many.
        n: usize,
    },
    /// An upstream connection requested by [`Output::Connect`] is established.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// An upstream connection could not be established.
    ConnectFailed {
        /// The connection.
        conn: ConnId,
    },
    /// The runtime could not even attempt an upstream connection for a reason of its own — out
    /// of file descriptors, ephemeral ports or memory. Unlike [`Input::ConnectFailed`] this says
    /// nothing about the server: its health is not touched, no other server is tried (they
    /// would fail the same way), and the client gets a 500, as nginx answers when `socket()`
    /// fails. [`Input::connect_error`] picks this or `ConnectFailed` from an OS error.
    ConnectAborted {
        /// The connection.
        conn: ConnId,
    },
    /// The connection reached the server but *we* refused it: its TLS certificate failed our
    /// verification (expired, another name, an unknown CA). That is a configuration mismatch
    /// on our side as often as the server's, and every server of the group would be judged by
    /// the same settings, so the server's health is not touched and no other server is tried;
    /// the client gets a 502. The runtime logs and counts the reason. Also valid on a fresh
    /// connection the server has not answered on yet: a server refusing *our* client
    /// certificate says so in TLS 1.3 only after the handshake. On any other connection it is
    /// [`Input::Errored`].
    ConnectRejected {
        /// The connection.
        conn: ConnId,
    },
}

impl Input<'_> {
    /// The input for a failed connect attempt: [`Input::ConnectAborted`] when `error` is a
    /// local resource shortage (Linux `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, `EADDRNOTAVAIL`),
    /// else [`Input::ConnectFailed`]. Both runtimes classify through here.
    pub fn connect_error(conn: ConnId, error: &std::io::Error) -> Input<'static> {
        // errno values of Linux (asm-generic), the platform the runtimes target.
        const LOCAL: [i32; 5] = [24, 23, 105, 12, 99];
        let local = error.kind() == std::io::ErrorKind::OutOfMemory
            || error.raw_os_error().is_some_and(|e| LOCAL.contains(&e));
        if local {
            Input::ConnectAborted { conn }
        } else {
            Input::ConnectFailed { conn }
        }
    }
}

/// `accept` refused: the per-core client connection limit is reached (or the core is draining).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtCapacity;
