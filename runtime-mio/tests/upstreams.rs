//! Upstream management specific to the mio runtime: a server state set at run time through the
//! admin API survives a reload (the shared scenarios in `scenarios.rs` cover the rest, on both
//! runtimes).

use upkeep_core::Address;
use upkeep_mio::Proxy;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{Client, get_text};
use upkeep_testkit::loopback_config;

fn post(admin: &Address, path: &str) -> (u16, String) {
    let mut c = Client::connect(admin).unwrap();
    let r = c
        .request(format!("POST {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .unwrap();
    (r.status, r.text())
}

#[test]
fn a_run_time_drain_survives_a_reload() {
    let a = Backend::identify("a").unwrap();
    let b = Backend::identify("b").unwrap();
    let mut cfg = loopback_config(vec![a.addr(), b.addr()], 2);
    cfg.runtime.admin = Some(Address::Tcp((std::net::Ipv4Addr::LOCALHOST, 0).into()));
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let admin = proxy.admin_addr().unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let (status, body) = post(&admin, "/upstreams/default/servers/1/drain");
    assert_eq!(status, 200, "{body}");
    proxy.reload(cfg.clone()).unwrap();
    let (_, listed) = get_text(&admin, "/upstreams");
    assert!(
        listed.contains("\"address\":\"") && listed.matches("\"state\":\"drain\"").count() == 1,
        "{listed}"
    );
    for i in 0..10 {
        let (status, body) = get_text(&listen, &format!("/{i}"));
        assert_eq!(status, 200);
        assert!(
            body.starts_with("a "),
            "the drained server gets nothing: {body}"
        );
    }
    assert_eq!(b.requests(), 0);
    // Up again, and that too survives the next reload.
    assert_eq!(post(&admin, "/upstreams/default/servers/1/up").0, 200);
    proxy.reload(cfg).unwrap();
    let (_, listed) = get_text(&admin, "/upstreams");
    assert_eq!(listed.matches("\"state\":\"up\"").count(), 2, "{listed}");
    proxy.shutdown();
}
