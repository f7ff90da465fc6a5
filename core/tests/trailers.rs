//! Chunked trailers: forwarded in both directions when both sides are chunked and the client
//! sent `TE: trailers` (hop-by-hop, framing and other fields RFC 9110 §6.5.1 keeps out of
//! trailers are dropped from them), discarded otherwise — whatever the reads' split.

use upkeep_core::sim::Harness;

mod common;
use common::*;

const REQ_TRAILERS: &[u8] =
    b"0\r\nX-Sum: 7\r\nContent-Length: 3\r\nConnection: x\r\nX-Late: a, b\r\n\r\n";
const RESP_TRAILERS: &[u8] =
    b"0\r\ngrpc-status: 0\r\nTransfer-Encoding: chunked\r\ngrpc-message: ok\r\n\r\n";

/// A chunked POST (with `te`, `TE: trailers`) and its chunked response, both carrying trailers
/// sent `split` bytes at a time: what the backend and the client received, raw.
fn relay(te: bool, split: usize) -> (Vec<u8>, Vec<u8>, Harness) {
    let mut h = harness();
    let c = h.connect_client();
    let te = if te { "TE: trailers\r\n" } else { "" };
    let mut req = format!(
        "POST /t HTTP/1.1\r\nHost: a\r\n{te}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    .into_bytes();
    req.extend_from_slice(REQ_TRAILERS);
    for piece in req.chunks(split) {
        h.client_send(c, piece);
    }
    let u = h.last_upstream().expect("forwarded");
    let upstream = h.take_upstream(u);
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec();
    resp.extend_from_slice(RESP_TRAILERS);
    for piece in resp.chunks(split) {
        h.upstream_send(u, piece);
    }
    let client = h.take_client(c);
    (upstream, client, h)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn announced_trailers_are_forwarded_both_ways_without_hop_by_hop_fields() {
    for split in [1, 2, 7, 1000] {
        let (upstream, client, mut h) = relay(true, split);
        let up = text(&upstream);
        assert!(
            up.contains("\r\nTE: trailers\r\nConnection: te\r\n"),
            "{up}"
        );
        assert!(
            up.ends_with("5\r\nhello\r\n0\r\nX-Sum: 7\r\nX-Late: a, b\r\n\r\n"),
            "split {split}: {up}"
        );
        let down = text(&client);
        assert!(
            down.ends_with("3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n"),
            "split {split}: {down}"
        );
        // The exchange completed normally: the connection is pooled, nothing leaks.
        no_leaks(&mut h);
    }
}

#[test]
fn trailers_are_dropped_unless_the_client_sent_te_trailers() {
    for split in [1, 1000] {
        let (upstream, client, mut h) = relay(false, split);
        let up = text(&upstream);
        assert!(!up.contains("TE:"), "{up}");
        assert!(up.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{up}");
        assert!(text(&client).ends_with("3\r\nabc\r\n0\r\n\r\n"));
        no_leaks(&mut h);
    }
}

#[test]
fn trailers_are_dropped_where_one_side_is_not_chunked() {
    // A Content-Length response to a client that asked for trailers: nothing to forward, and
    // a chunked response to an HTTP/1.0 client goes out close-delimited, trailers dropped.
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"GET /a HTTP/1.0\r\nHost: a\r\nTE: trailers\r\n\r\n");
    let u = h.last_upstream().unwrap();
    let up = text(&h.take_upstream(u));
    assert!(!up.contains("TE: trailers"), "HTTP/1.0: {up}");
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec();
    resp.extend_from_slice(RESP_TRAILERS);
    h.upstream_send(u, &resp);
    let down = text(&h.take_client(c));
    assert!(down.ends_with("\r\n\r\nabc"), "{down}");
}
