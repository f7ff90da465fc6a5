//! Reliability scenarios (issue 15) every runtime runs against itself, registered with
//! [`reliability_tests!`](crate::reliability_tests): trailers end to end, and what a buggy or
//! hostile peer cannot do to other clients. Bounded like [`scenarios`](crate::scenarios).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use upkeep_core::Address;

use crate::backend::Backend;
use crate::client::Client;
use crate::wire::{IO_TIMEOUT, is_timeout};
use crate::{Start, loopback_config};

/// Reads from `r` until `done(buffer)` (or EOF, or `IO_TIMEOUT` in all); returns the buffer.
fn read_until(r: &mut impl Read, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    while !done(&buf) && start.elapsed() < IO_TIMEOUT {
        match r.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    buf
}

/// A chunked message is complete: its last chunk and the (possibly empty) trailer section
/// after it have arrived.
fn chunked_complete(buf: &[u8]) -> bool {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let body = &buf[head_end + 4..];
    body.windows(5)
        .position(|w| w == b"\r\n0\r\n")
        .is_some_and(|i| body[i + 2..].ends_with(b"\r\n\r\n"))
}

/// A backend on 127.0.0.1 that takes one connection, reads one chunked request and answers
/// `response`; the channel gives back the request bytes.
fn one_request_backend(response: &'static [u8]) -> (Address, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let request = read_until(&mut s, chunked_complete);
        let _ = s.write_all(response);
        let _ = tx.send(request);
        // Keep the connection until the proxy is done with it (or the time is up).
        let _ = read_until(&mut s, |_| false);
    });
    (addr, rx)
}

/// Trailers end to end: a client that sent `TE: trailers` gets the backend's trailers, and the
/// backend gets the client's — without the hop-by-hop and framing fields either put in them.
pub fn trailers_end_to_end(start: Start) {
    let (backend, request) = one_request_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\nConnection: close\r\ngrpc-message: fine\r\n\r\n",
    );
    let p = start(loopback_config(vec![backend], 1));
    let listen = p.listen_addrs()[0].clone();
    let mut c = Client::connect(&listen).unwrap();
    c.send(b"POST /rpc HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 42\r\nTransfer-Encoding: gzip\r\n\r\n")
        .unwrap();
    let response = read_until(c.stream(), chunked_complete);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.ends_with("\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n"),
        "{response}"
    );
    let request = request.recv_timeout(IO_TIMEOUT).unwrap();
    let request = String::from_utf8_lossy(&request);
    assert!(request.contains("\r\nTE: trailers\r\n"), "{request}");
    assert!(
        request.ends_with("\r\n5\r\nhello\r\n0\r\nX-Checksum: 42\r\n\r\n"),
        "{request}"
    );
    p.stop();
}

