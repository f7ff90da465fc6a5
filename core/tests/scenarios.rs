//! Scenario tests: the engine driven through its public API by the in-memory harness, one test
//! per rule a keepalive proxy must get right that belongs to the core. The harness plays the
//! runtime; each test plays the clients and the backends byte by byte.

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;

use upkeep_core::config::{Address, PoolKeyMode, ServerConfig};
use upkeep_core::pool::EvictReason;
use upkeep_core::sim::Harness;
use upkeep_core::sim::http::read_responses;
use upkeep_core::{ConnId, ServerId, UpstreamId};

mod common;
use common::*;

// ----- A. pool semantics -----

#[test]
fn sequential_requests_reuse_one_upstream_connection() {
    let mut h = harness();
    let c = h.connect_client();
    let mut used = Vec::new();
    for i in 0..5 {
        let (u, rs) = exchange(&mut h, c, &get(&format!("/{i}")), &ok("hi"));
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].status, 200);
        assert_eq!(rs[0].body, b"hi");
        used.push(u);
    }
    assert!(
        used.iter().all(|&u| u == used[0]),
        "one upstream connection serves all: {used:?}"
    );
    assert_eq!(connects(&h), 1);
    let g = &h.core.stats().groups[0];
    assert_eq!((g.pool_hits, g.pool_misses), (4, 1));
}

#[test]
fn short_client_connections_share_the_pool() {
    let mut h = harness();
    for i in 0..10 {
        let c = h.connect_client();
        let req = format!("GET /{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (u, rs) = exchange(&mut h, c, req.as_bytes(), &ok("x"));
        assert_eq!(rs[0].status, 200);
        assert!(h.clients[&c].closed, "client asked to close");
        assert!(
            h.core.is_pooled(u),
            "upstream connection survives the client's close"
        );
    }
    assert_eq!(connects(&h), 1);
}

#[test]
fn idle_cap_keeps_the_most_recent_and_closes_the_rest() {
    // Rule 1: cap 2, five concurrent requests → five connections; afterwards exactly 2 stay.
    let mut cfg = config(1);
    cfg.upstreams[0].keepalive = 2;
    let mut h = Harness::new(cfg);
    let clients: Vec<ConnId> = (0..5).map(|_| h.connect_client()).collect();
    for &c in &clients {
        h.client_send(c, &get("/"));
    }
    let ups = h.open_upstreams();
    assert_eq!(ups.len(), 5);
    for &u in &ups {
        requests(&mut h, u);
        h.upstream_send(u, &ok("k"));
    }
    for &c in &clients {
        assert_eq!(responses(&mut h, c).len(), 1);
    }
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 2);
    let open = h.open_upstreams();
    assert_eq!(
        open,
        ups[3..].to_vec(),
        "the two most recently released stay"
    );
    assert_eq!(h.core.stats().groups[0].evicted(EvictReason::Capacity), 3);
}

#[test]
fn reuse_is_most_recently_used_first() {
    // Rule 2: A then B released; the next request goes to B.
    let mut h = harness();
    let c1 = h.connect_client();
    let c2 = h.connect_client();
    h.client_send(c1, &get("/1"));
    h.client_send(c2, &get("/2"));
    let ups = h.open_upstreams();
    assert_eq!(ups.len(), 2);
    let (a, b) = (ups[0], ups[1]);
    requests(&mut h, a);
    requests(&mut h, b);
    h.upstream_send(a, &ok("a"));
    h.upstream_send(b, &ok("b"));
    h.client_send(c1, &get("/3"));
    assert_eq!(busy_upstream(&h), Some(b));
}

#[test]
fn a_request_for_one_server_never_uses_anothers_connection() {
    // Rule 3: two servers; each request uses a connection to the server it was balanced to.
    let mut h = Harness::new(config(2));
    let c = h.connect_client();
    for i in 0..8 {
        h.client_send(c, &get(&format!("/{i}")));
        let u = busy_upstream(&h).unwrap();
        let expected = ServerId {
            upstream: UpstreamId(0),
            index: i % 2,
        };
        assert_eq!(h.upstreams[&u].server, Some(expected), "round-robin target");
        requests(&mut h, u);
        h.upstream_send(u, &ok("x"));
        assert_eq!(responses(&mut h, c).len(), 1);
    }
    assert_eq!(connects(&h), 2);
}

#[test]
fn pool_partitioned_by_client_never_shares_connections_between_clients() {
    let mut cfg = config(1);
    cfg.upstreams[0].pool_key = PoolKeyMode::Client;
    let mut h = Harness::new(cfg);
    let a = h.connect_client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let (ua, _) = exchange(&mut h, a, &get("/a"), &ok("a"));
    let b = h.connect_client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let (ub, _) = exchange(&mut h, b, &get("/b"), &ok("b"));
    assert_ne!(ua, ub, "client b must not ride client a's connection");
    let a2 = h.connect_client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let (ua2, _) = exchange(&mut h, a2, &get("/a2"), &ok("a"));
    assert_eq!(ua2, ua, "the same client address reuses its own connection");
}

