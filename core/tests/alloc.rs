//! The steady-state request/response cycle through the core makes zero heap allocations.
//!
//! A counting global allocator (stats_alloc) sees every allocation of this test binary, which
//! holds this one test only, so no other test thread pollutes the count. The core is driven
//! directly (no harness: its bookkeeping would allocate) the way a runtime drives it, over a
//! keep-alive client connection and a pooled upstream connection.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use upkeep_core::{Address, Config, ConnId, Core, Input, ListenerId, Output, Time};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct Driver {
    core: Core,
    now: Time,
    client: ConnId,
    upstream: Option<ConnId>,
    to_client: usize,
    to_upstream: usize,
}

impl Driver {
    /// Plays the runtime: writes everything queued (counting bytes, as a socket would take them).
    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Connect { conn, .. } => {
                    self.upstream = Some(conn);
                    self.core.handle(self.now, Input::Connected { conn });
                }
                Output::Write { conn } => {
                    let n: usize = self.core.pending(conn).map(<[u8]>::len).sum();
                    if conn == self.client {
                        self.to_client += n;
                    } else {
                        self.to_upstream += n;
                    }
                    self.core.handle(self.now, Input::Written { conn, n });
                }
                Output::Close { conn, .. } => panic!("unexpected close of {conn:?}"),
                Output::Interest { .. } | Output::Shutdown { .. } => {}
            }
        }
    }

    fn cycle(&mut self, request: &[u8], response: &[&[u8]]) {
        self.now = Time(self.now.0 + 1_000_000);
        self.core.handle(
            self.now,
            Input::Received {
                conn: self.client,
                data: request,
            },
        );
        self.drain();
        let upstream = self.upstream.expect("connected");
        for piece in response {
            self.core.handle(
                self.now,
                Input::Received {
                    conn: upstream,
                    data: piece,
                },
            );
            self.drain();
        }
        assert!(
            self.core.is_pooled(upstream),
            "clean cycle ends with the connection pooled"
        );
    }
}

#[test]
fn steady_state_cycle_makes_no_heap_allocation() {
    let mut config = Config::simple(
        Address::parse("127.0.0.1:8080").unwrap(),
        vec![Address::parse("127.0.0.1:9001").unwrap()],
    );
    // Thousands of exchanges on one client and one upstream connection.
    config.upstreams[0].keepalive_requests = u32::MAX;
    config.limits.client_keepalive_requests = u32::MAX;
    let core = Core::new(config, 7).unwrap();
    let mut d = Driver {
        core,
        now: Time::ZERO,
        client: ConnId {
            index: 0,
            generation: 0,
        },
        upstream: None,
        to_client: 0,
        to_upstream: 0,
    };
    d.client = d
        .core
        .accept(d.now, ListenerId(0), Some("127.0.0.1".parse().unwrap()))
        .unwrap();

    let get = b"GET /item?id=42 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
    let small = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
    let post = b"POST /api HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"order\": 42}";
    let chunk_head = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk_body = b"a\r\n0123456789\r\n5\r\nabcde\r\n0\r\n\r\n";
    let body_64k = vec![b'x'; 64 * 1024];
    let big_head = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n";

    let run = |d: &mut Driver| {
        d.cycle(get, &[small]);
        d.cycle(post, &[chunk_head, chunk_body]);
        d.cycle(
            get,
            &[big_head, &body_64k[..16 * 1024], &body_64k[16 * 1024..]],
        );
    };
    // Warm-up: buffers, queues, the pool's key table and the timer heap reach their sizes.
    for _ in 0..50 {
        run(&mut d);
    }
    let before = (d.to_client, d.to_upstream);
    let region = Region::new(GLOBAL);
    for _ in 0..1000 {
        run(&mut d);
    }
    let change = region.change();
    assert!(
        d.to_client - before.0 > 1000 * 65536,
        "the responses really went through"
    );
    assert!(d.to_upstream > before.1);
    assert_eq!(
        d.core.stats().servers[0].connects,
        1,
        "one pooled upstream connection throughout"
    );
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "heap allocations in 3000 steady-state exchanges: {change:?}"
    );
}
