//! Second adversarial review: backpressure toward the upstream, timers, connection limits,
//! balancing corner cases, retries and odd responses. The engine is driven through the public
//! API (the in-memory harness, plus a few direct `Core::handle` calls where a test needs a
//! partial write that the harness cannot express). Each test asserts what RFC 9110/9112, the
//! rules doc (`shared/docs/http-proxy-rules.md`) or nginx would do. Failing tests document
//! engine bugs.

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;

use upkeep_core::config::{Balance, PoolKeyMode};
use upkeep_core::sim::Harness;
use upkeep_core::sim::http::read_responses;
use upkeep_core::{ConnId, ListenerId, Output, Time};

mod common;
use common::*;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// No deadline the core asks for is already in the past.
fn timers_ok(h: &Harness, what: &str) {
    if let Some(t) = h.core.poll_timeout() {
        assert!(
            t >= h.now,
            "{what}: poll_timeout {:?} is in the past (now {:?})",
            t,
            h.now
        );
    }
}

// =====================================================================================
// Tests expected to FAIL (engine bugs)
// =====================================================================================

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

/// Chunked bytes of `body` in `size`-byte chunks, with the last chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The backend sends a complete chunked `Connection: close` response and closes. The client
/// reads slowly, so part of the body still sits in the proxy's read buffer (the relay stops at
/// a chunk boundary once the client's queue is full) when the client has drained just enough
/// for the proxy to read the upstream again — and that read is the EOF. Every byte, up to the
/// last chunk, was received: the client must get the whole body, not an abort.
#[test]
fn upstream_eof_with_body_still_buffered_behind_a_slow_client_is_not_a_truncation() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/file"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    let body = body_of(1024 * KIB, 17);
    let mut resp =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    resp.extend_from_slice(&chunked(&body, 16 * KIB));
    // The runtime reads 64 KiB at a time while the proxy lets it.
    for piece in resp.chunks(64 * KIB) {
        h.upstream_send(u, piece);
    }
    h.upstream_eof(u); // held by the harness: the proxy is not reading u
    assert!(!h.upstreams[&u].reading);
    // The client reads 100 KiB: below the high-water mark, the proxy reads u again: the rest
    // of the response, then the EOF.
    let mut got = h.partial_write(c, 100 * KIB);
    h.stall(c, false);
    got.extend_from_slice(&h.take_client(c));
    assert!(
        !h.clients[&c].reset,
        "client connection aborted after {} bytes (response is {} bytes): the EOF was taken \
         as a truncation although the whole response, last chunk included, had been received",
        got.len(),
        resp.len()
    );
    let (rs, _) = read_responses(&got, &[], true);
    assert_eq!(rs.len(), 1);
    assert!(rs[0].body == body);
}

/// Same with a close-delimited body re-chunked for an HTTP/1.1 client: here the bug is worse —
/// the proxy ends the chunked body cleanly (`0\r\n\r\n`) while most of it is still in its
/// buffer, so the client accepts a truncated body as complete (rule 21).
#[test]
fn close_delimited_body_buffered_behind_a_slow_client_is_never_cut_short_and_terminated() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/stream"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    let total = 1024 * KIB;
    let body = body_of(total, 19);
    let mut resp = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    resp.extend_from_slice(&body);
    h.upstream_send(u, &resp);
    h.upstream_eof(u);
    let mut got = h.partial_write(c, 100 * KIB);
    h.stall(c, false);
    got.extend_from_slice(&h.take_client(c));
    let (rs, _) = read_responses(&got, &[], h.clients[&c].closed);
    assert_eq!(rs.len(), 1, "one complete response");
    assert_eq!(
        rs[0].body.len(),
        total,
        "the client received a cleanly terminated but truncated body"
    );
    assert!(rs[0].body == body);
}

