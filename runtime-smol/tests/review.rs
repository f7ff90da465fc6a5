//! Adversarial tests of the smol runtime: cancellation, dropped responses, backpressure,
//! concurrency and lifecycle edge cases of the fan-out [`Client`] and the [`Proxy`].
//!
//! Each test is bounded in time (socket timeouts, bounded loops, a 60 s cap on every async
//! block) and asserts behaviour seen from outside: what a loopback backend observes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future;
use smol::LocalExecutor;
use upkeep_core::config::{ServerConfig, UpstreamConfig};
use upkeep_core::{Address, Config};
use upkeep_smol::{Client, Proxy, Request};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client;
use upkeep_testkit::pattern;

const PATIENCE: Duration = Duration::from_secs(10);

fn group(name: &str, addr: Address) -> UpstreamConfig {
    UpstreamConfig::new(name, vec![ServerConfig::new(addr)])
}

/// Runs `f` with a bound: a hung client fails the test instead of hanging it.
fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    smol::block_on(future::or(async { Some(f.await) }, async {
        smol::Timer::after(Duration::from_secs(60)).await;
        None
    }))
    .expect("test finished within 60 s")
}

/// Polls `cond` every 20 ms for at most `within`.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a [`RawBackend`] connection does once it has read a request head.
#[derive(Clone)]
enum Then {
    /// Write these bytes (perhaps nothing, perhaps a head and part of a body), then only read
    /// until the peer closes.
    Stall(Vec<u8>),
    /// Answer `200` with a `Content-Length` body of this many bytes, counting what the kernel
    /// accepted in `written`; then read until the peer closes.
    Stream(usize),
    /// Answer `200 ok` to every request until the peer closes.
    Answer,
}

/// A hand-written backend that reports what a well-behaved origin cannot: when the peer closes
/// a connection it holds, and how far a big response has got.
struct RawBackend {
    addr: Address,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Connections the peer (the proxy or client under test) has closed.
    peer_closed: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl RawBackend {
    fn start(then: Then, backlog: i32) -> RawBackend {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let sa: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&sa.into()).expect("bind");
        socket.listen(backlog).expect("listen");
        let listener: TcpListener = socket.into();
        listener.set_nonblocking(true).unwrap();
        let addr = Address::Tcp(listener.local_addr().unwrap());
        let b = RawBackend {
            addr,
            accepted: Arc::default(),
            requests: Arc::default(),
            peer_closed: Arc::default(),
            written: Arc::default(),
            stop: Arc::default(),
        };
        let (accepted, requests, peer_closed, written, stop) = (
            b.accepted.clone(),
            b.requests.clone(),
            b.peer_closed.clone(),
            b.written.clone(),
            b.stop.clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let s = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (then, requests, peer_closed, written, stop) = (
                    then.clone(),
                    requests.clone(),
                    peer_closed.clone(),
                    written.clone(),
                    stop.clone(),
                );
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || serve(s, then, &requests, &peer_closed, &written, &stop))
                    .expect("backend thread");
            }
        });
        b
    }
}

