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

mod common;

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

/// A backend that sends a whole response and then resets, to a client that reads nothing for
/// a while: the reset must not overtake the body the proxy already read (on io_uring: bytes
/// received while the core had paused reading are held, and the error waits behind them).
#[test]
fn a_reset_after_a_whole_response_loses_no_byte_of_it() {
    reset_after_response(Io::Epoll);
}

#[test]
fn a_reset_after_a_whole_response_loses_no_byte_of_it_on_io_uring() {
    reset_after_response(Io::Uring);
}

fn reset_after_response(io: Io) {
    use std::io::Read;
    use std::net::TcpListener;
    const LEN: usize = 8 << 20;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let baddr = upkeep_core::Address::Tcp(l.local_addr().unwrap());
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // Bounded: a write the kernel cannot take fails the test below instead of hanging.
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the request ended early");
            got.extend_from_slice(&buf[..n]);
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n");
        let wrote = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(&upkeep_testkit::pattern(LEN, 3)));
        assert!(
            wrote.is_ok(),
            "the backend could not write its response: {wrote:?}"
        );
        // Written means taken by this kernel, not received by the proxy's: bytes still in this
        // socket's send queue when it resets are lost on the wire, and no proxy can relay
        // them. Wait (bounded) for the queue to drain into the proxy's receive queue; what is
        // left at the reset is the allowance below.
        let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        for _ in 0..750 {
            if send_queue(local, peer) == Some(0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let unsent = send_queue(local, peer).unwrap_or(0);
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        unsent
    });
    let mut cfg = config(vec![baddr], 1);
    cfg.limits.write_high_water = 4096;
    let proxy = Proxy::start(on(io, cfg)).unwrap();
    let upkeep_core::Address::Tcp(paddr) = proxy.listen_addrs()[0].clone() else {
        panic!("a TCP listener")
    };
    // A small receive buffer (set before connecting, so the window starts small): the proxy's
    // queue toward the client fills at once and it stops reading the backend.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&paddr.into()).unwrap();
    let mut c = std::net::TcpStream::from(sock);
    c.write_all(&upkeep_testkit::client::get("/big")).unwrap();
    // Read nothing until the backend has written everything and reset.
    std::thread::sleep(Duration::from_millis(1000));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let head = loop {
        let head = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        if head.is_some_and(|h| got.len() >= h + LEN) {
            break head.unwrap_or(0);
        }
        match c.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            // Cut off (the bug this checks for): compared below.
            _ => break head.unwrap_or(0),
        }
    };
    let unsent = backend.join().unwrap();
    let body = &got[head..];
    assert!(
        body == &upkeep_testkit::pattern(LEN, 3)[..body.len()],
        "the body's bytes are not the backend's"
    );
    if unsent == 0 {
        // Every byte reached the proxy before the reset: every byte reaches the client.
        assert_eq!(
            body.len(),
            LEN,
            "body bytes lost behind the backend's reset"
        );
    } else {
        // A busy machine kept the backend from handing everything over within the wait: the
        // response really is cut short, and the client must see it so. (Then the proxy's
        // abortive close also drops what its kernel still queued toward the client, so no
        // byte count can be checked; both I/O modes lose ~6 MB here if the backend resets
        // at once.)
        eprintln!("the backend reset with {unsent} bytes unsent: checked the cut only");
        assert!(body.len() < LEN, "a cut response arrived whole");
    }
    proxy.shutdown();
}

/// The bytes in the send queue (unsent or unacknowledged) of the loopback TCP socket `local`
/// → `peer`, from `/proc/net/tcp` (its `tx_queue` column); `None` if it is not listed.
fn send_queue(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<usize> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => String::new(),
    };
    let (l, p) = (hex(local), hex(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[1] == l && f[2] == p {
            let tx = f[4].split(':').next()?;
            usize::from_str_radix(tx, 16).ok()
        } else {
            None
        }
    })
}

