//! The queue behind `max_conns`: FIFO dispatch on the freed (pooled) connection, a full queue
//! and an expired wait answered `503` with `Retry-After`, a leaving client's place freed at once,
//! a waiting request's body relayed once dispatched, and two workers sharing one ledger (the
//! process-wide `max_conns` and FIFO order across workers). Driven by the in-memory harness.

use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use upkeep_core::sim::Harness;
use upkeep_core::{ConnId, Core, ServerState, Shared, UpstreamId};

mod common;
use common::*;

/// One server with `max_conns = 1` and a queue of `queue`.
fn one_slot(queue: usize) -> upkeep_core::Config {
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 1;
    cfg.upstreams[0].queue = queue;
    cfg.upstreams[0].queue_timeout = Duration::from_secs(2);
    cfg
}

fn header<'a>(m: &'a upkeep_core::sim::http::Message, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Answers whatever request is on the one busy upstream connection; returns its path.
fn answer_next(h: &mut Harness) -> Option<String> {
    let u = busy_upstream(h)?;
    let rs = requests(h, u);
    assert_eq!(rs.len(), 1, "one request at a time on a connection");
    h.upstream_send(u, &ok(&rs[0].path));
    Some(rs[0].path.clone())
}

/// Upstream connections open and not pooled (carrying or opening for a request).
fn busy(h: &Harness) -> usize {
    h.upstreams
        .iter()
        .filter(|(id, e)| !e.closed && !h.core.is_pooled(**id))
        .count()
}

#[test]
fn waiting_requests_go_in_order_over_the_one_reused_connection() {
    let mut h = Harness::new(one_slot(16));
    let cs: Vec<ConnId> = (0..5).map(|_| h.connect_client()).collect();
    for (i, &c) in cs.iter().enumerate() {
        h.client_send(c, &get(&format!("/{i}")));
    }
    assert_eq!(h.core.queued(UpstreamId(0)), 4);
    let mut order = Vec::new();
    while let Some(p) = answer_next(&mut h) {
        assert!(busy(&h) <= 1, "max_conns = 1 holds");
        order.push(p);
    }
    assert_eq!(order, ["/0", "/1", "/2", "/3", "/4"], "FIFO");
    for &c in &cs {
        assert_eq!(responses(&mut h, c)[0].status, 200);
    }
    assert_eq!(
        connects(&h),
        1,
        "one connection, reused for every waiting request"
    );
    let st = &h.core.stats().groups[0];
    assert_eq!((st.queued, st.dequeued, st.queue_full), (4, 4, 0));
    assert_eq!(h.core.queued(UpstreamId(0)), 0);
    no_leaks(&mut h);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let mut h = Harness::new(one_slot(2));
    let cs: Vec<ConnId> = (0..4).map(|_| h.connect_client()).collect();
    for &c in &cs {
        h.client_send(c, &get("/"));
    }
    let r = responses(&mut h, cs[3]);
    assert_eq!(r[0].status, 503);
    assert_eq!(header(&r[0], "retry-after"), Some("1"));
    assert_eq!(h.core.stats().groups[0].queue_full, 1);
    // The others are served.
    while answer_next(&mut h).is_some() {}
    for &c in &cs[..3] {
        assert_eq!(responses(&mut h, c)[0].status, 200);
    }
}

#[test]
fn an_expired_wait_answers_503_with_retry_after_and_keeps_the_connection() {
    let mut h = Harness::new(one_slot(4));
    let a = h.connect_client();
    let b = h.connect_client();
    h.client_send(a, &get("/slow"));
    h.client_send(b, &get("/waits"));
    h.advance(Duration::from_millis(1900));
    assert!(responses(&mut h, b).is_empty(), "still waiting");
    h.advance(Duration::from_millis(200));
    let r = responses(&mut h, b);
    assert_eq!(r[0].status, 503);
    assert_eq!(header(&r[0], "retry-after"), Some("1"));
    assert!(
        !h.clients[&b].closed,
        "the request was complete: keep-alive"
    );
    assert_eq!(h.core.stats().groups[0].queue_timeouts, 1);
    assert_eq!(h.core.queued(UpstreamId(0)), 0);
    // The slow one still gets its answer, and b's next request goes straight through.
    assert_eq!(answer_next(&mut h).as_deref(), Some("/slow"));
    assert_eq!(responses(&mut h, a)[0].status, 200);
    let (_, r) = exchange(&mut h, b, &get("/again"), &ok("x"));
    assert_eq!(r[0].status, 200);
}