#[test]
fn keepalive_requests_caps_requests_per_upstream_connection() {
    // Rule 4: max 3 requests; 7 requests → connections carrying 3, 3, 1.
    let mut cfg = config(1);
    cfg.upstreams[0].keepalive_requests = 3;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let mut per_conn: Vec<(ConnId, usize)> = Vec::new();
    for i in 0..7 {
        let (u, rs) = exchange(&mut h, c, &get(&format!("/{i}")), &ok("x"));
        assert_eq!(rs[0].status, 200);
        match per_conn.last_mut() {
            Some((last, n)) if *last == u => *n += 1,
            _ => per_conn.push((u, 1)),
        }
    }
    assert_eq!(
        per_conn.iter().map(|p| p.1).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
}

#[test]
fn keepalive_time_retires_old_connections() {
    // Rule 5: lifetime 1 s; a request after 1.5 s uses a new connection.
    let mut cfg = config(1);
    cfg.upstreams[0].keepalive_time = Duration::from_secs(1);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.advance(Duration::from_millis(1500));
    assert!(
        h.upstreams[&u1].closed,
        "expired connection closed by the proxy"
    );
    let (u2, rs) = exchange(&mut h, c, &get("/2"), &ok("x"));
    assert_ne!(u1, u2);
    assert_eq!(rs[0].status, 200);
}

#[test]
fn idle_timeout_closes_pooled_connections() {
    // Rule 6: idle 200 ms; after 400 ms the connection is gone and a new one is used.
    let mut cfg = config(1);
    cfg.upstreams[0].keepalive_timeout = Duration::from_millis(200);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.advance(Duration::from_millis(400));
    assert!(h.upstreams[&u1].closed);
    assert_eq!(
        h.core.stats().groups[0].evicted(EvictReason::IdleTimeout),
        1
    );
    let (u2, rs) = exchange(&mut h, c, &get("/2"), &ok("x"));
    assert_ne!(u1, u2);
    assert_eq!(rs[0].status, 200);
}

#[test]
fn backend_keep_alive_timeout_hint_is_honoured() {
    // Rule 6 variant: the backend says timeout=2; our idle timeout is 60 s; after 1.5 s idle the
    // proxy has already let the connection go (2 s minus a 1 s margin).
    let mut h = harness();
    let c = h.connect_client();
    let resp = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 1\r\n\r\nx";
    let (u1, _) = exchange(&mut h, c, &get("/1"), resp);
    assert!(h.core.is_pooled(u1));
    h.advance(Duration::from_millis(1500));
    assert!(h.upstreams[&u1].closed);
    let (u2, _) = exchange(&mut h, c, &get("/2"), &ok("x"));
    assert_ne!(u1, u2);
}

#[test]
fn stray_408_on_an_idle_connection_never_reaches_a_client() {
    // Rule 7: the backend writes a 408 on the idle connection and closes it.
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("first"));
    h.advance(Duration::from_millis(50));
    h.upstream_send(
        u1,
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n",
    );
    h.upstream_eof(u1);
    assert!(h.upstreams[&u1].closed);
    assert_eq!(
        h.core.stats().groups[0].evicted(EvictReason::UnexpectedData),
        1
    );
    let (u2, rs) = exchange(&mut h, c, &get("/2"), &ok("real"));
    assert_ne!(u1, u2);
    assert_eq!(rs.len(), 1);
    assert_eq!((rs[0].status, &rs[0].body[..]), (200, &b"real"[..]));
}

#[test]
fn idle_connection_closed_by_backend_is_evicted() {
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.upstream_eof(u1);
    assert!(h.upstreams[&u1].closed);
    assert!(!h.core.is_pooled(u1));
    assert_eq!(h.core.stats().groups[0].evicted(EvictReason::PeerClosed), 1);
}

// ----- B. when a connection must not go back to the pool -----

fn not_pooled_after(resp: &[u8]) {
    let (mut h, c, u) = forwarded("/1");
    h.upstream_send(u, resp);
    // Self-delimited responses must be refused by the proxy itself, before any EOF could
    // evict the connection (a close-delimited one only ends at the EOF).
    if resp
        .windows(14)
        .any(|w| w.eq_ignore_ascii_case(b"content-length"))
    {
        assert!(
            h.upstreams[&u].closed,
            "closed as soon as the response ended"
        );
    } else if !h.upstreams[&u].closed {
        h.upstream_eof(u);
    }
    let rs = responses(&mut h, c);
    assert!(!rs.is_empty(), "client got a response");
    assert!(h.upstreams[&u].closed, "upstream connection not kept");
    assert!(!h.core.is_pooled(u));
}

#[test]
fn upstream_connection_close_is_not_pooled() {
    not_pooled_after(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
}

#[test]
fn http10_upstream_response_is_not_pooled() {
    not_pooled_after(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
    not_pooled_after(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok");
}

#[test]
fn close_delimited_response_is_rechunked_for_http11_clients_and_not_pooled() {
    let (mut h, c, u) = forwarded("/1");
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\n\r\nuntil ");
    h.upstream_send(u, b"close");
    h.upstream_eof(u);
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].body, b"until close");
    assert_eq!(rs[0].header("transfer-encoding"), Some("chunked"));
    assert!(
        !h.clients[&c].closed,
        "the client connection survives a re-chunked response"
    );
    assert!(h.upstreams[&u].closed);
}

#[test]
fn extra_bytes_after_the_response_close_the_upstream_connection() {
    // Rule 9(d): Content-Length 2 but the backend sends okEXTRA.
    let (mut h, c, u) = forwarded("/1");
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA");
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].body, b"ok");
    assert!(h.upstreams[&u].closed);
}

#[test]
fn client_gone_mid_response_closes_the_upstream_connection() {
    // Rule 9(e).
    let (mut h, c, u) = forwarded("/1");
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.reset(c);
    assert!(h.upstreams[&u].closed);
    assert!(!h.core.is_pooled(u));
    assert_eq!(h.core.connections(), 0);
}

#[test]
fn early_response_before_the_request_body_is_sent_is_not_pooled() {
    // Rule 9(f): the backend answers 413 while the client is still sending its body.
    let mut h = Harness::new(streaming(config(1)));
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nfirst part",
    );
    let u = busy_upstream(&h).unwrap();
    h.take_upstream(u);
    h.upstream_send(
        u,
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
    );
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].status, 413);
    assert!(
        h.upstreams[&u].closed,
        "never pooled with the request half-sent"
    );
}

#[test]
fn client_connection_semantics_never_leak_upstream() {
    // Rule 10: an HTTP/1.0 client and a Connection: close client share one upstream connection
    // spoken in HTTP/1.1 without Connection: close.
    let mut h = harness();
    let c1 = h.connect_client();
    h.client_send(c1, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n");
    let u = busy_upstream(&h).unwrap();
    let r = requests(&mut h, u);
    assert_eq!(r[0].version, 1);
    assert_eq!(r[0].header("connection"), None);
    assert_eq!(r[0].header("host"), Some("a"));
    h.upstream_send(u, &ok("x"));
    assert_eq!(responses(&mut h, c1)[0].status, 200);
    assert!(h.clients[&c1].closed, "HTTP/1.0 without keep-alive closes");
    let c2 = h.connect_client();
    h.client_send(
        c2,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(busy_upstream(&h), Some(u), "same upstream connection");
    let r = requests(&mut h, u);
    assert_eq!(r[0].header("connection"), None);
}

#[test]
fn http10_request_without_host_gets_the_group_name_as_host_upstream() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"GET / HTTP/1.0\r\n\r\n");
    let u = busy_upstream(&h).unwrap();
    let r = requests(&mut h, u);
    assert_eq!(r[0].headers_named("host"), vec!["default"]);
}

#[test]
fn http10_keep_alive_client_is_kept_alive() {
    let mut h = harness();
    let c = h.connect_client();
    let (_, rs) = exchange(
        &mut h,
        c,
        b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        &ok("x"),
    );
    assert_eq!(rs[0].header("connection"), Some("keep-alive"));
    assert!(!h.clients[&c].closed);
    let (_, rs) = exchange(
        &mut h,
        c,
        b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        &ok("y"),
    );
    assert_eq!(rs[0].body, b"y");
}

