//! Half-close and EOFs: a client that half-closes after complete requests still gets every
//! response (a half-close is not `Connection: close`); an EOF read while bytes are still held
//! back by backpressure (a deferred EOF) waits until those bytes are relayed, so a complete
//! message is never taken for a truncated one and a truncated one always ends in a reset; the
//! same for tunnels, in both directions. The engine is driven through its public API by the
//! in-memory harness (`upkeep_core::sim::Harness`), plus direct `Core::handle` calls where the
//! EOF must reach the core in the same read as the data before it.

use upkeep_core::sim::Harness;
use upkeep_core::sim::http::read_responses;

mod common;
use common::*;

#[test]
fn client_half_close_right_after_request_still_gets_the_response() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    h.client_eof(c);
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, &ok("resp"));
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].body, b"resp");
    assert!(h.clients[&c].closed);
    assert!(h.core.is_pooled(u), "upstream side was clean");
}

/// A client writes two complete pipelined requests and then half-closes (shutdown(SHUT_WR), as
/// `printf ... | nc -N` does). Both requests were received completely; a half-close is not
/// `Connection: close`, so both must be answered, in order, before the proxy closes.
#[test]
fn half_close_after_pipelined_requests_answers_all_of_them() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &[get("/1"), get("/2")].concat());
    h.client_eof(c);
    let u = busy_upstream(&h).expect("/1 forwarded");
    assert_eq!(requests(&mut h, u)[0].path, "/1");
    h.upstream_send(u, &ok("one"));
    let u2 = busy_upstream(&h).expect("/2 must be forwarded too: it was fully received");
    assert_eq!(requests(&mut h, u2)[0].path, "/2");
    h.upstream_send(u2, &ok("two"));
    let rs = responses(&mut h, c);
    let bodies: Vec<&[u8]> = rs.iter().map(|r| &r.body[..]).collect();
    assert_eq!(bodies, vec![&b"one"[..], b"two"]);
    assert!(h.clients[&c].closed);
}

/// The response is fully queued for a slow client (exchange over, client back to Idle with output
/// still queued), then the client's FIN arrives. The queued response must still be delivered;
/// closing at once truncates it.
#[test]
fn client_eof_while_response_still_queued_does_not_truncate_it() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/big"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    let body = "x".repeat(100 * 1024);
    h.upstream_send(u, &ok(&body));
    assert!(
        h.core.pending_len(c) > 0,
        "response queued for the slow client"
    );
    // The client is done sending (it half-closes), but still reads.
    h.client_eof(c);
    h.stall(c, false);
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1, "the complete response is delivered");
    assert_eq!(rs[0].body.len(), body.len());
    assert!(h.clients[&c].closed);
}

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