#[test]
fn a_client_leaving_the_queue_frees_its_place_at_once() {
    let mut h = Harness::new(one_slot(1));
    let a = h.connect_client();
    let b = h.connect_client();
    let c = h.connect_client();
    h.client_send(a, &get("/a"));
    h.client_send(b, &get("/b"));
    assert_eq!(h.core.queued(UpstreamId(0)), 1);
    h.reset(b);
    assert_eq!(
        h.core.queued(UpstreamId(0)),
        0,
        "gone at once, not at its timeout"
    );
    assert_eq!(h.core.stats().groups[0].queue_abandoned, 1);
    // c takes the freed place (a full queue would have answered 503).
    h.client_send(c, &get("/c"));
    assert_eq!(h.core.queued(UpstreamId(0)), 1);
    assert_eq!(answer_next(&mut h).as_deref(), Some("/a"));
    assert_eq!(
        answer_next(&mut h).as_deref(),
        Some("/c"),
        "b never reaches the backend"
    );
    assert_eq!(responses(&mut h, c)[0].status, 200);
    // A client that closes (EOF) while waiting has left too: closed, its request never sent.
    let d = h.connect_client();
    let e = h.connect_client();
    h.client_send(d, &get("/d"));
    h.client_send(e, &get("/e"));
    h.client_eof(e);
    assert!(h.clients[&e].closed);
    assert_eq!(h.core.queued(UpstreamId(0)), 0);
    assert_eq!(answer_next(&mut h).as_deref(), Some("/d"));
    assert_eq!(answer_next(&mut h), None, "/e never reaches the backend");
    assert_eq!(h.core.stats().groups[0].queue_abandoned, 2);
}

#[test]
fn a_waiting_request_body_is_relayed_once_dispatched() {
    let mut h = Harness::new(one_slot(4));
    let a = h.connect_client();
    let b = h.connect_client();
    h.client_send(a, &get("/a"));
    let body = body_of(100 * KIB, 7);
    let mut req = post_head("/post", body.len());
    req.extend_from_slice(&body);
    h.client_send(b, &req);
    assert_eq!(answer_next(&mut h).as_deref(), Some("/a"));
    let u = busy_upstream(&h).expect("dispatched");
    let got = requests(&mut h, u);
    assert_eq!(got[0].body, body, "the whole body, after the wait");
    h.upstream_send(u, &ok("done"));
    assert_eq!(responses(&mut h, b)[0].status, 200);
}

#[test]
fn no_queue_for_a_server_that_is_down_or_drained() {
    // Waiting helps only when a slot will free: a drained server answers at once (502).
    let mut h = Harness::new(one_slot(4));
    h.core.shared().set_state(0, 0, ServerState::Drain).unwrap();
    let a = h.connect_client();
    h.client_send(a, &get("/"));
    assert_eq!(responses(&mut h, a)[0].status, 502);
    assert_eq!(h.core.stats().groups[0].queued, 0);
}

/// Two workers' cores sharing one ledger, each in its own harness, with wake-up flags standing
/// in for the runtime's wakers.
struct Process {
    workers: Vec<Harness>,
    woken: Vec<Arc<AtomicBool>>,
}