#[test]
fn chunked_response_to_http10_client_is_close_delimited() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(
        c,
        b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    );
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(
        u,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert!(
        h.clients[&c].closed,
        "no chunked for 1.0: the close delimits the body"
    );
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].body, b"abc");
    assert_eq!(rs[0].header("transfer-encoding"), None);
    assert!(h.core.is_pooled(u), "the upstream side was clean");
}

#[test]
fn why_an_upstream_connection_was_not_reused_is_counted() {
    use upkeep_core::NotReusable;
    let mut cfg = config(1);
    cfg.upstreams[0].keepalive_requests = 2;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let reasons = |h: &Harness| -> Vec<(NotReusable, u64)> {
        let st = h.core.stats();
        NotReusable::ALL
            .into_iter()
            .map(|r| (r, st.not_reused(r)))
            .filter(|&(_, n)| n > 0)
            .collect()
    };
    // The backend says Connection: close.
    let close = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx";
    exchange(&mut h, c, &get("/1"), close);
    assert_eq!(reasons(&h), [(NotReusable::ResponseClose, 1)]);
    // An HTTP/1.0 response.
    exchange(
        &mut h,
        c,
        &get("/2"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    );
    // keepalive_requests = 2: pooled after the first request, closed after the second.
    let (u, _) = exchange(&mut h, c, &get("/3"), &ok("x"));
    assert!(h.core.is_pooled(u));
    exchange(&mut h, c, &get("/4"), &ok("x"));
    assert!(!h.core.is_open(u));
    // The stale race: the next pooled connection is closed by the backend as we reuse it.
    let (u, _) = exchange(&mut h, c, &get("/5"), &ok("x"));
    h.client_send(c, &get("/6"));
    h.take_upstream(u);
    h.upstream_eof(u);
    let u2 = busy_upstream(&h).expect("retried");
    requests(&mut h, u2);
    // The client goes away before the retried request is answered.
    h.reset(c);
    assert_eq!(
        reasons(&h),
        [
            (NotReusable::Http10Response, 1),
            (NotReusable::ResponseClose, 1),
            (NotReusable::RequestsExhausted, 1),
            (NotReusable::ClientAborted, 1),
            (NotReusable::Stale, 1),
        ]
    );
    let st = h.core.stats();
    assert_eq!(st.groups[0].not_reused_for(NotReusable::Stale), 1);
    assert_eq!(st.groups[0].pool_checkins, 2);
    upstreams_accounted(&h.core);
    for r in NotReusable::ALL {
        assert!(!r.as_str().is_empty());
    }
}

#[test]
fn pooling_off_and_close_delimited_are_reasons_too() {
    use upkeep_core::NotReusable;
    let mut cfg = config(1);
    cfg.upstreams[0].keepalive = 0;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    exchange(&mut h, c, &get("/1"), &ok("x"));
    assert_eq!(h.core.stats().not_reused(NotReusable::PoolingOff), 1);
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\n\r\nuntil close");
    h.upstream_eof(u);
    assert_eq!(responses(&mut h, c)[0].body, b"until close");
    assert_eq!(h.core.stats().not_reused(NotReusable::CloseDelimited), 1);
    upstreams_accounted(&h.core);
}

// ----- C. the stale-connection race -----

#[test]
fn get_on_a_stale_pooled_connection_is_retried_on_a_fresh_one() {
    // Rule 12(a): the backend drops a pooled connection as the next request arrives.
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.client_send(c, &get("/2"));
    assert_eq!(busy_upstream(&h), Some(u1));
    h.take_upstream(u1);
    h.reset(u1);
    let u2 = busy_upstream(&h).expect("retried on a new connection");
    assert_ne!(u1, u2);
    assert_eq!(requests(&mut h, u2)[0].path, "/2");
    h.upstream_send(u2, &ok("fresh"));
    let rs = responses(&mut h, c);
    assert_eq!(
        (rs.len(), rs[0].status, &rs[0].body[..]),
        (1, 200, &b"fresh"[..])
    );
    let stats = h.core.stats();
    assert_eq!(stats.groups[0].stale_retries, 1);
    assert_eq!(
        stats.servers[0].failures, 0,
        "a stale connection is not a health failure"
    );
    assert!(h.core.server_up(
        h.now,
        ServerId {
            upstream: UpstreamId(0),
            index: 0
        }
    ));
}

#[test]
fn eof_on_a_stale_connection_is_retried_too() {
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.client_send(c, &get("/2"));
    h.take_upstream(u1);
    h.upstream_eof(u1);
    let u2 = busy_upstream(&h).unwrap();
    requests(&mut h, u2);
    h.upstream_send(u2, &ok("y"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

#[test]
fn post_on_a_stale_connection_is_never_sent_twice() {
    // Rule 12(b).
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.client_send(
        c,
        b"POST /pay HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(requests(&mut h, u1)[0].method, "POST");
    h.reset(u1);
    assert_eq!(busy_upstream(&h), None, "the POST is not re-sent");
    assert_eq!(connects(&h), 1);
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].status, 502);
}

#[test]
fn no_retry_once_response_bytes_arrived() {
    // Rule 12(c).
    let mut h = harness();
    let c = h.connect_client();
    let (u1, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    h.client_send(c, &get("/2"));
    h.take_upstream(u1);
    h.upstream_send(u1, b"HTTP/1.1 200 OK\r\nContent-Le");
    h.reset(u1);
    assert_eq!(connects(&h), 1);
    assert_eq!(responses(&mut h, c)[0].status, 502);
}

#[test]
fn failure_on_a_fresh_connection_after_sending_is_not_retried() {
    // Rule 12(d) / R4: no retry storm on fresh connections.
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let u = busy_upstream(&h).unwrap();
    h.take_upstream(u);
    h.reset(u);
    assert_eq!(connects(&h), 1);
    assert_eq!(responses(&mut h, c)[0].status, 502);
    assert_eq!(h.core.stats().servers[0].failures, 1);
}

#[test]
fn connect_failure_moves_to_the_next_server_for_any_method() {
    // Rule 14: U1 refuses, U2 answers; POST is safe to move because nothing was sent.
    let mut h = Harness::new(config(2));
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    );
    let u1 = h.refuse_connect().unwrap();
    assert_eq!(h.upstreams[&u1].server.unwrap().index, 0);
    let u2 = h.accept_connect().unwrap();
    assert_eq!(h.upstreams[&u2].server.unwrap().index, 1);
    let r = requests(&mut h, u2);
    assert_eq!(r[0].body, b"hi");
    h.upstream_send(u2, &ok("done"));
    assert_eq!(responses(&mut h, c)[0].body, b"done");
    assert_eq!(h.core.stats().groups[0].next_upstream, 1);
    assert!(!h.core.server_up(
        h.now,
        ServerId {
            upstream: UpstreamId(0),
            index: 0
        }
    ));
}

#[test]
fn a_local_connect_failure_is_a_500_and_not_the_servers_fault() {
    // Out of file descriptors: nginx answers 500 and does not blame the server.
    let mut h = Harness::new(config(2));
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/x"));
    let u = h.abort_connect().unwrap();
    assert_eq!(h.upstreams[&u].server.unwrap().index, 0);
    assert!(h.connects.is_empty(), "no other server tried");
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].status, 500);
    let stats = h.core.stats();
    assert_eq!(
        (stats.servers[0].failures, stats.servers[0].connect_failures),
        (0, 0)
    );
    assert_eq!(stats.groups[0].next_upstream, 0);
    for index in 0..2 {
        let server = ServerId {
            upstream: UpstreamId(0),
            index,
        };
        assert!(h.core.server_up(h.now, server));
    }
    // The client connection stays usable (the request was complete), and the next request
    // connects again.
    assert!(!h.clients[&c].closed);
    h.client_send(c, &get("/y"));
    let u2 = h.accept_connect().unwrap();
    requests(&mut h, u2);
    h.upstream_send(u2, &ok("fine"));
    assert_eq!(responses(&mut h, c)[0].body, b"fine");
}

#[test]
fn connect_errors_are_classified_local_or_remote() {
    use std::io::{Error, ErrorKind};
    use upkeep_core::Input;
    let conn = h_conn();
    for (errno, local) in [
        (24, true),
        (23, true),
        (99, true),
        (111, false),
        (113, false),
    ] {
        let input = Input::connect_error(conn, &Error::from_raw_os_error(errno));
        assert_eq!(
            matches!(input, Input::ConnectAborted { .. }),
            local,
            "errno {errno}"
        );
    }
    let oom = Input::connect_error(conn, &Error::from(ErrorKind::OutOfMemory));
    assert!(matches!(oom, Input::ConnectAborted { .. }));
    let refused = Input::connect_error(conn, &Error::from(ErrorKind::ConnectionRefused));
    assert!(matches!(refused, Input::ConnectFailed { .. }));
}

/// Any connection id (the classification does not look at it).
fn h_conn() -> ConnId {
    let mut h = harness();
    h.connect_client()
}

#[test]
fn all_servers_down_gives_502() {
    let mut h = Harness::new(config(2));
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/"));
    h.refuse_connect().unwrap();
    h.refuse_connect().unwrap();
    assert_eq!(responses(&mut h, c)[0].status, 502);
    // Both are now marked down: the next request fails fast without connecting.
    let before = connects(&h);
    h.client_send(c, &get("/again"));
    assert_eq!(connects(&h), before);
    assert_eq!(responses(&mut h, c)[0].status, 502);
}

#[test]
fn backup_server_is_used_only_when_primaries_are_down() {
    let mut cfg = config(2);
    cfg.upstreams[0].servers[1].backup = true;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let (u, _) = exchange(&mut h, c, &get("/1"), &ok("p"));
    assert_eq!(h.upstreams[&u].server.unwrap().index, 0);
    h.auto_connect = false;
    h.upstream_eof(u);
    h.client_send(c, &get("/2"));
    h.refuse_connect().unwrap();
    let u2 = h.accept_connect().unwrap();
    assert_eq!(h.upstreams[&u2].server.unwrap().index, 1, "backup");
}

#[test]
fn read_timeout_answers_504_and_closes_the_connection() {
    // Rule 31.
    let mut cfg = config(1);
    cfg.upstreams[0].read_timeout = Duration::from_secs(1);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(c, &get("/slow"));
    let u = busy_upstream(&h).unwrap();
    h.take_upstream(u);
    h.advance(Duration::from_millis(900));
    assert!(responses(&mut h, c).is_empty());
    h.advance(Duration::from_millis(200));
    assert_eq!(responses(&mut h, c)[0].status, 504);
    assert!(h.upstreams[&u].closed);
}

#[test]
fn connect_timeout_answers_504() {
    let mut cfg = config(1);
    cfg.upstreams[0].connect_timeout = Duration::from_millis(500);
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/"));
    h.advance(Duration::from_millis(600));
    assert_eq!(responses(&mut h, c)[0].status, 504);
}

// ----- E/F. framing and smuggling: rejected with 400 and nothing reaches the upstream -----

fn rejected(req: &[u8], status: u16) {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, req);
    assert_eq!(
        connects(&h),
        0,
        "nothing forwarded for {:?}",
        String::from_utf8_lossy(req)
    );
    let buf = h.take_client(c);
    let (rs, _) = read_responses(&buf, &[], true);
    assert_eq!(
        rs.len(),
        1,
        "one error response for {:?}",
        String::from_utf8_lossy(req)
    );
    assert_eq!(
        rs[0].status,
        status,
        "for {:?}",
        String::from_utf8_lossy(req)
    );
    assert_eq!(rs[0].header("connection"), Some("close"));
    assert!(
        h.clients[&c].shutdown || h.clients[&c].closed,
        "connection closes after the error"
    );
}

