//! The fan-out client against real loopback backends (upkeep-testkit's): reuse, idle closes,
//! stale retries, failures and timeouts, bodies; cancellation (a dropped `send` future, response
//! or `Client` closes its upstream connections), use from many threads and 1000 concurrent
//! sends, and a slow consumer backpressuring the backend. Connection counts are taken at the
//! backend.

use std::time::Duration;

use futures_lite::{StreamExt, future};
use smol::LocalExecutor;
use upkeep_core::Address;
use upkeep_core::config::{ServerConfig, UpstreamConfig};
use upkeep_smol::{Client, Error, Request};
use upkeep_testkit::backend::{Backend, Behaviour, Framing, closed_port};
use upkeep_testkit::pattern;

const PATIENCE: Duration = Duration::from_secs(10);

fn group(name: &str, addr: Address) -> UpstreamConfig {
    UpstreamConfig::new(name, vec![ServerConfig::new(addr)])
}

fn client_for(groups: Vec<UpstreamConfig>) -> Client {
    Client::new(groups).expect("client")
}

/// Runs `f` with a bound: a hung client fails the test instead of hanging it.
fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    smol::block_on(futures_lite::future::or(async { Some(f.await) }, async {
        smol::Timer::after(Duration::from_secs(60)).await;
        None
    }))
    .expect("test finished within 60 s")
}

async fn get_text(client: &Client, upstream: &str, target: &str) -> (u16, String) {
    let r = client
        .send(upstream, Request::get(target))
        .await
        .expect("send");
    let status = r.status();
    let body = r.bytes().await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn sequential_sends_reuse_one_connection() {
    let backend = Backend::identify("a").unwrap();
    let client = client_for(vec![group("a", backend.addr())]);
    run(async {
        for i in 0..100 {
            let (status, body) = get_text(&client, "a", &format!("/item/{i}")).await;
            assert_eq!(status, 200);
            assert_eq!(body, format!("a GET /item/{i}"));
        }
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.servers[0].connects, 1);
        assert_eq!(stats.groups[0].pool_hits, 99);
    });
    assert_eq!(
        backend.accepted(),
        1,
        "100 sequential requests, one connection"
    );
    assert_eq!(backend.requests(), 100);
}

#[test]
fn fan_out_to_four_backends_per_page() {
    let names = ["users", "ads", "search", "cart"];
    let backends: Vec<Backend> = names
        .iter()
        .map(|n| Backend::identify(n).unwrap())
        .collect();
    let client = client_for(
        names
            .iter()
            .zip(&backends)
            .map(|(n, b)| group(n, b.addr()))
            .collect(),
    );
    let ex = LocalExecutor::new();
    run(ex.run(async {
        for page in 0..25 {
            // All four at once: spawned tasks run concurrently while we await them in order.
            let tasks: Vec<_> = names
                .iter()
                .map(|&n| {
                    let c = client.clone();
                    ex.spawn(async move { get_text(&c, n, &format!("/page/{page}")).await })
                })
                .collect();
            for (task, n) in tasks.into_iter().zip(names) {
                let (status, body) = task.await;
                assert_eq!(status, 200);
                assert_eq!(body, format!("{n} GET /page/{page}"));
            }
        }
    }));
    for (b, n) in backends.iter().zip(names) {
        assert_eq!(b.accepted(), 1, "{n}: one warm connection for 25 pages");
        assert_eq!(b.requests(), 25, "{n}");
    }
}

#[test]
fn concurrent_sends_to_one_backend_run_in_parallel_then_reuse() {
    // Each request is held 300 ms by the backend: had the client serialized them, one
    // connection would have carried all eight.
    let backend = Backend::slow("slow", Duration::from_millis(300)).unwrap();
    let client = client_for(vec![group("slow", backend.addr())]);
    let ex = LocalExecutor::new();
    run(ex.run(async {
        for round in 0..2 {
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let c = client.clone();
                    ex.spawn(async move { get_text(&c, "slow", &format!("/{round}/{i}")).await })
                })
                .collect();
            for (i, t) in tasks.into_iter().enumerate() {
                assert_eq!(t.await, (200, format!("slow GET /{round}/{i}")));
            }
        }
    }));
    assert_eq!(
        backend.accepted(),
        8,
        "8 in parallel, then the same 8 reused"
    );
    assert_eq!(backend.requests(), 16);
}

