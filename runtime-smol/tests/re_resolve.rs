//! `resolve_interval` in the fan-out client (issue 16, item 4): an injected resolver answers
//! two backends for a name, then one — the removed backend stops getting requests, its pooled
//! (warm) connections close (the backend sees them go), and a request in flight on it during
//! the change completes; then a new one joins (warm at once, and it gets requests); then the
//! name stops resolving and the last addresses stay. Requests sent all along, across every
//! change, each get exactly their own answer.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use upkeep_core::Address;
use upkeep_core::config::{ListenerTls, ServerConfig, ServerState, UpstreamConfig};
use upkeep_runtime::resolve::Resolver;
use upkeep_smol::{Client, Request};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{Client as TestClient, get as http_get};
use upkeep_testkit::loopback_config;
use upkeep_testkit::tls::{Pki, TlsFront, server_config};

/// Generous: two cores shared by several builds.
const WITHIN: Duration = Duration::from_secs(20);

/// Answers the test controls: host → the addresses of some backends (whatever port was asked,
/// so that backends on ephemeral ports stand behind one name); counts the lookups.
#[derive(Default)]
struct Fake {
    answers: Mutex<BTreeMap<String, Vec<SocketAddr>>>,
    lookups: AtomicUsize,
}

impl Fake {
    fn set(&self, host: &str, backends: &[&Backend]) {
        let addrs: Vec<Address> = backends.iter().map(|b| b.addr()).collect();
        self.set_addrs(host, &addrs);
    }

    fn set_addrs(&self, host: &str, addrs: &[Address]) {
        let addrs = addrs.iter().map(tcp).collect();
        self.answers.lock().unwrap().insert(host.into(), addrs);
    }

    fn forget(&self, host: &str) {
        self.answers.lock().unwrap().remove(host);
    }
}

impl Resolver for Fake {
    fn resolve(&self, host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        self.lookups.fetch_add(1, SeqCst);
        self.answers
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
    }
}

fn tcp(a: &Address) -> SocketAddr {
    match a {
        Address::Tcp(sa) => *sa,
        Address::Unix(_) => unreachable!("TCP backends"),
    }
}

/// Polls `cond` until it holds or `WITHIN` passes.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + WITHIN;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Sends (with `send`) until `backend` has had a request, at most 8 times.
fn serves(backend: &Backend, mut send: impl FnMut(usize)) {
    assert!(
        (0..8).any(|i| {
            send(i);
            backend.requests() > 0
        }),
        "the new backend serves"
    );
}

/// Makes the test's name stop resolving and waits until it was asked a few times since.
fn stop_resolving(fake: &Fake) {
    fake.forget("app.test");
    let asked = fake.lookups.load(SeqCst);
    assert!(
        eventually(|| fake.lookups.load(SeqCst) >= asked + 3),
        "re-resolved while failing"
    );
}

