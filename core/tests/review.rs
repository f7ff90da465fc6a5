//! Adversarial review scenarios: the engine driven through the public API by the in-memory
//! harness. Each test asserts the behaviour the rules doc (`shared/docs/http-proxy-rules.md`),
//! RFC 9110/9112 or nginx would show. Failing tests document engine bugs.

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;

use upkeep_core::UpstreamId;
use upkeep_core::config::Balance;
use upkeep_core::sim::Harness;
use upkeep_core::sim::http::read_responses;

mod common;
use common::*;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// =====================================================================================
// Tests expected to FAIL (engine bugs)
// =====================================================================================

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

/// The upstream answers early (head + part of the body) while the client is still streaming a
/// chunked request body; then the client sends a malformed chunk. The proxy must abort the client
/// connection (the 200 is already under way): it must never append a `400` response into the
/// middle of the 200's body, which the client would read as body bytes.
#[test]
fn bad_request_body_after_response_started_never_injects_a_400_into_the_body() {
    let mut h = harness();
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
    let mut cfg = config(1);
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

/// Rule 12: "Never retry after any part of the response has been received or forwarded." On a
/// reused connection the upstream sends `103 Early Hints` (forwarded to the client) and then
/// closes. The request must not be re-sent (the client already saw part of this response).
#[test]
fn no_stale_retry_after_an_interim_response_was_forwarded() {
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.client_send(c, &get("/2"));
    assert_eq!(busy_upstream(&h), Some(u1), "reused");
    h.take_upstream(u1);
    h.upstream_send(u1, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
    h.upstream_eof(u1);
    assert_eq!(
        connects(&h),
        1,
        "the request was re-sent after part of the response (a 103) reached the client"
    );
    let buf = h.take_client(c);
    let (rs, _) = read_responses(&buf, &[], true);
    assert_eq!(rs[0].status, 502);
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

/// nginx: "If there is only a single server in a group, max_fails, fail_timeout and slow_start
/// parameters are ignored, and such a server will never be considered unavailable." A single
/// backend that refused one connect (e.g. it was restarting) must be tried again for the next
/// request instead of a 10 s window of instant 502s.
#[test]
fn single_server_group_is_never_marked_unavailable() {
    let mut h = harness();
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    h.refuse_connect().unwrap();
    assert_eq!(responses(&mut h, c)[0].status, 502);
    let before = connects(&h);
    h.client_send(c, &get("/2"));
    assert_eq!(
        connects(&h),
        before + 1,
        "the only server is tried again (nginx never marks a single server down)"
    );
}

// =====================================================================================
// Tests expected to PASS (document correct behaviour)
// =====================================================================================

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

#[test]
fn request_body_arriving_after_connect_failure_follows_to_the_next_server() {
    let mut h = Harness::new(config(2));
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nfirst",
    );
    h.refuse_connect().unwrap();
    h.client_send(c, b"-last");
    let u2 = h.accept_connect().unwrap();
    assert_eq!(h.upstreams[&u2].server.unwrap().index, 1);
    let r = requests(&mut h, u2);
    assert_eq!(r[0].body, b"first-last");
    h.upstream_send(u2, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

#[test]
fn body_arriving_after_stale_retry_is_sent_once_on_the_new_connection() {
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.client_send(
        c,
        b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nfirst",
    );
    assert_eq!(busy_upstream(&h), Some(u1));
    h.take_upstream(u1);
    h.reset(u1);
    h.client_send(c, b"-last");
    let u2 = busy_upstream(&h).expect("retried");
    assert_ne!(u2, u1);
    let r = requests(&mut h, u2);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].body, b"first-last");
    h.upstream_send(u2, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

#[test]
fn stale_retry_after_partial_write_with_small_write_chunks() {
    let mut h = harness();
    h.write_chunk = Some(7);
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    // Stall the pooled connection after a partial write: let the head be written partly.
    h.stall(u1, true);
    h.client_send(
        c,
        b"PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody",
    );
    assert!(h.core.pending_len(u1) > 0);
    h.reset(u1);
    let u2 = busy_upstream(&h).expect("retried on a fresh connection");
    let r = requests(&mut h, u2);
    assert_eq!((r.len(), r[0].method.as_str()), (1, "PUT"));
    assert_eq!(r[0].body, b"body");
    h.upstream_send(u2, &ok("y"));
    assert_eq!(responses(&mut h, c)[0].body, b"y");
}

#[test]
fn upstream_answers_early_then_body_completes() {
    let mut h = harness();
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
fn keep_alive_timeout_zero_delivers_content_and_is_not_pooled() {
    let (mut h, c) = {
        let mut h = harness();
        let c = h.connect_client();
        (h, c)
    };
    let (u, rs) = exchange(
        &mut h,
        c,
        &get("/"),
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=0\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(rs[0].body, b"hello");
    assert_eq!(rs[0].header("keep-alive"), None);
    assert!(!h.core.is_pooled(u));
    assert!(h.upstreams[&u].closed);
    let (u2, rs) = exchange(&mut h, c, &get("/2"), &ok("x"));
    assert_eq!(rs[0].status, 200);
    assert_ne!(u2, u);
}

#[test]
fn connect_timeout_moves_to_the_second_server_then_504_when_both_time_out() {
    let mut cfg = config(2);
    cfg.upstreams[0].connect_timeout = Duration::from_millis(500);
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/"));
    h.advance(Duration::from_millis(600));
    assert_eq!(h.connects.len(), 1, "moved on to server 2");
    let u2 = h.connects[0];
    assert_eq!(h.upstreams[&u2].server.unwrap().index, 1);
    assert!(h.take_client(c).is_empty());
    h.advance(Duration::from_millis(600));
    assert_eq!(responses(&mut h, c)[0].status, 504);
    assert_eq!(connects(&h), 2);
    assert!(h.core.poll_timeout().is_none_or(|t| t > h.now));
}

#[test]
fn next_upstream_tries_one_does_not_move_on() {
    let mut cfg = config(2);
    cfg.upstreams[0].next_upstream_tries = 1;
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/"));
    h.refuse_connect().unwrap();
    assert!(h.connects.is_empty());
    assert_eq!(responses(&mut h, c)[0].status, 502);
    assert_eq!(connects(&h), 1);
}

#[test]
fn second_request_after_502_from_a_dead_server_goes_to_the_live_one() {
    let mut h = Harness::new(config(2));
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let u1 = h.refuse_connect().unwrap();
    assert_eq!(h.upstreams[&u1].server.unwrap().index, 0);
    h.refuse_connect().unwrap();
    assert_eq!(responses(&mut h, c)[0].status, 502);
    assert!(
        !h.clients[&c].closed,
        "502 for a complete request keeps the client"
    );
    // Server 1 recovers after its fail_timeout.
    h.advance(Duration::from_secs(11));
    h.client_send(c, &get("/2"));
    let u = h.accept_connect().expect("tried again after fail_timeout");
    requests(&mut h, u);
    h.upstream_send(u, &ok("back"));
    assert_eq!(responses(&mut h, c)[0].body, b"back");
}

#[test]
fn ip_hash_sticks_a_client_to_one_server() {
    let mut cfg = config(3);
    cfg.upstreams[0].balance = Balance::IpHash;
    let mut h = Harness::new(cfg);
    for n in 0..4u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, n));
        let mut servers = Vec::new();
        for i in 0..4 {
            let c = h.connect_client_from(ip);
            let (u, rs) = exchange(&mut h, c, &get(&format!("/{i}")), &ok("x"));
            assert_eq!(rs[0].status, 200);
            servers.push(h.upstreams[&u].server.unwrap().index);
        }
        assert!(servers.iter().all(|&s| s == servers[0]), "{servers:?}");
    }
}

#[test]
fn least_conn_prefers_the_idle_server() {
    let mut cfg = config(2);
    cfg.upstreams[0].balance = Balance::LeastConn;
    let mut h = Harness::new(cfg);
    let c1 = h.connect_client();
    h.client_send(c1, &get("/slow"));
    let u1 = busy_upstream(&h).unwrap();
    requests(&mut h, u1);
    let s1 = h.upstreams[&u1].server.unwrap().index;
    for i in 0..3 {
        let c = h.connect_client();
        let (u, _) = exchange(&mut h, c, &get(&format!("/{i}")), &ok("q"));
        assert_ne!(
            h.upstreams[&u].server.unwrap().index,
            s1,
            "busy server avoided"
        );
    }
    h.upstream_send(u1, &ok("s"));
    assert_eq!(responses(&mut h, c1)[0].body, b"s");
}

#[test]
fn stalled_client_with_large_chunked_response_stays_bounded() {
    let mut cfg = config(1);
    cfg.client_timeouts.send = Duration::from_secs(5);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(c, &get("/big"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = [
        format!("{:x}\r\n", 32 * 1024).into_bytes(),
        vec![b'q'; 32 * 1024],
        b"\r\n".to_vec(),
    ]
    .concat();
    for _ in 0..64 {
        h.upstream_send(u, &chunk);
    }
    h.upstream_send(u, b"0\r\n\r\n");
    assert!(!h.upstreams[&u].reading, "upstream read interest off");
    let q = h.core.pending_len(c);
    assert!(q <= 256 * 1024 + 64 * 1024, "client queue bounded: {q}");
    h.stall(c, false);
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body.len(), 64 * 32 * 1024);
    assert!(rs[0].body.iter().all(|&b| b == b'q'));
    assert!(h.core.is_pooled(u));
}

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

#[test]
fn everything_closes_and_no_timer_is_left_armed() {
    let mut cfg = config(2);
    cfg.upstreams[0].keepalive_timeout = Duration::from_secs(2);
    let mut h = Harness::new(cfg);
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = h.connect_client();
        exchange(&mut h, c, &get(&format!("/{i}")), &ok("x"));
        clients.push(c);
    }
    // A client mid-body, a client mid-head, a tunnel.
    let cb = h.connect_client();
    h.client_send(
        cb,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab",
    );
    let ch = h.connect_client();
    h.client_send(ch, b"GET / HTT");
    for c in clients.iter().chain([&cb, &ch]) {
        h.client_eof(*c);
    }
    assert_eq!(h.core.client_connections(), 0);
    h.advance(Duration::from_secs(3));
    assert_eq!(h.core.connections(), 0, "pooled connections expired");
    assert_eq!(h.core.poll_timeout(), None, "no timer left armed");
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

#[test]
fn pool_stats_count_one_idle_connection_after_sequential_clients() {
    let mut h = harness();
    for i in 0..3 {
        let c = h.connect_client();
        exchange(&mut h, c, &get(&format!("/{i}")), &ok("x"));
        h.client_eof(c);
        assert!(h.clients[&c].closed);
    }
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 1);
    assert_eq!(h.core.connections(), 1);
}