#[test]
fn backend_closing_idle_connections() {
    let backend = Backend::builder()
        .name("b")
        .idle_timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    let client = client_for(vec![group("b", backend.addr())]);
    run(async {
        assert_eq!(get_text(&client, "b", "/1").await, (200, "b GET /1".into()));
    });
    assert!(
        backend.wait_until(PATIENCE, |b| b.open_connections() == 0),
        "the backend closes its idle connection"
    );
    run(async {
        // The pooled connection is dead; the request still succeeds (on a new one).
        assert_eq!(get_text(&client, "b", "/2").await, (200, "b GET /2".into()));
    });
    assert_eq!(backend.accepted(), 2);
}

#[test]
fn stale_pooled_connection_is_retried_for_idempotent_requests() {
    // The keepalive race, made deterministic: the backend answers the first request of a
    // connection and closes it, unanswered, when a second request arrives on it.
    let backend = Backend::builder()
        .name("r")
        .behaviour(Behaviour::CloseReused)
        .start()
        .unwrap();
    let client = client_for(vec![group("r", backend.addr())]);
    run(async {
        assert_eq!(get_text(&client, "r", "/1").await, (200, "r GET /1".into()));
        // Rides the pooled connection, which the backend closes unanswered: retried on a
        // fresh connection, invisibly.
        assert_eq!(get_text(&client, "r", "/2").await, (200, "r GET /2".into()));
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.groups[0].stale_retries, 1);
    });
    assert_eq!(backend.accepted(), 2);
    // (connection, position on it, target) of each request the backend read.
    let seen: Vec<_> = backend
        .log()
        .iter()
        .map(|r| (r.conn, r.seq, r.target.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (0, 0, "/1".into()),
            (0, 1, "/2".into()),
            (1, 0, "/2".into())
        ],
        "/2 was answered as the first request of a fresh connection"
    );
}

#[test]
fn backend_down_is_a_502_status() {
    let client = client_for(vec![group("down", closed_port())]);
    run(async {
        let r = client.send("down", Request::get("/")).await.unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(&r.bytes().await.unwrap()[..], b"502 Bad Gateway\n");
        let stats = client.stats().await.unwrap();
        assert!(stats.servers[0].connect_failures >= 1);
        assert_eq!(stats.local_responses, 1);
    });
}

#[test]
fn chunked_response_streamed_and_buffered() {
    let body = pattern(100_000, 7);
    let backend = Backend::builder()
        .pattern_body(body.len(), 7)
        .framing(Framing::Chunked(3000))
        .start()
        .unwrap();
    let client = client_for(vec![group("c", backend.addr())]);
    run(async {
        let r = client.send("c", Request::get("/")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);

        let r = client.send("c", Request::get("/")).await.unwrap();
        let mut stream = r.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, body);
    });
    assert_eq!(
        backend.accepted(),
        1,
        "a chunked response leaves the connection reusable"
    );
}

#[test]
fn close_delimited_response() {
    let body = pattern(50_000, 3);
    let backend = Backend::builder()
        .pattern_body(body.len(), 3)
        .framing(Framing::CloseDelimited)
        .start()
        .unwrap();
    let client = client_for(vec![group("c", backend.addr())]);
    run(async {
        for _ in 0..3 {
            let r = client.send("c", Request::get("/")).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(&r.bytes().await.unwrap()[..], &body[..]);
        }
    });
    assert_eq!(
        backend.accepted(),
        3,
        "a close-delimited response ends its connection"
    );
}

#[test]
fn read_timeout_is_a_504_status() {
    let backend = Backend::builder()
        .delay(Duration::from_secs(3))
        .start()
        .unwrap();
    let mut g = group("slow", backend.addr());
    g.read_timeout = Duration::from_millis(300);
    let client = client_for(vec![g]);
    run(async {
        let r = client.send("slow", Request::get("/")).await.unwrap();
        assert_eq!(r.status(), 504);
    });
}

