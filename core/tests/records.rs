//! What an exchange's record says for access logs, metrics and the operator log: every
//! upstream attempt with its times, status or failure; Host, Referer, User-Agent and the
//! request id (generated and forwarded, or the client's own); how the exchange ended (a client
//! that gave up: 499; cut at shutdown: 444); `$body_bytes_sent`.

mod common;

use core::time::Duration;

use common::*;
use upkeep_core::sim::Harness;
use upkeep_core::{End, ExchangeInfo};

fn recording(servers: usize) -> Harness {
    let mut h = Harness::new(config(servers));
    h.core.record_exchanges(true);
    h.core.record_requests(true);
    h.core.record_request_fields(true);
    h.core.set_request_id_prefix(0xabc);
    h
}

fn one(h: &mut Harness) -> ExchangeInfo {
    let ex = h.core.poll_exchange().expect("recorded");
    assert_eq!(h.core.poll_exchange(), None, "one record");
    ex
}

#[test]
fn a_failed_connect_then_a_retry_records_both_attempts() {
    let mut h = recording(2);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(
        c,
        b"GET /x HTTP/1.1\r\nHost: shop\r\nReferer: http://r/\r\nUser-Agent: t/1\r\n\r\n",
    );
    h.advance(Duration::from_millis(3));
    h.refuse_connect().expect("a connect");
    h.advance(Duration::from_millis(2));
    let u = h.accept_connect().expect("the next server");
    h.advance(Duration::from_millis(4));
    let sent = requests(&mut h, u);
    assert_eq!(
        sent[0].header("x-request-id"),
        Some("0000000000000abc0000000000000001"),
        "the generated id is forwarded"
    );
    h.upstream_send(u, &ok("hello"));
    let ex = one(&mut h);
    assert_eq!(ex.end, End::Complete);
    assert_eq!(ex.tries.len(), 2);
    let (a, b) = (&ex.tries[0], &ex.tries[1]);
    assert_eq!(a.failure, Some("connect_failed"));
    assert_eq!((a.status, a.connected, a.header), (0, None, None));
    assert_eq!(a.ended.unwrap().since(a.started), Duration::from_millis(3));
    assert_ne!(a.server, b.server);
    assert_eq!((b.status, b.failure, b.reused), (200, None, false));
    assert_eq!(
        b.connected.unwrap().since(b.started),
        Duration::from_millis(2)
    );
    assert_eq!(b.header.unwrap().since(b.started), Duration::from_millis(6));
    assert_eq!(ex.server, Some(b.server));
    assert_eq!(&ex.fields.host[..], b"shop");
    assert_eq!(&ex.fields.referer[..], b"http://r/");
    assert_eq!(&ex.fields.user_agent[..], b"t/1");
    assert_eq!(
        &ex.fields.request_id[..],
        b"0000000000000abc0000000000000001"
    );
    assert_eq!(ex.body_bytes_sent, 5);
    assert!(ex.bytes_sent > 5);
}

#[test]
fn the_clients_own_request_id_is_kept_and_not_doubled() {
    let mut h = recording(1);
    let c = h.connect_client();
    h.client_send(
        c,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-1\r\n\r\n",
    );
    let u = busy_upstream(&h).unwrap();
    let raw = h.take_upstream(u);
    assert_eq!(
        raw.windows(13)
            .filter(|w| w.eq_ignore_ascii_case(b"x-request-id:"))
            .count(),
        1,
        "{}",
        String::from_utf8_lossy(&raw)
    );
    h.upstream_send(u, &ok(""));
    let ex = one(&mut h);
    assert_eq!(&ex.fields.request_id[..], b"abc-1");
    // Without recording requests nothing is added to the forwarded head.
    let mut quiet = Harness::new(config(1));
    let c = quiet.connect_client();
    quiet.client_send(c, &get("/"));
    let u = busy_upstream(&quiet).unwrap();
    assert!(!contains(&quiet.take_upstream(u), b"X-Request-Id"));
}

#[test]
fn a_client_that_gives_up_before_the_response_is_logged_499() {
    let mut h = recording(1);
    let c = h.connect_client();
    h.client_send(c, &get("/slow"));
    let _u = busy_upstream(&h).unwrap();
    h.advance(Duration::from_millis(50));
    h.reset(c);
    let ex = one(&mut h);
    assert_eq!((ex.status, ex.end), (499, End::ClientAborted));
    assert_eq!(ex.tries.len(), 1);
    assert!(ex.tries[0].ended.is_some());
    assert_eq!(ex.body_bytes_sent, 0);
}

