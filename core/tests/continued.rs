//! A generation running beside the one it follows (the smol runtime's re-resolution): built on
//! a ledger [continued](upkeep_core::Shared::continued) from the old one, a new core counts a
//! server both configurations have in the same entry — its request waits while the old core's
//! request holds the server's only `max_conns` slot, and is dispatched once that one finished
//! and the new core is told ([`Core::handle_shared`]). A server only the new configuration has
//! starts with free slots. Driven by the in-memory harness.

use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use upkeep_core::sim::{Harness, Process};
use upkeep_core::{Address, Core, Shared, UpstreamId};

mod common;
use common::*;

/// `servers` servers (127.0.0.1:9001...), each with `max_conns = 1`, and a queue.
fn capped(servers: usize) -> upkeep_core::Config {
    let mut cfg = config(servers);
    for s in &mut cfg.upstreams[0].servers {
        s.max_conns = 1;
    }
    cfg.upstreams[0].queue = 8;
    cfg.upstreams[0].queue_timeout = Duration::from_secs(5);
    cfg
}

#[test]
fn a_kept_server_s_slot_held_by_the_old_core_is_the_new_one_s_after_it() {
    let old_cfg = capped(1);
    let mut old = Harness::with_core(
        Core::with_shared(old_cfg.clone(), 1, Shared::new(&old_cfg, 1), 0).unwrap(),
    );
    let c1 = old.connect_client();
    old.client_send(c1, &get("/old"));
    let u1 = busy_upstream(&old).expect("in flight on the old core");

    // Re-resolution: the name now also resolves to 127.0.0.1:9009 (after the kept server).
    let mut new_cfg = old_cfg.clone();
    let mut added = new_cfg.upstreams[0].servers[0].clone();
    added.addr = Address::parse("127.0.0.1:9009").unwrap();
    new_cfg.upstreams[0].servers.push(added);
    let ledger = Shared::continued(&new_cfg, 1, old.core.shared(), old.core.config());
    let mut new = Harness::with_core(Core::with_shared(new_cfg, 1, ledger, 0).unwrap());
    old.core.begin_drain(old.now);
    old.pump();

    // Two requests on the new core: the added server takes one, the kept one is full.
    let (c2, c3) = (new.connect_client(), new.connect_client());
    new.client_send(c2, &get("/a"));
    new.client_send(c3, &get("/b"));
    assert_eq!(connects(&new), 1, "no second connection to the kept server");
    assert_eq!(new.core.queued(UpstreamId(0)), 1, "one waits for a slot");
    let u2 = busy_upstream(&new).unwrap();
    assert_eq!(new.core.upstream_server(u2).map(|s| s.index), Some(1));

    // The old core's request finishes; its connection closes (draining): the slot is free.
    old.upstream_send(u1, &ok("old"));
    assert_eq!(responses(&mut old, c1)[0].body, b"old");
    assert!(old.core.is_drained() || old.upstreams[&u1].closed);
    new.core.handle_shared(new.now);
    new.pump();
    assert_eq!(new.core.queued(UpstreamId(0)), 0, "dispatched");
    assert_eq!(connects(&new), 2);
    for u in [u2, busy_upstream_to(&new, 0)] {
        let path = requests(&mut new, u)[0].path.clone();
        new.upstream_send(u, &ok(&path));
    }
    assert_eq!(responses(&mut new, c2)[0].status, 200);
    assert_eq!(responses(&mut new, c3)[0].status, 200);
}

/// The busy upstream connection of `h` to server `index` of the first group.
fn busy_upstream_to(h: &Harness, index: u32) -> upkeep_core::ConnId {
    *h.upstreams
        .iter()
        .find(|(id, e)| {
            !e.closed
                && !h.core.is_pooled(**id)
                && h.core.upstream_server(**id).map(|s| s.index) == Some(index)
        })
        .expect("a busy connection to that server")
        .0
}

