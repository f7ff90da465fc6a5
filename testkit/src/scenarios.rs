//! The scenario suite every runtime runs against itself: real backends, the runtime's proxy,
//! real clients, all on loopback or Unix sockets. One `pub fn` per scenario taking the runtime's
//! [`Start`]; [`scenario_tests!`](crate::scenario_tests) turns the list into `#[test]`s.
//!
//! Every scenario is bounded in time (socket timeouts of at most 10 s, bounded loops) and asserts
//! behaviour, never speed: timeout scenarios leave wide margins on a busy machine.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, TcpListener};
use std::time::Duration;

use upkeep_core::{Address, Config};

use crate::backend::{Backend, Behaviour, Framing};
use crate::client::{self, Client, Response};
use crate::wire::{self, TempDir};
use crate::{RunningProxy, Start};

/// A started proxy and its first listener's address. Stopped explicitly at the end of a
/// scenario; a failing scenario just drops it (the runtime's handle cleans up on drop).
struct Proxy {
    inner: Option<Box<dyn RunningProxy>>,
    addrs: Vec<Address>,
    admin: Option<Address>,
}

impl Proxy {
    fn start(start: Start, config: Config) -> Proxy {
        let config_has_admin = config.runtime.admin.is_some();
        let inner = start(config);
        let addrs = inner.listen_addrs();
        assert!(!addrs.is_empty(), "the runtime reports its bound listeners");
        for a in &addrs {
            if let Address::Tcp(sa) = a {
                assert_ne!(sa.port(), 0, "listen_addrs() resolves port 0: {addrs:?}");
            }
        }
        let admin = inner.admin_addr();
        assert_eq!(
            admin.is_some(),
            config_has_admin,
            "the runtime reports its admin listener exactly when runtime.admin is set"
        );
        if let Some(Address::Tcp(sa)) = &admin {
            assert_ne!(sa.port(), 0, "admin_addr() resolves port 0");
        }
        Proxy {
            inner: Some(inner),
            addrs,
            admin,
        }
    }

    /// `GET <path>` on the admin listener: (status, body).
    fn admin_get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.as_ref().expect("runtime.admin is set");
        client::get_text(admin, path)
    }

    fn addr(&self) -> Address {
        self.addrs[0].clone()
    }

    fn client(&self) -> Client {
        Client::connect(&self.addr()).expect("connect to the proxy")
    }

    fn stop(mut self) {
        if let Some(p) = self.inner.take() {
            p.stop();
        }
    }
}

fn any_port() -> Address {
    Address::parse("127.0.0.1:0").unwrap()
}

/// `Config::simple` on 127.0.0.1:0 in front of `servers`, with one worker: bounds on upstream
/// connections hold per worker, since each worker keeps its own pool.
pub(crate) fn config(servers: Vec<Address>) -> Config {
    one_worker(Config::simple(any_port(), servers))
}

fn one_worker(mut config: Config) -> Config {
    config.runtime.workers = 1;
    config
}

/// `config` with the admin listener on 127.0.0.1:0.
pub(crate) fn with_admin(mut config: Config) -> Config {
    config.runtime.admin = Some(any_port());
    config
}

/// `config` writing its access log to `access.log` in `dir`; returns the file's path too.
pub(crate) fn with_access_log(mut config: Config, dir: &TempDir) -> (Config, std::path::PathBuf) {
    let path = dir.path().join("access.log");
    config.runtime.access_log = Some(path.to_string_lossy().into_owned());
    (config, path)
}

/// The access log's lines once there are `n` of them (the runtime writes a line shortly after
/// the response: once per loop pass); panics after 10 s, showing what is there.
pub(crate) fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let enough = crate::eventually(Duration::from_secs(10), || read().len() >= n);
    let lines = read();
    assert!(enough, "{n} access log lines expected, found: {lines:#?}");
    lines
}

/// Workers the runtime runs for `config` (0 = one per CPU core).
fn workers(config: &Config) -> usize {
    match config.runtime.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

fn ok(r: &Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: {} {:?}", r.status, r.text());
}

fn ident(name: &str, method: &str, target: &str) -> Vec<u8> {
    format!("{name} {method} {target}").into_bytes()
}

/// 300 sequential requests over one client connection ride one (or, allowing for one race, two)
/// upstream connections.
pub fn pooling_one_client_connection(start: Start) {
    let b = Backend::identify("a").unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    for i in 0..300 {
        let target = format!("/r{i}");
        let r = c.get(&target).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("a", "GET", &target));
    }
    assert_eq!(b.requests(), 300);
    assert!(
        b.accepted() <= 2,
        "300 requests on one client connection opened {} upstream connections",
        b.accepted()
    );
    p.stop();
}

/// 200 client connections of one request each (`Connection: close`) share pooled upstream
/// connections: the client's close never leaks upstream.
pub fn pooling_many_short_client_connections(start: Start) {
    let b = Backend::identify("a").unwrap();
    let cfg = config(vec![b.addr()]);
    let bound = 2 * workers(&cfg) + 2;
    let p = Proxy::start(start, cfg);
    for i in 0..200 {
        let target = format!("/c{i}");
        let mut c = p.client();
        let r = c.request(&client::get_close(&target)).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("a", "GET", &target));
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "the proxy closes a Connection: close client"
        );
    }
    assert_eq!(b.requests(), 200);
    for req in b.log() {
        assert!(
            req.header("connection")
                .is_none_or(|v| !v.to_ascii_lowercase().contains("close")),
            "client's Connection: close leaked upstream: {req:?}"
        );
    }
    assert!(
        b.accepted() <= bound,
        "200 short client connections opened {} upstream connections (bound {bound})",
        b.accepted()
    );
    p.stop();
}

/// `keepalive = 0`: no pooling, one upstream connection per request.
pub fn pool_off_opens_per_request(start: Start) {
    let b = Backend::identify("a").unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.upstreams[0].keepalive = 0;
    let p = Proxy::start(start, cfg);
    let mut c = p.client();
    for i in 0..20 {
        let r = c.get(&format!("/n{i}")).unwrap();
        ok(&r, "pool off");
    }
    assert_eq!(b.requests(), 20);
    assert_eq!(
        b.accepted(),
        20,
        "keepalive = 0 opens a connection per request"
    );
    p.stop();
}

