//! Backpressure under edge-triggered readiness: when the proxy stops reading a peer because
//! the other side is not keeping up, it must resume on its own once there is room again, since
//! the bytes already waiting in the kernel bring no new readiness event. Pipelined bursts (also
//! with a half-close behind them) and a tunnel echoing far more than the socket buffers hold.

use std::io::Write;
use std::time::Duration;

use upkeep_core::config::Io;
use upkeep_mio::Proxy;
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::Client;
use upkeep_testkit::loopback_config as config;

/// Many pipelined requests in one write, with responses large enough to hit the write
/// high-water mark: the core stops reading the client, and must be resumed even though every
/// request byte is already sitting in the kernel (no new readiness edge will come).
#[test]
fn pipelined_burst_with_backpressure_is_fully_answered() {
    pipelined_burst(false, Io::Epoll);
}

/// On io_uring: the core's pause cancels the multishot receive; what it still delivered is
/// held and handed over on resume.
#[test]
fn pipelined_burst_with_backpressure_is_fully_answered_on_io_uring() {
    pipelined_burst(false, Io::Uring);
}

/// The same, with the client half-closing right after its last request: the EOF sits behind
/// the unread requests and must not cut them off.
#[test]
fn pipelined_burst_then_half_close_is_fully_answered() {
    pipelined_burst(true, Io::Epoll);
}

/// On io_uring: the EOF arrives while the receive is paused, and is held behind the requests.
#[test]
fn pipelined_burst_then_half_close_is_fully_answered_on_io_uring() {
    pipelined_burst(true, Io::Uring);
}

fn on(io: Io, mut config: upkeep_core::Config) -> upkeep_core::Config {
    config.runtime.io = io;
    config
}

fn pipelined_burst(half_close: bool, io: Io) {
    const N: usize = 200;
    let b = Backend::builder()
        .name("p")
        .pattern_body(32 * 1024, 7)
        .start()
        .unwrap();
    let proxy = Proxy::start(on(io, config(vec![b.addr()], 1))).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let reqs: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            format!(
                "GET /{i} HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(100)
            )
            .into_bytes()
        })
        .collect();
    let all = reqs.concat();
    // Write from a thread: the proxy may stop reading before all of it is in.
    let mut w = c.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&all)?;
        if half_close {
            w.shutdown(std::net::Shutdown::Write)?;
        }
        Ok::<(), std::io::Error>(())
    });
    // Read nothing for a while: the proxy's queue to us fills and it stops reading requests.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..N {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(r.body, upkeep_testkit::pattern(32 * 1024, 7), "body {i}");
    }
    writer.join().unwrap().unwrap();
    proxy.shutdown();
}

/// A tunnel carrying far more than the socket buffers, with the client not reading the echo
/// for a while: both directions stop on backpressure and must resume (edge-triggered readiness
/// gives no second event for bytes already waiting in the kernel).
#[test]
fn tunnel_bulk_echo_with_backpressure_both_ways() {
    tunnel_bulk_echo(Io::Epoll);
}

#[test]
fn tunnel_bulk_echo_with_backpressure_both_ways_on_io_uring() {
    tunnel_bulk_echo(Io::Uring);
}

fn tunnel_bulk_echo(io: Io) {
    const LEN: usize = 24 * 1024 * 1024;
    let b = Backend::builder().name("ws").upgrade().start().unwrap();
    let proxy = Proxy::start(on(io, config(vec![b.addr()], 1))).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let r = c
        .request(b"GET /t HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 101);
    let data = upkeep_testkit::pattern(LEN, 11);
    let mut w = c.stream().try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        w.write_all(&sent)
    });
    std::thread::sleep(Duration::from_millis(500));
    let echoed = c.read_exact_raw(LEN).expect("the whole echo");
    assert!(echoed == data, "echo differs");
    writer.join().unwrap().unwrap();
    proxy.shutdown();
}
