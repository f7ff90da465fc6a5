//! Bytes a backend sends beyond its response never answer the next request (stop 27's review:
//! a pooled connection was handed on while the socket still held such bytes, whenever the read
//! that ended the response filled all its room or a splice ended the body).
//!
//! - A response that ends on a read which filled its room ([`Input::ReceivedFull`]; the
//!   runtimes' `read_with` tells it itself) or on a splice *settles*: the connection keeps its
//!   slot, out of the pool, until a read finds the socket empty ([`Input::Drained`]); a byte or
//!   an end of stream closes it instead, and a runtime that never looks has it closed after
//!   `SETTLE_TIMEOUT`.
//! - Bytes on a reused connection before any byte of its request was written are not its
//!   answer: the connection closes and the request, unsent, goes on a fresh connection.

use upkeep_core::sim::Harness;
use upkeep_core::{ConnId, Input, NotReusable};

mod common;
use common::*;

const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";

/// The backend's `data` arrives on `u` in a read that filled its room. Not pumped: what the
/// runtime does next (read again, or not) is up to the test.
fn full_read(h: &mut Harness, u: ConnId, data: &[u8]) {
    let now = h.now;
    h.core.handle(now, Input::ReceivedFull { conn: u, data });
}

/// The next read of `u` brings a response nobody asked for ([`STRAY`]); pumped.
fn stray_read(h: &mut Harness, u: ConnId) {
    let now = h.now;
    h.core.handle(
        now,
        Input::Received {
            conn: u,
            data: STRAY,
        },
    );
    h.pump();
}

/// One exchange on a connection that then sits in the pool; the client sends `req` next, which
/// reuses it, and the backend does not take it in yet (nothing of it is reported written).
fn reused_unwritten(req: &[u8]) -> (Harness, ConnId, ConnId) {
    let (mut h, c, u) = forwarded("/a");
    h.upstream_send(u, &ok("a"));
    assert_eq!(responses(&mut h, c)[0].body, b"a");
    assert!(h.core.is_pooled(u));
    h.stall(u, true);
    h.client_send(c, req);
    assert!(!h.core.is_pooled(u), "reused");
    (h, c, u)
}

#[test]
fn a_response_ended_by_a_full_read_is_pooled_once_a_read_finds_the_socket_empty() {
    let (mut h, c, u) = forwarded("/a");
    full_read(&mut h, u, &ok("a"));
    let now = h.now;
    assert!(h.core.is_settling(u), "the socket may hold more");
    assert!(!h.core.is_pooled(u));
    h.pump();
    assert!(h.core.is_settling(u), "until a read says");
    // A runtime reads again after a read that filled its room: the socket is empty.
    h.core.handle(now, Input::Drained { conn: u });
    h.pump();
    assert!(
        h.core.is_pooled(u),
        "pooled after the read that found nothing"
    );
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"a");
    // Reused for the next request.
    h.client_send(c, &get("/b"));
    assert_eq!(busy_upstream(&h), Some(u));
    no_leaks(&mut h);
}

#[test]
fn bytes_behind_a_full_read_close_the_connection_and_the_next_request_goes_on_a_fresh_one() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &[get("/1"), get("/2")].concat());
    let u = busy_upstream(&h).unwrap();
    assert_eq!(requests(&mut h, u).len(), 1, "pipelined: one at a time");
    full_read(&mut h, u, &ok("one"));
    // The next read of the socket brings what the backend wrote behind its response.
    stray_read(&mut h, u);
    assert!(!h.core.is_open(u), "closed, never pooled");
    assert!(
        requests(&mut h, u).is_empty(),
        "the second request never went on it"
    );
    let u2 = busy_upstream(&h).expect("the second request on a fresh connection");
    assert_ne!(u2, u);
    assert_eq!(requests(&mut h, u2)[0].path, "/2");
    h.upstream_send(u2, &ok("two"));
    let rs = responses(&mut h, c);
    let bodies: Vec<&[u8]> = rs.iter().map(|r| &r.body[..]).collect();
    assert_eq!(bodies, [&b"one"[..], &b"two"[..]]);
    let not_reused = &h.core.stats().groups[0].not_reused;
    assert_eq!(not_reused[NotReusable::UnexpectedData as usize], 1);
    no_leaks(&mut h);
}

