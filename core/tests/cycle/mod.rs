//! The steady-state request/response cycle the allocation tests measure (`alloc.rs`: nothing
//! recorded but exchanges; `alloc_recording.rs`: as the runtimes record): thousands of exchanges
//! on one keep-alive client connection and one pooled upstream connection, driven by
//! `sim::direct::Direct` (which allocates nothing itself) the way a runtime drives the core.

use std::alloc::System;

use stats_alloc::{Region, Stats, StatsAlloc};
use upkeep_core::sim::direct::Direct;
use upkeep_core::{Address, Config, Core};

/// Runs the cycle with the core set up by `setup`, and returns what `global` saw allocated
/// during 3000 exchanges after a warm-up.
pub fn steady_state(global: &'static StatsAlloc<System>, setup: impl FnOnce(&mut Core)) -> Stats {
    let mut config = Config::simple(
        Address::parse("127.0.0.1:8080").unwrap(),
        vec![Address::parse("127.0.0.1:9001").unwrap()],
    );
    // Thousands of exchanges on one client and one upstream connection.
    config.upstreams[0].keepalive_requests = u32::MAX;
    config.limits.client_keepalive_requests = u32::MAX;
    let mut d = Direct::new(config);
    setup(&mut d.core);

    let get = b"GET /item?id=42 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
    let small = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
    let post = b"POST /api HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"order\": 42}";
    let chunk_head = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk_body = b"a\r\n0123456789\r\n5\r\nabcde\r\n0\r\n\r\n";
    let body_64k = vec![b'x'; 64 * 1024];
    let big_head = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n";

    let run = |d: &mut Direct| {
        d.exchange(get, &[small]);
        d.exchange(post, &[chunk_head, chunk_body]);
        d.exchange(
            get,
            &[big_head, &body_64k[..16 * 1024], &body_64k[16 * 1024..]],
        );
        let mut statuses = [0u16; 4];
        for (slot, e) in statuses
            .iter_mut()
            .zip(core::iter::from_fn(|| d.core.poll_exchange()))
        {
            *slot = e.status;
        }
        assert_eq!(statuses, [200, 201, 200, 0], "one record per exchange");
        let u = d.upstream.expect("connected");
        assert!(
            d.core.is_pooled(u),
            "clean exchanges end with the connection pooled"
        );
    };
    // Warm-up: buffers, queues, the pool's key table and the timer heap reach their sizes.
    for _ in 0..50 {
        run(&mut d);
    }
    let before = (d.to_client, d.to_upstream);
    let region = Region::new(global);
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
    change
}
