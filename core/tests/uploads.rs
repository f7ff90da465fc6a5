//! Slow uploads cannot pin backend connections (issue 15): request bodies up to
//! `limits.request_buffer` are read in full before an upstream connection is taken (and can
//! then be re-sent whole after a stale connection), and a body of any size must arrive at
//! `limits.min_upload_rate` on average after the `client_timeouts.body` grace, or get a 408.

use core::time::Duration;

use upkeep_core::sim::Harness;

mod common;
use common::*;

/// A request with a Content-Length body of `n` bytes, without the body.
fn post(n: usize) -> Vec<u8> {
    format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n").into_bytes()
}

#[test]
fn a_small_body_is_read_in_full_before_a_connection_is_taken() {
    let mut h = harness();
    let c = h.connect_client();
    let body = body_of(1000, 7);
    h.client_send(c, &post(body.len()));
    for piece in body.chunks(100) {
        assert_eq!(
            connects(&h),
            0,
            "no upstream connection while the body arrives"
        );
        h.advance(Duration::from_secs(1));
        h.client_send(c, piece);
    }
    assert_eq!(connects(&h), 1);
    let u = h.last_upstream().unwrap();
    let got = requests(&mut h, u);
    assert_eq!(got.len(), 1);
    assert!(got[0].body == body, "the body arrives whole");
    h.upstream_send(u, &ok("done"));
    assert_eq!(responses(&mut h, c)[0].body, b"done");
    no_leaks(&mut h);
}

#[test]
fn a_large_body_streams_from_its_head() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &post(200 * KIB));
    assert_eq!(connects(&h), 1, "too large to buffer: connect at once");
    let body = body_of(200 * KIB, 3);
    for piece in body.chunks(16 * KIB) {
        h.client_send(c, piece);
    }
    let u = h.last_upstream().unwrap();
    assert!(requests(&mut h, u)[0].body == body);
}

#[test]
fn a_chunked_body_is_buffered_until_it_outgrows_the_buffer() {
    let mut cfg = config(1);
    cfg.limits.request_buffer = 4 * KIB as u64;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    let body = body_of(10 * KIB, 5);
    let mut sent = 0;
    for piece in body.chunks(KIB) {
        h.client_send(c, &chunked(piece, piece.len())[..piece.len() + 7]);
        sent += piece.len();
        // Connected once the framed copy reached the buffer, not before.
        assert_eq!(connects(&h), usize::from(sent >= 4 * KIB), "{sent}");
    }
    h.client_send(c, b"0\r\n\r\n");
    let u = h.last_upstream().unwrap();
    let got = requests(&mut h, u);
    assert!(got[0].body == body, "every byte, in order");
}

#[test]
fn a_buffered_body_larger_than_64k_is_resent_whole_after_a_stale_connection() {
    let mut cfg = config(1);
    cfg.limits.request_buffer = 256 * KIB as u64;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    // Pool a connection first.
    let (u1, _) = exchange(&mut h, c, &get("/warm"), &ok("w"));
    assert!(h.core.is_pooled(u1));
    let body = body_of(100 * KIB, 11);
    // An idempotent request (a POST is never re-sent).
    let mut req = format!(
        "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    h.client_send(c, &req);
    // The pooled connection turns out stale: reset before any response byte.
    assert_eq!(busy_upstream(&h), Some(u1));
    h.take_upstream(u1);
    h.reset(u1);
    let u2 = busy_upstream(&h).expect("retried");
    assert_ne!(u2, u1, "retried on a fresh connection");
    let got = requests(&mut h, u2);
    assert!(got[0].body == body, "re-sent whole");
    h.upstream_send(u2, &ok("again"));
    assert_eq!(responses(&mut h, c)[0].body, b"again");
}

#[test]
fn a_body_slower_than_the_minimum_rate_gets_a_408_and_frees_its_backend() {
    let mut cfg = config(1);
    cfg.client_timeouts.body = Duration::from_secs(10);
    cfg.limits.min_upload_rate = 100;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    // Too large to buffer: it streams and holds an upstream connection.
    h.client_send(c, &post(100 * KIB));
    let u = h.last_upstream().unwrap();
    // One byte a second: within the body timeout between reads, far below the rate.
    let mut cut_at = None;
    for s in 1..=30 {
        h.advance(Duration::from_secs(1));
        if h.upstreams[&u].closed {
            cut_at = Some(s);
            break;
        }
        h.client_send(c, b"x");
    }
    let cut_at = cut_at.expect("the trickle is cut");
    // 10 s of grace, plus 1 s per 100 bytes received (a few): cut at about 10 s.
    assert!((10..=12).contains(&cut_at), "{cut_at}");
    assert_eq!(responses(&mut h, c)[0].status, 408);
}

#[test]
fn a_body_above_the_minimum_rate_is_never_cut() {
    let mut cfg = config(1);
    cfg.client_timeouts.body = Duration::from_secs(10);
    cfg.limits.min_upload_rate = 1000;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let body = body_of(200 * KIB, 9);
    h.client_send(c, &post(body.len()));
    // 2000 bytes a second for 100 s: well past the grace, above the rate.
    for piece in body.chunks(2000) {
        h.advance(Duration::from_secs(1));
        h.client_send(c, piece);
    }
    let u = h.last_upstream().unwrap();
    assert!(requests(&mut h, u)[0].body == body);
    h.upstream_send(u, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

/// The minimum rate runs from the request, not from the connection: a client that opened its
/// connection early (a browser's preconnect) and sends its first request well within the header
/// timeout gets the whole body grace for its body.
#[test]
fn the_upload_grace_runs_from_the_request_not_from_the_accept() {
    let mut h = harness();
    let c = h.connect_client();
    // 50 s after the accept (the header timeout is 60 s), a POST of 1000 bytes.
    h.advance(Duration::from_secs(50));
    h.client_send(c, &post(1000));
    let body = body_of(1000, 4);
    h.advance(Duration::from_secs(5));
    h.client_send(c, &body[..500]);
    // 15 s into the request: inside the 60 s grace.
    h.advance(Duration::from_secs(10));
    h.client_send(c, &body[500..]);
    let u = h.last_upstream().expect("forwarded");
    assert!(requests(&mut h, u)[0].body == body);
    h.upstream_send(u, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}
