//! Runtime-specific behaviour of the mio proxy, on loopback with real sockets.

use std::time::Duration;

use upkeep_core::Address;
use upkeep_core::config::Io;
use upkeep_mio::{Proxy, ProxyHandle};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client, get_text, in_flight, metric};
use upkeep_testkit::{TempDir, eventually, loopback_config, pattern, tcp_addr, within};

mod common;
use common::admin_get;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn proxies_a_request() {
    let b = Backend::identify("one").unwrap();
    let proxy = Proxy::start(loopback_config(vec![b.addr()], 2)).unwrap();
    assert_eq!(
        get_text(&proxy.listen_addrs()[0], "/"),
        (200, "one GET /".to_string())
    );
    proxy.shutdown();
}

#[test]
fn a_second_proxy_on_a_taken_port_is_refused() {
    // SO_REUSEPORT would let it bind and silently take a share of the connections.
    let b = Backend::identify("one").unwrap();
    let first = Proxy::start(loopback_config(vec![b.addr()], 1)).unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 1);
    cfg.listeners[0].addr = first.listen_addrs()[0].clone();
    let err = Proxy::start(cfg).expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    // The first proxy still takes every connection.
    for _ in 0..20 {
        assert_eq!(get_text(&first.listen_addrs()[0], "/").0, 200);
    }
    assert_eq!(first.snapshot().accepted, 20);
    first.shutdown();
}

#[test]
fn so_reuseport_spreads_accepts_across_workers() {
    let b = Backend::identify("one").unwrap();
    let proxy = Proxy::start(loopback_config(vec![b.addr()], 2)).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    for _ in 0..200 {
        assert_eq!(get_text(&listen, "/").0, 200);
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
    let b = Backend::identify("pooled").unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 2);
    cfg.upstreams[0].keepalive = 2;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    // Hundreds of requests over one client connection...
    let mut c = Client::connect(&listen).unwrap();
    for _ in 0..300 {
        assert_eq!(c.get_text("/"), (200, "pooled GET /".to_string()));
    }
    drop(c);
    // ...and over many short client connections.
    for _ in 0..200 {
        assert_eq!(get_text(&listen, "/").0, 200);
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
    let dir = TempDir::new().unwrap();
    let listen = dir.socket("listen.sock");
    let b = Backend::builder().name("over-unix").unix().start().unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 2);
    cfg.listeners[0].addr = listen.clone();
    let proxy = Proxy::start(cfg).unwrap();
    assert_eq!(proxy.listen_addrs()[0], listen);
    let mut c = Client::connect(&listen).unwrap();
    for _ in 0..50 {
        assert_eq!(c.get_text("/"), (200, "over-unix GET /".to_string()));
    }
    for _ in 0..20 {
        assert_eq!(get_text(&listen, "/").0, 200);
    }
    assert_eq!(b.requests(), 70);
    assert!(b.accepted() <= 2, "backend accepted {}", b.accepted());
    drop(c);
    proxy.shutdown();
    let Address::Unix(path) = listen else {
        unreachable!()
    };
    assert!(
        !std::path::Path::new(&path).exists(),
        "the listener's socket file is removed at exit"
    );
}

