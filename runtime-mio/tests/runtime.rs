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

#[test]
fn client_connection_limit_pauses_and_resumes_accepting() {
    use std::io::Read;
    let b = Backend::tcp("limited");
    let mut cfg = config(&[&b], 1);
    cfg.limits.max_client_connections = 2;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut first = connect(&listen);
    let mut second = connect(&listen);
    assert_eq!(get(&mut *first, "/").0, 200);
    assert_eq!(get(&mut *second, "/").0, 200);
    // Over the limit: accepted by the kernel, closed by the proxy.
    let mut third = connect(&listen);
    let mut buf = [0u8; 64];
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "the third connection is refused"
    );
    // Accepting is paused now: this one waits in the backlog until a slot frees up.
    let mut fourth = connect(&listen);
    fourth
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    drop(first);
    assert_eq!(read_response(&mut *fourth), (200, "limited".to_string()));
    assert_eq!(get(&mut *second, "/").0, 200);
    let snap = proxy.snapshot();
    assert_eq!(snap.handled, 3);
    assert_eq!(snap.accepted, 4);
    proxy.shutdown();
}

#[test]
fn ipv6_loopback_listener() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let b = Backend::tcp("v6");
    let mut cfg = config(&[&b], 2);
    cfg.listeners[0].addr = addr("[::1]:0");
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert!(listen.to_string().starts_with("[::1]:"), "{listen}");
    assert_eq!(get_once(&listen, "/"), (200, "v6".to_string()));
    proxy.shutdown();
}

#[test]
fn reload_through_the_library_moves_new_requests_and_keeps_counters() {
    let old = Backend::tcp("old");
    let new = Backend::tcp("new");
    let unix = temp_path("reload.sock");
    let mut cfg = config(&[&old], 2);
    cfg.listeners
        .push(upkeep_core::config::ListenerConfig::new(addr(&format!(
            "unix:{unix}"
        ))));
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let addrs = proxy.listen_addrs();
    let mut kept = connect(&addrs[1]);
    assert_eq!(get(&mut *kept, "/").1, "old");
    for _ in 0..5 {
        assert_eq!(get_once(&addrs[0], "/").1, "old");
    }
    let mut next = cfg.clone();
    next.listeners[0].addr = addrs[0].clone();
    next.upstreams[0].servers[0].addr = new.addr.clone();
    proxy.reload(next).unwrap();
    assert_eq!(proxy.listen_addrs(), addrs, "same addresses, same sockets");
    for a in &addrs {
        for _ in 0..5 {
            assert_eq!(get_once(a, "/").1, "new");
        }
    }
    // The kept-open connection was idle on an old worker: draining closes it cleanly (FIN, no
    // half-sent response); mid-exchange connections finish first (see tests/cli.rs).
    let mut rest = Vec::new();
    use std::io::Read;
    assert_eq!(kept.read_to_end(&mut rest).unwrap_or(0), 0);
    drop(kept);
    // Counters of retired workers are kept.
    let start = std::time::Instant::now();
    loop {
        let snap = proxy.snapshot();
        if snap.codes.get(&200) == Some(&16) {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "200s: {:?}", snap.codes);
        std::thread::sleep(Duration::from_millis(20));
    }
    // A config that cannot be bound changes nothing.
    let mut bad = cfg.clone();
    bad.listeners[0].addr = addr("192.0.2.1:1");
    assert!(proxy.reload(bad).is_err());
    assert_eq!(get_once(&addrs[0], "/").1, "new");
    proxy.shutdown();
}

#[test]
fn slow_reader_backpressure_stops_reading_from_the_backend() {
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TOTAL: usize = 64 * 1024 * 1024;
    // A backend that streams a 64 MiB body as fast as the proxy reads it, counting bytes written.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = upkeep_core::Address::Tcp(l.local_addr().unwrap());
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = [0u8; 1024];
        let _ = s.read(&mut head).unwrap();
        let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n");
        s.write_all(h.as_bytes()).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        while w.load(Ordering::SeqCst) < TOTAL {
            if s.write_all(&chunk).is_err() {
                return;
            }
            w.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    });
    let cfg = upkeep_core::Config::simple(addr("127.0.0.1:0"), vec![backend]);
    let mut cfg = cfg;
    cfg.runtime.workers = 1;
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = connect(&proxy.listen_addrs()[0]);
    c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Do not read; wait until the backend stops making progress.
    let mut last = usize::MAX;
    let start = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        assert!(start.elapsed() < TIMEOUT, "backend never stalled");
    }
    // What is in flight is bounded by socket buffers and the core's high-water mark, not by
    // the response size.
    assert!(
        last < TOTAL / 4,
        "backend wrote {last} bytes to a client that reads nothing"
    );
    // Now read everything, byte for byte.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while got < TOTAL {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early at {got}");
        assert!(buf[..n].iter().all(|&x| x == b'x'));
        got += n;
    }
    assert_eq!(got, TOTAL);
    proxy.shutdown();
}

#[test]
fn drain_gives_up_at_shutdown_timeout() {
    use std::io::Read;
    // The backend would answer long after the test's own timeouts.
    let b = Backend::tcp_slow("too-late", Duration::from_secs(60));
    let mut cfg = config(&[&b], 1);
    cfg.runtime.shutdown_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = connect(&proxy.listen_addrs()[0]);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let start = std::time::Instant::now();
    while b.requests() == 0 {
        assert!(
            start.elapsed() < TIMEOUT,
            "request never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.drain();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        proxy.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(TIMEOUT)
        .expect("workers exit at the shutdown timeout");
    // The unfinished exchange's connection was closed without a response.
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
}
