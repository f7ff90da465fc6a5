//! TLS counters for the whole process: handshakes (full or resumed) and failures by reason,
//! per upstream server and per listener. Handshakes are what pooling saves, so they are rare
//! next to requests: one lock per handshake costs nothing measurable, and keeps the counters
//! off the core's per-worker stats.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Failure;
use crate::metrics::{esc, header};

/// Which side a counter is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// Toward upstream server `server` (its address) of group `upstream`.
    Upstream {
        /// The group's name.
        upstream: String,
        /// The server's address.
        server: String,
    },
    /// On the listener with this address.
    Listener(String),
}

#[derive(Debug, Default)]
struct Counts {
    handshakes: BTreeMap<(Side, bool), u64>,
    failures: BTreeMap<(Side, &'static str), u64>,
}

/// Handshakes and failures, shared by every worker of a process (and kept across reloads).
#[derive(Debug, Default)]
pub struct TlsStats {
    counts: Mutex<Counts>,
}

impl TlsStats {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a completed handshake.
    pub fn handshake(&self, side: Side, resumed: bool) {
        *self.counts().handshakes.entry((side, resumed)).or_default() += 1;
    }

    /// Counts a failed connection.
    pub fn failure(&self, side: Side, why: Failure) {
        *self
            .counts()
            .failures
            .entry((side, why.reason()))
            .or_default() += 1;
    }

    /// Every handshake counter: `(side, resumed, count)`.
    pub fn handshakes(&self) -> Vec<(Side, bool, u64)> {
        let c = self.counts();
        c.handshakes
            .iter()
            .map(|((s, r), n)| (s.clone(), *r, *n))
            .collect()
    }

    /// Every failure counter: `(side, reason, count)`.
    pub fn failures(&self) -> Vec<(Side, &'static str, u64)> {
        let c = self.counts();
        c.failures
            .iter()
            .map(|((s, r), n)| (s.clone(), *r, *n))
            .collect()
    }

    /// Handshakes of `side`: `(full, resumed)`.
    pub fn handshake_counts(&self, matches: impl Fn(&Side) -> bool) -> (u64, u64) {
        let c = self.counts();
        let mut out = (0, 0);
        for ((s, resumed), n) in &c.handshakes {
            if matches(s) {
                if *resumed {
                    out.1 += n;
                } else {
                    out.0 += n;
                }
            }
        }
        out
    }

    /// Prometheus text for the TLS counters (empty when nothing was counted: a proxy without
    /// TLS shows no TLS series).
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let c = self.counts();
        let mut o = String::new();
        let labels = |s: &Side| match s {
            Side::Upstream { upstream, server } => {
                format!("upstream=\"{}\",server=\"{}\"", esc(upstream), esc(server))
            }
            Side::Listener(addr) => format!("listener=\"{}\"", esc(addr)),
        };
        for (prefix, upstream) in [
            ("upkeep_upstream_tls", true),
            ("upkeep_listener_tls", false),
        ] {
            let ours = |s: &Side| matches!(s, Side::Upstream { .. }) == upstream;
            let name = format!("{prefix}_handshakes_total");
            let mut first = true;
            for ((s, resumed), n) in c.handshakes.iter().filter(|((s, _), _)| ours(s)) {
                if std::mem::take(&mut first) {
                    header(
                        &mut o,
                        &name,
                        "counter",
                        "Completed TLS handshakes, full or resumed.",
                    );
                }
                let _ = writeln!(o, "{name}{{{},resumed=\"{resumed}\"}} {n}", labels(s));
            }
            let name = format!("{prefix}_failures_total");
            let mut first = true;
            for ((s, why), n) in c.failures.iter().filter(|((s, _), _)| ours(s)) {
                if std::mem::take(&mut first) {
                    header(
                        &mut o,
                        &name,
                        "counter",
                        "Failed TLS connections, by reason.",
                    );
                }
                let _ = writeln!(o, "{name}{{{},reason=\"{why}\"}} {n}", labels(s));
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let stats = TlsStats::default();
        assert_eq!(stats.prometheus(), "");
        let up = Side::Upstream {
            upstream: "app".into(),
            server: "127.0.0.1:443".into(),
        };
        stats.handshake(up.clone(), false);
        stats.handshake(up.clone(), true);
        stats.handshake(up.clone(), true);
        stats.failure(up, Failure::CertExpired);
        stats.failure(Side::Listener("0.0.0.0:443".into()), Failure::PlainHttp);
        let text = stats.prometheus();
        for line in [
            "# TYPE upkeep_upstream_tls_handshakes_total counter\n",
            "upkeep_upstream_tls_handshakes_total{upstream=\"app\",server=\"127.0.0.1:443\",resumed=\"false\"} 1\n",
            "upkeep_upstream_tls_handshakes_total{upstream=\"app\",server=\"127.0.0.1:443\",resumed=\"true\"} 2\n",
            "upkeep_upstream_tls_failures_total{upstream=\"app\",server=\"127.0.0.1:443\",reason=\"cert_expired\"} 1\n",
            "upkeep_listener_tls_failures_total{listener=\"0.0.0.0:443\",reason=\"plain_http\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("upkeep_listener_tls_handshakes_total"));
    }
}
