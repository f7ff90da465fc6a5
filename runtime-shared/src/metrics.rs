//! Counters a worker keeps (plain integers, no atomics: a worker never shares them), the
//! snapshot it hands to the admin listener, and the two renderings: Prometheus text format 0.0.4
//! and nginx `stub_status`. Nothing here knows which runtime drives the core.
//!
//! Snapshots are keyed by names from the configuration (upstream name, server address), not by
//! indexes, so workers of different reload generations (different configs) sum correctly.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use upkeep_core::{Core, EvictReason, ExchangeInfo, NotReusable, ServerState, Time, UpstreamId};

use crate::upstream_metrics::{self, ServerTraffic, TrafficCounters};

mod health;

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Request durations: cumulative rendering happens at export time; here each observation lands in
/// exactly one bucket (the last slot is +Inf).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    pub counts: [u64; BUCKETS.len() + 1],
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Counts one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let slot = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// What a worker counts itself (the core counts the rest).
#[derive(Clone, Debug, Default)]
pub struct WorkerCounters {
    /// Responses by status code, from recorded exchanges.
    pub codes: BTreeMap<u16, u64>,
    /// Request durations.
    pub duration: Histogram,
    /// Per-server traffic (see [`upstream_metrics`]).
    pub traffic: TrafficCounters,
}

impl WorkerCounters {
    /// Counts a finished exchange: its status code and its duration.
    pub fn record(&mut self, ex: &ExchangeInfo) {
        *self.codes.entry(ex.status).or_default() += 1;
        self.duration
            .observe(ex.finished.since(ex.started).as_secs_f64());
    }
}

/// A counter family labelled by upstream and reason: name, help, the reason map of a group.
type ReasonFamily = (
    &'static str,
    &'static str,
    fn(&GroupSnapshot) -> &BTreeMap<&'static str, u64>,
);

/// Per upstream group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupSnapshot {
    /// Requests that reused an idle connection.
    pub pool_hits: u64,
    /// Requests that opened a connection.
    pub pool_misses: u64,
    /// Idle pooled connections now (a gauge; zero for retired workers).
    pub idle: u64,
    /// Evictions by reason name.
    pub evictions: BTreeMap<&'static str, u64>,
    /// Upstream connections that carried a request and then closed instead of going back to
    /// the pool, by [`NotReusable`] reason name.
    pub not_reused: BTreeMap<&'static str, u64>,
    /// Requests re-sent after a stale pooled connection.
    pub stale_retries: u64,
    /// Requests moved to another server.
    pub next_upstream: u64,
    /// Requests waiting in the queue now (a gauge; zero for retired workers).
    pub queued: u64,
    /// Requests that waited in the queue, and their total wait in nanoseconds.
    pub queue_waits: u64,
    /// Total queue wait, nanoseconds.
    pub queue_wait_nanos: u64,
    /// 503s because the queue was full.
    pub queue_full: u64,
    /// 503s because a wait reached `queue_timeout`.
    pub queue_timeouts: u64,
    /// Idle connections handed to another worker whose request was first in line.
    pub handovers: u64,
}

/// Per server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSnapshot {
    /// Connections opened.
    pub connects: u64,
    /// Connects that failed.
    pub connect_failures: u64,
    /// Warm connections opened in the background (`min_idle`), included in `connects`.
    pub preconnects: u64,
    /// Requests sent.
    pub requests: u64,
    /// Whether every live worker considers it up (passive health).
    pub up: bool,
    /// How many live workers reported on it (for the `up` conjunction).
    live_reports: u64,
    /// Administrative state as the live workers report it (`None` once only retired workers
    /// report on the server: no stale state series after a reload removes it).
    pub state: Option<ServerState>,
    /// Active health checks, process-wide (from the ledger, so taken from one live worker,
    /// not summed); `None` for a group without `health_check` and for retired workers.
    pub checks: Option<upkeep_core::CheckView>,
}

