//! The accept policy, the same on both runtimes: what an `accept(2)` error means, and when a
//! worker stops and resumes accepting.
//!
//! At the client connection limit a worker pauses *before* taking a connection off its
//! listeners: the connections wait in the kernel's backlog (where the kernel applies its own
//! limit, as HAProxy's `maxconn` does) until a client connection ends, and are then served in
//! order — never accepted only to be closed. Should the core still refuse one (a limit reached
//! between the check and the accept, or a drain), the worker pauses the same way. Out of
//! descriptors or memory, it pauses for
//! [`ERROR_PAUSE`] instead of retrying at once (which would spin on the same error).

use std::io;
use std::time::{Duration, Instant};

use upkeep_core::Core;

use crate::throttle::{Throttle, WARN_EVERY};

/// "pausing accepts" repeats every [`ERROR_PAUSE`] per worker while the shortage lasts: logged
/// once per [`WARN_EVERY`] for the whole process.
static PAUSE_WARNING: Throttle = Throttle::new(WARN_EVERY);

/// How long accepting pauses after a resource shortage (or an unexpected error).
pub const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What an `accept(2)` error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterError {
    /// Nothing is queued (`EAGAIN`): wait for the listener's next readiness.
    Wait,
    /// That one connection is gone (reset or aborted before it was taken, a network error the
    /// kernel passes on from it, a firewall refusal) or the call was interrupted: accept the
    /// next at once.
    Next,
    /// Out of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), or an error this
    /// policy does not know: stop accepting for this long, then try again.
    Pause(Duration),
}

/// Classifies an accept error (see [`AfterError`]); logs the ones that pause.
pub fn after_error(e: &io::Error) -> AfterError {
    if e.kind() == io::ErrorKind::WouldBlock {
        return AfterError::Wait;
    }
    if e.kind() == io::ErrorKind::Interrupted {
        return AfterError::Next;
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            PAUSE_WARNING.warn(format_args!(
                "accept: {e}; pausing accepts for {ERROR_PAUSE:?}"
            ));
            AfterError::Pause(ERROR_PAUSE)
        }
        // accept(2), Linux notes: errors already pending on the new connection are returned by
        // accept and should be treated like EAGAIN, by retrying.
        Some(
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EPERM
            | libc::EPROTO
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT,
        ) => AfterError::Next,
        _ => {
            // Retrying at once could spin on a persistent error; waiting for readiness could
            // leave a queue with no new edge unserved. A short pause does neither.
            PAUSE_WARNING.warn(format_args!(
                "accept: {e}; pausing accepts for {ERROR_PAUSE:?}"
            ));
            AfterError::Pause(ERROR_PAUSE)
        }
    }
}

/// Why a worker is not accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The core refused a connection at its limit: resume when a client connection ends.
    Capacity,
    /// After an accept error: resume at this instant.
    Until(Instant),
}

/// What to do before taking a connection off a listener ([`Gate::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Accept one.
    Accept,
    /// Accepting is paused: leave the listeners alone.
    Paused,
    /// Accepting paused just now (the core is full): stop watching the listeners.
    PausedNow,
}

/// Whether a worker accepts: open, or paused for a [`Pause`]. One per worker, covering all its
/// listeners (they share the worker's connection limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gate {
    paused: Option<Pause>,
}

impl Gate {
    /// Before each `accept(2)`: whether to take a connection now (see [`Admit`]). A full core
    /// pauses the gate here, so the connection stays queued in the kernel.
    pub fn admit(&mut self, core: &Core) -> Admit {
        if self.paused.is_some() {
            Admit::Paused
        } else if !has_room(core) {
            PAUSE_WARNING.warn(format_args!(
                "accept: {} client connections, the limit \
                 (limits.max_client_connections, capped by RLIMIT_NOFILE); pausing accepts until \
                 one ends",
                core.client_connections()
            ));
            self.paused = Some(Pause::Capacity);
            Admit::PausedNow
        } else {
            Admit::Accept
        }
    }

    /// Whether connections may be accepted now (no pause in force).
    pub fn is_open(&self) -> bool {
        self.paused.is_none()
    }

    /// Pauses for `why` (replacing a pause already in force). Returns whether the gate was open:
    /// the runtime stops watching its listeners then.
    pub fn pause(&mut self, why: Pause) -> bool {
        self.paused.replace(why).is_none()
    }

