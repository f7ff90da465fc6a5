//! Retries: when a request moves to another connection or server — a stale pooled connection
//! retried fresh (never after any part of the response reached the client, never beyond the
//! replay copy of the body, never a sent POST), `next_upstream_tries`, connect failures and
//! connect timeouts moving the request (and the body still streaming) to the next server, and
//! the status answered when every try failed. The engine is driven through its public API by
//! the in-memory harness (`upkeep_core::sim::Harness`), which refuses, accepts or times out
//! each connect as the test says.

use core::time::Duration;

use upkeep_core::sim::Harness;
use upkeep_core::sim::http::read_responses;

mod common;
use common::*;

#[test]
fn body_arriving_after_stale_retry_is_sent_once_on_the_new_connection() {
    let mut h = Harness::new(streaming(config(1)));
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

#[test]
fn request_body_arriving_after_connect_failure_follows_to_the_next_server() {
    let mut h = Harness::new(streaming(config(2)));
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
fn connect_timeout_while_the_body_is_still_streaming_moves_it_whole() {
    let mut cfg = streaming(config(2));
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

/// A server that refuses our client certificate tells us (in TLS 1.3) only after the handshake,
/// once the request is written: the runtime reports `ConnectRejected` on that fresh, unanswered
/// connection. A 502, no other server tried, the server's health untouched. On a connection
/// that already served a request, the same input is a plain failure of that connection.
#[test]
fn rejected_after_the_handshake_is_a_502_that_never_blames_the_server() {
    let mut h = Harness::new(config(2));
    let c = h.connect_client();
    h.client_send(c, &get("/a"));
    let u = busy_upstream(&h).expect("connected");
    assert_eq!(requests(&mut h, u).len(), 1, "the request went out");
    h.core
        .handle(h.now, upkeep_core::Input::ConnectRejected { conn: u });
    h.pump();
    assert_eq!(responses(&mut h, c)[0].status, 502);
    assert_eq!(connects(&h), 1, "no other server tried");
    let stats = h.core.stats();
    assert_eq!(
        (stats.servers[0].failures, stats.servers[1].failures),
        (0, 0)
    );
    // A pooled connection that served a request: not a rejection, a failure (the keepalive
    // race here: re-sent on a fresh connection).
    let mut h = Harness::new(config(1));
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.client_send(c, &get("/2"));
    assert_eq!(busy_upstream(&h), Some(u1));
    h.take_upstream(u1);
    h.core
        .handle(h.now, upkeep_core::Input::ConnectRejected { conn: u1 });
    h.pump();
    let u2 = busy_upstream(&h).expect("re-sent on a fresh connection");
    assert_ne!(u2, u1);
    h.upstream_send(u2, &ok("y"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}
