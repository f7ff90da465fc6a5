//! Timeouts: which deadline the core arms and when — the client's header (a total deadline
//! counted from accept), body, send and keepalive timeouts, the upstream's send and read
//! timeouts; that read and body timers restart when the proxy resumes reading after
//! backpressure (nginx counts "between two successive read operations"), that keepalive
//! idleness starts only once the last byte is written, and that no deadline is ever in the past.
//! The engine is driven through its public API by the in-memory harness
//! (`upkeep_core::sim::Harness`), whose clock the tests advance.

use core::time::Duration;

use upkeep_core::sim::Harness;

mod common;
use common::*;

/// nginx starts `keepalive_timeout` only once the response is completely sent
/// (`ngx_http_finalize_connection` keeps a connection with unsent output on the write handler
/// and `send_timeout`; `ngx_http_set_keepalive` runs after). Here the response is queued for a
/// client that reads slowly but within `send_timeout`: the keepalive timer must not cut the
/// response it is still writing.
#[test]
fn keepalive_timer_does_not_cut_a_response_still_being_written() {
    let mut cfg = config(1);
    cfg.client_timeouts.keepalive = secs(5);
    cfg.client_timeouts.send = secs(60);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(c, &get("/slow-reader"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    h.upstream_send(u, &ok("the whole answer"));
    assert!(
        h.core.pending_len(c) > 0,
        "response queued for the slow client"
    );
    h.advance(secs(10));
    assert!(
        !h.clients[&c].closed,
        "closed by the keepalive timer while its response was still queued (send timeout is 60s)"
    );
    h.stall(c, false);
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"the whole answer");
    // Now the connection is really idle: keepalive applies from here.
    h.advance(secs(6));
    assert!(
        h.clients[&c].closed,
        "idle keepalive timeout after the flush"
    );
}

/// nginx arms `client_header_timeout` at accept and never re-arms it while the head is
/// incomplete (`ngx_http_read_request_header`: `if (!rev->timer_set)`), and upkeep documents the
/// header timeout as "a total deadline, not per read". A new connection that sends its first
/// byte just before the deadline must not get a second full header timeout.
#[test]
fn first_request_header_deadline_counts_from_accept() {
    let mut cfg = config(1);
    cfg.client_timeouts.header = secs(10);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let accepted = h.now;
    assert_eq!(h.core.poll_timeout(), Some(accepted.plus(secs(10))));
    h.advance(secs(9));
    h.client_send(c, b"G");
    assert!(
        h.core.poll_timeout().unwrap() <= accepted.plus(secs(10)),
        "one byte moved the header deadline to {:?} (accepted at {:?}, header timeout 10 s)",
        h.core.poll_timeout().unwrap(),
        accepted
    );
    h.advance(secs(2));
    // Cut at 10 s: a 408 and a lingering close (half-closed, then closed at the client's EOF or
    // the lingering timeout).
    assert!(
        h.clients[&c].shutdown || h.clients[&c].closed,
        "head not complete 11 s after accept"
    );
    assert!(h.take_client(c).starts_with(b"HTTP/1.1 408 "));
}

#[test]
fn client_that_pauses_mid_body_then_resumes_is_relayed() {
    let mut cfg = streaming(config(1));
    cfg.client_timeouts.body = secs(5);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let body = body_of(10_000, 41);
    h.client_send(c, &post_head("/p", body.len()));
    let u = h.last_upstream().unwrap();
    let mut last = h.now;
    for piece in body.chunks(2500) {
        // The body timer is re-armed by every piece.
        assert_eq!(h.core.poll_timeout(), Some(last.plus(secs(5))));
        h.advance(secs(4));
        h.client_send(c, piece);
        last = h.now;
    }
    // Body complete: the read timeout of the upstream (60 s) is the only deadline.
    assert_eq!(h.core.poll_timeout(), Some(h.now.plus(secs(60))));
    let r = requests(&mut h, u);
    assert!(r[0].body == body);
    h.upstream_send(u, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

/// Mirror for `client_body_timeout` ("between two successive read operations"): while the
/// proxy refuses to read the body (the upstream is not accepting it), the client cannot be
/// blamed. After the upstream catches up the client gets a fresh body timeout.
#[test]
fn client_body_timeout_restarts_when_upstream_backpressure_ends() {
    let mut cfg = config(1);
    cfg.client_timeouts.body = secs(5);
    cfg.upstreams[0].send_timeout = secs(60);
    cfg.limits.max_body = 0;
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    let total = 600 * KIB;
    let body = body_of(total, 13);
    let mut first = post_head("/up", total);
    first.extend_from_slice(&body[..300 * KIB]);
    h.client_send(c, &first);
    let u = h.connects[0];
    h.stall(u, true);
    h.accept_connect();
    assert!(
        !h.clients[&c].reading,
        "backpressure: client not read while the upstream queue is full"
    );
    h.advance(secs(20));
    assert!(
        !h.clients[&c].closed,
        "no body timeout while we refuse to read"
    );
    h.stall(u, false);
    timers_ok(&h, "after the upstream caught up");
    assert!(h.clients[&c].reading, "reading the client again");
    h.advance(secs(1));
    assert!(
        !h.upstreams[&u].closed && h.clients[&c].received.is_empty(),
        "408 at once: the 20 s the proxy refused to read were counted against the client"
    );
    h.client_send(c, &body[300 * KIB..]);
    let r = requests(&mut h, u);
    assert_eq!(r.len(), 1);
    assert!(r[0].body == body);
    h.upstream_send(u, &ok("done"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

/// A client sending a body slowly while the upstream reads slowly: the body timeout restarts
/// when reading resumes, and a client that then sends nothing is timed out.
#[test]
fn body_timeout_still_fires_after_reading_resumes() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &post_head("/p", 1000 * KIB));
    let u = h.last_upstream().unwrap();
    h.stall(u, true);
    h.client_send(c, &body_of(300 * KIB, 3));
    h.advance(secs(50));
    h.stall(u, false);
    h.take_upstream(u);
    // Reading resumed; the client now sends nothing.
    h.advance(secs(59));
    assert!(h.core.is_open(c));
    h.advance(secs(2));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1, "body timeout must fire");
    assert_eq!(rs[0].status, 408);
    h.advance(secs(6));
    assert!(!h.core.is_open(c), "lingering ends");
    assert!(!h.core.is_open(u));
    no_leaks(&mut h);
}

/// nginx answers 504 for every upstream timeout (`NGX_HTTP_UPSTREAM_FT_TIMEOUT`), including
/// `proxy_send_timeout` (ngx_http_upstream_send_request_handler). Rule 31 treats send timeout as a
/// timeout.
#[test]
fn upstream_send_timeout_answers_504() {
    let mut cfg = config(1);
    cfg.upstreams[0].send_timeout = Duration::from_secs(1);
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/x"));
    let u = h.connects[0];
    // The backend accepts but never reads: nothing of the request can be written.
    h.stall(u, true);
    h.accept_connect();
    assert!(h.core.pending_len(u) > 0, "request stuck in the queue");
    h.advance(Duration::from_millis(1100));
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].status, 504, "a send timeout is a gateway timeout");
}

#[test]
fn read_timeout_starts_when_the_request_is_fully_sent() {
    let mut cfg = streaming(config(1));
    cfg.upstreams[0].read_timeout = secs(5);
    cfg.client_timeouts.body = secs(30);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(c, &post_head("/slow", 4));
    let u = h.last_upstream().unwrap();
    // The body trickles in over 16 s: no read timeout while the request is incomplete.
    for b in b"abcd".chunks(1) {
        h.advance(secs(4));
        h.client_send(c, b);
    }
    assert!(!h.upstreams[&u].closed);
    h.advance(Duration::from_millis(4900));
    assert!(!h.upstreams[&u].closed);
    h.advance(Duration::from_millis(200));
    assert!(
        h.upstreams[&u].closed,
        "read timeout 5 s after the request was sent"
    );
    assert_eq!(responses(&mut h, c)[0].status, 504);
}

#[test]
fn upstream_read_timeout_resets_on_each_response_byte() {
    let mut cfg = config(1);
    cfg.upstreams[0].read_timeout = secs(5);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(c, &get("/drip"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    let resp = ok("0123456789");
    for b in resp.chunks(1) {
        h.advance(secs(4));
        assert!(!h.upstreams[&u].closed);
        h.upstream_send(u, b);
        timers_ok(&h, "drip");
    }
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].body, b"0123456789");
    assert!(h.core.is_pooled(u));
}

/// `proxy_read_timeout` is "between two successive read operations". While the proxy itself
/// does not read the upstream (the client's queue is full), no read can happen; nginx re-arms
/// the read timer from now whenever it resumes (`ngx_http_upstream_process_non_buffered_request`
/// calls `ngx_add_timer(upstream->read, read_timeout)` on each pass). Here the client stalls for
/// 20 s (within its 60 s send timeout) while the upstream's read timeout is 5 s; when the client
/// catches up, the upstream has 5 s to send the rest, not 0.
#[test]
fn upstream_read_timeout_restarts_when_client_backpressure_ends() {
    let mut cfg = config(1);
    cfg.upstreams[0].read_timeout = secs(5);
    cfg.client_timeouts.send = secs(60);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(c, &get("/big"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    let total = 2 * 1024 * KIB;
    let first = body_of(total / 2, 7);
    let second = body_of(total / 2, 11);
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").into_bytes();
    resp.extend_from_slice(&first);
    h.upstream_send(u, &resp);
    assert!(!h.upstreams[&u].reading, "backpressure: upstream not read");
    h.advance(secs(20));
    assert!(!h.clients[&c].closed, "client within its send timeout");
    h.stall(c, false);
    timers_ok(&h, "after the client caught up");
    assert!(h.upstreams[&u].reading, "reading the upstream again");
    h.advance(secs(1));
    assert!(
        !h.clients[&c].reset && !h.upstreams[&u].closed,
        "read timeout fired at once: the 20 s the proxy refused to read were counted"
    );
    h.upstream_send(u, &second);
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body.len(), total);
    assert!(rs[0].body[..total / 2] == first[..] && rs[0].body[total / 2..] == second[..]);
}

/// The upstream sends part of a body then goes silent; the client trickles. Each time the
/// client's queue drops below the high-water mark the read timeout restarts, but once
/// everything buffered is relayed it runs out: the connection does not live forever.
#[test]
fn silent_upstream_behind_trickling_client_is_still_bounded() {
    let (mut h, c, u) = forwarded("/big");
    h.stall(c, true);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n");
    h.upstream_send(u, &body_of(600 * KIB, 7));
    let start = h.now;
    let mut rounds = 0;
    while h.core.is_open(c) && rounds < 200 {
        h.partial_write(c, 16 * KIB);
        h.advance(secs(30));
        rounds += 1;
    }
    assert!(
        !h.core.is_open(c),
        "still open after {:?}",
        h.now.since(start)
    );
    assert!(h.clients[&c].reset, "truncated body must end in a reset");
    assert!(!h.core.is_open(u));
    no_leaks(&mut h);
}

#[test]
fn no_deadline_in_the_past_through_a_whole_keepalive_life() {
    let mut h = harness();
    let c = h.connect_client();
    timers_ok(&h, "accept");
    for i in 0..3 {
        h.client_send(c, &get(&format!("/{i}")));
        timers_ok(&h, "request");
        let u = busy_upstream(&h).unwrap();
        requests(&mut h, u);
        h.advance(secs(1));
        h.upstream_send(u, &ok("x"));
        timers_ok(&h, "response");
        assert_eq!(responses(&mut h, c).len(), 1);
        h.advance(secs(2));
        timers_ok(&h, "idle");
    }
    // Client keepalive (75 s) goes first, then the pooled connection's idle timeout (60 s from
    // its checkin)...
    h.advance(secs(200));
    assert!(h.clients[&c].closed);
    assert_eq!(h.core.connections(), 0);
    assert_eq!(h.core.poll_timeout(), None);
}