/// Counters and gauges of one or more workers.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections handled (accepted minus refused at capacity).
    pub handled: u64,
    /// Responses sent.
    pub requests: u64,
    /// Body bytes moved with splice(2).
    pub spliced_bytes: u64,
    /// Pipes of zero-copy bodies: holding bytes of a connection, and empty ones kept for reuse
    /// (HAProxy's `PipesUsed` / `PipesFree`); set by a runtime that splices.
    pub pipes: (u64, u64),
    /// Bytes received for connections whose reading is paused, waiting to be handed to the
    /// core when it resumes: set by a runtime whose receives complete later (io_uring), where
    /// a receive already on its way when the pause comes still brings bytes.
    pub held_bytes: u64,
    /// The most bytes one connection held that way at once, since the worker started.
    pub held_max: u64,
    /// Responses by status code.
    pub codes: BTreeMap<u16, u64>,
    /// Open client connections: (reading, writing, waiting).
    pub activity: (u64, u64, u64),
    /// Per upstream name.
    pub groups: BTreeMap<String, GroupSnapshot>,
    /// Per (upstream name, server address).
    pub servers: BTreeMap<(String, String), ServerSnapshot>,
    /// Request durations.
    pub duration: Histogram,
    /// Per (upstream name, server address) traffic.
    pub traffic: BTreeMap<(String, String), ServerTraffic>,
}

impl Snapshot {
    /// A worker's snapshot: what its core counted plus what the worker counted itself.
    pub fn of(core: &Core, counters: &WorkerCounters, now: Time) -> Snapshot {
        let stats = core.stats();
        let config = core.config();
        let mut s = Snapshot {
            accepted: stats.accepted + stats.refused,
            handled: stats.accepted,
            requests: stats.total_responses(),
            spliced_bytes: stats.spliced_bytes,
            codes: counters.codes.clone(),
            duration: counters.duration.clone(),
            ..Snapshot::default()
        };
        s.traffic = counters.traffic.snapshot(core);
        let (r, w, k) = core.client_activity();
        s.activity = (r as u64, w as u64, k as u64);
        for (g, (up, gs)) in config.upstreams.iter().zip(stats.groups.iter()).enumerate() {
            let evictions = EvictReason::ALL
                .iter()
                .map(|&r| (r.as_str(), gs.evicted(r)))
                .collect();
            let not_reused = NotReusable::ALL
                .iter()
                .map(|&r| (r.as_str(), gs.not_reused_for(r)))
                .collect();
            s.groups.insert(
                up.name.clone(),
                GroupSnapshot {
                    pool_hits: gs.pool_hits,
                    pool_misses: gs.pool_misses,
                    idle: core.pool_idle(UpstreamId(g as u32)) as u64,
                    evictions,
                    not_reused,
                    stale_retries: gs.stale_retries,
                    next_upstream: gs.next_upstream,
                    queued: core.queued(UpstreamId(g as u32)) as u64,
                    queue_waits: gs.queued,
                    queue_wait_nanos: gs.queue_wait_nanos,
                    queue_full: gs.queue_full,
                    queue_timeouts: gs.queue_timeouts,
                    handovers: gs.handovers,
                },
            );
        }
        for (i, &server) in core.servers().iter().enumerate() {
            let name = config.upstreams[server.upstream.0 as usize].name.clone();
            let addr = core.server_address(server).to_string();
            let ss = &stats.servers[i];
            s.servers.insert(
                (name, addr),
                ServerSnapshot {
                    connects: ss.connects,
                    connect_failures: ss.connect_failures,
                    preconnects: ss.preconnects,
                    requests: ss.requests,
                    up: core.server_up(now, server),
                    live_reports: 1,
                    state: Some(core.server_state(server)),
                    checks: health::view(core, server),
                },
            );
        }
        s
    }

