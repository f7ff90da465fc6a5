//! The operator log's account of upstream trouble, from what the core reports (the core itself
//! never logs): a failed connect with its errno ([`connect_failed`]), each exchange whose
//! upstream attempts failed ([`exchange`]: `warn` when a retry saved it, `error` when the
//! client got our own 502/503/504 or a response the server cut short), and servers marked down or up by passive health
//! ([`Health`]). Every line names the group, the server, the client, the request line and the
//! request id, so one grep finds an incident.

use std::fmt::Write as _;
use std::time::Duration;

use upkeep_core::framing::Version;
use upkeep_core::{Core, End, ExchangeInfo, ServerId, ServerOut, Time};

/// How often [`Health::watch`] looks at every server when nothing failed meanwhile (a server
/// comes back up when its `fail_timeout` passes, with no event to announce it).
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// `upstream "GROUP" server ADDR`.
fn server_name(core: &Core, s: ServerId) -> String {
    format!(
        "upstream {:?} server {}",
        core.config().upstreams[s.upstream.0 as usize].name,
        core.server_address(s)
    )
}

/// A connect to `server` failed with `error` (logged by the runtime that saw the errno).
pub fn connect_failed(core: &Core, server: ServerId, error: &std::io::Error) {
    log::warn!("{}: connect failed: {error}", server_name(core, server));
}

/// `client 1.2.3.4, "GET / HTTP/1.1", request_id ID`: who asked for what.
fn context(ex: &ExchangeInfo) -> String {
    let mut c = String::from("client ");
    match ex.peer {
        Some(ip) => {
            let _ = write!(c, "{ip}");
        }
        None => c.push_str("unix:"),
    }
    if !ex.request.is_empty() {
        let v = match ex.version {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        };
        let _ = write!(
            c,
            ", \"{} {v}\"",
            String::from_utf8_lossy(&ex.request).escape_debug()
        );
    }
    if !ex.fields.request_id.is_empty() {
        let _ = write!(
            c,
            ", request_id {}",
            String::from_utf8_lossy(&ex.fields.request_id)
        );
    }
    c
}

/// Whether the client got an answer we made because upstreams failed (or none was usable).
pub fn answered_by_us_after_failure(ex: &ExchangeInfo) -> bool {
    match ex.tries.last() {
        Some(t) => t.failure.is_some() && ex.status >= 500,
        None => ex.status == 502 || ex.status == 503,
    }
}

/// Logs `ex` if one of its upstream attempts failed or none could be made. A stale pooled
/// connection re-sent on a fresh one (the keepalive race) is routine: `debug`, unless something
/// else went wrong too.
pub fn exchange(core: &Core, ex: &ExchangeInfo) {
    let failed = ex.tries.iter().any(|t| t.failure.is_some() && !t.stale());
    let ours = answered_by_us_after_failure(ex);
    let stale = ex.tries.iter().any(|t| t.stale()) && log::log_enabled!(log::Level::Debug);
    if !(failed || ours || stale) {
        return;
    }
    let mut attempts = String::new();
    for t in &ex.tries {
        if !attempts.is_empty() {
            attempts.push_str(", then ");
        }
        let lasted = t.ended.map(|e| e.since(t.started).as_secs_f64());
        let _ = write!(attempts, "{}", core.server_address(t.server));
        match (t.failure, lasted) {
            (Some(f), Some(s)) => {
                let _ = write!(attempts, " {f} after {s:.3}s");
            }
            (Some(f), None) => {
                let _ = write!(attempts, " {f}");
            }
            (None, _) => {
                let _ = write!(attempts, " answered {}", t.status);
            }
        }
    }
    let group = ex.tries.first().map(|t| {
        core.config().upstreams[t.server.upstream.0 as usize]
            .name
            .as_str()
    });
    let group = group.map_or_else(String::new, |g| format!("upstream {g:?}: "));
    if ex.end == End::UpstreamFailed {
        log::error!(
            "{group}response cut short ({} {}): {attempts}",
            context(ex),
            ex.status
        );
    } else if ours {
        if attempts.is_empty() {
            attempts.push_str("no server available");
        }
        log::error!(
            "{group}answered {} ({}): {attempts}",
            ex.status,
            context(ex)
        );
    } else if failed {
        log::warn!("{group}retried ({}): {attempts}", context(ex));
    } else {
        log::debug!(
            "{group}retried a stale pooled connection ({}): {attempts}",
            context(ex)
        );
    }
}

/// When this worker last looked at the servers' usability, to log the changes.
#[derive(Debug, Default)]
pub struct Health {
    checked: Option<Time>,
}

impl Health {
    /// Logs servers marked down (`warn`) or up again (`info`) since the last look: at once
    /// after a failure (`failed`), else at most once a second.
    pub fn watch(&mut self, core: &Core, now: Time, failed: bool) {
        let due = self
            .checked
            .is_none_or(|t| now.since(t) >= HEALTH_EVERY || t > now);
        if !failed && !due {
            return;
        }
        self.checked = Some(now);
        for &s in core.servers() {
            let out = core.server_out_because(now, s);
            // Every worker sees each change; the one that claims it says it (a claim on every
            // look: the worker that saw a server go out may be idle when it comes back).
            if !core.claim_usability_report(s, out.is_none()) {
                continue;
            }
            let cfg = &core.config().upstreams[s.upstream.0 as usize].servers[s.index as usize];
            let name = server_name(core, s);
            match out {
                None => log::info!("{name} marked up again"),
                Some(ServerOut::Failures) => log::warn!(
                    "{name} marked down: {} failures (max_fails), tried again after {:?} (fail_timeout)",
                    cfg.max_fails,
                    cfg.fail_timeout
                ),
                Some(ServerOut::HealthCheck) => {
                    log::warn!("{name} marked down: its health check fails")
                }
                Some(ServerOut::State(state)) => {
                    log::warn!("{name} taken out of use: state {}", state.as_str())
                }
            }
        }
    }
}
