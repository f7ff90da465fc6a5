//! Zero-copy bodies (`limits.splice_min`): large plain bodies move socket → pipe → socket with
//! splice(2) in this runtime. The shared scenarios (`zero_copy_bodies`, `chaos_soak` and the
//! rest) check that the bytes are right; these check that splicing really happens, and that
//! the ways a body can end badly end as on the copying path: an upstream or a client cutting a
//! spliced body short, a client that stops reading, and no pipe left behind.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use upkeep_core::config::Io;
use upkeep_core::{Address, Config};
use upkeep_mio::{Proxy, ProxyHandle};
use upkeep_testkit::backend::Backend;
use upkeep_testkit::client::{self, Client};
use upkeep_testkit::{loopback_config, pattern};

mod common;
use common::metric;

const MIB: usize = 1 << 20;

/// With the epoll or the io_uring workers.
fn config_on(io: Io, servers: Vec<Address>) -> Config {
    let mut c = loopback_config(servers, 1);
    c.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    c.runtime.io = io;
    c.limits.splice_min = 16 * 1024;
    c
}

fn spliced(proxy: &ProxyHandle) -> u64 {
    metric(proxy, "upkeep_spliced_bytes_total")
}

#[test]
fn bodies_over_splice_min_are_spliced_and_arrive_whole() {
    bodies_over_splice_min_are_spliced_and_arrive_whole_with(Io::Epoll);
}

#[test]
fn bodies_over_splice_min_are_spliced_and_arrive_whole_on_io_uring() {
    bodies_over_splice_min_are_spliced_and_arrive_whole_with(Io::Uring);
}

fn bodies_over_splice_min_are_spliced_and_arrive_whole_with(io: Io) {
    for splice_min in [16 * 1024, 0] {
        let b = Backend::builder().pattern_body(MIB, 31).start().unwrap();
        let mut cfg = config_on(io, vec![b.addr()]);
        cfg.limits.splice_min = splice_min;
        let proxy = Proxy::start(cfg).unwrap();
        let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
        let up = pattern(2 * MIB, 32);
        for _ in 0..2 {
            let r = c.request(&client::post("/up", &up)).unwrap();
            assert_eq!(r.status, 200);
            assert!(r.body == pattern(MIB, 31), "{} bytes", r.body.len());
        }
        for req in b.log() {
            assert!(req.complete && req.body == up, "{} bytes", req.body.len());
        }
        assert_eq!(b.accepted(), 1, "the backend connection is reused");
        let n = spliced(&proxy);
        if splice_min == 0 {
            assert_eq!(n, 0, "splice_min = 0 copies");
        } else {
            // Most of each body: what arrives with a head, the first 64 KiB of an upload (kept
            // for a re-send), and what is read while earlier bytes still wait to be written are
            // copied. On io_uring a client's multishot receive takes up to 64 KiB more before
            // its cancel lands, once the core says the body may be spliced — before Linux 6.17,
            // which has no limit for it, up to 32 buffers (~2 MiB here): less is spliced.
            let unlimited = io == Io::Uring && !upkeep_testkit::kernel_at_least(6, 17);
            let least = if unlimited { MIB } else { 3 * MIB };
            assert!(n >= least as u64, "{n} of 6 MiB spliced");
        }
        proxy.shutdown();
    }
}

/// With the default `splice_min`, a 64 KiB response is mostly spliced: the read that takes its
/// head stops at `HEAD_READ` bytes (`Core::read_cap`), and the rest of the body stays in the
/// socket for `splice(2)` instead of arriving with the head and being copied.
#[test]
fn a_64_kib_response_is_spliced_past_its_head_with_the_default_splice_min() {
    a_64_kib_response_is_spliced_past_its_head_with_the_default_splice_min_with(Io::Epoll);
}

#[test]
fn a_64_kib_response_is_spliced_past_its_head_with_the_default_splice_min_on_io_uring() {
    a_64_kib_response_is_spliced_past_its_head_with_the_default_splice_min_with(Io::Uring);
}

