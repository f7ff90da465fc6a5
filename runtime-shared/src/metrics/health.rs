//! Active health check metrics: results by kind and the verdict, per server. The counts live in
//! the process-wide ledger (every worker's checks together), so a snapshot takes them from one
//! live worker instead of summing workers, and prints nothing for groups without
//! `health_check`.

use std::fmt::Write as _;

use upkeep_core::health::CheckResult;
use upkeep_core::{CheckView, Core, ServerId};

use super::{Snapshot, esc, header};

/// The checks of `server` as the ledger has them, if its group is checked.
pub(super) fn view(core: &Core, server: ServerId) -> Option<CheckView> {
    let (g, i) = (server.upstream.0 as usize, server.index as usize);
    core.config().upstreams[g].health_check.as_ref()?;
    core.shared().checks(g, i)
}

impl Snapshot {
    /// `upkeep_upstream_health_checks_total{upstream,server,result}` and
    /// `upkeep_upstream_health_check_up{upstream,server}` (1: the checks pass, 0: they hold the
    /// server out), for checked servers a live worker reports on.
    pub(super) fn health_checks(&self, o: &mut String) {
        let checked: Vec<_> = self
            .servers
            .iter()
            .filter_map(|(k, s)| Some((k, s.checks?)))
            .collect();
        if checked.is_empty() {
            return;
        }
        header(
            o,
            "upkeep_upstream_health_checks_total",
            "counter",
            "Active health checks by result, every worker together.",
        );
        for ((up, addr), v) in &checked {
            for r in CheckResult::ALL {
                let _ = writeln!(
                    o,
                    "upkeep_upstream_health_checks_total{{upstream=\"{}\",server=\"{}\",result=\"{}\"}} {}",
                    esc(up),
                    esc(addr),
                    r.as_str(),
                    v.count(r)
                );
            }
        }
        header(
            o,
            "upkeep_upstream_health_check_up",
            "gauge",
            "The active checks' verdict: 1 passing, 0 failed (fall reached, rise not yet).",
        );
        for ((up, addr), v) in &checked {
            let _ = writeln!(
                o,
                "upkeep_upstream_health_check_up{{upstream=\"{}\",server=\"{}\"}} {}",
                esc(up),
                esc(addr),
                u8::from(!v.streak.failed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ServerSnapshot;
    use super::*;
    use upkeep_core::health::Streak;

    #[test]
    fn series_only_for_checked_servers_and_taken_not_summed() {
        let key = ("app".to_string(), "127.0.0.1:1".to_string());
        let mut a = Snapshot::default();
        a.servers.insert(key.clone(), ServerSnapshot::default());
        assert!(!a.prometheus().contains("health_check"));
        let view = CheckView {
            results: [5, 2, 1, 0],
            streak: Streak {
                passes: 0,
                fails: 3,
                failed: true,
            },
            changes: 1,
        };
        a.servers.get_mut(&key).unwrap().checks = Some(view);
        a.servers.get_mut(&key).unwrap().live_reports = 1;
        let mut total = Snapshot::default();
        total.add(&a);
        total.add(&a);
        total.add(&a.clone().retired());
        let text = total.prometheus();
        for line in [
            "upkeep_upstream_health_checks_total{upstream=\"app\",server=\"127.0.0.1:1\",result=\"pass\"} 5",
            "upkeep_upstream_health_checks_total{upstream=\"app\",server=\"127.0.0.1:1\",result=\"fail\"} 2",
            "upkeep_upstream_health_checks_total{upstream=\"app\",server=\"127.0.0.1:1\",result=\"timeout\"} 1",
            "upkeep_upstream_health_checks_total{upstream=\"app\",server=\"127.0.0.1:1\",result=\"error\"} 0",
            "upkeep_upstream_health_check_up{upstream=\"app\",server=\"127.0.0.1:1\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
