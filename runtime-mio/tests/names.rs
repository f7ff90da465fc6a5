//! Host names in upstream addresses: resolved at start (`localhost` through the system
//! resolver), re-resolved while running through an injected resolver — an address that
//! disappears is drained (its in-flight request finishes, its pooled connection closes) and
//! takes no more requests — and, for the binary, `check --resolve` and `run` refusing a name that
//! does not resolve while plain `check` accepts it without the network.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upkeep_core::config::ServerConfig;
use upkeep_core::{Address, Config};
use upkeep_mio::Proxy;
use upkeep_runtime::resolve::{Names, Resolver, Watcher};
use upkeep_testkit::TempDir;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{Client, get, in_flight};
use upkeep_testkit::loopback_config;

const BIN: &str = env!("CARGO_BIN_EXE_upkeep");

/// Answers the test controls: host → addresses (whatever port was asked, so that backends on
/// ephemeral ports can stand behind one name).
#[derive(Default)]
struct Fake(Mutex<BTreeMap<String, Vec<SocketAddr>>>);

impl Fake {
    fn set(&self, host: &str, backends: &[&Backend]) {
        let addrs = backends
            .iter()
            .map(|b| match b.addr() {
                Address::Tcp(sa) => sa,
                Address::Unix(_) => unreachable!("TCP backends"),
            })
            .collect();
        self.0.lock().unwrap().insert(host.into(), addrs);
    }
}

impl Resolver for Fake {
    fn resolve(&self, host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        self.0
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
    }
}

fn named_config(host: &str, port: u16) -> Config {
    let mut c = loopback_config(Vec::new(), 1);
    c.upstreams[0].servers = vec![ServerConfig::named(host, port)];
    c
}

#[test]
fn localhost_resolves_through_the_system_resolver() {
    let b = Backend::identify("a").unwrap();
    let Address::Tcp(sa) = b.addr() else {
        unreachable!()
    };
    let proxy = Proxy::start(named_config("localhost", sa.port())).unwrap();
    let servers = &proxy.config().upstreams[0].servers;
    assert!(servers.iter().all(|s| s.host.is_none()), "{servers:?}");
    assert!(servers.iter().any(|s| s.addr == b.addr()), "{servers:?}");
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let r = c.request(&get("/x")).unwrap();
    assert_eq!((r.status, r.text()), (200, "a GET /x".to_string()));
    proxy.shutdown();
}

#[test]
fn an_address_gone_from_the_answer_is_drained_and_takes_no_more_requests() {
    let a = Backend::identify("a").unwrap();
    let b = Backend::slow("b", Duration::from_millis(600)).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("app.test", &[&a, &b]);
    let mut template = named_config("app.test", 80);
    template.upstreams[0].resolve_interval = Duration::from_millis(50);
    let (names, config) = Names::resolve(template, fake.clone()).unwrap();
    assert_eq!(
        config.upstreams[0].servers.len(),
        2,
        "one server per address"
    );
    let proxy = Proxy::start(config).unwrap();
    let listen = proxy.listen_addrs()[0].clone();

    // Both addresses serve; b keeps a pooled connection.
    let mut c = Client::connect(&listen).unwrap();
    for i in 0..10 {
        if a.requests() > 0 && b.requests() > 0 {
            break;
        }
        assert_eq!(c.request(&get(&format!("/warm{i}"))).unwrap().status, 200);
    }
    assert!(
        a.requests() > 0 && b.requests() > 0,
        "round robin over both"
    );
    // A request in flight on b (round robin: the next one after a request to a).
    let mut slow = loop {
        let before = b.requests();
        let r = c.request(&get("/to-a")).unwrap();
        assert_eq!(r.status, 200);
        if b.requests() == before {
            break in_flight(&listen, "/inflight", &b);
        }
    };

    // The resolver thread notices that b is gone; the change is applied like a reload.
    let (tx, changes) = mpsc::channel();
    let watcher = Watcher::start(names, move |config| {
        let _ = tx.send(config);
    })
    .unwrap()
    .expect("resolve_interval is set");
    fake.set("app.test", &[&a]);
    let config = changes
        .recv_timeout(Duration::from_secs(10))
        .expect("the re-resolved configuration");
    assert_eq!(config.upstreams[0].servers.len(), 1);
    assert_eq!(config.upstreams[0].servers[0].addr, a.addr());
    proxy.reload(config).unwrap();
    drop(watcher);

    // In flight on b: finishes.
    let r = slow.read_response().unwrap();
    assert_eq!((r.status, r.text()), (200, "b GET /inflight".to_string()));
    // b's connections (pooled and the one that just finished) close.
    assert!(
        b.wait_until(Duration::from_secs(10), |b| b.open_connections() == 0),
        "b's pooled connections closed: {} open",
        b.open_connections()
    );
    // New requests go to a only.
    let before = b.requests();
    let mut d = Client::connect(&listen).unwrap();
    for i in 0..6 {
        let r = d.request(&get(&format!("/after{i}"))).unwrap();
        assert_eq!((r.status, r.text()), (200, format!("a GET /after{i}")));
    }
    assert_eq!(b.requests(), before);
    proxy.shutdown();
}

fn upkeep(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `.invalid` never resolves (RFC 6761 §6.4).
#[test]
fn a_name_that_does_not_resolve_fails_check_resolve_and_run_but_not_check() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("names.toml");
    let path = path.to_string_lossy().into_owned();
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:0\"]\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\", \"no-such-host.invalid:8080\"]\n",
    )
    .unwrap();
    let out = upkeep(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "plain check needs no network");
    for args in [
        &["check", "--config", &path, "--resolve"][..],
        &["run", "--config", &path],
    ] {
        let out = upkeep(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{path}:5:27: upstream \"app\": server 2: no-such-host.invalid:8080: "
            )),
            "{args:?}: {err}"
        );
    }
    let out = upkeep(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "no-such-host.invalid:8080",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no-such-host.invalid:8080"), "{err}");
}
