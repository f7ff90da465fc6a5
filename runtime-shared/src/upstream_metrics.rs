//! Metrics per upstream group and server, from each exchange's upstream attempts: responses by
//! status class, the latency of answered requests and the connect and header times (histograms
//! whose buckets reach past the default 60 s timeouts), timeouts by kind, bytes relayed, and the
//! requests in flight. Our own answers (400, 404, 408, 413... and the 502/504 after a failed
//! attempt) never enter a latency histogram: only an attempt that got a response head does.
//!
//! A worker counts by global server index (no allocation per exchange); [`ServerTraffic`] in
//! a [`Snapshot`](crate::metrics::Snapshot) is keyed by (group name, server address) like the
//! other per-server series, so workers of different reload generations add up.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use upkeep_core::{Core, ExchangeInfo, Time};

use crate::metrics::{esc, header};

/// Upper bounds (seconds) of the upstream histograms: from 1 ms to 5 min, past every default
/// timeout (60 s), so a timeout lands in a bucket of its own instead of only in `+Inf`.
pub const UPSTREAM_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// A histogram over [`UPSTREAM_BUCKETS`] (each observation in exactly one slot; cumulative at
/// export).
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    /// Observations per bucket; the last slot is +Inf.
    pub counts: [u64; UPSTREAM_BUCKETS.len() + 1],
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: [0; UPSTREAM_BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Buckets {
    /// Counts one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let slot = UPSTREAM_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(UPSTREAM_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn add(&mut self, o: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// Timeout kinds counted per server, in export order.
pub const TIMEOUTS: [&str; 3] = ["connect_timeout", "read_timeout", "send_timeout"];

/// One server's traffic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerTraffic {
    /// Responses from the server by status class (index 1..=5 for 1xx..5xx).
    pub responses: [u64; 6],
    /// Seconds from the start of the attempt that got the response to the end of the exchange.
    pub latency: Buckets,
    /// Seconds to a connected socket (fresh connections only).
    pub connect: Buckets,
    /// Seconds from the start of an attempt to its response head.
    pub header: Buckets,
    /// Attempts that timed out, by [`TIMEOUTS`] kind.
    pub timeouts: [u64; TIMEOUTS.len()],
    /// Request body bytes forwarded to the server (answered exchanges).
    pub bytes_out: u64,
    /// Response bytes relayed from the server to clients (heads included, as sent).
    pub bytes_in: u64,
    /// Requests in flight now (a gauge; zero for retired workers).
    pub in_flight: u64,
}

impl ServerTraffic {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &ServerTraffic) {
        for (a, b) in self.responses.iter_mut().zip(o.responses) {
            *a += b;
        }
        self.latency.add(&o.latency);
        self.connect.add(&o.connect);
        self.header.add(&o.header);
        for (a, b) in self.timeouts.iter_mut().zip(o.timeouts) {
            *a += b;
        }
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.in_flight += o.in_flight;
    }
}

/// A worker's per-server traffic, by global server index.
#[derive(Clone, Debug, Default)]
pub struct TrafficCounters {
    servers: Vec<ServerTraffic>,
}

impl TrafficCounters {
    /// Counts the upstream attempts of `ex`.
    pub fn record(&mut self, core: &Core, ex: &ExchangeInfo) {
        if ex.tries.is_empty() {
            return;
        }
        let servers = core.servers();
        if self.servers.len() != servers.len() {
            self.servers
                .resize_with(servers.len(), ServerTraffic::default);
        }
        let secs = |from: Time, to: Time| to.since(from).as_secs_f64();
        for t in &ex.tries {
            let Some(i) = servers.iter().position(|&s| s == t.server) else {
                continue;
            };
            let s = &mut self.servers[i];
            if let (false, Some(c)) = (t.reused, t.connected) {
                s.connect.observe(secs(t.started, c));
            }
            if let Some(h) = t.header {
                s.header.observe(secs(t.started, h));
                s.responses[(t.status / 100) as usize % 6] += 1;
                s.latency
                    .observe(secs(t.started, t.ended.unwrap_or(ex.finished)));
                s.bytes_out += ex.bytes_received;
                s.bytes_in += ex.bytes_sent;
            }
            if let Some(k) = t
                .failure
                .and_then(|f| TIMEOUTS.iter().position(|&k| k == f))
            {
                s.timeouts[k] += 1;
            }
        }
    }

