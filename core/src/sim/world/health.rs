//! Active health checks in the simulation: the scripted backends answer a group's check path as
//! their `check_fails` pattern says, and the world checks the rules the checks must keep — a
//! request sent while its server's checks held it out (and still do, without a flip since)
//! never reaches that server; at most one check result per server per interval for the
//! process; a check's answer never reaches a client (clients already reject any response that
//! is not to their own request, and check answers carry the check path as their id).

use core::time::Duration;

use super::World;
use crate::ConnId;

impl World {
    /// Whether `id` (a request target without its query) is group `group`'s check path.
    pub(super) fn is_check(&self, group: usize, id: &str) -> bool {
        self.harness.core.config().upstreams[group]
            .health_check
            .as_ref()
            .is_some_and(|h| h.path == id)
    }

    /// Per server (global order): the checks' verdict now — failed, and how many times it
    /// changed so far.
    pub(super) fn verdicts(&self) -> Vec<(bool, u64)> {
        let core = &self.harness.core;
        core.servers()
            .iter()
            .map(|s| {
                core.shared()
                    .checks(s.upstream.0 as usize, s.index as usize)
                    .map_or((false, 0), |v| (v.streak.failed, v.changes))
            })
            .collect()
    }

    /// The backend answers a check on `u`: `500` or `200` by its script's pattern, keep-alive.
    pub(super) fn answer_check(&mut self, u: ConnId, path: &str) {
        let now = self.harness.now;
        let up = self.ups.get_mut(&u).expect("known");
        up.last_active = now;
        up.close_delimited = false;
        let server = up.server;
        let k = self.check_count[server];
        self.check_count[server] += 1;
        let fail = self.scripts[server].check_fails >> (k % 32) & 1 == 1;
        let status = if fail { 500 } else { 200 };
        let wire =
            format!("HTTP/1.1 {status} X\r\nX-Req-Id: {path}\r\nContent-Length: 2\r\n\r\nok");
        self.write_split(u, wire.as_bytes(), false);
        self.schedule_idle(u);
    }

    /// Request `id` arrived at `server`: it must not have been sent while the server's checks
    /// held it out if they still do and the verdict never changed in between (every worker's
    /// balancer reads the verdict at each pick).
    pub(super) fn check_assignment(&mut self, id: &str, server: usize) {
        let Some(sent) = self.sent.get(id) else {
            return;
        };
        let then = sent.verdicts.get(server).copied();
        let now = self.verdicts().get(server).copied();
        if let (Some((true, c)), Some((true, c2))) = (then, now)
            && c == c2
        {
            self.violation(format!(
                "{id} reached server {server}, whose checks held it out from before the request \
                 was sent until now"
            ));
        }
    }

    /// At most one check result per server per interval for the process: from the start (the
    /// first round runs at once), `elapsed / interval + 1` results at most.
    pub(super) fn check_rounds(&self) -> Vec<String> {
        let core = &self.harness.core;
        let elapsed = self.harness.now.since(crate::Time::from_millis(1));
        let mut problems = Vec::new();
        for (i, s) in core.servers().iter().enumerate() {
            let g = s.upstream.0 as usize;
            let Some(h) = core.config().upstreams[g].health_check.as_ref() else {
                continue;
            };
            let Some(v) = core.shared().checks(g, s.index as usize) else {
                continue;
            };
            let results: u64 = v.results.iter().sum();
            let rounds = rounds_in(elapsed, h.interval);
            if results > rounds {
                problems.push(format!(
                    "server {i}: {results} check results in {elapsed:?}, at most {rounds} rounds \
                     of {:?}",
                    h.interval
                ));
            }
        }
        problems
    }
}

/// Check rounds that can start within `elapsed` of the first (which starts at once).
fn rounds_in(elapsed: Duration, interval: Duration) -> u64 {
    (elapsed.as_nanos() / interval.as_nanos().max(1)) as u64 + 1
}