/// Two workers: the kept server's one slot is held by worker 0's *old* core when worker 1's new
/// core queues a request for it. When the old core's connection closes (it drains), worker 1
/// is woken through the new ledger — the old ledger's queue is empty, and no worker of it would
/// otherwise tell the new one — and its request is dispatched.
#[test]
fn a_slot_the_old_core_frees_wakes_the_new_ledger_s_first_in_line_in_another_worker() {
    let old_cfg = capped(1);
    let old_ledger = Shared::new(&old_cfg, 2);
    let mut old = Harness::with_core(Core::with_shared(old_cfg.clone(), 0, old_ledger, 0).unwrap());
    let c1 = old.connect_client();
    old.client_send(c1, &get("/old"));
    let u1 = busy_upstream(&old).expect("in flight on the old core");

    let mut new_cfg = old_cfg.clone();
    let mut added = new_cfg.upstreams[0].servers[0].clone();
    added.addr = Address::parse("127.0.0.1:9009").unwrap();
    added.max_conns = 0;
    added.state = upkeep_core::ServerState::Down;
    new_cfg.upstreams[0].servers.push(added);
    let ledger = Shared::continued(&new_cfg, 2, old.core.shared(), old.core.config());
    let woken = Arc::new(AtomicBool::new(false));
    let flag = woken.clone();
    ledger.set_waker(1, Box::new(move || flag.store(true, SeqCst)));
    let mut w1 = Harness::with_core(Core::with_shared(new_cfg, 1, ledger, 1).unwrap());
    old.core.begin_drain(old.now);
    old.pump();

    let c2 = w1.connect_client();
    w1.client_send(c2, &get("/new"));
    assert_eq!(
        w1.core.queued(UpstreamId(0)),
        1,
        "waits for the kept server's slot"
    );
    woken.store(false, SeqCst);

    old.upstream_send(u1, &ok("old"));
    assert_eq!(responses(&mut old, c1)[0].body, b"old");
    assert!(old.upstreams[&u1].closed, "closed: the old core drains");
    served_once_woken(&mut w1, &woken, c2);
}

/// Two workers between their re-resolutions: worker 0 already runs the new server set (its idle
/// connection to the kept server moved into its new core's pool), worker 1 still the old one,
/// where a request waits for that server's one slot. The idle connection holds the slot in the
/// entry both sets share; nobody waits for it in the new ledger. Once worker 0 is told (worker
/// 1, first in line but finding no room, wakes the old ledger's workers), it gives the slot up
/// — closes the idle connection — and worker 1's request is dispatched: not left to wait out
/// its `queue_timeout` behind a connection nobody uses.
#[test]
fn an_idle_connection_of_the_new_set_yields_a_kept_slot_to_the_old_set_s_waiting_request() {
    let old_cfg = capped(1);
    let (l1, woken) = flagged(&old_cfg);
    let mut w0_old =
        Harness::with_core(Core::with_shared(old_cfg.clone(), 0, l1.clone(), 0).unwrap());
    let mut w1_old = Harness::with_core(Core::with_shared(old_cfg.clone(), 1, l1, 1).unwrap());
    let c0 = w0_old.connect_client();
    let (u0, _) = exchange(&mut w0_old, c0, &get("/a"), &ok("a"));
    assert!(w0_old.core.is_pooled(u0));

    // Worker 0 applies the change: its idle connection moves into its new core.
    let new_cfg = with_a_down_server(&old_cfg);
    let l2 = Shared::continued(&new_cfg, 2, w0_old.core.shared(), w0_old.core.config());
    let mut w0_new = Harness::with_core(Core::with_shared(new_cfg, 0, l2, 0).unwrap());
    let moved = move_the_idle_connection(&mut w0_old, &mut w0_new);
    w0_old.core.begin_drain(w0_old.now);
    w0_old.pump();

    // A request reaches worker 1, still on the old set: the kept server is full.
    let c1 = w1_old.connect_client();
    w1_old.client_send(c1, &get("/b"));
    assert_eq!(w1_old.core.queued(UpstreamId(0)), 1);
    // Worker 0 acts on its wake-up, on both its cores (what the runtimes do).
    assert!(woken[0].swap(false, SeqCst), "worker 0 told");
    for h in [&mut w0_old, &mut w0_new] {
        h.core.handle_shared(h.now);
        h.pump();
    }
    assert!(
        w0_new.upstreams[&moved].closed,
        "the idle connection gives the slot up"
    );
    served_once_woken(&mut w1_old, &woken[1], c1);
}

