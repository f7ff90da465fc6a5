//! Pipelining: several requests in one write (with Content-Length and chunked bodies, HEAD, a
//! burst answered in order, requests arriving byte by byte between response bytes) are
//! forwarded one at a time on one upstream connection and answered in order, also while the
//! previous response is still being flushed slowly; a reset with a pipelined request queued
//! leaks nothing. The engine is driven through its public API by the in-memory harness
//! (`upkeep_core::sim::Harness`).

use upkeep_core::sim::http::read_responses;

mod common;
use common::*;

#[test]
fn pipelined_bodies_cl_and_chunked_then_get_in_one_write() {
    let mut h = harness();
    let c = h.connect_client();
    let wire = [
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
            .to_vec(),
        get("/c"),
    ]
    .concat();
    h.client_send(c, &wire);
    let expect: [(&str, &[u8]); 3] = [("/a", b"hello"), ("/b", b"abcde"), ("/c", b"")];
    for (i, (path, body)) in expect.iter().enumerate() {
        let u = busy_upstream(&h).expect("next request forwarded");
        let r = requests(&mut h, u);
        assert_eq!(r.len(), 1, "one at a time");
        assert_eq!(r[0].path, *path);
        assert_eq!(&r[0].body[..], *body, "request {path} body");
        h.upstream_send(u, &ok(&format!("r{i}")));
    }
    let rs = responses(&mut h, c);
    let bodies: Vec<&[u8]> = rs.iter().map(|r| &r.body[..]).collect();
    assert_eq!(bodies, vec![&b"r0"[..], b"r1", b"r2"]);
    assert_eq!(connects(&h), 1);
}

#[test]
fn pipelined_head_then_get_share_the_connection() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(
        c,
        &[b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), get("/g")].concat(),
    );
    let u = busy_upstream(&h).unwrap();
    assert_eq!(requests(&mut h, u)[0].method, "HEAD");
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    let u2 = busy_upstream(&h).expect("GET forwarded without waiting for 1000 bytes");
    assert_eq!(u2, u, "same upstream connection");
    assert_eq!(requests(&mut h, u2)[0].path, "/g");
    h.upstream_send(u2, &ok("g"));
    let buf = h.take_client(c);
    let (rs, used) = read_responses(&buf, &[true, false], false);
    assert_eq!(used, buf.len());
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].header("content-length"), Some("1000"));
    assert_eq!(rs[1].body, b"g");
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