#[test]
fn metrics_status_and_ready_after_known_traffic() {
    let b = Backend::identify("m").unwrap();
    let dir = TempDir::new().unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 2);
    cfg.runtime.admin = Some(dir.socket("admin.sock"));
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = Client::connect(&listen).unwrap();
    for _ in 0..10 {
        assert_eq!(c.get_text("/").0, 200);
    }
    // A request the proxy answers itself: 400.
    let bad = client::one_shot(&listen, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap();
    assert_eq!(bad.status, 400);

    let (status, text) = admin_get(&proxy, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "upkeep_requests_total{code=\"200\"}"), 10);
    assert_eq!(metric(&text, "upkeep_requests_total{code=\"400\"}"), 1);
    assert_eq!(metric(&text, "upkeep_connections_accepted_total"), 2);
    let server = format!("upstream=\"default\",server=\"{}\"", b.addr());
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
    let b = Backend::slow("slow", Duration::from_millis(800)).unwrap();
    let dir = TempDir::new().unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 1);
    cfg.runtime.admin = Some(dir.socket("admin.sock"));
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = in_flight(&listen, "/", &b);
    proxy.drain();
    assert_eq!(admin_get(&proxy, "/ready").0, 503);
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.text()), (200, "slow GET /".to_string()));
    // The connection is closed after the in-flight exchange.
    assert_eq!(c.read_until_closed().unwrap(), b"");
    proxy.wait();
    assert!(
        std::net::TcpStream::connect(tcp_addr(&listen)).is_err(),
        "listener closed"
    );
}

#[test]
fn client_connection_limit_pauses_and_resumes_accepting() {
    let b = Backend::identify("limited").unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 1);
    cfg.limits.max_client_connections = 2;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut first = Client::connect(&listen).unwrap();
    let mut second = Client::connect(&listen).unwrap();
    assert_eq!(first.get_text("/").0, 200);
    assert_eq!(second.get_text("/").0, 200);
    // Over the limit: accepting is paused before the accept, so both wait in the backlog (never
    // accepted only to be closed) and are served in order as slots free up.
    let mut third = Client::connect(&listen).unwrap();
    third.send(&client::get("/")).unwrap();
    let mut fourth = Client::connect(&listen).unwrap();
    fourth.send(&client::get("/")).unwrap();
    drop(first);
    let r = third.read_response().unwrap();
    assert_eq!((r.status, r.text()), (200, "limited GET /".to_string()));
    drop(second);
    let r = fourth.read_response().unwrap();
    assert_eq!((r.status, r.text()), (200, "limited GET /".to_string()));
    assert_eq!(third.get_text("/").0, 200);
    let snap = proxy.snapshot();
    assert_eq!(snap.handled, 4);
    assert_eq!(snap.accepted, 4);
    proxy.shutdown();
}

#[test]
fn ipv6_loopback_listener() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let b = Backend::identify("v6").unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 2);
    cfg.listeners[0].addr = Address::parse("[::1]:0").unwrap();
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert!(listen.to_string().starts_with("[::1]:"), "{listen}");
    assert_eq!(get_text(&listen, "/"), (200, "v6 GET /".to_string()));
    proxy.shutdown();
}

#[test]
fn reload_through_the_library_moves_new_requests_and_keeps_counters() {
    let old = Backend::identify("old").unwrap();
    let new = Backend::identify("new").unwrap();
    let dir = TempDir::new().unwrap();
    let mut cfg = loopback_config(vec![old.addr()], 2);
    cfg.listeners.push(upkeep_core::config::ListenerConfig::new(
        dir.socket("reload.sock"),
    ));
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let addrs = proxy.listen_addrs();
    let mut kept = Client::connect(&addrs[1]).unwrap();
    assert_eq!(kept.get_text("/").1, "old GET /");
    for _ in 0..5 {
        assert_eq!(get_text(&addrs[0], "/").1, "old GET /");
    }
    let mut next = cfg.clone();
    next.listeners[0].addr = addrs[0].clone();
    next.upstreams[0].servers[0].addr = new.addr();
    proxy.reload(next).unwrap();
    assert_eq!(proxy.listen_addrs(), addrs, "same addresses, same sockets");
    for a in &addrs {
        for _ in 0..5 {
            assert_eq!(get_text(a, "/").1, "new GET /");
        }
    }
    // The kept-open connection was idle on an old worker. Issue 15: it is no longer closed by
    // the drain (a race with the client's next request) but handed to a new worker, which
    // serves its next request with the new configuration; mid-exchange connections finish
    // first (see tests/cli.rs).
    assert_eq!(kept.get_text("/"), (200, "new GET /".to_string()));
    drop(kept);
    // Counters of retired workers are kept.
    assert!(
        eventually(TIMEOUT, || proxy.snapshot().codes.get(&200) == Some(&17)),
        "200s: {:?}",
        proxy.snapshot().codes
    );
    // A config that cannot be bound changes nothing.
    let mut bad = cfg.clone();
    bad.listeners[0].addr = Address::parse("192.0.2.1:1").unwrap();
    assert!(proxy.reload(bad).is_err());
    assert_eq!(get_text(&addrs[0], "/").1, "new GET /");
    proxy.shutdown();
}

