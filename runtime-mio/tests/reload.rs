//! Reloading and draining the mio proxy: a request in flight finishes on its old worker, no
//! connection the kernel completed is lost while reloads replace the workers, every listening
//! socket stays served when a reload changes the worker count, a drained Unix listener
//! refuses new connections, and a failed reload leaves no socket file behind. (Reload through the library with its counters is in `runtime.rs`,
//! SIGHUP in `cli.rs`.)

use std::time::Duration;

use upkeep_core::Config;
use upkeep_core::config::Io;
use upkeep_mio::Proxy;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{Client, get, in_flight};
use upkeep_testkit::loopback_config as config;

/// A reload while a slow request is in flight: it completes on the old worker.
#[test]
fn reload_with_a_request_in_flight() {
    let slow = Backend::slow("slow", Duration::from_millis(800)).unwrap();
    let cfg = config(vec![slow.addr()], 1);
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = in_flight(&listen, "/inflight", &slow);
    proxy.reload(cfg).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "slow GET /inflight".to_string())
    );
    // A new connection lands on the new worker and works.
    let mut d = Client::connect(&listen).unwrap();
    assert_eq!(d.request(&get("/after")).unwrap().status, 200);
    proxy.shutdown();
}

/// Reloads while clients keep opening connections: every connection the kernel completed is
/// accepted by some worker. (A fresh `SO_REUSEPORT` socket per reload meant closing the old
/// one, and the connections queued on it were reset without any worker seeing them.)
///
/// Not asserted: that each of them gets a response. A connection an old worker accepted just
/// before the reload, whose request it has not read yet, is closed as idle by the core's drain
/// (as nginx does), with a reset if the request arrived meanwhile.
#[test]
fn reloads_under_connection_churn_lose_no_connection() {
    reloads_under_connection_churn(Io::Epoll);
}

/// The same on io_uring, whose listener polls may complete in the batch that brings the
/// drain, or after it: those connections are taken in first, or handed to a new worker.
#[test]
fn reloads_under_connection_churn_lose_no_connection_on_io_uring() {
    reloads_under_connection_churn(Io::Uring);
}

fn reloads_under_connection_churn(io: Io) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let b = Backend::identify("r").unwrap();
    let mut cfg = config(vec![b.addr()], 2);
    cfg.runtime.io = io;
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (listen, stop) = (listen.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut connected, mut ok) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) && connected < 5000 {
                    let Ok(mut c) = Client::connect(&listen) else {
                        continue;
                    };
                    connected += 1;
                    if c.request(&get("/")).is_ok_and(|r| r.status == 200) {
                        ok += 1;
                    }
                }
                (connected, ok)
            })
        })
        .collect();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        proxy.reload(cfg.clone()).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (mut connected, mut ok) = (0, 0);
    for c in clients {
        let (c, o) = c.join().unwrap();
        connected += c;
        ok += o;
    }
    assert!(ok > 0);
    // Old workers finish their last exchanges; their counters stay in the totals.
    let accepted = proxy.snapshot().accepted;
    assert_eq!(
        accepted,
        connected,
        "{} connections never reached a worker ({ok} answered)",
        connected.saturating_sub(accepted)
    );
    proxy.shutdown();
}

/// At capacity, a connection the kernel completed but no worker took in yet is served by the
/// new generation after a reload, once a client leaves (on either I/O: a connection the old
/// worker took in moves to a new worker).
#[test]
fn a_connection_waiting_at_capacity_survives_a_reload() {
    waiting_at_capacity_survives_a_reload(Io::Epoll);
}

#[test]
fn a_connection_waiting_at_capacity_survives_a_reload_on_io_uring() {
    waiting_at_capacity_survives_a_reload(Io::Uring);
}