/// A backend that closes after 3 requests per connection (`Connection: close` on the third):
/// no request fails, and the proxy opens exactly the connections needed.
pub fn backend_max_requests_per_connection(start: Start) {
    let b = Backend::builder()
        .name("a")
        .max_requests_per_conn(3)
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    for i in 0..10 {
        let target = format!("/m{i}");
        let r = c.get(&target).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("a", "GET", &target));
    }
    assert_eq!(b.requests(), 10);
    assert_eq!(b.accepted(), 4, "3 + 3 + 3 + 1 requests");
    for req in b.log() {
        assert!(
            req.seq < 3,
            "a 4th request on a closing connection: {req:?}"
        );
    }
    p.stop();
}

/// HTTP/1.0 clients: without Host and keep-alive the connection closes after the response; with
/// `Connection: keep-alive` it stays open. Upstream always speaks HTTP/1.1 with a Host.
pub fn http10_client(start: Start) {
    let b = Backend::identify("a").unwrap();
    let cfg = config(vec![b.addr()]);
    let bound = workers(&cfg);
    let p = Proxy::start(start, cfg);

    let mut c = p.client();
    let r = c.request(b"GET /ten HTTP/1.0\r\n\r\n").unwrap();
    ok(&r, "HTTP/1.0 without Host");
    assert_eq!(r.body, ident("a", "GET", "/ten"));
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "HTTP/1.0 without keep-alive closes"
    );

    let mut c = p.client();
    for t in ["/k1", "/k2", "/k3"] {
        let req = format!("GET {t} HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n");
        let r = c.request(req.as_bytes()).unwrap();
        ok(&r, t);
        assert_eq!(r.body, ident("a", "GET", t));
        assert!(
            r.connection_has("keep-alive"),
            "a kept-alive HTTP/1.0 response says so: {:?}",
            r.headers
        );
        assert!(!r.close_delimited, "a kept-alive response has a length");
    }

    let log = b.log();
    assert_eq!(log.len(), 4);
    for req in &log {
        assert_eq!(req.version, 1, "upstream requests are HTTP/1.1: {req:?}");
        assert_eq!(
            req.headers_named("host").len(),
            1,
            "exactly one Host: {req:?}"
        );
        assert!(!req.header("host").unwrap().is_empty());
        assert!(
            req.header("connection").is_none_or(|v| {
                let v = v.to_ascii_lowercase();
                !v.contains("close") && !v.contains("keep-alive")
            }),
            "client connection semantics leaked upstream: {req:?}"
        );
    }
    assert!(
        b.accepted() <= bound,
        "{} upstream connections for 4 sequential requests",
        b.accepted()
    );
    p.stop();
}

/// Ten requests in one write: ten responses, in order.
pub fn pipelining(start: Start) {
    let b = Backend::identify("a").unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    let reqs: Vec<Vec<u8>> = (0..10).map(|i| client::get(&format!("/p{i}"))).collect();
    let rs = c.pipeline(&reqs).unwrap();
    for (i, r) in rs.iter().enumerate() {
        ok(r, "pipelined");
        assert_eq!(r.body, ident("a", "GET", &format!("/p{i}")), "response {i}");
    }
    // The connection is still usable afterwards.
    let r = c.get("/after").unwrap();
    assert_eq!(r.body, ident("a", "GET", "/after"));
    let targets: Vec<String> = b.log().into_iter().map(|r| r.target).collect();
    let expected: Vec<String> = (0..10)
        .map(|i| format!("/p{i}"))
        .chain(["/after".to_string()])
        .collect();
    assert_eq!(targets, expected, "the backend saw the requests in order");
    p.stop();
}

/// A burst of pipelined requests sent in one go, answered with bodies large enough to hit the
/// write high-water mark while the client reads nothing: the proxy stops reading the client
/// with requests already received (in the kernel, or decrypted and held by TLS) and must resume
/// on its own when the client reads — no new readiness event announces those bytes.
pub fn pipelined_burst_with_backpressure(start: Start) {
    const N: usize = 150;
    let b = Backend::builder()
        .name("p")
        .pattern_body(32 * 1024, 7)
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    // About 21 KB of requests: they fit the socket buffers, so one write sends them all.
    let burst: Vec<u8> = (0..N)
        .flat_map(|i| {
            format!(
                "GET /{i} HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(100)
            )
            .into_bytes()
        })
        .collect();
    c.send(&burst).unwrap();
    // Read nothing for a while: the proxy's queue to us fills and it stops reading requests.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..N {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {i}: {e}"));
        ok(&r, "pipelined under backpressure");
        assert!(r.body == wire::pattern(32 * 1024, 7), "body {i}");
    }
    p.stop();
}

/// A chunked backend response arrives whole, and the upstream connection is reused.
pub fn chunked_response(start: Start) {
    let len = 300_000;
    let b = Backend::builder()
        .pattern_body(len, 3)
        .framing(Framing::Chunked(4096))
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let want = wire::pattern(len, 3);
    let mut c = p.client();
    for i in 0..3 {
        let r = c.get(&format!("/chunked{i}")).unwrap();
        ok(&r, "chunked");
        assert!(
            r.body == want,
            "chunked body {i} differs ({} bytes)",
            r.body.len()
        );
    }
    assert_eq!(
        b.accepted(),
        1,
        "a chunked response leaves the connection reusable"
    );
    p.stop();
}

/// A close-delimited backend response reaches the client complete; that upstream connection is
/// never reused (the backend closed it), so every request opens a new one and none fails.
pub fn close_delimited_response(start: Start) {
    let len = 100_000;
    let b = Backend::builder()
        .pattern_body(len, 5)
        .framing(Framing::CloseDelimited)
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let want = wire::pattern(len, 5);
    let mut c = p.client();
    for i in 0..3 {
        let r = c.get(&format!("/cd{i}")).unwrap();
        ok(&r, "close-delimited");
        assert!(r.body == want, "body {i} differs ({} bytes)", r.body.len());
        if r.close_delimited || r.connection_has("close") {
            c = p.client();
        }
    }
    assert_eq!(b.requests(), 3);
    assert_eq!(b.accepted(), 3);
    p.stop();
}

