//! Edge cases of an idle connection handed between workers (issue 11, item 2), found in review:
//! the backend closing it while it moves, `keepalive_requests` / `keepalive_time` counted on
//! after the move, a warm (`min_idle`) connection handed, a `pool_key = "client"` group.
//! Driven by the in-memory harness ([`Process`]).

use core::time::Duration;

use upkeep_core::config::PoolKeyMode;
use upkeep_core::sim::Process;
use upkeep_core::{ConnId, UpstreamId};

mod common;
use common::*;

/// One server with `max_conns = 1` and a queue.
fn one_slot() -> upkeep_core::Config {
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 1;
    cfg.upstreams[0].queue = 16;
    cfg.upstreams[0].queue_timeout = Duration::from_secs(2);
    cfg
}

fn settle(p: &mut Process) {
    assert!(p.settle_within(10_000), "livelock");
    p.check_invariants();
}

fn request(p: &mut Process, w: usize, path: &str) -> ConnId {
    let h = &mut p.workers[w];
    let c = h.connect_client();
    h.client_send(c, &get(path));
    c
}

fn answer(p: &mut Process, w: usize, path: &str) {
    let h = &mut p.workers[w];
    let u = busy_upstream(h).expect("a request in flight");
    assert_eq!(requests(h, u)[0].path, path);
    h.upstream_send(u, &ok(path));
}

/// Worker 0's `/a` (client `a`) is answered, its connection moves to worker 1, whose `/b`
/// (client `b`) it carries: both answered 200.
fn a_then_b_over_the_handed_connection(p: &mut Process, a: ConnId, b: ConnId) {
    answer(p, 0, "/a");
    settle(p);
    answer(p, 1, "/b");
    settle(p);
    assert_eq!(responses(&mut p.workers[0], a)[0].status, 200);
    assert_eq!(responses(&mut p.workers[1], b)[0].status, 200);
}

fn counted(p: &Process) -> u32 {
    let h = &p.workers[0];
    h.core.shared().server(0, 0, h.now).unwrap().conns
}

fn opened(p: &Process) -> usize {
    p.workers.iter().map(connects).sum()
}

#[test]
fn a_handed_connection_the_backend_closed_on_the_way_is_retried_on_a_fresh_one() {
    let mut p = Process::new(one_slot(), 2);
    let a = request(&mut p, 0, "/a");
    let b = request(&mut p, 1, "/b");
    settle(&mut p);
    answer(&mut p, 0, "/a");
    assert_eq!(p.workers[0].handed_out.len(), 1);
    // The backend closes it while it moves: the receiver finds out after sending /b on it.
    p.workers[0].handed_out[0].endpoint.eof_pending = true;
    settle(&mut p);
    let h = &mut p.workers[1];
    let stale = *h.upstreams.keys().next().unwrap();
    if !h.upstreams[&stale].closed {
        h.upstream_eof(stale);
    }
    settle(&mut p);
    answer(&mut p, 1, "/b");
    settle(&mut p);
    assert_eq!(responses(&mut p.workers[0], a)[0].status, 200);
    assert_eq!(responses(&mut p.workers[1], b)[0].status, 200);
    assert_eq!(opened(&p), 2, "one fresh connection for the retry");
    assert_eq!((p.open(), counted(&p)), (1, 1));
}

#[test]
fn keepalive_requests_counts_on_after_the_move() {
    let mut cfg = one_slot();
    cfg.upstreams[0].keepalive_requests = 2;
    let mut p = Process::new(cfg, 2);
    let a = request(&mut p, 0, "/a");
    let b = request(&mut p, 1, "/b");
    settle(&mut p);
    a_then_b_over_the_handed_connection(&mut p, a, b);
    // Its second request: closed, not pooled.
    assert_eq!(p.workers[1].core.pool_idle(UpstreamId(0)), 0);
    assert_eq!((p.open(), counted(&p)), (0, 0));
}

#[test]
fn keepalive_time_counts_from_the_open_not_the_move() {
    let mut cfg = one_slot();
    cfg.upstreams[0].keepalive_time = Duration::from_secs(10);
    cfg.upstreams[0].keepalive_timeout = Duration::from_secs(60);
    cfg.upstreams[0].queue_timeout = Duration::from_secs(60);
    let mut p = Process::new(cfg, 2);
    let a = request(&mut p, 0, "/a");
    settle(&mut p);
    // 8 s into the connection's life, worker 1's request queues; /a is answered then.
    for h in &mut p.workers {
        h.advance(Duration::from_secs(8));
    }
    let b = request(&mut p, 1, "/b");
    settle(&mut p);
    a_then_b_over_the_handed_connection(&mut p, a, b);
    assert_eq!(p.workers[1].core.pool_idle(UpstreamId(0)), 1);
    // 3 s later the connection is 11 s old: gone from the pool.
    for h in &mut p.workers {
        h.advance(Duration::from_secs(3));
    }
    settle(&mut p);
    assert_eq!(
        p.workers[1].core.pool_idle(UpstreamId(0)),
        0,
        "past keepalive_time"
    );
    assert_eq!((p.open(), counted(&p)), (0, 0));
}

