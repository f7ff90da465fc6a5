//! Benchmarks of upkeep: the shared workload the criterion benches and the allocation count
//! drive through the core ([`workload`]), and the load comparison's report (parsing the CSV that
//! `load/run.sh` writes, the markdown table and the SVG chart: [`report`]).
//!
//! - `cargo bench -p upkeep-benches --bench core`: criterion microbenchmarks.
//! - `cargo bench -p upkeep-benches --bench alloc`: heap allocations per proxied request.
//! - `bash benches/load/run.sh [--quick]`: upkeep against nginx and HAProxy over loopback.

pub mod report;
pub mod workload;
