//! Third review: deferred EOFs (an EOF waiting behind bytes backpressure held back), read/body
//! timers restarting when reading resumes, keepalive idleness after the last byte is written,
//! and pipelined work queued by `end_exchange`. Driven through the public API (the in-memory
//! harness, plus direct `Core::handle` calls where a test needs a partial write or an EOF read
//! together with the data before it). Every test ends by closing everything and checking that
//! nothing leaks (no connection, no timer).

use upkeep_core::sim::Harness;
use upkeep_core::sim::http::read_responses;
use upkeep_core::{ConnId, Input, Output};

mod common;
use common::*;

/// A runtime that read the EOF in the same go as the data before it (before it could act on
/// an interest change): the core sees the EOF while those bytes are still held back.
fn eof_now(h: &mut Harness, id: ConnId) {
    h.core.handle(h.now, Input::ReadClosed { conn: id });
    h.pump();
}

/// Data that arrives in one read, whatever the interest (same reasoning as `eof_now`).
/// Delivered in 16 KiB reads, as a runtime's read buffer would.
fn recv_now(h: &mut Harness, id: ConnId, data: &[u8]) {
    for piece in data.chunks(16 * KIB) {
        h.core.handle(
            h.now,
            Input::Received {
                conn: id,
                data: piece,
            },
        );
        h.pump();
    }
}

/// Closes whatever is still open, lets every deadline pass, and checks nothing is left.
fn no_leaks(h: &mut Harness) {
    let ids: Vec<ConnId> = h
        .clients
        .keys()
        .chain(h.upstreams.keys())
        .copied()
        .collect();
    for id in ids {
        if h.core.is_open(id) {
            h.reset(id);
        }
    }
    h.advance(secs(3600));
    let mut closes: Vec<ConnId> = h
        .trace
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect();
    let n = closes.len();
    closes.sort_by_key(|c| (c.index, c.generation));
    closes.dedup();
    assert_eq!(closes.len(), n, "a connection was closed twice");
    assert_eq!(h.core.connections(), 0, "connections leaked");
    assert_eq!(h.core.poll_timeout(), None, "timer leaked");
}

/// A close-delimited response body (1 MiB) read whole, EOF included, while the client is
/// stalled: the upstream EOF is deferred. Returns (harness, client, upstream, body).
fn deferred_close_delimited(client_req: &[u8]) -> (Harness, ConnId, ConnId, Vec<u8>, Vec<u8>) {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, client_req);
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    let body = body_of(1024 * KIB, 13);
    let head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    recv_now(&mut h, u, &head);
    recv_now(&mut h, u, &body);
    eof_now(&mut h, u);
    assert!(
        h.core.is_open(u),
        "EOF acted on while bytes are held back: {:?} {:?} pending {}",
        &h.trace[h.trace.len().saturating_sub(6)..],
        h.clients[&c].total_received,
        h.core.pending_len(c)
    );
    (h, c, u, head, body)
}

// =====================================================================================
// Expected to FAIL (engine bugs)
// =====================================================================================

/// A client pipelines a GET and a POST whose body is incomplete, then closes its write side.
/// The EOF arrives during the GET's exchange (request complete: a legal half-close, nothing is
/// done). Once the GET is answered the POST starts from the buffer, its partial body is relayed
/// — and the request can never complete, since the client already sent EOF. Nothing notices:
/// the client is not read (`read_closed`), so it has no body timeout; the upstream's queue is
/// empty and `sent_all` is false, so it has neither send nor read timeout. Both connections
/// stay open forever with no deadline.
#[test]
fn pipelined_request_with_truncated_body_after_consumed_eof_does_not_hang() {
    let mut h = harness();
    let c = h.connect_client();
    let mut req = get("/a");
    req.extend_from_slice(&post_head("/b", 10));
    req.extend_from_slice(b"abc");
    h.client_send(c, &req);
    let u = busy_upstream(&h).unwrap();
    let first = h.take_upstream(u);
    assert!(first.starts_with(b"GET /a "));
    h.client_eof(c);
    h.upstream_send(u, &ok("A"));
    let got = h.take_client(c);
    let (rs, _) = read_responses(&got, &[], false);
    assert_eq!(rs.len(), 1, "first response delivered");
    assert_eq!(rs[0].body, b"A");
    h.advance(secs(600));
    assert!(
        h.clients[&c].closed,
        "client that sent EOF in the middle of a pipelined request body is still open after \
         600s (connections {}, next deadline {:?})",
        h.core.connections(),
        h.core.poll_timeout()
    );
    assert!(
        h.upstreams.values().all(|e| e.closed),
        "the upstream connection holding the half-sent request is left open"
    );
    no_leaks(&mut h);
}

