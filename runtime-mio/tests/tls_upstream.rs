//! TLS upstreams on the mio runtime, against a TLS front that counts handshakes: N requests
//! over one client connection make one upstream handshake; a second worker resumes the session
//! the first obtained; two groups with the same address and different SNI never share a
//! connection; an expired or wrong-name certificate is a 502, counted by reason, and the
//! server's health is not blamed.

use std::collections::BTreeMap;
use std::time::Duration;

use upkeep_core::config::{RouteConfig, ServerConfig, UpstreamConfig, UpstreamTls};
use upkeep_core::{Address, Config};
use upkeep_mio::{Proxy, ProxyHandle};
use upkeep_runtime::tls::Side;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{Client, get_text};
use upkeep_testkit::tls::{Pki, TlsFront, server_config};
use upkeep_testkit::{eventually, loopback_config};

const WAIT: Duration = Duration::from_secs(20);

/// A proxy with `workers` workers in front of `front`, TLS toward it.
fn proxy_to(front: &TlsFront, tls: UpstreamTls, workers: usize) -> ProxyHandle {
    let mut config = loopback_config(vec![front.addr()], workers);
    config.upstreams[0].tls = Some(tls);
    config.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    Proxy::start(config).expect("proxy starts")
}

fn upstream_handshakes(proxy: &ProxyHandle) -> (u64, u64) {
    proxy
        .tls_stats()
        .handshake_counts(|s| matches!(s, Side::Upstream { .. }))
}

/// `/metrics` shows `upkeep_upstream_tls_<what>_total{upstream="default",server=FRONT,<label>} n`.
fn assert_upstream_metric(proxy: &ProxyHandle, front: &TlsFront, what: &str, label: &str, n: u64) {
    let (status, metrics) = get_text(&proxy.admin_addr().unwrap(), "/metrics");
    assert_eq!(status, 200);
    let line = format!(
        "upkeep_upstream_tls_{what}_total{{upstream=\"default\",server=\"{}\",{label}}} {n}\n",
        front.addr()
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
}

#[test]
fn many_requests_over_one_client_connection_make_one_upstream_handshake() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let front = TlsFront::start(server_config(&pki.leaf(&["127.0.0.1"])), backend.addr()).unwrap();
    let proxy = proxy_to(&front, pki.upstream_tls(None), 1);
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    for i in 0..20 {
        let path = format!("/r{i}");
        assert_eq!(c.get_text(&path), (200, format!("b GET {path}")));
    }
    assert_eq!(front.handshakes(), (1, 0));
    assert_eq!(backend.accepted(), 1);
    assert_eq!(upstream_handshakes(&proxy), (1, 0));
    assert_upstream_metric(&proxy, &front, "handshakes", "resumed=\"false\"", 1);
}

#[test]
fn a_second_worker_resumes_the_session_the_first_obtained() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let front = TlsFront::start(server_config(&pki.leaf(&["127.0.0.1"])), backend.addr()).unwrap();
    let proxy = proxy_to(&front, pki.upstream_tls(None), 2);
    let addr = proxy.listen_addrs()[0].clone();
    // New client connections land on either worker (SO_REUSEPORT hashes the source port):
    // send one request per connection until both workers have served one.
    let mut both = false;
    for i in 0..200 {
        let mut c = Client::connect(&addr).unwrap();
        assert_eq!(c.get_text(&format!("/c{i}")).0, 200);
        drop(c);
        let busy = proxy
            .worker_snapshots()
            .iter()
            .filter(|s| s.requests > 0)
            .count();
        if busy == 2 {
            both = true;
            break;
        }
    }
    assert!(
        both,
        "the kernel never spread connections over both workers"
    );
    // One full handshake in the whole process; the other worker resumed.
    let (full, resumed) = front.handshakes();
    assert_eq!(full, 1, "resumed: {resumed}");
    assert!(resumed >= 1);
    assert_eq!(upstream_handshakes(&proxy), (full as u64, resumed as u64));
}

