//! A closed-loop load through the simulated network: `clients` keep-alive clients, each with one
//! request outstanding, for a number of rounds; the backends answer in an order shuffled by a
//! seed. Used by the churn test and the `keepalive` example to show how many upstream
//! connections a pool configuration opens under steady concurrency.

use super::Harness;
use super::http::{read_request, read_responses};
use crate::{Config, ConnId};

/// What a load run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests answered (all 200).
    pub requests: u64,
    /// Upstream connections opened.
    pub upstream_connects: u64,
    /// Requests that reused an idle pooled connection.
    pub pool_hits: u64,
    /// Idle connections closed because the pool was full at release.
    pub capacity_evictions: u64,
}

impl LoadReport {
    /// Share of requests served on a reused connection.
    pub fn hit_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.pool_hits as f64 / self.requests as f64
        }
    }
}

/// Runs `rounds` rounds of `clients` concurrent requests through a core built from `config`.
pub fn closed_loop(config: Config, clients: usize, rounds: usize, seed: u64) -> LoadReport {
    let mut h = Harness::new(config);
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64: deterministic shuffling without a dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let conns: Vec<ConnId> = (0..clients).map(|_| h.connect_client()).collect();
    let mut requests = 0;
    for round in 0..rounds {
        for (i, &c) in conns.iter().enumerate() {
            let req = format!("GET /c{i}/r{round} HTTP/1.1\r\nHost: load\r\n\r\n");
            h.client_send(c, req.as_bytes());
        }
        // Every busy upstream connection answers, in a shuffled order.
        let mut busy: Vec<ConnId> = h
            .upstreams
            .iter()
            .filter(|(_, e)| !e.closed && !e.received.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for i in (1..busy.len()).rev() {
            busy.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        for u in busy {
            let req = h.take_upstream(u);
            let (m, _) = read_request(&req).expect("a complete request");
            let body = m.path;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            h.upstream_send(u, resp.as_bytes());
        }
        for (i, &c) in conns.iter().enumerate() {
            let got = h.take_client(c);
            let (rs, _) = read_responses(&got, &[], false);
            assert_eq!(rs.len(), 1, "client {i} round {round}");
            assert_eq!(
                rs[0].body,
                format!("/c{i}/r{round}").as_bytes(),
                "its own response"
            );
            requests += 1;
        }
    }
    let s = h.core.stats();
    LoadReport {
        requests,
        upstream_connects: s.servers.iter().map(|s| s.connects).sum(),
        pool_hits: s.groups.iter().map(|g| g.pool_hits).sum(),
        capacity_evictions: s
            .groups
            .iter()
            .map(|g| g.evicted(crate::pool::EvictReason::Capacity))
            .sum(),
    }
}
