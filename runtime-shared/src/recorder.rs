//! What a worker records of each finished exchange for operators: the counters behind
//! `/metrics` and `/status`, and the access log line. One per worker, owned by the thread that
//! owns the worker's [`Core`], so recording takes no lock.
//!
//! A runtime's part is small: [`Recorder::attach`] when the core is built; after acting on the
//! outputs of an input, [`Recorder::exchange`] for each [`Core::poll_exchange`] (an exchange
//! carries everything its line needs, the client's address included); [`Recorder::flush`] once
//! per loop pass; [`Recorder::snapshot`] when the admin listener asks.

use std::io;

use upkeep_core::framing::Version;
use upkeep_core::{Config, Core, ExchangeInfo, Time};

use crate::access_log::{self, AccessLog, Entry, Tried};
use crate::metrics::{Snapshot, WorkerCounters};
use crate::trouble::{self, Health};

/// A worker's counters and access log.
#[derive(Debug)]
pub struct Recorder {
    counters: WorkerCounters,
    log: Option<AccessLog>,
    health: Health,
}

impl Recorder {
    /// A recorder for `config`: opens the access log `runtime.access_log` names, if any (the
    /// error names the file, so a runtime can fail its start with it).
    pub fn open(config: &Config) -> io::Result<Recorder> {
        let log = match access_log::target(config) {
            Some(target) => Some(AccessLog::open_as(
                target,
                config.runtime.access_log_format,
            )?),
            None => None,
        };
        Ok(Recorder {
            counters: WorkerCounters::default(),
            log,
            health: Health::default(),
        })
    }

    /// Tells `core` what to record: every exchange (they feed the status-code counters and the
    /// histograms), with its request line and id (the operator log names them next to upstream
    /// trouble), and Host, Referer and User-Agent only when there is an access log to write them.
    pub fn attach(&self, core: &mut Core) {
        core.record_exchanges(true);
        core.record_requests(true);
        core.record_request_fields(self.log.is_some());
    }

    /// Records a finished exchange: the counters, upstream trouble in the operator log, and
    /// its access log line if there is a log.
    pub fn exchange(&mut self, core: &Core, ex: &ExchangeInfo) {
        self.counters.record(ex);
        self.counters.traffic.record(core, ex);
        trouble::exchange(core, ex);
        let failed = ex.tries.iter().any(|t| t.failure.is_some());
        self.health.watch(core, ex.finished, failed);
        let Some(log) = &mut self.log else {
            return;
        };
        let secs = |from: Time, to: Option<Time>| to.map(|t| t.since(from).as_secs_f64());
        let tries = ex
            .tries
            .iter()
            .map(|t| Tried {
                addr: core.server_address(t.server).to_string(),
                status: (t.status != 0).then_some(t.status),
                connect_time: secs(t.started, t.connected),
                header_time: secs(t.started, t.header),
                response_time: secs(t.started, t.ended),
                reused: t.reused,
                failure: t.failure,
            })
            .collect();
        log.record(&Entry {
            client: ex.peer,
            request: &ex.request,
            version: match ex.version {
                Version::Http10 => "HTTP/1.0",
                Version::Http11 => "HTTP/1.1",
            },
            status: ex.status,
            bytes_sent: ex.bytes_sent,
            upstream: ex.server.map(|s| core.server_address(s).to_string()),
            reused: ex.reused,
            // Only an upstream's response has a response time; our own answers (a 502 after a
            // failed attempt included) have none.
            response: ex
                .response_at
                .filter(|_| ex.tries.last().is_some_and(|t| t.header.is_some()))
                .map(|t| t.since(ex.started).as_secs_f64()),
            total: ex.finished.since(ex.started).as_secs_f64(),
            body_bytes_sent: ex.body_bytes_sent,
            host: &ex.fields.host,
            referer: &ex.fields.referer,
            user_agent: &ex.fields.user_agent,
            request_id: &ex.fields.request_id,
            tries,
            end: ex.end.as_str(),
        });
    }

    /// Writes the access log lines recorded since the last flush.
    pub fn flush(&mut self) {
        if let Some(log) = &mut self.log {
            log.flush();
        }
    }

    /// Once per loop pass: logs servers whose passive health changed with no exchange to show
    /// it (one marked up again when its `fail_timeout` passed). Looks at most once a second.
    pub fn tick(&mut self, core: &Core, now: Time) {
        self.health.watch(core, now, false);
    }

    /// Reopens the access log file (after log rotation).
    pub fn reopen(&mut self) {
        if let Some(log) = &mut self.log {
            log.reopen();
        }
    }

    /// The worker's snapshot: what `core` counted and what this recorder counted.
    pub fn snapshot(&self, core: &Core, now: Time) -> Snapshot {
        Snapshot::of(core, &self.counters, now)
    }
}

/// A request id prefix for worker `worker` ([`Core::set_request_id_prefix`]): the process id,
/// the wall clock and the worker mixed (splitmix64), so ids differ across workers, processes and
/// restarts.
pub fn request_id_prefix(worker: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 32) ^ worker.rotate_left(48);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
