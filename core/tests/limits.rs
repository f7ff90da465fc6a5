//! Connection limits: the client connection cap (`max_client_connections`: refuse at the cap,
//! accept again after a close; upstream connections never count) and the per-server upstream
//! cap (`max_conns`: a 502 beyond it, and slots that survive connect failures and retries).
//! The engine is driven through its public API by the in-memory harness
//! (`upkeep_core::sim::Harness`), plus direct `Core::accept` calls.

use upkeep_core::config::Balance;
use upkeep_core::sim::Harness;
use upkeep_core::{ConnId, ListenerId};

mod common;
use common::*;

#[test]
fn accept_refuses_at_the_cap_and_accepts_again_after_a_close() {
    let mut cfg = config(1);
    cfg.limits.max_client_connections = 2;
    let mut h = Harness::new(cfg);
    let a = h.connect_client();
    let _b = h.connect_client();
    let now = h.now;
    assert!(h.core.accept(now, ListenerId(0), Some(ip(9))).is_err());
    assert_eq!(h.core.stats().refused, 1);
    // a sends a request with Connection: close; once answered it closes.
    let (_, rs) = exchange(
        &mut h,
        a,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        &ok("x"),
    );
    assert_eq!(rs[0].status, 200);
    assert!(h.clients[&a].closed);
    assert_eq!(h.core.client_connections(), 1);
    let c = h.connect_client();
    assert!(h.core.is_open(c));
    // Upstream connections never count against the client cap.
    assert!(h.core.connections() > h.core.client_connections());
}

#[test]
fn max_conns_with_concurrency_answers_502_beyond_the_cap() {
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 2;
    // Without a queue (nginx open source's semantics); with one, see tests/queue.rs.
    cfg.upstreams[0].queue = 0;
    let mut h = Harness::new(cfg);
    let cs: Vec<ConnId> = (0..3).map(|_| h.connect_client()).collect();
    for &c in &cs {
        h.client_send(c, &get("/"));
    }
    assert_eq!(connects(&h), 2);
    assert_eq!(responses(&mut h, cs[2])[0].status, 502);
    for u in h.open_upstreams() {
        requests(&mut h, u);
        h.upstream_send(u, &ok("x"));
    }
    // Slots released: a new request gets a (pooled) connection.
    let (_, rs) = exchange(&mut h, cs[0], &get("/again"), &ok("y"));
    assert_eq!(rs[0].status, 200);
}

#[test]
fn max_conns_slots_survive_connect_failures_and_retries() {
    // least_conn, max_conns=1 on both servers. A connect failure on one and the retry on the
    // other must leave both counts at zero afterwards: two concurrent requests then both run.
    let mut cfg = config(2);
    cfg.upstreams[0].balance = Balance::LeastConn;
    for s in &mut cfg.upstreams[0].servers {
        s.max_conns = 1;
        s.max_fails = 0;
    }
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/a"));
    h.refuse_connect();
    let u = h.accept_connect().unwrap();
    requests(&mut h, u);
    h.upstream_send(u, &ok("a"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    // Stale pooled connection: retried on a fresh connection, counts balanced again.
    h.client_send(c, &get("/b"));
    requests(&mut h, u);
    h.upstream_eof(u);
    let fresh = h.accept_connect().unwrap();
    requests(&mut h, fresh);
    h.upstream_send(fresh, &ok("b"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    // Two concurrent requests: one per server, nobody refused for max_conns.
    let d = h.connect_client();
    let e = h.connect_client();
    h.client_send(d, &get("/d"));
    h.client_send(e, &get("/e"));
    while h.accept_connect().is_some() {}
    let busy: Vec<ConnId> = h
        .upstreams
        .iter()
        .filter(|(_, ep)| !ep.received.is_empty() && !ep.closed)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(busy.len(), 2, "both requests forwarded");
    let servers: Vec<_> = busy.iter().map(|u| h.upstreams[u].server).collect();
    assert_ne!(servers[0], servers[1]);
    for u in busy {
        requests(&mut h, u);
        h.upstream_send(u, &ok("z"));
    }
    assert_eq!(responses(&mut h, d)[0].status, 200);
    assert_eq!(responses(&mut h, e)[0].status, 200);
}