#[test]
fn large_bodies_byte_for_byte() {
    let big = pattern(8 << 20, 11);
    let down = Backend::builder()
        .pattern_body(big.len(), 11)
        .start()
        .unwrap();
    let echo = Backend::builder().echo().start().unwrap();
    let client = client_for(vec![group("down", down.addr()), group("echo", echo.addr())]);
    run(async {
        let r = client.send("down", Request::get("/big")).await.unwrap();
        assert_eq!(r.header("content-length"), Some("8388608"));
        let mut body = r.into_body();
        let mut got = Vec::with_capacity(big.len());
        while let Some(chunk) = body.chunk().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert!(got == big, "8 MiB download differs");

        let up = pattern(3 << 20, 5);
        let r = client
            .send("echo", Request::post("/echo", up.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == up, "3 MiB echo differs");
    });
}

#[test]
fn keepalive_requests_retires_connections() {
    let backend = Backend::identify("k").unwrap();
    let mut g = group("k", backend.addr());
    g.keepalive_requests = 10;
    let client = client_for(vec![g]);
    run(async {
        for i in 0..25 {
            assert_eq!(get_text(&client, "k", "/").await.0, 200, "request {i}");
        }
    });
    assert_eq!(backend.accepted(), 3, "25 requests at 10 per connection");
}

#[test]
fn pool_off_opens_a_connection_per_request() {
    let backend = Backend::identify("f").unwrap();
    let mut g = group("f", backend.addr());
    g.keepalive = 0;
    let client = client_for(vec![g]);
    run(async {
        for _ in 0..10 {
            assert_eq!(get_text(&client, "f", "/").await, (200, "f GET /".into()));
        }
    });
    assert_eq!(backend.accepted(), 10);
}

#[test]
fn unix_socket_backend() {
    let backend = Backend::builder().name("u").unix().start().unwrap();
    let client = client_for(vec![group("u", backend.addr())]);
    run(async {
        for i in 0..5 {
            assert_eq!(
                get_text(&client, "u", &format!("/{i}")).await,
                (200, format!("u GET /{i}"))
            );
        }
    });
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn head_request_has_no_body() {
    let backend = Backend::builder().pattern_body(1234, 1).start().unwrap();
    let client = client_for(vec![group("h", backend.addr())]);
    run(async {
        let r = client.send("h", Request::new("HEAD", "/")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("Content-Length"), Some("1234"));
        assert!(r.bytes().await.unwrap().is_empty());
        // The connection stays in sync for the next request.
        let r = client.send("h", Request::get("/")).await.unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), 1234);
    });
    assert_eq!(backend.accepted(), 1);
}

#[test]
fn dropped_response_does_not_poison_the_pool() {
    let backend = Backend::builder().pattern_body(2 << 20, 9).start().unwrap();
    let client = client_for(vec![group("d", backend.addr())]);
    run(async {
        let r = client.send("d", Request::get("/")).await.unwrap();
        drop(r); // body unread
        let r = client.send("d", Request::get("/")).await.unwrap();
        assert!(r.bytes().await.unwrap() == pattern(2 << 20, 9));
    });
}

#[test]
fn request_headers_and_host_reach_the_backend() {
    let backend = Backend::builder().echo().start().unwrap();
    let client = client_for(vec![group("e", backend.addr())]);
    run(async {
        let r = client
            .send(
                "e",
                Request::post("/form", "a=1")
                    .header("Host", "api.internal")
                    .header("X-Trace", "t-1"),
            )
            .await
            .unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], b"a=1");
    });
    let log = backend.log();
    assert_eq!(log[0].header("host"), Some("api.internal"));
    assert_eq!(log[0].header("x-trace"), Some("t-1"));
    assert_eq!(log[0].header("x-forwarded-for"), None);
    assert_eq!(log[0].header("via"), None);
}

#[test]
fn errors_for_unknown_upstreams_and_invalid_requests() {
    let client = client_for(vec![group("x", closed_port())]);
    run(async {
        assert_eq!(
            client.send("nope", Request::get("/")).await.unwrap_err(),
            Error::UnknownUpstream("nope".into())
        );
        assert!(matches!(
            client.send("x", Request::get("no-slash")).await,
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            client
                .send("x", Request::get("/").header("Content-Length", "5"))
                .await,
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            client
                .send("x", Request::get("/").header("X-Bad", "a\r\nInjected: 1"))
                .await,
            Err(Error::InvalidRequest(_))
        ));
    });
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

#[test]
fn max_conns_and_the_queue_hold_for_a_single_request_backend() {
    // Seed 000 from an app server fanning out: 16 concurrent sends to a backend that serves one
    // connection at a time, behind max_conns = 1. They wait in the core's queue and are all
    // answered over one connection; the backend never finds a second one open.
    let backend = upkeep_testkit::serial::SerialBackend::start(Duration::from_millis(5)).unwrap();
    let mut g = group("one", backend.addr());
    g.servers[0].max_conns = 1;
    let client = client_for(vec![g]);
    let ex = LocalExecutor::new();
    run(ex.run(async {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let c = client.clone();
                ex.spawn(async move { get_text(&c, "one", &format!("/{i}")).await })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await, (200, format!("/{i}")));
        }
    }));
    assert_eq!(backend.requests(), 16);
    assert_eq!(backend.accepted(), 1, "one connection, reused");
    assert_eq!(backend.overlaps(), 0, "never a second connection open");
}
