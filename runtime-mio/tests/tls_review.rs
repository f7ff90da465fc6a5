//! TLS edge cases found in review: reloads that hand TLS connections over, and closes that
//! must not lose records rustls still holds.

use std::time::Duration;

use upkeep_core::config::{RouteConfig, ServerConfig, UpstreamConfig};
use upkeep_mio::Proxy;
use upkeep_testkit::backend::{Backend, Behaviour};
use upkeep_testkit::client::get_text;
use upkeep_testkit::loopback_config;
use upkeep_testkit::tls::{Pki, TlsFront, server_config};

/// A backend `b` that resets a connection when a second request arrives on it.
fn reset_reused() -> Backend {
    Backend::builder()
        .name("b")
        .identify()
        .behaviour(Behaviour::ResetReused)
        .start()
        .unwrap()
}

/// A warm TLS connection adopted by a reload that renumbers the groups (the first group is
/// removed) belongs to the new configuration's group: when it then fails (the server resets it
/// as it is reused), the worker does not look its server up in the old numbering (it
/// panicked: index out of bounds).
#[test]
fn an_adopted_tls_connection_fails_under_its_new_group() {
    let pki = Pki::new();
    let backend = reset_reused();
    let front = TlsFront::start(server_config(&pki.leaf(&["127.0.0.1"])), backend.addr()).unwrap();
    let pad = Backend::identify("pad").unwrap();
    let mut config = loopback_config(vec![pad.addr()], 1);
    let mut app = UpstreamConfig::new("app", vec![ServerConfig::new(front.addr())]);
    app.tls = Some(pki.upstream_tls(None));
    config.upstreams.push(app);
    config.routes = vec![RouteConfig {
        host: None,
        path_prefix: "/".into(),
        upstream: "app".into(),
    }];
    let proxy = Proxy::start(config.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert_eq!(get_text(&listen, "/one"), (200, "b GET /one".into()));
    let mut fewer = config;
    fewer.upstreams.remove(0);
    proxy.reload(fewer).unwrap();
    // The adopted connection is reset as it is reused; the request is re-sent on a fresh one.
    assert_eq!(get_text(&listen, "/two"), (200, "b GET /two".into()));
    assert_eq!(
        backend.accepted(),
        2,
        "the warm connection moved with the reload"
    );
    proxy.shutdown();
}

/// The same without TLS: a warm connection a reload handed over is a pooled connection like any
/// other, so a server that resets it as it is reused is the keepalive race (the request is
/// re-sent on a fresh connection), not a 502.
#[test]
fn an_adopted_connection_reset_on_reuse_is_the_keepalive_race() {
    let backend = reset_reused();
    let config = loopback_config(vec![backend.addr()], 1);
    let proxy = Proxy::start(config.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert_eq!(get_text(&listen, "/one"), (200, "b GET /one".into()));
    proxy.reload(config).unwrap();
    assert_eq!(get_text(&listen, "/two"), (200, "b GET /two".into()));
    assert_eq!(backend.accepted(), 2);
    proxy.shutdown();
}

/// A response the proxy closes after (`Connection: close`), larger than the socket takes at
/// once: the core hands its last bytes to rustls and, its queue empty, closes the connection
/// while rustls still holds records the full socket did not take. They must still reach the
/// client: every body arrives whole. (A Unix listener: its socket buffer
/// does not grow, so some of the sizes below end with a record left over.)
#[test]
fn a_close_after_the_response_loses_no_tls_record() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use upkeep_testkit::tls::rustls_crate as rustls;
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let dir = upkeep_testkit::TempDir::new().unwrap();
    for (i, len) in (150_000..330_000).step_by(12_000).enumerate() {
        let backend = Backend::builder()
            .pattern_body(len, i as u64)
            .start()
            .unwrap();
        let path = dir.path().join(format!("tls{i}.sock"));
        let mut config = loopback_config(vec![backend.addr()], 1);
        config.listeners[0].addr = upkeep_core::Address::Unix(path.display().to_string());
        config.listeners[0].tls = Some(upkeep_core::config::ListenerTls::single(
            leaf.cert_str(),
            leaf.key_str(),
        ));
        config.limits.write_high_water = 4 * 1024 * 1024;
        let proxy = Proxy::start(config).unwrap();
        let sock = UnixStream::connect(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(pki.client_config(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        tls.flush().unwrap();
        // Not reading yet: the proxy fills the socket, hands rustls the rest and closes.
        std::thread::sleep(Duration::from_millis(300));
        let mut got = Vec::new();
        // close_notify itself is best effort (it is lost when it finds the socket full at the
        // close): the end may read as an unexpected EOF, but only after the whole body.
        let _ = tls.read_to_end(&mut got);
        let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..head]);
        assert_eq!(got.len() - head, len, "body {i}: every byte arrived");
        assert!(got[head..] == upkeep_testkit::pattern(len, i as u64)[..]);
        proxy.shutdown();
    }
}

/// A CA, an identifying backend `b`, and a one-worker configuration whose listener is TLS
/// with a certificate for `localhost`.
fn tls_listener() -> (Pki, Backend, upkeep_core::Config) {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let backend = Backend::identify("b").unwrap();
    let mut config = loopback_config(vec![backend.addr()], 1);
    config.listeners[0].tls = Some(upkeep_core::config::ListenerTls::single(
        leaf.cert_str(),
        leaf.key_str(),
    ));
    (pki, backend, config)
}

/// A kept-alive TLS client survives a reload: its connection moves to a new worker with its
/// TLS session, and its next request is answered on the same connection.
#[test]
fn a_reload_keeps_a_kept_alive_tls_client() {
    let (pki, _backend, config) = tls_listener();
    let proxy = Proxy::start(config.clone()).unwrap();
    let mut c = upkeep_testkit::client::Client::connect_tls(
        &proxy.listen_addrs()[0],
        "localhost",
        pki.client_config(),
    )
    .unwrap();
    assert_eq!(c.get_text("/one"), (200, "b GET /one".into()));
    for i in 0..3 {
        proxy.reload(config.clone()).unwrap();
        let path = format!("/after{i}");
        assert_eq!(c.get_text(&path), (200, format!("b GET {path}")));
    }
    let listener = proxy
        .tls_stats()
        .handshake_counts(|s| matches!(s, upkeep_runtime::tls::Side::Listener(_)));
    assert_eq!(listener, (1, 0), "one handshake: the connection lived on");
    proxy.shutdown();
}

/// A reload that turns a plain listener into a TLS one (same address): a plain connection
/// accepted before it is not TLS, so its requests must not be forwarded with
/// `X-Forwarded-Proto: https` (a backend trusts that for secure cookies and redirects).
#[test]
fn a_plain_connection_is_never_forwarded_as_https_after_a_reload() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let backend = Backend::identify("b").unwrap();
    let config = loopback_config(vec![backend.addr()], 1);
    let proxy = Proxy::start(config.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = upkeep_testkit::client::Client::connect(&listen).unwrap();
    assert_eq!(c.get_text("/one"), (200, "b GET /one".into()));
    let mut tls = config;
    tls.listeners[0].tls = Some(upkeep_core::config::ListenerTls::single(
        leaf.cert_str(),
        leaf.key_str(),
    ));
    proxy.reload(tls).unwrap();
    // Either the plain connection goes on as plain HTTP, or it is closed; never "https".
    if let Ok(r) = c.request(&upkeep_testkit::client::get("/two")) {
        assert_eq!(r.status, 200);
    }
    for r in backend.log() {
        assert_eq!(
            r.header("x-forwarded-proto"),
            Some("http"),
            "{} arrived over plain TCP",
            r.target
        );
    }
    proxy.shutdown();
}

/// `upkeep_listener_tls_failures_total` counts TLS failures, not ordinary disconnects: a client
/// that completed its handshake, was answered, then resets its kept-alive connection is not a
/// failed TLS connection (nor is an upstream that resets a pooled one).
#[test]
fn a_reset_after_the_handshake_is_not_a_tls_failure() {
    let (pki, _backend, config) = tls_listener();
    let proxy = Proxy::start(config).unwrap();
    let (mut tls, _) =
        upkeep_testkit::tls::connect(&proxy.listen_addrs()[0], "localhost", pki.client_config())
            .unwrap();
    use std::io::{Read, Write};
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0; 4096];
    let n = tls.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    socket2::SockRef::from(&tls.sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tls);
    assert!(upkeep_testkit::eventually(Duration::from_secs(20), || {
        let (reading, writing, waiting) = proxy.snapshot().activity;
        reading + writing + waiting == 0
    }));
    let failures = proxy.tls_stats().failures();
    assert!(failures.is_empty(), "{failures:?}");
    proxy.shutdown();
}

/// A reload that changes a group's `sni`: the warm connection opened (and verified) for the
/// old name is not adopted, so the next request goes out under the new name.
#[test]
fn a_reload_changing_the_sni_never_reuses_a_connection_opened_for_the_old_name() {
    use std::collections::BTreeMap;
    let pki = Pki::new();
    let a = Backend::identify("a").unwrap();
    let b = Backend::identify("b").unwrap();
    let by_sni = BTreeMap::from([
        ("a.test".to_owned(), a.addr()),
        ("b.test".to_owned(), b.addr()),
    ]);
    let cert = server_config(&pki.leaf(&["a.test", "b.test"]));
    let front = TlsFront::start_routed(cert, a.addr(), by_sni).unwrap();
    let mut config = loopback_config(vec![front.addr()], 1);
    config.upstreams[0].tls = Some(pki.upstream_tls(Some("a.test")));
    let proxy = Proxy::start(config.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert_eq!(get_text(&listen, "/one"), (200, "a GET /one".into()));
    config.upstreams[0].tls = Some(pki.upstream_tls(Some("b.test")));
    proxy.reload(config).unwrap();
    assert_eq!(get_text(&listen, "/two"), (200, "b GET /two".into()));
    assert_eq!(get_text(&listen, "/three"), (200, "b GET /three".into()));
    assert!(
        a.wait_until(Duration::from_secs(20), |a| a.open_connections() == 0),
        "the connection for the old name is closed"
    );
    proxy.shutdown();
}

/// Two groups with the very same TLS settings toward one server (say one for slow routes):
/// sessions either obtains resume the other's connections. (Each group had a `ClientConfig` of
/// its own, and rustls resumes a session only under the configuration that obtained it — so
/// alternating groups took each other's tickets from the shared store, threw them away, and
/// every connection was a full handshake.)
#[test]
fn groups_with_the_same_tls_settings_resume_each_others_sessions() {
    same_server_two_groups(false, (1, 9));
}

/// Two groups toward one server with different TLS settings (here one does not verify): each
/// resumes its own sessions, without taking the other's tickets out of the store.
#[test]
fn groups_with_other_tls_settings_do_not_take_each_others_tickets() {
    same_server_two_groups(true, (2, 8));
}

fn same_server_two_groups(differ: bool, want: (usize, usize)) {
    let pki = Pki::new();
    let backend = Backend::identify("b").unwrap();
    let front = TlsFront::start(server_config(&pki.leaf(&["127.0.0.1"])), backend.addr()).unwrap();
    let mut config = loopback_config(vec![front.addr()], 1);
    let group = |name: &str| UpstreamConfig {
        tls: Some(upkeep_core::config::UpstreamTls {
            verify: !(differ && name == "slow"),
            ..pki.upstream_tls(None)
        }),
        // No pool: every request opens (and resumes) a connection.
        keepalive: 0,
        ..UpstreamConfig::new(name, vec![ServerConfig::new(front.addr())])
    };
    config.upstreams = vec![group("fast"), group("slow")];
    config.routes = ["fast", "slow"]
        .iter()
        .map(|g| RouteConfig {
            host: None,
            path_prefix: format!("/{g}"),
            upstream: (*g).into(),
        })
        .collect();
    let proxy = Proxy::start(config).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    for i in 0..5 {
        for g in ["fast", "slow"] {
            let path = format!("/{g}/{i}");
            assert_eq!(get_text(&listen, &path), (200, format!("b GET {path}")));
        }
    }
    let (full, resumed) = front.handshakes();
    assert_eq!(
        (full, resumed),
        want,
        "one full handshake per configuration, then resumed"
    );
    proxy.shutdown();
}

/// A server that requires a client certificate we do not have refuses us with an alert — in
/// TLS 1.3 only after our side of the handshake is complete. That is our configuration, like
/// a certificate we refuse: a 502, counted as `cert_refused`, and the server's health is not
/// blamed (it was marked down, and the group's other server took all the traffic).
#[test]
fn a_server_refusing_our_client_certificate_is_not_blamed() {
    let pki = Pki::new();
    let backend = Backend::identify("b").unwrap();
    let leaf = pki.leaf(&["127.0.0.1"]);
    let strict = upkeep_testkit::tls::server_config_requiring_client_cert(&leaf, &pki);
    let strict = TlsFront::start(strict, backend.addr()).unwrap();
    let open = TlsFront::start(server_config(&leaf), backend.addr()).unwrap();
    let mut config = loopback_config(vec![strict.addr(), open.addr()], 1);
    config.upstreams[0].tls = Some(pki.upstream_tls(None));
    let proxy = Proxy::start(config).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut codes = Vec::new();
    for i in 0..4 {
        codes.push(get_text(&listen, &format!("/r{i}")).0);
    }
    assert_eq!(
        codes,
        [502, 200, 502, 200],
        "round robin goes on to the strict server"
    );
    let snapshot = proxy.snapshot();
    let server = &snapshot.servers[&("default".to_owned(), strict.addr().to_string())];
    assert!(server.up, "health not blamed: {server:?}");
    let failures = proxy.tls_stats().failures();
    assert!(
        failures
            .iter()
            .any(|(_, why, n)| *why == "cert_refused" && *n == 2),
        "{failures:?}"
    );
    proxy.shutdown();
}
