//! The per-request cost of recording as the runtimes run the core (`Recorder::attach`:
//! exchanges, request lines and request ids, without an access log's Host/Referer/User-Agent):
//! exactly two small allocations per exchange — the request line's copy and the generated
//! request id — and no reallocation. (`alloc.rs` holds the zero-allocation cycle without them.)
//!
//! A counting global allocator (stats_alloc) sees every allocation of this test binary, which
//! holds this one test only, so no other test thread pollutes the count. The core is driven
//! by `sim::direct::Direct` (which allocates nothing itself) the way a runtime drives it, over a
//! keep-alive client connection and a pooled upstream connection.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use upkeep_core::sim::direct::Direct;
use upkeep_core::{Address, Config};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn recording_requests_costs_two_allocations_per_exchange() {
    let mut config = Config::simple(
        Address::parse("127.0.0.1:8080").unwrap(),
        vec![Address::parse("127.0.0.1:9001").unwrap()],
    );
    // Thousands of exchanges on one client and one upstream connection.
    config.upstreams[0].keepalive_requests = u32::MAX;
    config.limits.client_keepalive_requests = u32::MAX;
    let mut d = Direct::new(config);
    d.core.record_exchanges(true);
    d.core.record_requests(true);

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
    // Before the review: four allocations and two reallocations (a `format!`ed id, and clones
    // of fresh `Bytes`, each of which allocates to share).
    assert_eq!(
        (change.allocations, change.reallocations),
        (2 * 3000, 0),
        "heap allocations in 3000 steady-state exchanges: {change:?}"
    );
}