/// A backend that answers at once (an overload 503 on accept, say) before the runtime reported
/// the connect: the core keeps the bytes ("Data before we were told the connect finished: keep
/// it buffered") but never looks at them after `Connected` — the complete response sits in the
/// buffer until the read timeout turns it into a 504.
#[test]
fn response_received_before_connected_is_processed() {
    let mut h = harness();
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/a"));
    let u = h.connects[0];
    h.upstream_send(
        u,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
    );
    h.accept_connect();
    h.take_upstream(u);
    h.advance(secs(1));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1, "the complete response is still buffered");
    assert_eq!(rs[0].status, 503);
    no_leaks(&mut h);
}

// =====================================================================================
// Passing: deferred EOFs
// =====================================================================================

#[test]
fn deferred_eof_close_delimited_http11_gets_every_byte_then_last_chunk() {
    let (mut h, c, u, _, body) = deferred_close_delimited(&get("/s"));
    let mut got = Vec::new();
    for _ in 0..6 {
        got.extend(h.partial_write(c, 64 * KIB));
    }
    h.stall(c, false);
    got.extend(h.take_client(c));
    assert!(!h.clients[&c].reset, "response cut short");
    let (rs, used) = read_responses(&got, &[], false);
    assert_eq!(used, got.len());
    assert_eq!(rs.len(), 1, "chunked body terminated");
    assert_eq!(rs[0].header("transfer-encoding"), Some("chunked"));
    assert!(rs[0].body == body);
    assert!(!h.core.is_open(u));
    no_leaks(&mut h);
}

#[test]
fn deferred_eof_close_delimited_http10_gets_every_byte_then_fin() {
    let req = b"GET /s HTTP/1.0\r\nHost: a\r\n\r\n";
    let (mut h, c, _, _, body) = deferred_close_delimited(req);
    let mut got = h.partial_write(c, 100 * KIB);
    h.stall(c, false);
    got.extend(h.take_client(c));
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    let (rs, used) = read_responses(&got, &[], true);
    assert_eq!(used, got.len());
    assert_eq!(rs.len(), 1);
    assert!(rs[0].body == body);
    no_leaks(&mut h);
}

#[test]
fn deferred_upstream_eof_then_client_reset_closes_both() {
    let (mut h, c, u, _, _) = deferred_close_delimited(&get("/s"));
    h.partial_write(c, 10 * KIB);
    h.reset(c);
    assert!(!h.core.is_open(u), "upstream left behind");
    assert_eq!(h.core.connections(), 0);
    no_leaks(&mut h);
}

#[test]
fn deferred_upstream_eof_then_client_half_close_still_completes() {
    let (mut h, c, _, _, body) = deferred_close_delimited(&get("/s"));
    eof_now(&mut h, c);
    h.stall(c, false);
    let got = h.take_client(c);
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    let (rs, _) = read_responses(&got, &[], true);
    assert_eq!(rs.len(), 1);
    assert!(rs[0].body == body);
    no_leaks(&mut h);
}

#[test]
fn deferred_upstream_eof_with_client_never_reading_is_bounded_by_send_timeout() {
    let (mut h, c, u, _, _) = deferred_close_delimited(&get("/s"));
    h.advance(secs(61));
    assert!(h.clients[&c].closed && h.clients[&c].reset);
    assert!(!h.core.is_open(u));
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

#[test]
fn deferred_client_eof_then_upstream_reset_answers_502_and_closes() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &post_head("/p", 600 * KIB));
    let u = h.last_upstream().unwrap();
    h.stall(u, true);
    recv_now(&mut h, c, &body_of(600 * KIB, 3));
    eof_now(&mut h, c);
    assert!(h.core.is_open(c) && h.core.is_open(u), "EOF must wait");
    h.reset(u);
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 502);
    assert!(h.clients[&c].closed);
    no_leaks(&mut h);
}