/// HEAD gets a head without body and the connections (client and upstream) stay in sync.
pub fn head_request(start: Start) {
    let b = Backend::builder().body(vec![b'x'; 1000]).start().unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    let r = c
        .request(b"HEAD /h HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    ok(&r, "HEAD");
    assert!(r.body.is_empty());
    if let Some(cl) = r.header("content-length") {
        assert_eq!(cl, "1000");
    }
    let r = c.get("/g").unwrap();
    ok(&r, "GET after HEAD");
    assert_eq!(r.body, vec![b'x'; 1000]);
    assert_eq!(b.accepted(), 1);
    assert_eq!(b.log()[0].method, "HEAD");
    p.stop();
}

/// 1 MiB up (Content-Length and chunked) and 4 MiB down, byte for byte.
pub fn large_request_and_response_bodies(start: Start) {
    let down = 4 << 20;
    let b = Backend::builder().pattern_body(down, 11).start().unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.limits.max_body = 8 << 20;
    let p = Proxy::start(start, cfg);
    let up = wire::pattern(1 << 20, 12);
    let want = wire::pattern(down, 11);
    let mut c = p.client();

    let r = c.request(&client::post("/up", &up)).unwrap();
    ok(&r, "large POST");
    assert!(
        r.body == want,
        "4 MiB response differs ({} bytes)",
        r.body.len()
    );

    let mut chunked =
        b"POST /up-chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(&wire::chunk_encode(&up, 10_000));
    let r = c.request(&chunked).unwrap();
    ok(&r, "large chunked POST");
    assert!(
        r.body == want,
        "4 MiB response differs ({} bytes)",
        r.body.len()
    );

    let log = b.log();
    assert_eq!(log.len(), 2);
    for req in &log {
        assert!(req.complete, "{} arrived incomplete", req.target);
        assert!(
            req.body == up,
            "{}: the backend received {} bytes, not the 1 MiB sent",
            req.target,
            req.body.len()
        );
    }
    p.stop();
}

/// Where two byte strings first differ, for a failure message that says more than "differs".
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    format!(
        "{} bytes, {} expected, first difference at {at:?}",
        got.len(),
        want.len()
    )
}

/// Bodies large enough to be spliced (`limits.splice_min`, on where the runtime can: the mio
/// runtime on plain connections) arrive exactly as on the copying path: Content-Length and
/// chunked responses to several keep-alive clients at once, slow readers among them (the pipe
/// fills, backpressure holds the upstream), a chunked response made close-delimited for an
/// HTTP/1.0 client, and large Content-Length and chunked uploads — each reaching the other side
/// byte for byte, the backend connection reused throughout.
pub fn zero_copy_bodies(start: Start) {
    let len = 1 << 20;
    let want = wire::pattern(len, 21);
    let plain = Backend::builder().pattern_body(len, 21).start().unwrap();
    let chunked = Backend::builder()
        .pattern_body(len, 21)
        .framing(Framing::Chunked(200_000))
        .start()
        .unwrap();
    let mut cfg = config(vec![plain.addr()]);
    cfg.limits.splice_min = 16 * 1024;
    cfg.limits.write_high_water = 64 * 1024;
    let mut chunked_group = cfg.upstreams[0].clone();
    chunked_group.name = "chunked".into();
    chunked_group.servers[0].addr = chunked.addr();
    cfg.upstreams.push(chunked_group);
    let route = |prefix: &str, upstream: &str| upkeep_core::RouteConfig {
        path_prefix: prefix.into(),
        upstream: upstream.into(),
        host: None,
    };
    let first = cfg.upstreams[0].name.clone();
    cfg.routes = vec![route("/chunked", "chunked"), route("/", &first)];
    let p = Proxy::start(start, cfg);
    let addr = p.addr();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (addr, want) = (&addr, &want);
            s.spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                for i in 0..4 {
                    let path = if (t + i) % 2 == 0 {
                        "/plain"
                    } else {
                        "/chunked"
                    };
                    c.send(&client::get(&format!("{path}/{t}/{i}"))).unwrap();
                    if t % 2 == 1 {
                        // A slow reader: the proxy's pipe and the upstream wait for it.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let r = c.read_response().unwrap();
                    ok(&r, path);
                    assert!(
                        r.body == *want,
                        "{path}/{t}/{i}: {}",
                        first_difference(&r.body, want)
                    );
                }
            });
        }
    });
    // HTTP/1.0: the chunked response goes out close-delimited, its chunks' data as they came.
    let mut c = p.client();
    c.send(b"GET /chunked/old HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    ok(&r, "HTTP/1.0");
    assert!(
        r.body == want,
        "HTTP/1.0: {}",
        first_difference(&r.body, &want)
    );

    let up = wire::pattern(3 << 20, 22);
    let mut c = p.client();
    let r = c.request(&client::post("/plain/up", &up)).unwrap();
    ok(&r, "large POST");
    let mut raw =
        b"POST /plain/up-chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    raw.extend_from_slice(&wire::chunk_encode(&up, 300_000));
    let r = c.request(&raw).unwrap();
    ok(&r, "large chunked POST");
    let log = plain.log();
    let uploads: Vec<_> = log.iter().filter(|r| r.target.contains("/up")).collect();
    assert_eq!(uploads.len(), 2);
    for req in uploads {
        assert!(req.complete, "{} arrived incomplete", req.target);
        assert!(
            req.body == up,
            "{}: {}",
            req.target,
            first_difference(&req.body, &up)
        );
    }
    // Keep-alive on both sides throughout: one backend connection per concurrent client.
    assert!(plain.accepted() <= 4, "{} connections", plain.accepted());
    assert!(
        chunked.accepted() <= 4,
        "{} connections",
        chunked.accepted()
    );
    p.stop();
}