/// Request direction: a client sends a whole chunked POST and half-closes (`nc -N`,
/// `curl -T -`), while the upstream is slow to accept the body. When the upstream drains a
/// little the proxy reads the client again and sees the EOF — but the rest of the body, last
/// chunk included, is already in its buffer. The request is complete; it must be forwarded
/// and answered, not aborted.
#[test]
fn client_eof_with_body_still_buffered_behind_a_slow_upstream_is_not_an_abort() {
    let mut cfg = config(1);
    cfg.limits.max_body = 0;
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    let body = body_of(1024 * KIB, 23);
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunked(&body, 16 * KIB));
    for piece in req.chunks(64 * KIB) {
        h.client_send(c, piece);
    }
    h.client_eof(c); // held: the proxy stopped reading the client
    assert!(!h.clients[&c].reading);
    let u = h.connects[0];
    h.stall(u, true);
    h.accept_connect();
    // The backend reads 100 KiB: the proxy reads the client again and gets the EOF.
    let mut up = h.partial_write(u, 100 * KIB);
    assert!(
        !h.clients[&c].closed && !h.upstreams[&u].closed,
        "exchange aborted although the whole request body had been received"
    );
    h.stall(u, false);
    up.extend_from_slice(&h.take_upstream(u));
    let (m, used) = upkeep_core::sim::http::read_request(&up).expect("complete request upstream");
    assert_eq!(used, up.len());
    assert!(m.body == body);
    h.upstream_send(u, &ok("stored"));
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].status, 200);
}

/// WebSocket tunnel: the backend sends a burst and closes while the client is slow. The bytes
/// the proxy already holds must still be delivered before the client side closes.
#[test]
fn tunnel_close_delivers_bytes_already_buffered_behind_a_slow_client() {
    let (mut h, c, u) = open_tunnel();
    h.stall(c, true);
    let burst = body_of(1024 * KIB, 29);
    // The runtime reads in 64 KiB pieces while the proxy lets it.
    for piece in burst.chunks(64 * KIB) {
        h.upstream_send(u, piece);
    }
    h.upstream_eof(u);
    let mut got = h.partial_write(c, 100 * KIB);
    h.stall(c, false);
    got.extend_from_slice(&h.take_client(c));
    assert_eq!(
        got.len(),
        burst.len(),
        "tunnel bytes lost when the backend closed behind a slow client"
    );
    assert!(got == burst);
}

// =====================================================================================
// Tests expected to PASS (document correct behaviour)
// =====================================================================================

// ----- backpressure toward the upstream -----

#[test]
fn stalled_upstream_stops_reading_the_client_bounds_memory_and_resumes() {
    let mut cfg = config(1);
    cfg.limits.max_body = 0;
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    let total = 2 * 1024 * KIB;
    let body = body_of(total, 31);
    h.client_send(c, &post_head("/up", total));
    let u = h.connects[0];
    h.stall(u, true);
    h.accept_connect();
    let mut max_q = 0;
    for piece in body.chunks(64 * KIB) {
        h.client_send(c, piece);
        max_q = max_q.max(h.core.pending_len(u));
        timers_ok(&h, "while stalled");
    }
    assert!(
        !h.clients[&c].reading,
        "client not read while the upstream is full"
    );
    assert!(
        max_q <= HW + 64 * KIB + 512,
        "upstream queue bounded: {max_q}"
    );
    h.stall(u, false);
    let r = requests(&mut h, u);
    assert_eq!(r.len(), 1);
    assert!(r[0].body == body, "body relayed intact after resuming");
    h.upstream_send(u, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    assert!(h.core.is_pooled(u));
}

#[test]
fn upstream_that_stops_reading_mid_body_gets_a_send_timeout_504_and_is_never_pooled() {
    let mut cfg = config(1);
    cfg.upstreams[0].send_timeout = secs(3);
    cfg.client_timeouts.body = secs(60);
    cfg.limits.max_body = 0;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let total = 1024 * KIB;
    let body = body_of(total, 37);
    h.client_send(c, &post_head("/up", total));
    let u = h.last_upstream().unwrap();
    h.client_send(c, &body[..100 * KIB]);
    assert!(h.upstreams[&u].total_received > 100 * KIB);
    h.stall(u, true);
    for piece in body[100 * KIB..].chunks(64 * KIB) {
        h.client_send(c, piece);
    }
    assert!(!h.clients[&c].reading);
    h.advance(Duration::from_millis(2900));
    assert!(!h.upstreams[&u].closed);
    h.advance(Duration::from_millis(200));
    assert!(
        h.upstreams[&u].closed,
        "send timeout closes the upstream connection"
    );
    assert!(!h.core.is_pooled(u));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 504);
    // The request body was never fully read: the client connection cannot continue.
    h.advance(secs(10));
    assert!(h.clients[&c].closed);
    assert_eq!(h.core.connections(), 0);
}