/// [`an_idle_connection_of_the_new_set_yields_a_kept_slot_to_the_old_set_s_waiting_request`],
/// but the new set's connection is carrying a request of its own when the old set's request
/// queues (nothing idle to give up then): it gives the slot up once that response is in.
#[test]
fn a_connection_of_the_new_set_busy_when_the_old_set_queued_yields_once_idle() {
    let old_cfg = capped(1);
    let (l1, woken) = flagged(&old_cfg);
    let mut w1_old =
        Harness::with_core(Core::with_shared(old_cfg.clone(), 1, l1.clone(), 1).unwrap());
    let new_cfg = with_a_down_server(&old_cfg);
    let l2 = Shared::continued(&new_cfg, 2, &l1, &old_cfg);
    let mut w0_new = Harness::with_core(Core::with_shared(new_cfg, 0, l2, 0).unwrap());

    // Worker 0 (new set) carries a request on the kept server's one slot...
    let c0 = w0_new.connect_client();
    w0_new.client_send(c0, &get("/a"));
    let u0 = busy_upstream(&w0_new).expect("in flight");
    // ...when worker 1 (still the old set) queues one.
    let c1 = w1_old.connect_client();
    w1_old.client_send(c1, &get("/b"));
    assert_eq!(w1_old.core.queued(UpstreamId(0)), 1);
    woken[1].store(false, SeqCst);
    requests(&mut w0_new, u0);
    w0_new.upstream_send(u0, &ok("a"));
    assert_eq!(responses(&mut w0_new, c0)[0].status, 200);
    assert!(
        w0_new.upstreams[&u0].closed,
        "pooled, then given up for the old set's request"
    );
    served_once_woken(&mut w1_old, &woken[1], c1);
}

/// A two-worker ledger for `cfg` whose wakers raise a flag per worker.
fn flagged(cfg: &upkeep_core::Config) -> (Shared, Vec<Arc<AtomicBool>>) {
    let ledger = Shared::new(cfg, 2);
    let woken: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::default()).collect();
    for (w, flag) in woken.iter().enumerate() {
        let f = flag.clone();
        ledger.set_waker(w, Box::new(move || f.store(true, SeqCst)));
    }
    (ledger, woken)
}

/// `cfg` re-resolved: its server kept, a new one (down: never a way around the kept one's slot)
/// added after it.
fn with_a_down_server(cfg: &upkeep_core::Config) -> upkeep_core::Config {
    let mut next = cfg.clone();
    let mut added = next.upstreams[0].servers[0].clone();
    added.addr = Address::parse("127.0.0.1:9009").unwrap();
    added.state = upkeep_core::ServerState::Down;
    next.upstreams[0].servers.push(added);
    next
}

/// A request of the old generation that queues for the kept server's one slot (held, `why`,
/// by the new generation), its worker's wake flag cleared so that a later wake-up shows.
fn queue_in_old(old: &mut Harness, woken: &AtomicBool, why: &str) -> upkeep_core::ConnId {
    let c = old.connect_client();
    old.client_send(c, &get("/old"));
    assert_eq!(old.core.queued(UpstreamId(0)), 1, "{why}");
    woken.store(false, SeqCst);
    c
}

