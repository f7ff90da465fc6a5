//! Runtime-specific behaviour of the mio proxy, on loopback with real sockets.

mod common;

use common::*;
use upkeep_mio::Proxy;

#[test]
fn proxies_a_request() {
    let b = Backend::tcp("one");
    let proxy = Proxy::start(config(&[&b], 2)).unwrap();
    let (status, body) = get_once(&proxy.listen_addrs()[0], "/");
    assert_eq!((status, body.as_str()), (200, "one"));
    proxy.shutdown();
}

/// The `name{labels} value` sample of a Prometheus text page.
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{sample} missing in:\n{text}"))
        .parse()
        .unwrap()
}

fn admin_get(proxy: &upkeep_mio::ProxyHandle, path: &str) -> (u16, String) {
    let a = proxy.admin_addr().expect("admin listener");
    let mut c = connect(&a);
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut *c)
}

use std::io::Write;
use std::time::Duration;

#[test]
fn so_reuseport_spreads_accepts_across_workers() {
    let b = Backend::tcp("one");
    let proxy = Proxy::start(config(&[&b], 2)).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    for _ in 0..200 {
        let (status, _) = get_once(&listen, "/");
        assert_eq!(status, 200);
    }
    let per_worker = proxy.worker_snapshots();
    assert_eq!(per_worker.len(), 2);
    let accepted: Vec<u64> = per_worker.iter().map(|s| s.accepted).collect();
    assert_eq!(accepted.iter().sum::<u64>(), 200, "{accepted:?}");
    assert!(
        accepted.iter().all(|&a| a > 0),
        "one worker took every connection: {accepted:?}"
    );
    proxy.shutdown();
}

#[test]
fn pooled_upstream_connections_are_bounded_by_keepalive_times_workers() {
    let b = Backend::tcp("pooled");
    let mut cfg = config(&[&b], 2);
    cfg.upstreams[0].keepalive = 2;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    // Hundreds of requests over one client connection...
    let mut c = connect(&listen);
    for _ in 0..300 {
        assert_eq!(get(&mut *c, "/"), (200, "pooled".to_string()));
    }
    drop(c);
    // ...and over many short client connections.
    for _ in 0..200 {
        assert_eq!(get_once(&listen, "/").0, 200);
    }
    assert_eq!(b.requests(), 500);
    // Sequential requests never need a second connection per worker.
    assert!(b.accepted() <= 2 * 2, "backend accepted {}", b.accepted());
    let snap = proxy.snapshot();
    let g = &snap.groups["default"];
    assert_eq!(g.pool_hits + g.pool_misses, 500);
    assert!(g.pool_hits >= 496, "hits {}", g.pool_hits);
    proxy.shutdown();
}

#[test]
fn unix_socket_listener_and_unix_upstream() {
    let backend_path = temp_path("backend.sock");
    let listen_path = temp_path("listen.sock");
    let b = Backend::unix("over-unix", &backend_path);
    let mut cfg = config(&[&b], 2);
    cfg.listeners[0].addr = addr(&format!("unix:{listen_path}"));
    let proxy = Proxy::start(cfg).unwrap();
    assert_eq!(
        proxy.listen_addrs()[0],
        addr(&format!("unix:{listen_path}"))
    );
    let mut c = connect(&proxy.listen_addrs()[0]);
    for _ in 0..50 {
        assert_eq!(get(&mut *c, "/"), (200, "over-unix".to_string()));
    }
    for _ in 0..20 {
        assert_eq!(get_once(&proxy.listen_addrs()[0], "/").0, 200);
    }
    assert_eq!(b.requests(), 70);
    assert!(b.accepted() <= 2, "backend accepted {}", b.accepted());
    drop(c);
    proxy.shutdown();
    assert!(
        !std::path::Path::new(&listen_path).exists(),
        "the listener's socket file is removed at exit"
    );
}

#[test]
fn metrics_status_and_ready_after_known_traffic() {
    let b = Backend::tcp("m");
    let mut cfg = config(&[&b], 2);
    cfg.runtime.admin = Some(addr(&format!("unix:{}", temp_path("admin.sock"))));
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = connect(&listen);
    for _ in 0..10 {
        assert_eq!(get(&mut *c, "/").0, 200);
    }
    // A request the proxy answers itself: 400.
    let mut bad = connect(&listen);
    bad.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut *bad).0, 400);
    drop(bad);

    let (status, text) = admin_get(&proxy, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "upkeep_requests_total{code=\"200\"}"), 10);
    assert_eq!(metric(&text, "upkeep_requests_total{code=\"400\"}"), 1);
    assert_eq!(metric(&text, "upkeep_connections_accepted_total"), 2);
    let server = format!("upstream=\"default\",server=\"{}\"", b.addr);
    assert_eq!(
        metric(
            &text,
            &format!("upkeep_upstream_connects_total{{{server}}}")
        ),
        1
    );
    assert_eq!(metric(&text, &format!("upkeep_upstream_up{{{server}}}")), 1);
    assert_eq!(
        metric(&text, "upkeep_pool_misses_total{upstream=\"default\"}"),
        1
    );
    assert_eq!(
        metric(&text, "upkeep_pool_hits_total{upstream=\"default\"}"),
        9
    );
    assert_eq!(
        metric(&text, "upkeep_pool_idle_connections{upstream=\"default\"}"),
        1
    );
    assert_eq!(metric(&text, "upkeep_request_duration_seconds_count"), 11);
    assert_eq!(
        metric(&text, "upkeep_request_duration_seconds_bucket{le=\"+Inf\"}"),
        11
    );
    assert!(text.contains("# TYPE upkeep_request_duration_seconds histogram\n"));

    let (status, page) = admin_get(&proxy, "/status");
    assert_eq!(status, 200);
    // One client connection is still open and idle (waiting).
    assert_eq!(
        page,
        "Active connections: 1 \nserver accepts handled requests\n 2 2 11 \nReading: 0 Writing: 0 Waiting: 1 \n"
    );
    assert_eq!(admin_get(&proxy, "/ready"), (200, "ready\n".to_string()));
    assert_eq!(admin_get(&proxy, "/nope").0, 404);
    drop(c);
    proxy.shutdown();
}

#[test]
fn drain_finishes_in_flight_and_ready_turns_503() {
    let b = Backend::tcp_slow("slow", Duration::from_millis(800));
    let mut cfg = config(&[&b], 1);
    cfg.runtime.admin = Some(addr(&format!("unix:{}", temp_path("admin.sock"))));
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = connect(&listen);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Wait until the backend has the request, then drain.
    let start = std::time::Instant::now();
    while b.requests() == 0 {
        assert!(
            start.elapsed() < TIMEOUT,
            "request never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.drain();
    assert_eq!(admin_get(&proxy, "/ready").0, 503);
    assert_eq!(read_response(&mut *c), (200, "slow".to_string()));
    // The connection is closed after the in-flight exchange.
    let mut rest = Vec::new();
    use std::io::Read;
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
    proxy.wait();
    assert!(
        std::net::TcpStream::connect(tcp_addr(&listen)).is_err(),
        "listener closed"
    );
}
