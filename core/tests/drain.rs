//! Drain (graceful shutdown): once `Core::begin_drain` is called no connection is accepted and
//! no new request is forwarded; a client between requests closes at once, the exchange under
//! way is answered with `Connection: close`, a response still being flushed (or held behind a
//! deferred upstream EOF) is delivered whole before the close, a fresh connection is waited for
//! only until its header timeout, and the drain then completes. The engine is driven through
//! its public API by the in-memory harness (`upkeep_core::sim::Harness`).

use core::time::Duration;

use upkeep_core::ListenerId;
use upkeep_core::sim::http::read_responses;

mod common;
use common::*;

#[test]
fn draining_refuses_new_accepts() {
    let mut h = harness();
    // One client between requests, one that has not sent its first request yet.
    let idle = h.connect_client();
    exchange(&mut h, idle, &get("/1"), &ok("one"));
    let fresh = h.connect_client();
    let now = h.now;
    h.core.begin_drain(now);
    h.pump();
    assert!(h.clients[&idle].closed, "between requests: closed at once");
    assert!(h.core.accept(now, ListenerId(0), Some(ip(1))).is_err());
    // The fresh connection's request is about to arrive (nginx waits for it too): closing
    // now would answer it with a reset. It is served, with Connection: close.
    assert!(!h.clients[&fresh].closed);
    assert!(!h.core.is_drained());
    let (_, rs) = exchange(&mut h, fresh, &get("/2"), &ok("two"));
    assert_eq!(rs[0].body, b"two");
    assert_eq!(rs[0].header("connection"), Some("close"));
    assert!(h.clients[&fresh].closed);
    assert!(h.core.is_drained());
}

#[test]
fn draining_waits_for_a_silent_fresh_connection_only_until_its_header_timeout() {
    let mut h = harness();
    let fresh = h.connect_client();
    let now = h.now;
    h.core.begin_drain(now);
    h.pump();
    assert!(!h.core.is_drained());
    h.advance(h.core.config().client_timeouts.header);
    assert!(h.clients[&fresh].closed);
    assert!(h.core.is_drained());
}

#[test]
fn drain_with_pipelined_requests_answers_the_current_one_with_close() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &[get("/1"), get("/2")].concat());
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    let now = h.now;
    h.core.begin_drain(now);
    h.pump();
    h.upstream_send(u, &ok("one"));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].header("connection"), Some("close"));
    assert!(h.clients[&c].closed);
    assert!(h.core.is_drained());
    assert_eq!(connects(&h), 1);
}

/// Drain starts while a finished exchange's response is still being flushed to a slow client
/// (phase Idle, output queued). Once the output is flushed the connection must close (the drain
/// must complete), and a further request on it must not be forwarded upstream.
#[test]
fn drain_closes_an_idle_client_once_its_queued_response_is_flushed() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    h.upstream_send(u, &ok("done"));
    assert!(h.core.pending_len(c) > 0);
    let now = h.now;
    h.core.begin_drain(now);
    h.pump();
    h.stall(c, false);
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].body, b"done");
    // Give the engine a moment (well below every timeout) to finish the drain.
    h.advance(Duration::from_millis(10));
    assert!(
        h.clients[&c].closed || h.clients[&c].shutdown,
        "draining: the client connection must close after its last response"
    );
    assert!(h.core.is_drained(), "drain completes promptly");
}

/// Variant: while draining, the idle-but-flushing client sends another request. It must not be
/// forwarded upstream (we are shutting down, the pool is empty, new connections are wasteful).
#[test]
fn draining_core_never_forwards_a_new_request_from_a_flushing_client() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    h.upstream_send(u, &ok("done"));
    let now = h.now;
    h.core.begin_drain(now);
    h.pump();
    let before = connects(&h);
    h.client_send(c, &get("/2"));
    assert_eq!(
        connects(&h),
        before,
        "a request arriving after the drain began is not proxied"
    );
}

#[test]
fn drain_while_idle_client_still_flushes_delivers_then_closes() {
    let (mut h, c, u) = forwarded("/1");
    h.stall(c, true);
    let big = body_of(HW * 2, 21);
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    resp.extend_from_slice(&big);
    let mut got = Vec::new();
    h.upstream_send(u, &resp);
    while h.core.is_open(u) && !h.core.is_pooled(u) {
        got.extend(h.partial_write(c, 64 * KIB));
    }
    assert_eq!(h.core.client_activity().2, 1, "client idle, still flushing");
    // Slow but within send_timeout, for longer than keepalive_timeout.
    for _ in 0..3 {
        h.advance(secs(50));
        got.extend(h.partial_write(c, 1024));
    }
    h.advance(secs(50));
    h.core.begin_drain(h.now);
    h.pump();
    assert!(h.core.is_open(c), "response still being written");
    h.client_send(c, &get("/late"));
    h.stall(c, false);
    got.extend(h.take_client(c));
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    let (rs, used) = read_responses(&got, &[], true);
    assert_eq!(used, got.len());
    assert_eq!(rs.len(), 1);
    assert!(rs[0].body == big);
    assert!(h.core.is_drained());
    no_leaks(&mut h);
}

#[test]
fn drain_while_upstream_eof_deferred_completes_then_closes() {
    let (mut h, c, _, _, body) = deferred_close_delimited(&get("/s"));
    h.core.begin_drain(h.now);
    h.pump();
    assert!(!h.clients[&c].closed);
    let mut got = h.partial_write(c, 100 * KIB);
    h.stall(c, false);
    got.extend(h.take_client(c));
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    let (rs, used) = read_responses(&got, &[], true);
    assert_eq!(used, got.len());
    assert_eq!(rs.len(), 1);
    assert!(rs[0].body == body, "body cut short");
    assert!(h.core.is_drained());
    no_leaks(&mut h);
}
