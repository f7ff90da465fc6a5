//! Deterministic network simulation of the engine: proptest-generated scenarios over several
//! configurations with every invariant checked after every step, a determinism check, and named
//! regression scenarios.

use core::time::Duration;

use proptest::prelude::*;
use upkeep_core::config::{PoolKeyMode, ServerConfig, UpstreamConfig};
use upkeep_core::sim::world::{
    Action, BackendEvent, BackendScript, Framing, ReqKind, World, tight_timeouts,
};
use upkeep_core::{Address, Config, UpstreamId};

mod common;
use common::upstreams_accounted;

fn addr(port: u16) -> Address {
    Address::Tcp(format!("127.0.0.1:{port}").parse().unwrap())
}

/// One listener, one group of `n` servers.
fn config(n: usize) -> Config {
    Config::simple(addr(8080), (0..n).map(|i| addr(9001 + i as u16)).collect())
}

fn group(cfg: &mut Config) -> &mut UpstreamConfig {
    &mut cfg.upstreams[0]
}

// ----- strategies -----

fn kind() -> impl Strategy<Value = ReqKind> + Clone {
    prop_oneof![
        6 => Just(ReqKind::Get),
        2 => Just(ReqKind::Head),
        2 => (0u16..200).prop_map(ReqKind::Post),
        1 => (0u16..200).prop_map(ReqKind::PostChunked),
        1 => (0u16..50).prop_map(ReqKind::Put),
        1 => (0u16..50).prop_map(ReqKind::PostExpect),
        1 => Just(ReqKind::NoContent),
        1 => Just(ReqKind::Http10),
        1 => Just(ReqKind::Http10KeepAlive),
        1 => Just(ReqKind::Close),
    ]
}

fn kind10() -> impl Strategy<Value = ReqKind> + Clone {
    prop_oneof![
        2 => Just(ReqKind::Http10),
        3 => Just(ReqKind::Http10KeepAlive),
        1 => Just(ReqKind::Get),
    ]
}

fn backend_event() -> impl Strategy<Value = BackendEvent> {
    prop_oneof![
        Just(BackendEvent::CloseIdle),
        Just(BackendEvent::Reset),
        Just(BackendEvent::Stray408),
        Just(BackendEvent::Garbage),
    ]
}

fn action_with<K: Strategy<Value = ReqKind> + Clone + 'static>(
    kind: K,
    max_chunk: u8,
) -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => any::<u8>().prop_map(|ip| Action::Connect { ip }),
        10 => (any::<u8>(), kind.clone()).prop_map(|(client, kind)| Action::Send { client, kind }),
        2 => (any::<u8>(), prop::collection::vec(kind, 2..5))
            .prop_map(|(client, kinds)| Action::Pipeline { client, kinds }),
        1 => any::<u8>().prop_map(|client| Action::Close { client }),
        1 => any::<u8>().prop_map(|client| Action::Reset { client }),
        1 => (any::<u8>(), any::<bool>())
            .prop_map(|(client, stalled)| Action::Stall { client, stalled }),
        2 => (any::<u8>(), backend_event()).prop_map(|(conn, event)| Action::Backend { conn, event }),
        6 => prop_oneof![0u32..5, 0u32..200, 0u32..2000]
            .prop_map(|ms| Action::Advance { ms }),
        1 => prop::option::of(1..=max_chunk).prop_map(|size| Action::WriteChunk { size }),
    ]
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    prop::collection::vec(action_with(kind(), 16), 1..40)
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::ContentLength),
        Just(Framing::Chunked),
        Just(Framing::CloseDelimited),
    ]
}

/// A backend that may misbehave in any scripted way.
fn script() -> impl Strategy<Value = BackendScript> {
    (
        framing(),
        0usize..300,
        prop::option::of(prop_oneof![Just(50u64), Just(100), Just(1000)]),
        prop::option::of(1u32..5),
        any::<bool>(),
        prop::option::of(2u32..6),
        prop::option::of(2u32..6),
        prop_oneof![4 => Just(0u64), 1 => 1u64..300],
        any::<bool>(),
        0u64..3,
        (
            prop::option::of(prop_oneof![Just(50u64), Just(100), Just(1000)]),
            prop::bool::weighted(0.1),
            prop::option::of(1u32..3),
            prop_oneof![6 => Just(0u32), 1 => 2u32..6],
        ),
    )
        .prop_map(
            |(
                framing,
                body_size,
                idle,
                max_req,
                announce,
                cut,
                reset,
                delay,
                hints,
                race,
                (stray, down, hint, stray_k),
            )| {
                BackendScript {
                    stray_408_ms: stray,
                    down,
                    keep_alive_hint: hint,
                    framing,
                    body_size,
                    idle_close_ms: idle,
                    max_requests: max_req,
                    announce_close: announce,
                    cut_every: cut,
                    reset_every: reset,
                    stray_every: (stray_k > 0).then_some(stray_k),
                    delay_ms: delay,
                    early_hints: hints,
                    race_ms: race,
                    rejected: false,
                    check_fails: 0,
                }
            },
        )
}