fn get(client: &Client, target: &str) -> (u16, String) {
    smol::block_on(async {
        let r = client.send("app", Request::get(target)).await.unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// A client that counts the requests it sends.
#[derive(Clone)]
struct Counted {
    client: Client,
    sent: Arc<AtomicUsize>,
}

impl Counted {
    fn get(&self, target: &str) -> (u16, String) {
        self.sent.fetch_add(1, SeqCst);
        get(&self.client, target)
    }
}

fn servers(client: &Client) -> usize {
    smol::block_on(client.stats()).unwrap().servers.len()
}

#[test]
fn re_resolution_drains_a_vanished_address_and_adds_a_new_one() {
    let a = Backend::identify("a").unwrap();
    let b = Backend::slow("b", Duration::from_millis(1500)).unwrap();
    let c = Backend::identify("c").unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("app.test", &[&a, &b]);
    let mut g = UpstreamConfig::new("app", vec![ServerConfig::named("app.test", 80)]);
    g.resolve_interval = Duration::from_millis(50);
    g.min_idle = 1;
    let mut config = upkeep_core::Config::simple(Address::Unix(String::new()), Vec::new());
    config.upstreams = vec![g];
    let client = Counted {
        client: Client::with_resolver(config, fake.clone()).unwrap(),
        sent: Arc::default(),
    };
    assert_eq!(servers(&client.client), 2, "one server per address");
    assert!(
        b.wait_until(WITHIN, |b| b.open_connections() == 1),
        "b's warm connection"
    );

    // A request in flight on b while the name loses it.
    let before = b.requests();
    let in_flight = {
        let client = client.clone();
        std::thread::spawn(move || {
            // Round robin: some request among a few lands on b.
            (0..8)
                .map(|i| client.get(&format!("/slow{i}")))
                .find(|(_, body)| body.starts_with("b "))
        })
    };
    assert!(
        b.wait_until(WITHIN, |b| b.requests() > before),
        "a request reached b"
    );
    // b keeps a warm idle connection beside the busy one.
    assert!(
        b.wait_until(WITHIN, |b| b.open_connections() == 2),
        "b: one busy, one warm ({} open)",
        b.open_connections()
    );
    fake.set("app.test", &[&a]);
    assert!(
        eventually(|| servers(&client.client) == 1),
        "the change applied"
    );
    // The warm connection closes now, while the request is still in flight.
    assert!(
        b.wait_until(WITHIN, |b| b.open_connections() == 1),
        "b's idle connection closed: {} open",
        b.open_connections()
    );
    let (status, body) = in_flight
        .join()
        .unwrap()
        .expect("a request went to b and completed");
    assert_eq!(status, 200);
    assert!(body.starts_with("b GET /slow"), "{body}");
    assert!(
        b.wait_until(WITHIN, |b| b.open_connections() == 0),
        "b's last connection closed after its request: {} open",
        b.open_connections()
    );
    let after = b.requests();
    for i in 0..6 {
        let (status, body) = client.get(&format!("/after{i}"));
        assert_eq!((status, body), (200, format!("a GET /after{i}")));
    }
    assert_eq!(b.requests(), after, "no request reaches b any more");

    // From here on, requests all along from another thread, across the next changes: each
    // gets its own answer.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (client, stop) = (client.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(SeqCst) {
                let target = format!("/bg{sent}");
                let (status, body) = client.get(&target);
                if status != 200 {
                    let stats = smol::block_on(client.client.stats()).unwrap();
                    panic!("{target}: {status} {body}; {:?}", stats.servers);
                }
                assert!(
                    body == format!("a GET {target}") || body == format!("c GET {target}"),
                    "{target}: {body}"
                );
                sent += 1;
            }
            sent
        })
    };

    // c joins: warm at once, then it serves.
    fake.set("app.test", &[&a, &c]);
    assert!(eventually(|| servers(&client.client) == 2), "c joined");
    assert!(
        c.wait_until(WITHIN, |c| c.open_connections() >= 1),
        "c's warm connection"
    );
    // (Counted at the backend: the other thread's requests interleave with these.)
    serves(&c, |i| {
        client.get(&format!("/c{i}"));
    });

    // The name stops resolving: a and c stay.
    stop_resolving(&fake);
    assert_eq!(servers(&client.client), 2, "the last addresses kept");
    let (at_a, at_c) = (a.requests(), c.requests());
    assert!(
        (0..8).any(|i| {
            client.get(&format!("/kept{i}"));
            a.requests() > at_a && c.requests() > at_c
        }),
        "both a and c still serve"
    );
    assert_eq!(b.requests(), after);

    stop.store(true, SeqCst);
    let sent = background.join().unwrap();
    assert!(sent > 0);
    // Every request reached exactly one backend exactly once: none lost, none sent twice.
    assert_eq!(
        a.requests() + b.requests() + c.requests(),
        client.sent.load(SeqCst),
        "requests at the backends = requests sent"
    );
}

