//! The smol proxy's own lifecycle: several workers on one port, graceful drain (also when asked
//! twice), stop, binding errors (a second proxy on a served port), Unix socket files; and a
//! half-closed slow client that makes the proxy stop and resume reading its upstream. (Request
//! handling is otherwise covered by the shared scenarios.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use upkeep_core::Address;
use upkeep_smol::Proxy;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client};
use upkeep_testkit::wire::Stream;
// One function under two names: the tests here use either.
use upkeep_testkit::{
    TempDir, loopback_config as config, loopback_config as proxy_config, pattern, tcp_addr, within,
};

const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn two_workers_serve_one_port_each_with_its_own_pool() {
    let backend = Backend::identify("w").unwrap();
    let proxy = Proxy::start(config(vec![backend.addr()], 2)).unwrap();
    let addr = proxy.listen_addrs()[0].clone();
    for i in 0..40 {
        let mut c = Client::connect(&addr).unwrap();
        let r = c.get(&format!("/{i}")).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("w GET /{i}"));
    }
    // 40 short client connections, sequential: each worker's pool needs one connection.
    let accepted = backend.accepted();
    assert!(
        (1..=2).contains(&accepted),
        "{accepted} upstream connections"
    );
    proxy.shutdown();
}

#[test]
fn drain_finishes_the_exchange_in_flight_then_exits() {
    let backend = Backend::slow("slow", Duration::from_millis(500)).unwrap();
    let proxy = Proxy::start(config(vec![backend.addr()], 1)).unwrap();
    let addr = proxy.listen_addrs()[0].clone();
    let mut c = client::in_flight(&addr, "/slow", &backend);
    proxy.drain();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "the request in flight is answered");
    assert_eq!(r.text(), "slow GET /slow");
    assert!(c.closed_within(PATIENCE), "then its connection is closed");
    within("wait() after drain", PATIENCE, move || proxy.wait());
    assert!(
        std::net::TcpStream::connect(tcp_addr(&addr)).is_err(),
        "nothing listens after the drain"
    );
}

#[test]
fn shutdown_closes_idle_client_connections() {
    let backend = Backend::identify("s").unwrap();
    let proxy = Proxy::start(config(vec![backend.addr()], 1)).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    within("shutdown()", PATIENCE, move || proxy.shutdown());
    assert!(c.closed_within(PATIENCE));
}

#[test]
fn start_refuses_a_port_already_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = config(vec![Address::parse("127.0.0.1:1").unwrap()], 1);
    c.listeners[0].addr = Address::Tcp(taken.local_addr().unwrap());
    let err = Proxy::start(c).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn start_refuses_an_invalid_config() {
    let c = config(Vec::new(), 1);
    let err = Proxy::start(c).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn unix_listener_serves_and_its_file_is_removed_on_shutdown() {
    let dir = TempDir::new().unwrap();
    let listen = dir.socket("proxy.sock");
    let backend = Backend::identify("u").unwrap();
    let mut c = config(vec![backend.addr()], 2);
    c.listeners[0].addr = listen.clone();
    let proxy = Proxy::start(c).unwrap();
    assert_eq!(proxy.listen_addrs(), std::slice::from_ref(&listen));
    for i in 0..10 {
        let mut client = Client::connect(&listen).unwrap();
        assert_eq!(
            client.get(&format!("/{i}")).unwrap().text(),
            format!("u GET /{i}")
        );
    }
    proxy.shutdown();
    let Address::Unix(path) = listen else {
        unreachable!()
    };
    assert!(!std::path::Path::new(&path).exists());
}

#[test]
fn a_draining_proxy_hands_its_unix_path_over() {
    upkeep_testkit::listeners::a_draining_proxy_hands_its_unix_path_over(
        Proxy::start,
        upkeep_smol::ProxyHandle::drain,
        upkeep_smol::ProxyHandle::wait,
    );
}

/// Calling `drain()` twice (two parts of an application both shutting down) is still a
/// graceful drain: the exchange in flight is answered.
#[test]
fn proxy_drain_twice_is_still_graceful() {
    let backend = Backend::slow("slow", Duration::from_millis(500)).unwrap();
    let proxy = Proxy::start(proxy_config(vec![backend.addr()], 1)).unwrap();
    let mut c = client::in_flight(&proxy.listen_addrs()[0], "/slow", &backend);
    proxy.drain();
    proxy.drain();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "the request in flight is answered");
    assert_eq!(r.text(), "slow GET /slow");
    assert!(c.closed_within(PATIENCE));
    proxy.shutdown();
}

/// A client that half-closes after its request still gets the whole (large) response, read
/// slowly so the proxy must stop and resume reading the upstream many times.
#[test]
fn proxy_half_closed_slow_client_gets_the_whole_response() {
    const LEN: usize = 8 << 20;
    let backend = Backend::builder().pattern_body(LEN, 3).start().unwrap();
    let proxy = Proxy::start(proxy_config(vec![backend.addr()], 1)).unwrap();
    let mut s = Stream::connect(&proxy.listen_addrs()[0]).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "bounded");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e} after {} bytes", got.len()),
        }
        if got.len() < 2 << 20 && got.len() % 7 == 0 {
            // Slow at first: let the proxy's buffers fill and its upstream reading stop.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got[..head_end].starts_with(b"HTTP/1.1 200"));
    assert!(got[head_end..] == pattern(LEN, 3), "body differs");
    proxy.shutdown();
}

/// A second proxy asked for a port the first is serving is refused, like any other taken port:
/// the workers' SO_REUSEPORT must not let another process or proxy silently join the group
/// and take a share of the connections.
#[test]
fn proxy_second_instance_on_the_same_port_is_refused() {
    let backend = Backend::identify("first").unwrap();
    let first = Proxy::start(proxy_config(vec![backend.addr()], 2)).unwrap();
    let taken = first.listen_addrs()[0].clone();
    let mut c = proxy_config(vec![backend.addr()], 2);
    c.listeners[0].addr = taken.clone();
    match Proxy::start(c) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        Ok(second) => {
            second.shutdown();
            panic!("a second proxy bound {taken} next to the first");
        }
    }
    // The first is unharmed.
    let mut client = client::Client::connect(&taken).unwrap();
    assert_eq!(client.get("/").unwrap().text(), "first GET /");
    first.shutdown();
}
