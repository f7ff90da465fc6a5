//! The steady-state request/response cycle through the core makes zero heap allocations.
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
fn steady_state_cycle_makes_no_heap_allocation() {
    // Runtimes record every exchange (status counters, latency histogram): that must be free too.
    let change = cycle::steady_state(GLOBAL, |core| core.record_exchanges(true));
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "heap allocations in 3000 steady-state exchanges: {change:?}"
    );
}