/// Worker `h` was woken (`woken`, cleared here); acting on it dispatches client `c`'s waiting
/// request, which is answered.
fn served_once_woken(h: &mut Harness, woken: &AtomicBool, c: upkeep_core::ConnId) {
    assert!(woken.swap(false, SeqCst), "woken for the free slot");
    h.core.handle_shared(h.now);
    h.pump();
    assert_eq!(h.core.queued(UpstreamId(0)), 0, "dispatched");
    let u = busy_upstream(h).expect("on its way to the kept server");
    h.upstream_send(u, &ok("w"));
    assert_eq!(responses(h, c)[0].status, 200);
}

/// One waker flag per worker of `ledger`.
fn flags(ledger: &Shared, workers: usize) -> Vec<Arc<AtomicBool>> {
    let woken: Vec<Arc<AtomicBool>> = (0..workers).map(|_| Arc::default()).collect();
    for (w, flag) in woken.iter().enumerate() {
        let f = flag.clone();
        ledger.set_waker(w, Box::new(move || f.store(true, SeqCst)));
    }
    woken
}

/// The mio reload: each generation has workers of its own (other threads, other wakers). The
/// new generation's worker holds the kept server's one slot with an idle connection when a
/// request of the old generation's (draining) worker queues for it. The old worker, first in
/// line but finding no room, must tell the new generation's workers — its own ledger's wakers
/// never reach them — so the idle connection is given up and the request dispatched (it waited
/// out its `queue_timeout`: the handover_reload 503).
#[test]
fn a_request_queued_in_the_old_generation_wakes_the_new_generation_s_workers() {
    let old_cfg = capped(1);
    let l1 = Shared::new(&old_cfg, 1);
    let old_woken = flags(&l1, 1);
    let mut old = Harness::with_core(Core::with_shared(old_cfg.clone(), 1, l1, 0).unwrap());
    let l2 = Shared::continued(&old_cfg, 1, old.core.shared(), &old_cfg);
    let new_woken = flags(&l2, 1);
    let mut new = Harness::with_core(Core::with_shared(old_cfg, 1, l2, 0).unwrap());
    idle_there_yields_to_a_request_queued_here(&mut old, &old_woken[0], &mut new, &new_woken[0]);
}

/// Five quick reloads: a generation in between may be gone (its workers exited) while an older
/// one still drains. The oldest and the newest share the kept server's entry, so they must
/// still reach each other: a request queued in the oldest wakes the newest's workers, whose
/// idle connection holds the slot.
#[test]
fn generations_stay_linked_when_one_in_between_is_gone() {
    let cfg = capped(1);
    let l1 = Shared::new(&cfg, 1);
    let oldest_woken = flags(&l1, 1);
    let mut oldest = Harness::with_core(Core::with_shared(cfg.clone(), 1, l1.clone(), 0).unwrap());
    let l2 = Shared::continued(&cfg, 1, &l1, &cfg);
    let l3 = Shared::continued(&cfg, 1, &l2, &cfg);
    drop(l2);
    let newest_woken = flags(&l3, 1);
    let mut newest = Harness::with_core(Core::with_shared(cfg, 1, l3, 0).unwrap());
    idle_there_yields_to_a_request_queued_here(
        &mut oldest,
        &oldest_woken[0],
        &mut newest,
        &newest_woken[0],
    );
}

