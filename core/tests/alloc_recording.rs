//! The per-request cost of recording as the runtimes run the core (`Recorder::attach`:
//! exchanges, request lines and request ids, without an access log's Host/Referer/User-Agent).
//! The request line and the generated request id are copied into a shared buffer that takes
//! ~10 exchanges' worth per allocation (`record::RecordBytes`): fewer than one allocation per
//! five exchanges, and no reallocation. (`alloc.rs` holds the zero-allocation cycle without
//! them.)
//!
//! A counting global allocator (stats_alloc) sees every allocation of this test binary, which
//! holds this one test only, so no other test thread pollutes the count. The core is driven
//! by `sim::direct::Direct` (which allocates nothing itself) the way a runtime drives it, over a
//! keep-alive client connection and a pooled upstream connection.

mod cycle;

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn recording_requests_costs_less_than_one_allocation_per_five_exchanges() {
    let change = cycle::steady_state(GLOBAL, |core| {
        core.record_exchanges(true);
        core.record_requests(true);
    });
    // Once four allocations and two reallocations per exchange (a `format!`ed id, and clones
    // of fresh `Bytes`, each of which allocates to share), then two (a `Bytes` each for the
    // line and the id); 546 in all since the shared buffer.
    assert!(
        change.allocations <= 3000 / 5 && change.reallocations == 0,
        "heap allocations in 3000 steady-state exchanges: {change:?}"
    );
}
