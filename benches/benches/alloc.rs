//! Heap allocations per proxied request in steady state, counted by a counting global allocator
//! (stats_alloc) around exchanges through the core driven by the allocation-free
//! `sim::direct::Direct` runtime: a small GET response, a 64 KiB response in 16 KiB reads and a
//! POST answered with a chunked response, over one keep-alive client connection and one pooled
//! upstream connection.
//!
//! `cargo bench -p upkeep-benches --bench alloc` prints `allocations per request: X` and exits
//! non-zero when X > 0 (the target is zero).

use std::alloc::System;
use std::process::ExitCode;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use upkeep_benches::workload::{self, BigResponse, GET};
use upkeep_core::sim::direct::Direct;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Requests measured after the warm-up (three per round).
const ROUNDS: usize = 10_000;

const POST: &[u8] = b"POST /api/orders HTTP/1.1\r\nHost: bench.example\r\n\
Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"order\": 42}";
const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n";
const CHUNKED_BODY: &[u8] = b"a\r\n0123456789\r\n5\r\nabcde\r\n0\r\n\r\n";

fn round(d: &mut Direct, small: &[u8], big: &[&[u8]]) {
    d.exchange(GET, &[small]);
    d.exchange(POST, &[CHUNKED_HEAD, CHUNKED_BODY]);
    d.exchange(GET, big);
}

fn main() -> ExitCode {
    let small = workload::small_response();
    let big = BigResponse::default();
    let pieces = big.pieces();
    let mut d = Direct::new(workload::config());
    // Warm-up: buffers, queues, the pool's key table and the timer heap reach their sizes.
    for _ in 0..100 {
        round(&mut d, &small, &pieces);
    }
    let sent_before = d.to_client;
    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        round(&mut d, &small, &pieces);
    }
    let change = region.change();
    let requests = 3 * ROUNDS;
    // The count only means something if the traffic really flowed through one pooled
    // upstream connection.
    assert!(d.to_client - sent_before > ROUNDS * workload::BIG);
    assert_eq!(d.core.stats().servers[0].connects, 1);
    assert!(d.core.is_pooled(d.upstream.expect("connected")));

    let allocations = change.allocations + change.reallocations;
    println!(
        "steady state: {requests} requests (small GET, POST with chunked response, 64 KiB GET), \
         {} allocations, {} reallocations, {} bytes allocated",
        change.allocations, change.reallocations, change.bytes_allocated
    );
    println!(
        "allocations per request: {}",
        allocations as f64 / requests as f64
    );
    if allocations > 0 {
        eprintln!("target missed: the steady-state request cycle should not allocate");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