fn serve(
    mut s: TcpStream,
    then: Then,
    requests: &AtomicUsize,
    peer_closed: &AtomicUsize,
    written: &AtomicU64,
    stop: &AtomicBool,
) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let alive = || !stop.load(Ordering::SeqCst) && Instant::now() < deadline;
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    // Reads until a head is buffered: Ok(true); the peer closed: Ok(false); gave up: Err.
    let mut read_head = |s: &mut TcpStream, buf: &mut Vec<u8>| -> Result<bool, ()> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                // Request bodies are not used by these tests beyond their length.
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                if buf.len() >= end + 4 + len {
                    buf.drain(..end + 4 + len);
                    return Ok(true);
                }
            }
            if !alive() {
                return Err(());
            }
            match s.read(&mut byte) {
                Ok(0) => return Ok(false),
                Ok(n) => buf.extend_from_slice(&byte[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Ok(false),
            }
        }
    };
    loop {
        match read_head(&mut s, &mut buf) {
            Ok(true) => {}
            Ok(false) => {
                peer_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Err(()) => return,
        }
        requests.fetch_add(1, Ordering::SeqCst);
        match &then {
            Then::Answer => {
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Then::Stall(bytes) => {
                if s.write_all(bytes).is_err() {
                    return;
                }
            }
            Then::Stream(total) => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let body = pattern(*total, 1);
                let mut off = 0;
                while off < body.len() && alive() {
                    let end = (off + 64 * 1024).min(body.len());
                    match s.write(&body[off..end]) {
                        Ok(n) => {
                            off += n;
                            written.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return,
                    }
                }
            }
        }
        // Only watch for the peer's close from now on.
        loop {
            if !alive() {
                return;
            }
            match s.read(&mut byte) {
                Ok(0) => {
                    peer_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    peer_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

// ----- Client -----

/// A `send` future dropped while the backend is still thinking: the exchange is abandoned and
/// its upstream connection closed (it cannot go back to the pool mid-exchange), instead of
/// being held until the backend answers or `read_timeout` (60 s) passes.
#[test]
fn client_dropped_send_future_closes_its_upstream_connection() {
    let backend = RawBackend::start(Then::Stall(Vec::new()), 128);
    let client = Client::new([group("s", backend.addr.clone())]).unwrap();
    run(async {
        let send = client.send("s", Request::get("/never"));
        let requested = async {
            while backend.requests.load(Ordering::SeqCst) == 0 {
                smol::Timer::after(Duration::from_millis(10)).await;
            }
        };
        // Whichever finishes first, the send future is dropped here, mid-flight.
        let finished = future::or(async { Some(send.await) }, async {
            requested.await;
            None
        })
        .await;
        assert!(finished.is_none(), "the backend never answers");
    });
    assert!(
        eventually(PATIENCE, || backend.peer_closed.load(Ordering::SeqCst) == 1),
        "the abandoned exchange's upstream connection is closed"
    );
    drop(client);
}

/// A response dropped after its head while the body is stalled: the upstream connection is
/// closed (the rest of the body can never be delivered) rather than held until more bytes
/// arrive.
#[test]
fn client_dropped_response_with_stalled_body_closes_its_upstream_connection() {
    let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst ten.".to_vec();
    let backend = RawBackend::start(Then::Stall(partial), 128);
    let client = Client::new([group("s", backend.addr.clone())]).unwrap();
    run(async {
        let r = client.send("s", Request::get("/partial")).await.unwrap();
        assert_eq!(r.status(), 200);
        drop(r);
    });
    assert!(
        eventually(PATIENCE, || backend.peer_closed.load(Ordering::SeqCst) == 1),
        "the dropped response's upstream connection is closed"
    );
    drop(client);
}

/// Many responses dropped mid-body, then normal traffic: every abandoned upstream connection
/// is closed (none left behind half-read) and the pool serves on.
#[test]
fn client_many_dropped_responses_leave_nothing_behind() {
    let big = Backend::builder().pattern_body(1 << 20, 4).start().unwrap();
    let client = Client::new([group("b", big.addr())]).unwrap();
    run(async {
        for _ in 0..40 {
            let r = client.send("b", Request::get("/")).await.unwrap();
            assert_eq!(r.status(), 200);
            drop(r);
        }
        let r = client.send("b", Request::get("/")).await.unwrap();
        assert!(r.bytes().await.unwrap() == pattern(1 << 20, 4));
    });
    assert!(
        big.wait_until(PATIENCE, |b| b.open_connections() <= 1),
        "{} backend connections still open",
        big.open_connections()
    );
    drop(client);
    assert!(
        big.wait_until(PATIENCE, |b| b.open_connections() == 0),
        "dropping the client closes its pooled connection"
    );
}

/// The last `Client` dropped: its driver thread closes the pooled upstream connections.
#[test]
fn client_dropped_closes_pooled_connections() {
    let backend = RawBackend::start(Then::Answer, 128);
    let client = Client::new([group("a", backend.addr.clone())]).unwrap();
    run(async {
        let r = client.send("a", Request::get("/")).await.unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], b"ok");
    });
    assert_eq!(backend.peer_closed.load(Ordering::SeqCst), 0, "pooled");
    drop(client);
    assert!(
        eventually(PATIENCE, || backend.peer_closed.load(Ordering::SeqCst) == 1),
        "the pooled connection is closed with the client"
    );
}

/// A POST whose pooled connection turns out dead is not retried (it may have been processed);
/// the caller sees the core's 502.
#[test]
fn client_post_on_a_dying_pooled_connection_is_not_retried() {
    let backend = Backend::builder()
        .behaviour(upkeep_testkit::backend::Behaviour::ResetReused)
        .start()
        .unwrap();
    let client = Client::new([group("p", backend.addr())]).unwrap();
    run(async {
        let r = client.send("p", Request::get("/first")).await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let r = client
            .send("p", Request::post("/second", "payload"))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            502,
            "a POST is never retried on a new connection"
        );
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.groups[0].stale_retries, 0);
    });
    assert_eq!(backend.accepted(), 1);
}

/// One client shared by several threads, each running its own executor.
#[test]
fn client_used_from_several_threads_at_once() {
    let backend = Backend::identify("t").unwrap();
    let client = Client::new([group("t", backend.addr())]).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let c = client.clone();
            std::thread::spawn(move || {
                run(async {
                    for i in 0..50 {
                        let r = c
                            .send("t", Request::get(format!("/{t}/{i}")))
                            .await
                            .unwrap();
                        assert_eq!(
                            &r.bytes().await.unwrap()[..],
                            format!("t GET /{t}/{i}").as_bytes()
                        );
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(backend.requests(), 200);
    assert!(
        backend.accepted() <= 4,
        "{} connections",
        backend.accepted()
    );
}

/// 1000 sends at once against one backend: each gets its own upstream connection and answer.
#[test]
fn client_thousand_concurrent_sends() {
    let backend = RawBackend::start(Then::Answer, 1024);
    let client = Client::new([group("c", backend.addr.clone())]).unwrap();
    let statuses = thousand_sends(&client);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1000);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1000);
}

/// 1000 sends at once against a backend with an accept backlog of 8: the kernel leaves many
/// connections half-accepted for seconds (the client's side believes it is connected) or
/// drops their SYNs, so some answers come late or not at all. Every send still finishes —
/// answered, or the core's 502 / 504 at `connect_timeout` / `read_timeout` — and nothing
/// hangs.
#[test]
fn client_thousand_concurrent_sends_small_backlog() {
    let backend = RawBackend::start(Then::Answer, 8);
    let mut g = group("c", backend.addr.clone());
    g.read_timeout = Duration::from_secs(8);
    g.connect_timeout = Duration::from_secs(5);
    let client = Client::new([g]).unwrap();
    let statuses = thousand_sends(&client);
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let late = statuses.iter().filter(|s| **s == 504 || **s == 502).count();
    eprintln!("small backlog: {ok} answered, {late} timed out");
    assert_eq!(ok + late, 1000, "{statuses:?}");
    assert!(ok > 0);
}

/// Sends 1000 requests concurrently; the statuses, in order (bodies checked for 200s).
fn thousand_sends(client: &Client) -> Vec<u16> {
    let ex = LocalExecutor::new();
    run(ex.run(async {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let c = client.clone();
                ex.spawn(async move {
                    let r = c.send("c", Request::get(format!("/{i}"))).await.unwrap();
                    let status = r.status();
                    let body = r.bytes().await.unwrap();
                    if status == 200 {
                        assert_eq!(&body[..], b"ok");
                    }
                    status
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await);
        }
        statuses
    }))
}

/// A consumer that does not read the body: the backend is stopped by backpressure well before
/// it has written everything (the client buffers a bounded amount), and the body arrives whole
/// once read.
#[test]
fn client_slow_consumer_backpressures_the_backend() {
    const TOTAL: usize = 96 << 20;
    let backend = RawBackend::start(Then::Stream(TOTAL), 128);
    let client = Client::new([group("s", backend.addr.clone())]).unwrap();
    run(async {
        let r = client.send("s", Request::get("/big")).await.unwrap();
        assert_eq!(r.status(), 200);
        // Wait for the backend's progress to stop (1 s without change, 20 s at most).
        let mut last = u64::MAX;
        let mut still = 0;
        for _ in 0..200 {
            smol::Timer::after(Duration::from_millis(100)).await;
            let w = backend.written.load(Ordering::SeqCst);
            if w == last {
                still += 1;
                if still >= 10 {
                    break;
                }
            } else {
                still = 0;
                last = w;
            }
        }
        let stalled_at = backend.written.load(Ordering::SeqCst);
        assert!(
            stalled_at < (TOTAL / 2) as u64,
            "the backend wrote {stalled_at} of {TOTAL} bytes to a consumer that read nothing"
        );
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len(), TOTAL);
        assert!(body == pattern(TOTAL, 1));
    });
}

// ----- Proxy -----

fn proxy_config(servers: Vec<Address>, workers: usize) -> Config {
    let mut c = Config::simple(Address::parse("127.0.0.1:0").unwrap(), servers);
    c.runtime.workers = workers;
    c
}

/// Calling `drain()` twice (two parts of an application both shutting down) is still a
/// graceful drain: the exchange in flight is answered.
#[test]
fn proxy_drain_twice_is_still_graceful() {
    let backend = Backend::builder()
        .name("slow")
        .delay(Duration::from_millis(500))
        .start()
        .unwrap();
    let proxy = Proxy::start(proxy_config(vec![backend.addr()], 1)).unwrap();
    let addr = proxy.listen_addrs()[0].clone();
    let mut c = client::Client::connect(&addr).unwrap();
    c.send(&client::get("/slow")).unwrap();
    assert!(backend.wait_until(PATIENCE, |b| b.requests() == 1));
    proxy.drain();
    proxy.drain();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "the request in flight is answered");
    assert_eq!(r.text(), "slow GET /slow");
    assert!(c.closed_within(PATIENCE));
    proxy.shutdown();
}

/// A client that half-closes after its request still gets the whole (large) response, read
/// slowly so the proxy must stop and resume reading the upstream many times.
#[test]
fn proxy_half_closed_slow_client_gets_the_whole_response() {
    const LEN: usize = 8 << 20;
    let backend = Backend::builder().pattern_body(LEN, 3).start().unwrap();
    let proxy = Proxy::start(proxy_config(vec![backend.addr()], 1)).unwrap();
    let Address::Tcp(sa) = proxy.listen_addrs()[0].clone() else {
        unreachable!()
    };
    let mut s = TcpStream::connect(sa).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "bounded");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e} after {} bytes", got.len()),
        }
        if got.len() < 2 << 20 && got.len() % 7 == 0 {
            // Slow at first: let the proxy's buffers fill and its upstream reading stop.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got[..head_end].starts_with(b"HTTP/1.1 200"));
    assert!(got[head_end..] == pattern(LEN, 3), "body differs");
    proxy.shutdown();
}

/// A second proxy asked for a port the first is serving is refused, like any other taken port:
/// the workers' SO_REUSEPORT must not let another process or proxy silently join the group
/// and take a share of the connections.
#[test]
fn proxy_second_instance_on_the_same_port_is_refused() {
    let backend = Backend::identify("first").unwrap();
    let first = Proxy::start(proxy_config(vec![backend.addr()], 2)).unwrap();
    let taken = first.listen_addrs()[0].clone();
    let mut c = proxy_config(vec![backend.addr()], 2);
    c.listeners[0].addr = taken.clone();
    match Proxy::start(c) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        Ok(second) => {
            second.shutdown();
            panic!("a second proxy bound {taken} next to the first");
        }
    }
    // The first is unharmed.
    let mut client = client::Client::connect(&taken).unwrap();
    assert_eq!(client.get("/").unwrap().text(), "first GET /");
    first.shutdown();
}

/// A Unix socket path with nothing behind it: the client answers 502 like for a closed port.
#[test]
fn client_missing_unix_socket_is_a_502() {
    let dir = upkeep_testkit::TempDir::new().unwrap();
    let client = Client::new([group("gone", dir.socket("nobody.sock"))]).unwrap();
    run(async {
        let r = client.send("gone", Request::get("/")).await.unwrap();
        assert_eq!(r.status(), 502);
        let stats = client.stats().await.unwrap();
        assert!(stats.servers[0].connect_failures >= 1);
    });
}
