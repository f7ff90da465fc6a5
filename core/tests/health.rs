//! Active health checks (`health_check`), driven through the core's public API by the in-memory
//! harness: a check is a `GET path` the core sends by itself, once per interval per server for
//! the whole process (two cores sharing a ledger check once between them), on an idle pooled
//! connection when there is one; `fall` failures in a row take the server out for new requests,
//! `rise` passes bring it back; a check never counts as a client request and never breaks
//! `max_conns`.

use core::time::Duration;

use upkeep_core::config::{Config, HealthCheck};
use upkeep_core::health::CheckResult;
use upkeep_core::sim::{Harness, Process};
use upkeep_core::{ConnId, Core, Shared, UpstreamId};

mod common;
use common::*;

const INTERVAL: Duration = Duration::from_secs(1);

fn checked(servers: usize, fall: u32, rise: u32) -> Config {
    let mut cfg = config(servers);
    cfg.upstreams[0].health_check = Some(HealthCheck {
        path: "/healthz".into(),
        interval: INTERVAL,
        timeout: Duration::from_millis(500),
        fall,
        rise,
        ..HealthCheck::default()
    });
    cfg
}

fn started(cfg: Config) -> Harness {
    let mut h = Harness::new(cfg);
    h.core.start(h.now);
    h.pump();
    h
}

/// The upstream connections that received a check request since the last look, and the server
/// each goes to (consumed).
fn checks_sent(h: &mut Harness) -> Vec<(ConnId, usize)> {
    let ids: Vec<ConnId> = h
        .upstreams
        .iter()
        .filter(|(_, e)| !e.received.is_empty() && !e.closed)
        .map(|(&id, _)| id)
        .collect();
    let mut out = Vec::new();
    for u in ids {
        let server = h.upstreams[&u]
            .server
            .map_or(usize::MAX, |s| s.index as usize);
        for r in requests(h, u) {
            assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/healthz"));
            let ua = r.headers.iter().find(|(n, _)| n == "user-agent");
            assert_eq!(ua.map(|(_, v)| v.as_str()), Some("upkeep-health-check"));
            let host = r
                .headers
                .iter()
                .find(|(n, _)| n == "host")
                .map(|(_, v)| v.clone());
            assert_eq!(
                host,
                Some(format!("127.0.0.1:{}", 9001 + server)),
                "the server as written"
            );
            out.push((u, server));
        }
    }
    out
}

fn status(code: u16) -> Vec<u8> {
    format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok").into_bytes()
}

fn up(h: &Harness, server: usize) -> bool {
    h.core.server_up(h.now, h.core.servers()[server])
}

fn results(h: &Harness, server: usize) -> [u64; 4] {
    h.core.shared().checks(0, server).unwrap().results
}

#[test]
fn a_check_rides_the_pooled_connection_and_is_not_a_request() {
    let mut h = started(checked(1, 3, 2));
    let sent = checks_sent(&mut h);
    assert_eq!(sent.len(), 1, "the first check runs at start");
    let (u, _) = sent[0];
    h.upstream_send(u, &status(200));
    assert_eq!(
        h.core.pool_idle(UpstreamId(0)),
        1,
        "the check's connection is pooled"
    );
    assert_eq!(results(&h, 0), [1, 0, 0, 0]);
    // A client request reuses it.
    let c = h.connect_client();
    let (u2, rs) = exchange(&mut h, c, &get("/"), &ok("x"));
    assert_eq!((u2, rs[0].status), (u, 200));
    // The next check rides the same connection, one interval after the first.
    h.advance(INTERVAL - Duration::from_millis(10));
    assert!(checks_sent(&mut h).is_empty());
    h.advance(Duration::from_millis(20));
    let sent = checks_sent(&mut h);
    assert_eq!(sent, [(u, 0)], "same connection: no new connect");
    h.upstream_send(u, &status(204));
    assert_eq!(connects(&h), 1);
    assert_eq!(results(&h, 0), [2, 0, 0, 0]);
    let s = &h.core.stats().servers[0];
    assert_eq!((s.requests, s.checks), (1, 2), "checks are not requests");
    upstreams_accounted(&h.core);
}

