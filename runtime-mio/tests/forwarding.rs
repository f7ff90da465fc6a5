//! Forwarding through the mio proxy at edges the shared scenarios leave out: a client that
//! half-closes right after its request still gets the response, and upstream connections over
//! IPv6 are pooled.

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
