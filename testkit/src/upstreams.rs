//! Upstream management scenarios every runtime runs against itself (issue 11): the
//! one-request-at-a-time backend behind `max_conns = 1` with two workers (seed 000), the queue's
//! 503s, a client leaving the queue. [`upstream_scenario_tests!`](crate::upstream_scenario_tests)
//! turns the list into `#[test]`s, like [`scenario_tests!`](crate::scenario_tests).
//!
//! Bounded in time: socket timeouts of at most 10 s, every thread joined through
//! [`within`], no sleep used as an assertion.

use std::time::{Duration, Instant};

use upkeep_core::{Address, Config};

use crate::backend::Backend;
use crate::client::Client;
use crate::serial::SerialBackend;
use crate::{Start, eventually, loopback_config, within};

/// Expands to one `#[test]` per upstream scenario, each calling
/// `upkeep_testkit::upstreams::<name>(start_fn)`.
#[macro_export]
macro_rules! upstream_scenario_tests {
    ($start:expr) => {
        $crate::upstream_scenario_tests!(@each $start;
            single_request_backend_two_workers,
            queue_full_and_expired_answer_503_with_retry_after,
            a_client_leaving_the_queue_frees_its_place,
            admin_api_drain_down_and_up,
        );
    };
    (@each $start:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::upstreams::$name($start);
            }
        )*
    };
}

/// What the single-request scenario measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figures {
    /// Requests answered 200.
    pub answered: usize,
    /// Requests sent.
    pub sent: usize,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Connections the backend accepted.
    pub backend_connections: usize,
    /// Times the backend found a second connection waiting while one was open.
    pub overlaps: usize,
    /// Idle connections handed from one worker to another (`upkeep_upstream_handovers_total`).
    pub handovers: u64,
}

/// Seed 000's measurement: `clients` clients × `requests` requests each, in parallel, against a
/// backend that serves one connection at a time (`delay` per request), behind `max_conns = 1`
/// with `workers` workers and the default queue.
pub fn measure_single_request_backend(
    start: Start,
    workers: usize,
    clients: usize,
    requests: usize,
    delay: Duration,
) -> Figures {
    let backend = SerialBackend::start(delay).unwrap();
    let mut config = loopback_config(vec![backend.addr()], workers);
    config.upstreams[0].servers[0].max_conns = 1;
    config.runtime.admin = Some(Address::Tcp((std::net::Ipv4Addr::LOCALHOST, 0).into()));
    let proxy = start(config);
    let addr = proxy.listen_addrs()[0].clone();
    let began = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                (0..requests)
                    .filter(|r| {
                        client
                            .get(&format!("/c{c}/r{r}"))
                            .is_ok_and(|resp| resp.status == 200)
                    })
                    .count()
            })
        })
        .collect();
    let limit = Duration::from_secs(60) + delay * (clients * requests) as u32 * 4;
    let answered = within("the single-request clients", limit, move || {
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum::<usize>()
    });
    let wall = began.elapsed();
    let metrics = admin(&proxy.admin_addr().unwrap(), "GET", "/metrics").text();
    let figures = Figures {
        answered,
        sent: clients * requests,
        wall,
        backend_connections: backend.accepted(),
        overlaps: backend.overlaps(),
        handovers: crate::client::metric(
            &metrics,
            "upkeep_upstream_handovers_total{upstream=\"default\"}",
        ),
    };
    proxy.stop();
    figures
}

