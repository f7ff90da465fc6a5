//! Defaults an operator meets on day one, through the real runtime on loopback.

use upkeep_core::{Address, Config};
use upkeep_mio::Proxy;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client};
use upkeep_testkit::pattern;

/// Request bodies are not capped by default (nginx's `client_max_body_size 1m` is not copied:
/// bodies stream with bounded memory): a 24 MiB upload goes through byte for byte.
#[test]
fn a_multi_megabyte_upload_streams_through_with_defaults() {
    let b = Backend::builder().echo().start().unwrap();
    let mut cfg = Config::simple(Address::parse("127.0.0.1:0").unwrap(), vec![b.addr()]);
    cfg.runtime.workers = 1;
    assert_eq!(cfg.limits.max_body, 0, "the default is unlimited");
    let proxy = Proxy::start(cfg).unwrap();
    let body = pattern(24 << 20, 7);
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let r = c.request(&client::post("/upload", &body)).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == body, "echoed {} bytes", r.body.len());
    proxy.shutdown();
}