#[test]
fn a_warm_connection_handed_carries_the_request_and_none_reopens_past_the_cap() {
    let mut cfg = one_slot();
    cfg.upstreams[0].min_idle = 1;
    let mut p = Process::new(cfg, 2);
    p.start();
    settle(&mut p);
    assert_eq!(opened(&p), 1, "one warm connection for the process");
    let warm_in = (0..2)
        .find(|&w| p.workers[w].core.pool_idle(UpstreamId(0)) == 1)
        .expect("pooled somewhere");
    let other = 1 - warm_in;
    let b = request(&mut p, other, "/b");
    settle(&mut p);
    answer(&mut p, other, "/b");
    settle(&mut p);
    assert_eq!(responses(&mut p.workers[other], b)[0].status, 200);
    assert_eq!(opened(&p), 1, "the warm one carried it");
    assert_eq!((p.open(), counted(&p)), (1, 1));
    for h in &mut p.workers {
        h.advance(Duration::from_secs(1));
    }
    settle(&mut p);
    assert!(counted(&p) <= 1);
}

#[test]
fn a_client_keyed_connection_is_closed_for_the_other_worker_not_handed() {
    let mut cfg = one_slot();
    cfg.upstreams[0].pool_key = PoolKeyMode::Client;
    let mut p = Process::new(cfg, 2);
    let a = request(&mut p, 0, "/a");
    let b = request(&mut p, 1, "/b");
    settle(&mut p);
    answer(&mut p, 0, "/a");
    assert!(p.workers[0].handed_out.is_empty());
    settle(&mut p);
    answer(&mut p, 1, "/b");
    settle(&mut p);
    assert_eq!(responses(&mut p.workers[0], a)[0].status, 200);
    assert_eq!(responses(&mut p.workers[1], b)[0].status, 200);
    assert_eq!(opened(&p), 2);
    assert_eq!(p.handovers(), (0, 0));
    assert_eq!((p.open(), counted(&p)), (1, 1));
}

#[test]
fn a_client_keyed_idle_connection_of_another_client_yields_its_slot_to_the_waiting_request() {
    // One worker, pool_key = "client", max_conns = 1: client A's idle connection holds the one
    // slot, which client B's request may not reuse. B's request must not wait behind a
    // connection it can never get (until A's connection's idle time or B's queue_timeout
    // ends): the idle connection is closed for it, as another worker's would be.
    let mut cfg = one_slot();
    cfg.upstreams[0].pool_key = PoolKeyMode::Client;
    let mut h = upkeep_core::sim::Harness::new(cfg);
    let a = h.connect_client_from(ip(1));
    let (ua, _) = exchange(&mut h, a, &get("/a"), &ok("a"));
    assert!(h.core.is_pooled(ua));
    let b = h.connect_client_from(ip(2));
    h.client_send(b, &get("/b"));
    let ub = busy_upstream(&h).expect("B's request is sent at once, on a new connection");
    assert!(
        h.upstreams[&ua].closed,
        "A's idle connection gave up its slot"
    );
    assert_eq!(requests(&mut h, ub)[0].path, "/b");
    h.upstream_send(ub, &ok("b"));
    assert_eq!(responses(&mut h, b)[0].status, 200);
}

#[test]
fn a_connection_released_for_a_reload_wakes_the_worker_first_in_line() {
    // Worker 0's idle connection holds the one slot; worker 1's request has just queued (its
    // wake-up for worker 0 not yet acted on) when worker 0 starts a reload's handoff drain and
    // releases its idle connections to the new generation: the slot is free in this
    // generation's ledger, and worker 1 must hear of it — its request does not wait out its
    // queue_timeout.
    let mut p = Process::new(one_slot(), 2);
    let a = request(&mut p, 0, "/a");
    settle(&mut p);
    answer(&mut p, 0, "/a");
    settle(&mut p);
    assert_eq!(responses(&mut p.workers[0], a)[0].status, 200);
    assert_eq!(p.workers[0].core.pool_idle(UpstreamId(0)), 1);
    let b = request(&mut p, 1, "/b");
    assert_eq!(p.workers[1].core.queued(UpstreamId(0)), 1);
    // Worker 0 drains before it acts on that wake-up.
    p.woken[0].store(false, std::sync::atomic::Ordering::SeqCst);
    let h = &mut p.workers[0];
    let released = h.core.release_pooled();
    assert_eq!(released.len(), 1);
    for (id, ..) in &released {
        h.upstreams.remove(id);
    }
    let now = h.now;
    h.core.begin_handoff(now);
    h.pump();
    assert_eq!(counted(&p), 0, "the slot left with the connection");
    settle(&mut p);
    assert_eq!(
        p.workers[1].core.queued(UpstreamId(0)),
        0,
        "worker 1 was woken for the free slot"
    );
    answer(&mut p, 1, "/b");
    assert_eq!(responses(&mut p.workers[1], b)[0].status, 200);
}