    /// The counters of a worker that has exited: gauges no longer apply.
    pub fn retired(mut self) -> Snapshot {
        self.activity = (0, 0, 0);
        self.pipes = (0, 0);
        self.held_bytes = 0;
        for g in self.groups.values_mut() {
            g.idle = 0;
            g.queued = 0;
        }
        for s in self.servers.values_mut() {
            s.up = false;
            s.live_reports = 0;
            s.state = None;
            s.checks = None;
        }
        for t in self.traffic.values_mut() {
            t.in_flight = 0;
        }
        self
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Snapshot) {
        self.accepted += o.accepted;
        self.handled += o.handled;
        self.requests += o.requests;
        self.spliced_bytes += o.spliced_bytes;
        self.pipes.0 += o.pipes.0;
        self.pipes.1 += o.pipes.1;
        self.held_bytes += o.held_bytes;
        self.held_max = self.held_max.max(o.held_max);
        for (code, n) in &o.codes {
            *self.codes.entry(*code).or_default() += n;
        }
        self.activity.0 += o.activity.0;
        self.activity.1 += o.activity.1;
        self.activity.2 += o.activity.2;
        for (name, g) in &o.groups {
            let t = self.groups.entry(name.clone()).or_default();
            t.pool_hits += g.pool_hits;
            t.pool_misses += g.pool_misses;
            t.idle += g.idle;
            t.stale_retries += g.stale_retries;
            t.next_upstream += g.next_upstream;
            t.queued += g.queued;
            t.queue_waits += g.queue_waits;
            t.queue_wait_nanos += g.queue_wait_nanos;
            t.queue_full += g.queue_full;
            t.queue_timeouts += g.queue_timeouts;
            t.handovers += g.handovers;
            for (reason, n) in &g.evictions {
                *t.evictions.entry(reason).or_default() += n;
            }
            for (reason, n) in &g.not_reused {
                *t.not_reused.entry(reason).or_default() += n;
            }
        }
        for (key, s) in &o.servers {
            let fresh = !self.servers.contains_key(key);
            let t = self.servers.entry(key.clone()).or_default();
            t.connects += s.connects;
            t.connect_failures += s.connect_failures;
            t.preconnects += s.preconnects;
            t.requests += s.requests;
            if s.live_reports > 0 {
                t.state = s.state.or(t.state);
                t.checks = s.checks.or(t.checks);
                t.up = (t.live_reports == 0 || t.up) && s.up;
                t.live_reports += s.live_reports;
            } else if fresh {
                t.up = false;
            }
        }
        self.duration.add(&o.duration);
        upstream_metrics::add(&mut self.traffic, &o.traffic);
    }

    /// Open client connections.
    pub fn active(&self) -> u64 {
        self.activity.0 + self.activity.1 + self.activity.2
    }