/// `here` (draining) has a request whose head is still arriving; `there` then pools an idle
/// connection on the kept server's one slot. Once the head is complete the request queues,
/// `there` is told (its own ledger's wakers never reach it), gives the idle connection up,
/// and the request is served.
fn idle_there_yields_to_a_request_queued_here(
    here: &mut Harness,
    here_woken: &AtomicBool,
    there: &mut Harness,
    there_woken: &AtomicBool,
) {
    // A client of `here`, its request on the way when the reload came.
    let c1 = here.connect_client();
    here.client_send(c1, b"GET /b HTTP/1.1\r\n");
    here.core.begin_handoff(here.now);
    here.pump();

    let c0 = there.connect_client();
    let (u0, _) = exchange(there, c0, &get("/a"), &ok("a"));
    assert!(there.core.is_pooled(u0), "idle on the kept server's slot");
    there_woken.store(false, SeqCst);

    // The rest of its head comes: it queues.
    here.client_send(c1, b"Host: x\r\n\r\n");
    assert_eq!(here.core.queued(UpstreamId(0)), 1);
    assert!(
        there_woken.swap(false, SeqCst),
        "the other generation is told"
    );
    there.core.handle_shared(there.now);
    there.pump();
    assert!(
        there.upstreams[&u0].closed,
        "the idle connection gives the slot up"
    );
    served_once_woken(here, here_woken, c1);
}

/// The mio reload's race: a request of the new generation (worker 1) queued while the old
/// generation's idle connection held the kept server's one slot, and worker 0 of the new
/// generation handled its wake-up before the old worker released that connection into its pool
/// (the drain). Adopting it, worker 0 takes the slot nobody else is told of: it must look again
/// (its own wake-up) and hand the connection to worker 1, first in line — not keep it idle
/// while worker 1's request waits out its `queue_timeout`.
#[test]
fn an_adopted_connection_goes_to_the_request_that_waited_for_its_slot() {
    let cfg = capped(1);
    let l1 = Shared::new(&cfg, 1);
    let mut old = Harness::with_core(Core::with_shared(cfg.clone(), 1, l1.clone(), 0).unwrap());
    let c0 = old.connect_client();
    let (u0, _) = exchange(&mut old, c0, &get("/a"), &ok("a"));
    assert!(old.core.is_pooled(u0));

    let l2 = Shared::continued(&cfg, 2, &l1, &cfg);
    let woken = flags(&l2, 2);
    let workers = (0..2)
        .map(|w| {
            Harness::with_core(Core::with_shared(cfg.clone(), w as u64, l2.clone(), w).unwrap())
        })
        .collect();
    let mut p = Process { workers, woken };
    let c1 = p.workers[1].connect_client();
    p.workers[1].client_send(c1, &get("/b"));
    assert_eq!(p.workers[1].core.queued(UpstreamId(0)), 1);
    assert!(p.settle_within(100), "livelock");
    assert_eq!(p.workers[1].core.queued(UpstreamId(0)), 1, "still full");

    // The old worker drains before acting on any wake-up: its idle connection moves.
    move_the_idle_connection(&mut old, &mut p.workers[0]);
    assert!(p.settle_within(100), "livelock");
    assert_eq!(p.workers[1].core.queued(UpstreamId(0)), 0, "dispatched");
    let h = &mut p.workers[1];
    let u = busy_upstream(h).expect("on its way to the kept server");
    assert_eq!(requests(h, u)[0].path, "/b");
    h.upstream_send(u, &ok("b"));
    assert_eq!(responses(h, c1)[0].status, 200);
    assert_eq!(connects(&p.workers[1]), 0, "over the adopted connection");
}

