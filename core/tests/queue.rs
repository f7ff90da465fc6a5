//! The queue behind `max_conns`: FIFO dispatch on the freed (pooled) connection, a full queue
//! and an expired wait answered `503` with `Retry-After`, a leaving client's place freed at once,
//! a waiting request's body relayed once dispatched, and two workers sharing one ledger (the
//! process-wide `max_conns` and FIFO order across workers). Driven by the in-memory harness.

use core::time::Duration;

use upkeep_core::sim::{Harness, Process};
use upkeep_core::{ConnId, ServerState, UpstreamId};

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

/// What these tests do with a process of workers sharing one ledger
/// ([`upkeep_core::sim::Process`]).
trait Workers {
    /// Delivers handed connections and wake-ups until none is pending, then checks the
    /// ledger's invariants.
    fn settle(&mut self);
    /// Upstream connections carrying (or opening for) a request, every worker together.
    fn busy(&self) -> usize;
    /// Connections the ledger counts for server `i` of group 0 (what `max_conns` caps).
    fn counted(&self, i: usize) -> u32;
    /// Worker `w`'s client sends `path`; returns the client.
    fn request(&mut self, w: usize, path: &str) -> ConnId;
    /// Each (worker, path) in turn: sent, then settled (so they queue in this order).
    fn in_order(&mut self, list: &[(usize, &str)]) -> Vec<ConnId>;
    /// Answers the request on worker `w`'s busy connection (its path must be `path`), leaving
    /// what that produces (a handover in flight) undelivered.
    fn answer(&mut self, w: usize, path: &str);
    /// The status of the one response client `c` of worker `w` got.
    fn status(&mut self, w: usize, c: ConnId) -> u16;
}

impl Workers for Process {
    fn settle(&mut self) {
        assert!(
            self.settle_within(10_000),
            "the workers wake each other forever"
        );
        self.check_invariants();
    }

    fn busy(&self) -> usize {
        self.workers.iter().map(busy).sum()
    }

    fn counted(&self, i: usize) -> u32 {
        let h = &self.workers[0];
        h.core.shared().server(0, i, h.now).unwrap().conns
    }

    fn request(&mut self, w: usize, path: &str) -> ConnId {
        let h = &mut self.workers[w];
        let c = h.connect_client();
        h.client_send(c, &get(path));
        c
    }

    fn in_order(&mut self, list: &[(usize, &str)]) -> Vec<ConnId> {
        list.iter()
            .map(|&(w, path)| {
                let c = self.request(w, path);
                self.settle();
                c
            })
            .collect()
    }

    fn answer(&mut self, w: usize, path: &str) {
        let h = &mut self.workers[w];
        let u = busy_upstream(h).expect("a request in flight");
        assert_eq!(requests(h, u)[0].path, path);
        h.upstream_send(u, &ok(path));
    }