#[test]
fn smuggling_vectors_are_rejected_before_reaching_the_upstream() {
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: 1\r\n\r\n",
        b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
    ];
    for case in cases {
        rejected(case, 400);
    }
}

#[test]
fn bad_chunked_request_bodies_are_rejected() {
    let bodies: &[&[u8]] = &[
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"FFFFFFFFFFFFFFFFF1\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
    ];
    for body in bodies {
        let mut h = harness();
        let c = h.connect_client();
        let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        h.client_send(c, &req);
        let rs = responses(&mut h, c);
        assert_eq!(
            rs.last().map(|r| r.status),
            Some(400),
            "body {:?}",
            String::from_utf8_lossy(body)
        );
        for u in h.upstreams.values() {
            assert!(
                u.closed,
                "the half-forwarded request's upstream connection is dropped"
            );
        }
    }
}

#[test]
fn valid_chunked_request_is_forwarded_rechunked() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\nX-T: 1\r\n\r\n");
    let u = busy_upstream(&h).unwrap();
    let r = requests(&mut h, u);
    assert_eq!(r[0].body, b"hello");
    assert_eq!(r[0].header("transfer-encoding"), Some("chunked"));
    h.upstream_send(u, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

#[test]
fn oversized_heads_get_414_and_431() {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    rejected(long_target.as_bytes(), 414);
    let big_cookie = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nCookie: {}\r\n\r\n",
        "c".repeat(70 * 1024)
    );
    rejected(big_cookie.as_bytes(), 431);
}

