//! Reliability scenarios (issue 15) every runtime runs against itself, registered with
//! [`reliability_tests!`](crate::reliability_tests): trailers end to end, and what a buggy or
//! hostile peer cannot do to other clients. Bounded like [`scenarios`](crate::scenarios).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use upkeep_core::Address;

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
