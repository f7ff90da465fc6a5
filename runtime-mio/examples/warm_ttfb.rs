//! Time to first byte of the first request after a quiet period, with and without warm
//! connections (`min_idle = 1`), through the mio proxy against a loopback backend that answers
//! at once — so the difference is upstream connection setup, not the backend.
//!
//! Both proxies have `keepalive_timeout = 4s`, shorter than the silence: without `min_idle` the
//! pool is empty when the request comes and the proxy connects first; with it, a warm
//! connection (replaced when the previous one expired) is waiting. The client connections to
//! the proxies are opened beforehand and kept, so only the upstream side differs.
//!
//! `cargo run --release -p upkeep-mio --example warm_ttfb [SILENCE_SECS] [ROUNDS]` (defaults 10
//! and 3); prints one line per round and the medians.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use upkeep_core::Address;
use upkeep_mio::{Proxy, ProxyHandle};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::loopback_config;

fn start(backend: &Backend, min_idle: usize) -> (ProxyHandle, TcpStream) {
    let mut config = loopback_config(vec![backend.addr()], 1);
    config.upstreams[0].keepalive_timeout = Duration::from_secs(4);
    config.upstreams[0].min_idle = min_idle;
    let proxy = Proxy::start(config).expect("proxy");
    let Address::Tcp(addr) = proxy.listen_addrs()[0] else {
        unreachable!("a TCP listener")
    };
    let client = TcpStream::connect(addr).expect("connect");
    client.set_nodelay(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (proxy, client)
}

/// Sends `GET target` and reads the whole (small, identified) response; returns the time from
/// the request's write to the first response bytes.
fn ttfb(client: &mut TcpStream, target: &str) -> Duration {
    let req = format!("GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let want = format!("a GET {target}");
    let t0 = Instant::now();
    client.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut first = None;
    while !buf.ends_with(want.as_bytes()) {
        let n = client.read(&mut chunk).expect("response");
        assert!(n > 0, "proxy closed the connection");
        first.get_or_insert_with(|| t0.elapsed());
        buf.extend_from_slice(&chunk[..n]);
    }
    first.unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let silence = Duration::from_secs(args.next().map_or(10, |s| s.parse().expect("seconds")));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("rounds"));
    let backend = Backend::identify("a").expect("backend");
    let (_cold_proxy, mut cold) = start(&backend, 0);
    let (_warm_proxy, mut warm) = start(&backend, 1);
    // One request each, so both client connections and code paths are warmed up.
    ttfb(&mut cold, "/prime");
    ttfb(&mut warm, "/prime");
    let (mut c, mut w) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        std::thread::sleep(silence);
        // Alternate the order so neither always goes first after the silence.
        let target = format!("/r{round}");
        let (tc, tw) = if round % 2 == 0 {
            let tc = ttfb(&mut cold, &target);
            (tc, ttfb(&mut warm, &target))
        } else {
            let tw = ttfb(&mut warm, &target);
            (ttfb(&mut cold, &target), tw)
        };
        println!("round {round}: without min_idle {tc:?}, with min_idle = 1 {tw:?}");
        c.push(tc);
        w.push(tw);
    }
    println!(
        "median TTFB after {silence:?} of silence: without min_idle {:?}, with min_idle = 1 {:?}",
        median(c),
        median(w)
    );
}