#[test]
fn max_conns_holds_across_a_change() {
    let a = Backend::slow("a", Duration::from_millis(3000)).unwrap();
    let c = Backend::identify("c").unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("app.test", &[&a]);
    let mut named = ServerConfig::named("app.test", 80);
    named.max_conns = 1;
    let mut g = UpstreamConfig::new("app", vec![named]);
    g.resolve_interval = Duration::from_millis(50);
    let mut config = upkeep_core::Config::simple(Address::Unix(String::new()), Vec::new());
    config.upstreams = vec![g];
    let client = Client::with_resolver(config, fake.clone()).unwrap();

    // a's one slot is taken by a request of the first server set...
    let slow = {
        let client = client.clone();
        std::thread::spawn(move || get(&client, "/slow"))
    };
    assert!(
        a.wait_until(WITHIN, |a| a.requests() == 1),
        "in flight on a"
    );
    // ...and stays taken in the next one: its requests all go to c meanwhile.
    fake.set("app.test", &[&a, &c]);
    assert!(eventually(|| servers(&client) == 2), "c joined");
    for i in 0..4 {
        assert_eq!(
            get(&client, &format!("/n{i}")),
            (200, format!("c GET /n{i}"))
        );
    }
    assert_eq!(a.accepted(), 1, "no second connection to a");
    assert_eq!(slow.join().unwrap(), (200, "a GET /slow".to_string()));
    // The slot is free again, for the new set.
    assert!(
        (0..8).any(|i| get(&client, &format!("/m{i}")).1.starts_with("a ")),
        "a serves again"
    );
}

/// The snapshot's view of `backend` in group "default": its state while a live core has it.
fn state_in(proxy: &upkeep_smol::ProxyHandle, backend: &Backend) -> Option<ServerState> {
    state_of(proxy, &backend.addr())
}

/// [`state_in`] by address.
fn state_of(proxy: &upkeep_smol::ProxyHandle, addr: &Address) -> Option<ServerState> {
    let key = ("default".to_string(), addr.to_string());
    proxy.snapshot().servers.get(&key).and_then(|s| s.state)
}

/// A request on a fresh connection that is in flight at `backend` (a slow one) when this
/// returns; the others, answered by other backends, are dropped.
fn in_flight_at(listen: &Address, backend: &Backend) -> TestClient {
    for i in 0..16 {
        let before = backend.requests();
        let mut c = TestClient::connect(listen).unwrap();
        c.send(&http_get(&format!("/inflight{i}"))).unwrap();
        if backend.wait_until(Duration::from_millis(500), |b| b.requests() > before) {
            return c;
        }
        c.read_response().unwrap();
    }
    panic!("no request reached the slow backend");
}