fn run(seed: u64, cfg: Config, scripts: Vec<BackendScript>, actions: &[Action]) -> World {
    let mut w = World::new(seed, cfg, scripts);
    w.run(actions);
    w.finish();
    upstreams_accounted(&w.harness.core);
    w
}

fn cases() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES=5000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    /// Default configuration, one well-behaved backend of any framing.
    #[test]
    fn default_config(seed: u64, f in framing(), body in 0usize..2000, acts in actions()) {
        let s = BackendScript { framing: f, body_size: body, ..BackendScript::default() };
        run(seed, config(1), vec![s], &acts);
    }

    /// Zero-copy bodies: a runtime that splices (in-memory pipes of 1 to 600 bytes, so they
    /// fill) with a tiny `splice_min`, misbehaving backends of any framing and any body size,
    /// clients that stall, reset and pipeline: every invariant holds as on the copying path,
    /// the pipe always holds what the core counts as piped, and a full pipe holds its source
    /// back.
    #[test]
    fn spliced_bodies(
        seed: u64,
        a in script(),
        b in script(),
        body in 0usize..3000,
        min in 1u64..200,
        pipe in 1usize..600,
        stalled_first in any::<bool>(),
        wait_flush in any::<bool>(),
        acts in actions(),
    ) {
        let mut cfg = config(2);
        cfg.limits.splice_min = min;
        let a = BackendScript { body_size: body, ..a };
        let mut w = World::new(seed, cfg, vec![a, b]);
        w.harness.enable_splice(pipe);
        w.harness.wait_for_flushes(wait_flush);
        if stalled_first {
            // A first client that does not read yet: its responses wait behind their heads.
            w.run(&[Action::Connect { ip: 0 }, Action::Stall { client: 0, stalled: true }]);
        }
        w.run(&acts);
        w.finish();
        upstreams_accounted(&w.harness.core);
    }

    /// Misbehaving backends (cuts, resets, caps, slowness, idle closes) behind two servers.
    #[test]
    fn chaotic_backends(seed: u64, a in script(), b in script(), acts in actions()) {
        run(seed, config(2), vec![a, b], &acts);
    }

    /// A small pool cap (keepalive = 2) with three servers.
    #[test]
    fn small_pool(seed: u64, a in script(), acts in actions()) {
        let mut cfg = config(3);
        group(&mut cfg).keepalive = 2;
        let s = BackendScript::default();
        run(seed, cfg, vec![a, s.clone(), s], &acts);
    }

    /// Warm connections (min_idle = 2) on two servers, one of them misbehaving: the top-ups
    /// stay within min_idle, and pooled warm connections stay clean.
    #[test]
    fn warm_pool(seed: u64, a in script(), acts in actions()) {
        let mut cfg = config(2);
        group(&mut cfg).min_idle = 2;
        run(seed, cfg, vec![a, BackendScript::default()], &acts);
    }

    /// pool_key = client: an upstream connection never carries two clients' requests.
    #[test]
    fn pool_key_client(seed: u64, a in script(), acts in actions()) {
        let mut cfg = config(1);
        group(&mut cfg).pool_key = PoolKeyMode::Client;
        run(seed, cfg, vec![a], &acts);
    }

    /// Two servers, one closes idle connections after 50 ms (with a race window).
    #[test]
    fn short_backend_keepalive(seed: u64, race in 0u64..4, acts in actions()) {
        let a = BackendScript { idle_close_ms: Some(50), race_ms: race, ..BackendScript::default() };
        let b = BackendScript { framing: Framing::Chunked, ..BackendScript::default() };
        run(seed, config(2), vec![a, b], &acts);
    }

    /// HTTP/1.0 clients, with and without keep-alive, against every framing.
    #[test]
    fn http10_clients(
        seed: u64,
        f in framing(),
        acts in prop::collection::vec(action_with(kind10(), 16), 1..40),
    ) {
        let s = BackendScript { framing: f, ..BackendScript::default() };
        run(seed, config(1), vec![s], &acts);
    }

    /// Tiny writes (1..=7 bytes) in both directions.
    #[test]
    fn tiny_writes(
        seed: u64,
        size in 1u8..=7,
        a in script(),
        acts in prop::collection::vec(action_with(kind(), 7), 1..30),
    ) {
        let mut all = vec![Action::WriteChunk { size: Some(size) }];
        all.extend(acts.into_iter().map(|a| match a {
            Action::WriteChunk { size: None } => Action::WriteChunk { size: Some(size) },
            a => a,
        }));
        run(seed, config(1), vec![a], &all);
    }

    /// Active health checks every 100 ms on two servers whose check answers follow a random
    /// pattern (one server also misbehaving otherwise): a request sent while its server's
    /// checks hold it out never reaches it, at most one check result per server per interval,
    /// no check answer reaches a client, and the checks' connections are accounted like any.
    #[test]
    fn health_checked(
        seed: u64,
        a in script(),
        fa: u32,
        fb: u32,
        fall in 1u32..4,
        rise in 1u32..4,
        capped: bool,
        acts in actions(),
    ) {
        let mut cfg = config(2);
        tight_timeouts(&mut cfg);
        let g = group(&mut cfg);
        g.health_check = Some(upkeep_core::config::HealthCheck {
            path: "/hc".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(60),
            fall,
            rise,
            ..Default::default()
        });
        if capped {
            for s in &mut g.servers {
                s.max_conns = 1;
            }
        }
        let a = BackendScript { check_fails: fa, ..a };
        let b = BackendScript { check_fails: fb, ..BackendScript::default() };
        run(seed, cfg, vec![a, b], &acts);
    }

    /// max_conns = 1 on both servers, a queue of 3 that times out after 300 ms: requests wait,
    /// are dispatched FIFO or answered 503, and no server ever carries two at once (invariant 6).
    #[test]
    fn queued_behind_max_conns(
        seed: u64,
        a in script(),
        b in script(),
        slow in 0u64..200,
        acts in actions(),
    ) {
        let mut cfg = config(2);
        let g = group(&mut cfg);
        g.queue = 3;
        g.queue_timeout = Duration::from_millis(300);
        for s in &mut g.servers {
            s.max_conns = 1;
        }
        let a = BackendScript { delay_ms: a.delay_ms.max(slow), ..a };
        run(seed, cfg, vec![a, b], &acts);
    }

    /// The same seed and actions give the same trace.
    #[test]
    fn deterministic(seed: u64, a in script(), acts in actions()) {
        let d1 = run(seed, config(1), vec![a.clone()], &acts).trace_digest();
        let d2 = run(seed, config(1), vec![a], &acts).trace_digest();
        prop_assert_eq!(d1, d2);
    }
}

