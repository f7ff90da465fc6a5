//! No socket left behind: after upstream errors (connect refused, resets, closes without an
//! answer), connect and send timeouts, and clients that abort mid-exchange, the mio proxy owns
//! no socket to any backend and none on its listen port. Sockets are counted in
//! `/proc/net/tcp*`; every test uses real sockets on loopback and is bounded in time.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use upkeep_core::Address;
use upkeep_core::config::Io;
use upkeep_mio::Proxy;
use upkeep_testkit::backend::{Backend, closed_port};
use upkeep_testkit::client::{Client, get};
use upkeep_testkit::{eventually, loopback_config as config, tcp_addr as tcp};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sockets of this process (inode != 0: still owned by a descriptor; TIME_WAIT and orphans have
/// none) in any state but LISTEN whose local port is `local` or whose remote port is `remote`.
/// The proxy runs in the test process, so with `local` = the proxy's listen port this counts the
/// proxy's client-side sockets, and with `remote` = a backend's port its upstream sockets.
fn owned_sockets(local: Option<u16>, remote: Option<u16>) -> usize {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 10 || cols[3] == "0A" || cols[9] == "0" {
                continue;
            }
            let port = |c: &str| {
                c.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if local.is_some() && port(cols[1]) == local
                || remote.is_some() && port(cols[2]) == remote
            {
                n += 1;
            }
        }
    }
    n
}

/// Connect refused, a backend that resets, one that closes without answering: after the clients
/// leave, the proxy owns no socket to any backend and none on its listen port.
#[test]
fn error_paths_leave_no_socket_behind() {
    error_paths_leave_no_socket_behind_on(Io::Epoll);
}

#[test]
fn error_paths_leave_no_socket_behind_on_io_uring() {
    error_paths_leave_no_socket_behind_on(Io::Uring);
}

fn error_paths_leave_no_socket_behind_on(io: Io) {
    use upkeep_testkit::backend::Behaviour;
    let down = closed_port();
    let reset = Backend::builder()
        .behaviour(Behaviour::Reset)
        .start()
        .unwrap();
    let mute = Backend::builder()
        .behaviour(Behaviour::CloseWithoutAnswer)
        .start()
        .unwrap();
    let good = Backend::identify("good").unwrap();
    let mut cfg = config(
        vec![down.clone(), reset.addr(), mute.addr(), good.addr()],
        2,
    );
    cfg.upstreams[0].keepalive = 0;
    // Keep every server eligible: no passive health marking them down between requests.
    for s in &mut cfg.upstreams[0].servers {
        s.max_fails = 0;
    }
    cfg.runtime.io = io;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    for i in 0..40 {
        let mut c = Client::connect(&listen).unwrap();
        let r = c.request(&get(&format!("/{i}"))).unwrap();
        assert!(matches!(r.status, 200 | 502), "{}", r.status);
    }
    let ports = [
        tcp(&down).port(),
        tcp(&reset.addr()).port(),
        tcp(&mute.addr()).port(),
        tcp(&good.addr()).port(),
    ];
    let lport = tcp(&listen).port();
    assert!(
        eventually(TIMEOUT, || {
            ports.iter().all(|&p| owned_sockets(None, Some(p)) == 0)
                && owned_sockets(Some(lport), None) == 0
        }),
        "leaked: upstream {:?}, client {}",
        ports.map(|p| owned_sockets(None, Some(p))),
        owned_sockets(Some(lport), None)
    );
    proxy.shutdown();
}

/// A backend whose accept queue is full: the SYN is dropped, the connect hangs until
/// `connect_timeout`, the client gets an error response, and the half-open socket is closed.
#[test]
fn connect_timeout_answers_and_frees_the_socket() {
    connect_timeout_answers_and_frees_the_socket_on(Io::Epoll);
}

#[test]
fn connect_timeout_answers_and_frees_the_socket_on_io_uring() {
    connect_timeout_answers_and_frees_the_socket_on(Io::Uring);
}

fn connect_timeout_answers_and_frees_the_socket_on(io: Io) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let baddr = l.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted).
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&baddr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let mut cfg = config(vec![Address::Tcp(baddr)], 1);
    cfg.upstreams[0].connect_timeout = Duration::from_millis(300);
    cfg.runtime.io = io;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = Client::connect(&listen).unwrap();
    let r = c.request(&get("/")).unwrap();
    assert!(matches!(r.status, 502 | 504), "{}", r.status);
    drop(c);
    // The fillers themselves: local port != baddr port, remote == baddr port. Count only the
    // proxy's: everything minus the fillers that connected.
    let fillers_n = fillers.len();
    assert!(
        eventually(TIMEOUT, || owned_sockets(None, Some(baddr.port()))
            <= fillers_n),
        "{} sockets to the backend, {fillers_n} are the test's",
        owned_sockets(None, Some(baddr.port()))
    );
    proxy.shutdown();
}