#[test]
fn the_smol_proxy_applies_re_resolution_in_every_worker() {
    let a = Backend::identify("a").unwrap();
    let b = Backend::slow("b", Duration::from_millis(2000)).unwrap();
    let c = Backend::identify("c").unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("app.test", &[&a, &b]);
    let mut config = loopback_config(Vec::new(), 2);
    config.upstreams[0].servers = vec![ServerConfig::named("app.test", 80)];
    config.upstreams[0].resolve_interval = Duration::from_millis(50);
    config.upstreams[0].min_idle = 1;
    let proxy = upkeep_smol::Proxy::start_with_resolver(config, fake.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    assert_eq!(state_in(&proxy, &b), Some(ServerState::Up));
    // Each worker keeps a warm connection to b.
    assert!(
        b.wait_until(WITHIN, |b| b.open_connections() == 2),
        "{} open",
        b.open_connections()
    );
    // A keep-alive client, idle when the change comes.
    let mut kept = TestClient::connect(&listen).unwrap();
    assert_eq!(kept.request(&http_get("/k0")).unwrap().status, 200);

    let mut slow = in_flight_at(&listen, &b);
    fake.set("app.test", &[&a]);
    assert!(
        eventually(|| state_in(&proxy, &b).is_none()),
        "every worker applied the change"
    );
    // The warm connections close while the request is still in flight...
    assert!(
        b.wait_until(WITHIN, |b| b.open_connections() == 1),
        "b's idle connections closed: {} open",
        b.open_connections()
    );
    // ...which completes.
    let r = slow.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("b GET /inflight"), "{}", r.text());
    assert!(
        b.wait_until(WITHIN, |b| b.open_connections() == 0),
        "{} open",
        b.open_connections()
    );
    // The idle client connection lives on, on the new server set; new ones too.
    let after = b.requests();
    for i in 0..4 {
        let r = kept.request(&http_get(&format!("/k{}", i + 1))).unwrap();
        assert_eq!((r.status, r.text()), (200, format!("a GET /k{}", i + 1)));
        let r = TestClient::connect(&listen)
            .unwrap()
            .request(&http_get(&format!("/n{i}")))
            .unwrap();
        assert_eq!((r.status, r.text()), (200, format!("a GET /n{i}")));
    }
    assert_eq!(b.requests(), after, "no request reaches b any more");

    // c joins, warm at once, and serves.
    fake.set("app.test", &[&a, &c]);
    assert!(eventually(|| state_in(&proxy, &c).is_some()), "c joined");
    assert!(
        c.wait_until(WITHIN, |c| c.open_connections() >= 2),
        "c's warm connections"
    );
    serves(&c, |i| {
        kept.request(&http_get(&format!("/c{i}"))).unwrap();
    });

    // The name stops resolving: a and c stay.
    stop_resolving(&fake);
    assert_eq!(state_in(&proxy, &c), Some(ServerState::Up));
    assert_eq!(state_in(&proxy, &a), Some(ServerState::Up));
    let r = kept.request(&http_get("/last")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(b.requests(), after);
    proxy.shutdown();
}

#[test]
fn a_client_busy_during_the_change_moves_over_after_its_response_and_a_drain_ends_both() {
    let a = Backend::identify("a").unwrap();
    let b = Backend::slow("b", Duration::from_millis(1500)).unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("app.test", &[&a, &b]);
    let mut config = loopback_config(Vec::new(), 1);
    config.upstreams[0].servers = vec![ServerConfig::named("app.test", 80)];
    config.upstreams[0].resolve_interval = Duration::from_millis(50);
    let proxy = upkeep_smol::Proxy::start_with_resolver(config, fake.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();

    // Busy on the old server set when the change comes: answered there, then the connection
    // moves to the new set and its next request goes to a.
    let mut busy = in_flight_at(&listen, &b);
    fake.set("app.test", &[&a]);
    assert!(eventually(|| state_in(&proxy, &b).is_none()), "applied");
    let r = busy.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.connection_has("close"), "kept alive across the change");
    // (On the old set, round robin would send some of these to b.)
    for i in 0..4 {
        let r = busy.request(&http_get(&format!("/next{i}"))).unwrap();
        assert_eq!((r.status, r.text()), (200, format!("a GET /next{i}")));
    }

    // A drain while a request is still in flight on the previous set: it finishes, its
    // connection then closes, and the worker exits.
    fake.set("app.test", &[&a, &b]);
    assert!(eventually(|| state_in(&proxy, &b).is_some()), "b is back");
    let mut last = in_flight_at(&listen, &b);
    fake.set("app.test", &[&a]);
    assert!(eventually(|| state_in(&proxy, &b).is_none()), "applied");
    proxy.drain();
    let r = last.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(last.closed_within(WITHIN), "closed after its response");
    assert!(
        busy.closed_within(WITHIN),
        "the idle connection closed by the drain"
    );
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        proxy.wait();
        let _ = done.send(());
    });
    exited.recv_timeout(WITHIN).expect("the worker exits");
}