fn waiting_at_capacity_survives_a_reload(io: Io) {
    let backend = Backend::identify("b").unwrap();
    let mut cfg = config(vec![backend.addr()], 1);
    cfg.runtime.io = io;
    cfg.limits.max_client_connections = 1;
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut holder = Client::connect(&listen).unwrap();
    assert_eq!(holder.request(&get("/h")).unwrap().status, 200);
    let mut waiting = Client::connect(&listen).unwrap();
    waiting.send(&get("/q")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    proxy.reload(cfg.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(holder);
    let r = waiting
        .read_response()
        .expect("the waiting connection is served");
    assert_eq!(r.text(), "b GET /q");
    proxy.shutdown();
}

/// Reloads that change the worker count: every listening socket left open is served (a socket
/// kept open by nobody's worker would swallow the connections the kernel spreads onto it).
#[test]
fn reloads_changing_the_worker_count_keep_every_socket_served() {
    let b = Backend::identify("w").unwrap();
    let mut cfg = config(vec![b.addr()], 2);
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    for workers in [1, 3, 2, 1] {
        cfg.runtime.workers = workers;
        proxy.reload(cfg.clone()).unwrap();
        // Enough fresh connections that reuseport hashing reaches every socket in the group.
        for i in 0..60 {
            let mut c = Client::connect(&listen).unwrap();
            c.stream()
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let r = c
                .request(&get(&format!("/{workers}/{i}")))
                .unwrap_or_else(|e| panic!("{workers} workers, request {i}: {e}"));
            assert_eq!(r.status, 200);
        }
        assert!(proxy.worker_snapshots().len() >= workers);
    }
    proxy.shutdown();
}

/// After `drain`, a Unix listener refuses new connections (like a closed TCP listener) instead
/// of queueing them on a socket nobody accepts from any more.
#[test]
fn drain_closes_unix_listeners() {
    let slow = Backend::slow("slow", Duration::from_millis(1500)).unwrap();
    let dir = upkeep_testkit::wire::TempDir::new().unwrap();
    let path = dir.socket("listen.sock");
    let mut cfg = Config::simple(path.clone(), vec![slow.addr()]);
    cfg.runtime.workers = 1;
    let proxy = Proxy::start(cfg).unwrap();
    // Keep the proxy busy so the drain takes a while.
    let mut busy = in_flight(&path, "/busy", &slow);
    proxy.drain();
    std::thread::sleep(Duration::from_millis(200));
    match Client::connect(&path) {
        Err(_) => {}
        Ok(mut late) => {
            late.stream()
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let r = late.request(&get("/late"));
            // Served or closed are both fine; a connection left hanging is not.
            if let Err(e) = &r {
                assert!(
                    !upkeep_testkit::wire::is_timeout(e),
                    "connected during drain, then nothing: {e}"
                );
            }
        }
    }
    assert_eq!(busy.read_response().unwrap().status, 200);
    proxy.wait();
}

/// A reload that fails after binding a new Unix listener (a later listener's port is taken)
/// changes nothing — and leaves no socket file at the new path it never served, while the
/// listener it keeps stays served.
#[test]
fn a_failed_reload_leaves_no_new_socket_file() {
    let backend = Backend::identify("kept").unwrap();
    let dir = upkeep_testkit::wire::TempDir::new().unwrap();
    let kept = dir.socket("kept.sock");
    let mut cfg = Config::simple(kept.clone(), vec![backend.addr()]);
    cfg.runtime.workers = 1;
    let proxy = Proxy::start(cfg.clone()).unwrap();

    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = upkeep_core::Address::Tcp(holder.local_addr().unwrap());
    let added = dir.socket("added.sock");
    let mut next = cfg.clone();
    for addr in [added.clone(), taken] {
        let mut l = next.listeners[0].clone();
        l.addr = addr;
        next.listeners.push(l);
    }
    assert!(proxy.reload(next).is_err(), "a taken port fails the reload");
    let upkeep_core::Address::Unix(added) = added else {
        unreachable!()
    };
    assert!(
        !std::path::Path::new(&added).exists(),
        "the failed reload left the new listener's socket file behind"
    );
    assert_eq!(
        upkeep_testkit::client::get_text(&kept, "/"),
        (200, "kept GET /".to_string())
    );
    proxy.shutdown();
    let upkeep_core::Address::Unix(kept) = kept else {
        unreachable!()
    };
    assert!(!std::path::Path::new(&kept).exists(), "removed at exit");
}