#[test]
fn fall_failures_take_a_server_out_and_rise_passes_bring_it_back() {
    let mut h = started(checked(2, 2, 2));
    let answer = |h: &mut Harness, bad: u16| {
        for (u, server) in checks_sent(h) {
            h.upstream_send(u, &status(if server == 0 { bad } else { 200 }));
        }
    };
    answer(&mut h, 500);
    assert!(up(&h, 0), "one failure is not `fall`");
    h.advance(INTERVAL);
    answer(&mut h, 500);
    assert!(!up(&h, 0), "two failures in a row: out");
    assert_eq!(results(&h, 0)[CheckResult::Fail as usize], 2);
    // Its idle connection was closed; every new request goes to server 1.
    for _ in 0..4 {
        let c = h.connect_client();
        h.client_send(c, &get("/"));
        let u = busy_upstream(&h).unwrap();
        assert_eq!(h.upstreams[&u].server.unwrap().index, 1);
        requests(&mut h, u);
        h.upstream_send(u, &ok("x"));
    }
    // Recovery: `rise` = 2 passes.
    h.advance(INTERVAL);
    answer(&mut h, 200);
    assert!(!up(&h, 0), "one pass is not `rise`");
    h.advance(INTERVAL);
    answer(&mut h, 200);
    assert!(up(&h, 0), "back after two passes");
    let c = h.connect_client();
    let mut servers = Vec::new();
    for _ in 0..2 {
        h.client_send(c, &get("/"));
        let u = busy_upstream(&h).unwrap();
        servers.push(h.upstreams[&u].server.unwrap().index);
        requests(&mut h, u);
        h.upstream_send(u, &ok("x"));
    }
    servers.sort();
    assert_eq!(servers, [0, 1], "traffic reaches server 0 again");
    upstreams_accounted(&h.core);
    // A drain stops the checks: nothing is left open, no timer is left.
    for id in h.open_upstreams() {
        h.reset(id);
    }
    h.core.begin_drain(h.now);
    h.pump();
    h.advance(secs(3600));
    assert_eq!(h.core.connections(), 0);
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn a_check_that_gets_no_answer_times_out() {
    let mut h = started(checked(1, 1, 1));
    assert_eq!(checks_sent(&mut h).len(), 1);
    h.advance(Duration::from_millis(499));
    assert!(up(&h, 0));
    h.advance(Duration::from_millis(2));
    assert!(!up(&h, 0), "timed out with fall = 1");
    assert_eq!(results(&h, 0), [0, 0, 1, 0]);
    assert!(h.open_upstreams().is_empty(), "its connection closed");
    // A refused connect is an error.
    h.auto_connect = false;
    h.advance(Duration::from_millis(500));
    h.refuse_connect().expect("the next check connects");
    assert_eq!(results(&h, 0), [0, 0, 1, 1]);
    // A close before the answer is an error too; an answer brings it back (rise = 1).
    h.advance(INTERVAL);
    h.accept_connect().unwrap();
    let (u, _) = checks_sent(&mut h)[0];
    h.upstream_eof(u);
    assert_eq!(results(&h, 0), [0, 0, 1, 2]);
    h.advance(INTERVAL);
    h.accept_connect().unwrap();
    let (u, _) = checks_sent(&mut h)[0];
    h.upstream_send(u, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye");
    h.upstream_eof(u);
    assert!(up(&h, 0));
    assert_eq!(results(&h, 0), [1, 0, 1, 2]);
    upstreams_accounted(&h.core);
}

#[test]
fn two_workers_check_once_per_interval_between_them() {
    let cfg = checked(1, 3, 2);
    let shared = Shared::new(&cfg, 2);
    let core = |w| Core::with_shared(cfg.clone(), 1, shared.clone(), w).unwrap();
    let (mut a, mut b) = (Harness::with_core(core(0)), Harness::with_core(core(1)));
    a.core.start(a.now);
    a.pump();
    b.core.start(b.now);
    b.pump();
    let mut total = 0;
    for round in 0..5 {
        for h in [&mut a, &mut b] {
            for (u, _) in checks_sent(h) {
                total += 1;
                h.upstream_send(u, &status(200));
            }
        }
        assert_eq!(total, round + 1, "one check per interval for the process");
        // Both workers' clocks move together, each woken by its own poll_timeout.
        a.advance(INTERVAL);
        b.advance(INTERVAL);
    }
    assert_eq!(results(&a, 0)[0], 5);
}

#[test]
fn a_check_never_breaks_max_conns() {
    let mut cfg = checked(1, 1, 1);
    cfg.upstreams[0].servers[0].max_conns = 1;
    let mut h = started(cfg);
    let (u, _) = checks_sent(&mut h)[0];
    h.upstream_send(u, &status(200));
    // A request holds the one connection across the next round: the round is skipped.
    let c = h.connect_client();
    h.client_send(c, &get("/slow"));
    assert_eq!(requests(&mut h, u).len(), 1);
    h.advance(INTERVAL + Duration::from_millis(10));
    assert!(checks_sent(&mut h).is_empty());
    assert_eq!(connects(&h), 1, "no second connection");
    h.upstream_send(u, &ok("done"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    // The round after rides the pooled connection again.
    h.advance(INTERVAL);
    assert_eq!(checks_sent(&mut h), [(u, 0)]);
    assert_eq!(connects(&h), 1);
}

#[test]
fn a_drain_closes_a_check_in_flight_at_once() {
    // fall = 1: a check the drain cut short must not count (nor fail the server).
    let mut h = started(checked(1, 1, 1));
    assert_eq!(
        checks_sent(&mut h).len(),
        1,
        "a check in flight, no answer yet"
    );
    h.core.begin_drain(h.now);
    h.pump();
    assert_eq!(
        h.core.connections(),
        0,
        "no client waits on a check: the drain does not wait for its answer"
    );
    assert!(h.core.is_drained());
    h.advance(secs(1));
    assert_eq!(
        results(&h, 0),
        [0, 0, 0, 0],
        "a cut-short check is no result"
    );
    assert!(up(&h, 0));
}

#[test]
fn check_answers_of_every_shape_are_judged_and_framed() {
    // (what the backend sends, in pieces; then EOF?; the result; the connection pooled after?)
    type Case = (&'static [&'static [u8]], bool, CheckResult, bool);
    let cases: &[Case] = &[
        (
            &[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ],
            false,
            CheckResult::Pass,
            true,
        ),
        (
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                b"c\r\n0\r\n\r\n",
            ],
            false,
            CheckResult::Pass,
            true,
        ),
        (
            &[b"HTTP/1.1 200 OK\r\n\r\npartial body until close"],
            true,
            CheckResult::Pass,
            false,
        ),
        (
            &[b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\n", b"busy"],
            false,
            CheckResult::Fail,
            true,
        ),
        (
            &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"],
            false,
            CheckResult::Error,
            false,
        ),
        (&[b"garbage\r\n\r\n"], false, CheckResult::Error, false),
        (
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
            true,
            CheckResult::Error,
            false,
        ),
        (
            &[b"HTTP/1.1 204 No Content\r\n\r\n"],
            false,
            CheckResult::Pass,
            true,
        ),
    ];
    for (i, &(pieces, eof, want, pooled)) in cases.iter().enumerate() {
        let mut h = started(checked(1, 3, 2));
        let (u, _) = checks_sent(&mut h)[0];
        for p in pieces {
            h.upstream_send(u, p);
        }
        if eof {
            h.upstream_eof(u);
        }
        let mut expected = [0; 4];
        expected[want as usize] = 1;
        assert_eq!(results(&h, 0), expected, "case {i}");
        assert_eq!(
            h.core.pool_idle(UpstreamId(0)),
            usize::from(pooled),
            "case {i}: pooled"
        );
        assert_eq!(
            h.open_upstreams().len(),
            usize::from(pooled),
            "case {i}: open"
        );
        upstreams_accounted(&h.core);
    }
}

#[test]
fn an_idle_timeout_408_on_the_pooled_connection_is_the_keepalive_race_not_a_failure() {
    // The backend's idle timeout answers 408 as the check reuses its pooled connection (as a
    // client request would, the check goes again on a fresh connection): with fall = 1 a 408
    // counted as a failed check took a healthy server out.
    let mut h = started(checked(1, 1, 1));
    let (u, _) = checks_sent(&mut h)[0];
    h.upstream_send(u, &status(200));
    h.advance(INTERVAL);
    assert_eq!(checks_sent(&mut h), [(u, 0)], "rides the pooled connection");
    h.upstream_send(
        u,
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    h.upstream_eof(u);
    let again = checks_sent(&mut h);
    assert_eq!(again.len(), 1, "sent again at once");
    assert_ne!(again[0].0, u, "on a fresh connection");
    h.upstream_send(again[0].0, &status(200));
    assert!(up(&h, 0));
    assert_eq!(results(&h, 0), [2, 0, 0, 0]);
    upstreams_accounted(&h.core);
}

#[test]
fn a_check_does_not_jump_ahead_of_a_request_waiting_for_the_server() {
    // max_conns = 1, two workers: worker 0 holds the one slot with its idle pooled connection,
    // a request waits in worker 1's queue, and the round falls due in worker 0 before it acts
    // on its wake-up. The idle connection belongs to the waiting request (FIFO): the check
    // rode it instead and the request waited for the check's answer.
    let mut cfg = checked(1, 3, 2);
    cfg.upstreams[0].servers[0].max_conns = 1;
    cfg.upstreams[0].queue = 16;
    cfg.upstreams[0].queue_timeout = secs(30);
    let mut p = workers(&cfg, 2);
    let (u, _) = checks_sent(&mut p.workers[0])[0];
    p.workers[0].upstream_send(u, &status(200));
    assert!(
        p.workers[0].core.is_pooled(u),
        "worker 0 holds the slot, idle"
    );
    for h in &mut p.workers {
        h.advance(INTERVAL - Duration::from_millis(1));
    }
    let b = p.workers[1].connect_client();
    p.workers[1].client_send(b, &get("/b"));
    assert_eq!(
        p.workers[1].core.queued(UpstreamId(0)),
        1,
        "the server is full"
    );
    // The round falls due in worker 0 first, then the wake-ups are delivered.
    p.workers[0].advance(Duration::from_millis(1));
    p.workers[1].advance(Duration::from_millis(1));
    p.settle();
    assert!(
        checks_sent(&mut p.workers[0]).is_empty(),
        "no check ahead of /b"
    );
    p.workers[1].accept_connect();
    let ub = busy_upstream(&p.workers[1]).expect("/b dispatched at once");
    assert_eq!(requests(&mut p.workers[1], ub)[0].path, "/b");
    p.workers[1].upstream_send(ub, &ok("b"));
    assert_eq!(responses(&mut p.workers[1], b)[0].status, 200);
}

#[test]
fn with_pool_key_client_the_checks_connection_does_not_hold_the_only_slot() {
    // pool_key = "client", max_conns = 1: the check's pooled connection serves no client (its
    // partition is the checks'), so it must not keep the server's one slot from them.
    let mut cfg = checked(1, 3, 2);
    cfg.upstreams[0].pool_key = upkeep_core::config::PoolKeyMode::Client;
    cfg.upstreams[0].servers[0].max_conns = 1;
    cfg.upstreams[0].queue = 16;
    cfg.upstreams[0].queue_timeout = secs(2);
    let mut h = started(cfg);
    let (u, _) = checks_sent(&mut h)[0];
    h.upstream_send(u, &status(200));
    let c = h.connect_client();
    h.client_send(c, &get("/a"));
    let ua = busy_upstream(&h).expect("/a dispatched at once, not after its queue_timeout");
    assert_eq!(requests(&mut h, ua)[0].path, "/a");
    h.upstream_send(ua, &ok("a"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    upstreams_accounted(&h.core);
}

/// Delivering handed connections and wake-ups until the workers rest.
trait Settle {
    fn settle(&mut self);
}

impl Settle for Process {
    fn settle(&mut self) {
        assert!(
            self.settle_within(10_000),
            "the workers wake each other forever"
        );
        self.check_invariants();
    }
}

/// `n` started workers of one process.
fn workers(cfg: &Config, n: usize) -> Process {
    let mut p = Process::new(cfg.clone(), n);
    for h in &mut p.workers {
        h.core.start(h.now);
        h.pump();
    }
    p
}

#[test]
fn a_server_the_checks_bring_back_takes_the_waiting_requests_of_every_worker() {
    // Server 0 has max_conns = 1, server 1 failed its check (fall = 1). Requests wait: /b in
    // worker 0, then /c in worker 1. Server 1 passes its next check, run by worker 1 (rise = 1):
    // both must go to it — /c stayed queued (worker 0 dispatched /b, the head, and woke nobody
    // for the next in line) until its queue_timeout.
    let mut cfg = checked(2, 1, 1);
    cfg.upstreams[0].servers[0].max_conns = 1;
    cfg.upstreams[0].queue = 16;
    cfg.upstreams[0].queue_timeout = secs(30);
    let mut p = workers(&cfg, 2);
    for (u, server) in checks_sent(&mut p.workers[0]) {
        p.workers[0].upstream_send(u, &status(if server == 0 { 200 } else { 500 }));
    }
    assert!(up(&p.workers[0], 0) && !up(&p.workers[0], 1));
    p.settle();
    let a = p.workers[0].connect_client();
    p.workers[0].client_send(a, &get("/a"));
    let b = p.workers[0].connect_client();
    p.workers[0].client_send(b, &get("/b"));
    p.settle();
    let c = p.workers[1].connect_client();
    p.workers[1].client_send(c, &get("/c"));
    p.settle();
    assert_eq!(
        (
            p.workers[0].core.queued(UpstreamId(0)),
            p.workers[1].core.queued(UpstreamId(0))
        ),
        (1, 1),
        "/b and /c wait for server 0"
    );
    // Worker 1 reaches the next round first.
    p.workers[1].advance(INTERVAL);
    let sent = checks_sent(&mut p.workers[1]);
    assert_eq!(sent.iter().map(|s| s.1).collect::<Vec<_>>(), [1]);
    p.workers[1].upstream_send(sent[0].0, &status(200));
    p.workers[0].advance(INTERVAL);
    p.settle();
    assert!(up(&p.workers[0], 1));
    assert_eq!(
        (
            p.workers[0].core.queued(UpstreamId(0)),
            p.workers[1].core.queued(UpstreamId(0))
        ),
        (0, 0),
        "every waiting request went to server 1"
    );
    p.workers[1].accept_connect();
    let uc = busy_upstream(&p.workers[1]).expect("/c sent");
    assert_eq!(p.workers[1].upstreams[&uc].server.unwrap().index, 1);
    assert_eq!(requests(&mut p.workers[1], uc)[0].path, "/c");
    p.workers[1].upstream_send(uc, &ok("c"));
    assert_eq!(responses(&mut p.workers[1], c)[0].status, 200);
}

#[test]
fn a_round_due_as_the_previous_check_times_out_in_another_worker_is_not_skipped() {
    // max_conns = 1, timeout = interval (the default), two workers, a silent backend. Worker
    // 0's check times out at the very instant the next round is due; worker 1 reaches that
    // round first and finds the one slot still held by the check timing out. The round must
    // not be lost: a silent server is out within interval × fall + timeout.
    let mut cfg = checked(1, 3, 1);
    cfg.upstreams[0].health_check.as_mut().unwrap().timeout = INTERVAL;
    cfg.upstreams[0].servers[0].max_conns = 1;
    let mut p = workers(&cfg, 2);
    assert_eq!(
        checks_sent(&mut p.workers[0]).len(),
        1,
        "worker 0 runs the first round"
    );
    let mut last = 0;
    for _ in 0..4 {
        // The worker that did not run the last check wakes first at each instant.
        let (first, second) = (1 - last, last);
        p.workers[first].advance(INTERVAL);
        p.workers[second].advance(INTERVAL);
        p.settle();
        for (w, h) in p.workers.iter_mut().enumerate() {
            if !checks_sent(h).is_empty() {
                last = w;
            }
        }
    }
    // Rounds at 0, 1, 2, 3 intervals: by 4 intervals the first three timed out (fall = 3).
    assert!(
        !up(&p.workers[0], 0),
        "out within interval × fall + timeout: {:?}",
        results(&p.workers[0], 0)
    );
}

#[test]
fn a_check_the_proxy_could_not_even_attempt_is_no_result() {
    // The runtime could not attempt the check's connect (out of file descriptors): that says
    // nothing about the server, as passive health already holds (`Failure::Local`). Counted as
    // an error it took every server out (fall = 1) and turned a local shortage into 502s.
    let mut h = Harness::new(checked(1, 1, 1));
    h.auto_connect = false;
    h.core.start(h.now);
    h.pump();
    h.abort_connect().expect("the first check connects");
    assert!(up(&h, 0), "a local failure is not the server's");
    assert_eq!(results(&h, 0), [0, 0, 0, 0]);
    upstreams_accounted(&h.core);
}

#[test]
fn a_connect_that_hangs_times_out_by_the_shorter_of_the_two_timeouts() {
    // The check's timeout includes the connect; a shorter connect_timeout ends it first.
    for (connect_ms, want_ms) in [(10_000, 500), (200, 200)] {
        let mut cfg = checked(1, 1, 1);
        cfg.upstreams[0].connect_timeout = Duration::from_millis(connect_ms);
        let mut h = Harness::new(cfg);
        h.auto_connect = false;
        h.core.start(h.now);
        h.pump();
        h.advance(Duration::from_millis(want_ms - 1));
        assert!(up(&h, 0), "connect {connect_ms} ms: not yet");
        h.advance(Duration::from_millis(2));
        assert_eq!(results(&h, 0), [0, 0, 1, 0], "connect {connect_ms} ms");
        assert!(!up(&h, 0));
        upstreams_accounted(&h.core);
    }
}

#[test]
fn a_round_due_in_a_worker_without_the_servers_one_connection_is_run_by_the_worker_with_it() {
    // max_conns = 1, two workers, no traffic: worker 0's idle pooled connection (from the
    // first check) holds the one slot. Worker 1 reaching a round first has neither a slot nor
    // an idle connection: the round was lost, and with worker 1 always first no check ran
    // again — a server failing its checks stayed in rotation.
    let mut cfg = checked(1, 2, 1);
    cfg.upstreams[0].servers[0].max_conns = 1;
    let mut p = workers(&cfg, 2);
    let (u, _) = checks_sent(&mut p.workers[0])[0];
    p.workers[0].upstream_send(u, &status(200));
    assert!(p.workers[0].core.is_pooled(u));
    for _ in 0..2 {
        // One clock for both, worker 1 first at every instant (in steps: a worker woken
        // in between, e.g. to free idle buffers, must not see a round from its future).
        for _ in 0..10 {
            p.workers[1].advance(INTERVAL / 10);
            p.workers[0].advance(INTERVAL / 10);
        }
        p.settle();
        for w in 0..2 {
            for (u, _) in checks_sent(&mut p.workers[w]) {
                p.workers[w].upstream_send(u, &status(500));
            }
        }
    }
    assert_eq!(results(&p.workers[0], 0), [1, 2, 0, 0], "every round ran");
    assert!(!up(&p.workers[0], 0), "out after fall = 2 failures");
    assert_eq!(connects(&p.workers[1]), 0, "never beyond max_conns");
}