/// A backend that accepts and never reads: a big request body fills the socket buffers; the
/// send timeout must end the exchange with an error response (no hang), and the upstream socket
/// is closed.
#[test]
fn backend_that_never_reads_hits_send_timeout() {
    backend_that_never_reads_hits_send_timeout_on(Io::Epoll);
}

#[test]
fn backend_that_never_reads_hits_send_timeout_on_io_uring() {
    backend_that_never_reads_hits_send_timeout_on(Io::Uring);
}

fn backend_that_never_reads_hits_send_timeout_on(io: Io) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let baddr = l.local_addr().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let _ = stop_rx.recv_timeout(Duration::from_secs(20));
        drop(s);
    });
    let mut cfg = config(vec![Address::Tcp(baddr)], 1);
    cfg.upstreams[0].send_timeout = Duration::from_millis(400);
    cfg.limits.max_body = 1 << 30;
    cfg.runtime.io = io;
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    const BODY: usize = 32 * 1024 * 1024;
    let head = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n");
    let mut w = c.stream().try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let chunk = vec![b'b'; 64 * 1024];
        let mut sent = 0;
        while sent < BODY {
            if w.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    let r = c.read_response().expect("an error response, not a hang");
    assert!(matches!(r.status, 502 | 504), "{}", r.status);
    assert!(
        eventually(TIMEOUT, || owned_sockets(None, Some(baddr.port())) == 0),
        "upstream socket still open"
    );
    drop(c);
    let _ = writer.join();
    let _ = stop_tx.send(());
    let _ = holder.join();
    proxy.shutdown();
}

/// Clients that leave at the worst moments — reset halfway through a big response, gone while
/// the backend thinks, reset halfway through sending a body — leave no socket behind on either
/// side, and the proxy keeps serving.
#[test]
fn clients_aborting_mid_exchange_leave_no_socket_behind() {
    clients_aborting_mid_exchange_leave_no_socket_behind_on(Io::Epoll);
}

#[test]
fn clients_aborting_mid_exchange_leave_no_socket_behind_on_io_uring() {
    clients_aborting_mid_exchange_leave_no_socket_behind_on(Io::Uring);
}

fn clients_aborting_mid_exchange_leave_no_socket_behind_on(io: Io) {
    let big = Backend::builder()
        .name("big")
        .pattern_body(8 * 1024 * 1024, 3)
        .start()
        .unwrap();
    let slow = Backend::builder()
        .name("slow")
        .delay(Duration::from_millis(300))
        .echo()
        .start()
        .unwrap();
    let mut cfg = config(vec![big.addr()], 2);
    cfg.limits.max_body = 1 << 30;
    // No pool: every upstream socket still open at the end is a leak.
    cfg.upstreams[0].keepalive = 0;
    let mut s = cfg.upstreams[0].clone();
    s.name = "slow".into();
    s.servers[0].addr = slow.addr();
    cfg.upstreams.push(s);
    for (prefix, up) in [("/slow", "slow"), ("/", "default")] {
        cfg.routes.push(upkeep_core::config::RouteConfig {
            host: None,
            path_prefix: prefix.into(),
            upstream: up.into(),
        });
    }
    cfg.runtime.io = io;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let reset_close = |c: Client| {
        let mut c = c;
        if let upkeep_testkit::wire::Stream::Tcp(t) = c.stream() {
            socket2::SockRef::from(&*t)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    };
    for _ in 0..5 {
        // Reset after the first bytes of an 8 MiB response.
        let mut c = Client::connect(&listen).unwrap();
        c.send(&get("/big")).unwrap();
        let first = c.read_some().unwrap();
        assert!(first.starts_with(b"HTTP/1.1 200"));
        reset_close(c);
        // Gone (FIN) while the backend is still thinking.
        let mut c = Client::connect(&listen).unwrap();
        c.send(&get("/slow/x")).unwrap();
        drop(c);
        // Reset halfway through a 4 MiB request body.
        let mut c = Client::connect(&listen).unwrap();
        c.send(b"POST /slow/up HTTP/1.1\r\nHost: t\r\nContent-Length: 4194304\r\n\r\n")
            .unwrap();
        c.send(&vec![b'z'; 1024 * 1024]).unwrap();
        reset_close(c);
    }
    // Still serving.
    let mut c = Client::connect(&listen).unwrap();
    let r = c.request(&get("/slow/ok")).unwrap();
    assert_eq!(r.status, 200);
    drop(c);
    let lport = tcp(&listen).port();
    let (bp, sp) = (tcp(&big.addr()).port(), tcp(&slow.addr()).port());
    assert!(
        eventually(TIMEOUT, || owned_sockets(Some(lport), None) == 0
            && owned_sockets(None, Some(bp)) == 0
            && owned_sockets(None, Some(sp)) == 0),
        "leaked: client {}, upstream big {}, slow {}",
        owned_sockets(Some(lport), None),
        owned_sockets(None, Some(bp)),
        owned_sockets(None, Some(sp))
    );
    proxy.shutdown();
}