/// The backend closes idle connections after 200 ms; requests come 300–500 ms apart. The proxy
/// notices each close and never answers 502.
pub fn backend_keepalive_shorter_than_ours(start: Start) {
    let b = Backend::builder()
        .name("a")
        .idle_timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    let gaps = [300, 400, 500];
    for i in 0..10 {
        let target = format!("/s{i}");
        let r = c.get(&target).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("a", "GET", &target));
        std::thread::sleep(Duration::from_millis(gaps[i % gaps.len()]));
    }
    // Also on fresh client connections (a first request on a connection is the one a browser
    // cannot retry).
    for i in 0..4 {
        let target = format!("/f{i}");
        let r = p.client().get(&target).unwrap();
        ok(&r, &target);
        std::thread::sleep(Duration::from_millis(gaps[i % gaps.len()]));
    }
    assert!(
        b.accepted() >= 2,
        "the backend's idle timeout did close connections (accepted {})",
        b.accepted()
    );
    p.stop();
}

/// One server down (closed port), one up: every request, GET or POST, succeeds.
pub fn backend_down_failover(start: Start) {
    let b = Backend::identify("up").unwrap();
    let p = Proxy::start(start, config(vec![crate::backend::closed_port(), b.addr()]));
    for i in 0..20 {
        let target = format!("/d{i}");
        let mut c = p.client();
        let r = if i % 2 == 0 {
            c.get(&target).unwrap()
        } else {
            c.request(&client::post(&target, b"payload")).unwrap()
        };
        ok(&r, &target);
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        assert_eq!(r.body, ident("up", method, &target));
    }
    assert_eq!(b.requests(), 20);
    p.stop();
}

/// Every server down: 502.
pub fn all_backends_down_502(start: Start) {
    let p = Proxy::start(
        start,
        config(vec![
            crate::backend::closed_port(),
            crate::backend::closed_port(),
        ]),
    );
    for i in 0..3 {
        let r = p.client().get(&format!("/down{i}")).unwrap();
        assert_eq!(r.status, 502, "request {i}: {:?}", r.text());
    }
    p.stop();
}

/// The backend takes 2 s; `read_timeout` is 300 ms: 504, and the request is not resent.
pub fn upstream_read_timeout_504(start: Start) {
    let b = Backend::builder()
        .delay(Duration::from_secs(2))
        .start()
        .unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.upstreams[0].read_timeout = Duration::from_millis(300);
    let p = Proxy::start(start, cfg);
    let r = p.client().get("/slow").unwrap();
    assert_eq!(r.status, 504, "{:?}", r.text());
    assert_eq!(
        b.requests(),
        1,
        "a timed-out request is not retried by default"
    );
    p.stop();
}

/// Backends that close without answering, answer garbage, or reset: 502, never a hang.
pub fn backend_misbehaviour_502(start: Start) {
    for behaviour in [
        Behaviour::CloseWithoutAnswer,
        Behaviour::Garbage,
        Behaviour::Reset,
    ] {
        let b = Backend::builder()
            .behaviour(behaviour.clone())
            .start()
            .unwrap();
        let p = Proxy::start(start, config(vec![b.addr()]));
        let r = p
            .client()
            .request(&client::post("/m", b"data"))
            .unwrap_or_else(|e| panic!("{behaviour:?}: {e}"));
        assert_eq!(r.status, 502, "{behaviour:?}: {:?}", r.text());
        assert!(
            b.requests() >= 1,
            "{behaviour:?}: the request reached the backend"
        );
        p.stop();
    }
}

/// Request smuggling vectors get 400 and close; the smuggled request never reaches the backend.
pub fn smuggling_rejected(start: Start) {
    let b = Backend::identify("a").unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";
    // Rejected from the head alone: nothing reaches the backend.
    let head_cases: Vec<String> = vec![
        format!(
            "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 0, {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: test\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.0\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!("GET / HTTP/1.1\nHost: test\n\n{smuggled}"),
        format!("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{smuggled}"),
    ];
    for case in &head_cases {
        expect_400_and_close(&p, case.as_bytes());
    }
    assert_eq!(
        b.requests(),
        0,
        "a rejected head reached the backend: {:?}",
        b.log()
    );
    // Rejected in the chunked body: the head may have been forwarded, but never a complete
    // request, and never what follows the bad chunk.
    let body_cases = [
        format!(
            "POST /c1 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"
        ),
        format!(
            "POST /c2 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /c3 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /c4 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n{smuggled}"
        ),
    ];
    for case in &body_cases {
        expect_400_and_close(&p, case.as_bytes());
    }
    // A valid request still goes through: the assertions above are not vacuous.
    let r = p.client().get("/valid").unwrap();
    ok(&r, "valid request after the rejected ones");
    let log = b.log();
    for req in &log {
        assert!(
            !req.target.contains("smuggled"),
            "the smuggled request reached the backend: {log:?}"
        );
        if req.target != "/valid" {
            assert!(
                !req.complete,
                "a request with a bad chunked body reached the backend complete: {req:?}"
            );
        }
    }
    assert!(log.iter().any(|r| r.target == "/valid" && r.complete));
    p.stop();
}

fn expect_400_and_close(p: &Proxy, raw: &[u8]) {
    let mut c = p.client();
    let r = c
        .request(raw)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(raw)));
    assert_eq!(
        r.status,
        400,
        "{:?} → {} {:?}",
        String::from_utf8_lossy(raw),
        r.status,
        r.text()
    );
    assert!(
        c.closed_within(Duration::from_secs(8)),
        "the connection closes after 400 for {:?}",
        String::from_utf8_lossy(raw)
    );
}

