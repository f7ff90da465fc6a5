//! Warm connections (`min_idle`): the pool keeps up to N idle connections per server ready,
//! opened in the background — at start, after a reload (a new core starts) and whenever one
//! leaves the pool (reused, expired, closed by the backend) — so that a burst after a quiet
//! period does not pay connection setup.
//!
//! A warm connection is an upstream connection opened with no client: once connected it goes
//! straight into the pool, where the ordinary rules apply (reuse most recent first, idle
//! expiry, eviction). Its idle expiry also honours the server's last `Keep-Alive: timeout`
//! hint (remembered per server, because a warm connection has carried no response of its own),
//! so a warm connection is closed — and replaced — before the backend would drop it.
//!
//! Bounds: never more than N per server idle-or-opening through this path; none while
//! draining, while the balancer has the server down, or while a previous warm connect to it
//! failed and its back-off (100 ms doubling up to 10 s) runs; [`Core::poll_timeout`] includes
//! the end of the earliest back-off, so the runtime wakes the core for the retry. (A server the
//! balancer has down gets its warm connections again at the next input or timeout after it
//! comes back.)

use core::time::Duration;

use super::table::{Conn, Role};
use super::upstream::{UState, Upstream};
use super::{Core, Output, touch};
use crate::connection::Buffers;
use crate::pool::PoolKey;
use crate::{ConnId, Time};

/// First back-off after a failed warm connect; doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long before a pooled connection expires its warm replacement opens (at most).
const REPLACE_AHEAD: Duration = Duration::from_millis(250);

/// Per-server warm-connection bookkeeping (indexed by global server index).
#[derive(Clone, Debug, Default)]
pub(super) struct WarmServer {
    /// Warm connects in progress.
    pub(super) opening: u32,
    /// Consecutive failed warm connects (reset by a successful one).
    failures: u32,
    /// A warm connect failed since the last top-up: start the back-off at the next one (the
    /// close that noticed it has no clock).
    failed: bool,
    /// No warm connect before this.
    retry_at: Time,
    /// The server's last `Keep-Alive: timeout` hint (less our margin), from its latest
    /// response head; `None` when it sent none.
    pub(super) hint: Option<Duration>,
}

/// How long a connection pooled at `now` may stay idle: until the first of the group's
/// `keepalive_timeout`, the backend's hint (`hinted`, when it sent one) and the connection's
/// `keepalive_time` since `created`.
pub(super) fn idle_until(
    now: Time,
    group: &crate::config::UpstreamConfig,
    hinted: Option<Time>,
    created: Time,
) -> Time {
    now.plus(group.keepalive_timeout)
        .min(hinted.unwrap_or(Time(u64::MAX)))
        .min(created.plus(group.keepalive_time))
}

/// How long before an idle connection expires a warm replacement opens: 250 ms, or a quarter
/// of the shortest idle life a connection to the server gets (our `keepalive_timeout` and
/// `keepalive_time`, the backend's hint), so that a fresh connection is never itself due for replacement.
pub(super) fn replace_ahead(
    group: &crate::config::UpstreamConfig,
    hint: Option<Duration>,
) -> Duration {
    let life = group.keepalive_timeout.min(group.keepalive_time);
    REPLACE_AHEAD.min(hint.map_or(life, |h| h.min(life)) / 4)
}

/// Up to `want` idle connections of `key` that are still pooled at `horizon` (most recently
/// pooled first: the freshest, so this usually stops after `want`), and the earliest expiry
/// among those counted.
fn fresh_idle(
    pool: &crate::pool::Pool,
    key: PoolKey,
    horizon: Time,
    want: u32,
) -> (u32, Option<Time>) {
    let mut fresh = 0;
    let mut earliest: Option<Time> = None;
    for e in pool.key_mru(key) {
        if fresh == want {
            break;
        }
        if e.expires > horizon {
            fresh += 1;
            earliest = Some(earliest.map_or(e.expires, |t| t.min(e.expires)));
        }
    }
    (fresh, earliest)
}

/// Back-off after `failures` consecutive failed warm connects.
pub(crate) fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

