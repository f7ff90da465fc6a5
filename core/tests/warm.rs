//! Warm connections (`min_idle`), driven through the core's public API by the in-memory
//! harness: they open at start and are topped up when a request takes one; a failed warm
//! connect backs off (100 ms, then 200 ms) without marking the server down; and a backend's
//! `Keep-Alive: timeout`, once seen, also shortens the warm connections pooled before it, which
//! are then replaced; and a warm connection's replacement opens shortly before it expires.

use core::time::Duration;

use upkeep_core::UpstreamId;
use upkeep_core::sim::Harness;

mod common;
use common::*;

fn warm(min_idle: usize, auto_connect: bool) -> Harness {
    let mut cfg = config(1);
    cfg.upstreams[0].min_idle = min_idle;
    let mut h = Harness::new(cfg);
    h.auto_connect = auto_connect;
    h.core.start(h.now);
    h.pump();
    h
}

fn preconnects(h: &Harness) -> u64 {
    h.core.stats().servers[0].preconnects
}

#[test]
fn warm_connections_open_at_start_and_are_topped_up() {
    let mut h = warm(2, true);
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 2);
    assert_eq!((preconnects(&h), connects(&h)), (2, 2));
    let c = h.connect_client();
    let (_, rs) = exchange(&mut h, c, &get("/"), &ok("x"));
    assert_eq!(rs.len(), 1);
    // The request took a warm connection (a pool hit); one more opened to keep two ready,
    // and the used one came back.
    assert_eq!(h.core.stats().groups[0].pool_hits, 1);
    assert_eq!(preconnects(&h), 3);
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 3);
    upstreams_accounted(&h.core);
}

#[test]
fn failed_warm_connects_back_off_without_marking_the_server_down() {
    let mut h = warm(2, false);
    assert_eq!(h.connects.len(), 2);
    h.refuse_connect();
    h.refuse_connect();
    assert!(h.connects.is_empty(), "no retry at the same instant");
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.now.plus(Duration::from_millis(100))),
        "the runtime is woken for the retry"
    );
    h.advance(Duration::from_millis(50));
    assert!(h.connects.is_empty(), "still backing off");
    h.advance(Duration::from_millis(60));
    assert_eq!(h.connects.len(), 2, "retried after 100 ms");
    h.refuse_connect();
    h.refuse_connect();
    h.advance(Duration::from_millis(150));
    assert!(h.connects.is_empty(), "the back-off doubled");
    h.advance(Duration::from_millis(60));
    assert_eq!(h.connects.len(), 2);
    let now = h.now;
    let server = h.core.servers()[0];
    assert!(
        h.core.server_up(now, server),
        "warm failures are not request failures"
    );
    h.accept_connect();
    h.accept_connect();
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 2);
}

#[test]
fn a_keep_alive_hint_shortens_the_warm_connections_pooled_before_it() {
    let mut h = warm(1, true);
    let c = h.connect_client();
    // `timeout=3`: idle for 2 s at most (1 s margin), counted from each warm connect.
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: timeout=3\r\n\r\nx";
    exchange(&mut h, c, &get("/"), resp);
    let evicted = |h: &Harness| h.core.stats().groups[0].evictions.iter().sum::<u64>();
    assert_eq!((preconnects(&h), evicted(&h)), (2, 0));
    h.advance(Duration::from_millis(1900));
    assert_eq!(evicted(&h), 0);
    h.advance(Duration::from_millis(200));
    // Both the used connection and the warm one pooled before the hint expired at 2 s; one
    // warm replacement opened.
    assert_eq!(evicted(&h), 2);
    assert_eq!(preconnects(&h), 3);
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 1);
}

#[test]
fn a_warm_connection_is_replaced_before_it_expires() {
    // keepalive_timeout 60 s: the replacement opens 250 ms ahead of the expiry, so the server
    // always has one warm connection ready, never zero while a replacement connects.
    let mut h = warm(1, true);
    h.advance(Duration::from_millis(59_700));
    assert_eq!((preconnects(&h), h.core.pool_idle(UpstreamId(0))), (1, 1));
    h.advance(Duration::from_millis(100));
    assert_eq!((preconnects(&h), h.core.pool_idle(UpstreamId(0))), (2, 2));
    h.advance(Duration::from_millis(300));
    assert_eq!((preconnects(&h), h.core.pool_idle(UpstreamId(0))), (2, 1));
    assert_eq!(
        h.core.stats().groups[0].evictions[0],
        1,
        "the old one expired"
    );
}