#[test]
fn slow_reader_backpressure_stops_reading_from_the_backend() {
    slow_reader_stops_reading_from_the_backend(Io::Epoll);
}

/// The same on io_uring, whose multishot receive is cancelled when the core stops reading.
#[test]
fn slow_reader_backpressure_stops_reading_from_the_backend_on_io_uring() {
    slow_reader_stops_reading_from_the_backend(Io::Uring);
}

fn slow_reader_stops_reading_from_the_backend(io: Io) {
    const TOTAL: usize = 128 * 1024 * 1024;
    // What the kernel alone may hold between a backend and a client that reads nothing: the
    // backend's send buffer, the proxy's upstream receive buffer (autotuned up to tcp_rmem's
    // maximum while the proxy read fast: 32 MiB on the development machine, where a bound of
    // 16 MiB failed on a busy run), the proxy's send buffer to the client and the client's
    // receive buffer; plus 8 MiB for the core's high-water mark and a pipe.
    let max = |path: &str, default: usize| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().last()?.parse().ok())
            .unwrap_or(default)
    };
    let rmem = max("/proc/sys/net/ipv4/tcp_rmem", 6 << 20);
    let wmem = max("/proc/sys/net/ipv4/tcp_wmem", 4 << 20);
    let bound = 2 * rmem + 2 * wmem + (8 << 20);
    assert!(
        bound < TOTAL,
        "socket buffers up to {bound} bytes: too large for this test"
    );
    // A 128 MiB body, written as fast as the proxy reads it; the backend counts what it wrote.
    let backend = Backend::builder().pattern_body(TOTAL, 5).start().unwrap();
    let mut config = loopback_config(vec![backend.addr()], 1);
    config.runtime.io = io;
    let proxy = Proxy::start(config).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    c.send(&client::get("/big")).unwrap();
    // Do not read; wait until the backend stops making progress.
    let mut last = usize::MAX;
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = backend.bytes_written();
        if now == last {
            break;
        }
        last = now;
        assert!(start.elapsed() < TIMEOUT, "backend never stalled");
    }
    // What is in flight is bounded by socket buffers and the core's high-water mark, not by
    // the response size.
    assert!(
        last < bound,
        "backend wrote {last} bytes to a client that reads nothing (bound {bound})"
    );
    // Now read everything, byte for byte.
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), TOTAL);
    assert!(r.body == pattern(TOTAL, 5), "body differs");
    proxy.shutdown();
}

#[test]
fn drain_gives_up_at_shutdown_timeout() {
    // The backend would answer long after the test's own timeouts.
    let b = Backend::slow("too-late", Duration::from_secs(60)).unwrap();
    let mut cfg = loopback_config(vec![b.addr()], 1);
    cfg.runtime.shutdown_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = in_flight(&proxy.listen_addrs()[0], "/", &b);
    proxy.drain();
    within("workers exit at the shutdown timeout", TIMEOUT, move || {
        proxy.wait()
    });
    // The unfinished exchange's connection was closed without a response.
    assert_eq!(c.read_until_closed().unwrap(), b"");
}

#[test]
fn a_draining_proxy_hands_its_unix_path_over() {
    upkeep_testkit::listeners::a_draining_proxy_hands_its_unix_path_over(
        Proxy::start,
        ProxyHandle::drain,
        ProxyHandle::wait,
    );
}