/// Slow uploaders cannot pin backend connections: while 20 clients trickle small bodies (under
/// `limits.request_buffer`) the backend sees no connection at all; then every one is answered.
/// Uploaders of bodies too large to buffer, trickling below `limits.min_upload_rate`, hold
/// backend connections only until the rate catches them (a 408), and a large upload at a
/// normal rate still streams through.
pub fn slow_uploads_cannot_pin_backends(start: Start) {
    let b = Backend::identify("up").unwrap();
    let mut config = loopback_config(vec![b.addr()], 1);
    config.client_timeouts.body = Duration::from_secs(2);
    config.limits.min_upload_rate = 2000;
    config.limits.max_body = 0;
    let p = start(config);
    let listen = p.listen_addrs()[0].clone();

    // Small bodies, a few bytes at a time: buffered, so no backend connection is taken.
    const BODY: usize = 100;
    let mut small: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = Client::connect(&listen).unwrap();
            c.send(
                format!("POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\n\r\n").as_bytes(),
            )
            .unwrap();
            c
        })
        .collect();
    for _ in 0..BODY / 10 - 1 {
        for c in &mut small {
            c.send(&[b'x'; 10]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            b.open_connections(),
            0,
            "a slow uploader took a backend connection"
        );
    }
    for c in &mut small {
        c.send(&[b'x'; 10]).unwrap();
    }
    for c in &mut small {
        let r = c.read_response().unwrap();
        assert_eq!((r.status, r.text()), (200, "up POST /s".to_string()));
    }

    // Large bodies at ~1 byte per 50 ms: they stream, so each holds a backend connection —
    // until the minimum rate cuts it off after the 2 s grace.
    let mut large: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = Client::connect(&listen).unwrap();
            c.send(b"POST /l HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    let pooled = b.open_connections();
    for c in &mut large {
        c.stream()
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
    }
    let mut answered = [false; 5];
    let cut = crate::eventually(IO_TIMEOUT, || {
        for (c, answered) in large.iter_mut().zip(&mut answered) {
            let _ = c.send(b"x");
            *answered |= c.stream().peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
        }
        std::thread::sleep(Duration::from_millis(50));
        answered.iter().all(|&a| a)
    });
    assert!(cut, "the slow large uploads were not cut off");
    for c in &mut large {
        c.stream().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(c.read_response().map(|r| r.status).ok(), Some(408));
    }
    // Their backend connections are let go (those taken from the pool as well).
    assert!(
        b.wait_until(IO_TIMEOUT, |b| b.open_connections() <= pooled),
        "slow uploads still hold backend connections: {} open, {pooled} pooled before",
        b.open_connections()
    );

    // A large upload at a normal rate streams through.
    let body = crate::pattern(4 << 20, 1);
    let mut c = Client::connect(&listen).unwrap();
    let mut req = format!(
        "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = c.request(&req).unwrap();
    assert_eq!((r.status, r.text()), (200, "up POST /big".to_string()));
    p.stop();
}

/// How long the chaos soak runs: `UPKEEP_SOAK_SECS`, 4 s by default (CI).
fn soak_duration() -> Duration {
    let secs = std::env::var("UPKEEP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(secs)
}

/// Sockets this process has open (Linux; `None` elsewhere). Sockets only: an async runtime's
/// process-wide reactor (epoll, eventfd, timerfd) is created on first use and stays.
fn open_fds() -> Option<usize> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count(),
    )
}

/// A tiny deterministic generator per client thread (xorshift), so a failing soak can be
/// re-read: the seed is in the failure message.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The chaos soak: clients that keep connections alive, pipeline, abort mid-request and read
/// slowly, against backends that answer, reset, close without answering, stall, send garbage
/// and send extra bytes after a response — with reloads during it where the runtime has them.
/// Checked: every response a client gets is its own (the backend names the request it answers)
/// or a clean error status; no POST reaches a backend twice; at the end the proxy holds no
/// client connection, the pool only idle connections the good backend sees open, and the
/// process as many sockets as before (a runtime's process-wide reactor descriptors aside).
pub fn chaos_soak(start: Start) {
    use crate::backend::{Behaviour, Framing};
    use upkeep_core::config::{RouteConfig, ServerConfig, UpstreamConfig};
    let good = Backend::builder().name("good").identify().start().unwrap();
    let chunked = Backend::builder()
        .name("chunked")
        .identify()
        .framing(Framing::Chunked(7))
        .stray_on_idle(
            Duration::from_millis(30),
            b"HTTP/1.1 408 Request Timeout\r\n\r\n".to_vec(),
        )
        .start()
        .unwrap();
    let big = Backend::builder()
        .name("big")
        .pattern_body(256 * 1024, 3)
        .start()
        .unwrap();
    let faults = [
        ("reset", Behaviour::Reset),
        ("close", Behaviour::CloseWithoutAnswer),
        ("garbage", Behaviour::Garbage),
        ("racy", Behaviour::ResetReused),
        (
            "extra",
            Behaviour::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextraSTRAY".to_vec()),
        ),
    ];
    let faulty: Vec<(&str, Backend)> = faults
        .iter()
        .map(|(name, b)| {
            let backend = Backend::builder()
                .name(*name)
                .behaviour(b.clone())
                .start()
                .unwrap();
            (*name, backend)
        })
        .collect();
    let stall = Backend::slow("stall", Duration::from_secs(5)).unwrap();

    let mut config = loopback_config(vec![good.addr()], 2);
    config.upstreams[0].name = "good".into();
    config.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    let mut group = |name: &str, addr: Address| {
        let mut g = UpstreamConfig::new(name, vec![ServerConfig::new(addr)]);
        if name == "stall" {
            g.read_timeout = Duration::from_millis(300);
        }
        config.upstreams.push(g);
        config.routes.push(RouteConfig {
            host: None,
            path_prefix: format!("/{name}/"),
            upstream: name.into(),
        });
    };
    group("chunked", chunked.addr());
    group("big", big.addr());
    group("stall", stall.addr());
    for (name, b) in &faulty {
        group(name, b.addr());
    }
    config.routes.push(RouteConfig {
        host: None,
        path_prefix: "/".into(),
        upstream: "good".into(),
    });
    let fds_before = open_fds();
    let p = start(config.clone());
    let listen = p.listen_addrs()[0].clone();
    let admin = p.admin_addr().unwrap();

    let until = Instant::now() + soak_duration();
    let paths = [
        "good", "chunked", "big", "stall", "reset", "close", "garbage", "racy", "extra",
    ];
    let clients: Vec<_> = (0..6u64)
        .map(|t| {
            let listen = listen.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let seed = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                let mut dice = Dice(seed);
                let fail = |what: String| format!("client {t} (seed {seed:#x}): {what}");
                let mut c = Client::connect(&listen).map_err(|e| fail(e.to_string()))?;
                let mut n = 0usize;
                while Instant::now() < until {
                    n += 1;
                    let path = paths[dice.below(paths.len() as u64) as usize];
                    let target = format!("/{path}/t{t}/r{n}");
                    let action = dice.below(10);
                    if action == 0 {
                        // Abort: the request goes out, the connection is dropped unread.
                        let _ = c.send(&crate::client::post(&target, b"aborted"));
                        c = Client::connect(&listen).map_err(|e| fail(e.to_string()))?;
                        continue;
                    }
                    if action == 1 && path == "good" {
                        // Pipeline three, answered in order.
                        let reqs: Vec<Vec<u8>> = (0..3)
                            .map(|k| crate::client::get(&format!("{target}/p{k}")))
                            .collect();
                        let rs = c
                            .pipeline(&reqs)
                            .map_err(|e| fail(format!("pipeline {target}: {e}")))?;
                        for (k, r) in rs.iter().enumerate() {
                            let want = format!("good GET {target}/p{k}");
                            if r.status != 200 || r.text() != want {
                                return Err(fail(format!(
                                    "pipelined {k}: {} {:?}, want {want:?}",
                                    r.status,
                                    r.text()
                                )));
                            }
                        }
                        continue;
                    }
                    let post = action < 5;
                    let req = if post {
                        crate::client::post(&target, b"body")
                    } else {
                        crate::client::get(&target)
                    };
                    let method = if post { "POST" } else { "GET" };
                    let r = if path == "big" && action >= 8 {
                        // A slow reader: the response trickles out of the proxy's buffers.
                        c.send(&req).map_err(|e| fail(e.to_string()))?;
                        std::thread::sleep(Duration::from_millis(20));
                        c.read_response()
                    } else {
                        c.request(&req)
                    };
                    let r = match r {
                        Ok(r) => r,
                        // The connection ended without a response: only clean if nothing of a
                        // response arrived; the next request goes on a new connection.
                        Err(e) => {
                            return Err(fail(format!("{method} {target}: {e}")));
                        }
                    };
                    let ok = match path {
                        "good" | "chunked" => {
                            r.status == 200 && r.text() == format!("{path} {method} {target}")
                        }
                        // Reset when a pooled connection is reused: retried (GET) or a 502
                        // (a POST is never re-sent).
                        "racy" => {
                            (r.status == 200 && r.text() == format!("{path} {method} {target}"))
                                || r.status == 502
                        }
                        "big" => r.status == 200 && r.body == crate::pattern(256 * 1024, 3),
                        "stall" => r.status == 504,
                        "extra" => (r.status == 200 && r.body == b"extra") || r.status == 502,
                        _ => r.status == 502,
                    };
                    if !ok {
                        let want = crate::pattern(256 * 1024, 3);
                        let at = r.body.iter().zip(&want).position(|(a, b)| a != b);
                        return Err(fail(format!(
                            "{method} {target}: {} {} bytes, first difference from /big's at {at:?} {:?}",
                            r.status,
                            r.body.len(),
                            String::from_utf8_lossy(&r.body[..r.body.len().min(80)])
                        )));
                    }
                    if r.connection_has("close") {
                        c = Client::connect(&listen).map_err(|e| fail(e.to_string()))?;
                    }
                }
                Ok(n)
            })
        })
        .collect();

    let mut reloads = 0;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        let mut next = config.clone();
        next.upstreams[0].keepalive = 16 + reloads % 2;
        match p.reload(next) {
            None => break,
            Some(r) => r.expect("reload"),
        }
        reloads += 1;
    }
    let results: Vec<Result<usize, String>> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let requests: usize = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    eprintln!("chaos soak: {requests} requests, {reloads} reloads, failures: {failures:?}");
    assert!(failures.is_empty(), "{failures:?}");

    // No POST twice: every backend saw each POST target at most once.
    let mut posts = std::collections::BTreeSet::new();
    let logs = [&good, &chunked, &big, &stall]
        .into_iter()
        .chain(faulty.iter().map(|(_, b)| b))
        .flat_map(|b| b.log());
    for r in logs.filter(|r| r.method == "POST") {
        assert!(
            posts.insert(r.target.clone()),
            "POST {} reached a backend twice",
            r.target
        );
    }

    // Back to baseline: no client connection left, and the good backend's open connections
    // are exactly the pool's idle ones.
    let metrics = || crate::client::get_text(&admin, "/metrics").1;
    let settled = crate::eventually(IO_TIMEOUT, || {
        let m = metrics();
        // The admin request itself is not a proxied client connection.
        crate::client::metric(&m, "upkeep_connections_active") == 0
            && crate::client::metric(&m, "upkeep_pool_idle_connections{upstream=\"good\"}")
                == good.open_connections() as u64
    });
    assert!(settled, "not back to baseline:\n{}", metrics());
    p.stop();
    if let Some(before) = fds_before {
        assert!(
            crate::eventually(IO_TIMEOUT, || open_fds().is_some_and(|n| n <= before)),
            "sockets: {before} before, {:?} after",
            open_fds()
        );
    }
}
