//! Process-wide metrics, appended to `/metrics` by the admin listener: build information,
//! the standard `process_*` series of Prometheus client libraries (resident memory, open and
//! maximum file descriptors, CPU seconds, start time — read from Linux `/proc`, omitted where
//! unreadable), and configuration reloads by result.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::header as family;

/// Reloads so far, by result.
#[derive(Debug, Default)]
pub struct Reloads {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Reloads {
    /// Counts one reload: applied (`ok`) or refused (the old configuration kept running).
    pub fn record(&self, ok: bool) {
        let c = if ok { &self.ok } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (applied, refused).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// What `/proc` says about this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size in bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: Option<u64>,
    /// User + system CPU time in seconds.
    pub cpu_seconds: Option<f64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time: Option<f64>,
}

/// Reads the process's figures (Linux `/proc`; fields that cannot be read are `None`).
pub fn read() -> ProcessStats {
    let tick = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let after = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>());
    let field = |n: usize| -> Option<f64> { after.as_ref()?.get(n - 3)?.parse().ok() };
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let resident_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    ProcessStats {
        resident_bytes,
        open_fds,
        max_fds,
        // utime (14) + stime (15), in clock ticks.
        cpu_seconds: field(14)
            .zip(field(15))
            .filter(|_| tick > 0.0)
            .map(|(u, s)| (u + s) / tick),
        // starttime (22): clock ticks after boot.
        start_time: field(22)
            .zip(boot)
            .filter(|_| tick > 0.0)
            .map(|(t, b)| b + t / tick),
    }
}

/// Appends build info, the process series and the reload counters to `o`.
pub fn render(o: &mut String, p: &ProcessStats, reloads: &Reloads) {
    family(
        o,
        "upkeep_build_info",
        "gauge",
        "Always 1; the labels say which build runs.",
    );
    let _ = writeln!(
        o,
        "upkeep_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let series: [(&str, &str, &str, Option<f64>); 5] = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (soft limit).",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            p.start_time,
        ),
    ];
    for (name, kind, help, value) in series {
        if let Some(v) = value {
            family(o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
    }
    let (ok, failed) = reloads.counts();
    family(
        o,
        "upkeep_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP), by result: ok (applied) or failed (the old configuration kept running).",
    );
    let _ = writeln!(o, "upkeep_reloads_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(o, "upkeep_reloads_total{{result=\"failed\"}} {failed}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.max_fds.unwrap() >= p.open_fds.unwrap());
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        assert!(p.start_time.unwrap() > 1.6e9);
    }
}