/// Seed 000: eight clients, a backend serving one request at a time, `max_conns = 1` and two
/// workers. Every request is answered 200, the backend never finds a second connection open
/// while it serves one, and one connection carries them all: when the next request waits in
/// the other worker, the idle connection is handed to that worker, not closed for it to open
/// its own.
pub fn single_request_backend_two_workers(start: Start) {
    let f = measure_single_request_backend(start, 2, 8, 15, Duration::from_millis(20));
    eprintln!(
        "single-request backend, 8 clients x 15 requests, 20 ms each, max_conns = 1, \
         workers = 2: {}/{} answered 200 in {:.2} s over {} backend connections ({} overlaps, \
         {} handovers between the workers)",
        f.answered,
        f.sent,
        f.wall.as_secs_f64(),
        f.backend_connections,
        f.overlaps,
        f.handovers
    );
    assert_eq!(f.answered, f.sent, "{f:?}");
    assert_eq!(
        f.overlaps, 0,
        "a second connection while one was open: {f:?}"
    );
    assert_eq!(
        f.backend_connections, 1,
        "one connection, handed between the workers, not one per request: {f:?}"
    );
    // (How often it moved is reported, not asserted: SO_REUSEPORT may, rarely, give all eight
    // clients to one worker.)
}

fn one_slot(backend: &Backend, queue: usize, queue_timeout: Duration) -> Config {
    let mut config = loopback_config(vec![backend.addr()], 1);
    config.runtime.admin = Some(Address::Tcp((std::net::Ipv4Addr::LOCALHOST, 0).into()));
    let g = &mut config.upstreams[0];
    g.servers[0].max_conns = 1;
    g.queue = queue;
    g.queue_timeout = queue_timeout;
    g.read_timeout = Duration::from_secs(20);
    config
}

/// Sends `GET path` on a new connection without reading the answer.
fn send(addr: &Address, path: &str) -> Client {
    let mut c = Client::connect(addr).unwrap();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    c
}

/// Waits until the backend has received `n` requests.
fn arrived(backend: &Backend, n: usize) {
    assert!(
        backend.wait_until(Duration::from_secs(10), |b| b.requests() >= n),
        "{n} requests expected at the backend, {} arrived",
        backend.requests()
    );
}

/// A held request occupies the one slot; the next waits, and after `queue_timeout` is answered
/// 503 with `Retry-After`; with a queue of one, a third request finds it full: 503 at once.
pub fn queue_full_and_expired_answer_503_with_retry_after(start: Start) {
    let backend = Backend::slow("held", Duration::from_millis(1500)).unwrap();
    let proxy = start(one_slot(&backend, 1, Duration::from_millis(300)));
    let addr = proxy.listen_addrs()[0].clone();
    let mut held = send(&addr, "/held");
    arrived(&backend, 1);
    let began = Instant::now();
    let mut waits = send(&addr, "/waits");
    let r = waits.read_response().unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "answered only at queue_timeout"
    );
    // Queue of one: once w2 waits (the admin API shows it), the next is answered at once.
    let mut w2 = send(&addr, "/w2");
    let admin_addr = proxy.admin_addr().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || admin(
            &admin_addr,
            "GET",
            "/upstreams"
        )
        .text()
        .contains("\"queue\":1")),
        "w2 waits in the queue"
    );
    let mut full = send(&addr, "/full");
    let r = full.read_response().unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(held.read_response().unwrap().status, 200);
    // w2 either got the slot after `held` or timed out waiting: never lost, never 502.
    let s = w2.read_response().unwrap().status;
    assert!(s == 200 || s == 503, "{s}");
    assert!(!backend.log().iter().any(|r| r.target == "/full"));
    proxy.stop();
}

/// A client that leaves while its request waits gives its place up at once: the backend never
/// sees that request, and the place goes to the next client.
pub fn a_client_leaving_the_queue_frees_its_place(start: Start) {
    let backend = Backend::slow("held", Duration::from_millis(800)).unwrap();
    let proxy = start(one_slot(&backend, 1, Duration::from_secs(20)));
    let addr = proxy.listen_addrs()[0].clone();
    let mut held = send(&addr, "/held");
    arrived(&backend, 1);
    let leaver = send(&addr, "/left");
    drop(leaver);
    // Its place frees at once: a request sent now waits instead of being refused (retried
    // until the leaver's close has reached the proxy).
    let mut next = None;
    let got = eventually(Duration::from_secs(5), || {
        let mut c = send(&addr, "/next");
        match c.read_response() {
            Ok(r) if r.status == 503 => false,
            Ok(r) => {
                next = Some(r);
                true
            }
            Err(_) => false,
        }
    });
    assert!(got, "the leaver's place was given to the next request");
    assert_eq!(next.unwrap().status, 200);
    assert_eq!(held.read_response().unwrap().status, 200);
    assert!(
        !backend.log().iter().any(|r| r.target == "/left"),
        "the request of a client that left never reaches the backend"
    );
    proxy.stop();
}