#[test]
fn exchanges_cut_at_shutdown_are_recorded() {
    let mut h = recording(1);
    let c = h.connect_client();
    h.client_send(c, &get("/a"));
    let idle = h.connect_client();
    assert_eq!(h.core.abort_exchanges(h.now), 1, "only the one in progress");
    let ex = one(&mut h);
    assert_eq!((ex.client, ex.status, ex.end), (c, 444, End::Shutdown));
    let _ = idle;
}

#[test]
fn our_own_answers_count_only_their_body_as_body_bytes() {
    let mut h = recording(1);
    h.core.record_requests(true);
    let c = h.connect_client();
    h.client_send(
        c,
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    let ex = one(&mut h);
    assert_eq!(ex.status, 400);
    let raw = h.take_client(c);
    let body = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(ex.body_bytes_sent, (raw.len() - body) as u64);
    assert!(ex.tries.is_empty());
}

/// A server that fails after its response started (closes, times out) cuts the client's
/// response: recorded as such with the failure — not as a client abort, and not dropped (the
/// access log, the operator log and the timeout counters need it).
#[test]
fn a_server_failing_mid_response_is_recorded_as_upstream_failed() {
    let mut h = recording(1);
    let c = h.connect_client();
    h.client_send(c, &get("/big"));
    let u = busy_upstream(&h).unwrap();
    h.upstream_send(
        u,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    h.reset(u);
    let ex = one(&mut h);
    assert_eq!((ex.status, ex.end), (200, End::UpstreamFailed));
    assert_eq!(ex.tries.len(), 1);
    assert_eq!(
        (ex.tries[0].status, ex.tries[0].failure),
        (200, Some("closed"))
    );
    assert_eq!(ex.body_bytes_sent, 10);
    // Timed out mid-body: the read timeout is named.
    let mut h = recording(1);
    let c = h.connect_client();
    h.client_send(c, &get("/stalls"));
    let u = busy_upstream(&h).unwrap();
    h.upstream_send(
        u,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    h.advance(Duration::from_secs(3600));
    let ex = one(&mut h);
    assert_eq!(ex.end, End::UpstreamFailed);
    assert_eq!(ex.tries[0].failure, Some("read_timeout"));
}

/// The X-Request-Id fields the backend received, and the id the record shows.
fn forwarded_ids(request: &[u8]) -> (Vec<String>, String) {
    let mut h = recording(1);
    let c = h.connect_client();
    h.client_send(c, request);
    let u = busy_upstream(&h).unwrap();
    let sent = requests(&mut h, u);
    let ids = sent[0]
        .headers_named("x-request-id")
        .into_iter()
        .map(String::from)
        .collect();
    h.upstream_send(u, &ok(""));
    let ex = one(&mut h);
    (
        ids,
        String::from_utf8_lossy(&ex.fields.request_id).into_owned(),
    )
}

#[test]
fn the_backend_sees_exactly_the_logged_request_id() {
    let generated = |id: &str| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit());
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: {}\r\n\r\n",
        "x".repeat(4000)
    );
    let cases: [&[u8]; 5] = [
        // Empty: a generated id, not the empty field next to it.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: \r\n\r\n",
        // Spaces and quotes would forge fields of the key=value access log.
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: x end=shutdown \"q\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nx-request-id: caf\xc3\xa9\r\n\r\n",
        huge.as_bytes(),
        b"GET / HTTP/1.1\r\nX-Request-Id:\r\nHost: a\r\nX-REQUEST-ID: \\\r\n\r\n",
    ];
    for req in cases {
        let (ids, logged) = forwarded_ids(req);
        assert!(
            generated(&logged),
            "{logged:?} for {:?}",
            String::from_utf8_lossy(req)
        );
        assert_eq!(ids, [logged.as_str()], "{:?}", String::from_utf8_lossy(req));
    }
    // Duplicates: the first usable one is the id, and the only one forwarded.
    let (ids, logged) = forwarded_ids(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: one\r\nX-Request-Id: two\r\n\r\n",
    );
    assert_eq!((ids, logged.as_str()), (vec!["one".to_string()], "one"));
    // A usable one alone passes as sent.
    let (ids, logged) = forwarded_ids(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-1\r\n\r\n");
    assert_eq!((ids, logged.as_str()), (vec!["abc-1".to_string()], "abc-1"));
}

/// A FIN after a complete request is a half-close, not a client giving up: 200, complete.
#[test]
fn a_half_close_after_a_complete_request_is_no_abort() {
    let mut h = recording(1);
    let c = h.connect_client();
    h.client_send(c, &get("/x"));
    h.client_eof(c);
    let u = busy_upstream(&h).unwrap();
    h.upstream_send(u, &ok("hi"));
    let ex = one(&mut h);
    assert_eq!((ex.status, ex.end), (200, End::Complete));
}
