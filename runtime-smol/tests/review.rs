//! Adversarial tests of the smol runtime: cancellation, dropped responses, backpressure,
//! concurrency and lifecycle edge cases of the fan-out [`Client`] and the [`Proxy`].
//!
//! Each test is bounded in time (socket timeouts, bounded loops, a 60 s cap on every async
//! block) and asserts behaviour seen from outside: what a loopback backend observes.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures_lite::future;
use smol::LocalExecutor;
use upkeep_core::Address;
use upkeep_core::config::{ServerConfig, UpstreamConfig};
use upkeep_smol::{Client, Proxy, Request};
use upkeep_testkit::backend::{Backend, Behaviour};
use upkeep_testkit::client;
use upkeep_testkit::wire::Stream;
use upkeep_testkit::{loopback_config as proxy_config, pattern};

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

/// A backend that reads each request, writes `bytes` (perhaps nothing, perhaps a head and part
/// of a body) and waits for the next: a connection it holds closes only when the peer closes
/// it, so `open_connections()` dropping to 0 means the client under test closed it.
fn stalling_backend(bytes: &[u8]) -> Backend {
    Backend::builder()
        .behaviour(Behaviour::Raw(bytes.to_vec()))
        .start()
        .unwrap()
}

/// A keepalive backend answering `200 ok` to every request, with a listen backlog of `backlog`.
fn ok_backend(backlog: i32) -> Backend {
    Backend::builder()
        .body("ok")
        .backlog(backlog)
        .start()
        .unwrap()
}

/// Waits until the backend has accepted `n` connections and the peer has closed every one.
fn peer_closed_all(backend: &Backend, n: usize) -> bool {
    backend.wait_until(PATIENCE, |b| b.accepted() == n && b.open_connections() == 0)
}

// ----- Client -----

/// A `send` future dropped while the backend is still thinking: the exchange is abandoned and
/// its upstream connection closed (it cannot go back to the pool mid-exchange), instead of
/// being held until the backend answers or `read_timeout` (60 s) passes.
#[test]
fn client_dropped_send_future_closes_its_upstream_connection() {
    let backend = stalling_backend(b"");
    let client = Client::new([group("s", backend.addr())]).unwrap();
    run(async {
        let send = client.send("s", Request::get("/never"));
        let requested = async {
            while backend.requests() == 0 {
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
        peer_closed_all(&backend, 1),
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
    let backend = stalling_backend(&partial);
    let client = Client::new([group("s", backend.addr())]).unwrap();
    run(async {
        let r = client.send("s", Request::get("/partial")).await.unwrap();
        assert_eq!(r.status(), 200);
        drop(r);
    });
    assert!(
        peer_closed_all(&backend, 1),
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
    let backend = ok_backend(128);
    let client = Client::new([group("a", backend.addr())]).unwrap();
    run(async {
        let r = client.send("a", Request::get("/")).await.unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], b"ok");
    });
    assert_eq!(
        (backend.accepted(), backend.open_connections()),
        (1, 1),
        "pooled"
    );
    drop(client);
    assert!(
        peer_closed_all(&backend, 1),
        "the pooled connection is closed with the client"
    );
}

/// A POST whose pooled connection turns out dead is not retried (it may have been processed);
/// the caller sees the core's 502.
#[test]
fn client_post_on_a_dying_pooled_connection_is_not_retried() {
    let backend = Backend::builder()
        .behaviour(Behaviour::ResetReused)
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
    let backend = ok_backend(1024);
    let client = Client::new([group("c", backend.addr())]).unwrap();
    let statuses = thousand_sends(&client);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1000);
    assert_eq!(backend.requests(), 1000);
}

/// 1000 sends at once against a backend with an accept backlog of 8: the kernel leaves many
/// connections half-accepted for seconds (the client's side believes it is connected) or
/// drops their SYNs, so some answers come late or not at all. Every send still finishes —
/// answered, or the core's 502 / 504 at `connect_timeout` / `read_timeout` — and nothing
/// hangs.
#[test]
fn client_thousand_concurrent_sends_small_backlog() {
    let backend = ok_backend(8);
    let mut g = group("c", backend.addr());
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
    let backend = Backend::builder().pattern_body(TOTAL, 1).start().unwrap();
    let client = Client::new([group("s", backend.addr())]).unwrap();
    run(async {
        let r = client.send("s", Request::get("/big")).await.unwrap();
        assert_eq!(r.status(), 200);
        // Wait for the backend's progress to stop (1 s without change, 20 s at most).
        let mut last = usize::MAX;
        let mut still = 0;
        for _ in 0..200 {
            smol::Timer::after(Duration::from_millis(100)).await;
            let w = backend.bytes_written();
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
        let stalled_at = backend.bytes_written();
        assert!(
            stalled_at < TOTAL / 2,
            "the backend wrote {stalled_at} of {TOTAL} bytes to a consumer that read nothing"
        );
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len(), TOTAL);
        assert!(body == pattern(TOTAL, 1));
    });
}

// ----- Proxy -----

/// Calling `drain()` twice (two parts of an application both shutting down) is still a
/// graceful drain: the exchange in flight is answered.
#[test]
fn proxy_drain_twice_is_still_graceful() {
    let backend = Backend::slow("slow", Duration::from_millis(500)).unwrap();
    let proxy = Proxy::start(proxy_config(vec![backend.addr()], 1)).unwrap();
    let mut c = client::in_flight(&proxy.listen_addrs()[0], "/slow", &backend);
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
    let mut s = Stream::connect(&proxy.listen_addrs()[0]).unwrap();
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
