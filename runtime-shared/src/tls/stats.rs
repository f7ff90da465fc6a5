//! TLS counters for the whole process: handshakes (full or resumed) and failures by reason,
//! per upstream server and per listener. Handshakes are what pooling saves, so they are rare
//! next to requests: one lock per handshake costs nothing measurable, and keeps the counters
//! off the core's per-worker stats.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Failure;

/// Which side a counter is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// Toward upstream server `server` (its address) of group `upstream`.
    Upstream {
        /// The group's name.
        upstream: String,
        /// The server's address.
        server: String,
    },
    /// On the listener with this address.
    Listener(String),
}

#[derive(Debug, Default)]
struct Counts {
    handshakes: BTreeMap<(Side, bool), u64>,
    failures: BTreeMap<(Side, &'static str), u64>,
}

/// Handshakes and failures, shared by every worker of a process (and kept across reloads).
#[derive(Debug, Default)]
pub struct TlsStats {
    counts: Mutex<Counts>,
}

impl TlsStats {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a completed handshake.
    pub fn handshake(&self, side: Side, resumed: bool) {
        *self.counts().handshakes.entry((side, resumed)).or_default() += 1;
    }

    /// Counts a failed connection.
    pub fn failure(&self, side: Side, why: Failure) {
        *self
            .counts()
            .failures
            .entry((side, why.reason()))
            .or_default() += 1;
    }

    /// Every handshake counter: `(side, resumed, count)`.
    pub fn handshakes(&self) -> Vec<(Side, bool, u64)> {
        let c = self.counts();
        c.handshakes
            .iter()
            .map(|((s, r), n)| (s.clone(), *r, *n))
            .collect()
    }

    /// Every failure counter: `(side, reason, count)`.
    pub fn failures(&self) -> Vec<(Side, &'static str, u64)> {
        let c = self.counts();
        c.failures
            .iter()
            .map(|((s, r), n)| (s.clone(), *r, *n))
            .collect()
    }

    /// Handshakes of `side`: `(full, resumed)`.
    pub fn handshake_counts(&self, matches: impl Fn(&Side) -> bool) -> (u64, u64) {
        let c = self.counts();
        let mut out = (0, 0);
        for ((s, resumed), n) in &c.handshakes {
            if matches(s) {
                if *resumed {
                    out.1 += n;
                } else {
                    out.0 += n;
                }
            }
        }
        out
    }
}
