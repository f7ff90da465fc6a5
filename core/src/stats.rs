//! Counters the runtimes export (Prometheus, stub_status, access logs). Plain integers owned by
//! one core instance: a worker never shares them, so there are no atomics on the request path;
//! an exporter sums snapshots across workers.

use crate::pool::EvictReason;
pub use crate::rules::NotReusable;

/// Counters for one upstream group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Requests that found an idle pooled connection.
    pub pool_hits: u64,
    /// Requests that had to open a connection.
    pub pool_misses: u64,
    /// Connections put back into the pool.
    pub pool_checkins: u64,
    /// Idle connections that left the pool without being reused, by [`EvictReason`] (indexed as
    /// [`EvictReason::ALL`]).
    pub evictions: [u64; EvictReason::ALL.len()],
    /// Connections that carried a request and were then closed instead of pooled, by
    /// [`NotReusable`] reason (indexed as [`NotReusable::ALL`]). With `pool_checkins` this
    /// accounts for every request that finished on an upstream connection.
    pub not_reused: [u64; NotReusable::COUNT],
    /// Requests re-sent on a fresh connection after a reused one turned out stale.
    pub stale_retries: u64,
    /// Requests moved to another server after a failure (nginx `proxy_next_upstream`).
    pub next_upstream: u64,
    /// Requests that waited in the group's queue (dispatched, timed out or abandoned).
    pub queued: u64,
    /// Requests dispatched from the queue to a server.
    pub dequeued: u64,
    /// Total time requests spent waiting in the queue, in nanoseconds (with `queued`: the mean).
    pub queue_wait_nanos: u64,
    /// Requests answered `503` because the queue was full.
    pub queue_full: u64,
    /// Requests answered `503` because they waited `queue_timeout`.
    pub queue_timeouts: u64,
    /// Requests whose client left while they waited.
    pub queue_abandoned: u64,
    /// Idle pooled connections handed to another worker whose request was first in line for
    /// their server's `max_conns` slot (the connection moved instead of closing).
    pub handovers: u64,
    /// Idle pooled connections taken in from another worker (see `handovers`).
    pub handovers_adopted: u64,
}

impl GroupStats {
    /// Evictions for one reason.
    pub fn evicted(&self, reason: EvictReason) -> u64 {
        self.evictions[reason as usize]
    }

    /// Connections not reused for one reason.
    pub fn not_reused_for(&self, reason: NotReusable) -> u64 {
        self.not_reused[reason as usize]
    }
}

/// Counters for one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections opened (attempted).
    pub connects: u64,
    /// Connections that failed to open.
    pub connect_failures: u64,
    /// Requests sent to this server (on new or reused connections).
    pub requests: u64,
    /// Failures counted toward passive health (`max_fails`).
    pub failures: u64,
    /// Warm connections opened in the background (`min_idle`), included in `connects`.
    pub preconnects: u64,
    /// Active health checks this core sent to the server, each on a pooled or a new
    /// connection (not in `requests`; results are counted process-wide, see
    /// [`Shared::checks`](crate::Shared::checks)).
    pub checks: u64,
}

/// All counters of one core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections refused at capacity.
    pub refused: u64,
    /// Idle client connections released to another core (a reload's handoff).
    pub handed_off: u64,
    /// Client connections adopted from another core (a reload's handoff); not in `accepted`.
    pub adopted: u64,
    /// Responses sent to clients, by status class: index 1..=5 for 1xx..5xx (0 unused).
    pub responses: [u64; 6],
    /// Responses the proxy generated itself (errors), included in `responses`.
    pub local_responses: u64,
    /// Body bytes moved with `splice(2)` (`limits.splice_min`), never copied into the process.
    pub spliced_bytes: u64,
    /// Per upstream group, indexed by [`UpstreamId`](crate::UpstreamId).
    pub groups: Vec<GroupStats>,
    /// Per server, indexed like [`Core::servers`](crate::Core::servers).
    pub servers: Vec<ServerStats>,
}

impl Stats {
    /// Total responses sent.
    pub fn total_responses(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// Connections not reused for `reason`, over every group (for
    /// `upkeep_upstream_not_reused_total{reason}`).
    pub fn not_reused(&self, reason: NotReusable) -> u64 {
        self.groups.iter().map(|g| g.not_reused_for(reason)).sum()
    }
}
