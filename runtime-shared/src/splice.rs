//! Zero-copy bodies (Linux): body payload moves from one socket into a pipe and from the pipe
//! to the other socket with `splice(2)`, so it is never copied into the process — the kernel
//! moves page references. The core decides when ([`Core::splice_source`]) and counts what
//! passed ([`Core::splice_with`], [`Core::write_piped_with`]); this module holds the pipes and
//! the two loops, the counterparts of [`crate::io::Reader::read`] and [`crate::io::flush`].
//!
//! A pipe belongs to the connection the bytes are *for* while it holds some (they are that
//! connection's first queued bytes, [`Core::piped`]); an empty pipe goes back to [`Pipes`].
//! Writing to a peer that is gone returns `EPIPE` — and raises `SIGPIPE`, which Rust programs
//! ignore from the start (splice has no `MSG_NOSIGNAL`); a program embedding the runtime that
//! restores the default must leave `limits.splice_min = 0`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with};
use upkeep_core::{ConnId, Core, ReadOutcome, Time, WriteOutcome};

use crate::io::{Flushed, ReadStep};
use socket2::SockRef;

/// The capacity asked of each pipe: the core's default `write_high_water`, so a pipe holds
/// what backpressure allows toward one peer and a 256 KiB stretch moves in one call each way
/// (`/proc/sys/fs/pipe-max-size` allows 1 MiB unprivileged; a refusal keeps the 64 KiB default).
pub const PIPE_SIZE: usize = 256 * 1024;

/// Empty pipes kept for the next splice (two descriptors each); more are closed.
const KEEP: usize = 16;

/// One pipe: bytes spliced in from a socket wait here until spliced out to another.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Bytes in it: counted here too, not only by the core, so that a pipe whose connection
    /// closed with bytes still inside is never reused (they would lead the next body).
    len: usize,
}

impl Pipe {
    /// A non-blocking pipe of [`PIPE_SIZE`] (or the system's default size).
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let capacity =
            fcntl_setpipe_size(&write, PIPE_SIZE).or_else(|_| fcntl_getpipe_size(&write))?;
        Ok(Pipe {
            read,
            write,
            capacity,
            len: 0,
        })
    }

    /// Bytes it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves up to `max` bytes from the socket `from` into the pipe.
    fn fill(&mut self, from: impl AsFd, max: usize) -> io::Result<usize> {
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        let n = rustix::pipe::splice(from, None, &self.write, None, max, flags)?;
        self.len += n;
        Ok(n)
    }

    /// Moves up to `max` bytes from the pipe to the socket `to`.
    fn drain(&mut self, to: impl AsFd, max: usize) -> io::Result<usize> {
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        let n = rustix::pipe::splice(&self.read, None, to, None, max, flags)?;
        self.len -= n.min(self.len);
        Ok(n)
    }
}

/// A worker's pipes: how many are open (their descriptors are budgeted, see
/// [`crate::descriptors::MAX_PIPES`]) and the empty ones kept, reused so that a splice costs no
/// `pipe2`/`fcntl` each time. Every pipe taken must be given back (or its count is lost).
#[derive(Debug, Default)]
pub struct Pipes {
    spare: Vec<Pipe>,
    /// Pipes open: lent out and kept.
    open: usize,
}

impl Pipes {
    /// An empty pipe, reused or new while fewer than `limit` are open; an error otherwise (the
    /// body is copied then).
    pub fn take(&mut self, limit: usize) -> io::Result<Pipe> {
        if let Some(pipe) = self.spare.pop() {
            return Ok(pipe);
        }
        if self.open >= limit {
            return Err(io::Error::other(format!(
                "{} pipes open, the limit",
                self.open
            )));
        }
        let pipe = Pipe::new()?;
        self.open += 1;
        Ok(pipe)
    }

    /// The pipe for bytes toward a connection: the one it holds (`held`), else an empty one
    /// while fewer than [`crate::descriptors::MAX_PIPES`] are open; an error otherwise (the body
    /// is copied then).
    pub fn lend(&mut self, held: Option<Pipe>) -> io::Result<Pipe> {
        held.map_or_else(|| self.take(crate::descriptors::MAX_PIPES), Ok)
    }