/// `client_timeouts.header = 500ms`: a client trickling a head is closed, while a normal client
/// on the same proxy is served meanwhile.
pub fn slow_client_header_timeout(start: Start) {
    let b = Backend::identify("a").unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.client_timeouts.header = Duration::from_millis(500);
    let p = Proxy::start(start, cfg);
    let addr = p.addr();
    let slow = std::thread::spawn(move || {
        let mut s = wire::Stream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if s.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n")
            .is_err()
        {
            return true;
        }
        // Up to 10 s of trickling, 20 times the header timeout.
        for _ in 0..100 {
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {} // an error response (408); the close follows
                Err(e) if wire::is_timeout(&e) => {}
                Err(_) => return true,
            }
            if s.write_all(b"X-Slow: 1\r\n").is_err() {
                return true;
            }
        }
        false
    });
    let mut c = p.client();
    for i in 0..5 {
        let r = c.get(&format!("/fast{i}")).unwrap();
        ok(&r, "normal client beside a slow one");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slow.join().unwrap(),
        "a client trickling its head for 10 s was not closed"
    );
    assert!(
        b.log().iter().all(|r| r.target != "/slow"),
        "the trickled request was forwarded"
    );
    p.stop();
}

/// Upgrade: 101, then bytes echoed both ways through the tunnel; the tunnel's upstream
/// connection is never pooled.
pub fn websocket_upgrade(start: Start) {
    let b = Backend::builder().name("ws").upgrade().start().unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    let r = c
        .request(
            b"GET /chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    assert_eq!(r.status, 101, "{:?}", r.headers);
    assert!(
        r.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    );
    let req = &b.log()[0];
    assert!(
        req.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "Upgrade forwarded: {req:?}"
    );
    assert!(
        req.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "Connection: upgrade forwarded: {req:?}"
    );
    for (i, msg) in [
        b"hello".to_vec(),
        wire::pattern(200_000, 9),
        b"bye".to_vec(),
    ]
    .iter()
    .enumerate()
    {
        c.send(msg).unwrap();
        let echoed = c.read_exact_raw(msg.len()).unwrap();
        assert!(echoed == *msg, "message {i} echoed wrong");
    }
    c.shutdown_write().unwrap();
    assert!(
        c.closed_within(Duration::from_secs(8)),
        "the client's half-close reaches the backend, whose close ends the tunnel"
    );
    let r = p.client().get("/after").unwrap();
    ok(&r, "request after a tunnel");
    assert_eq!(r.body, ident("ws", "GET", "/after"));
    assert_eq!(b.accepted(), 2, "the tunnel's connection is not reused");
    p.stop();
}

/// A Unix socket listener in front of a Unix socket backend.
pub fn unix_listener_and_upstream(start: Start) {
    let dir = TempDir::new().unwrap();
    let b = Backend::builder().name("u").unix().start().unwrap();
    let cfg = one_worker(Config::simple(dir.socket("proxy.sock"), vec![b.addr()]));
    let p = Proxy::start(start, cfg);
    assert!(matches!(p.addr(), Address::Unix(_)), "{:?}", p.addr());
    let mut c = p.client();
    for i in 0..5 {
        let target = format!("/unix{i}");
        let r = c.get(&target).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("u", "GET", &target));
    }
    assert_eq!(b.accepted(), 1, "the Unix upstream connection is pooled");
    p.stop();
}

/// An `[::1]` listener in front of an `[::1]` backend (skipped where IPv6 loopback is missing).
pub fn ipv6_listener(start: Start) {
    if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        eprintln!("note: ::1 unavailable here; ipv6_listener skipped");
        return;
    }
    let b = Backend::builder().name("v6").ipv6().start().unwrap();
    let cfg = one_worker(Config::simple(
        Address::parse("[::1]:0").unwrap(),
        vec![b.addr()],
    ));
    let p = Proxy::start(start, cfg);
    match p.addr() {
        Address::Tcp(sa) => assert!(sa.is_ipv6(), "{sa}"),
        other => panic!("{other:?}"),
    }
    let mut c = p.client();
    for i in 0..3 {
        let target = format!("/v6/{i}");
        let r = c.get(&target).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("v6", "GET", &target));
    }
    let log = b.log();
    assert!(
        log[0]
            .header("x-forwarded-for")
            .is_some_and(|v| v.contains("::1")),
        "{log:?}"
    );
    assert_eq!(b.accepted(), 1);
    p.stop();
}