fn a_64_kib_response_is_spliced_past_its_head_with_the_default_splice_min_with(io: Io) {
    const BODY: usize = 64 * 1024;
    const N: usize = 20;
    // A backend that writes each response, head and body, in one write (as nginx does with a
    // static file): a read of 64 KiB or more would take all of it with the head.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(l.local_addr().unwrap());
    let backend = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
        response.extend_from_slice(&pattern(BODY, 9));
        let mut buf = [0u8; 4096];
        for _ in 0..N {
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the proxy closed the backend connection");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(&response).unwrap();
        }
    });
    let mut cfg = loopback_config(vec![addr], 1);
    cfg.runtime.admin = Some(Address::parse("127.0.0.1:0").unwrap());
    cfg.runtime.io = io;
    assert!(
        cfg.limits.splice_min as usize <= BODY - upkeep_core::HEAD_READ,
        "the default splice_min takes what a head read leaves of a 64 KiB body"
    );
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    for _ in 0..N {
        let r = c.request(&client::get("/64k")).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body == pattern(BODY, 9), "{} bytes", r.body.len());
    }
    backend.join().unwrap();
    let n = spliced(&proxy);
    // What a head read leaves of each body is spliced (the head read may take less). Half of
    // that over all responses leaves room for a response that arrived in two pieces with the
    // head read between them (its tail, under splice_min, is copied); without the cap only the
    // first response is spliced (~48 KiB of 1.25 MiB).
    let least = (N * (BODY - upkeep_core::HEAD_READ) / 2) as u64;
    assert!(
        n >= least,
        "{n} bytes spliced of {N} x 64 KiB, expected >= {least}"
    );
    proxy.shutdown();
}

/// A backend that answers its first connection with `whole_first` whole responses, then a
/// head promising 1 MiB, 300 KiB and a close; later connections get the whole body.
fn truncating_backend(whole_first: usize) -> (Address, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        for (i, s) in l.incoming().take(2).enumerate() {
            let mut s = s.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let body = pattern(MIB, 33);
            for r in 0.. {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let cut = i == 0 && r == whole_first;
                let n = if cut { 300 * 1024 } else { MIB };
                let _ = s.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n").as_bytes(),
                );
                let _ = s.write_all(&body[..n]);
                if cut {
                    let _ = s.shutdown(Shutdown::Both);
                    break;
                }
                if i == 1 || !head.ends_with(b"\r\n\r\n") {
                    // Until the proxy is done with it.
                    let _ = s.read(&mut byte);
                    break;
                }
            }
        }
    });
    (addr, t)
}

#[test]
fn an_upstream_cutting_a_spliced_body_short_cuts_the_client_short() {
    an_upstream_cutting_a_spliced_body_short_cuts_the_client_short_with(Io::Epoll);
}

#[test]
fn an_upstream_cutting_a_spliced_body_short_cuts_the_client_short_on_io_uring() {
    an_upstream_cutting_a_spliced_body_short_cuts_the_client_short_with(Io::Uring);
}

fn an_upstream_cutting_a_spliced_body_short_cuts_the_client_short_with(io: Io) {
    // The io_uring workers splice on an upstream connection once it has carried a large body
    // (before, its multishot receive may take the whole response): one whole response first.
    let whole_first = usize::from(io == Io::Uring);
    let (addr, backend) = truncating_backend(whole_first);
    let proxy = Proxy::start(config_on(io, vec![addr])).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let mut c = Client::connect(&listen).unwrap();
    for _ in 0..whole_first {
        let r = c.request(&client::get("/first")).unwrap();
        assert!(r.body == pattern(MIB, 33), "{} bytes", r.body.len());
    }
    let before = spliced(&proxy);
    let got = c.request(&client::get("/cut"));
    assert!(
        got.is_err(),
        "a response cut short never looks complete: {got:?}"
    );
    assert!(spliced(&proxy) > before, "the body was spliced");
    let mut c = Client::connect(&listen).unwrap();
    let r = c.request(&client::get("/whole")).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(MIB, 33), "{} bytes", r.body.len());
    proxy.shutdown();
    backend.join().unwrap();
}

/// Clients that read part of a spliced body and go away: the pipes holding the rest are
/// closed with their connections (never reused with stale bytes in them), the backend
/// connections too (a body cut short is not reusable), and later responses are whole.
#[test]
fn clients_gone_mid_body_leave_no_pipe_and_no_stale_bytes_behind() {
    clients_gone_mid_body_leave_no_pipe_and_no_stale_bytes_behind_with(Io::Epoll);
}

#[test]
fn clients_gone_mid_body_leave_no_pipe_and_no_stale_bytes_behind_on_io_uring() {
    clients_gone_mid_body_leave_no_pipe_and_no_stale_bytes_behind_with(Io::Uring);
}

