//! Fan-out to 4 loopback backends: the pooled client against a fresh connection per request
//! (the same client with `keepalive = 0`), measured in the same run, alternating rounds.
//!
//! ```text
//! cargo bench -p upkeep-smol --bench fanout
//! FANOUT_PAGES=500 FANOUT_ROUNDS=3 FANOUT_CONCURRENCY=8 cargo bench -p upkeep-smol --bench fanout
//! ```
//!
//! A page = 4 concurrent requests, one per backend; `FANOUT_CONCURRENCY` pages render at once.
//! Prints requests/s per mode, the pooled / fresh ratio, and upstream connections opened
//! (counted by the client's core and by the backends). Bounded: `ROUNDS x PAGES` pages per mode.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;

use smol::LocalExecutor;
use upkeep_core::Address;
use upkeep_core::config::{ServerConfig, UpstreamConfig};
use upkeep_smol::{Client, Request};

#[path = "../examples/support/backend.rs"]
mod backend;

const SERVICES: [&str; 4] = ["a", "b", "c", "d"];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn client(backends: &[backend::Backend], keepalive: Option<usize>) -> Client {
    Client::new(SERVICES.iter().zip(backends).map(|(s, b)| {
        let mut g = UpstreamConfig::new(*s, vec![ServerConfig::new(Address::Tcp(b.addr))]);
        if let Some(k) = keepalive {
            g.keepalive = k;
        }
        g
    }))
    .expect("client")
}

/// One request; the body's length.
async fn call(client: &Client, service: &str, page: usize) -> usize {
    let r = client
        .send(service, Request::get(format!("/p/{page}")))
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("body").len()
}

/// One page: the four calls joined, so all four are in flight at once.
async fn page(client: &Client, page: usize) {
    let [a, b, c, d] = SERVICES;
    let ((la, lb), (lc, ld)) = future::zip(
        future::zip(call(client, a, page), call(client, b, page)),
        future::zip(call(client, c, page), call(client, d, page)),
    )
    .await;
    assert!(la > 0 && lb > 0 && lc > 0 && ld > 0);
}

/// Renders `pages` pages, `concurrency` at a time; returns the elapsed time.
fn run(client: &Client, pages: usize, concurrency: usize) -> Duration {
    let next = Rc::new(Cell::new(0usize));
    let ex = LocalExecutor::new();
    let started = Instant::now();
    smol::block_on(ex.run(async {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (next, client) = (next.clone(), client.clone());
                ex.spawn(async move {
                    loop {
                        let p = next.get();
                        if p >= pages {
                            return;
                        }
                        next.set(p + 1);
                        page(&client, p).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await;
        }
    }));
    started.elapsed()
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --all-targets`) run a smoke-sized
    // round so test runs stay short.
    let benching = std::env::args().any(|a| a == "--bench");
    let pages = env("FANOUT_PAGES", if benching { 500 } else { 20 });
    let rounds = env("FANOUT_ROUNDS", if benching { 3 } else { 1 });
    let concurrency = env("FANOUT_CONCURRENCY", 8);
    let backends: Vec<_> = SERVICES
        .iter()
        .map(|s| backend::Backend::start(s).expect("backend"))
        .collect();
    let pooled = client(&backends, None);
    let fresh = client(&backends, Some(0));

    // Warm-up (also opens the pooled client's connections, which the pooled rounds then reuse).
    run(&pooled, 50, concurrency);
    run(&fresh, 50, concurrency);

    let mut time = [Duration::ZERO; 2];
    let mut accepted = [0usize; 2];
    let mut opened = [0u64; 2];
    for _ in 0..rounds {
        for (i, c) in [&pooled, &fresh].into_iter().enumerate() {
            let before: usize = backends.iter().map(|b| b.accepted()).sum();
            let opened_before = smol::block_on(c.connections_opened()).unwrap();
            time[i] += run(c, pages, concurrency);
            accepted[i] += backends.iter().map(|b| b.accepted()).sum::<usize>() - before;
            opened[i] += smol::block_on(c.connections_opened()).unwrap() - opened_before;
        }
    }
    let requests = (rounds * pages * SERVICES.len()) as f64;
    let rate = |t: Duration| requests / t.as_secs_f64();
    println!(
        "fan-out to {} backends, {} pages x {} rounds per mode, {} pages in flight",
        SERVICES.len(),
        pages,
        rounds,
        concurrency
    );
    println!(
        "{:<8} {:>12} {:>10} {:>22} {:>20}",
        "mode", "requests", "req/s", "upstream conns (core)", "accepted (backends)"
    );
    for (i, name) in ["pooled", "fresh"].iter().enumerate() {
        println!(
            "{:<8} {:>12} {:>10.0} {:>22} {:>20}",
            name,
            requests as u64,
            rate(time[i]),
            opened[i],
            accepted[i]
        );
    }
    let total = |c: &Client| smol::block_on(c.connections_opened()).unwrap();
    println!(
        "total upstream connections incl. warm-up: pooled {}, fresh {}",
        total(&pooled),
        total(&fresh)
    );
    println!(
        "ratio pooled/fresh: {:.2}x requests/s",
        rate(time[0]) / rate(time[1])
    );
}