#[test]
fn groups_with_one_address_and_different_sni_never_share_a_connection() {
    let pki = Pki::new();
    let a = Backend::builder().name("a").identify().start().unwrap();
    let b = Backend::builder().name("b").identify().start().unwrap();
    let by_sni = BTreeMap::from([
        ("a.test".to_owned(), a.addr()),
        ("b.test".to_owned(), b.addr()),
    ]);
    let cert = server_config(&pki.leaf(&["a.test", "b.test"]));
    let front = TlsFront::start_routed(cert, a.addr(), by_sni).unwrap();
    let listen = Address::parse("127.0.0.1:0").unwrap();
    let mut config = Config::simple(listen, vec![front.addr()]);
    config.runtime.workers = 1;
    let group = |name: &str, sni: &str| UpstreamConfig {
        tls: Some(pki.upstream_tls(Some(sni))),
        ..UpstreamConfig::new(name, vec![ServerConfig::new(front.addr())])
    };
    config.upstreams = vec![group("ga", "a.test"), group("gb", "b.test")];
    config.routes = ["a", "b"]
        .iter()
        .map(|g| RouteConfig {
            host: None,
            path_prefix: format!("/{g}"),
            upstream: format!("g{g}"),
        })
        .collect();
    let proxy = Proxy::start(config).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    for i in 0..20 {
        for g in ["a", "b"] {
            // A connection opened for one name never carries the other's requests: the
            // answer always comes from the backend that name leads to.
            let path = format!("/{g}/{i}");
            assert_eq!(c.get_text(&path), (200, format!("{g} GET {path}")));
        }
    }
    let sni = front.sni();
    assert_eq!(sni.get("a.test"), Some(&1), "{sni:?}");
    assert_eq!(sni.get("b.test"), Some(&1), "{sni:?}");
    assert_eq!((a.accepted(), b.accepted()), (1, 1));
}

/// Two requests to a server whose certificate we refuse: both 502, both reach the server
/// (it is not marked down), the failure is counted by reason and not as the server's.
fn refused(front: &TlsFront, tls: UpstreamTls, reason: &str) {
    let proxy = proxy_to(front, tls, 1);
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    for _ in 0..2 {
        assert_eq!(c.get_text("/x").0, 502);
    }
    assert!(
        eventually(WAIT, || front.failed() == 2),
        "{}",
        front.failed()
    );
    let failures = proxy.tls_stats().failures();
    assert!(
        failures
            .iter()
            .any(|(s, why, n)| matches!(s, Side::Upstream { .. }) && *why == reason && *n == 2),
        "{failures:?}"
    );
    let snapshot = proxy.snapshot();
    let server = snapshot.servers.values().next().unwrap();
    assert!(server.up, "health not blamed");
    assert_eq!(server.connect_failures, 0);
    assert_upstream_metric(
        &proxy,
        front,
        "failures",
        &format!("reason=\"{reason}\""),
        2,
    );
}

#[test]
fn an_expired_certificate_is_a_502_counted_and_not_the_servers_fault() {
    let pki = Pki::new();
    let backend = Backend::builder().start().unwrap();
    let front = TlsFront::start(
        server_config(&pki.expired_leaf(&["127.0.0.1"])),
        backend.addr(),
    )
    .unwrap();
    refused(&front, pki.upstream_tls(None), "cert_expired");
    assert_eq!(backend.requests(), 0, "no request reached the backend");
}

#[test]
fn a_wrong_name_certificate_is_a_502_counted_and_not_the_servers_fault() {
    let pki = Pki::new();
    let backend = Backend::builder().start().unwrap();
    let front = TlsFront::start(server_config(&pki.leaf(&["right.test"])), backend.addr()).unwrap();
    refused(&front, pki.upstream_tls(Some("wrong.test")), "cert_name");
    assert_eq!(backend.requests(), 0, "no request reached the backend");
}

