//! The pool features of issue 16 in the fan-out client: a group written as `localhost:PORT`
//! (through the system resolver) is resolved when the client is built, the default `Host`
//! header keeps the name, and a name that does not resolve fails `Client::new` naming it; the
//! upstream socket carries TCP keepalive probes; `min_idle` warm connections are open before
//! the first request.

use std::time::Duration;

use upkeep_core::Address;
use upkeep_core::config::{ServerConfig, UpstreamConfig};
use upkeep_smol::{Client, Request};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::sockets::timers_of_connections_to;

fn port(b: &Backend) -> u16 {
    match b.addr() {
        Address::Tcp(sa) => sa.port(),
        Address::Unix(_) => unreachable!(),
    }
}

#[test]
fn a_named_group_is_resolved_and_probed() {
    let b = Backend::identify("a").unwrap();
    let mut g = UpstreamConfig::new("app", vec![ServerConfig::named("localhost", port(&b))]);
    g.tcp_keepalive = Duration::from_secs(11);
    let client = Client::new([g]).unwrap();
    smol::block_on(async {
        let r = client.send("app", Request::get("/n")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap()[..], b"a GET /n");
    });
    let log = b.log();
    let want = format!("localhost:{}", port(&b));
    assert_eq!(
        log[0].header("host"),
        Some(want.as_str()),
        "the default Host keeps the name"
    );
    if let Some(timers) = timers_of_connections_to(&b.addr()) {
        assert!(
            timers.iter().any(|t| t.starts_with("timer:(keepalive,")),
            "{timers:?}"
        );
    }
}

#[test]
fn a_name_that_does_not_resolve_fails_the_client() {
    let g = UpstreamConfig::new("app", vec![ServerConfig::named("no-such-host.invalid", 80)]);
    let e = Client::new([g]).unwrap_err();
    assert!(e.to_string().contains("no-such-host.invalid:80"), "{e}");
}

#[test]
fn warm_connections_are_open_before_the_first_send() {
    let b = Backend::identify("a").unwrap();
    let mut g = UpstreamConfig::new("app", vec![ServerConfig::new(b.addr())]);
    g.min_idle = 2;
    let client = Client::new([g]).unwrap();
    assert!(
        b.wait_until(Duration::from_secs(10), |b| b.open_connections() == 2),
        "2 warm connections: {} open",
        b.open_connections()
    );
    assert_eq!(b.requests(), 0);
    smol::block_on(async {
        for _ in 0..3 {
            let r = client.send("app", Request::get("/w")).await.unwrap();
            assert_eq!(&r.bytes().await.unwrap()[..], b"a GET /w");
        }
    });
    assert!(b.accepted() <= 3, "{} connections", b.accepted());
}
