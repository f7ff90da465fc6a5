//! The mio proxy's admin listener under stress and on a Unix socket: error counts by code
//! while scrapes run concurrently with traffic, a client trickling its request head does not
//! hold up `/ready`, and an admin socket file is removed at exit. (Values after known traffic
//! are in `runtime.rs` and in the shared scenarios.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use upkeep_core::Address;
use upkeep_mio::Proxy;
use upkeep_testkit::backend::{Backend, closed_port};
use upkeep_testkit::client::{Client, get, one_shot};
use upkeep_testkit::{loopback_config as config, tcp_addr as tcp};

mod common;
use common::admin_get;

/// Concurrent scrapes while traffic flows and errors are counted by code.
#[test]
fn metrics_count_errors_by_code_under_concurrent_scrapes() {
    let good = Backend::identify("g").unwrap();
    let mut cfg = config(vec![good.addr()], 2);
    cfg.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    // A second group whose only server is down, routed by path.
    let mut down = cfg.upstreams[0].clone();
    down.name = "down".into();
    down.servers[0].addr = closed_port();
    cfg.upstreams.push(down);
    cfg.routes.push(upkeep_core::config::RouteConfig {
        host: None,
        path_prefix: "/down".into(),
        upstream: "down".into(),
    });
    cfg.routes.push(upkeep_core::config::RouteConfig {
        host: None,
        path_prefix: "/".into(),
        upstream: "default".into(),
    });
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let admin = proxy.admin_addr().unwrap();
    let scrapers: Vec<_> = (0..4)
        .map(|_| {
            let admin = admin.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let r = one_shot(&admin, &get("/metrics")).unwrap();
                    let (s, text) = (r.status, r.text());
                    assert_eq!(s, 200);
                    assert!(text.contains("# TYPE"), "{text}");
                }
            })
        })
        .collect();
    for i in 0..10 {
        let mut c = Client::connect(&listen).unwrap();
        assert_eq!(c.request(&get(&format!("/ok{i}"))).unwrap().status, 200);
        assert_eq!(c.request(&get("/down/x")).unwrap().status, 502);
    }
    for s in scrapers {
        s.join().unwrap();
    }
    let (_, text) = admin_get(&proxy, "/metrics");
    let code = |c: u16| {
        text.lines()
            .find(|l| l.contains(&format!("code=\"{c}\"")) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no code {c} in\n{text}"))
    };
    assert_eq!(code(200), 10);
    assert_eq!(code(502), 10);
    proxy.shutdown();
}

/// A client that trickles its request head byte by byte must not keep the admin listener from
/// answering health checks.
#[test]
fn slow_admin_client_does_not_block_ready() {
    let b = Backend::identify("a").unwrap();
    let mut cfg = config(vec![b.addr()], 1);
    cfg.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    let proxy = Proxy::start(cfg).unwrap();
    let admin = tcp(&proxy.admin_addr().unwrap());
    let mut slow = TcpStream::connect(admin).unwrap();
    let trickle = std::thread::spawn(move || {
        // About 9 s of trickling, one byte every 300 ms, never finishing the head.
        for &byte in b"GET /metrics HTTP/1.1\r\nHost: slowloris-".iter() {
            if slow.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut c = TcpStream::connect(admin).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    c.write_all(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    let got = c.read_exact(&mut buf);
    assert!(got.is_ok(), "/ready not answered: {got:?}");
    assert_eq!(&buf, b"HTTP/1.1 200");
    let _ = trickle.join();
    proxy.shutdown();
}

/// Admin on a Unix socket.
#[test]
fn admin_on_unix_socket() {
    let b = Backend::identify("a").unwrap();
    let dir = upkeep_testkit::wire::TempDir::new().unwrap();
    let path = dir.socket("admin.sock");
    let mut cfg = config(vec![b.addr()], 1);
    cfg.runtime.admin = Some(path.clone());
    let proxy = Proxy::start(cfg).unwrap();
    assert_eq!(proxy.admin_addr(), Some(path.clone()));
    let (s, body) = admin_get(&proxy, "/ready");
    assert_eq!((s, body.as_str()), (200, "ready\n"));
    let (s, body) = admin_get(&proxy, "/status");
    assert_eq!(s, 200);
    assert!(body.starts_with("Active connections:"), "{body}");
    proxy.shutdown();
    let Address::Unix(p) = path else {
        unreachable!()
    };
    assert!(!std::path::Path::new(&p).exists(), "socket file removed");
}