#[test]
fn deferred_client_eof_relays_whole_body_then_response_then_close() {
    let mut h = harness();
    let c = h.connect_client();
    let body = body_of(600 * KIB, 5);
    h.client_send(c, &post_head("/p", body.len()));
    let u = h.last_upstream().unwrap();
    let mut got = h.take_upstream(u);
    h.stall(u, true);
    recv_now(&mut h, c, &body);
    eof_now(&mut h, c);
    for _ in 0..3 {
        got.extend(h.partial_write(u, 50 * KIB));
    }
    h.stall(u, false);
    got.extend(h.take_upstream(u));
    let (m, used) = upkeep_core::sim::http::read_request(&got).expect("whole request");
    assert_eq!(used, got.len());
    assert!(m.body == body);
    h.upstream_send(u, &ok("done"));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"done");
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    no_leaks(&mut h);
}

#[test]
fn deferred_client_eof_on_incomplete_body_aborts_once_relayed() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &post_head("/p", 1024 * KIB));
    let u = h.last_upstream().unwrap();
    h.stall(u, true);
    recv_now(&mut h, c, &body_of(600 * KIB, 5));
    eof_now(&mut h, c);
    assert!(h.core.is_open(c));
    h.stall(u, false);
    assert!(h.clients[&c].closed, "request can never complete");
    assert!(!h.core.is_open(u));
    no_leaks(&mut h);
}

#[test]
fn tunnel_eof_behind_backpressure_delivers_everything_then_closes() {
    let (mut h, c, u) = open_tunnel();
    h.stall(c, true);
    let data = body_of(700 * KIB, 11);
    recv_now(&mut h, u, &data);
    eof_now(&mut h, u);
    let mut got = h.partial_write(c, 100 * KIB);
    h.stall(c, false);
    got.extend(h.take_client(c));
    assert!(
        got == data,
        "tunnel bytes lost ({} of {})",
        got.len(),
        data.len()
    );
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    no_leaks(&mut h);
}

#[test]
fn tunnel_client_eof_behind_backpressure_delivers_everything_upstream() {
    let (mut h, c, u) = open_tunnel();
    h.stall(u, true);
    let data = body_of(700 * KIB, 17);
    recv_now(&mut h, c, &data);
    eof_now(&mut h, c);
    let mut got = h.partial_write(u, 100 * KIB);
    h.stall(u, false);
    got.extend(h.take_upstream(u));
    assert!(
        got == data,
        "tunnel bytes lost ({} of {})",
        got.len(),
        data.len()
    );
    assert!(h.upstreams[&u].closed && !h.upstreams[&u].reset);
    no_leaks(&mut h);
}

// =====================================================================================
// Passing: timers restarting when reading resumes
// =====================================================================================

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

// =====================================================================================
// Passing: keepalive idleness after the last byte; pipelining; drain
// =====================================================================================

#[test]
fn pipelined_requests_while_previous_response_flushes_slowly_are_all_answered() {
    let mut h = harness();
    let c = h.connect_client();
    let mut req = get("/1");
    req.extend_from_slice(&get("/2"));
    h.client_send(c, &req);
    let u = busy_upstream(&h).unwrap();
    assert_eq!(requests(&mut h, u).len(), 1);
    h.stall(c, true);
    let big = body_of(HW * 3, 9);
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    resp.extend_from_slice(&big);
    h.upstream_send(u, &resp);
    let mut got = Vec::new();
    let mut answered2 = false;
    for _ in 0..60 {
        if answered2 && h.core.pending_len(c) == 0 {
            break;
        }
        h.advance(secs(50));
        got.extend(h.partial_write(c, 32 * KIB));
        if !answered2 && let Some(u2) = busy_upstream(&h) {
            let rq = requests(&mut h, u2);
            assert_eq!(rq[0].path, "/2");
            h.upstream_send(u2, &ok("two"));
            answered2 = true;
        }
        assert!(
            h.core.is_open(c),
            "closed while the client reads within send_timeout (answered2 {answered2}, got {}, \
             trace tail {:?})",
            got.len(),
            &h.trace[h.trace.len().saturating_sub(8)..]
        );
    }
    assert!(answered2);
    h.stall(c, false);
    got.extend(h.take_client(c));
    let (rs, used) = read_responses(&got, &[], false);
    assert_eq!(used, got.len());
    assert_eq!(rs.len(), 2);
    assert!(rs[0].body == big);
    assert_eq!(rs[1].body, b"two");
    // Idle now, everything written: keepalive applies from here.
    h.advance(secs(74));
    assert!(h.core.is_open(c));
    h.advance(secs(2));
    assert!(!h.core.is_open(c));
    no_leaks(&mut h);
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

/// Several pipelined requests answered locally (404) and by the upstream in one burst, with the
/// client closing its write side right after: every complete request is answered, in order,
/// then the connection closes.
#[test]
fn pipelined_burst_then_eof_answers_all_in_order_then_closes() {
    let mut h = harness();
    let c = h.connect_client();
    let mut req = Vec::new();
    for p in ["/1", "/2", "/3"] {
        req.extend_from_slice(&get(p));
    }
    h.client_send(c, &req);
    h.client_eof(c);
    for want in ["/1", "/2", "/3"] {
        let u = busy_upstream(&h).expect("next request forwarded");
        let rq = requests(&mut h, u);
        assert_eq!(rq.len(), 1);
        assert_eq!(rq[0].path, want);
        h.upstream_send(u, &ok(want));
    }
    let rs = responses(&mut h, c);
    let bodies: Vec<_> = rs.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec![b"/1".to_vec(), b"/2".to_vec(), b"/3".to_vec()]);
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    no_leaks(&mut h);
}