#[test]
fn the_next_in_line_waits_for_a_settling_connection_to_a_one_at_a_time_server() {
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 1;
    let mut h = Harness::new(cfg);
    let a = h.connect_client();
    h.client_send(a, &get("/a"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    let b = h.connect_client();
    h.client_send(b, &get("/b"));
    assert_eq!(connects(&h), 1, "b waits for the one slot");
    full_read(&mut h, u, &ok("a"));
    let now = h.now;
    assert!(h.core.is_settling(u));
    assert!(
        busy_upstream(&h).is_none(),
        "b's request goes nowhere while the connection settles"
    );
    h.core.handle(now, Input::Drained { conn: u });
    h.pump();
    assert_eq!(connects(&h), 1, "no second connection to the server");
    assert_eq!(
        busy_upstream(&h),
        Some(u),
        "b's request took the settled one"
    );
    assert_eq!(requests(&mut h, u)[0].path, "/b");
    h.upstream_send(u, &ok("b"));
    assert_eq!(responses(&mut h, a)[0].body, b"a");
    assert_eq!(responses(&mut h, b)[0].body, b"b");
    no_leaks(&mut h);
}

#[test]
fn a_settling_connection_nobody_reads_closes_after_the_settle_timeout() {
    let (mut h, c, u) = forwarded("/a");
    full_read(&mut h, u, &ok("a"));
    // Not pumped: no read ever comes.
    h.advance(secs(1));
    assert!(!h.core.is_open(u), "closed rather than pooled unseen");
    assert_eq!(
        responses(&mut h, c)[0].body,
        b"a",
        "the client has its answer"
    );
    let not_reused = &h.core.stats().groups[0].not_reused;
    assert_eq!(not_reused[NotReusable::Timeout as usize], 1);
    no_leaks(&mut h);
}

#[test]
fn bytes_behind_a_spliced_body_close_the_connection() {
    let mut cfg = config(1);
    cfg.limits.splice_min = 1024;
    let mut h = Harness::new(cfg);
    h.enable_splice(1 << 20);
    let c = h.connect_client();
    h.client_send(c, &[get("/1"), get("/2")].concat());
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    let body = body_of(64 * KIB, 3);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    // One write: head, body, and a response nobody asked for.
    h.upstream_send(u, &[head.as_bytes(), &body, STRAY].concat());
    assert!(h.core.stats().spliced_bytes > 0, "the body was spliced");
    assert!(!h.core.is_open(u), "closed, never pooled");
    let u2 = busy_upstream(&h).expect("the second request on a fresh connection");
    assert_eq!(requests(&mut h, u2)[0].path, "/2");
    h.upstream_send(u2, &ok("two"));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 2);
    assert!(rs[0].body == body, "the spliced body whole");
    assert_eq!(rs[1].body, b"two");
    no_leaks(&mut h);
}

#[test]
fn bytes_on_a_reused_connection_before_its_request_is_written_are_not_its_answer() {
    // The backend does not take /b in (yet) ...
    let (mut h, c, u) = reused_unwritten(&get("/b"));
    // ... and bytes arrive before any of it was written: leftovers, not its answer.
    h.upstream_send(u, STRAY);
    assert!(!h.core.is_open(u), "closed");
    let u2 = busy_upstream(&h).expect("/b re-sent on a fresh connection");
    assert_ne!(u2, u);
    assert_eq!(requests(&mut h, u2)[0].path, "/b");
    h.upstream_send(u2, &ok("b"));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"b");
    assert_eq!(
        h.core.stats().groups[0].stale_retries,
        1,
        "the keepalive race"
    );
    no_leaks(&mut h);
}

#[test]
fn a_health_check_answer_ended_by_a_full_read_settles_too() {
    let mut cfg = config(1);
    cfg.upstreams[0].health_check = Some(upkeep_core::config::HealthCheck {
        path: "/healthz".into(),
        interval: secs(1),
        timeout: core::time::Duration::from_millis(500),
        ..upkeep_core::config::HealthCheck::default()
    });
    let mut h = Harness::new(cfg);
    h.core.start(h.now);
    h.pump();
    let u = *h.upstreams.keys().next().expect("the check's connection");
    assert_eq!(requests(&mut h, u)[0].path, "/healthz");
    full_read(&mut h, u, &ok("ok"));
    assert!(h.core.is_settling(u), "the socket may hold more");
    // A client's request meanwhile does not take it ...
    let c = h.connect_client();
    h.client_send(c, &get("/x"));
    assert_ne!(busy_upstream(&h), Some(u));
    // ... and what was behind the answer closes it.
    stray_read(&mut h, u);
    assert!(!h.core.is_open(u));
    let u2 = busy_upstream(&h).expect("/x on another connection");
    h.upstream_send(u2, &ok("x"));
    assert_eq!(responses(&mut h, c)[0].body, b"x");
}

#[test]
fn a_post_met_by_stray_bytes_before_it_was_reported_written_is_never_sent_twice() {
    let (mut h, c, u) = reused_unwritten(&[post_head("/pay", 3), b"abc".to_vec()].concat());
    // A runtime whose writes complete later (io_uring) may have handed it to the kernel.
    h.upstream_send(u, STRAY);
    assert!(!h.core.is_open(u), "closed");
    assert!(
        busy_upstream(&h).is_none(),
        "not re-sent: it may have reached the backend already"
    );
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 502);
    no_leaks(&mut h);
}

#[test]
fn a_post_met_by_an_idle_timeout_408_before_it_was_reported_written_is_sent_again() {
    let (mut h, c, u) = reused_unwritten(&[post_head("/pay", 3), b"abc".to_vec()].concat());
    // The backend's idle-timeout notice says it took nothing in (RFC 9110 §15.5.9).
    h.upstream_send(
        u,
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(!h.core.is_open(u), "closed");
    let u2 = busy_upstream(&h).expect("re-sent on a fresh connection");
    assert_eq!(requests(&mut h, u2)[0].path, "/pay");
    h.upstream_send(u2, &ok("paid"));
    assert_eq!(responses(&mut h, c)[0].body, b"paid");
    no_leaks(&mut h);
}