#[test]
fn determinism_fixed_scenario() {
    let acts = vec![
        Action::Connect { ip: 0 },
        Action::Send {
            client: 0,
            kind: ReqKind::Get,
        },
        Action::WriteChunk { size: Some(3) },
        Action::Pipeline {
            client: 0,
            kinds: vec![ReqKind::Post(40), ReqKind::Head, ReqKind::PostChunked(17)],
        },
        Action::Advance { ms: 120 },
        Action::Connect { ip: 1 },
        Action::Send {
            client: 1,
            kind: ReqKind::Http10KeepAlive,
        },
        Action::Backend {
            conn: 0,
            event: BackendEvent::CloseIdle,
        },
        Action::Send {
            client: 0,
            kind: ReqKind::Get,
        },
        Action::Advance { ms: 5000 },
    ];
    let script = BackendScript {
        framing: Framing::Chunked,
        idle_close_ms: Some(100),
        race_ms: 2,
        ..BackendScript::default()
    };
    let digest = |seed| run(seed, config(2), vec![script.clone(); 2], &acts).trace_digest();
    assert_eq!(digest(7), digest(7));
    assert_ne!(
        digest(7),
        digest(8),
        "the seed changes how writes are split"
    );
}

// ----- regression scenarios -----

fn statuses(w: &World) -> Vec<(String, u16)> {
    w.results.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// One client, one backend of `script`: a GET, `gap_ms` later a request of `second` kind on the
/// same client connection (so it reuses the pooled upstream connection if the proxy kept it),
/// then 10 ms for it to be answered.
fn reuse_after(seed: u64, script: BackendScript, gap_ms: u32, second: ReqKind) -> World {
    let mut w = World::new(seed, config(1), vec![script]);
    w.run(&[
        Action::Connect { ip: 0 },
        Action::Send {
            client: 0,
            kind: ReqKind::Get,
        },
        Action::Advance { ms: gap_ms },
        Action::Send {
            client: 0,
            kind: second,
        },
        Action::Advance { ms: 10 },
    ]);
    w
}

/// Backend keepalive 100 ms, requests spaced 50..150 ms (some land inside the race window, when
/// the backend has closed but its FIN has not arrived): every request gets 200, never 502.
#[test]
fn keepalive_race_never_502() {
    let script = BackendScript {
        idle_close_ms: Some(100),
        race_ms: 3,
        ..BackendScript::default()
    };
    let mut w = World::new(1, config(1), vec![script]);
    w.run(&[Action::Connect { ip: 0 }]);
    let spacing = [
        50u32, 100, 101, 102, 99, 150, 120, 100, 80, 101, 149, 100, 130,
    ];
    for (i, gap) in spacing.iter().cycle().take(40).enumerate() {
        w.run(&[Action::Send {
            client: 0,
            kind: if i % 5 == 4 {
                ReqKind::Head
            } else {
                ReqKind::Get
            },
        }]);
        w.run(&[Action::Advance { ms: *gap }]);
    }
    w.finish();
    let s = statuses(&w);
    assert_eq!(s.len(), 40);
    assert!(s.iter().all(|(_, st)| *st == 200), "{s:?}");
    let stale = w.harness.core.stats().groups[0].stale_retries;
    assert!(
        stale > 0,
        "the race window was never hit: the scenario tests nothing"
    );
}

/// Bytes a backend writes behind its responses (every one, or every other) never answer
/// another request: pipelining clients queued for one connection per server (the next in line
/// takes a connection the moment its response ends), bodies small and large, copied and
/// spliced.
#[test]
fn stray_bytes_behind_responses_never_answer_another_request() {
    for (seed, every, body, splice) in [
        (3, 1, 40, None),
        (4, 2, 5000, None),
        (5, 1, 5000, Some(64)),
        (6, 2, 70_000, Some(1 << 16)),
    ] {
        let mut cfg = config(2);
        cfg.limits.splice_min = 1024;
        for s in &mut cfg.upstreams[0].servers {
            s.max_conns = 1;
        }
        cfg.upstreams[0].queue = 100;
        let script = BackendScript {
            stray_every: Some(every),
            body_size: body,
            delay_ms: 3,
            ..BackendScript::default()
        };
        let mut w = World::new(seed, cfg, vec![script.clone(), script]);
        if let Some(pipe) = splice {
            w.harness.enable_splice(pipe);
        }
        w.run(&[
            Action::Connect { ip: 0 },
            Action::Connect { ip: 1 },
            Action::Connect { ip: 2 },
        ]);
        for i in 0..12u8 {
            w.run(&[
                Action::Pipeline {
                    client: i % 3,
                    kinds: vec![ReqKind::Get, ReqKind::Put(300), ReqKind::Get],
                },
                Action::Advance { ms: 1 },
            ]);
        }
        w.finish();
        let s = statuses(&w);
        assert!(s.len() >= 9, "seed {seed}: {s:?}");
        assert!(s.iter().all(|(_, st)| *st == 200), "seed {seed}: {s:?}");
        let closed = w.harness.core.stats().groups[0].not_reused
            [upkeep_core::NotReusable::UnexpectedData as usize];
        assert!(closed > 0, "seed {seed}: no stray bytes were ever seen");
    }
}

/// A stray 408 a backend sends on an idle pooled connection never reaches a client.
#[test]
fn stray_408_on_idle_pooled_connection() {
    let script = BackendScript {
        stray_408_ms: Some(100),
        ..BackendScript::default()
    };
    let mut w = World::new(2, config(1), vec![script]);
    w.run(&[Action::Connect { ip: 0 }, Action::Connect { ip: 1 }]);
    for i in 0..20u8 {
        w.run(&[
            Action::Send {
                client: i % 2,
                kind: ReqKind::Get,
            },
            Action::Advance {
                ms: 100 + (i as u32 % 3) * 25,
            },
            // And explicitly, on whatever connection is idle now.
            Action::Backend {
                conn: i,
                event: BackendEvent::Stray408,
            },
        ]);
    }
    w.finish();
    let s = statuses(&w);
    assert_eq!(s.len(), 20);
    assert!(s.iter().all(|(_, st)| *st == 200), "{s:?}");
}

/// A POST on a pooled connection the backend has just closed (FIN still in flight) is never
/// sent twice: the client gets 502 instead.
#[test]
fn post_on_stale_connection_not_resent() {
    let script = BackendScript {
        idle_close_ms: Some(100),
        race_ms: 5,
        ..BackendScript::default()
    };
    // At 102 ms: the backend closed at 100, its FIN arrives at 105.
    let mut w = reuse_after(3, script, 102, ReqKind::Post(10));
    let post = World::req_id(0, 1);
    assert_eq!(w.arrivals_of(&post), 1, "{:?}", w.arrivals);
    assert_eq!(w.results.get(&post), Some(&502));
    // The connection stays usable.
    w.run(&[
        Action::Send {
            client: 0,
            kind: ReqKind::Get,
        },
        Action::Advance { ms: 1 },
    ]);
    assert_eq!(w.results.get(&World::req_id(0, 2)), Some(&200));
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// The same race with a GET: retried once on a fresh connection, transparently.
#[test]
fn get_on_stale_connection_retried() {
    let script = BackendScript {
        idle_close_ms: Some(100),
        race_ms: 5,
        ..BackendScript::default()
    };
    let mut w = reuse_after(3, script, 102, ReqKind::Get);
    let get = World::req_id(0, 1);
    assert_eq!(w.arrivals_of(&get), 2);
    assert_eq!(w.results.get(&get), Some(&200));
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// A pipelined burst is answered completely and in order, whatever the framing and write sizes.
#[test]
fn pipelined_burst_in_order() {
    for (i, f) in [
        Framing::ContentLength,
        Framing::Chunked,
        Framing::CloseDelimited,
    ]
    .into_iter()
    .enumerate()
    {
        for chunk in [None, Some(1), Some(5)] {
            let script = BackendScript {
                framing: f,
                body_size: 100,
                early_hints: i == 1,
                ..BackendScript::default()
            };
            let mut w = World::new(4, config(2), vec![script.clone(), script]);
            let kinds = vec![
                ReqKind::Get,
                ReqKind::Post(33),
                ReqKind::Head,
                ReqKind::NoContent,
                ReqKind::PostChunked(70),
                ReqKind::Put(5),
                ReqKind::Get,
            ];
            w.run(&[
                Action::WriteChunk { size: chunk },
                Action::Connect { ip: 0 },
                Action::Pipeline {
                    client: 0,
                    kinds: kinds.clone(),
                },
                Action::Advance { ms: 1 },
            ]);
            let s = statuses(&w);
            assert_eq!(s.len(), kinds.len(), "{f:?} {chunk:?}: {s:?}");
            for (id, st) in s {
                let want = if id == World::req_id(0, 3) { 204 } else { 200 };
                assert_eq!(st, want, "{f:?} {chunk:?} {id}");
            }
            w.finish();
        }
    }
}

/// Slow backend, many clients at once: everyone gets their own response.
#[test]
fn concurrent_clients_slow_backend() {
    let script = BackendScript {
        delay_ms: 30,
        framing: Framing::Chunked,
        ..BackendScript::default()
    };
    let mut cfg = config(2);
    group(&mut cfg).keepalive = 2;
    let mut w = World::new(5, cfg, vec![script.clone(), script]);
    for c in 0..8u8 {
        w.run(&[Action::Connect { ip: c }]);
    }
    for round in 0..3 {
        for c in 0..8u8 {
            w.run(&[Action::Send {
                client: c,
                kind: ReqKind::Get,
            }]);
        }
        w.run(&[Action::Advance {
            ms: 10 + round * 20,
        }]);
    }
    w.run(&[Action::Advance { ms: 200 }]);
    assert_eq!(w.results.len(), 24);
    assert!(w.results.values().all(|&s| s == 200), "{:?}", w.results);
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// A backend that announces nothing and closes after 2 requests: no request is lost.
#[test]
fn unannounced_close_after_n_requests() {
    let script = BackendScript {
        max_requests: Some(2),
        announce_close: false,
        ..BackendScript::default()
    };
    let mut w = World::new(6, config(1), vec![script]);
    w.run(&[Action::Connect { ip: 0 }]);
    for _ in 0..10 {
        w.run(&[
            Action::Send {
                client: 0,
                kind: ReqKind::Get,
            },
            Action::Advance { ms: 5 },
        ]);
    }
    assert!(w.results.values().all(|&s| s == 200), "{:?}", w.results);
    w.finish();
    upstreams_accounted(&w.harness.core);
}

#[test]
fn pool_idle_timeout_closes_everything() {
    let mut cfg = config(1);
    group(&mut cfg).keepalive_timeout = Duration::from_secs(2);
    group(&mut cfg).servers = vec![ServerConfig::new(addr(9001))];
    let mut w = World::new(7, cfg, vec![BackendScript::default()]);
    w.run(&[
        Action::Connect { ip: 0 },
        Action::Send {
            client: 0,
            kind: ReqKind::Get,
        },
    ]);
    assert_eq!(w.harness.core.pool_idle(upkeep_core::UpstreamId(0)), 1);
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// Not a check: prints what the random scenarios exercise (`cargo test --test sim -- --ignored
/// --nocapture coverage`).
#[test]
#[ignore]
fn coverage_report() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strat = (any::<u64>(), script(), script(), actions());
    let mut statuses = std::collections::BTreeMap::new();
    let (mut stale, mut hits, mut misses, mut lost, mut trunc, mut undetect, mut evict) =
        (0, 0, 0, 0, 0, 0, 0u64);
    for _ in 0..2000 {
        let (seed, a, b, acts) = strat.new_tree(&mut runner).unwrap().current();
        let w = run(seed, config(2), vec![a, b], &acts);
        for (k, v) in &w.stats.statuses {
            *statuses.entry(*k).or_insert(0) += v;
        }
        let g = &w.harness.core.stats().groups[0];
        stale += g.stale_retries;
        hits += g.pool_hits;
        misses += g.pool_misses;
        evict += g.evictions.iter().sum::<u64>();
        lost += w.stats.lost as u64;
        trunc += w.stats.truncated as u64;
        undetect += w.stats.undetectable_truncations as u64;
    }
    println!("statuses {statuses:?}");
    println!(
        "stale retries {stale}, pool hits {hits}, misses {misses}, evictions {evict}, lost {lost}, \
         truncated {trunc}, undetectable truncations {undetect}"
    );
}

/// Short proxy timeouts (read 150 ms, client keepalive/send 400 ms, pool idle 300 ms, few
/// requests per upstream connection) against slow and misbehaving backends: 504s, timer-driven
/// closes and evictions, all with the invariants on.
#[test]
fn short_timeouts() {
    let mut runner = proptest::test_runner::TestRunner::new(cases());
    let strat = (any::<u64>(), script(), script(), any::<bool>(), actions());
    runner
        .run(&strat, |(seed, a, b, on_timeout, acts)| {
            let mut cfg = config(2);
            let g = group(&mut cfg);
            g.keepalive_requests = 3;
            g.next_upstream_on_timeout = on_timeout;
            tight_timeouts(&mut cfg);
            run(seed, cfg, vec![a, b], &acts);
            Ok(())
        })
        .unwrap();
}

/// The stray 408 race: the backend sends its 408 on a connection it considers idle, but the
/// proxy reuses the connection before the 408 arrives (race window 5 ms). The 408 then looks
/// like the answer to the new request.
#[test]
fn stray_408_race_window() {
    let script = BackendScript {
        stray_408_ms: Some(100),
        race_ms: 5,
        ..BackendScript::default()
    };
    let mut w = reuse_after(8, script, 102, ReqKind::Get);
    assert_eq!(w.results.get(&World::req_id(0, 1)), Some(&200));
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// The stray 408 race with a POST (`short_timeouts` shrank to it): the backend closed an idle
/// connection with a 408 just as the proxy reused it for a POST. The POST arrived after the
/// close (lost: nothing acted on it) and the 408 said so, so it is sent again on a fresh
/// connection and answered 200 — it reaches a backend twice, once lost. The sim's "reached
/// backends twice" invariant allows exactly that and nothing else.
#[test]
fn a_post_met_by_a_stray_408_is_sent_again() {
    let script = BackendScript {
        stray_408_ms: Some(100),
        race_ms: 2,
        ..BackendScript::default()
    };
    let mut w = reuse_after(0, script, 100, ReqKind::Post(0));
    let post = World::req_id(0, 1);
    assert_eq!(w.results.get(&post), Some(&200), "{:?}", w.results);
    let lost: Vec<bool> = w
        .arrivals
        .iter()
        .filter(|a| a.id == post)
        .map(|a| a.lost)
        .collect();
    assert_eq!(lost, [true, false], "lost once, then served");
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// A backend's `Keep-Alive: timeout=2` is honoured (minus a margin): POSTs spaced just under the
/// backend's real 2 s idle close never ride a connection the backend is closing.
#[test]
fn keep_alive_hint_avoids_race() {
    let script = BackendScript {
        idle_close_ms: Some(2000),
        keep_alive_hint: Some(2),
        race_ms: 5,
        ..BackendScript::default()
    };
    let mut w = World::new(9, config(1), vec![script]);
    w.run(&[Action::Connect { ip: 0 }]);
    for gap in [1999u32, 2000, 2001, 2002, 1500, 999, 1001] {
        w.run(&[
            Action::Send {
                client: 0,
                kind: ReqKind::Post(8),
            },
            Action::Advance { ms: gap },
        ]);
    }
    assert!(w.results.values().all(|&s| s == 200), "{:?}", w.results);
    w.finish();
    upstreams_accounted(&w.harness.core);
}

static LOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STALE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The keepalive race, hammered: a backend closing idle connections after 100 ms with a 20 ms
/// window, requests (many POSTs) spaced around it. No POST may reach a backend twice, no GET may
/// fail because of the race.
#[test]
fn keepalive_race_hammer() {
    let mut runner = proptest::test_runner::TestRunner::new(cases());
    let kinds = prop_oneof![
        Just(ReqKind::Get),
        (0u16..40).prop_map(ReqKind::Post),
        (0u16..40).prop_map(ReqKind::PostChunked),
        Just(ReqKind::Head),
    ];
    let step = prop_oneof![
        3 => (any::<u8>(), kinds).prop_map(|(client, kind)| Action::Send { client, kind }),
        3 => (80u32..130).prop_map(|ms| Action::Advance { ms }),
        1 => (0u32..10).prop_map(|ms| Action::Advance { ms }),
        1 => any::<u8>().prop_map(|ip| Action::Connect { ip }),
        1 => prop::option::of(1u8..8).prop_map(|size| Action::WriteChunk { size }),
    ];
    let strat = (any::<u64>(), prop::collection::vec(step, 1..60), 1u64..30);
    runner
        .run(&strat, |(seed, acts, race)| {
            let s = BackendScript {
                idle_close_ms: Some(100),
                race_ms: race,
                ..BackendScript::default()
            };
            let w = run(seed, config(1), vec![s], &acts);
            LOST.fetch_add(w.stats.lost as u64, std::sync::atomic::Ordering::Relaxed);
            let st = w.harness.core.stats().groups[0].stale_retries;
            STALE.fetch_add(st, std::sync::atomic::Ordering::Relaxed);
            for (id, st) in &w.results {
                let get = w.arrivals.iter().any(|a| &a.id == id && a.method == "GET");
                prop_assert!(!get || *st == 200, "GET {} got {}", id, st);
            }
            Ok(())
        })
        .unwrap();
    println!(
        "race hammer: {} lost requests, {} stale retries",
        LOST.load(std::sync::atomic::Ordering::Relaxed),
        STALE.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A response the proxy relays close-delimited (HTTP/1.0 client, chunked backend) that the
/// backend cuts short: the client can only tell it is truncated if the proxy resets the
/// connection instead of closing it cleanly.
#[test]
fn truncated_close_delimited_response_is_reset() {
    let script = BackendScript {
        framing: Framing::Chunked,
        body_size: 100,
        cut_every: Some(1),
        ..BackendScript::default()
    };
    let mut w = World::new(10, config(1), vec![script]);
    w.run(&[
        Action::Connect { ip: 0 },
        Action::Send {
            client: 0,
            kind: ReqKind::Http10,
        },
        Action::Advance { ms: 1 },
    ]);
    assert_eq!(w.stats.undetectable_truncations, 1);
    assert_eq!(w.stats.truncated_with_fin, 0, "the client got a clean FIN");
}

/// Found by a long hunt (`PROPTEST_CASES=50000`): sixteen pipelined requests to slow backends
/// (62 and 139 ms) take longer to answer, one after another, than the single drain window the
/// simulation used to allow before declaring a leak. The engine was right; `World::finish` now
/// keeps advancing while exchanges are still completing.
#[test]
fn regression_pipelined_slow_backends_leave_nothing_open() {
    let mut cfg = config(2);
    let g = group(&mut cfg);
    g.keepalive_requests = 3;
    tight_timeouts(&mut cfg);
    let slow = |delay_ms| BackendScript {
        delay_ms,
        body_size: 0,
        ..BackendScript::default()
    };
    use ReqKind::{Get, Http10KeepAlive};
    let acts = [
        Action::Pipeline {
            client: 0,
            kinds: vec![Get, Get],
        },
        Action::Pipeline {
            client: 0,
            kinds: vec![Get, Get],
        },
        Action::Send {
            client: 0,
            kind: Get,
        },
        Action::Send {
            client: 0,
            kind: Get,
        },
        Action::Send {
            client: 0,
            kind: Get,
        },
        Action::Send {
            client: 0,
            kind: Get,
        },
        Action::Send {
            client: 0,
            kind: Http10KeepAlive,
        },
        Action::Connect { ip: 0 },
        Action::Send {
            client: 14,
            kind: Get,
        },
        Action::Pipeline {
            client: 14,
            kinds: vec![Get, Get],
        },
        Action::Pipeline {
            client: 30,
            kinds: vec![Get, Http10KeepAlive, Get, Get],
        },
    ];
    run(0, cfg, vec![slow(62), slow(139)], &acts);
}

/// A server whose TLS certificate our verification rejects (the runtime reports
/// `Input::ConnectRejected`): every request routed to it is answered 502, no other server is
/// tried for it, and the server is never marked down (the invariants check that after every
/// step), while requests to the healthy server go on working.
#[test]
fn rejected_certificate_is_a_502_and_never_blames_the_server() {
    let rejected = BackendScript {
        rejected: true,
        ..BackendScript::default()
    };
    let acts: Vec<Action> = (0..12)
        .flat_map(|i| {
            [
                Action::Send {
                    client: i % 2,
                    kind: ReqKind::Get,
                },
                Action::Advance { ms: 5 },
            ]
        })
        .collect();
    let w = run(
        7,
        config(2),
        vec![rejected, BackendScript::default()],
        &acts,
    );
    let s = &w.stats.statuses;
    assert!(s.get(&502).copied().unwrap_or(0) > 0, "{s:?}");
    assert!(s.get(&200).copied().unwrap_or(0) > 0, "{s:?}");
    let stats = w.harness.core.stats();
    assert_eq!(
        (stats.servers[0].failures, stats.servers[0].connect_failures),
        (0, 0)
    );
}

/// A re-send keeps its place ahead of the queue (`queued_behind_max_conns` shrank to this).
/// Both servers are at `max_conns = 1`; c5's GET reuses server 1's idle connection just as the
/// backend closes it with a stray 408, so it arrives lost; c7 and c8 queue meanwhile. The 408
/// makes the proxy re-send c5's GET on a fresh connection, and the re-send takes over the failed
/// connection's slot at once — it was admitted before c7 and c8 — instead of joining the queue
/// behind them (where the client's EOF at `finish` ended its wait unanswered). The sim's "left
/// the queue" rule still counts only arrivals a backend took in: with several workers a re-send
/// can find its slot taken and wait.
#[test]
fn a_resend_keeps_its_place_ahead_of_the_queue() {
    let mut cfg = config(2);
    let g = group(&mut cfg);
    g.queue = 3;
    g.queue_timeout = Duration::from_millis(300);
    for s in &mut g.servers {
        s.max_conns = 1;
    }
    let a = BackendScript {
        reset_every: Some(2),
        delay_ms: 126,
        ..BackendScript::default()
    };
    let b = BackendScript {
        stray_408_ms: Some(50),
        delay_ms: 58,
        race_ms: 1,
        ..BackendScript::default()
    };
    let mut w = World::new(0, cfg, vec![a, b]);
    w.run(&[
        Action::Pipeline {
            client: 0,
            kinds: vec![ReqKind::Get, ReqKind::Http10],
        },
        Action::Send {
            client: 0,
            kind: ReqKind::Http10,
        },
        Action::Advance { ms: 126 },
        Action::Reset { client: 126 },
        Action::Send {
            client: 0,
            kind: ReqKind::Get,
        },
        Action::Send {
            client: 27,
            kind: ReqKind::Get,
        },
        Action::Send {
            client: 31,
            kind: ReqKind::Get,
        },
        Action::Connect { ip: 0 },
        Action::Advance { ms: 166 },
        Action::Send {
            client: 0,
            kind: ReqKind::Close,
        },
        Action::Connect { ip: 0 },
        Action::Send {
            client: 47,
            kind: ReqKind::Get,
        },
        Action::Send {
            client: 248,
            kind: ReqKind::Get,
        },
        Action::Advance { ms: 1 },
    ]);
    // c5's GET was lost once, then re-sent at once; only the newcomers wait.
    let resent = World::req_id(5, 0);
    let lost: Vec<bool> = w
        .arrivals
        .iter()
        .filter(|a| a.id == resent)
        .map(|a| a.lost)
        .collect();
    assert_eq!(lost, [true, false], "{:?}", w.arrivals);
    assert_eq!(
        w.harness.core.queued(UpstreamId(0)),
        2,
        "c7 and c8 wait, not c5"
    );
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// A world of two servers (the second a plain one with empty bodies) behind a runtime that
/// splices through a one-byte pipe and waits for a peer's queue before splicing
/// (`Harness::wait_for_flushes`), its first client connected and not reading: the setting of
/// `spliced_bodies` the regressions below were found in.
fn waiting_world(seed: u64, splice_min: u64, a: BackendScript) -> World {
    let mut cfg = config(2);
    cfg.limits.splice_min = splice_min;
    let b = BackendScript {
        body_size: 0,
        announce_close: false,
        ..BackendScript::default()
    };
    let mut w = World::new(seed, cfg, vec![a, b]);
    w.harness.enable_splice(1);
    w.harness.wait_for_flushes(true);
    w.run(&[
        Action::Connect { ip: 0 },
        Action::Stall {
            client: 0,
            stalled: true,
        },
    ]);
    w
}

/// Found by `spliced_bodies` in CI: a runtime that waits for a peer's queue before splicing
/// (`Core::wait_for_flush`), a stalled first client, 202-byte bodies, a one-byte pipe and a
/// backend announcing `Keep-Alive: timeout=2`. The response finished after the hint had run out
/// (the slow client held its body back), and the connection went back to the pool already
/// expired: the core's next deadline lay in the past. It is closed instead now
/// (`rules::upstream_reusable`, `keep_alive_hint`).
#[test]
fn a_source_held_for_its_peers_queue_keeps_its_deadlines_current() {
    let a = BackendScript {
        body_size: 202,
        announce_close: false,
        delay_ms: 100,
        keep_alive_hint: Some(2),
        ..BackendScript::default()
    };
    let mut w = waiting_world(0, 37, a);
    w.run(&[
        Action::Connect { ip: 0 },
        Action::Send {
            client: 7,
            kind: ReqKind::Get,
        },
        Action::Send {
            client: 134,
            kind: ReqKind::Http10KeepAlive,
        },
        Action::Send {
            client: 90,
            kind: ReqKind::Get,
        },
        Action::Connect { ip: 0 },
        Action::Connect { ip: 0 },
        Action::Connect { ip: 0 },
        Action::Advance { ms: 330 },
        Action::Send {
            client: 17,
            kind: ReqKind::Get,
        },
        Action::Send {
            client: 71,
            kind: ReqKind::Head,
        },
        Action::Send {
            client: 3,
            kind: ReqKind::NoContent,
        },
        Action::Advance { ms: 771 },
        Action::Close { client: 56 },
    ]);
    w.finish();
    upstreams_accounted(&w.harness.core);
}

/// Found by `spliced_bodies`: a chunked response made close-delimited for an HTTP/1.0 client
/// that has not read yet, spliced through a one-byte pipe by a runtime that waits for the
/// queue ahead of each chunk's data, then the backend closing its idle connection.
#[test]
fn a_chunked_response_to_an_http10_client_arrives_whole_through_a_tiny_pipe() {
    let a = BackendScript {
        framing: Framing::Chunked,
        body_size: 1194,
        announce_close: false,
        ..BackendScript::default()
    };
    let mut w = waiting_world(253602458097270, 1, a);
    w.run(&[
        Action::Send {
            client: 0,
            kind: ReqKind::Http10,
        },
        Action::Backend {
            conn: 0,
            event: BackendEvent::CloseIdle,
        },
    ]);
    w.finish();
    upstreams_accounted(&w.harness.core);
}