#[test]
fn malformed_upstream_responses_become_502_and_close_the_connection() {
    let bad: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"garbage\r\n\r\n",
    ];
    for resp in bad {
        let (mut h, c, u) = forwarded("/");
        h.upstream_send(u, resp);
        let rs = responses(&mut h, c);
        assert_eq!(
            rs.last().map(|r| r.status),
            Some(502),
            "for {:?}",
            String::from_utf8_lossy(resp)
        );
        assert!(h.upstreams[&u].closed);
    }
    // A bad chunk after the head went out: the client's response is cut short, never completed.
    let (mut h, c, u) = forwarded("/");
    h.upstream_send(
        u,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
    );
    assert!(h.upstreams[&u].closed && h.clients[&c].closed);
    let buf = h.take_client(c);
    assert!(
        read_responses(&buf, &[], false).0.is_empty(),
        "never a complete response"
    );
    assert!(!buf.ends_with(b"0\r\n\r\n"));

    let (mut h, c, u) = forwarded("/");
    let huge = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "h".repeat(70 * 1024));
    h.upstream_send(u, huge.as_bytes());
    assert_eq!(responses(&mut h, c)[0].status, 502);
    assert!(h.upstreams[&u].closed);
}

#[test]
fn truncated_upstream_body_is_never_completed_for_the_client() {
    // Rule 21: Content-Length 10, 3 bytes, EOF → the client sees a truncated body and a close.
    let (mut h, c, u) = forwarded("/");
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.upstream_eof(u);
    assert!(h.clients[&c].closed);
    let buf = h.take_client(c);
    assert!(
        buf.ends_with(b"\r\n\r\nabc"),
        "no terminator appended: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn responses_without_body_end_at_the_head() {
    // Rule 20: HEAD with Content-Length 1000, then a GET reuses the same connection.
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    let buf = h.take_client(c);
    let (rs, used) = read_responses(&buf, &[true], false);
    assert_eq!((rs.len(), used), (1, buf.len()));
    assert_eq!(
        rs[0].header("content-length"),
        Some("1000"),
        "HEAD keeps the entity length"
    );
    assert!(h.core.is_pooled(u));
    let (u2, rs) = exchange(
        &mut h,
        c,
        &get("/next"),
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(u2, u);
    assert_eq!(rs[0].status, 204);
    assert!(h.core.is_pooled(u));
    let (u3, rs) = exchange(
        &mut h,
        c,
        &get("/cached"),
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
    );
    assert_eq!((u3, rs[0].status), (u, 304));
}

#[test]
fn hop_by_hop_fields_are_stripped_both_ways() {
    // Rule 22, and Via / X-Forwarded-For (rule 23).
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nVia: 1.1 a\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n");
    let u = busy_upstream(&h).unwrap();
    let r = &requests(&mut h, u)[0];
    for name in ["x-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(r.header(name), None, "{name} must not be forwarded");
    }
    // Issue 15: the client's `TE: trailers` is announced upstream again, as our own hop's
    // `TE: trailers` with `Connection: te` (trailers are forwarded); nothing else of the
    // client's Connection or TE is.
    assert_eq!(r.headers_named("connection"), ["te"]);
    assert_eq!(r.headers_named("te"), ["trailers"]);
    assert_eq!(r.header("via"), Some("1.1 a, 1.1 upkeep"));
    assert_eq!(r.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("host"), Some("a"));
    h.upstream_send(
        u,
        b"HTTP/1.1 200 OK\r\nConnection: X-Int\r\nX-Int: 1\r\nContent-Length: 0\r\n\r\n",
    );
    let rs = responses(&mut h, c);
    assert_eq!(rs[0].header("x-int"), None);
    assert_eq!(rs[0].header("connection"), None);
}

// ----- G. persistence, pipelining, 1xx, upgrade -----

#[test]
fn pipelined_requests_are_answered_in_order() {
    // Rule 27.
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &[get("/1"), get("/2"), get("/3")].concat());
    for i in 1..=3 {
        let u = busy_upstream(&h).expect("one request at a time reaches the upstream");
        let r = requests(&mut h, u);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].path, format!("/{i}"));
        h.upstream_send(u, &ok(&format!("r{i}")));
    }
    let rs = responses(&mut h, c);
    let bodies: Vec<&[u8]> = rs.iter().map(|r| &r.body[..]).collect();
    assert_eq!(bodies, vec![&b"r1"[..], b"r2", b"r3"]);
}

