//! Pooling: which upstream connections go back to the pool and how the pool holds them — a
//! `Keep-Alive: timeout=0` response is not pooled, a pool keyed by client with a cap evicts the
//! least recently used and never lends one client's connection to another, sequential clients
//! share one idle connection, and once every client has gone the pooled connections expire and
//! no timer is left armed. The engine is driven through its public API by the in-memory
//! harness (`upkeep_core::sim::Harness`).

use core::time::Duration;

use upkeep_core::UpstreamId;
use upkeep_core::config::PoolKeyMode;
use upkeep_core::sim::Harness;

mod common;
use common::*;

#[test]
fn pool_stats_count_one_idle_connection_after_sequential_clients() {
    let mut h = harness();
    for i in 0..3 {
        let c = h.connect_client();
        exchange(&mut h, c, &get(&format!("/{i}")), &ok("x"));
        h.client_eof(c);
        assert!(h.clients[&c].closed);
    }
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 1);
    assert_eq!(h.core.connections(), 1);
}

#[test]
fn keep_alive_timeout_zero_delivers_content_and_is_not_pooled() {
    let (mut h, c) = {
        let mut h = harness();
        let c = h.connect_client();
        (h, c)
    };
    let (u, rs) = exchange(
        &mut h,
        c,
        &get("/"),
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=0\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(rs[0].body, b"hello");
    assert_eq!(rs[0].header("keep-alive"), None);
    assert!(!h.core.is_pooled(u));
    assert!(h.upstreams[&u].closed);
    let (u2, rs) = exchange(&mut h, c, &get("/2"), &ok("x"));
    assert_eq!(rs[0].status, 200);
    assert_ne!(u2, u);
}

#[test]
fn pool_keyed_by_client_with_several_clients_and_a_cap() {
    let mut cfg = config(1);
    cfg.upstreams[0].pool_key = PoolKeyMode::Client;
    cfg.upstreams[0].keepalive = 2;
    let mut h = Harness::new(cfg);
    let mut conn_of = Vec::new();
    for i in 1..=3u8 {
        let c = h.connect_client_from(ip(i));
        let (u, rs) = exchange(&mut h, c, &get("/"), &ok("x"));
        assert_eq!(rs[0].status, 200);
        conn_of.push((c, u));
    }
    // Cap 2: the least recently used (client 1's) was evicted.
    assert_eq!(h.core.pool_idle(upkeep_core::UpstreamId(0)), 2);
    assert!(h.upstreams[&conn_of[0].1].closed);
    // Each client reuses only its own connection; client 1 gets a new one.
    for (i, &(c, u)) in conn_of.iter().enumerate().rev() {
        let before = connects(&h);
        let (u2, _) = exchange(&mut h, c, &get("/again"), &ok("y"));
        if i == 0 {
            assert_eq!(connects(&h), before + 1);
            assert!(conn_of.iter().all(|&(_, x)| x != u2));
        } else {
            assert_eq!(u2, u, "client {i} reuses its own connection");
        }
    }
    // A fourth client never gets someone else's connection.
    let d = h.connect_client_from(ip(4));
    let before = connects(&h);
    exchange(&mut h, d, &get("/d"), &ok("z"));
    assert_eq!(connects(&h), before + 1);
}

#[test]
fn everything_closes_and_no_timer_is_left_armed() {
    let mut cfg = config(2);
    cfg.upstreams[0].keepalive_timeout = Duration::from_secs(2);
    let mut h = Harness::new(cfg);
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = h.connect_client();
        exchange(&mut h, c, &get(&format!("/{i}")), &ok("x"));
        clients.push(c);
    }
    // A client mid-body, a client mid-head, a tunnel.
    let cb = h.connect_client();
    h.client_send(
        cb,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab",
    );
    let ch = h.connect_client();
    h.client_send(ch, b"GET / HTT");
    for c in clients.iter().chain([&cb, &ch]) {
        h.client_eof(*c);
    }
    assert_eq!(h.core.client_connections(), 0);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.core.connections(), 0, "pooled connections expired");
    assert_eq!(h.core.poll_timeout(), None, "no timer left armed");
}
