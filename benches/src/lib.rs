//! Benchmarks support (work in progress).