#[test]
fn malformed_pipelined_request_stops_the_pipeline() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(
        c,
        &[
            get("/1"),
            b"GET /2 HTTP/1.1\r\nHost : bad\r\n\r\n".to_vec(),
            get("/3"),
        ]
        .concat(),
    );
    let u = busy_upstream(&h).unwrap();
    assert_eq!(requests(&mut h, u)[0].path, "/1");
    h.upstream_send(u, &ok("one"));
    let buf = h.take_client(c);
    let (rs, _) = read_responses(&buf, &[], true);
    assert_eq!(
        rs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 400]
    );
    assert_eq!(busy_upstream(&h), None, "/3 never reaches the upstream");
    assert!(h.clients[&c].shutdown || h.clients[&c].closed);
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy() {
    // Rule 28.
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    let early = h.take_client(c);
    assert_eq!(early, b"HTTP/1.1 100 Continue\r\n\r\n");
    h.client_send(c, b"hello");
    let u = busy_upstream(&h).unwrap();
    let r = &requests(&mut h, u)[0];
    assert_eq!(r.header("expect"), None);
    assert_eq!(r.body, b"hello");
    h.upstream_send(u, &ok("done"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
}

#[test]
fn early_hints_are_forwarded_before_the_final_response() {
    let (mut h, c, u) = forwarded("/");
    h.upstream_send(
        u,
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
    );
    h.upstream_send(u, &ok("final"));
    let buf = h.take_client(c);
    assert!(
        buf.starts_with(b"HTTP/1.1 103 Early Hints\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    let (rs, _) = read_responses(&buf, &[], false);
    assert_eq!(rs[0].body, b"final");
    assert!(h.core.is_pooled(u));
}

#[test]
fn websocket_upgrade_becomes_a_tunnel_never_pooled() {
    // Rule 29.
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n");
    let u = busy_upstream(&h).unwrap();
    let r = &requests(&mut h, u)[0];
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade"))
    );
    h.upstream_send(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let head = h.take_client(c);
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    h.client_send(c, b"\x81\x02hi");
    assert_eq!(h.take_upstream(u), b"\x81\x02hi");
    h.upstream_send(u, b"\x81\x03bye");
    assert_eq!(h.take_client(c), b"\x81\x03bye");
    h.client_eof(c);
    assert!(h.upstreams[&u].closed && h.clients[&c].closed);
    assert!(!h.core.is_pooled(u));
}

#[test]
fn refused_upgrade_is_a_normal_poolable_response() {
    let mut h = harness();
    let c = h.connect_client();
    let (u, rs) = exchange(
        &mut h,
        c,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(rs[0].status, 426);
    assert!(h.core.is_pooled(u));
}

// ----- H. client-side timeouts -----

#[test]
fn slowloris_is_cut_at_the_total_header_deadline() {
    let mut cfg = config(1);
    cfg.client_timeouts.header = Duration::from_secs(5);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    for b in b"GET / HTTP/1.1\r\nHost: a\r\n" {
        h.client_send(c, &[*b]);
        h.advance(Duration::from_millis(200));
        if h.clients[&c].closed || h.clients[&c].shutdown {
            break;
        }
    }
    assert!(
        h.now <= upkeep_core::Time::from_millis(5300),
        "cut at ~5s, not per byte"
    );
    assert!(h.clients[&c].shutdown || h.clients[&c].closed);
    assert_eq!(connects(&h), 0);
}

#[test]
fn idle_client_keepalive_times_out() {
    let mut cfg = config(1);
    cfg.client_timeouts.keepalive = Duration::from_secs(2);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    exchange(&mut h, c, &get("/"), &ok("x"));
    h.advance(Duration::from_millis(1900));
    assert!(!h.clients[&c].closed);
    h.advance(Duration::from_millis(200));
    assert!(h.clients[&c].closed);
}

#[test]
fn slow_request_body_gets_408() {
    let mut cfg = streaming(config(1));
    cfg.client_timeouts.body = Duration::from_secs(1);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    );
    let u = busy_upstream(&h).unwrap();
    h.advance(Duration::from_millis(1100));
    assert_eq!(responses(&mut h, c)[0].status, 408);
    assert!(h.upstreams[&u].closed);
}

#[test]
fn client_that_stops_reading_is_dropped_at_the_send_timeout_and_memory_stays_bounded() {
    let mut cfg = config(1);
    cfg.client_timeouts.send = Duration::from_secs(2);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.stall(c, true);
    h.client_send(c, &get("/big"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    let body = vec![b'z'; 64 * 1024];
    h.upstream_send(
        u,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            10 * 1024 * 1024
        )
        .as_bytes(),
    );
    for _ in 0..40 {
        h.upstream_send(u, &body);
    }
    assert!(
        !h.upstreams[&u].reading,
        "backpressure: the proxy stopped reading the upstream"
    );
    let queued = h.core.pending_len(c);
    assert!(queued <= 256 * 1024 + 64 * 1024, "bounded: {queued}");
    h.advance(Duration::from_millis(2100));
    assert!(h.clients[&c].closed);
    assert!(h.upstreams[&u].closed, "not pooled mid-body");
}

#[test]
fn error_response_closes_with_lingering_so_the_client_reads_it() {
    // Rule 26: 413 with the client still sending → half-close, then close at EOF.
    let mut cfg = config(1);
    cfg.limits.max_body = 1000;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\npartial",
    );
    assert_eq!(responses(&mut h, c)[0].status, 413);
    assert!(h.clients[&c].shutdown, "half-closed, still reading");
    assert!(!h.clients[&c].closed);
    h.client_send(c, &[b'x'; 4096]);
    assert!(!h.clients[&c].closed, "input discarded while lingering");
    h.client_eof(c);
    assert!(h.clients[&c].closed);
    assert_eq!(connects(&h), 0);
}

#[test]
fn unrouted_requests_get_404_and_routes_pick_groups() {
    use upkeep_core::config::{RouteConfig, UpstreamConfig};
    let mut cfg = config(1);
    cfg.upstreams.push(UpstreamConfig::new(
        "api",
        vec![ServerConfig::new(Address::parse("127.0.0.1:9100").unwrap())],
    ));
    cfg.routes = vec![
        RouteConfig {
            host: None,
            path_prefix: "/api".into(),
            upstream: "api".into(),
        },
        RouteConfig {
            host: Some("a".into()),
            path_prefix: "/".into(),
            upstream: "default".into(),
        },
    ];
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.client_send(c, &get("/api/x"));
    let u = busy_upstream(&h).unwrap();
    assert_eq!(h.upstreams[&u].server.unwrap().upstream, UpstreamId(1));
    requests(&mut h, u);
    h.upstream_send(u, &ok("api"));
    assert_eq!(responses(&mut h, c)[0].body, b"api");
    h.client_send(c, b"GET /other HTTP/1.1\r\nHost: b\r\n\r\n");
    assert_eq!(responses(&mut h, c)[0].status, 404);
    assert!(
        !h.clients[&c].closed,
        "a 404 for a complete request keeps the connection"
    );
}

#[test]
fn drain_closes_idle_connections_and_lets_in_flight_finish() {
    let mut h = harness();
    let c1 = h.connect_client();
    let (u1, _) = exchange(&mut h, c1, &get("/1"), &ok("x"));
    let c2 = h.connect_client();
    h.client_send(c2, &get("/2"));
    let u2 = busy_upstream(&h).unwrap();
    assert_eq!(u2, u1, "the pooled connection was reused");
    requests(&mut h, u2);
    let c3 = h.connect_client();
    let (u3, _) = exchange(&mut h, c3, &get("/3"), &ok("y"));
    assert!(h.core.is_pooled(u3));
    let now = h.now;
    h.core.begin_drain(now);
    h.pump();
    assert!(
        h.upstreams[&u3].closed,
        "idle pooled connection closed at once"
    );
    assert!(
        h.clients[&c1].closed && h.clients[&c3].closed,
        "idle clients closed {:?} {:?}",
        h.clients[&c1],
        h.clients[&c3]
    );
    assert!(!h.clients[&c2].closed);
    h.upstream_send(u2, &ok("finished"));
    let rs = responses(&mut h, c2);
    assert_eq!(rs[0].body, b"finished");
    assert_eq!(rs[0].header("connection"), Some("close"));
    assert!(h.core.is_drained());
}

#[test]
fn stale_connection_does_not_eject_a_healthy_server() {
    // Rule 13: two servers, max_fails=1; U1's pooled connections keep going stale.
    let mut h = Harness::new(config(2));
    let c = h.connect_client();
    let mut served = [0usize; 2];
    for i in 0..20 {
        let hits = h.core.stats().groups[0].pool_hits;
        h.client_send(c, &get(&format!("/{i}")));
        let mut u = busy_upstream(&h).unwrap();
        let idx = h.upstreams[&u].server.unwrap().index as usize;
        if idx == 0 && h.core.stats().groups[0].pool_hits > hits {
            // Server 0 closed its idle connection just as we reused it.
            h.take_upstream(u);
            h.upstream_eof(u);
            u = busy_upstream(&h).expect("re-sent on a fresh connection");
            assert_eq!(h.upstreams[&u].server.unwrap().index, 0, "same server");
        }
        requests(&mut h, u);
        h.upstream_send(u, &ok("x"));
        let idx = h.upstreams[&u].server.unwrap().index as usize;
        served[idx] += 1;
        assert_eq!(
            responses(&mut h, c)[0].status,
            200,
            "iteration {i}: {:?}",
            h.core.stats()
        );
    }
    assert!(h.core.server_up(
        h.now,
        ServerId {
            upstream: UpstreamId(0),
            index: 0
        }
    ));
    assert_eq!(h.core.stats().servers[0].failures, 0);
    assert!(
        served[0] >= 8 && served[1] >= 8,
        "still balanced: {served:?}"
    );
}

#[test]
fn defaults_do_not_churn_under_steady_concurrency() {
    use upkeep_core::sim::load::closed_loop;
    for clients in [64usize, 300] {
        let r = closed_loop(config(2), clients, 10, 7);
        assert_eq!(r.requests, clients as u64 * 10);
        assert!(
            r.upstream_connects <= clients as u64,
            "{clients} concurrent clients opened {} upstream connections",
            r.upstream_connects
        );
        assert_eq!(r.capacity_evictions, 0);
    }
    // An explicit cap below the concurrency stays a hard cap (nginx's meaning), and churns.
    let mut cfg = config(2);
    cfg.upstreams[0].keepalive = 16;
    let r = closed_loop(cfg, 64, 10, 7);
    assert!(
        r.upstream_connects > 64 * 5,
        "cap 16 behind 64 clients: {r:?}"
    );
}

#[test]
fn max_conns_slots_are_released_on_every_path() {
    // max_conns = 1: a leaked active count after a tunnel, a reset or a timeout would make the
    // server look full forever (every later request a 502).
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 1;
    cfg.upstreams[0].read_timeout = Duration::from_secs(1);
    cfg.upstreams[0].servers[0].max_fails = 0;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    // A tunnel, closed by the client.
    h.client_send(
        c,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    h.client_eof(c);
    // A read timeout (504), then a reset (502), then a normal exchange.
    let c = h.connect_client();
    h.client_send(c, &get("/slow"));
    h.advance(Duration::from_millis(1100));
    assert_eq!(responses(&mut h, c)[0].status, 504);
    h.client_send(c, &get("/reset"));
    let u = busy_upstream(&h).unwrap();
    h.take_upstream(u);
    h.reset(u);
    assert_eq!(responses(&mut h, c)[0].status, 502);
    let (_, rs) = exchange(&mut h, c, &get("/fine"), &ok("fine"));
    assert_eq!(rs[0].status, 200, "the server's only slot is free again");
}

#[test]
fn drain_closes_a_client_once_its_last_response_is_flushed() {
    let mut h = harness();
    let c = h.connect_client();
    h.stall(c, true);
    h.client_send(c, &get("/"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.upstream_send(u, &ok("still queued"));
    let now = h.now;
    h.core.begin_drain(now);
    h.pump();
    assert!(!h.clients[&c].closed, "the response is still being written");
    h.stall(c, false);
    assert_eq!(responses(&mut h, c)[0].body, b"still queued");
    assert!(h.clients[&c].closed);
    assert!(h.core.is_drained());
}

#[test]
fn no_100_continue_once_the_body_is_already_there() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(
        c,
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    );
    let u = busy_upstream(&h).unwrap();
    assert_eq!(requests(&mut h, u)[0].body, b"hi");
    h.upstream_send(u, &ok("x"));
    let buf = h.take_client(c);
    assert!(
        buf.starts_with(b"HTTP/1.1 200 OK"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn a_silent_new_connection_is_closed_at_the_header_timeout() {
    let mut cfg = config(1);
    cfg.client_timeouts.header = Duration::from_secs(3);
    cfg.client_timeouts.keepalive = Duration::from_secs(10);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    h.advance(Duration::from_millis(2900));
    assert!(!h.clients[&c].closed);
    h.advance(Duration::from_millis(200));
    assert!(h.clients[&c].closed, "no request within the header timeout");
    assert!(h.take_client(c).is_empty(), "closed silently, like nginx");
}

#[test]
fn thousands_of_pipelined_requests_answered_locally_do_not_recurse() {
    // 404s (and 502s with no usable server) are answered without an upstream round trip; a
    // burst of them in one read must be processed iteratively, in order, on a small stack.
    use upkeep_core::config::RouteConfig;
    let mut cfg = config(1);
    cfg.routes = vec![RouteConfig {
        host: None,
        path_prefix: "/known".into(),
        upstream: "default".into(),
    }];
    cfg.limits.client_keepalive_requests = u32::MAX;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let burst: Vec<u8> = (0..3000).flat_map(|i| get(&format!("/nope/{i}"))).collect();
    let worker = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            h.client_send(c, &burst);
            let rs = responses(&mut h, c);
            (
                rs.len(),
                rs.iter().all(|r| r.status == 404),
                h.clients[&c].closed,
            )
        });
    let (n, all_404, closed) = worker.unwrap().join().expect("no stack overflow");
    assert_eq!((n, all_404, closed), (3000, true, false));
}

#[test]
fn eof_after_a_partial_request_closes_without_an_answer() {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, b"GET / HTTP/1.1\r\nHost: a\r\n");
    h.client_eof(c);
    assert!(h.clients[&c].closed);
    assert!(h.take_client(c).is_empty());
    assert_eq!(connects(&h), 0);
}

// ----- exchange records (access logs, latency histograms) -----

#[test]
fn exchange_records_describe_each_response() {
    let mut h = harness();
    h.core.record_exchanges(true);
    h.core.record_requests(true);
    let c = h.connect_client();
    h.advance(Duration::from_millis(5));
    // First exchange: a fresh upstream connection, 10 ms to the response head.
    h.client_send(
        c,
        b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    );
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.advance(Duration::from_millis(10));
    h.upstream_send(u, &ok("hello"));
    let sent = h.take_client(c).len() as u64;
    let first = h.core.poll_exchange().expect("recorded");
    assert_eq!(first.client, c);
    assert_eq!(first.listener, upkeep_core::ListenerId(0));
    assert_eq!(first.status, 200);
    assert_eq!(&first.request[..], b"POST /up?x=1");
    assert_eq!(first.version, upkeep_core::framing::Version::Http11);
    assert!(!first.reused);
    assert_eq!(first.server, Some(h.core.servers()[0]));
    assert_eq!(first.bytes_received, 3);
    assert_eq!(first.bytes_sent, sent);
    // The first request's clock starts at the accept (nginx's $request_time does too).
    assert_eq!(
        first.finished.since(first.started),
        Duration::from_millis(15)
    );
    assert_eq!(first.response_at, Some(first.finished));
    assert_eq!(h.core.poll_exchange(), None);

    // Second exchange on the same connections: reused, started at its first byte.
    h.advance(Duration::from_millis(100));
    h.client_send(c, b"GET /two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    requests(&mut h, u);
    h.advance(Duration::from_millis(7));
    h.upstream_send(u, &ok("hi"));
    let second = h.core.poll_exchange().expect("recorded");
    assert_eq!(&second.request[..], b"GET /two");
    assert_eq!(second.version, upkeep_core::framing::Version::Http10);
    assert!(second.reused);
    assert_eq!(second.bytes_received, 0);
    assert_eq!(second.bytes_sent, h.take_client(c).len() as u64);
    assert_eq!(
        second.finished.since(second.started),
        Duration::from_millis(7)
    );

    // A request we refuse ourselves: our status, no server, nothing of the previous exchange.
    h.client_send(
        c,
        b"GET /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    let third = h.core.poll_exchange().expect("recorded");
    assert_eq!(third.status, 400);
    assert_eq!(third.server, None);
    assert!(!third.reused);
    assert_eq!(
        &third.request[..],
        b"GET /bad",
        "a well-formed request line is kept"
    );
    assert_eq!(third.bytes_sent, h.take_client(c).len() as u64);
    assert!(third.bytes_sent > 0);

    // A line that is not a request line is not recorded as one.
    let c = h.connect_client();
    h.client_send(c, b"\x16\x03\x01 TLS HELLO\r\n\r\n");
    let garbage = h.core.poll_exchange().expect("recorded");
    assert_eq!(garbage.status, 400);
    assert!(garbage.request.is_empty());
}

#[test]
fn a_listener_with_its_own_group_sends_unrouted_requests_there() {
    let mut config = config(1);
    config.upstreams[0].name = "web".into();
    config
        .upstreams
        .push(upkeep_core::config::UpstreamConfig::new(
            "api",
            vec![ServerConfig::new(Address::parse("127.0.0.1:9100").unwrap())],
        ));
    let mut second =
        upkeep_core::config::ListenerConfig::new(Address::parse("127.0.0.1:8081").unwrap());
    second.upstream = Some("api".into());
    config.listeners.push(second);
    let mut h = Harness::new(config);
    let api = h.core.servers()[1];
    // Listener 0 (no group of its own, no routes): the first group.
    let c0 = h.connect_client();
    h.client_send(c0, &get("/x"));
    let servers = |h: &Harness| h.upstreams.values().map(|e| e.server).collect::<Vec<_>>();
    assert_eq!(servers(&h), [Some(h.core.servers()[0])]);
    // Listener 1: its own group.
    let c1 = h
        .core
        .accept(h.now, upkeep_core::ListenerId(1), None)
        .unwrap();
    h.clients.insert(
        c1,
        upkeep_core::sim::Endpoint {
            reading: true,
            ..Default::default()
        },
    );
    h.pump();
    h.client_send(c1, &get("/x"));
    assert_eq!(servers(&h), [Some(h.core.servers()[0]), Some(api)]);
}

// ----- reading in place (Core::read_buffer + Input::Appended) -----

/// Bytes for `conn`, delivered either as `Received` or appended in place.
fn deliver(h: &mut Harness, conn: ConnId, data: &[u8], in_place: bool) {
    if in_place {
        let buf = h.core.read_buffer(conn, 1).expect("open connection");
        buf.extend_from_slice(data);
        h.core.handle(
            h.now,
            upkeep_core::Input::Appended {
                conn,
                n: data.len(),
            },
        );
    } else {
        h.core
            .handle(h.now, upkeep_core::Input::Received { conn, data });
    }
    h.pump();
}

#[test]
fn reading_in_place_is_the_same_as_received() {
    let run = |in_place: bool| {
        let mut h = harness();
        let c = h.connect_client();
        // A pipelined pair, split mid-head, then a chunked response split mid-chunk.
        let reqs = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz";
        deliver(&mut h, c, &reqs[..20], in_place);
        deliver(&mut h, c, &reqs[20..], in_place);
        let mut upstream_saw = Vec::new();
        let responses: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ];
        for resp in responses {
            let u = busy_upstream(&h).unwrap();
            upstream_saw.extend(h.take_upstream(u));
            for piece in resp.chunks(7) {
                deliver(&mut h, u, piece, in_place);
            }
        }
        (h.take_client(c), upstream_saw, h.trace.clone())
    };
    let copied = run(false);
    let in_place = run(true);
    assert!(!copied.0.is_empty() && copied.0.ends_with(b"ok"));
    assert_eq!(copied, in_place);
}

#[test]
fn an_appended_count_that_does_not_match_is_dropped() {
    let mut h = harness();
    let c = h.connect_client();
    // The runtime claims more than it appended: nothing is trusted, nothing is forwarded.
    let buf = h.core.read_buffer(c, 64).unwrap();
    buf.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    h.core
        .handle(h.now, upkeep_core::Input::Appended { conn: c, n: 99 });
    h.pump();
    assert_eq!(connects(&h), 0);
    // An `Appended` without a `read_buffer` before it is ignored too.
    h.core
        .handle(h.now, upkeep_core::Input::Appended { conn: c, n: 5 });
    h.pump();
    assert_eq!(connects(&h), 0);
    // The connection still works.
    deliver(&mut h, c, &get("/ok"), true);
    assert_eq!(connects(&h), 1);
}

#[test]
fn a_tunnel_is_counted_upgraded_however_it_ends() {
    use upkeep_core::NotReusable;
    // A 101 makes the connection a tunnel: it was never going back to the pool, whichever side
    // ends the tunnel and however (FIN, reset, a client that stops reading).
    let upgraded = |h: &Harness| {
        let st = h.core.stats();
        let other: u64 = NotReusable::ALL
            .into_iter()
            .filter(|&r| r != NotReusable::Upgraded)
            .map(|r| st.not_reused(r))
            .sum();
        (st.not_reused(NotReusable::Upgraded), other)
    };
    let (mut h, c, _u) = open_tunnel();
    h.client_eof(c);
    assert_eq!(upgraded(&h), (1, 0), "client EOF");
    let (mut h, c, u) = open_tunnel();
    h.reset(c);
    assert!(!h.core.is_open(u));
    assert_eq!(upgraded(&h), (1, 0), "client reset");
    upstreams_accounted(&h.core);
    let (mut h, c, u) = open_tunnel();
    h.stall(c, true);
    h.upstream_send(u, b"frames the client never reads");
    h.advance(secs(3600));
    assert!(!h.core.is_open(c) && !h.core.is_open(u));
    assert_eq!(upgraded(&h), (1, 0), "client send timeout");
    upstreams_accounted(&h.core);
}