    /// Per (group name, server address): what this worker counted, with its in-flight gauge.
    pub fn snapshot(&self, core: &Core) -> BTreeMap<(String, String), ServerTraffic> {
        let config = core.config();
        let mut out = BTreeMap::new();
        for (i, &s) in core.servers().iter().enumerate() {
            let mut t = self.servers.get(i).cloned().unwrap_or_default();
            t.in_flight = u64::from(core.server_in_flight(s));
            let key = (
                config.upstreams[s.upstream.0 as usize].name.clone(),
                core.server_address(s).to_string(),
            );
            out.insert(key, t);
        }
        out
    }
}

/// A histogram family: name, help, and which histogram of a server.
type HistogramFamily = (&'static str, &'static str, fn(&ServerTraffic) -> &Buckets);

/// A counter family: name, help, and how to read it.
type CounterFamily = (&'static str, &'static str, fn(&ServerTraffic) -> u64);

/// The Prometheus text of `traffic`, labelled by `upstream` and `server`; `live` says which
/// servers a live worker still serves (a gauge is only exported for those).
pub fn render(
    o: &mut String,
    traffic: &BTreeMap<(String, String), ServerTraffic>,
    live: &dyn Fn(&(String, String)) -> bool,
) {
    let labels =
        |(up, srv): &(String, String)| format!("upstream=\"{}\",server=\"{}\"", esc(up), esc(srv));
    header(
        o,
        "upkeep_upstream_responses_total",
        "counter",
        "Responses from each server, by status class.",
    );
    for (key, t) in traffic {
        for (class, n) in t.responses.iter().enumerate().skip(1) {
            let _ = writeln!(
                o,
                "upkeep_upstream_responses_total{{{},code=\"{class}xx\"}} {n}",
                labels(key)
            );
        }
    }
    let histograms: [HistogramFamily; 3] = [
        (
            "upkeep_upstream_request_duration_seconds",
            "From the start of the attempt a server answered to the end of the response (only requests a server answered).",
            |t| &t.latency,
        ),
        (
            "upkeep_upstream_connect_duration_seconds",
            "Time to open a connection to each server.",
            |t| &t.connect,
        ),
        (
            "upkeep_upstream_header_duration_seconds",
            "From the start of an attempt to the server's response head.",
            |t| &t.header,
        ),
    ];
    for (name, help, get) in histograms {
        header(o, name, "histogram", help);
        for (key, t) in traffic {
            let h = get(t);
            let l = labels(key);
            let mut cumulative = 0;
            for (i, le) in UPSTREAM_BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(o, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
            }
            cumulative += h.counts[UPSTREAM_BUCKETS.len()];
            let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(o, "{name}_sum{{{l}}} {}", h.sum);
            let _ = writeln!(o, "{name}_count{{{l}}} {}", h.count);
        }
    }
    header(
        o,
        "upkeep_upstream_timeouts_total",
        "counter",
        "Attempts on each server that timed out, by kind.",
    );
    for (key, t) in traffic {
        for (kind, n) in TIMEOUTS.iter().zip(t.timeouts) {
            let _ = writeln!(
                o,
                "upkeep_upstream_timeouts_total{{{},kind=\"{kind}\"}} {n}",
                labels(key)
            );
        }
    }
    let bytes: [CounterFamily; 2] = [
        (
            "upkeep_upstream_sent_bytes_total",
            "Request body bytes forwarded to each server (requests it answered).",
            |t| t.bytes_out,
        ),
        (
            "upkeep_upstream_received_bytes_total",
            "Response bytes from each server relayed to clients, heads included.",
            |t| t.bytes_in,
        ),
    ];
    for (name, help, get) in bytes {
        header(o, name, "counter", help);
        for (key, t) in traffic {
            let _ = writeln!(o, "{name}{{{}}} {}", labels(key), get(t));
        }
    }
    header(
        o,
        "upkeep_upstream_requests_in_flight",
        "gauge",
        "Requests in flight on each server.",
    );
    for (key, t) in traffic.iter().filter(|(k, _)| live(k)) {
        let _ = writeln!(
            o,
            "upkeep_upstream_requests_in_flight{{{}}} {}",
            labels(key),
            t.in_flight
        );
    }
}

/// Adds every server of `o` into `into`.
pub fn add(
    into: &mut BTreeMap<(String, String), ServerTraffic>,
    o: &BTreeMap<(String, String), ServerTraffic>,
) {
    for (key, t) in o {
        into.entry(key.clone()).or_default().add(t);
    }
}
