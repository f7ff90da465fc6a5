//! Forwarding through the mio proxy at edges the shared scenarios leave out: a client that
//! half-closes right after its request still gets the response, upstream connections over
//! IPv6 are pooled, and a backend that answers and half-closes at accept is relayed.

use upkeep_mio::Proxy;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{Client, get};
use upkeep_testkit::loopback_config as config;

/// A client that shuts its write side right after sending the request still gets the response.
#[test]
fn client_half_close_after_request_still_gets_the_response() {
    let b = Backend::identify("half").unwrap();
    let proxy = Proxy::start(config(vec![b.addr()], 1)).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    c.send(&get("/hc")).unwrap();
    c.shutdown_write().unwrap();
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.text()), (200, "half GET /hc".to_string()));
    proxy.shutdown();
}

#[test]
fn ipv6_upstream() {
    let b = Backend::builder().name("six").ipv6().start().unwrap();
    let proxy = Proxy::start(config(vec![b.addr()], 1)).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    for _ in 0..3 {
        let r = c.request(&get("/v6")).unwrap();
        assert_eq!((r.status, r.text()), (200, "six GET /v6".to_string()));
    }
    assert_eq!(b.accepted(), 1, "pooled over IPv6");
    proxy.shutdown();
}

/// A backend that answers the moment it accepts — an EOF-delimited response and its close,
/// before the proxy has even seen its connect complete — is relayed whole. The connect's
/// completion, the response and the FIN then arrive as one edge-triggered event; the FIN
/// behind the data has no readiness edge of its own, so the event's hang-up must be kept, or
/// the proxy waits for an end of stream it was already told about (until `read_timeout`).
#[test]
fn a_backend_answering_and_closing_at_accept_is_relayed() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = upkeep_testkit::wire::TempDir::new().unwrap();
    let upstream = dir.socket("early.sock");
    let upkeep_core::Address::Unix(path) = &upstream else {
        unreachable!()
    };
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    // Spins on accept so the answer goes out as soon as the proxy connects; half-closes (its
    // FIN) but keeps the socket, so the proxy's request still has somewhere to go.
    let backend = std::thread::spawn(move || {
        let mut answered = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nearly");
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    answered.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    let proxy = Proxy::start(config(vec![upstream.clone()], 1)).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    for i in 0..200 {
        let mut c = Client::connect(&listen).unwrap();
        let r = c
            .request(&get(&format!("/early/{i}")))
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (r.status, r.text()),
            (200, "early".to_string()),
            "request {i}"
        );
    }
    proxy.shutdown();
    stop.store(true, Ordering::Relaxed);
    backend.join().unwrap();
}