    /// nginx `stub_status`, byte for byte.
    pub fn stub_status(&self) -> String {
        format!(
            "Active connections: {} \nserver accepts handled requests\n {} {} {} \nReading: {} Writing: {} Waiting: {} \n",
            self.active(),
            self.accepted,
            self.handled,
            self.requests,
            self.activity.0,
            self.activity.1,
            self.activity.2
        )
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn prometheus(&self) -> String {
        let mut o = String::with_capacity(4096);
        header(
            &mut o,
            "upkeep_requests_total",
            "counter",
            "Responses sent to clients, by status code.",
        );
        for (code, n) in &self.codes {
            let _ = writeln!(o, "upkeep_requests_total{{code=\"{code}\"}} {n}");
        }
        header(
            &mut o,
            "upkeep_connections_accepted_total",
            "counter",
            "Client connections accepted.",
        );
        let _ = writeln!(o, "upkeep_connections_accepted_total {}", self.accepted);
        header(
            &mut o,
            "upkeep_connections_handled_total",
            "counter",
            "Client connections handled (not refused at capacity).",
        );
        let _ = writeln!(o, "upkeep_connections_handled_total {}", self.handled);
        header(
            &mut o,
            "upkeep_spliced_bytes_total",
            "counter",
            "Body bytes moved socket to socket with splice(2), never copied (limits.splice_min).",
        );
        let _ = writeln!(o, "upkeep_spliced_bytes_total {}", self.spliced_bytes);
        header(
            &mut o,
            "upkeep_pipes",
            "gauge",
            "Pipes of zero-copy bodies: used (holding a connection's bytes) and free (kept empty).",
        );
        let _ = writeln!(o, "upkeep_pipes{{state=\"used\"}} {}", self.pipes.0);
        let _ = writeln!(o, "upkeep_pipes{{state=\"free\"}} {}", self.pipes.1);
        header(
            &mut o,
            "upkeep_held_bytes",
            "gauge",
            "Bytes received for connections whose reading is paused, held until it resumes (io_uring).",
        );
        let _ = writeln!(o, "upkeep_held_bytes {}", self.held_bytes);
        header(
            &mut o,
            "upkeep_held_bytes_max",
            "gauge",
            "The most bytes one connection held while its reading was paused, since start (io_uring).",
        );
        let _ = writeln!(o, "upkeep_held_bytes_max {}", self.held_max);
        header(
            &mut o,
            "upkeep_connections_active",
            "gauge",
            "Open client connections.",
        );
        let _ = writeln!(o, "upkeep_connections_active {}", self.active());

        let servers: [ServerMetric; 5] = [
            (
                "upkeep_upstream_connects_total",
                "counter",
                "Upstream connections opened.",
                |s| s.connects,
            ),
            (
                "upkeep_upstream_connect_failures_total",
                "counter",
                "Upstream connections that failed to open.",
                |s| s.connect_failures,
            ),
            (
                "upkeep_upstream_preconnects_total",
                "counter",
                "Warm upstream connections opened in the background (min_idle).",
                |s| s.preconnects,
            ),
            (
                "upkeep_upstream_requests_total",
                "counter",
                "Requests sent to each server.",
                |s| s.requests,
            ),
            (
                "upkeep_upstream_up",
                "gauge",
                "1 when every worker considers the server up (passive health).",
                |s| u64::from(s.up),
            ),
        ];
        for (name, kind, help, get) in servers {
            header(&mut o, name, kind, help);
            for ((up, srv), s) in &self.servers {
                // A gauge only for servers a live worker serves: one a reload removed must not
                // report `up 0` forever (its counters stay: they are history).
                if kind == "gauge" && s.live_reports == 0 {
                    continue;
                }
                let _ = writeln!(
                    o,
                    "{name}{{upstream=\"{}\",server=\"{}\"}} {}",
                    esc(up),
                    esc(srv),
                    get(s)
                );
            }
        }
        let groups: [GroupMetric; 4] = [
            (
                "upkeep_pool_hits_total",
                "counter",
                "Requests that reused an idle pooled connection.",
                |g| g.pool_hits,
            ),
            (
                "upkeep_pool_misses_total",
                "counter",
                "Requests that had to open an upstream connection.",
                |g| g.pool_misses,
            ),
            (
                "upkeep_pool_idle_connections",
                "gauge",
                "Idle pooled upstream connections.",
                |g| g.idle,
            ),
            (
                "upkeep_upstream_handovers_total",
                "counter",
                "Idle pooled connections handed to another worker whose request was first in line for the server's max_conns slot (moved, not closed).",
                |g| g.handovers,
            ),
        ];
        for (name, kind, help, get) in groups {
            header(&mut o, name, kind, help);
            for (up, g) in &self.groups {
                let _ = writeln!(o, "{name}{{upstream=\"{}\"}} {}", esc(up), get(g));
            }
        }
        let by_reason: [ReasonFamily; 2] = [
            (
                "upkeep_pool_evictions_total",
                "Idle pooled connections closed without reuse, by reason.",
                |g| &g.evictions,
            ),
            (
                "upkeep_upstream_not_reused_total",
                "Upstream connections that carried a request and closed instead of returning to the pool, by reason.",
                |g| &g.not_reused,
            ),
        ];
        for (name, help, get) in by_reason {
            header(&mut o, name, "counter", help);
            for (up, g) in &self.groups {
                for (reason, n) in get(g) {
                    let _ = writeln!(
                        o,
                        "{name}{{upstream=\"{}\",reason=\"{reason}\"}} {n}",
                        esc(up)
                    );
                }
            }
        }
        header(
            &mut o,
            "upkeep_retries_total",
            "counter",
            "Requests sent again: after a stale pooled connection, or to the next server.",
        );
        for (up, g) in &self.groups {
            let _ = writeln!(
                o,
                "upkeep_retries_total{{upstream=\"{}\",reason=\"stale_connection\"}} {}",
                esc(up),
                g.stale_retries
            );
            let _ = writeln!(
                o,
                "upkeep_retries_total{{upstream=\"{}\",reason=\"next_upstream\"}} {}",
                esc(up),
                g.next_upstream
            );
        }
        self.queue_and_states(&mut o);
        self.health_checks(&mut o);
        header(
            &mut o,
            "upkeep_request_duration_seconds",
            "histogram",
            "Time from the first byte of a request to the end of its response.",
        );
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.duration.counts[i];
            let _ = writeln!(
                o,
                "upkeep_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.duration.counts[BUCKETS.len()];
        let _ = writeln!(
            o,
            "upkeep_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            o,
            "upkeep_request_duration_seconds_sum {}",
            self.duration.sum
        );
        let _ = writeln!(
            o,
            "upkeep_request_duration_seconds_count {}",
            self.duration.count
        );
        if !self.traffic.is_empty() {
            let live =
                |k: &(String, String)| self.servers.get(k).is_some_and(|s| s.live_reports > 0);
            upstream_metrics::render(&mut o, &self.traffic, &live);
        }
        o
    }
}

impl Snapshot {
    /// The queue per group (length, waits, 503s by cause) and each server's state (one series
    /// per state, only for servers a live worker reports on).
    fn queue_and_states(&self, o: &mut String) {
        header(
            o,
            "upkeep_upstream_queue_length",
            "gauge",
            "Requests waiting for a server slot (max_conns), every worker together.",
        );
        for (up, g) in &self.groups {
            let _ = writeln!(
                o,
                "upkeep_upstream_queue_length{{upstream=\"{}\"}} {}",
                esc(up),
                g.queued
            );
        }
        header(
            o,
            "upkeep_upstream_queue_wait_seconds",
            "summary",
            "Time requests waited in the queue (dispatched, timed out or abandoned).",
        );
        for (up, g) in &self.groups {
            let up = esc(up);
            let secs = g.queue_wait_nanos as f64 / 1e9;
            let _ = writeln!(
                o,
                "upkeep_upstream_queue_wait_seconds_sum{{upstream=\"{up}\"}} {secs}"
            );
            let _ = writeln!(
                o,
                "upkeep_upstream_queue_wait_seconds_count{{upstream=\"{up}\"}} {}",
                g.queue_waits
            );
        }
        header(
            o,
            "upkeep_upstream_rejected_total",
            "counter",
            "Requests answered 503 by the queue, by cause.",
        );
        for (up, g) in &self.groups {
            let up = esc(up);
            for (reason, n) in [
                ("queue_full", g.queue_full),
                ("queue_timeout", g.queue_timeouts),
            ] {
                let _ = writeln!(
                    o,
                    "upkeep_upstream_rejected_total{{upstream=\"{up}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        header(
            o,
            "upkeep_upstream_server_state",
            "gauge",
            "A server's administrative state: 1 for the state it is in, 0 for the others.",
        );
        for ((up, addr), s) in &self.servers {
            let Some(state) = s.state else { continue };
            for st in [ServerState::Up, ServerState::Drain, ServerState::Down] {
                let _ = writeln!(
                    o,
                    "upkeep_upstream_server_state{{upstream=\"{}\",server=\"{}\",state=\"{}\"}} {}",
                    esc(up),
                    esc(addr),
                    st.as_str(),
                    u8::from(st == state)
                );
            }
        }
    }
}

/// A per-server metric: name, type, help, and how to read it.
type ServerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ServerSnapshot) -> u64,
);

/// A per-group metric: name, type, help, and how to read it.
type GroupMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&GroupSnapshot) -> u64,
);