impl Process {
    fn new(cfg: upkeep_core::Config, n: usize) -> Process {
        let shared = Shared::new(&cfg, n);
        let mut workers = Vec::new();
        let mut woken = Vec::new();
        for w in 0..n {
            let flag = Arc::new(AtomicBool::new(false));
            let f = flag.clone();
            shared.set_waker(w, Box::new(move || f.store(true, Ordering::SeqCst)));
            woken.push(flag);
            let core = Core::with_shared(cfg.clone(), w as u64, shared.clone(), w).unwrap();
            workers.push(Harness::with_core(core));
        }
        Process { workers, woken }
    }

    /// Delivers wake-ups until none is pending.
    fn settle(&mut self) {
        assert!(
            self.settle_within(10_000),
            "the workers wake each other forever"
        );
    }

    fn busy(&self) -> usize {
        self.workers.iter().map(busy).sum()
    }

    /// Upstream connections open in the whole process, idle ones included.
    fn open(&self) -> usize {
        self.workers
            .iter()
            .map(|h| h.upstreams.values().filter(|e| !e.closed).count())
            .sum()
    }
}

#[test]
fn two_workers_share_max_conns_and_the_queue_order() {
    let mut p = Process::new(one_slot(16), 2);
    // Requests alternate between the workers: w0 /0, w1 /1, w0 /2, ...
    let mut clients = Vec::new();
    for i in 0..6 {
        let w = i % 2;
        let h = &mut p.workers[w];
        let c = h.connect_client();
        h.client_send(c, &get(&format!("/{i}")));
        clients.push((w, c));
        p.settle();
        assert_eq!(p.busy(), 1, "one request in flight for the whole process");
    }
    let mut order = Vec::new();
    loop {
        let mut answered = None;
        for w in 0..2 {
            if let Some(path) = answer_next(&mut p.workers[w]) {
                answered = Some(path);
                break;
            }
        }
        let Some(path) = answered else { break };
        order.push(path);
        p.settle();
        assert!(p.busy() <= 1, "max_conns = 1 across workers");
        assert!(
            p.open() <= 1,
            "never a second open connection, idle ones included"
        );
    }
    assert_eq!(
        order,
        ["/0", "/1", "/2", "/3", "/4", "/5"],
        "FIFO across workers"
    );
    for (w, c) in clients {
        assert_eq!(responses(&mut p.workers[w], c)[0].status, 200);
    }
    // Pools are per worker: each time the next in line is the other worker's request, the
    // idle connection is closed to give it the slot (here every time: they alternate).
    let opened: usize = p.workers.iter().map(connects).sum();
    assert_eq!(opened, 6);
    let yielded: u64 = p
        .workers
        .iter()
        .map(|h| h.core.stats().groups[0].evicted(upkeep_core::EvictReason::Yielded))
        .sum();
    assert_eq!(yielded, 5);
}

#[test]
fn requests_of_one_worker_reuse_its_connection_while_the_other_waits_for_nothing() {
    // Three requests on worker 0, then three on worker 1: one connection each, handed over
    // once (closed by worker 0 when worker 1's request became first in line).
    let mut p = Process::new(one_slot(16), 2);
    let mut clients = Vec::new();
    for i in 0..6 {
        let w = i / 3;
        let h = &mut p.workers[w];
        let c = h.connect_client();
        h.client_send(c, &get(&format!("/{i}")));
        clients.push((w, c));
        p.settle();
    }
    let mut order = Vec::new();
    loop {
        let answered = (0..2).find_map(|w| answer_next(&mut p.workers[w]));
        let Some(path) = answered else { break };
        order.push(path);
        p.settle();
        assert!(p.open() <= 1);
    }
    assert_eq!(order, ["/0", "/1", "/2", "/3", "/4", "/5"]);
    let opened: Vec<usize> = p.workers.iter().map(connects).collect();
    assert_eq!(opened, [1, 1]);
}

