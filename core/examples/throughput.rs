//! Exchanges per second through the core alone (no I/O): the ceiling the runtimes work under.
//! A rough figure for a quick look; the criterion benchmarks in `benches/` are the careful ones.
//!
//! `cargo run --release -p upkeep-core --features sim --example throughput`

use std::time::Instant;

use upkeep_core::sim::direct::Direct;
use upkeep_core::{Address, Config};

fn main() {
    let mut config = Config::simple(
        Address::parse("127.0.0.1:8080").unwrap(),
        vec![Address::parse("127.0.0.1:9001").unwrap()],
    );
    config.upstreams[0].keepalive_requests = u32::MAX;
    config.limits.client_keepalive_requests = u32::MAX;
    let get = b"GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
    let small = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n{}",
        "x".repeat(100)
    );
    let big_head = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n";
    let big = vec![b'y'; 65536];
    for (name, response) in [
        ("small (100 B)", vec![small.as_bytes()]),
        (
            "64 KiB in 4 reads",
            vec![
                &big_head[..],
                &big[..16384],
                &big[16384..32768],
                &big[32768..49152],
                &big[49152..],
            ],
        ),
    ] {
        let mut d = Direct::new(config.clone());
        for _ in 0..10_000 {
            d.exchange(get, &response);
        }
        let n = 200_000u32;
        let start = Instant::now();
        for _ in 0..n {
            d.exchange(get, &response);
        }
        let el = start.elapsed();
        println!(
            "{name:<20} {:>10.0} exchanges/s  {:>7.0} ns/exchange",
            f64::from(n) / el.as_secs_f64(),
            el.as_nanos() as f64 / f64::from(n)
        );
    }
}
