//! Odd responses: interim responses (a storm of `103 Early Hints`, a 103 then a failure, no 1xx
//! to an HTTP/1.0 client), a `101` nobody asked for, a body on a `204`, a `304` or a HEAD
//! response, `Transfer-Encoding` together with `Content-Length`, and a response that arrives
//! before the runtime reported the connect. Per RFC 9110/9112 and the proxy rules, the client
//! never sees bytes that are not part of a valid response, and an upstream connection that sent
//! such bytes is never reused. The engine is driven through its public API by the in-memory
//! harness (`upkeep_core::sim::Harness`).

use upkeep_core::sim::http::read_responses;

mod common;
use common::*;

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
fn interim_then_error_on_a_fresh_connection_gives_502_after_the_103() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, b"HTTP/1.1 103 Early Hints\r\n\r\n");
    h.upstream_eof(u);
    let buf = h.take_client(c);
    assert!(buf.starts_with(b"HTTP/1.1 103"));
    let (rs, _) = read_responses(&buf, &[], true);
    assert_eq!(rs[0].status, 502);
    assert_eq!(connects(&h), 1);
}

#[test]
fn expect_100_continue_from_http10_client_is_ignored() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST / HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    assert!(h.take_client(c).is_empty(), "no 100 Continue to HTTP/1.0");
    h.client_send(c, b"hello");
    let u = busy_upstream(&h).unwrap();
    let r = requests(&mut h, u);
    assert_eq!(r[0].body, b"hello");
    assert_eq!(r[0].header("expect"), None);
    h.upstream_send(u, b"HTTP/1.1 103 Early Hints\r\n\r\n");
    h.upstream_send(u, &ok("fine"));
    let buf = h.take_client(c);
    assert!(buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"));
    assert!(!contains(&buf, b" 103 "), "no 1xx to HTTP/1.0 clients");
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
fn response_with_te_and_cl_is_502_and_the_connection_closed() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(
        u,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(responses(&mut h, c)[0].status, 502);
    assert!(h.upstreams[&u].closed);
    assert!(!h.core.is_pooled(u));
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
