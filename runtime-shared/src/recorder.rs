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

use crate::access_log::{self, AccessLog, Entry};
use crate::metrics::{Snapshot, WorkerCounters};

/// A worker's counters and access log.
#[derive(Debug)]
pub struct Recorder {
    counters: WorkerCounters,
    log: Option<AccessLog>,
}

impl Recorder {
    /// A recorder for `config`: opens the access log `runtime.access_log` names, if any (the
    /// error names the file, so a runtime can fail its start with it).
    pub fn open(config: &Config) -> io::Result<Recorder> {
        let log = match access_log::target(config) {
            Some(target) => Some(AccessLog::open(target)?),
            None => None,
        };
        Ok(Recorder {
            counters: WorkerCounters::default(),
            log,
        })
    }

    /// Tells `core` what to record: every exchange (they feed the status-code counters and the
    /// duration histogram), and the request line only when there is an access log to write it.
    pub fn attach(&self, core: &mut Core) {
        core.record_exchanges(true);
        core.record_requests(self.log.is_some());
    }

    /// Records a finished exchange: the counters, and its access log line if there is a log.
    pub fn exchange(&mut self, core: &Core, ex: &ExchangeInfo) {
        self.counters.record(ex);
        let Some(log) = &mut self.log else {
            return;
        };
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
            // Only an upstream's response has a response time; our own answers have none.
            response: ex
                .response_at
                .filter(|_| ex.server.is_some())
                .map(|t| t.since(ex.started).as_secs_f64()),
            total: ex.finished.since(ex.started).as_secs_f64(),
        });
    }

    /// Writes the access log lines recorded since the last flush.
    pub fn flush(&mut self) {
        if let Some(log) = &mut self.log {
            log.flush();
        }
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