    /// After an accept error: pauses when [`after_error`] says so (returned as well).
    pub fn pause_after(&mut self, e: &io::Error, now: Instant) -> AfterError {
        let after = after_error(e);
        if let AfterError::Pause(d) = after {
            self.pause(Pause::Until(now + d));
        }
        after
    }

    /// Pauses because the core refused a connection at its limit.
    pub fn at_capacity(&mut self) -> bool {
        self.pause(Pause::Capacity)
    }

    /// When a timed pause ends (for a poll timeout or a timer); `None` when open or waiting for
    /// a client connection to end.
    pub fn resume_at(&self) -> Option<Instant> {
        match self.paused {
            Some(Pause::Until(t)) => Some(t),
            _ => None,
        }
    }

    /// Opens the gate (a drain takes what is queued before the listeners close).
    pub fn open(&mut self) {
        self.paused = None;
    }

    /// Ends the pause if it is over — `core` has room for a client again, or the pause's time
    /// has come — and returns whether the gate is open now.
    pub fn reopen(&mut self, core: &Core, now: Instant) -> bool {
        let over = match self.paused {
            None => return true,
            Some(Pause::Capacity) => has_room(core),
            Some(Pause::Until(t)) => now >= t,
        };
        if over {
            self.paused = None;
        }
        over
    }
}

/// Whether `core` would accept one more client connection (below
/// `limits.max_client_connections`).
pub fn has_room(core: &Core) -> bool {
    core.client_connections() < core.config().limits.max_client_connections
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::tests::core_with_clients;

    #[test]
    fn accept_errors_wait_skip_or_pause() {
        let errno = io::Error::from_raw_os_error;
        assert_eq!(after_error(&errno(libc::EAGAIN)), AfterError::Wait);
        assert_eq!(after_error(&errno(libc::EINTR)), AfterError::Next);
        assert_eq!(after_error(&errno(libc::ECONNABORTED)), AfterError::Next);
        assert_eq!(after_error(&errno(libc::EPROTO)), AfterError::Next);
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(
                after_error(&errno(e)),
                AfterError::Pause(ERROR_PAUSE),
                "{e}"
            );
        }
        assert_eq!(
            after_error(&errno(libc::EBADF)),
            AfterError::Pause(ERROR_PAUSE)
        );
    }

    #[test]
    fn the_gate_pauses_once_and_reopens_when_the_pause_is_over() {
        let (roomy, _) = core_with_clients(2);
        let now = Instant::now();
        let mut gate = Gate::default();
        assert!(gate.is_open());
        assert_eq!(
            gate.pause_after(&io::Error::from_raw_os_error(libc::EMFILE), now),
            AfterError::Pause(ERROR_PAUSE)
        );
        assert!(
            !gate.pause(Pause::Until(now + ERROR_PAUSE)),
            "already paused"
        );
        assert_eq!(gate.resume_at(), Some(now + ERROR_PAUSE));
        assert!(!gate.reopen(&roomy, now));
        assert!(gate.reopen(&roomy, now + ERROR_PAUSE));
        assert_eq!(gate.admit(&roomy), Admit::Accept);
        assert!(gate.at_capacity());
        assert_eq!(gate.admit(&roomy), Admit::Paused);
        assert_eq!(gate.resume_at(), None);
        assert!(gate.reopen(&roomy, now), "room for one more");
        assert_eq!(gate.admit(&roomy), Admit::Accept);
    }

    #[test]
    fn a_full_worker_pauses_before_accepting() {
        let (full, _) = core_with_clients(1);
        let (roomy, _) = core_with_clients(2);
        let now = Instant::now();
        let mut gate = Gate::default();
        // Full: the gate pauses before any accept, so the connection stays in the backlog.
        assert_eq!(gate.admit(&full), Admit::PausedNow);
        assert_eq!(gate.admit(&full), Admit::Paused);
        assert!(!gate.reopen(&full, now), "still full");
        // Room again (a client left): accept, until the core is full again.
        assert!(gate.reopen(&roomy, now));
        assert_eq!(gate.admit(&roomy), Admit::Accept);
        assert_eq!(gate.admit(&full), Admit::PausedNow);
        // An empty backlog (EAGAIN) changes nothing: the next full check still pauses first.
        assert!(gate.reopen(&roomy, now));
        let eagain = io::Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(gate.pause_after(&eagain, now), AfterError::Wait);
        assert_eq!(gate.admit(&full), Admit::PausedNow);
    }
}
