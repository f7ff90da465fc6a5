//! Bodies: request and response bodies relayed byte for byte (1 MiB each way, with small and
//! one-byte writes), an upstream that answers before the request body is complete, and a
//! request body that turns bad (malformed chunk, over `max_body`) after the response started:
//! the client connection is aborted, and no error response is ever written into the middle of
//! the body already under way. The engine is driven through its public API by the in-memory
//! harness (`upkeep_core::sim::Harness`), whose `write_chunk` caps each write.

use upkeep_core::sim::Harness;

mod common;
use common::*;

#[test]
fn one_mib_bodies_relayed_byte_for_byte_both_ways_with_small_writes() {
    let mut h = harness();
    h.write_chunk = Some(1000);
    let c = h.connect_client();
    let req_body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut req = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        req_body.len()
    )
    .into_bytes();
    h.client_send(c, &req);
    req.clear();
    for piece in req_body.chunks(8 * 1024 + 13) {
        h.client_send(c, piece);
    }
    let u = h.last_upstream().unwrap();
    let r = requests(&mut h, u);
    assert_eq!(r.len(), 1);
    assert!(r[0].body == req_body, "request body differs");
    let resp_body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 13 % 253) as u8).collect();
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in resp_body.chunks(10_007) {
        let mut ch = format!("{:x}\r\n", piece.len()).into_bytes();
        ch.extend_from_slice(piece);
        ch.extend_from_slice(b"\r\n");
        // Split each chunk across two reads to exercise the decoder.
        let mid = ch.len() / 3;
        h.upstream_send(u, &ch[..mid]);
        h.upstream_send(u, &ch[mid..]);
    }
    h.upstream_send(u, b"0\r\n\r\n");
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert!(rs[0].body == resp_body, "response body differs");
    assert!(h.core.is_pooled(u));
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

#[test]
fn upstream_answers_early_then_body_completes() {
    let mut h = Harness::new(streaming(config(1)));
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc",
    );
    let u = busy_upstream(&h).unwrap();
    h.take_upstream(u);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwx");
    h.client_send(c, b"def");
    assert_eq!(h.take_upstream(u), b"def");
    h.upstream_send(u, b"yz");
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].body, b"wxyz");
    assert!(!h.clients[&c].closed, "the request completed: keep-alive");
    assert!(h.core.is_pooled(u));
}

/// The upstream answers early (head + part of the body) while the client is still streaming a
/// chunked request body; then the client sends a malformed chunk. The proxy must abort the client
/// connection (the 200 is already under way): it must never append a `400` response into the
/// middle of the 200's body, which the client would read as body bytes.
#[test]
fn bad_request_body_after_response_started_never_injects_a_400_into_the_body() {
    let mut h = Harness::new(streaming(config(1)));
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    let u = busy_upstream(&h).unwrap();
    h.take_upstream(u);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.client_send(c, b"zz\r\n"); // not hex: the chunked body is invalid
    let buf = h.take_client(c);
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        !contains(&buf, b"HTTP/1.1 400"),
        "a 400 was appended into the 200's body: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(h.clients[&c].closed || h.clients[&c].shutdown);
    assert!(h.upstreams[&u].closed);
}

/// Same with the body limit: the upstream already started its response when the client's body
/// exceeds `max_body`. No 413 may be appended into the 200's body.
#[test]
fn body_limit_after_response_started_never_injects_a_413_into_the_body() {
    let mut cfg = streaming(config(1));
    cfg.limits.max_body = 10;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    let u = busy_upstream(&h).unwrap();
    h.take_upstream(u);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.client_send(c, b"a\r\n0123456789\r\n");
    let buf = h.take_client(c);
    assert!(
        !contains(&buf, b"HTTP/1.1 413"),
        "a 413 was appended into the 200's body: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(h.clients[&c].closed || h.clients[&c].shutdown);
}
