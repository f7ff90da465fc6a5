//! The smol proxy's own lifecycle: several workers on one port, graceful drain, stop, binding
//! errors, Unix socket files. (Request handling is covered by the shared scenarios.)

use std::net::TcpListener;
use std::time::Duration;

use upkeep_core::Address;
use upkeep_smol::Proxy;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client};
use upkeep_testkit::{TempDir, loopback_config as config, tcp_addr, within};

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
