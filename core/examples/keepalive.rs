//! The keepalive effect, measured in the deterministic simulation (no sockets, same numbers on
//! every machine): steady concurrent clients through the core with pooling off, with nginx's
//! churning `keepalive 16`-style cap, and with upkeep's defaults.
//!
//! `cargo run -p upkeep-core --features sim --example keepalive`

use upkeep_core::config::{Address, Config};
use upkeep_core::sim::load::closed_loop;

fn config(keepalive: Option<usize>) -> Config {
    let mut c = Config::simple(
        Address::parse("127.0.0.1:8080").unwrap(),
        vec![
            Address::parse("127.0.0.1:9001").unwrap(),
            Address::parse("127.0.0.1:9002").unwrap(),
        ],
    );
    if let Some(k) = keepalive {
        c.upstreams[0].keepalive = k;
    }
    c
}

fn main() {
    let (clients, rounds) = (64, 200);
    println!("{clients} keep-alive clients, {rounds} requests each, two backends\n");
    println!(
        "{:<34} {:>9} {:>18} {:>9} {:>16}",
        "pool", "requests", "upstream connects", "hit ratio", "closed at release"
    );
    for (name, keepalive) in [
        ("off (keepalive = 0)", Some(0)),
        ("hard cap 16 (nginx keepalive 16)", Some(16)),
        ("upkeep default (cap 1024, aging)", None),
    ] {
        let r = closed_loop(config(keepalive), clients, rounds, 42);
        println!(
            "{:<34} {:>9} {:>18} {:>8.1}% {:>16}",
            name,
            r.requests,
            r.upstream_connects,
            100.0 * r.hit_ratio(),
            r.capacity_evictions
        );
    }
}