#[test]
fn a_drained_server_closes_idle_connections_in_every_worker() {
    let mut p = Process::new(config(2), 2);
    for w in 0..2 {
        let h = &mut p.workers[w];
        let c = h.connect_client();
        for i in 0..2 {
            let (_, r) = exchange(h, c, &get(&format!("/{i}")), &ok("x"));
            assert_eq!(r[0].status, 200);
        }
        assert_eq!(h.core.pool_idle(UpstreamId(0)), 2);
    }
    p.workers[0]
        .core
        .shared()
        .set_state(0, 1, ServerState::Drain)
        .unwrap();
    p.settle();
    for h in &p.workers {
        assert_eq!(
            h.core.pool_idle(UpstreamId(0)),
            1,
            "server 1's idle connection closed"
        );
        for (id, e) in &h.upstreams {
            let to_1 = e.server.is_some_and(|s| s.index == 1);
            assert_eq!(e.closed, to_1, "{id:?}");
        }
    }
}

#[test]
fn passive_health_is_shared_by_every_worker() {
    // Worker 1 has an idle connection to server 0; worker 0's connect to server 0 fails
    // (max_fails = 1): server 0 is down for both, and worker 1's idle connection to it closes.
    let mut p = Process::new(config(2), 2);
    {
        let h = &mut p.workers[1];
        let c = h.connect_client();
        let (u, r) = exchange(h, c, &get("/warm"), &ok("x"));
        assert_eq!(r[0].status, 200);
        assert_eq!(h.upstreams[&u].server.map(|s| s.index), Some(0));
    }
    {
        let h = &mut p.workers[0];
        h.auto_connect = false;
        let c = h.connect_client();
        h.client_send(c, &get("/a"));
        let first = h.connects[0];
        assert_eq!(h.upstreams[&first].server.map(|s| s.index), Some(0));
        h.refuse_connect();
        // Retried on server 1.
        let u = h.accept_connect().unwrap();
        assert_eq!(h.upstreams[&u].server.map(|s| s.index), Some(1));
    }
    p.settle();
    let now = p.workers[1].now;
    let s0 = p.workers[1].core.servers()[0];
    assert!(
        !p.workers[1].core.server_up(now, s0),
        "down for the other worker too"
    );
    assert_eq!(
        p.workers[1].core.pool_idle(UpstreamId(0)),
        0,
        "its idle connection to the failed server closed"
    );
    // Worker 1's next requests avoid server 0.
    let h = &mut p.workers[1];
    let c = h.connect_client();
    for i in 0..3 {
        let (u, r) = exchange(h, c, &get(&format!("/{i}")), &ok("y"));
        assert_eq!(r[0].status, 200);
        assert_eq!(h.upstreams[&u].server.map(|s| s.index), Some(1));
    }
}

#[test]
fn a_stale_retry_waiting_behind_others_gets_a_fresh_connection() {
    // max_conns = 2, both connections pooled. c1 and c2 reuse them, c3 waits. c1's turns out
    // stale: its retry must go on a fresh connection, and queues behind c3. Once c2's
    // connection is idle again the retry may not reuse it: it is closed to make room (it once
    // looped forever here, re-queueing the retry on every pass).
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 2;
    let mut h = Harness::new(cfg);
    let warm: Vec<ConnId> = (0..2).map(|_| h.connect_client()).collect();
    for &c in &warm {
        h.client_send(c, &get("/warm"));
    }
    let ups = h.open_upstreams();
    assert_eq!(ups.len(), 2);
    for &u in &ups {
        requests(&mut h, u);
        h.upstream_send(u, &ok("w"));
    }
    assert_eq!(h.core.pool_idle(UpstreamId(0)), 2);
    let c1 = warm[0];
    let c2 = warm[1];
    h.client_send(c1, &get("/one"));
    h.client_send(c2, &get("/two"));
    let c3 = h.connect_client();
    h.client_send(c3, &get("/three"));
    assert_eq!(h.core.queued(UpstreamId(0)), 1);
    // c1's connection: the backend had closed it (stale).
    let u1 = ups
        .iter()
        .copied()
        .find(|&u| {
            requests(&mut h, u)
                .first()
                .is_some_and(|r| r.path == "/one")
        })
        .expect("c1's request on a pooled connection");
    let u2 = ups.iter().copied().find(|&u| u != u1).unwrap();
    h.upstream_eof(u1);
    // c3 got the freed slot; c1's retry waits.
    let u3 = busy_upstream(&h).expect("c3 dispatched");
    assert_eq!(requests(&mut h, u3)[0].path, "/three");
    assert_eq!(h.core.queued(UpstreamId(0)), 1);
    // c2's answer: its connection goes idle, and is closed for c1's fresh retry.
    h.upstream_send(u2, &ok("two"));
    assert!(h.upstreams[&u2].closed, "yielded to the fresh retry");
    let u4 = busy_upstream(&h).expect("c1's retry dispatched");
    assert_eq!(requests(&mut h, u4)[0].path, "/one");
    h.upstream_send(u4, &ok("one"));
    h.upstream_send(u3, &ok("three"));
    for c in [c1, c2, c3] {
        assert_eq!(responses(&mut h, c)[0].status, 200);
    }
}

