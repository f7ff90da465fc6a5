//! Backpressure: a peer that stops reading (a stalled client, a stalled upstream, or both)
//! makes the proxy stop reading the other side, so every queue stays bounded by the write
//! high-water mark, and the relay resumes intact once the peer drains; a peer that never drains
//! is cut by its send timeout. The engine is driven through its public API by the in-memory
//! harness (`upkeep_core::sim::Harness`), which plays the runtime, the clients and the backends.

use core::time::Duration;

use upkeep_core::sim::Harness;
use upkeep_core::{Output, Time};

mod common;
use common::*;

#[test]
fn stalled_upstream_stops_reading_the_client_bounds_memory_and_resumes() {
    let mut cfg = config(1);
    cfg.limits.max_body = 0;
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    let total = 2 * 1024 * KIB;
    let body = body_of(total, 31);
    h.client_send(c, &post_head("/up", total));
    let u = h.connects[0];
    h.stall(u, true);
    h.accept_connect();
    let mut max_q = 0;
    for piece in body.chunks(64 * KIB) {
        h.client_send(c, piece);
        max_q = max_q.max(h.core.pending_len(u));
        timers_ok(&h, "while stalled");
    }
    assert!(
        !h.clients[&c].reading,
        "client not read while the upstream is full"
    );
    assert!(
        max_q <= HW + 64 * KIB + 512,
        "upstream queue bounded: {max_q}"
    );
    h.stall(u, false);
    let r = requests(&mut h, u);
    assert_eq!(r.len(), 1);
    assert!(r[0].body == body, "body relayed intact after resuming");
    h.upstream_send(u, &ok("ok"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    assert!(h.core.is_pooled(u));
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
fn upstream_that_stops_reading_mid_body_gets_a_send_timeout_504_and_is_never_pooled() {
    let mut cfg = config(1);
    cfg.upstreams[0].send_timeout = secs(3);
    cfg.client_timeouts.body = secs(60);
    cfg.limits.max_body = 0;
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let total = 1024 * KIB;
    let body = body_of(total, 37);
    h.client_send(c, &post_head("/up", total));
    let u = h.last_upstream().unwrap();
    h.client_send(c, &body[..100 * KIB]);
    assert!(h.upstreams[&u].total_received > 100 * KIB);
    h.stall(u, true);
    for piece in body[100 * KIB..].chunks(64 * KIB) {
        h.client_send(c, piece);
    }
    assert!(!h.clients[&c].reading);
    h.advance(Duration::from_millis(2900));
    assert!(!h.upstreams[&u].closed);
    h.advance(Duration::from_millis(200));
    assert!(
        h.upstreams[&u].closed,
        "send timeout closes the upstream connection"
    );
    assert!(!h.core.is_pooled(u));
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 504);
    // The request body was never fully read: the client connection cannot continue.
    h.advance(secs(10));
    assert!(h.clients[&c].closed);
    assert_eq!(h.core.connections(), 0);
}

#[test]
fn both_directions_stalled_stay_bounded_and_everything_closes_at_the_send_timeouts() {
    let mut cfg = config(1);
    cfg.limits.max_body = 0;
    cfg.client_timeouts.send = secs(4);
    cfg.upstreams[0].send_timeout = secs(6);
    let mut h = Harness::new(cfg);
    let c = h.connect_client();
    let total = 4 * 1024 * KIB;
    h.client_send(c, &post_head("/echo", total));
    let u = h.last_upstream().unwrap();
    h.take_upstream(u);
    // The backend answers at once (streaming an echo) while the body is still coming.
    h.upstream_send(
        u,
        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    );
    h.stall(c, true);
    h.stall(u, true);
    let piece = vec![b'e'; 64 * KIB];
    for _ in 0..32 {
        h.client_send(c, &piece);
        h.upstream_send(u, &piece);
        assert!(h.core.pending_len(u) <= HW + 64 * KIB + 512);
        assert!(h.core.pending_len(c) <= HW + 64 * KIB + 512);
        timers_ok(&h, "both stalled");
    }
    assert!(!h.clients[&c].reading && !h.upstreams[&u].reading);
    h.advance(secs(10));
    assert!(
        h.clients[&c].closed && h.clients[&c].reset,
        "response cut: abortive"
    );
    assert!(h.upstreams[&u].closed);
    assert_eq!(h.core.connections(), 0);
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn trace_is_deterministic_for_a_backpressured_exchange() {
    fn run() -> Vec<Output> {
        let mut cfg = config(1);
        cfg.limits.max_body = 0;
        let mut h = Harness::new(cfg);
        h.write_chunk = Some(7000);
        let c = h.connect_client();
        let body = body_of(300 * KIB, 59);
        let mut req = post_head("/d", body.len());
        req.extend_from_slice(&body);
        h.client_send(c, &req);
        let u = h.last_upstream().unwrap();
        h.upstream_send(u, &ok("d"));
        h.advance(secs(1));
        h.trace.clone()
    }
    assert_eq!(run(), run());
    let _ = Time::ZERO;
}