impl Core {
    /// Opens the warm connections `min_idle` asks for (a no-op without any). Call once after
    /// [`Core::new`], then take the outputs; the core also tops up by itself on every later
    /// call.
    pub fn start(&mut self, now: Time) {
        self.sync(now);
    }

    /// Opens what each server lacks of its `min_idle` warm connections.
    pub(super) fn top_up(&mut self, now: Time) {
        self.warm_next = None;
        if self.draining {
            return;
        }
        for g in 0..self.groups.len() {
            let want = self.config.upstreams[g].min_idle as u32;
            // Requests waiting for a slot (`max_conns` + queue, any worker) come before warm
            // connections: a slot just yielded to one must not be taken back for a warm one.
            if want == 0 || self.shared.group(g).queued() > 0 {
                continue;
            }
            // So do another generation's requests waiting for a kept server's slot (see
            // `yield_to_linked`): a warm connection would take a slot yielded to them back.
            let linked = self.shared.linked_waiting();
            let first = self.groups[g].first_server;
            for idx in 0..self.config.upstreams[g].servers.len() {
                if linked && self.shared.wanted_by_linked(g, idx) {
                    continue;
                }
                let server = first + idx as u32;
                let w = &mut self.warm[server as usize];
                // One back-off step per round of warm connects: the others of the same round
                // failing too (they were opened together) do not double it again.
                if core::mem::take(&mut w.failed) && now >= w.retry_at {
                    w.failures += 1;
                    w.retry_at = now.plus(backoff(w.failures));
                }
                // A backend whose Keep-Alive timeout is within our margin would have a warm
                // connection expire the instant it is pooled: nothing to keep warm.
                let useless = w.hint.is_some_and(|h| h.is_zero());
                let (retry_at, opening) = (w.retry_at, w.opening);
                if useless || !self.groups[g].balancer.is_up(now, idx) {
                    continue;
                }
                let key = PoolKey {
                    server,
                    partition: 0,
                };
                // Idle connections that will still be there `ahead` from now count; one about
                // to expire is replaced already, so a request never finds the server without a
                // warm connection while its replacement connects.
                let ahead =
                    replace_ahead(&self.config.upstreams[g], self.warm[server as usize].hint);
                let (fresh, stale_at) = fresh_idle(&self.pool, key, now.plus(ahead), want);
                if fresh + opening >= want {
                    if let Some(t) = stale_at {
                        // Wake up when the first of them is due for replacement.
                        let t = Time(t.0.saturating_sub(ahead.as_nanos() as u64));
                        self.warm_next = Some(self.warm_next.map_or(t, |n| n.min(t)));
                    }
                    continue;
                }
                let have = fresh + opening;
                if now < retry_at {
                    // Backing off: wake up for it (the core has no timer of its own for it).
                    self.warm_next = Some(self.warm_next.map_or(retry_at, |t| t.min(retry_at)));
                    continue;
                }
                for _ in have..want {
                    // A warm connection holds one of the server's `max_conns` slots like any
                    // other (process-wide): none is opened beyond the cap.
                    if !self.open_slot(g, idx) {
                        break;
                    }
                    self.open_warm(now, g as u32, server, key);
                }
            }
        }
    }

    fn open_warm(&mut self, now: Time, group: u32, server: u32, key: PoolKey) {
        self.warm[server as usize].opening += 1;
        self.stats.servers[server as usize].connects += 1;
        self.stats.servers[server as usize].preconnects += 1;
        let id = self.open_upstream(now, Upstream::warming(server, group, key, now));
        touch(&mut self.touched, id);
    }

    /// Adds a connection being opened to the table and asks the runtime to connect it: the
    /// one place an upstream connect starts, for a request or warm.
    pub(super) fn open_upstream(&mut self, now: Time, up: Upstream) -> ConnId {
        let server = self.servers[up.server as usize];
        let id = self.conns.insert(|id| Conn {
            id,
            buf: Buffers::new(now),
            deadline: None,
            role: Role::Upstream(up),
        });
        self.out.push_back(Output::Connect { conn: id, server });
        id
    }