/// The slot a request of the new generation waits for is held by the old generation's request
/// *in flight* (not by an idle connection): nothing there can be yielded, so the old
/// generation's workers are not woken. In the smol runtime both generations share each
/// worker's thread, and such a wake-up ran the new core's dispatch again, which woke the old
/// one again: the two spun at full CPU and starved the old request (re_resolve's
/// `a_slot_the_old_set_frees...`). Once the old request finishes, the new one is served.
#[test]
fn a_slot_held_in_flight_by_another_generation_wakes_nobody_until_it_frees() {
    let cfg = capped(1);
    let l1 = Shared::new(&cfg, 1);
    let old_woken = flags(&l1, 1);
    let mut old = Harness::with_core(Core::with_shared(cfg.clone(), 1, l1, 0).unwrap());
    let c1 = old.connect_client();
    old.client_send(c1, &get("/old"));
    let u1 = busy_upstream(&old).expect("in flight on the old core");
    let l2 = Shared::continued(&cfg, 1, old.core.shared(), &cfg);
    let new_woken = flags(&l2, 1);
    let mut new = Harness::with_core(Core::with_shared(cfg, 1, l2, 0).unwrap());
    old.core.begin_drain(old.now);
    old.pump();
    old_woken[0].store(false, SeqCst);

    let c2 = new.connect_client();
    new.client_send(c2, &get("/new"));
    assert_eq!(new.core.queued(UpstreamId(0)), 1, "waits for the slot");
    assert!(
        !old_woken[0].load(SeqCst),
        "the old generation has nothing to yield: not woken"
    );
    // Even told anyway (a stray wake-up), the old core wakes nobody back.
    new_woken[0].store(false, SeqCst);
    old.core.handle_shared(old.now);
    old.pump();
    new.core.handle_shared(new.now);
    new.pump();
    assert!(!old_woken[0].load(SeqCst), "no ping-pong");
    assert_eq!(new.core.queued(UpstreamId(0)), 1, "still waits");

    old.upstream_send(u1, &ok("old"));
    assert_eq!(responses(&mut old, c1)[0].body, b"old");
    served_once_woken(&mut new, &new_woken[0], c2);
}

/// A reload's handoff of `from`'s one idle pooled connection to `to` (the runtime moves the
/// socket; here its endpoint): released by one core, adopted by the other, which acts on it.
/// Its id in `to`.
fn move_the_idle_connection(from: &mut Harness, to: &mut Harness) -> upkeep_core::ConnId {
    let released = from.core.release_pooled();
    assert_eq!(released.len(), 1);
    let moved = to
        .core
        .adopt_pooled(to.now, &released[0].1, None, released[0].3)
        .expect("adopted");
    to.upstreams.insert(
        moved,
        upkeep_core::sim::Endpoint {
            reading: true,
            connected: true,
            ..Default::default()
        },
    );
    to.pump();
    moved
}

/// The new generation's idle connection holds the kept server's one slot, but is busy with a
/// health check when a request of the old generation queues for that slot: nothing idle then,
/// so nobody is woken (0544176). When the check ends and the connection is pooled again, it
/// must be given up to the waiting request (as a request's connection going idle is) — not
/// kept idle while that request waits out its `queue_timeout`.
#[test]
fn a_health_check_s_connection_pooled_again_yields_to_a_linked_generation_s_request() {
    let mut cfg = capped(1);
    cfg.upstreams[0].health_check = Some(upkeep_core::config::HealthCheck {
        path: "/healthz".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        ..upkeep_core::config::HealthCheck::default()
    });
    let (mut old, old_woken, mut new, _new_woken) = two_generations(&cfg);
    new.core.start(new.now);
    new.pump();
    let u = busy_upstream(&new).expect("the first check");
    let _ = requests(&mut new, u);
    let check_ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    new.upstream_send(u, check_ok);
    assert!(new.core.is_pooled(u), "the check's connection is pooled");
    // The next round rides it: busy, not idle, when the old generation's request queues.
    new.advance(Duration::from_secs(1));
    assert!(!new.core.is_pooled(u), "checking");
    let _ = requests(&mut new, u);

    let c1 = queue_in_old(&mut old, &old_woken[0], "the slot is the check's");

    new.upstream_send(u, check_ok);
    assert!(
        !new.core.is_pooled(u),
        "the slot goes to the old generation's waiting request"
    );
    served_once_woken(&mut old, &old_woken[0], c1);
}

