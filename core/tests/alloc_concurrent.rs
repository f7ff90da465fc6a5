//! The steady state allocates nothing with more connections active at once than the spare
//! buffer list keeps (`core/src/spare.rs`): 48 keep-alive clients whose requests are all in
//! flight together, as under `wrk -c 64`, each over its own pooled upstream connection.
//!
//! The spare list used to free what it held beyond `KEEP` = 32 buffers of each kind at once,
//! so here (48 clients and 48 pooled upstreams going idle in one pass) every round allocated
//! again: 5000 allocations (34 MB) in 100 rounds.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use upkeep_core::{
    Address, Config, ConnId, Core, Input, ListenerId, Output, ReadOutcome, Time, WriteOutcome,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CLIENTS: usize = 48;

/// Plays the runtime: connects succeed at once, writes take everything; returns the upstream
/// connections written to, in order (into `written`, reused).
fn drain(core: &mut Core, now: Time, clients: &[ConnId], written: &mut Vec<ConnId>) {
    while let Some(out) = core.poll_output() {
        match out {
            Output::Connect { conn, .. } => core.handle(now, Input::Connected { conn }),
            Output::Write { conn } => {
                while let Ok(WriteOutcome::Wrote { left, .. }) =
                    core.write_with(now, conn, |iov| Ok(iov.iter().map(|s| s.len()).sum()))
                {
                    if left == 0 {
                        break;
                    }
                }
                if !clients.contains(&conn) && !written.contains(&conn) {
                    written.push(conn);
                }
            }
            _ => {}
        }
    }
}

fn receive(core: &mut Core, now: Time, conn: ConnId, data: &[u8]) {
    let got = core.read_with(now, conn, data.len(), |buf| {
        buf.extend_from_slice(data);
        Ok(data.len())
    });
    assert!(matches!(got, Ok(ReadOutcome::Data(_))), "open");
}

#[test]
fn many_concurrent_keepalive_clients_allocate_nothing_in_the_steady_state() {
    let mut config = Config::simple(
        Address::parse("127.0.0.1:8080").unwrap(),
        vec![Address::parse("127.0.0.1:9001").unwrap()],
    );
    config.upstreams[0].keepalive_requests = u32::MAX;
    config.upstreams[0].keepalive = 1024;
    config.limits.client_keepalive_requests = u32::MAX;
    let mut core = Core::new(config, 7).expect("valid config");
    let ip = core::net::IpAddr::V4(core::net::Ipv4Addr::LOCALHOST);
    let mut now = Time::ZERO;
    let clients: Vec<ConnId> = (0..CLIENTS)
        .map(|_| core.accept(now, ListenerId(0), Some(ip)).expect("capacity"))
        .collect();
    let get = b"GET /item?id=42 HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    let small = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
    let mut written = Vec::with_capacity(4 * CLIENTS);
    let fire = |core: &mut Core, now: Time| {
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
            let mut none = Vec::new();
            drain(core, now, &clients, &mut none);
        }
    };
    // Rounds 50 ms apart with the core's deadlines fired as a runtime fires them, at two
    // points: between rounds, and while every request is in flight (every spare lent out).
    // The spare list's sweeps (every half second) land at both over the measurement: a sweep
    // that freed a list's storage while the list was empty for the moment made every later
    // round allocate it again.
    let mut step = |core: &mut Core, now: &mut Time| {
        *now = Time(now.0 + 25_000_000);
        fire(core, *now);
        written.clear();
        for &c in &clients {
            receive(core, *now, c, get);
            drain(core, *now, &clients, &mut written);
        }
        assert_eq!(written.len(), CLIENTS, "every request in flight at once");
        *now = Time(now.0 + 25_000_000);
        fire(core, *now);
        for &u in &written {
            receive(core, *now, u, small);
            let mut more = Vec::new();
            drain(core, *now, &clients, &mut more);
        }
        while core.poll_exchange().is_some() {}
    };
    for _ in 0..60 {
        step(&mut core, &mut now);
    }
    let connects = core.stats().servers[0].connects;
    let region = Region::new(GLOBAL);
    for _ in 0..100 {
        step(&mut core, &mut now);
    }
    let change = region.change();
    assert_eq!(
        core.stats().servers[0].connects,
        connects,
        "pooled throughout"
    );
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "heap allocations in 100 rounds of {CLIENTS} concurrent exchanges: {change:?}"
    );
}
