//! Reloads no client notices (issue 15): a spawned `upkeep` receives many SIGHUPs while
//! keep-alive clients send requests in a loop; every request gets its own response. Idle client
//! connections move to the new configuration's workers instead of being closed, requests in
//! flight finish on the old one.

#[path = "common/spawned.rs"]
mod spawned;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spawned::Spawned;
use upkeep_core::Address;
use upkeep_testkit::TempDir;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client};

fn config_text(io: &str, listen: &str, upstream: &Address) -> String {
    format!(
        "io = \"{io}\"\nworkers = 2\nshutdown_timeout = \"10s\"\n[[listen]]\naddr = \"{listen}\"\n[[upstream]]\nname = \"app\"\nservers = [\"{upstream}\"]\n"
    )
}

/// How many SIGHUPs (more with `UPKEEP_RELOADS`).
fn reloads() -> usize {
    std::env::var("UPKEEP_RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn many_reloads_under_keepalive_load_fail_no_request() {
    many_reloads_under_keepalive_load("epoll");
}

/// The same with the workers on io_uring.
#[test]
fn many_reloads_under_keepalive_load_fail_no_request_on_io_uring() {
    many_reloads_under_keepalive_load("uring");
}

fn many_reloads_under_keepalive_load(io: &str) {
    let a = Backend::identify("a").unwrap();
    let b = Backend::identify("b").unwrap();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("upkeep.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    std::fs::write(&path, config_text(io, &listen, &a.addr())).unwrap();
    let up = Spawned::start(&[], &["--config", path.to_str().unwrap()], 1);
    let addr = up.listen[0].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (addr, stop) = (addr.clone(), stop.clone());
            let (served, reconnects) = (served.clone(), reconnects.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = Client::connect(&addr).map_err(|e| e.to_string())?;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // GETs and POSTs: a POST that failed could not be retried by the client.
                    let target = format!("/c{i}/r{n}");
                    let (req, method) = if n % 2 == 0 {
                        (client::get(&target), "GET")
                    } else {
                        (client::post(&target, b"payload"), "POST")
                    };
                    let r = c
                        .request(&req)
                        .map_err(|e| format!("{method} {target}: {e}"))?;
                    let body = r.text();
                    if r.status != 200 || !body.ends_with(&format!("{method} {target}")) {
                        return Err(format!("{method} {target}: {} {body}", r.status));
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                    if r.connection_has("close") {
                        // Announced: a well-behaved client reconnects; not a failure.
                        reconnects.fetch_add(1, Ordering::Relaxed);
                        c = Client::connect(&addr).map_err(|e| e.to_string())?;
                    }
                    n += 1;
                }
                Ok(())
            })
        })
        .collect();

    let backends = [a.addr(), b.addr()];
    for k in 0..reloads() {
        std::fs::write(&path, config_text(io, &listen, &backends[(k + 1) % 2])).unwrap();
        up.signal("HUP");
        up.expect("reloaded");
        let before = served.load(Ordering::Relaxed);
        // Let traffic flow on the new configuration before the next reload.
        assert!(
            upkeep_testkit::eventually(spawned::WAIT, || served.load(Ordering::Relaxed)
                >= before + 16),
            "requests stopped being served"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    let served = served.load(Ordering::Relaxed);
    eprintln!(
        "{} reloads, {served} requests, {} announced reconnects, {} failures",
        reloads(),
        reconnects.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    // No POST reached a backend twice.
    let mut seen = std::collections::BTreeSet::new();
    for r in a.log().into_iter().chain(b.log()) {
        if r.method == "POST" {
            assert!(seen.insert(r.target.clone()), "{} sent twice", r.target);
        }
    }
    assert_eq!(up.stop(), 0);
}

/// A reload keeps the warm upstream connections to servers the new configuration still has:
/// the new workers reuse them instead of opening new ones (and close those to servers it
/// dropped).
#[test]
fn a_reload_keeps_idle_upstream_connections_to_servers_that_remain() {
    use upkeep_mio::Proxy;
    let kept = Backend::identify("kept").unwrap();
    let dropped = Backend::identify("dropped").unwrap();
    let mut cfg = upkeep_testkit::loopback_config(vec![kept.addr()], 1);
    let mut other = upkeep_core::config::UpstreamConfig::new(
        "other",
        vec![upkeep_core::config::ServerConfig::new(dropped.addr())],
    );
    other.keepalive = 4;
    cfg.upstreams.push(other);
    cfg.routes.push(upkeep_core::config::RouteConfig {
        host: None,
        path_prefix: "/other".into(),
        upstream: "other".into(),
    });
    cfg.routes.push(upkeep_core::config::RouteConfig {
        host: None,
        path_prefix: "/".into(),
        upstream: "default".into(),
    });
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert_eq!(client::get_text(&listen, "/a").0, 200);
    assert_eq!(client::get_text(&listen, "/other").0, 200);
    assert_eq!((kept.accepted(), dropped.accepted()), (1, 1));
    for _ in 0..3 {
        proxy.reload(cfg.clone()).unwrap();
        assert_eq!(client::get_text(&listen, "/a"), (200, "kept GET /a".into()));
    }
    assert_eq!(
        kept.accepted(),
        1,
        "the pooled connection moved with every reload"
    );
    // A configuration without the other server: its idle connection is closed.
    let mut fewer = cfg.clone();
    fewer.upstreams.pop();
    fewer.routes.remove(0);
    proxy.reload(fewer).unwrap();
    assert!(
        dropped.wait_until(spawned::WAIT, |b| b.open_connections() == 0),
        "the connection to a server no longer configured is closed"
    );
    assert_eq!(client::get_text(&listen, "/b"), (200, "kept GET /b".into()));
    assert_eq!(kept.accepted(), 1);
    proxy.shutdown();
}

/// A connection handed over at a reload is taken by the new worker even when that worker is
/// at `limits.max_client_connections`: it is already open (refusing it frees no descriptor), and
/// closing it would fail the client's next request — the one thing a handoff must not do.
#[test]
fn a_handed_over_connection_is_kept_when_the_new_worker_is_full() {
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use upkeep_mio::Proxy;
    // A backend that answers its one request only when told: the old request stays in flight
    // until the new worker is full, whatever the machine's load.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = Address::Tcp(held.local_addr().unwrap());
    let (got, got_rx) = mpsc::channel();
    let (answer, answer_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut s, _) = held.accept().unwrap();
        let mut buf = Vec::new();
        let mut piece = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut piece) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&piece[..n]),
            }
        }
        got.send(()).unwrap();
        let _ = answer_rx.recv();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld");
        // Keep the connection until the proxy closes it.
        let _ = s.read(&mut piece);
    });
    let fast = Backend::identify("fast").unwrap();
    let mut cfg = upkeep_testkit::loopback_config(vec![held_addr], 1);
    cfg.limits.max_client_connections = 1;
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    // A request in flight on the old worker during the reload.
    let mut a = Client::connect(&listen).unwrap();
    a.send(&client::get("/a")).unwrap();
    got_rx
        .recv_timeout(spawned::WAIT)
        .expect("the request reached the backend");
    let mut next = cfg.clone();
    next.upstreams[0].servers[0] = upkeep_core::config::ServerConfig::new(fast.addr());
    proxy.reload(next).unwrap();
    // A new client fills the new worker (served there, and kept alive).
    let mut b = Client::connect(&listen).unwrap();
    let rb = b.get("/b").unwrap();
    assert_eq!((rb.status, rb.text()), (200, "fast GET /b".into()));
    // The old request finishes on the old configuration, then its connection moves.
    answer.send(()).unwrap();
    let ra = a.read_response().unwrap();
    assert_eq!((ra.status, ra.text()), (200, "held".into()));
    assert!(!ra.connection_has("close"), "no close announced");
    let ra = a.get("/a2").expect("the kept-alive connection still works");
    assert_eq!((ra.status, ra.text()), (200, "fast GET /a2".into()));
    proxy.shutdown();
}