/// Uploads toward a backend that reads nothing: the proxy's queue toward the backend fills and
/// it stops reading the clients. What it read and could not pass on stays within its limits:
/// on io_uring a receive already on its way when a pause comes still brings bytes, held until
/// reading resumes — less than two of its 64 KiB buffers per connection at any time
/// (`upkeep_held_bytes_max`). A plain multishot receive brought up to 32 at once: 2 MiB was
/// seen here, per connection, beyond every limit. Copied and spliced uploads alike.
#[test]
fn a_paused_upload_holds_no_more_than_two_receive_buffers() {
    paused_upload(Io::Epoll);
}

#[test]
fn a_paused_upload_holds_no_more_than_two_receive_buffers_on_io_uring() {
    paused_upload(Io::Uring);
}

fn paused_upload(io: Io) {
    use std::net::TcpListener;
    const LEN: usize = 64 << 20;
    // Several at once: a worker busy with the others lets bytes pile up in each socket, which
    // a multishot receive takes in one go.
    const CLIENTS: usize = 8;
    for splice_min in [0, 16 * 1024] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let baddr = upkeep_core::Address::Tcp(l.local_addr().unwrap());
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        // Accepts, reads nothing, and keeps the connections until told.
        let backend = std::thread::spawn(move || {
            let mut kept = Vec::new();
            l.set_nonblocking(true).unwrap();
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        kept.push(s);
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(_) => match stopped.recv_timeout(Duration::from_millis(10)) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return kept.len(),
                    },
                }
            }
        });
        let mut cfg = config(vec![baddr], 1);
        cfg.runtime.admin = Some(upkeep_core::Address::parse("127.0.0.1:0").unwrap());
        cfg.limits.splice_min = splice_min;
        cfg.limits.min_upload_rate = 0;
        let proxy = Proxy::start(on(io, cfg)).unwrap();
        let upkeep_core::Address::Tcp(paddr) = proxy.listen_addrs()[0].clone() else {
            panic!("a TCP listener")
        };
        let mut clients = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..CLIENTS {
            let c = std::net::TcpStream::connect(paddr).unwrap();
            let mut w = c.try_clone().unwrap();
            writers.push(std::thread::spawn(move || {
                // Blocks once every buffer on the way is full; ends with an error when the
                // connection is shut down below.
                w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                let head = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {LEN}\r\n\r\n");
                let chunk = upkeep_testkit::pattern(1 << 20, 9);
                let mut sent = 0;
                let mut ok = w.write_all(head.as_bytes()).is_ok();
                while ok && sent < LEN {
                    ok = w.write_all(&chunk).is_ok();
                    sent += chunk.len();
                }
                sent
            }));
            clients.push(c);
        }
        // Every upload on its way to the backend (bounded: a busy machine).
        for _ in 0..200 {
            if accepted.load(std::sync::atomic::Ordering::SeqCst) == CLIENTS {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let held = || common::metric(&proxy, "upkeep_held_bytes_max");
        // Until the uploads have settled: the same figure for half a second (at most 10 s).
        let (mut last, mut same) = (u64::MAX, 0);
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            let now = held();
            same = if now == last { same + 1 } else { 0 };
            last = now;
            if same >= 5 {
                break;
            }
        }
        if io == Io::Uring && !upkeep_testkit::kernel_at_least(6, 17) {
            // No limit on a multishot receive before Linux 6.17: only a connection's first
            // pause is bounded (by the kernel's 32 receives a wake-up), not tested here.
            eprintln!("{last} bytes held at most (Linux before 6.17: not checked)");
        } else {
            assert!(
                last < 2 * 64 * 1024,
                "{last} bytes held while paused (splice_min {splice_min})"
            );
        }
        if io == Io::Epoll {
            assert_eq!(last, 0, "the epoll workers read only what the core takes");
        }
        for c in &clients {
            c.shutdown(std::net::Shutdown::Both).unwrap();
        }
        for w in writers {
            let sent = w.join().unwrap();
            assert!(
                sent < LEN,
                "the proxy stopped reading the upload ({sent} bytes sent)"
            );
        }
        let _ = stop.send(());
        assert_eq!(
            backend.join().unwrap(),
            CLIENTS,
            "every upload reached the backend"
        );
        proxy.shutdown();
    }
}