/// Hop-by-hop fields are dropped both ways; X-Forwarded-For/-Proto and Via are added; upstream
/// is HTTP/1.1 keepalive whatever the client's connection semantics.
pub fn hop_by_hop_and_forwarded_headers(start: Start) {
    let b = Backend::builder()
        .name("h")
        .response_header("Connection", "X-Internal")
        .response_header("X-Internal", "secret")
        .response_header("Keep-Alive", "timeout=60")
        .response_header("X-Kept", "yes")
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    let r = c
        .request(
            b"GET /hop HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-End: 2\r\n\r\n",
        )
        .unwrap();
    ok(&r, "hop-by-hop request");
    assert_eq!(r.header("x-internal"), None, "{:?}", r.headers);
    assert_eq!(r.header("keep-alive"), None, "{:?}", r.headers);
    assert_eq!(r.header("x-kept"), Some("yes"));
    let r = c
        .request(
            b"GET /second HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    ok(&r, "second request");

    let log = b.log();
    assert_eq!(log.len(), 2);
    for req in &log {
        assert_eq!(req.version, 1, "HTTP/1.1 upstream: {req:?}");
        for name in ["x-secret", "keep-alive", "proxy-connection"] {
            assert_eq!(req.header(name), None, "{name} forwarded: {req:?}");
        }
        assert!(
            req.headers_named("connection").iter().all(|v| {
                let v = v.to_ascii_lowercase();
                !v.contains("close") && !v.contains("x-secret")
            }),
            "client Connection forwarded: {req:?}"
        );
        assert!(
            req.header("via").is_some_and(|v| v.contains("1.1 ")),
            "Via added: {req:?}"
        );
        let scheme = crate::over_tls::scheme(&p.addr());
        assert_eq!(req.header("x-forwarded-proto"), Some(scheme), "{req:?}");
    }
    assert_eq!(log[0].header("x-end"), Some("2"));
    assert_eq!(log[0].header("x-forwarded-for"), Some("127.0.0.1"));
    let xff = log[1].headers_named("x-forwarded-for").join(", ");
    assert_eq!(xff, "10.0.0.1, 127.0.0.1");
    assert_eq!(
        log[0].conn, log[1].conn,
        "both requests on one upstream connection"
    );
    p.stop();
}

/// The backend writes an unsolicited `408` and closes 50 ms into every idle period (rule 7):
/// the next request gets the real response from a fresh connection, never the stray 408, never
/// a 502.
pub fn stray_408_on_idle_connection(start: Start) {
    let b = Backend::builder()
        .name("a")
        .stray_on_idle(
            Duration::from_millis(50),
            "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    for i in 0..5 {
        let target = format!("/s{i}");
        let r = c.get(&target).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("a", "GET", &target));
        // Ten times the 50 ms before the stray bytes: they are long there when the next
        // request comes, so this tests the pool's watch, not a race.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(b.accepted(), 5, "every stray 408 retired its connection");
    p.stop();
}

/// A pooled connection is reset as the next request arrives on it (rule 12): a GET is retried
/// on a fresh connection and succeeds; a POST is never sent twice and gets 502.
pub fn stale_pooled_connection_retry(start: Start) {
    let b = Backend::builder()
        .name("a")
        .behaviour(Behaviour::ResetReused)
        .start()
        .unwrap();
    let p = Proxy::start(start, config(vec![b.addr()]));
    let mut c = p.client();
    // Each fresh connection answers once; every later request lands on a pooled one first.
    for i in 0..4 {
        let target = format!("/g{i}");
        let r = c.get(&target).unwrap();
        ok(&r, &target);
        assert_eq!(r.body, ident("a", "GET", &target));
    }
    let gets = b.log().iter().filter(|r| r.method == "GET").count();
    assert!(
        gets >= 7,
        "GETs after the first met a reset pooled connection and were retried ({gets} arrivals)"
    );
    let r = p.client().request(&client::post("/pay", b"hello")).unwrap();
    let posts = b.log().iter().filter(|r| r.target == "/pay").count();
    assert_eq!(posts, 1, "a POST that met a reset is never sent again");
    assert_eq!(r.status, 502, "{:?}", r.text());
    p.stop();
}

/// `keepalive = 2` with five concurrent requests: five upstream connections, and once they are
/// idle exactly two stay open (rule 1: the cap is on idle connections, not concurrency).
pub fn idle_pool_cap_closes_surplus(start: Start) {
    let b = Backend::builder()
        .name("a")
        .delay(Duration::from_millis(800))
        .start()
        .unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.upstreams[0].keepalive = 2;
    let p = Proxy::start(start, cfg);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(5));
    let threads: Vec<_> = (0..5)
        .map(|i| {
            let addr = p.addr();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&addr).unwrap();
                barrier.wait();
                let r = c.get(&format!("/c{i}")).unwrap();
                (r.status, c)
            })
        })
        .collect();
    // Keep the clients open: only the pool decides what happens upstream.
    let mut clients = Vec::new();
    for t in threads {
        let (status, c) = t.join().unwrap();
        assert_eq!(status, 200);
        clients.push(c);
    }
    assert!(
        b.accepted() >= 3,
        "concurrent requests need their own connections (accepted {})",
        b.accepted()
    );
    assert!(
        b.wait_until(Duration::from_secs(8), |b| b.open_connections() == 2),
        "idle upstream connections settle at the cap of 2 (open: {}, accepted: {})",
        b.open_connections(),
        b.accepted()
    );
    drop(clients);
    p.stop();
}

/// The proxy's own upstream `keepalive_timeout` (300 ms) closes idle pooled connections; the
/// next request opens a new one.
pub fn upstream_keepalive_timeout(start: Start) {
    let b = Backend::identify("a").unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.upstreams[0].keepalive_timeout = Duration::from_millis(300);
    let p = Proxy::start(start, cfg);
    let mut c = p.client();
    ok(&c.get("/1").unwrap(), "/1");
    assert!(
        b.wait_until(Duration::from_secs(8), |b| b.open_connections() == 0),
        "the idle pooled connection was closed by the proxy"
    );
    ok(&c.get("/2").unwrap(), "/2");
    assert_eq!(b.accepted(), 2);
    p.stop();
}

/// `tcp_keepalive = 7s`: the proxy's pooled upstream socket has a keepalive timer armed by the
/// kernel (read back through `ss`, the kernel's view of the proxy's socket; skipped where `ss`
/// is missing — the option itself is read back with `getsockopt` in the shared socket layer's
/// tests).
pub fn upstream_sockets_probe_idle_connections(start: Start) {
    let b = Backend::identify("a").unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.upstreams[0].tcp_keepalive = Duration::from_secs(7);
    let p = Proxy::start(start, cfg);
    let mut c = p.client();
    ok(&c.get("/1").unwrap(), "/1");
    // Over TLS the proxy's upstream socket goes to the backend's TLS front.
    let upstream = crate::over_tls::proxied_addr(&b.addr());
    let mut timers = Vec::new();
    let armed =
        crate::eventually(
            Duration::from_secs(10),
            || match crate::sockets::timers_of_connections_to(&upstream) {
                Some(t) => {
                    timers = t;
                    timers.len() == 1 && timers[0].starts_with("timer:(keepalive,")
                }
                None => true,
            },
        );
    assert!(
        armed,
        "one pooled upstream socket with a keepalive timer: {timers:?}"
    );
    p.stop();
}

/// `min_idle = 3`: three warm connections are open at the backend before the first request;
/// sequential requests ride them (at most one more is opened, to keep three idle while one is
/// busy).
pub fn warm_connections_before_the_first_request(start: Start) {
    let b = Backend::identify("a").unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.upstreams[0].min_idle = 3;
    let p = Proxy::start(start, cfg);
    assert!(
        b.wait_until(Duration::from_secs(10), |b| b.open_connections() == 3),
        "3 warm connections before any request: {} accepted, {} open",
        b.accepted(),
        b.open_connections()
    );
    assert_eq!((b.accepted(), b.requests()), (3, 0));
    let mut c = p.client();
    for i in 0..5 {
        let target = format!("/w{i}");
        ok(&c.get(&target).unwrap(), &target);
    }
    assert!(
        b.accepted() <= 4,
        "5 requests opened {} connections",
        b.accepted()
    );
    p.stop();
}