/// A reload that removes a listener: a connection on it whose response is still being written
/// when it turns idle has nowhere to move, and must still get the rest of that response (then
/// a close), not a cut-off body.
#[test]
fn a_response_still_written_on_a_removed_listener_arrives_whole() {
    use upkeep_core::config::ListenerConfig;
    use upkeep_mio::Proxy;
    const LEN: usize = 4 << 20;
    let backend = Backend::builder().pattern_body(LEN, 7).start().unwrap();
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Address::Tcp(l.local_addr().unwrap())
    };
    let (kept, removed) = (free(), free());
    let mut cfg = upkeep_testkit::loopback_config(vec![backend.addr()], 1);
    cfg.listeners = vec![
        ListenerConfig::new(kept.clone()),
        ListenerConfig::new(removed.clone()),
    ];
    // The whole response fits in the proxy's queue: it is complete (the exchange over, the
    // connection idle) while the client has not read it yet.
    cfg.limits.write_high_water = 4 * LEN;
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let mut c = client::in_flight(&removed, "/big", &backend);
    assert!(backend.wait_until(spawned::WAIT, |b| b.bytes_written() >= LEN));
    let mut next = cfg.clone();
    next.listeners.pop();
    proxy.reload(next).unwrap();
    let r = c.read_response().expect("the whole response");
    assert_eq!(r.status, 200);
    assert!(
        r.body == upkeep_testkit::wire::pattern(LEN, 7),
        "every byte ({} of {LEN})",
        r.body.len()
    );
    assert_eq!(client::get_text(&kept, "/k").0, 200);
    proxy.shutdown();
}