impl Process {
    /// Delivers wake-ups for at most `rounds` rounds; false if they never stopped (a livelock).
    fn settle_within(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let mut any = false;
            for (w, flag) in self.woken.iter().enumerate() {
                if flag.swap(false, Ordering::SeqCst) {
                    any = true;
                    let h = &mut self.workers[w];
                    let now = h.now;
                    h.core.handle_shared(now);
                    h.pump();
                }
            }
            if !any {
                return true;
            }
        }
        false
    }
}

#[test]
fn a_warm_connection_yielded_to_another_workers_request_is_not_reopened_in_its_place() {
    // max_conns = 1, min_idle = 1, two workers: worker 0 holds the one slot with a warm
    // connection. A request on worker 1 waits; worker 0 yields its idle warm connection — and
    // must not warm a new one with the slot it just gave up (it did: the two workers then woke
    // each other forever, connections churning, and the request waited for its timeout).
    let mut cfg = one_slot(16);
    cfg.upstreams[0].min_idle = 1;
    let mut p = Process::new(cfg, 2);
    for h in &mut p.workers {
        let now = h.now;
        h.core.start(now);
        h.pump();
    }
    assert!(p.settle_within(10));
    assert_eq!(p.open(), 1, "one warm connection for the process");
    // Connects are answered by hand from here on (a churning worker would loop within a call).
    for h in &mut p.workers {
        h.auto_connect = false;
    }
    let w1 = &mut p.workers[1];
    let c = w1.connect_client();
    w1.client_send(c, &get("/w1"));
    assert!(p.settle_within(50), "the workers keep waking each other");
    assert!(
        p.workers[0].connects.is_empty(),
        "worker 0 re-warmed the slot it yielded"
    );
    assert!(p.open() <= 1, "never two connections");
    p.workers[1]
        .accept_connect()
        .expect("worker 1's request dispatched");
    let u = busy_upstream(&p.workers[1]).expect("worker 1's request dispatched");
    assert_eq!(requests(&mut p.workers[1], u)[0].path, "/w1");
    p.workers[1].upstream_send(u, &ok("x"));
    assert_eq!(responses(&mut p.workers[1], c)[0].status, 200);
}