    fn status(&mut self, w: usize, c: ConnId) -> u16 {
        responses(&mut self.workers[w], c)[0].status
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
    // idle connection is handed over to it (here every time: they alternate) — one connection
    // serves all six, none is closed to make room.
    let opened: usize = p.workers.iter().map(connects).sum();
    assert_eq!(opened, 1);
    let yielded: u64 = p
        .workers
        .iter()
        .map(|h| h.core.stats().groups[0].evicted(upkeep_core::EvictReason::Yielded))
        .sum();
    assert_eq!(yielded, 0);
    assert_eq!(p.handovers(), (5, 5));
}

#[test]
fn requests_of_one_worker_reuse_its_connection_while_the_other_waits_for_nothing() {
    // Three requests on worker 0, then three on worker 1: one connection for all, handed over
    // once (by worker 0 when worker 1's request became first in line).
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
    assert_eq!(opened, [1, 0]);
    assert_eq!(p.handovers(), (1, 1));
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

/// `max_conns = 2`, both connections pooled: c1 and c2 reuse them, c3 waits. c1's turns out
/// stale: its retry takes over that connection's slot on a fresh connection at once — it was
/// admitted before c3, and the failed attempt counts as not having happened — rather than
/// waiting behind c3 (and, with the queue full, being answered 503). c3 then gets c2's
/// connection once it is idle.
#[test]
fn a_stale_retry_keeps_its_place_ahead_of_requests_waiting() {
    let mut cfg = config(1);
    cfg.upstreams[0].servers[0].max_conns = 2;
    cfg.upstreams[0].queue = 1;
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
    let (c1, c2) = (warm[0], warm[1]);
    h.client_send(c1, &get("/one"));
    h.client_send(c2, &get("/two"));
    let c3 = h.connect_client();
    h.client_send(c3, &get("/three"));
    assert_eq!(
        h.core.queued(UpstreamId(0)),
        1,
        "c3 waits; the queue (1) is full"
    );
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
    let u4 = busy_upstream(&h).expect("c1's retry on a fresh connection");
    assert_ne!(u4, u1);
    assert_eq!(requests(&mut h, u4)[0].path, "/one");
    assert_eq!(h.core.queued(UpstreamId(0)), 1, "c3 still waits");
    assert_eq!(
        connects(&h),
        3,
        "two warm, one fresh for the retry: never over the cap"
    );
    // c2's answer: its connection goes idle and carries c3's request.
    h.upstream_send(u2, &ok("two"));
    assert_eq!(h.core.queued(UpstreamId(0)), 0);
    assert_eq!(requests(&mut h, u2)[0].path, "/three");
    h.upstream_send(u4, &ok("one"));
    h.upstream_send(u2, &ok("three"));
    for c in [c1, c2, c3] {
        assert_eq!(responses(&mut h, c)[0].status, 200);
    }
}

#[test]
fn a_warm_connection_yielded_to_another_workers_request_is_not_reopened_in_its_place() {
    // max_conns = 1, min_idle = 1, two workers: worker 0 holds the one slot with a warm
    // connection. A request on worker 1 waits; worker 0 hands its idle warm connection over —
    // and must not warm a new one with the slot it just gave up (it did, when the connection
    // was closed for worker 1 instead: the two workers then woke each other forever,
    // connections churning, and the request waited for its timeout).
    let mut cfg = one_slot(16);
    cfg.upstreams[0].min_idle = 1;
    let mut p = Process::new(cfg, 2);
    p.start();
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
    assert!(
        p.workers[1].connects.is_empty(),
        "worker 1's request rides the warm connection handed over"
    );
    assert_eq!(p.handovers(), (1, 1));
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

// ---- handing an idle connection to the worker first in line (issue 11, item 2) ----------

#[test]
fn a_handed_connection_carries_the_next_request_and_its_slot_stays_counted() {
    let mut p = Process::new(one_slot(16), 2);
    let a = p.request(0, "/a");
    let b = p.request(1, "/b");
    p.settle();
    assert_eq!(p.workers[1].core.queued(UpstreamId(0)), 1);
    p.answer(0, "/a");
    // On its way: out of worker 0, not yet in worker 1 — and still counted.
    assert_eq!(p.workers[0].handed_out.len(), 1);
    assert_eq!(p.counted(0), 1, "the slot moves with the connection");
    assert_eq!(p.workers[0].core.pool_idle(UpstreamId(0)), 0);
    p.settle();
    p.answer(1, "/b");
    assert_eq!((p.status(0, a), p.status(1, b)), (200, 200));
    assert_eq!(connects(&p.workers[0]) + connects(&p.workers[1]), 1);
    assert_eq!(p.handovers(), (1, 1));
    // The backend saw both requests on the one connection.
    assert_eq!(p.open(), 1);
    assert_eq!(p.counted(0), 1);
    assert_eq!(p.workers[1].core.pool_idle(UpstreamId(0)), 1);
}

#[test]
fn a_connection_handed_to_a_worker_whose_request_left_goes_to_the_next_in_line() {
    // Worker 1's request is first in line; worker 0's next one is behind it. The connection
    // is handed to worker 1 — whose client leaves while it is on its way. Worker 1 pools it
    // and hands it on to worker 0, now first: no connection closes, none opens.
    let mut p = Process::new(one_slot(16), 2);
    let [a, b, c] = p.in_order(&[(0, "/a"), (1, "/b"), (0, "/c")])[..] else {
        unreachable!()
    };
    p.answer(0, "/a");
    assert_eq!(p.workers[0].handed_out.len(), 1);
    assert_eq!(p.workers[0].handed_out[0].to_worker, 1);
    p.workers[1].reset(b);
    p.settle();
    p.answer(0, "/c");
    assert_eq!((p.status(0, a), p.status(0, c)), (200, 200));
    assert_eq!(connects(&p.workers[0]) + connects(&p.workers[1]), 1);
    assert_eq!(p.handovers(), (2, 2));
    assert_eq!((p.open(), p.counted(0)), (1, 1));
}

#[test]
fn a_connection_handed_to_a_worker_whose_request_left_stays_pooled_there() {
    let mut p = Process::new(one_slot(16), 2);
    let a = p.request(0, "/a");
    let b = p.request(1, "/b");
    p.settle();
    p.answer(0, "/a");
    p.workers[1].reset(b);
    p.settle();
    assert_eq!(p.status(0, a), 200);
    assert_eq!(
        p.workers[1].core.pool_idle(UpstreamId(0)),
        1,
        "kept for later"
    );
    assert_eq!((p.open(), p.counted(0)), (1, 1));
    // The next request anywhere gets it (worker 0's from worker 1 again).
    let d = p.request(0, "/d");
    p.settle();
    p.answer(0, "/d");
    assert_eq!(p.status(0, d), 200);
    assert_eq!(connects(&p.workers[0]) + connects(&p.workers[1]), 1);
}

#[test]
fn two_workers_handing_at_once_both_reach_the_one_first_in_line() {
    // max_conns = 2: workers 0 and 1 each carry a request; worker 2's two requests wait. Both
    // connections finish before either reaches worker 2: both are handed to it, and carry its
    // two requests. Then once more with one request waiting: the spare one stays idle there.
    let mut cfg = one_slot(16);
    cfg.upstreams[0].servers[0].max_conns = 2;
    let mut p = Process::new(cfg, 3);
    let a = p.request(0, "/a");
    let b = p.request(1, "/b");
    p.settle();
    let c = p.request(2, "/c");
    p.settle();
    let d = p.request(2, "/d");
    p.settle();
    assert_eq!(p.workers[2].core.queued(UpstreamId(0)), 2);
    p.answer(0, "/a");
    p.answer(1, "/b");
    assert_eq!(
        (p.workers[0].handed_out.len(), p.workers[1].handed_out.len()),
        (1, 1)
    );
    assert_eq!(p.counted(0), 2);
    p.settle();
    let h = &mut p.workers[2];
    let mut paths: Vec<String> = h
        .open_upstreams()
        .into_iter()
        .flat_map(|u| requests(h, u))
        .map(|r| r.path)
        .collect();
    paths.sort();
    assert_eq!(paths, ["/c", "/d"]);
    for u in h.open_upstreams() {
        h.upstream_send(u, &ok("x"));
    }
    for (w, cl) in [(0, a), (1, b), (2, c), (2, d)] {
        assert_eq!(p.status(w, cl), 200);
    }
    let opened: usize = p.workers.iter().map(connects).sum();
    assert_eq!(opened, 2);
    assert_eq!(p.handovers(), (2, 2));
    assert_eq!((p.open(), p.counted(0)), (2, 2));
}

#[test]
fn a_connection_handed_then_its_server_set_down_is_closed_and_its_slot_given_back() {
    let mut p = Process::new(one_slot(16), 2);
    let a = p.request(0, "/a");
    let b = p.request(1, "/b");
    p.settle();
    p.answer(0, "/a");
    assert_eq!(p.workers[0].handed_out.len(), 1);
    p.workers[0]
        .core
        .shared()
        .set_state(0, 0, ServerState::Down)
        .unwrap();
    p.settle();
    assert_eq!(p.status(0, a), 200);
    assert_eq!(p.status(1, b), 502, "nothing left to wait for");
    let h = &p.workers[1];
    assert!(h.upstreams.values().all(|e| e.closed), "closed on arrival");
    assert_eq!(
        h.core.stats().groups[0].evicted(upkeep_core::EvictReason::ServerUnusable),
        1
    );
    assert_eq!((p.open(), p.counted(0)), (0, 0), "the slot given back once");
}

#[test]
fn a_connection_handed_to_a_draining_worker_is_closed_and_the_next_in_line_gets_the_slot() {
    // Worker 1 (first in line) starts draining while the connection is on its way: it closes
    // the connection, whose slot goes to whoever is first in line then.
    let mut p = Process::new(one_slot(16), 3);
    let [a, b, c] = p.in_order(&[(0, "/a"), (1, "/b"), (2, "/c")])[..] else {
        unreachable!()
    };
    p.answer(0, "/a");
    let now = p.workers[1].now;
    p.workers[1].core.begin_drain(now);
    p.workers[1].pump();
    p.settle();
    assert_eq!(p.status(0, a), 200);
    assert!(p.counted(0) <= 1 && p.open() <= 1, "the cap holds");
    // Whoever holds the slot now serves its request; the other waits for it.
    for _ in 0..2 {
        let Some(w) = (1..3).find(|&w| busy_upstream(&p.workers[w]).is_some()) else {
            break;
        };
        let path = if w == 1 { "/b" } else { "/c" };
        p.answer(w, path);
        p.settle();
    }
    assert_eq!((p.status(1, b), p.status(2, c)), (200, 200));
    assert_eq!(p.counted(0), p.open() as u32, "no slot leaked");
}

#[test]
fn a_connection_that_cannot_be_delivered_gives_its_slot_back_once() {
    // The receiving worker has exited: the runtime closes the socket and tells the sender,
    // which gives the slot back — and the slot is not given back twice.
    let mut p = Process::new(one_slot(16), 2);
    let a = p.request(0, "/a");
    let _b = p.request(1, "/b");
    p.settle();
    p.answer(0, "/a");
    let lost = p.workers[0].handed_out.pop().expect("handed over");
    assert_eq!(p.counted(0), 1);
    let now = p.workers[0].now;
    p.workers[0].core.hand_over_failed(now, lost.handed);
    p.workers[0].pump();
    assert_eq!(p.counted(0), 0, "given back");
    assert_eq!(p.status(0, a), 200);
    // Worker 1 (still alive here) is woken and opens a connection of its own.
    p.settle();
    assert_eq!(p.counted(0), 1);
    assert_eq!(connects(&p.workers[1]), 1);
    p.answer(1, "/b");
    p.settle();
    assert_eq!((p.open(), p.counted(0)), (1, 1));
}

/// A seeded random run of a process of `workers` workers sharing one server with `max_conns`:
/// requests arrive on random workers, the backend answers (sometimes closing), clients leave,
/// the server is sometimes set down and up again, and handed connections and wake-ups are
/// delivered in random order — interleavings a real process can produce. After every step:
/// the ledger counts exactly the connections open in the process (those on their way between
/// workers included), never more than `max_conns`; nothing is closed to make room for another
/// worker (it is handed over). At the end every request still wanted was answered exactly once,
/// and without outages in the order it was sent.
fn random_process(seed: u64) {
    use upkeep_core::sim::world::Rng;
    let mut rng = Rng::new(seed);
    let workers = 2 + rng.below(2) as usize;
    let max_conns = 1 + rng.below(2) as u32;
    let mut cfg = one_slot(1024);
    cfg.upstreams[0].servers[0].max_conns = max_conns;
    cfg.upstreams[0].queue_timeout = Duration::from_secs(3600);
    let mut p = Process::new(cfg, workers);
    let mut clients: Vec<(usize, ConnId, String, bool)> = Vec::new();
    // Requests the backend holds, by (worker, upstream connection); and every arrival in order.
    let mut held: Vec<(usize, ConnId, String)> = Vec::new();
    let mut arrivals: Vec<String> = Vec::new();
    let mut outages = false;
    let check =
        |p: &mut Process, held: &mut Vec<(usize, ConnId, String)>, arr: &mut Vec<String>| {
            // Arrivals of one step are seen worker by worker, not in the order they happened: put
            // each step's in sending order (FIFO is then checked across steps).
            let from = arr.len();
            for w in 0..p.workers.len() {
                let h = &mut p.workers[w];
                for u in h.open_upstreams() {
                    for r in requests(h, u) {
                        assert!(
                            !held.iter().any(|&(hw, hu, _)| (hw, hu) == (w, u)),
                            "seed {seed}: two requests at once on one connection"
                        );
                        held.push((w, u, r.path.clone()));
                        arr.push(r.path);
                    }
                }
                held.retain(|&(hw, hu, _)| hw != w || !p.workers[w].upstreams[&hu].closed);
            }
            arr[from..].sort_by_key(|path| path[1..].parse::<u32>().unwrap_or(u32::MAX));
            let counted = p.counted(0);
            assert_eq!(
                counted as usize,
                p.open(),
                "seed {seed}: the ledger counts exactly the open connections"
            );
            assert!(counted <= max_conns, "seed {seed}: max_conns exceeded");
            for h in &p.workers {
                let g = &h.core.stats().groups[0];
                assert_eq!(
                    g.evicted(upkeep_core::EvictReason::Yielded),
                    0,
                    "seed {seed}: a connection closed for another worker instead of handed"
                );
            }
        };
    for n in 0..300 {
        match rng.below(12) {
            0..=3 => {
                let w = rng.below(workers as u64) as usize;
                let path = format!("/{n}");
                let c = p.request(w, &path);
                clients.push((w, c, path, false));
            }
            4..=6 if !held.is_empty() => {
                let (w, u, path) = held.remove(rng.below(held.len() as u64) as usize);
                let close = rng.below(5) == 0;
                let resp = if close {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx".to_vec()
                } else {
                    ok(&path)
                };
                p.workers[w].upstream_send(u, &resp);
            }
            7 => {
                let open: Vec<usize> = (0..clients.len()).filter(|&i| !clients[i].3).collect();
                if !open.is_empty() {
                    let i = open[rng.below(open.len() as u64) as usize];
                    let (w, c, ..) = clients[i];
                    clients[i].3 = true;
                    p.workers[w].reset(c);
                }
            }
            8 => {
                // One handed connection delivered, perhaps before its receiver's wake-up.
                let from: Vec<usize> = (0..workers)
                    .filter(|&w| !p.workers[w].handed_out.is_empty())
                    .collect();
                if !from.is_empty() {
                    p.deliver_one(from[rng.below(from.len() as u64) as usize]);
                }
            }
            9 => {
                p.wake(rng.below(workers as u64) as usize);
            }
            10 if rng.below(8) == 0 => {
                outages = true;
                let shared = p.workers[0].core.shared().clone();
                shared.set_state(0, 0, ServerState::Down).unwrap();
                assert!(p.settle_within(10_000), "seed {seed}: livelock");
                shared.set_state(0, 0, ServerState::Up).unwrap();
            }
            _ => assert!(p.settle_within(10_000), "seed {seed}: livelock"),
        }
        check(&mut p, &mut held, &mut arrivals);
    }
    // Everything still waiting is served.
    for _ in 0..10_000 {
        assert!(p.settle_within(10_000), "seed {seed}: livelock");
        check(&mut p, &mut held, &mut arrivals);
        let Some((w, u, path)) = held.pop() else {
            break;
        };
        p.workers[w].upstream_send(u, &ok(&path));
    }
    check(&mut p, &mut held, &mut arrivals);
    assert!(held.is_empty());
    let mut sent = Vec::new();
    for (w, c, path, reset) in clients {
        if reset {
            continue;
        }
        let r = responses(&mut p.workers[w], c);
        assert_eq!(r.len(), 1, "seed {seed}: {path} answered once");
        assert!(
            r[0].status == 200 || (outages && r[0].status == 502),
            "seed {seed}: {path}: {}",
            r[0].status
        );
        if r[0].status == 200 {
            sent.push(path);
        }
    }
    for h in &p.workers {
        assert_eq!(h.core.queued(UpstreamId(0)), 0, "seed {seed}: left waiting");
    }
    if !outages {
        // FIFO over the process: the backend saw the wanted requests in the order they were sent.
        let wanted: Vec<&String> = arrivals.iter().filter(|a| sent.contains(a)).collect();
        let order: Vec<&String> = sent.iter().collect();
        assert_eq!(wanted, order, "seed {seed}: FIFO");
    }
}

#[test]
fn random_processes_hand_connections_without_leaking_or_exceeding_slots() {
    for seed in 0..200 {
        random_process(seed);
    }
}

#[test]
fn only_as_many_connections_move_as_requests_wait() {
    // max_conns = 2, both connections idle in worker 0; one request waits in worker 1: one
    // connection moves, the other stays for worker 0's next request.
    let mut cfg = one_slot(16);
    cfg.upstreams[0].servers[0].max_conns = 2;
    let mut p = Process::new(cfg, 2);
    let a = p.request(0, "/a");
    let b = p.request(0, "/b");
    p.settle();
    for path in ["/a", "/b"] {
        let h = &mut p.workers[0];
        let u = h
            .open_upstreams()
            .into_iter()
            .find(|&u| {
                h.upstreams[&u]
                    .received
                    .windows(path.len())
                    .any(|w| w == path.as_bytes())
            })
            .expect("in flight");
        requests(h, u);
        h.upstream_send(u, &ok(path));
    }
    assert_eq!((p.status(0, a), p.status(0, b)), (200, 200));
    assert_eq!(p.workers[0].core.pool_idle(UpstreamId(0)), 2);
    let c = p.request(1, "/c");
    p.settle();
    assert_eq!(p.handovers(), (1, 1));
    assert_eq!(p.workers[0].core.pool_idle(UpstreamId(0)), 1, "one kept");
    p.answer(1, "/c");
    assert_eq!(p.status(1, c), 200);
    let opened: usize = p.workers.iter().map(connects).sum();
    assert_eq!(opened, 2);
    assert_eq!((p.open(), p.counted(0)), (2, 2));
}