    /// A warm connect finished: into the pool, idle until the first of our
    /// `keepalive_timeout`, the server's remembered hint and `keepalive_time`. Bytes the
    /// backend sent unasked make it unusable.
    pub(super) fn warm_connected(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let early = !c.buf.rbuf.is_empty();
        let Role::Upstream(u) = &mut c.role else {
            return;
        };
        let (server, g, key, created) = (u.server as usize, u.group as usize, u.key, u.created);
        let w = &mut self.warm[server];
        w.opening = w.opening.saturating_sub(1);
        if early {
            self.close_upstream(id, false, crate::rules::NotReusable::UnexpectedData);
            return;
        }
        u.state = UState::Idle;
        let hinted = w.hint.map(|h| created.plus(h));
        let expires = idle_until(now, &self.config.upstreams[g], hinted, created);
        let idx = server - self.groups[g].first_server as usize;
        // Someone may be waiting for a connection to this server (`max_conns` + queue).
        if self.shared.group(g).queued() > 0 {
            self.freed.push((g as u32, true));
        }
        self.checkin(g, idx, id, key, expires);
        // Another generation's request may have queued for its slot while it connected
        // (nothing idle then to wake anyone for).
        self.yield_to_linked();
    }

    /// Called by the one close path for a warm connection closed before it connected: the
    /// connect failed (refused, timed out, reset).
    pub(super) fn warm_failed(&mut self, server: u32) {
        let w = &mut self.warm[server as usize];
        w.opening = w.opening.saturating_sub(1);
        w.failed = true;
    }

    /// A warm connection left the pool before carrying a request. Expired (or made room, or
    /// drained): as planned, and the server is fine. Closed by the backend or sent bytes
    /// unasked: a backend that drops connections it just accepted, so back off as after a
    /// failed connect — replacing it at once would churn at the same instant.
    pub(super) fn warm_evicted(&mut self, server: u32, why: crate::pool::EvictReason) {
        use crate::pool::EvictReason::*;
        let w = &mut self.warm[server as usize];
        match why {
            // Yielded: its slot went to a request waiting elsewhere; ServerUnusable: the server
            // left rotation (no warm connections until it is back).
            IdleTimeout | Capacity | Draining | Yielded | ServerUnusable => w.failures = 0,
            PeerClosed | UnexpectedData => w.failed = true,
        }
    }

    /// A response head from `server` carried `hint` (its `Keep-Alive: timeout` less our
    /// margin, or `None`): remembered for the server's next warm connections, and applied to
    /// the unused warm ones already pooled, which were opened before it was known — so the pool
    /// never holds a warm connection past the backend's timeout. Allocates only when the hint
    /// changes.
    pub(super) fn remember_hint(&mut self, now: Time, server: u32, hint: Option<Duration>) {
        let old = core::mem::replace(&mut self.warm[server as usize].hint, hint);
        let Some(h) = hint else { return };
        if old == hint || !self.warm_on {
            return;
        }
        let key = PoolKey {
            server,
            partition: 0,
        };
        let late: Vec<(ConnId, u32, Time)> = self
            .pool
            .key_mru(key)
            .filter_map(|e| {
                let u = self.conns.upstream(e.conn)?;
                let by = u.created.plus(h);
                (u.unused_warm && e.expires > by).then_some((e.conn, e.group, by))
            })
            .collect();
        for (conn, g, expires) in late {
            if expires <= now {
                self.evict(conn, false, crate::pool::EvictReason::IdleTimeout);
            } else if let Some(evicted) = self.pool.checkin(key, g, conn, expires) {
                // Cannot happen (the entry makes room for itself); handled like any checkin.
                self.evict(evicted, false, crate::pool::EvictReason::Capacity);
            } else {
                touch(&mut self.touched, conn);
            }
        }
    }

    /// Warm connects in progress to `server` (global index), for the simulation's invariants.
    #[cfg(feature = "sim")]
    pub(crate) fn warm_opening(&self, server: usize) -> u32 {
        self.warm[server].opening
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(7), ms(8), ms(40)],
            [100, 200, 400, 800, 6400, 10_000, 10_000]
        );
    }
}