/// A backend that announces `Keep-Alive: timeout=2` and closes idle connections after 2 s,
/// behind `min_idle = 2`: once the first response taught the pool the hint, warm connections
/// are replaced ahead of it — through more than two of the backend's timeouts of quiet, the
/// backend never has to close one the pool still holds, and the requests after it meet no
/// stale connection.
pub fn warm_connections_replaced_ahead_of_keep_alive_timeout(start: Start) {
    let b = Backend::builder()
        .name("a")
        .identify()
        .response_header("Keep-Alive", "timeout=2")
        .idle_timeout(Duration::from_secs(2))
        .start()
        .unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.upstreams[0].min_idle = 2;
    let p = Proxy::start(start, cfg);
    assert!(b.wait_until(Duration::from_secs(10), |b| b.accepted() >= 2));
    let mut c = p.client();
    ok(&c.get("/first").unwrap(), "/first");
    // Quiet: the pool replaces its warm connections about every second.
    let before = b.accepted();
    assert!(
        b.wait_until(Duration::from_secs(15), |b| b.accepted() >= before + 6),
        "warm connections replaced: {} accepted",
        b.accepted()
    );
    assert_eq!(
        b.idle_closed(),
        0,
        "the backend closed an idle connection first"
    );
    for i in 0..4 {
        let target = format!("/after{i}");
        ok(&c.get(&target).unwrap(), &target);
    }
    assert_eq!(
        b.idle_closed(),
        0,
        "the backend closed an idle connection first"
    );
    p.stop();
}

/// Responses after which the upstream connection must not be reused (rule 9): bytes beyond
/// Content-Length, an HTTP/1.0 response (with or without `Connection: keep-alive`: nginx's rule,
/// stricter than RFC 9112 §9.3), `Connection: close`. The client gets exactly the declared body,
/// and every request uses a new upstream connection.
pub fn unreusable_responses_not_pooled(start: Start) {
    let cases: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ];
    for raw in cases {
        let what = String::from_utf8_lossy(raw).into_owned();
        let b = Backend::builder()
            .behaviour(Behaviour::Raw(raw.to_vec()))
            .start()
            .unwrap();
        let p = Proxy::start(start, config(vec![b.addr()]));
        let mut c = p.client();
        for i in 0..3 {
            let r = c.get(&format!("/{i}")).unwrap();
            ok(&r, &what);
            assert_eq!(r.body, b"ok", "{what:?}");
        }
        assert_eq!(b.requests(), 3, "{what:?}");
        assert_eq!(b.accepted(), 3, "{what:?}: a connection was reused");
        p.stop();
    }
}

/// A backend that writes more than its response (here a second response nobody asked for, in
/// the same write) never has those bytes taken as the next request's answer: not when the read
/// that ended the response filled all its room (whole responses of 4, 16 and 64 KiB, the read
/// sizes of the runtimes), nor when a splice ended the body (100 kB). Requests are pipelined on
/// one client connection, so the next one is dispatched the moment a response ends; every
/// connection is closed after its one response, never reused.
///
/// The backend listens on a Unix socket, whose buffer takes each write whole: over TCP a write
/// larger than the receive window reaches the proxy in parts, and stray bytes that arrive after
/// it found the socket empty are the race no HTTP/1.1 proxy can tell from an answer (and the
/// TLS fronts of [`crate::over_tls`] would relay them in records of their own).
pub fn stray_bytes_after_a_response_reach_no_client(start: Start) {
    const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";
    let head = |n: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
    for total in [4096, 16 * 1024, 64 * 1024, 100_000] {
        // The body length that makes head + body exactly `total` bytes.
        let len = (total - 64..total)
            .find(|&n| head(n).len() + n == total)
            .expect("a body length");
        let body = vec![b'x'; len];
        let raw = [head(len).as_bytes(), &body, STRAY].concat();
        let b = Backend::builder()
            .behaviour(Behaviour::Raw(raw))
            .unix()
            .start()
            .unwrap();
        let p = Proxy::start(start, config(vec![b.addr()]));
        let mut c = p.client();
        let reqs: Vec<Vec<u8>> = (0..3).map(|i| client::get(&format!("/s{i}"))).collect();
        let rs = c.pipeline(&reqs).unwrap();
        for (i, r) in rs.iter().enumerate() {
            ok(r, &format!("{total} B, response {i}"));
            assert!(
                r.body == body,
                "{total} B, response {i}: {} bytes, starting {:?}",
                r.body.len(),
                String::from_utf8_lossy(&r.body[..r.body.len().min(16)])
            );
        }
        let r = c.get("/after").unwrap();
        assert!(r.body == body, "{total} B, the request after");
        assert_eq!(b.requests(), 4, "{total} B");
        assert_eq!(
            b.accepted(),
            4,
            "{total} B: a connection with bytes behind its response was reused"
        );
        p.stop();
    }
}

/// A backend that answers an upload early (`413` on the head) and closes without reading the
/// body, so its kernel resets the connection while the proxy still writes the body: the client
/// gets the 413, not a 502 (the proxy reads what the backend answered before it reports the
/// failed write; it lost the answer about one time in three before).
pub fn early_answer_to_an_upload_survives_the_reset(start: Start) {
    const ANSWER: &[u8] =
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!";
    const ROUNDS: usize = 4;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(listener.local_addr().unwrap());
    let p = Proxy::start(start, config(vec![addr]));
    if crate::over_tls::scheme(&p.addr()) == "https" {
        // A TLS front would stand between the proxy and this socket: not the case tested.
        p.stop();
        return;
    }
    let backend = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            // Answered at once; the close with body bytes unread (or arriving) is a reset.
            let _ = s.write_all(ANSWER);
        }
    });
    const LEN: usize = 3 * 1024 * 1024;
    let piece = [b'u'; 64 * 1024];
    for i in 0..ROUNDS {
        let mut c = p.client();
        let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {LEN}\r\n\r\n");
        c.stream().write_all(head.as_bytes()).unwrap();
        // The body in pieces, so the proxy is still writing it when the backend is gone.
        for _ in 0..LEN / piece.len() {
            if c.stream().write_all(&piece).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 413, "round {i}: {:?}", r.text());
        assert_eq!(r.body, b"big!", "round {i}");
    }
    p.stop();
    backend.join().unwrap();
}