/// The client resets while its pipelined request is being started in the same call that
/// finishes the previous response (the upstream EOF completes a close-delimited body).
#[test]
fn client_reset_with_pipelined_request_queued_leaks_nothing() {
    let mut h = harness();
    let c = h.connect_client();
    let mut req = get("/1");
    req.extend_from_slice(&get("/2"));
    h.client_send(c, &req);
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\n\r\npartial");
    h.upstream_eof(u);
    let u2 = busy_upstream(&h).expect("second request forwarded");
    requests(&mut h, u2);
    h.reset(c);
    assert!(!h.core.is_open(u2));
    no_leaks(&mut h);
}

/// A Content-Length body cut short by the upstream's EOF, read whole while the client is
/// stalled: the client gets every byte that arrived, then a reset (not a FIN).
#[test]
fn deferred_eof_on_truncated_length_body_relays_all_then_resets() {
    let (mut h, c, u) = forwarded("/t");
    h.stall(c, true);
    let body = body_of(900 * KIB, 23);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    recv_now(&mut h, u, &head);
    recv_now(&mut h, u, &body);
    eof_now(&mut h, u);
    assert!(h.core.is_open(u), "EOF deferred");
    let mut got = h.partial_write(c, 100 * KIB);
    h.stall(c, false);
    got.extend(h.take_client(c));
    assert_eq!(got.len(), h.clients[&c].total_received + 100 * KIB);
    assert!(got.ends_with(&body[body.len() - 1000..]), "tail relayed");
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    assert!(
        got[end..] == body[..],
        "every body byte that arrived is relayed, in order"
    );
    assert!(h.clients[&c].closed && h.clients[&c].reset);
    no_leaks(&mut h);
}

/// The deferred client EOF is replayed, completes the request body, and a complete pipelined
/// request is still buffered behind it: it is answered too, then the connection closes.
#[test]
fn deferred_client_eof_with_pipelined_request_behind_the_body() {
    let mut h = harness();
    let c = h.connect_client();
    let body = body_of(600 * KIB, 29);
    h.client_send(c, &post_head("/1", body.len()));
    let u = h.last_upstream().unwrap();
    let mut up = h.take_upstream(u);
    h.stall(u, true);
    let mut rest = body.clone();
    rest.extend_from_slice(&get("/2"));
    recv_now(&mut h, c, &rest);
    eof_now(&mut h, c);
    h.stall(u, false);
    up.extend(h.take_upstream(u));
    let (m, used) = upkeep_core::sim::http::read_request(&up).expect("whole first request");
    assert_eq!(used, up.len());
    assert!(m.body == body);
    h.upstream_send(u, &ok("one"));
    let u2 = busy_upstream(&h).expect("pipelined request forwarded");
    let rq = requests(&mut h, u2);
    assert_eq!(rq.len(), 1);
    assert_eq!(rq[0].path, "/2");
    h.upstream_send(u2, &ok("two"));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].body, b"one");
    assert_eq!(rs[1].body, b"two");
    assert!(h.clients[&c].closed && !h.clients[&c].reset);
    no_leaks(&mut h);
}
