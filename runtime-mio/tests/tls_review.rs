//! TLS edge cases found in review: reloads that hand TLS connections over, and closes that
//! must not lose records rustls still holds.

use upkeep_core::config::{RouteConfig, ServerConfig, UpstreamConfig};
use upkeep_mio::Proxy;
use upkeep_testkit::backend::{Backend, Behaviour};
use upkeep_testkit::client::get_text;
use upkeep_testkit::loopback_config;
use upkeep_testkit::tls::{Pki, TlsFront, server_config};

/// A warm TLS connection adopted by a reload that renumbers the groups (the first group is
/// removed) belongs to the new configuration's group: when it then fails (the server resets it
/// as it is reused), the failure is logged and counted under the new group, and the worker
/// does not look its server up in the old numbering (it panicked: index out of bounds).
#[test]
fn an_adopted_tls_connection_fails_under_its_new_group() {
    let pki = Pki::new();
    let backend = Backend::builder()
        .name("b")
        .identify()
        .behaviour(Behaviour::ResetReused)
        .start()
        .unwrap();
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
    let failures = proxy.tls_stats().failures();
    assert!(
        failures.iter().any(|(side, why, _)| *why == "io"
            && matches!(side, upkeep_runtime::tls::Side::Upstream { upstream, .. } if upstream == "app")),
        "{failures:?}"
    );
    proxy.shutdown();
}

/// The same without TLS: a warm connection a reload handed over is a pooled connection like any
/// other, so a server that resets it as it is reused is the keepalive race (the request is
/// re-sent on a fresh connection), not a 502.
#[test]
fn an_adopted_connection_reset_on_reuse_is_the_keepalive_race() {
    let backend = Backend::builder()
        .name("b")
        .identify()
        .behaviour(Behaviour::ResetReused)
        .start()
        .unwrap();
    let config = loopback_config(vec![backend.addr()], 1);
    let proxy = Proxy::start(config.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert_eq!(get_text(&listen, "/one"), (200, "b GET /one".into()));
    proxy.reload(config).unwrap();
    assert_eq!(get_text(&listen, "/two"), (200, "b GET /two".into()));
    assert_eq!(backend.accepted(), 2);
    proxy.shutdown();
}