/// The same with a warm connection (`min_idle`): connecting when the old generation's request
/// queues for the kept server's one slot (nothing idle then), it must yield that slot once it
/// is pooled.
#[test]
fn a_warm_connection_pooled_yields_to_a_linked_generation_s_request() {
    let mut cfg = capped(1);
    cfg.upstreams[0].min_idle = 1;
    let (mut old, old_woken, mut new, _new_woken) = two_generations(&cfg);
    new.auto_connect = false;
    new.core.start(new.now);
    new.pump();
    assert_eq!(new.connects.len(), 1, "a warm connect");

    let c1 = queue_in_old(&mut old, &old_woken[0], "the slot is the warm connect's");

    let u = new.accept_connect().expect("the warm connect");
    assert!(
        !new.core.is_pooled(u),
        "the slot goes to the old generation's waiting request"
    );
    served_once_woken(&mut old, &old_woken[0], c1);
}

/// A warm connection (`min_idle`) of the new generation holds the kept server's one slot when
/// the old generation's request queues for it. Told, the new core gives it up — and must not
/// open a warm replacement that takes the slot straight back (the old request waited out its
/// `queue_timeout` while the new core connected again and again).
#[test]
fn a_warm_connection_given_up_to_a_linked_generation_is_not_replaced_at_once() {
    let mut cfg = capped(1);
    cfg.upstreams[0].min_idle = 1;
    let (mut old, old_woken, mut new, new_woken) = two_generations(&cfg);
    new.core.start(new.now);
    new.pump();
    assert_eq!(new.core.pool_idle(UpstreamId(0)), 1, "warm");

    let c1 = queue_in_old(&mut old, &old_woken[0], "the slot is the warm connection's");
    assert!(new_woken[0].swap(false, SeqCst), "told");
    new.core.handle_shared(new.now);
    new.pump();
    assert_eq!(
        connects(&new),
        1,
        "no warm replacement while the request waits"
    );
    served_once_woken(&mut old, &old_woken[0], c1);
}

/// An idle connection of the new generation on its way between two of its workers (handed to
/// worker 1's waiting request, whose client then left) holds the kept server's one slot when
/// the old generation's request queues for it: nothing idle anywhere, nobody is woken. The
/// worker that takes it in, with nobody of its own generation waiting, must give the slot to
/// the old generation's request rather than keep it idle while that one waits out its
/// `queue_timeout`.
#[test]
fn a_handed_connection_taken_in_yields_to_a_linked_generation_s_request() {
    let cfg = capped(1);
    let l1 = Shared::new(&cfg, 1);
    let old_woken = flags(&l1, 1);
    let mut old = Harness::with_core(Core::with_shared(cfg.clone(), 1, l1.clone(), 0).unwrap());
    let l2 = Shared::continued(&cfg, 2, &l1, &cfg);
    let woken = flags(&l2, 2);
    let workers = (0..2)
        .map(|w| {
            Harness::with_core(Core::with_shared(cfg.clone(), w as u64, l2.clone(), w).unwrap())
        })
        .collect();
    let mut p = Process { workers, woken };
    let a = p.workers[0].connect_client();
    p.workers[0].client_send(a, &get("/a"));
    let u = busy_upstream(&p.workers[0]).expect("in flight");
    let b = p.workers[1].connect_client();
    p.workers[1].client_send(b, &get("/b"));
    assert_eq!(p.workers[1].core.queued(UpstreamId(0)), 1);
    p.workers[0].upstream_send(u, &ok("a"));
    assert_eq!(p.workers[0].handed_out.len(), 1, "on its way to worker 1");
    p.workers[1].reset(b);
    assert_eq!(p.workers[1].core.queued(UpstreamId(0)), 0, "b left");

    let c = queue_in_old(
        &mut old,
        &old_woken[0],
        "the slot moves with the connection",
    );

    let moved = p.workers[0].handed_out.remove(0);
    let id = p.workers[1].adopt_handed(moved).expect("taken in");
    assert!(
        !p.workers[1].core.is_pooled(id),
        "the slot goes to the old generation's waiting request"
    );
    served_once_woken(&mut old, &old_woken[0], c);
}