#[test]
fn verify_false_accepts_any_certificate() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let front = TlsFront::start(
        server_config(&pki.expired_leaf(&["x.test"])),
        backend.addr(),
    )
    .unwrap();
    let tls = UpstreamTls {
        verify: false,
        ..UpstreamTls::default()
    };
    let proxy = proxy_to(&front, tls, 1);
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    assert_eq!(c.get_text("/ok"), (200, "b GET /ok".into()));
}

/// TLS on both sides with bodies far larger than a TLS record, a socket buffer and the
/// write high-water mark: every byte arrives, in order, in both directions.
#[test]
fn large_bodies_cross_tls_on_both_sides_intact() {
    let pki = Pki::new();
    let echo = Backend::builder().echo().start().unwrap();
    let front = TlsFront::start(server_config(&pki.leaf(&["127.0.0.1"])), echo.addr()).unwrap();
    let leaf = pki.leaf(&["localhost"]);
    let mut config = loopback_config(vec![front.addr()], 1);
    config.upstreams[0].tls = Some(pki.upstream_tls(None));
    config.listeners[0].tls = Some(upkeep_core::config::ListenerTls::single(
        leaf.cert_str(),
        leaf.key_str(),
    ));
    config.limits.max_body = 0;
    let proxy = Proxy::start(config).unwrap();
    let mut c =
        Client::connect_tls(&proxy.listen_addrs()[0], "localhost", pki.client_config()).unwrap();
    for (i, len) in [3 * 1024 * 1024 + 17, 100, 1024 * 1024]
        .into_iter()
        .enumerate()
    {
        let body = upkeep_testkit::pattern(len, i as u64);
        let r = c
            .request(&upkeep_testkit::client::post("/echo", &body))
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body == body, "body {i} of {len} bytes came back intact");
    }
    assert_eq!(front.handshakes(), (1, 0));
}

/// A server that accepts TCP and never answers the ClientHello: the connection only counts as
/// connected after the handshake, so the connect timeout bounds the stalled handshake (504),
/// and nothing is written to it.
#[test]
fn the_connect_timeout_bounds_a_stalled_upstream_handshake() {
    let pki = Pki::new();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(silent.local_addr().unwrap());
    let mut config = loopback_config(vec![addr], 1);
    config.upstreams[0].tls = Some(pki.upstream_tls(None));
    config.upstreams[0].connect_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(config).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(c.get_text("/stalled").0, 504);
    assert!(started.elapsed() < WAIT, "bounded by the connect timeout");
    // The server saw a ClientHello and nothing else: no request bytes before the handshake.
    let (mut conn, _) = silent.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = Vec::new();
    let _ = std::io::Read::read_to_end(&mut conn, &mut seen);
    assert_eq!(seen.first(), Some(&0x16), "a TLS handshake record");
    assert!(
        !seen.windows(8).any(|w| w == b"/stalled"),
        "no request before the handshake"
    );
}

/// Mutual TLS: a server that requires a client certificate accepts the group's `cert` / `key`
/// and refuses a group without one (502).
#[test]
fn a_client_certificate_is_presented_when_configured() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let server =
        upkeep_testkit::tls::server_config_requiring_client_cert(&pki.leaf(&["127.0.0.1"]), &pki);
    let front = TlsFront::start(server, backend.addr()).unwrap();
    let client_cert = pki.leaf(&["proxy.test"]);
    let with_cert = UpstreamTls {
        cert: Some(client_cert.cert_str()),
        key: Some(client_cert.key_str()),
        ..pki.upstream_tls(None)
    };
    let proxy = proxy_to(&front, with_cert, 1);
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    assert_eq!(c.get_text("/mtls"), (200, "b GET /mtls".into()));
    let without = proxy_to(&front, pki.upstream_tls(None), 1);
    let mut c = Client::connect(&without.listen_addrs()[0]).unwrap();
    assert_eq!(c.get_text("/no-cert").0, 502);
    assert_eq!(
        backend.requests(),
        1,
        "only the request with a certificate got through"
    );
}
