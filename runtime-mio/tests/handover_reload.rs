//! Idle upstream connections handed between workers (issue 11, item 2) while reloads replace
//! the workers: a one-request-at-a-time backend behind `max_conns = 1`, two workers, keep-alive
//! clients sending all along. Every request is answered 200 and the backend never finds a
//! second connection open while it serves one: the new generation's ledger continues the old
//! one's (`Shared::continued`), so `max_conns` holds over both while the old workers drain.
//! (With a ledger per generation the new generation's idle connection kept the backend busy
//! while an old-generation request opened a second one, which hung until
//! `runtime.shutdown_timeout`.)

use std::time::{Duration, Instant};

use upkeep_core::config::Io;
use upkeep_mio::Proxy;
use upkeep_testkit::client::{Client, get};
use upkeep_testkit::loopback_config as config;
use upkeep_testkit::serial::SerialBackend;

#[test]
fn reloads_while_connections_are_handed_between_workers_answer_every_request() {
    reloads_while_handing_over(Io::Epoll);
}

/// The same on io_uring: a connection leaves a worker only once its receive is cancelled.
#[test]
fn reloads_while_connections_are_handed_between_workers_answer_every_request_on_io_uring() {
    reloads_while_handing_over(Io::Uring);
}

fn reloads_while_handing_over(io: Io) {
    let backend = SerialBackend::start(Duration::from_millis(5)).unwrap();
    let mut cfg = config(vec![backend.addr()], 2);
    cfg.runtime.io = io;
    cfg.upstreams[0].servers[0].max_conns = 1;
    cfg.upstreams[0].queue_timeout = Duration::from_secs(20);
    let proxy = Proxy::start(cfg.clone()).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let began = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let listen = listen.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&listen).unwrap();
                client
                    .stream()
                    .set_read_timeout(Some(Duration::from_secs(40)))
                    .unwrap();
                (0..25)
                    .map(|r| {
                        client
                            .request(&get(&format!("/c{c}/r{r}")))
                            .map(|resp| resp.status)
                            .unwrap_or(0)
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(80));
        proxy.reload(cfg.clone()).unwrap();
    }
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let bad: Vec<&u16> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} not 200 ({bad:?}) after {:?}",
        bad.len(),
        statuses.len(),
        began.elapsed()
    );
    assert_eq!(
        backend.overlaps(),
        0,
        "a second backend connection while one was open (max_conns = 1 across a reload)"
    );
    proxy.shutdown();
}
