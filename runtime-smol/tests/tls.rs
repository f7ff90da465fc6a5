//! TLS on the smol runtime, through the same shared layer as the mio runtime: the proxy with
//! TLS on both sides (curl through it; a second connection resumes), and the fan-out client
//! toward TLS servers (resumption across its connections, SNI, a refused certificate as a 502
//! that does not mark the server down).

use std::time::Duration;

use upkeep_core::Address;
use upkeep_core::config::{ListenerTls, ServerConfig, UpstreamConfig};
use upkeep_runtime::tls::Side;
use upkeep_smol::{Client, Request};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::loopback_config;
use upkeep_testkit::tls::{Pki, TlsFront, server_config};

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    smol::block_on(futures_lite::future::or(async { Some(f.await) }, async {
        smol::Timer::after(Duration::from_secs(60)).await;
        None
    }))
    .expect("test finished within 60 s")
}

#[test]
fn curl_through_the_smol_proxy_with_tls_on_both_sides() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let front = TlsFront::start(server_config(&pki.leaf(&["127.0.0.1"])), backend.addr()).unwrap();
    let leaf = pki.leaf(&["localhost"]);
    let mut config = loopback_config(vec![front.addr()], 1);
    config.listeners[0].tls = Some(ListenerTls::single(leaf.cert_str(), leaf.key_str()));
    config.upstreams[0].tls = Some(pki.upstream_tls(None));
    // No pooling: each request opens (and resumes) an upstream connection.
    config.upstreams[0].keepalive = 0;
    let proxy = upkeep_smol::Proxy::start(config).unwrap();
    let Address::Tcp(a) = &proxy.listen_addrs()[0] else {
        panic!("TCP");
    };
    let text = pki.curl(a.port(), &["/one", "/two"]);
    assert!(text.contains("b GET /one\n200"), "{text}");
    assert!(text.contains("b GET /two\n200"), "{text}");
    for r in backend.log() {
        assert_eq!(r.header("x-forwarded-proto"), Some("https"), "{r:?}");
    }
    assert_eq!(
        front.handshakes(),
        (1, 1),
        "the second upstream connection resumed"
    );
    let stats = proxy.tls_stats();
    assert_eq!(
        stats.handshake_counts(|s| matches!(s, Side::Listener(_))),
        (1, 0)
    );
    assert_eq!(
        stats.handshake_counts(|s| matches!(s, Side::Upstream { .. })),
        (1, 1)
    );
}

#[test]
fn the_fan_out_client_pools_and_resumes_tls_connections() {
    let pki = Pki::new();
    let backend = Backend::builder().name("b").identify().start().unwrap();
    let front = TlsFront::start(server_config(&pki.leaf(&["app.test"])), backend.addr()).unwrap();
    let group = |name: &str, keepalive| UpstreamConfig {
        tls: Some(pki.upstream_tls(Some("app.test"))),
        keepalive,
        ..UpstreamConfig::new(name, vec![ServerConfig::new(front.addr())])
    };
    let client = Client::new(vec![group("pooled", 1024), group("unpooled", 0)]).unwrap();
    run(async {
        for i in 0..10 {
            let r = client
                .send("pooled", Request::get(format!("/p{i}")))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap(), format!("b GET /p{i}").as_bytes());
        }
        for i in 0..3 {
            let r = client
                .send("unpooled", Request::get(format!("/u{i}")))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
        }
    });
    // The pooled group: one connection, one full handshake. The unpooled group has the very
    // same TLS settings, so it shares the configuration and resumes that session on each of
    // its connections. (Groups with other settings never resume each other's sessions: rustls
    // resumes only under the configuration that obtained one.)
    assert_eq!(front.handshakes(), (1, 3));
}

#[test]
fn the_fan_out_client_answers_502_for_a_refused_certificate() {
    let pki = Pki::new();
    let backend = Backend::builder().start().unwrap();
    let front = TlsFront::start(
        server_config(&pki.expired_leaf(&["app.test"])),
        backend.addr(),
    )
    .unwrap();
    let group = UpstreamConfig {
        tls: Some(pki.upstream_tls(Some("app.test"))),
        ..UpstreamConfig::new("app", vec![ServerConfig::new(front.addr())])
    };
    let client = Client::new(vec![group]).unwrap();
    run(async {
        for _ in 0..2 {
            let r = client.send("app", Request::get("/x")).await.unwrap();
            assert_eq!(r.status(), 502);
        }
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.servers[0].failures, 0, "health not blamed");
        assert_eq!(stats.servers[0].connect_failures, 0);
    });
    assert_eq!(backend.requests(), 0, "no request reached the backend");
}