/// `client_timeouts.keepalive = 300ms`: an idle client connection is closed.
pub fn client_keepalive_timeout(start: Start) {
    let b = Backend::identify("a").unwrap();
    let mut cfg = config(vec![b.addr()]);
    cfg.client_timeouts.keepalive = Duration::from_millis(300);
    let p = Proxy::start(start, cfg);
    let mut c = p.client();
    ok(&c.get("/1").unwrap(), "/1");
    assert!(
        c.closed_within(Duration::from_secs(8)),
        "an idle client connection outlived client_timeouts.keepalive"
    );
    // The upstream connection it used is still pooled for the next client.
    ok(&p.client().get("/2").unwrap(), "/2");
    assert_eq!(b.accepted(), 1);
    p.stop();
}

/// The admin listener reports known traffic: 10 requests on one client connection through a
/// pooled upstream are 10 `200`s, one upstream connect, one pool miss and 9 hits, one idle
/// pooled connection; `/status` is nginx's page for one idle client connection; `/ready` is 200.
pub fn metrics_after_pooled_requests(start: Start) {
    let b = Backend::identify("a").unwrap();
    let p = Proxy::start(start, with_admin(config(vec![b.addr()])));
    let mut c = p.client();
    for i in 0..10 {
        ok(&c.get(&format!("/m{i}")).unwrap(), "through the pool");
    }
    assert_eq!(b.accepted(), 1);

    let (status, text) = p.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    let server = format!(
        "upstream=\"default\",server=\"{}\"",
        crate::over_tls::proxied_addr(&b.addr())
    );
    let m = |sample: &str| client::metric(&text, sample);
    assert_eq!(m("upkeep_requests_total{code=\"200\"}"), 10);
    assert_eq!(m("upkeep_connections_accepted_total"), 1);
    assert_eq!(m("upkeep_connections_handled_total"), 1);
    assert_eq!(m("upkeep_connections_active"), 1);
    assert_eq!(m(&format!("upkeep_upstream_connects_total{{{server}}}")), 1);
    assert_eq!(
        m(&format!("upkeep_upstream_requests_total{{{server}}}")),
        10
    );
    assert_eq!(m(&format!("upkeep_upstream_up{{{server}}}")), 1);
    assert_eq!(m("upkeep_pool_misses_total{upstream=\"default\"}"), 1);
    assert_eq!(m("upkeep_pool_hits_total{upstream=\"default\"}"), 9);
    assert_eq!(m("upkeep_pool_idle_connections{upstream=\"default\"}"), 1);
    assert_eq!(m("upkeep_request_duration_seconds_count"), 10);
    assert_eq!(m("upkeep_request_duration_seconds_bucket{le=\"+Inf\"}"), 10);

    assert_eq!(
        p.admin_get("/status"),
        (
            200,
            "Active connections: 1 \nserver accepts handled requests\n 1 1 10 \nReading: 0 Writing: 0 Waiting: 1 \n".to_string()
        )
    );
    assert_eq!(p.admin_get("/ready"), (200, "ready\n".to_string()));
    assert_eq!(p.admin_get("/nope").0, 404);
    p.stop();
}

/// Why upstream connections closed instead of returning to the pool, as operators read it:
/// a backend that ends every second connection with `Connection: close` shows up as
/// `upkeep_upstream_not_reused_total{reason="connection_close"}`, and nothing else is counted.
pub fn metrics_say_why_a_connection_was_not_reused(start: Start) {
    let b = Backend::builder()
        .identify()
        .max_requests_per_conn(2)
        .start()
        .unwrap();
    let p = Proxy::start(start, with_admin(config(vec![b.addr()])));
    let mut c = p.client();
    for i in 0..6 {
        ok(&c.get(&format!("/n{i}")).unwrap(), "answered");
    }
    assert_eq!(b.accepted(), 3, "a new connection after each close");

    let (status, text) = p.admin_get("/metrics");
    assert_eq!(status, 200, "{text}");
    let m = |reason: &str| {
        client::metric(
            &text,
            &format!(
                "upkeep_upstream_not_reused_total{{upstream=\"default\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(m("connection_close"), 3, "{text}");
    assert_eq!(m("keepalive_requests"), 0);
    assert_eq!(m("stale"), 0);
    assert_eq!(
        client::metric(&text, "upkeep_pool_misses_total{upstream=\"default\"}"),
        3
    );
    p.stop();
}

/// One access log line per request, in order: the client, the request line, the status, the
/// upstream and whether its connection was reused; an answer of the proxy's own has no upstream.
pub fn access_log_line_per_request(start: Start) {
    let b = Backend::identify("a").unwrap();
    let dir = TempDir::new().unwrap();
    let (cfg, log) = with_access_log(config(vec![b.addr()]), &dir);
    let p = Proxy::start(start, cfg);
    let mut c = p.client();
    for i in 0..3 {
        ok(&c.get(&format!("/l{i}?q={i}")).unwrap(), "logged");
    }
    // Two Host fields: the proxy answers 400 itself and closes.
    let bad = c
        .request(b"GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .unwrap();
    assert_eq!(bad.status, 400);

    let lines = log_lines(&log, 4);
    assert_eq!(lines.len(), 4, "one line per request: {lines:#?}");
    for (i, line) in lines.iter().take(3).enumerate() {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.contains(&format!("] \"GET /l{i}?q={i} HTTP/1.1\" 200 ")),
            "{line}"
        );
        let reused = u8::from(i > 0);
        assert!(
            line.contains(&format!(
                " upstream={} reused={reused} response=",
                crate::over_tls::proxied_addr(&b.addr())
            )),
            "{line}"
        );
        assert!(line.contains(" total="), "{line}");
    }
    assert!(
        lines[3].contains("\" 400 ") && lines[3].contains(" upstream=- reused=0 response=- "),
        "{}",
        lines[3]
    );
    p.stop();
}
