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