/// `# HELP` and `# TYPE` of a metric family.
pub(crate) fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// Label value escaping (backslash, quote, newline), per the text format.
pub(crate) fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_text() {
        let mut s = Snapshot::default();
        s.duration.observe(0.0005);
        s.duration.observe(0.2);
        s.duration.observe(100.0);
        let text = s.prometheus();
        assert!(text.contains("upkeep_request_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("upkeep_request_duration_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("upkeep_request_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("upkeep_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("upkeep_request_duration_seconds_count 3\n"));
    }

    #[test]
    fn stub_status_is_nginx_format() {
        let s = Snapshot {
            accepted: 7,
            handled: 6,
            requests: 20,
            activity: (1, 2, 3),
            ..Snapshot::default()
        };
        assert_eq!(
            s.stub_status(),
            "Active connections: 6 \nserver accepts handled requests\n 7 6 20 \nReading: 1 Writing: 2 Waiting: 3 \n"
        );
    }

    #[test]
    fn up_is_a_conjunction_over_live_workers() {
        let key = ("app".to_string(), "127.0.0.1:1".to_string());
        let mut a = Snapshot::default();
        a.servers.insert(
            key.clone(),
            ServerSnapshot {
                connects: 2,
                up: true,
                live_reports: 1,
                ..ServerSnapshot::default()
            },
        );
        let mut b = a.clone();
        b.servers.get_mut(&key).unwrap().up = false;
        let mut total = Snapshot::default();
        total.add(&a);
        assert!(total.servers[&key].up);
        total.add(&b);
        assert!(!total.servers[&key].up);
        assert_eq!(total.servers[&key].connects, 4);
        let mut with_retired = Snapshot::default();
        with_retired.add(&a.clone().retired());
        with_retired.add(&a);
        assert!(with_retired.servers[&key].up);
    }

    /// One group, one server, every field non-zero, a label value that needs escaping.
    fn sample() -> Snapshot {
        let mut s = Snapshot {
            accepted: 3,
            handled: 2,
            requests: 5,
            activity: (1, 0, 1),
            spliced_bytes: 65536,
            pipes: (1, 2),
            held_bytes: 4096,
            held_max: 8192,
            ..Snapshot::default()
        };
        s.codes.insert(200, 4);
        s.codes.insert(502, 1);
        let mut evictions = BTreeMap::new();
        evictions.insert("idle_timeout", 2);
        let mut not_reused = BTreeMap::new();
        not_reused.insert("connection_close", 1);
        s.groups.insert(
            "app\"x".into(),
            GroupSnapshot {
                pool_hits: 3,
                pool_misses: 1,
                idle: 1,
                evictions,
                not_reused,
                stale_retries: 1,
                next_upstream: 2,
                queued: 2,
                queue_waits: 5,
                queue_wait_nanos: 1_500_000_000,
                queue_full: 1,
                queue_timeouts: 3,
                handovers: 4,
            },
        );
        s.servers.insert(
            ("app\"x".into(), "127.0.0.1:1".into()),
            ServerSnapshot {
                connects: 2,
                connect_failures: 1,
                preconnects: 1,
                requests: 4,
                up: true,
                live_reports: 1,
                state: Some(ServerState::Drain),
                checks: None,
            },
        );
        s.duration.observe(0.003);
        s
    }

    #[test]
    fn no_state_series_for_a_server_only_retired_workers_report() {
        // A reload removed the server: the old generation's totals still carry its counters,
        // but no live worker reports a state for it.
        let mut total = Snapshot::default();
        total.add(&sample().retired());
        let text = total.prometheus();
        assert!(!text.contains("upkeep_upstream_server_state{"), "{text}");
        assert!(text.contains("upkeep_upstream_requests_total{upstream=\"app\\\"x\""));
        total.add(&sample());
        assert!(total.prometheus().contains("state=\"drain\"} 1"));
    }

    /// The whole page, byte for byte: scrapers and dashboards depend on its names and order.
    #[test]
    fn full_text_is_stable() {
        assert_eq!(sample().prometheus(), EXPECTED);
    }

    const EXPECTED: &str = r#"# HELP upkeep_requests_total Responses sent to clients, by status code.
# TYPE upkeep_requests_total counter
upkeep_requests_total{code="200"} 4
upkeep_requests_total{code="502"} 1
# HELP upkeep_connections_accepted_total Client connections accepted.
# TYPE upkeep_connections_accepted_total counter
upkeep_connections_accepted_total 3
# HELP upkeep_connections_handled_total Client connections handled (not refused at capacity).
# TYPE upkeep_connections_handled_total counter
upkeep_connections_handled_total 2
# HELP upkeep_spliced_bytes_total Body bytes moved socket to socket with splice(2), never copied (limits.splice_min).
# TYPE upkeep_spliced_bytes_total counter
upkeep_spliced_bytes_total 65536
# HELP upkeep_pipes Pipes of zero-copy bodies: used (holding a connection's bytes) and free (kept empty).
# TYPE upkeep_pipes gauge
upkeep_pipes{state="used"} 1
upkeep_pipes{state="free"} 2
# HELP upkeep_held_bytes Bytes received for connections whose reading is paused, held until it resumes (io_uring).
# TYPE upkeep_held_bytes gauge
upkeep_held_bytes 4096
# HELP upkeep_held_bytes_max The most bytes one connection held while its reading was paused, since start (io_uring).
# TYPE upkeep_held_bytes_max gauge
upkeep_held_bytes_max 8192
# HELP upkeep_connections_active Open client connections.
# TYPE upkeep_connections_active gauge
upkeep_connections_active 2
# HELP upkeep_upstream_connects_total Upstream connections opened.
# TYPE upkeep_upstream_connects_total counter
upkeep_upstream_connects_total{upstream="app\"x",server="127.0.0.1:1"} 2
# HELP upkeep_upstream_connect_failures_total Upstream connections that failed to open.
# TYPE upkeep_upstream_connect_failures_total counter
upkeep_upstream_connect_failures_total{upstream="app\"x",server="127.0.0.1:1"} 1
# HELP upkeep_upstream_preconnects_total Warm upstream connections opened in the background (min_idle).
# TYPE upkeep_upstream_preconnects_total counter
upkeep_upstream_preconnects_total{upstream="app\"x",server="127.0.0.1:1"} 1
# HELP upkeep_upstream_requests_total Requests sent to each server.
# TYPE upkeep_upstream_requests_total counter
upkeep_upstream_requests_total{upstream="app\"x",server="127.0.0.1:1"} 4
# HELP upkeep_upstream_up 1 when every worker considers the server up (passive health).
# TYPE upkeep_upstream_up gauge
upkeep_upstream_up{upstream="app\"x",server="127.0.0.1:1"} 1
# HELP upkeep_pool_hits_total Requests that reused an idle pooled connection.
# TYPE upkeep_pool_hits_total counter
upkeep_pool_hits_total{upstream="app\"x"} 3
# HELP upkeep_pool_misses_total Requests that had to open an upstream connection.
# TYPE upkeep_pool_misses_total counter
upkeep_pool_misses_total{upstream="app\"x"} 1
# HELP upkeep_pool_idle_connections Idle pooled upstream connections.
# TYPE upkeep_pool_idle_connections gauge
upkeep_pool_idle_connections{upstream="app\"x"} 1
# HELP upkeep_upstream_handovers_total Idle pooled connections handed to another worker whose request was first in line for the server's max_conns slot (moved, not closed).
# TYPE upkeep_upstream_handovers_total counter
upkeep_upstream_handovers_total{upstream="app\"x"} 4
# HELP upkeep_pool_evictions_total Idle pooled connections closed without reuse, by reason.
# TYPE upkeep_pool_evictions_total counter
upkeep_pool_evictions_total{upstream="app\"x",reason="idle_timeout"} 2
# HELP upkeep_upstream_not_reused_total Upstream connections that carried a request and closed instead of returning to the pool, by reason.
# TYPE upkeep_upstream_not_reused_total counter
upkeep_upstream_not_reused_total{upstream="app\"x",reason="connection_close"} 1
# HELP upkeep_retries_total Requests sent again: after a stale pooled connection, or to the next server.
# TYPE upkeep_retries_total counter
upkeep_retries_total{upstream="app\"x",reason="stale_connection"} 1
upkeep_retries_total{upstream="app\"x",reason="next_upstream"} 2
# HELP upkeep_upstream_queue_length Requests waiting for a server slot (max_conns), every worker together.
# TYPE upkeep_upstream_queue_length gauge
upkeep_upstream_queue_length{upstream="app\"x"} 2
# HELP upkeep_upstream_queue_wait_seconds Time requests waited in the queue (dispatched, timed out or abandoned).
# TYPE upkeep_upstream_queue_wait_seconds summary
upkeep_upstream_queue_wait_seconds_sum{upstream="app\"x"} 1.5
upkeep_upstream_queue_wait_seconds_count{upstream="app\"x"} 5
# HELP upkeep_upstream_rejected_total Requests answered 503 by the queue, by cause.
# TYPE upkeep_upstream_rejected_total counter
upkeep_upstream_rejected_total{upstream="app\"x",reason="queue_full"} 1
upkeep_upstream_rejected_total{upstream="app\"x",reason="queue_timeout"} 3
# HELP upkeep_upstream_server_state A server's administrative state: 1 for the state it is in, 0 for the others.
# TYPE upkeep_upstream_server_state gauge
upkeep_upstream_server_state{upstream="app\"x",server="127.0.0.1:1",state="up"} 0
upkeep_upstream_server_state{upstream="app\"x",server="127.0.0.1:1",state="drain"} 1
upkeep_upstream_server_state{upstream="app\"x",server="127.0.0.1:1",state="down"} 0
# HELP upkeep_request_duration_seconds Time from the first byte of a request to the end of its response.
# TYPE upkeep_request_duration_seconds histogram
upkeep_request_duration_seconds_bucket{le="0.001"} 0
upkeep_request_duration_seconds_bucket{le="0.0025"} 0
upkeep_request_duration_seconds_bucket{le="0.005"} 1
upkeep_request_duration_seconds_bucket{le="0.01"} 1
upkeep_request_duration_seconds_bucket{le="0.025"} 1
upkeep_request_duration_seconds_bucket{le="0.05"} 1
upkeep_request_duration_seconds_bucket{le="0.1"} 1
upkeep_request_duration_seconds_bucket{le="0.25"} 1
upkeep_request_duration_seconds_bucket{le="0.5"} 1
upkeep_request_duration_seconds_bucket{le="1"} 1
upkeep_request_duration_seconds_bucket{le="2.5"} 1
upkeep_request_duration_seconds_bucket{le="10"} 1
upkeep_request_duration_seconds_bucket{le="+Inf"} 1
upkeep_request_duration_seconds_sum 0.003
upkeep_request_duration_seconds_count 1
"#;
}