fn clients_gone_mid_body_leave_no_pipe_and_no_stale_bytes_behind_with(io: Io) {
    let len = 4 * MIB;
    let b = Backend::builder().pattern_body(len, 34).start().unwrap();
    let mut cfg = config_on(io, vec![b.addr()]);
    cfg.limits.write_high_water = 64 * 1024;
    let proxy = Proxy::start(cfg).unwrap();
    let listen = proxy.listen_addrs()[0].clone();
    let Address::Tcp(sa) = listen else {
        unreachable!()
    };
    let want = pattern(len, 34);
    for i in 0..10 {
        let mut s = TcpStream::connect(sa).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&client::get(&format!("/gone/{i}"))).unwrap();
        let mut part = vec![0u8; 200 * 1024];
        s.read_exact(&mut part).unwrap();
        let start = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            part[start..] == want[..part.len() - start],
            "the first bytes of body {i} are its own"
        );
        drop(s);
    }
    let mut c = Client::connect(&listen).unwrap();
    for i in 0..3 {
        let r = c.get(&format!("/after/{i}")).unwrap();
        assert_eq!(r.status, 200);
        assert!(
            r.body == want,
            "response {i} after the aborted ones: {} bytes",
            r.body.len()
        );
    }
    assert!(spliced(&proxy) > 0);
    // The pipes of the clients that left were closed with their connections, not kept.
    assert_eq!(metric(&proxy, "upkeep_pipes{state=\"used\"}"), 0);
    assert!(metric(&proxy, "upkeep_pipes{state=\"free\"}") <= 1);
    proxy.shutdown();
}

/// A client that stops reading a spliced body: the pipe fills, the upstream is no longer read
/// (backpressure), and the client is dropped after `client_timeouts.send` as on the copying
/// path — having received less than the whole body.
#[test]
fn a_client_that_stops_reading_a_spliced_body_is_dropped_after_the_send_timeout() {
    a_client_that_stops_reading_a_spliced_body_is_dropped_after_the_send_timeout_with(Io::Epoll);
}

#[test]
fn a_client_that_stops_reading_a_spliced_body_is_dropped_after_the_send_timeout_on_io_uring() {
    a_client_that_stops_reading_a_spliced_body_is_dropped_after_the_send_timeout_with(Io::Uring);
}

fn a_client_that_stops_reading_a_spliced_body_is_dropped_after_the_send_timeout_with(io: Io) {
    let len = 32 * MIB;
    let b = Backend::builder().pattern_body(len, 35).start().unwrap();
    let mut cfg = config_on(io, vec![b.addr()]);
    cfg.client_timeouts.send = Duration::from_secs(1);
    let proxy = Proxy::start(cfg).unwrap();
    let Address::Tcp(sa) = proxy.listen_addrs()[0].clone() else {
        unreachable!()
    };
    let mut s = TcpStream::connect(sa).unwrap();
    s.write_all(&client::get("/stall")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(spliced(&proxy) > 0, "the body was being spliced");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the connection was never closed"
        );
    }
    assert!(got > 0 && got < len, "{got} bytes before the close");
    // The proxy goes on serving.
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let r = c.get("/after").unwrap();
    assert_eq!((r.status, r.body.len()), (200, len));
    proxy.shutdown();
}

/// An upload cut short while its body is being spliced: the backend sees an incomplete
/// request and the connection is not reused; the next upload arrives whole.
#[test]
fn an_upload_cut_short_mid_splice_never_looks_complete() {
    an_upload_cut_short_mid_splice_never_looks_complete_with(Io::Epoll);
}

#[test]
fn an_upload_cut_short_mid_splice_never_looks_complete_on_io_uring() {
    an_upload_cut_short_mid_splice_never_looks_complete_with(Io::Uring);
}

