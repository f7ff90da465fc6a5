//! The smol proxy's operator side: the admin listener (`/metrics`, `/status`, `/ready`) and the
//! access log, configured by the same `runtime.admin` and `runtime.access_log` keys as the mio
//! binary. (Counts after known traffic are checked on both runtimes by the shared scenarios.)

use std::io::{Read, Write};
use std::time::Duration;

use upkeep_core::Address;
use upkeep_smol::{Proxy, ProxyHandle};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client, get_text};
use upkeep_testkit::{TempDir, eventually, loopback_config as config, tcp_addr, within};

const PATIENCE: Duration = Duration::from_secs(10);

fn admin_get(proxy: &ProxyHandle, path: &str) -> (u16, String) {
    get_text(&proxy.admin_addr().expect("admin listener"), path)
}

#[test]
fn ready_turns_503_while_draining_and_the_admin_socket_file_goes_at_exit() {
    let backend = Backend::slow("slow", Duration::from_millis(500)).unwrap();
    let dir = TempDir::new().unwrap();
    let path = dir.socket("admin.sock");
    let mut cfg = config(vec![backend.addr()], 2);
    cfg.runtime.admin = Some(path.clone());
    let proxy = Proxy::start(cfg).unwrap();
    assert_eq!(proxy.admin_addr(), Some(path.clone()));
    assert_eq!(admin_get(&proxy, "/ready"), (200, "ready\n".to_string()));
    let (status, page) = admin_get(&proxy, "/status");
    assert_eq!(status, 200);
    assert!(page.starts_with("Active connections: 0 \n"), "{page}");
    assert_eq!(admin_get(&proxy, "/nope").0, 404);

    let mut c = client::in_flight(&proxy.listen_addrs()[0], "/slow", &backend);
    proxy.drain();
    assert_eq!(admin_get(&proxy, "/ready"), (503, "draining\n".to_string()));
    assert_eq!(c.read_response().unwrap().status, 200);
    within("wait() after drain", PATIENCE, move || proxy.wait());
    let Address::Unix(p) = path else {
        unreachable!()
    };
    assert!(!std::path::Path::new(&p).exists(), "admin socket removed");
}

/// A client that connects to the admin listener and never finishes its head does not keep
/// `/ready` from being answered, and is cut off after the admin I/O timeout.
#[test]
fn a_stalled_admin_client_does_not_block_ready() {
    let backend = Backend::identify("a").unwrap();
    let mut cfg = config(vec![backend.addr()], 1);
    cfg.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    let proxy = Proxy::start(cfg).unwrap();
    let admin = tcp_addr(&proxy.admin_addr().unwrap());
    let mut stalled = std::net::TcpStream::connect(admin).unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a")
        .unwrap();
    assert_eq!(admin_get(&proxy, "/ready").0, 200);
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        stalled.read_to_end(&mut rest).unwrap(),
        0,
        "closed without an answer"
    );
    proxy.shutdown();
}

#[test]
fn access_log_lines_and_reopen_after_rotation() {
    let backend = Backend::identify("logged").unwrap();
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("access.log");
    let mut cfg = config(vec![backend.addr()], 1);
    cfg.runtime.access_log = Some(log.to_string_lossy().into_owned());
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    assert_eq!(c.get("/first").unwrap().status, 200);
    let logged = |path: &std::path::Path, what: &str| {
        eventually(PATIENCE, || {
            std::fs::read_to_string(path).is_ok_and(|t| t.contains(what))
        })
    };
    assert!(logged(&log, "\"GET /first HTTP/1.1\" 200 "));
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains(&format!(" upstream={} reused=0 ", backend.addr())),
        "{line}"
    );

    // logrotate: move the file away, reopen, new lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    proxy.reopen_logs();
    assert!(
        eventually(PATIENCE, || {
            assert_eq!(c.get("/after").unwrap().status, 200);
            std::fs::metadata(&log).is_ok()
        }),
        "no new log file after reopen_logs()"
    );
    assert!(logged(&log, "\"GET /after HTTP/1.1\" 200 "));
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("/first")
    );
    proxy.shutdown();
}

#[test]
fn an_unopenable_access_log_fails_start_naming_the_file() {
    let backend = Backend::identify("a").unwrap();
    let mut cfg = config(vec![backend.addr()], 1);
    cfg.runtime.access_log = Some("/nonexistent-upkeep-dir/access.log".into());
    let err = Proxy::start(cfg).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent-upkeep-dir/access.log"),
        "which file? {err}"
    );
}

/// `/metrics` sums every worker: 20 short client connections spread over two workers are 20
/// accepted connections and 20 responses, however the kernel spread them.
#[test]
fn metrics_sum_over_workers() {
    let backend = Backend::identify("a").unwrap();
    let mut cfg = config(vec![backend.addr()], 2);
    cfg.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    for i in 0..20 {
        let r = client::one_shot(&listen, &client::get_close(&format!("/{i}"))).unwrap();
        assert_eq!(r.status, 200);
    }
    let (status, text) = admin_get(&proxy, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        client::metric(&text, "upkeep_requests_total{code=\"200\"}"),
        20
    );
    assert_eq!(
        client::metric(&text, "upkeep_connections_accepted_total"),
        20
    );
    assert_eq!(proxy.snapshot().requests, 20);
    proxy.shutdown();
}