    /// Puts `pipe` back after a splice in or out: with `holder` (the pipe place of the
    /// connection its bytes are for, `None` once that connection is gone) while it holds bytes,
    /// else here. True if it holds bytes and went to the holder.
    pub fn put_back(&mut self, pipe: Pipe, holder: Option<&mut Option<Pipe>>) -> bool {
        match holder {
            Some(place) if !pipe.is_empty() => {
                *place = Some(pipe);
                true
            }
            _ => {
                self.give(pipe);
                false
            }
        }
    }

    /// Takes back a pipe: kept if it is empty, else closed (its bytes are of a connection
    /// that is gone).
    pub fn give(&mut self, pipe: Pipe) {
        if pipe.is_empty() && self.spare.len() < KEEP {
            self.spare.push(pipe);
        } else {
            self.open -= 1;
        }
    }

    /// Gives back the pipe a connection holds, if any (its count must never be lost).
    pub fn give_back(&mut self, pipe: &mut Option<Pipe>) {
        if let Some(pipe) = pipe.take() {
            self.give(pipe);
        }
    }

    /// Empty pipes kept.
    pub fn kept(&self) -> usize {
        self.spare.len()
    }
}

/// Moves the next body bytes of `from` (its socket `sock`) into `pipe`, the pipe toward `to`
/// that [`Core::splice_source`] named, if the core allows it now. `None`: it does not — read
/// with [`crate::io::Reader::read`].
///
/// [`ReadStep::Wait`] means the socket is drained *or the pipe is full* (one `EAGAIN` for
/// both): a caller whose pipe still holds bytes tells the core ([`Core::pipe_full`]), which
/// holds `from` back until some are written out and then asks for it to be read again.
pub fn fill(
    core: &mut Core,
    now: Time,
    from: ConnId,
    sock: impl AsFd,
    to: ConnId,
    pipe: &mut Pipe,
) -> Option<ReadStep> {
    let room = pipe.capacity().saturating_sub(pipe.len());
    let result = core.splice_with(now, from, |dest, max| {
        if dest != to {
            return Err(io::Error::other("splice hint for another connection"));
        }
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        pipe.fill(&sock, max.min(room))
    })?;
    Some(match result {
        // Until EAGAIN: a short splice may have met a full pipe, not a drained socket.
        Ok(ReadOutcome::Data(_)) => ReadStep::Again,
        Ok(ReadOutcome::Closed | ReadOutcome::Failed(_) | ReadOutcome::Unknown) => ReadStep::Done,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadStep::Again,
        Err(_) => ReadStep::Wait,
    })
}

/// Writes the bytes `pipe` holds for `conn` (its socket `sock`) until none are left
/// ([`Flushed::Empty`]: the pipe is empty, give it back, then write the rest of the queue with
/// [`crate::io::flush`]) or a write comes up short.
pub fn flush(
    core: &mut Core,
    now: Time,
    conn: ConnId,
    sock: impl AsFd,
    pipe: &mut Pipe,
) -> Flushed {
    debug_assert_eq!(
        pipe.len(),
        core.piped(conn),
        "the pipe holds what the core counts"
    );
    loop {
        let mut gone = false;
        let result = core.write_piped_with(now, conn, |n| {
            pipe.drain(&sock, n)
                .map_err(|e| crate::io::withhold_gone(e, &mut gone))
        });
        if gone {
            crate::io::read_then_fail(core, now, conn, &SockRef::from(&sock));
            return Flushed::Done;
        }
        match result {
            Ok(WriteOutcome::Wrote { n, offered, .. }) => {
                if offered == 0 {
                    return Flushed::Empty;
                }
                if n < offered {
                    return Flushed::Blocked;
                }
            }
            Ok(WriteOutcome::Failed(_) | WriteOutcome::Unknown) => return Flushed::Done,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Flushed::Blocked,
        }
    }
}