#[test]
fn tls_connections_move_across_a_change_on_both_sides() {
    let pki = Pki::new();
    let a = Backend::identify("a").unwrap();
    let c = Backend::identify("c").unwrap();
    let front =
        |b: &Backend| TlsFront::start(server_config(&pki.leaf(&["app.test"])), b.addr()).unwrap();
    let (front_a, front_c) = (front(&a), front(&c));
    let fake = Arc::new(Fake::default());
    fake.set_addrs("app.test", &[front_a.addr()]);
    let leaf = pki.leaf(&["localhost"]);
    let mut config = loopback_config(Vec::new(), 1);
    config.listeners[0].tls = Some(ListenerTls::single(leaf.cert_str(), leaf.key_str()));
    config.upstreams[0].servers = vec![ServerConfig::named("app.test", 80)];
    config.upstreams[0].tls = Some(pki.upstream_tls(Some("app.test")));
    config.upstreams[0].resolve_interval = Duration::from_millis(50);
    let proxy = upkeep_smol::Proxy::start_with_resolver(config, fake.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut kept = TestClient::connect_tls(&listen, "localhost", pki.client_config()).unwrap();
    let r = kept.request(&http_get("/k0")).unwrap();
    assert_eq!((r.status, r.text()), (200, "a GET /k0".to_string()));
    assert_eq!(front_a.handshakes(), (1, 0));

    fake.set_addrs("app.test", &[front_a.addr(), front_c.addr()]);
    assert!(
        eventually(|| state_of(&proxy, &front_c.addr()).is_some()),
        "c joined"
    );
    // The client's TLS connection moved to the new core, and so did the pooled TLS
    // connection to a: no new handshake with a.
    for i in 1..=6 {
        let r = kept.request(&http_get(&format!("/k{i}"))).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(c.requests() > 0 && a.requests() > 1, "both serve");
    assert_eq!(front_a.handshakes(), (1, 0), "a's connection reused");
    proxy.shutdown();
}

/// Two workers, a kept server with `max_conns = 1` whose one slot a request of the previous
/// server set holds (in flight on one worker's old core) when requests of the new set queue for
/// it — some on the *other* worker. Once the old request finishes its connection closes (the
/// old core drains) and frees the slot in the entry both sets share: every waiting request,
/// whichever worker it waits in, is served in turn, none waits out its `queue_timeout`.
#[test]
fn a_slot_the_old_set_frees_reaches_requests_waiting_in_every_worker() {
    let s = Backend::slow("s", Duration::from_millis(400)).unwrap();
    let z = Backend::identify("z").unwrap();
    let fake = Arc::new(Fake::default());
    fake.set("app.test", &[&s, &z]);
    let mut config = loopback_config(Vec::new(), 2);
    let mut named = ServerConfig::named("app.test", 80);
    named.max_conns = 1;
    config.upstreams[0].servers = vec![named];
    config.upstreams[0].resolve_interval = Duration::from_millis(50);
    config.upstreams[0].queue = 64;
    config.upstreams[0].queue_timeout = Duration::from_secs(15);
    config.upstreams[0].read_timeout = Duration::from_secs(30);
    let proxy = upkeep_smol::Proxy::start_with_resolver(config, fake.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    // s's one slot, held by a request of the first set.
    let mut held = in_flight_at(&listen, &s);
    fake.set("app.test", &[&s]);
    assert!(
        eventually(|| state_in(&proxy, &z).is_none()),
        "every worker applied the change"
    );
    // Requests of the new set, on connections the kernel spreads over both workers.
    let began = Instant::now();
    let waiting: Vec<_> = (0..6)
        .map(|i| {
            let mut c = TestClient::connect(&listen).unwrap();
            c.send(&http_get(&format!("/w{i}"))).unwrap();
            c
        })
        .collect();
    assert_eq!(held.read_response().unwrap().status, 200);
    for (i, mut c) in waiting.into_iter().enumerate() {
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let r = c.read_response().unwrap();
        assert_eq!(
            (r.status, r.text()),
            (200, format!("s GET /w{i}")),
            "after {:?}",
            began.elapsed()
        );
    }
    assert!(
        began.elapsed() < Duration::from_secs(12),
        "served in turn, not after a queue timeout: {:?}",
        began.elapsed()
    );
    proxy.shutdown();
}