/// `method path` on the admin listener: the response.
fn admin(addr: &Address, method: &str, path: &str) -> crate::client::Response {
    let mut c = Client::connect(addr).unwrap();
    c.request(format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .unwrap()
}

/// The admin API's answers and errors, and what a drain does with a request in flight (it
/// finishes, its connection closes instead of returning to the pool, no new request arrives),
/// `down` closing an idle pooled connection at once, and `up` again.
pub fn admin_api_drain_down_and_up(start: Start) {
    let backend = Backend::slow("a", Duration::from_millis(300)).unwrap();
    let mut config = loopback_config(vec![backend.addr()], 1);
    config.runtime.admin = Some(Address::Tcp((std::net::Ipv4Addr::LOCALHOST, 0).into()));
    let proxy = start(config);
    let addr = proxy.listen_addrs()[0].clone();
    let admin_addr = proxy.admin_addr().unwrap();
    // The listing.
    let r = admin(&admin_addr, "GET", "/upstreams");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.text();
    for field in [
        "\"name\":\"default\"",
        "\"index\":0",
        "\"state\":\"up\"",
        "\"health\":\"up\"",
        "\"queue\":0",
        "\"idle\":0",
        "\"requests\":0",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    // Errors.
    let r = admin(&admin_addr, "POST", "/upstreams");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = admin(&admin_addr, "GET", "/upstreams/default/servers/0/drain");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(
        admin(&admin_addr, "POST", "/upstreams/nope/servers/0/drain").status,
        404
    );
    assert_eq!(
        admin(&admin_addr, "POST", "/upstreams/default/servers/1/drain").status,
        404
    );
    // A request in flight when the server is drained finishes; its connection then closes.
    let mut warm = Client::connect(&addr).unwrap();
    assert_eq!(warm.get("/warm").unwrap().status, 200);
    let mut inflight = send(&addr, "/inflight");
    arrived(&backend, 2);
    let r = admin(&admin_addr, "POST", "/upstreams/default/servers/0/drain");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"state\":\"drain\""), "{}", r.text());
    assert_eq!(inflight.read_response().unwrap().status, 200);
    assert!(
        backend.wait_until(Duration::from_secs(10), |b| b.open_connections() == 0),
        "the drained server's connection closed instead of being pooled"
    );
    // No new request reaches it.
    assert_eq!(warm.get("/refused").unwrap().status, 502);
    assert_eq!(backend.requests(), 2);
    // Up again: traffic and pooling resume.
    let r = admin(&admin_addr, "POST", "/upstreams/default/servers/0/up");
    assert!(r.text().contains("\"state\":\"up\""), "{}", r.text());
    assert_eq!(warm.get("/back").unwrap().status, 200);
    assert!(backend.wait_until(Duration::from_secs(10), |b| b.open_connections() == 1));
    let listed = admin(&admin_addr, "GET", "/upstreams").text();
    assert!(listed.contains("\"idle\":1"), "{listed}");
    // Down: the idle pooled connection closes at once.
    let r = admin(&admin_addr, "POST", "/upstreams/default/servers/0/down");
    assert!(r.text().contains("\"state\":\"down\""), "{}", r.text());
    assert!(
        backend.wait_until(Duration::from_secs(10), |b| b.open_connections() == 0),
        "the idle connection to a server set down is closed at once"
    );
    assert_eq!(warm.get("/down").unwrap().status, 502);
    proxy.stop();
}