#[test]
fn client_that_pauses_mid_body_then_resumes_is_relayed() {
    let mut cfg = config(1);
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

#[test]
fn both_directions_stalled_stay_bounded_and_everything_closes_at_the_send_timeouts() {
    let mut cfg = config(1);
    cfg.limits.max_body = 0;
    cfg.client_timeouts.send = secs(4);
    cfg.upstreams[0].send_timeout = secs(6);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let total = 4 * 1024 * KIB;
    h.client_send(c, &post_head("/echo", total));
    let u = h.last_upstream().unwrap();
    h.take_upstream(u);
    // The backend answers at once (streaming an echo) while the body is still coming.
    h.upstream_send(
        u,
        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    );
    h.stall(c, true);
    h.stall(u, true);
    let piece = vec![b'e'; 64 * KIB];
    for _ in 0..32 {
        h.client_send(c, &piece);
        h.upstream_send(u, &piece);
        assert!(h.core.pending_len(u) <= HW + 64 * KIB + 512);
        assert!(h.core.pending_len(c) <= HW + 64 * KIB + 512);
        timers_ok(&h, "both stalled");
    }
    assert!(!h.clients[&c].reading && !h.upstreams[&u].reading);
    h.advance(secs(10));
    assert!(
        h.clients[&c].closed && h.clients[&c].reset,
        "response cut: abortive"
    );
    assert!(h.upstreams[&u].closed);
    assert_eq!(h.core.connections(), 0);
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn one_byte_writes_with_large_bodies_both_ways() {
    let mut h = harness();
    h.write_chunk = Some(1);
    let c = h.connect_client();
    let req_body = body_of(40 * KIB, 43);
    let mut req = post_head("/one", req_body.len());
    req.extend_from_slice(&req_body);
    h.client_send(c, &req);
    let u = h.last_upstream().unwrap();
    let r = requests(&mut h, u);
    assert!(r[0].body == req_body);
    let resp_body = body_of(40 * KIB, 47);
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        resp_body.len()
    )
    .into_bytes();
    resp.extend_from_slice(&resp_body);
    h.upstream_send(u, &resp);
    let rs = responses(&mut h, c);
    assert!(rs[0].body == resp_body);
    assert!(h.core.is_pooled(u));
    timers_ok(&h, "after");
}

// ----- timers -----

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

#[test]
fn read_timeout_starts_when_the_request_is_fully_sent() {
    let mut cfg = config(1);
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

// ----- connection limits -----

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

// ----- pool partitioning, balancing -----

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
fn ip_hash_moves_off_a_down_server_and_comes_back_after_fail_timeout() {
    let mut cfg = config(2);
    cfg.upstreams[0].balance = Balance::IpHash;
    let mut h = Harness::new(cfg);
    let c = h.connect_client_from(ip(7));
    let (u, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    let home = h.upstreams[&u].server.unwrap();
    // The home server's pooled connection goes away, and it refuses the next connect.
    h.upstream_eof(u);
    h.auto_connect = false;
    h.client_send(c, &get("/2"));
    let first = h.connects[0];
    assert_eq!(h.upstreams[&first].server, Some(home));
    h.refuse_connect();
    let second = h.connects[0];
    assert_ne!(
        h.upstreams[&second].server,
        Some(home),
        "moved to the other server"
    );
    h.accept_connect();
    requests(&mut h, second);
    h.upstream_send(second, &ok("y"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    // While home is down the client stays on the other server (its pooled connection).
    let (u3, _) = exchange(&mut h, c, &get("/3"), &ok("z"));
    assert_eq!(u3, second);
    // After fail_timeout the client goes home again.
    h.auto_connect = true;
    h.advance(secs(11));
    let (u4, rs) = exchange(&mut h, c, &get("/4"), &ok("w"));
    assert_eq!(rs[0].status, 200);
    assert_eq!(h.upstreams[&u4].server, Some(home));
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

#[test]
fn max_conns_with_concurrency_answers_502_beyond_the_cap() {
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 2;
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
fn backup_takes_over_and_the_primary_comes_back_after_fail_timeout() {
    let mut cfg = config(2);
    cfg.upstreams[0].servers[1].backup = true;
    cfg.upstreams[0].servers[0].fail_timeout = secs(5);
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let p = h.refuse_connect().unwrap();
    let primary = h.upstreams[&p].server;
    let b = h.accept_connect().unwrap();
    assert_ne!(h.upstreams[&b].server, primary);
    requests(&mut h, b);
    h.upstream_send(b, &ok("b"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    h.auto_connect = true;
    let (u, _) = exchange(&mut h, c, &get("/2"), &ok("b"));
    assert_eq!(u, b, "backup while the primary is down");
    h.advance(secs(6));
    let (u, rs) = exchange(&mut h, c, &get("/3"), &ok("p"));
    assert_eq!(rs[0].status, 200);
    assert_eq!(
        h.upstreams[&u].server, primary,
        "primary back after fail_timeout"
    );
    let (u2, _) = exchange(&mut h, c, &get("/4"), &ok("p"));
    assert_eq!(u2, u);
}

// ----- retries -----

#[test]
fn connect_refused_then_stale_pooled_connection_on_the_second_server_is_retried_fresh() {
    let mut h = Harness::new(config(2));
    let c = h.connect_client();
    // Warm the pool with one connection to each server.
    let (u0, _) = exchange(&mut h, c, &get("/w0"), &ok("0"));
    let (u1, _) = exchange(&mut h, c, &get("/w1"), &ok("1"));
    assert_ne!(h.upstreams[&u0].server, h.upstreams[&u1].server);
    // Server 0's idle connection went away; its next connect is refused.
    h.upstream_eof(u0);
    h.auto_connect = false;
    h.client_send(c, &get("/x"));
    let refused = h.refuse_connect().unwrap();
    assert_eq!(h.upstreams[&refused].server, h.upstreams[&u0].server);
    // Moved to server 1's pooled connection...
    let got = requests(&mut h, u1);
    assert_eq!(got[0].path, "/x");
    // ...which turns out stale.
    h.upstream_eof(u1);
    let fresh = h.accept_connect().expect("fresh connection to server 1");
    assert_eq!(h.upstreams[&fresh].server, h.upstreams[&u1].server);
    let got = requests(&mut h, fresh);
    assert_eq!(got[0].path, "/x");
    h.upstream_send(fresh, &ok("x"));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"x");
}

#[test]
fn connect_refused_then_stale_pooled_post_is_502_and_sent_once() {
    let mut h = Harness::new(config(2));
    let c = h.connect_client();
    let (u0, _) = exchange(&mut h, c, &get("/w0"), &ok("0"));
    let (u1, _) = exchange(&mut h, c, &get("/w1"), &ok("1"));
    h.upstream_eof(u0);
    h.auto_connect = false;
    let mut req = post_head("/pay", 5);
    req.extend_from_slice(b"hello");
    h.client_send(c, &req);
    h.refuse_connect().unwrap();
    let got = requests(&mut h, u1);
    assert_eq!(got[0].body, b"hello");
    h.upstream_eof(u1);
    assert!(h.connects.is_empty(), "a sent POST is never re-sent");
    assert_eq!(responses(&mut h, c)[0].status, 502);
}

#[test]
fn next_upstream_tries_exhausted_answers_the_status_of_the_last_failure() {
    let mut cfg = config(3);
    cfg.upstreams[0].next_upstream_tries = 2;
    cfg.upstreams[0].connect_timeout = secs(1);
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/"));
    h.refuse_connect().unwrap();
    assert_eq!(h.connects.len(), 1);
    h.advance(Duration::from_millis(1100)); // second server: connect timeout
    assert!(h.connects.is_empty(), "no third try");
    assert_eq!(connects(&h), 2);
    assert_eq!(responses(&mut h, c)[0].status, 504);
}

#[test]
fn connect_timeout_while_the_body_is_still_streaming_moves_it_whole() {
    let mut cfg = config(2);
    cfg.upstreams[0].connect_timeout = secs(1);
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    let body = body_of(30_000, 53);
    h.client_send(c, &post_head("/up", body.len()));
    h.client_send(c, &body[..10_000]);
    h.advance(Duration::from_millis(600));
    h.client_send(c, &body[10_000..20_000]);
    h.advance(Duration::from_millis(500)); // first connect times out
    assert_eq!(h.connects.len(), 1);
    h.client_send(c, &body[20_000..25_000]);
    let u = h.accept_connect().unwrap();
    h.client_send(c, &body[25_000..]);
    let r = requests(&mut h, u);
    assert_eq!(r.len(), 1);
    assert!(r[0].body == body);
    h.upstream_send(u, &ok("k"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

#[test]
fn read_timeout_with_next_upstream_on_timeout_never_moves_a_post() {
    let mut cfg = config(2);
    cfg.upstreams[0].next_upstream_on_timeout = true;
    cfg.upstreams[0].read_timeout = secs(2);
    for s in &mut cfg.upstreams[0].servers {
        s.max_fails = 0;
    }
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let mut req = post_head("/order", 3);
    req.extend_from_slice(b"abc");
    h.client_send(c, &req);
    assert_eq!(connects(&h), 1);
    h.advance(secs(3));
    assert_eq!(connects(&h), 1, "POST not moved after a read timeout");
    assert_eq!(responses(&mut h, c)[0].status, 504);
    // A GET does move.
    h.client_send(c, &get("/g"));
    let before = connects(&h);
    h.advance(secs(3));
    assert_eq!(connects(&h), before + 1);
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, &ok("g"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

#[test]
fn stale_connection_after_the_replay_limit_is_502_never_a_partial_resend() {
    let mut cfg = config(1);
    cfg.limits.max_body = 0;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let (u, _) = exchange(&mut h, c, &get("/warm"), &ok("w"));
    let body = body_of(100 * KIB, 61);
    let head = format!(
        "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    h.client_send(c, head.as_bytes());
    h.client_send(c, &body[..70 * KIB]);
    assert!(
        h.upstreams[&u].total_received > 70 * KIB,
        "on the pooled connection"
    );
    let before = connects(&h);
    h.upstream_eof(u);
    assert_eq!(
        connects(&h),
        before,
        "70 KiB streamed, more than the replay copy: cannot be re-sent"
    );
    h.client_send(c, &body[70 * KIB..]);
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].status, 502);
    h.advance(secs(10));
    assert!(h.clients[&c].closed);
}

// ----- responses -----

#[test]
fn storm_of_early_hints_then_the_final_response() {
    let (mut h, c, u) = forwarded("/hints");
    for i in 0..50 {
        h.upstream_send(
            u,
            format!("HTTP/1.1 103 Early Hints\r\nLink: </s{i}.css>; rel=preload\r\n\r\n")
                .as_bytes(),
        );
    }
    h.upstream_send(u, &ok("final"));
    let buf = h.take_client(c);
    let n103 = buf.windows(12).filter(|w| *w == b"HTTP/1.1 103").count();
    assert_eq!(n103, 50);
    let (rs, used) = read_responses(&buf, &[], false);
    assert_eq!(used, buf.len());
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"final");
    assert!(h.core.is_pooled(u));
}

#[test]
fn switching_protocols_without_an_upgrade_request_is_502() {
    let (mut h, c, u) = forwarded("/plain");
    h.upstream_send(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].status, 502);
    assert!(h.upstreams[&u].closed);
    // The client connection still works.
    h.client_send(c, &get("/next"));
    let u2 = busy_upstream(&h).unwrap();
    assert_ne!(u2, u);
}

#[test]
fn no_content_with_a_body_never_reaches_the_client_and_the_connection_is_dropped() {
    // Same read.
    let (mut h, c, u) = forwarded("/204");
    h.upstream_send(
        u,
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/",
    );
    let buf = h.take_client(c);
    assert!(buf.starts_with(b"HTTP/1.1 204"));
    assert!(!contains(&buf[12..], b"HTTP/"));
    assert!(h.upstreams[&u].closed, "extra bytes: not reusable");
    // Separate read, after the connection went back to the pool.
    let (mut h, c, u) = forwarded("/204");
    h.upstream_send(u, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert!(h.core.is_pooled(u));
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.upstreams[&u].closed);
    h.client_send(c, &get("/next"));
    let u2 = busy_upstream(&h).unwrap();
    assert_ne!(u2, u);
    requests(&mut h, u2);
    h.upstream_send(u2, &ok("n"));
    let buf = h.take_client(c);
    let (rs, used) = read_responses(&buf, &[], false);
    assert_eq!(used, buf.len());
    assert_eq!(rs.iter().map(|r| r.status).collect::<Vec<_>>(), [204, 200]);
}

#[test]
fn not_modified_to_a_get_keeps_its_validators_and_is_poolable() {
    let (mut h, c, u) = forwarded("/cached");
    h.upstream_send(
        u,
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1234\r\n\r\n",
    );
    let buf = h.take_client(c);
    assert!(buf.starts_with(b"HTTP/1.1 304"));
    assert!(buf.ends_with(b"\r\n\r\n"), "no body after a 304");
    assert!(contains(&buf, b"ETag: \"x\""));
    assert!(h.core.is_pooled(u));
    let (u2, rs) = exchange(&mut h, c, &get("/n"), &ok("n"));
    assert_eq!(u2, u);
    assert_eq!(rs[0].body, b"n");
}

#[test]
fn head_response_with_a_wrong_body_is_cut_and_the_connection_dropped() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n");
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    let buf = h.take_client(c);
    assert!(buf.ends_with(b"\r\n\r\n"));
    assert!(!contains(&buf, b"hello"));
    assert!(h.upstreams[&u].closed);
    h.client_send(c, &get("/g"));
    let u2 = busy_upstream(&h).unwrap();
    assert_ne!(u2, u);
}

#[test]
fn response_in_one_byte_pieces_with_pipelined_client_input_interleaved() {
    let (mut h, c, u) = forwarded("/1");
    let resp = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n".to_vec(),
    ]
    .concat();
    let second = get("/2");
    for (i, b) in resp.iter().enumerate() {
        h.upstream_send(u, &[*b]);
        if i < second.len() {
            h.client_send(c, &second[i..i + 1]);
        }
    }
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"helloabc");
    // The pipelined request went out after the first response, on the same connection.
    let r = requests(&mut h, u);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].path, "/2");
    h.upstream_send(u, &ok("2"));
    assert_eq!(responses(&mut h, c)[0].body, b"2");
}

#[test]
fn trace_is_deterministic_for_a_backpressured_exchange() {
    fn run() -> Vec<Output> {
        let mut cfg = config(1);
        cfg.limits.max_body = 0;
        let mut h = Harness::new(cfg);
        h.write_chunk = Some(7000);
        let c = h.connect_client();
        let body = body_of(300 * KIB, 59);
        let mut req = post_head("/d", body.len());
        req.extend_from_slice(&body);
        h.client_send(c, &req);
        let u = h.last_upstream().unwrap();
        h.upstream_send(u, &ok("d"));
        h.advance(secs(1));
        h.trace.clone()
    }
    assert_eq!(run(), run());
    let _ = Time::ZERO;
}