#[test]
fn when_the_head_leaves_the_next_worker_in_line_is_woken_for_the_free_slot() {
    // Worker 1's connection closes and wakes worker 0, first in line; before worker 0 acts
    // on the wake its waiting client leaves. Worker 1's request is now first and the slot is
    // free: it must be woken (it was not, and waited for its queue_timeout).
    let mut p = Process::new(one_slot(16), 2);
    let x = p.workers[1].connect_client();
    p.workers[1].client_send(x, &get("/x"));
    let a = p.workers[0].connect_client();
    p.workers[0].client_send(a, &get("/a"));
    p.settle();
    let b = p.workers[1].connect_client();
    p.workers[1].client_send(b, &get("/b"));
    p.settle();
    let u = busy_upstream(&p.workers[1]).expect("/x in flight");
    assert_eq!(requests(&mut p.workers[1], u)[0].path, "/x");
    p.workers[1].upstream_send(
        u,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert_eq!(responses(&mut p.workers[1], x)[0].status, 200);
    // Worker 0's client leaves before worker 0 handles its wake-up.
    p.workers[0].reset(a);
    p.settle();
    let u = busy_upstream(&p.workers[1]).expect("worker 1's /b dispatched");
    assert_eq!(requests(&mut p.workers[1], u)[0].path, "/b");
    p.workers[1].upstream_send(u, &ok("b"));
    assert_eq!(responses(&mut p.workers[1], b)[0].status, 200);
}

#[test]
fn requests_waiting_for_a_server_set_down_are_answered_at_once() {
    // A request waits behind max_conns; the server is set down. Nothing will free a slot it may
    // use: it is answered now (502, as a newcomer would be), not at its queue_timeout.
    let mut h = Harness::new(one_slot(16));
    let a = h.connect_client();
    let b = h.connect_client();
    h.client_send(a, &get("/a"));
    h.client_send(b, &get("/b"));
    assert_eq!(h.core.queued(UpstreamId(0)), 1);
    h.core.shared().set_state(0, 0, ServerState::Down).unwrap();
    let now = h.now;
    h.core.handle_shared(now);
    h.pump();
    let r = responses(&mut h, b);
    assert_eq!(r.len(), 1, "answered at once, not after queue_timeout");
    assert_eq!(r[0].status, 502);
    assert_eq!(h.core.queued(UpstreamId(0)), 0);
    // The request in flight still finishes.
    assert_eq!(answer_next(&mut h).as_deref(), Some("/a"));
    assert_eq!(responses(&mut h, a)[0].status, 200);
}

#[test]
fn a_slot_given_back_after_another_worker_queued_wakes_that_worker() {
    // Worker 0's connection closes while nobody waits; before worker 0's runtime takes the
    // Close (which gives the slot back), worker 1 finds the server full and queues. The slot
    // that frees then must reach worker 1 (it did not: nobody was woken, the request waited
    // for its queue_timeout).
    let mut p = Process::new(one_slot(16), 2);
    let x = p.workers[0].connect_client();
    p.workers[0].client_send(x, &get("/x"));
    let u = busy_upstream(&p.workers[0]).expect("/x in flight");
    assert_eq!(requests(&mut p.workers[0], u)[0].path, "/x");
    // The response (connection: close) reaches worker 0's core; its outputs are not taken yet.
    let now = p.workers[0].now;
    p.workers[0].core.handle(
        now,
        upkeep_core::Input::Received {
            conn: u,
            data: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        },
    );
    let b = p.workers[1].connect_client();
    p.workers[1].client_send(b, &get("/b"));
    assert_eq!(
        p.workers[1].core.queued(UpstreamId(0)),
        1,
        "the server is full"
    );
    p.workers[0].pump();
    p.settle();
    assert_eq!(responses(&mut p.workers[0], x)[0].status, 200);
    let u = busy_upstream(&p.workers[1]).expect("worker 1's /b dispatched");
    assert_eq!(requests(&mut p.workers[1], u)[0].path, "/b");
}

#[test]
fn a_reset_client_left_the_queue_after_its_wait() {
    // upkeep_upstream_queue_wait_seconds counts the wait of a client that resets too (it was
    // counted as 0: the close path had no clock).
    let mut h = Harness::new(one_slot(4));
    let a = h.connect_client();
    let b = h.connect_client();
    h.client_send(a, &get("/a"));
    h.client_send(b, &get("/b"));
    h.advance(Duration::from_millis(500));
    h.reset(b);
    let st = &h.core.stats().groups[0];
    assert_eq!(st.queue_abandoned, 1);
    assert_eq!(st.queue_wait_nanos, 500_000_000);
}