/// The idle connection that holds a full server's slot is the waiting head's own core's, to a
/// server the head may not use (it failed there: a health check's connection pooled since),
/// while the head waits for the other server's slot, held in flight. No other generation can
/// yield anything, so none is woken: in the smol runtime every generation's wake-up reaches
/// the same thread, whose `handle_shared` dispatched again and woke it again — a spin at full
/// CPU until the other server's request ended.
#[test]
fn a_head_s_own_idle_connection_it_may_not_use_wakes_no_other_generation() {
    let mut cfg = capped(2);
    cfg.upstreams[0].health_check = Some(upkeep_core::config::HealthCheck {
        path: "/healthz".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        ..upkeep_core::config::HealthCheck::default()
    });
    let (mut old, old_woken, mut new, new_woken) = two_generations(&cfg);
    new.auto_connect = false;
    new.core.start(new.now);
    new.pump();
    // The first checks pass and close their connections.
    let close_ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    while let Some(u) = new.accept_connect() {
        let _ = requests(&mut new, u);
        new.upstream_send(u, close_ok);
    }
    assert_eq!(new.core.pool_idle(UpstreamId(0)), 0);
    // /1 goes to server 0 (its connect refused later), /2 to server 1 (held in flight).
    let c1 = new.connect_client();
    new.client_send(c1, &get("/1"));
    let c2 = new.connect_client();
    new.client_send(c2, &get("/2"));
    assert_eq!(new.connects.len(), 2);
    let u1 = new.connects[1];
    assert_eq!(new.core.upstream_server(u1).map(|s| s.index), Some(1));
    new.connects.swap(0, 1);
    new.accept_connect();
    let _ = requests(&mut new, u1);
    new.refuse_connect();
    assert_eq!(new.core.queued(UpstreamId(0)), 1, "/1 waits for server 1");
    // Server 0, out after the failure, is checked again: the check's connection is pooled
    // and holds its one slot.
    new.advance(Duration::from_secs(1));
    let u = new.accept_connect().expect("the check of server 0");
    let _ = requests(&mut new, u);
    new.upstream_send(u, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(new.core.is_pooled(u));
    assert_eq!(
        new.core.queued(UpstreamId(0)),
        1,
        "still waits for server 1"
    );

    old_woken[0].store(false, SeqCst);
    new.core.handle_shared(new.now);
    new.pump();
    assert!(
        !old_woken[0].load(SeqCst),
        "nothing for another generation to yield: not woken"
    );
    // Nor does a request of the old generation waiting for server 1 (server 0 is out for it
    // too) wake the new one for that idle connection: yielding it would help nobody.
    let c3 = old.connect_client();
    old.client_send(c3, &get("/3"));
    assert_eq!(old.core.queued(UpstreamId(0)), 1);
    new_woken[0].store(false, SeqCst);
    old.core.handle_shared(old.now);
    old.pump();
    assert!(
        !new_woken[0].load(SeqCst),
        "an idle connection to a server the head may not use: nobody woken"
    );
    new.upstream_send(u1, &ok("2"));
    assert_eq!(responses(&mut new, c2)[0].status, 200);
    assert_eq!(new.core.queued(UpstreamId(0)), 0, "/1 dispatched");
}

/// A draining generation (`old`) and the one continued from it (`new`), one worker each, with
/// their wakers' flags.
fn two_generations(
    cfg: &upkeep_core::Config,
) -> (Harness, Vec<Arc<AtomicBool>>, Harness, Vec<Arc<AtomicBool>>) {
    let l1 = Shared::new(cfg, 1);
    let old_woken = flags(&l1, 1);
    let old = Harness::with_core(Core::with_shared(cfg.clone(), 1, l1.clone(), 0).unwrap());
    let l2 = Shared::continued(cfg, 1, &l1, cfg);
    let new_woken = flags(&l2, 1);
    let new = Harness::with_core(Core::with_shared(cfg.clone(), 1, l2, 0).unwrap());
    (old, old_woken, new, new_woken)
}