fn an_upload_cut_short_mid_splice_never_looks_complete_with(io: Io) {
    let b = Backend::builder().start().unwrap();
    let proxy = Proxy::start(config_on(io, vec![b.addr()])).unwrap();
    let Address::Tcp(sa) = proxy.listen_addrs()[0].clone() else {
        unreachable!()
    };
    let up = pattern(4 * MIB, 36);
    let mut s = TcpStream::connect(sa).unwrap();
    s.write_all(
        format!(
            "POST /cut HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            up.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&up[..MIB]).unwrap();
    assert!(
        b.wait_until(Duration::from_secs(10), |b| b.requests() >= 1),
        "the upload reached the backend"
    );
    drop(s);
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let r = c.request(&client::post("/whole", &up)).unwrap();
    assert_eq!(r.status, 200);
    let log = b.log();
    let cut = log.iter().find(|r| r.target == "/cut").unwrap();
    assert!(
        !cut.complete && cut.body.len() < up.len(),
        "{} bytes, complete: {}",
        cut.body.len(),
        cut.complete
    );
    let whole = log.iter().find(|r| r.target == "/whole").unwrap();
    assert!(
        whole.complete && whole.body == up,
        "{} bytes",
        whole.body.len()
    );
    // (On io_uring before Linux 6.17 a client's multishot receive, with no limit, may take the
    // whole upload before it is cancelled: how much is spliced there depends on timing.)
    if io == Io::Epoll || upkeep_testkit::kernel_at_least(6, 17) {
        assert!(spliced(&proxy) > 0);
    }
    proxy.shutdown();
}

/// A client pausing (for less than its send timeout) while a spliced response fills the pipe:
/// the upstream is held back as on the copying path — not read, so its read timeout does not
/// run — and the whole body arrives once the client reads again. (The review found the
/// spliced path left the upstream "reading": its 1 s read timeout cut the response at ~4 MB
/// and counted against the server.)
#[test]
fn a_client_pausing_a_spliced_response_does_not_time_the_upstream_out() {
    a_client_pausing_a_spliced_response_does_not_time_the_upstream_out_with(Io::Epoll);
}

#[test]
fn a_client_pausing_a_spliced_response_does_not_time_the_upstream_out_on_io_uring() {
    a_client_pausing_a_spliced_response_does_not_time_the_upstream_out_with(Io::Uring);
}

fn a_client_pausing_a_spliced_response_does_not_time_the_upstream_out_with(io: Io) {
    let len = 16 * MIB;
    let b = Backend::builder().pattern_body(len, 40).start().unwrap();
    let mut cfg = config_on(io, vec![b.addr()]);
    cfg.limits.write_high_water = MIB;
    cfg.client_timeouts.send = Duration::from_secs(30);
    cfg.upstreams[0].read_timeout = Duration::from_secs(1);
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    c.send(&client::get("/pause")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(len, 40), "{} bytes", r.body.len());
    assert!(
        spliced(&proxy) > (len / 2) as u64,
        "{} spliced",
        spliced(&proxy)
    );
    proxy.shutdown();
}

/// A backend that reads a request head, waits `pause`, then reads the body and answers with
/// how many body bytes it got.
fn pausing_reader(pause: Duration) -> (Address, std::thread::JoinHandle<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_lowercase();
        let cl: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        std::thread::sleep(pause);
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < cl {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let body = got.to_string();
        let _ = s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        got
    });
    (addr, t)
}

/// An upload spliced toward a backend that pauses before reading the body: the client is held
/// back as on the copying path, so its body timeout does not run — no 408 for a client that
/// kept sending — and the backend gets every byte.
#[test]
fn an_upload_to_a_pausing_backend_does_not_time_the_client_out() {
    an_upload_to_a_pausing_backend_does_not_time_the_client_out_with(Io::Epoll);
}

#[test]
fn an_upload_to_a_pausing_backend_does_not_time_the_client_out_on_io_uring() {
    an_upload_to_a_pausing_backend_does_not_time_the_client_out_with(Io::Uring);
}

fn an_upload_to_a_pausing_backend_does_not_time_the_client_out_with(io: Io) {
    let (addr, backend) = pausing_reader(Duration::from_secs(3));
    let mut cfg = config_on(io, vec![addr]);
    cfg.limits.write_high_water = MIB;
    cfg.limits.min_upload_rate = 0;
    cfg.client_timeouts.body = Duration::from_secs(1);
    let proxy = Proxy::start(cfg).unwrap();
    let up = pattern(8 * MIB, 41);
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    let r = c.request(&client::post("/up", &up)).unwrap();
    assert_eq!((r.status, r.text()), (200, up.len().to_string()));
    assert_eq!(backend.join().unwrap(), up.len());
    assert!(spliced(&proxy) > 0);
    proxy.shutdown();
}

/// A backend answering one request with a chunked body of `n` chunks of `size` bytes.
fn chunked_backend(n: usize, size: usize) -> (Address, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let body = pattern(n * size, 5);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for c in body.chunks(size) {
            let sent = s
                .write_all(format!("{:x}\r\n", c.len()).as_bytes())
                .and_then(|()| s.write_all(c))
                .and_then(|()| s.write_all(b"\r\n"));
            if sent.is_err() {
                return;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let _ = s.read(&mut byte);
    });
    (addr, t)
}

/// A chunked response spliced chunk by chunk to a client that pauses: each chunk's size line
/// is queued ahead of its data, so the next splice waits for that queue to be written. The
/// upstream is held back meanwhile (`Core::wait_for_flush` on io_uring, whose sends complete
/// later), not left "reading" with nobody reading it — the review found io_uring's upstream
/// read timeout cutting the response and blaming the server.
#[test]
fn a_chunked_response_to_a_pausing_client_does_not_time_the_upstream_out() {
    a_chunked_response_to_a_pausing_client_does_not_time_the_upstream_out_with(Io::Epoll);
}

#[test]
fn a_chunked_response_to_a_pausing_client_does_not_time_the_upstream_out_on_io_uring() {
    a_chunked_response_to_a_pausing_client_does_not_time_the_upstream_out_with(Io::Uring);
}

fn a_chunked_response_to_a_pausing_client_does_not_time_the_upstream_out_with(io: Io) {
    let (n, size) = (32, 512 * 1024);
    let (addr, backend) = chunked_backend(n, size);
    let mut cfg = config_on(io, vec![addr]);
    cfg.limits.write_high_water = MIB;
    cfg.client_timeouts.send = Duration::from_secs(30);
    cfg.upstreams[0].read_timeout = Duration::from_secs(1);
    let proxy = Proxy::start(cfg).unwrap();
    let mut c = Client::connect(&proxy.listen_addrs()[0]).unwrap();
    c.send(&client::get("/chunked")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let r = c.read_response().expect("the whole response");
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(n * size, 5), "{} bytes", r.body.len());
    assert!(spliced(&proxy) > 0, "the chunks' data was spliced");
    proxy.shutdown();
    backend.join().unwrap();
}

/// A reload whose drain runs out (`shutdown_timeout`) while a spliced body waits on its
/// backend: the old worker exits and closes the client's connection, whether the client was
/// reading or not. (The review found the io_uring worker's exit not counting its polls' final
/// completions: it gave up waiting and left the sockets open, the client hanging.)
#[test]
fn a_drain_running_out_mid_splice_closes_the_client() {
    a_drain_running_out_mid_splice_closes_the_client_with(Io::Epoll);
}

#[test]
fn a_drain_running_out_mid_splice_closes_the_client_on_io_uring() {
    a_drain_running_out_mid_splice_closes_the_client_with(Io::Uring);
}

fn a_drain_running_out_mid_splice_closes_the_client_with(io: Io) {
    for client_reads in [true, false] {
        // A backend that promises 64 MiB, sends 2 MiB, then waits (bounded) with the
        // connection open.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp(l.local_addr().unwrap());
        let backend = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = s.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 64 * MIB).as_bytes(),
            );
            let _ = s.write_all(&pattern(2 * MIB, 7));
            // Until the proxy closes it (or the bound).
            let _ = s.read(&mut byte);
        });
        let mut cfg = config_on(io, vec![addr]);
        cfg.runtime.shutdown_timeout = Duration::from_secs(1);
        let proxy = Proxy::start(cfg.clone()).unwrap();
        let Address::Tcp(sa) = proxy.listen_addrs()[0].clone() else {
            unreachable!()
        };
        let mut s = TcpStream::connect(sa).unwrap();
        s.write_all(&client::get("/big")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        if client_reads {
            // What the backend sent: the proxy's upstream socket is drained, waiting for more.
            while got < 2 * MIB {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(1500));
        }
        assert!(spliced(&proxy) > 0, "the body was being spliced");
        proxy.reload(cfg).unwrap();
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) => {
                    break !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        };
        assert!(
            closed,
            "client_reads {client_reads}: the client's connection was never closed ({got} bytes)"
        );
        assert!(got < 64 * MIB, "a cut body never arrives whole");
        proxy.shutdown();
        backend.join().unwrap();
    }
}
