//! The testkit against itself: backends and client helpers talking directly (no proxy), so a
//! scenario failure points at the proxy, not at the test tools.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use upkeep_core::Address;
use upkeep_testkit::backend::{Backend, Behaviour, Framing, closed_port};
use upkeep_testkit::client::{self, Client};
use upkeep_testkit::pattern;
use upkeep_testkit::wire::{Stream, chunk_encode};

#[test]
fn counts_connections_and_requests_and_logs_heads() {
    let b = Backend::identify("a").unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    for i in 0..5 {
        let r = c.get(&format!("/x{i}")).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("a GET /x{i}").into_bytes());
        assert_eq!(r.header("x-backend-conn"), Some("0"));
        assert_eq!(r.header("x-backend-seq"), Some(&*i.to_string()));
    }
    let mut c2 = Client::connect(&b.addr()).unwrap();
    assert_eq!(
        c2.get("/other").unwrap().header("x-backend-conn"),
        Some("1")
    );
    assert_eq!(b.accepted(), 2);
    assert_eq!(b.requests(), 6);
    let log = b.log();
    assert_eq!(log.len(), 6);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].target, "/x0");
    assert_eq!(log[0].header("HOST"), Some("test"));
    assert_eq!(log[5].conn, 1);
    assert!(log.iter().all(|r| r.complete && r.version == 1));
    drop(c);
    drop(c2);
    assert!(b.wait_until(Duration::from_secs(5), |b| b.open_connections() == 0));
}

#[test]
fn echo_returns_content_length_and_chunked_bodies() {
    let b = Backend::builder().echo().start().unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    let body = pattern(300_000, 1);
    let r = c.request(&client::post("/e", &body)).unwrap();
    assert!(r.body == body);
    let mut req = b"POST /e2 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunk_encode(&body, 7000));
    let r = c.request(&req).unwrap();
    assert!(r.body == body);
    let log = b.log();
    assert!(log[1].body == body && log[1].complete);
    assert_eq!(b.accepted(), 1);
}

#[test]
fn idle_timeout_closes_idle_connections() {
    let b = Backend::builder()
        .idle_timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    assert!(c.closed_within(Duration::from_secs(5)));
    // Without an idle timeout the connection stays open.
    let b = Backend::identify("a").unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    assert!(!c.closed_within(Duration::from_millis(500)));
    assert_eq!(c.get("/again").unwrap().status, 200);
}

#[test]
fn max_requests_per_conn_says_close_then_closes() {
    let b = Backend::builder().max_requests_per_conn(2).start().unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    assert!(!c.get("/1").unwrap().connection_has("close"));
    assert!(c.get("/2").unwrap().connection_has("close"));
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn chunked_and_close_delimited_framing_parse() {
    let want = pattern(100_000, 4);
    let b = Backend::builder()
        .pattern_body(100_000, 4)
        .framing(Framing::Chunked(999))
        .start()
        .unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    for _ in 0..2 {
        let r = c.get("/").unwrap();
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert!(r.body == want && !r.close_delimited);
    }
    let b = Backend::builder()
        .pattern_body(100_000, 4)
        .framing(Framing::CloseDelimited)
        .start()
        .unwrap();
    let r = client::one_shot(&b.addr(), &client::get("/")).unwrap();
    assert!(r.close_delimited);
    assert!(r.body == want);
    assert_eq!(r.header("content-length"), None);
}

#[test]
fn head_has_no_body_and_keeps_the_connection_in_sync() {
    let b = Backend::builder().body("0123456789").start().unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    let r = c.request(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.body.is_empty());
    assert_eq!(c.get("/").unwrap().body, b"0123456789");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::identify("p").unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    let reqs: Vec<Vec<u8>> = (0..10).map(|i| client::get(&format!("/{i}"))).collect();
    let rs = c.pipeline(&reqs).unwrap();
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.body, format!("p GET /{i}").into_bytes());
    }
}

#[test]
fn delay_holds_the_response_back() {
    let b = Backend::builder()
        .delay(Duration::from_millis(300))
        .start()
        .unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    let t = Instant::now();
    assert_eq!(c.get("/").unwrap().status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn upgrade_answers_101_and_echoes() {
    let b = Backend::builder().upgrade().start().unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    // A plain request first: answered normally.
    assert_eq!(c.get("/plain").unwrap().status, 200);
    let r = c
        .request(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly")
        .unwrap();
    assert_eq!(r.status, 101);
    // Bytes sent right behind the head are echoed too.
    assert_eq!(c.read_exact_raw(5).unwrap(), b"early");
    let big = pattern(100_000, 2);
    c.send(&big).unwrap();
    assert!(c.read_exact_raw(big.len()).unwrap() == big);
    c.shutdown_write().unwrap();
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn misbehaviours() {
    let b = Backend::builder()
        .behaviour(Behaviour::CloseWithoutAnswer)
        .start()
        .unwrap();
    let e = client::one_shot(&b.addr(), &client::get("/")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(b.requests(), 1);

    let b = Backend::builder()
        .behaviour(Behaviour::Garbage)
        .start()
        .unwrap();
    let e = client::one_shot(&b.addr(), &client::get("/")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");

    let b = Backend::builder()
        .behaviour(Behaviour::Reset)
        .start()
        .unwrap();
    let e = client::one_shot(&b.addr(), &client::get("/r")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert_eq!(b.log()[0].target, "/r");
}

#[test]
fn closed_port_refuses() {
    let a = closed_port();
    let e = Stream::connect(&a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn unix_and_ipv6_backends() {
    let b = Backend::builder().name("u").unix().start().unwrap();
    let Address::Unix(path) = b.addr() else {
        panic!()
    };
    assert!(std::path::Path::new(&path).exists());
    assert_eq!(
        client::one_shot(&b.addr(), &client::get("/u"))
            .unwrap()
            .body,
        b"u GET /u"
    );
    drop(b);
    assert!(!std::path::Path::new(&path).exists(), "temp dir removed");

    if TcpListener::bind("[::1]:0").is_ok() {
        let b = Backend::builder().name("6").ipv6().start().unwrap();
        assert!(matches!(b.addr(), Address::Tcp(sa) if sa.is_ipv6()));
        assert_eq!(
            client::one_shot(&b.addr(), &client::get("/")).unwrap().body,
            b"6 GET /"
        );
    } else {
        eprintln!("note: ::1 unavailable; IPv6 part skipped");
    }
}

#[test]
fn drop_closes_open_connections() {
    let b = Backend::identify("a").unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    assert_eq!(c.get("/").unwrap().status, 200);
    drop(b);
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn bad_request_head_is_logged_and_closed() {
    let b = Backend::identify("a").unwrap();
    let mut c = Client::connect(&b.addr()).unwrap();
    c.send(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n")
        .unwrap();
    assert!(c.closed_within(Duration::from_secs(5)));
    let log = b.log();
    assert_eq!(log.len(), 1);
    assert!(!log[0].complete);
    assert!(log[0].target.contains("smuggled"));
}

/// A scripted origin for client-parser cases no `Backend` produces (interim responses).
fn scripted(reply: &'static [u8]) -> Address {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(reply);
    });
    Address::Tcp(a)
}

#[test]
fn client_skips_interim_responses_and_handles_no_body_statuses() {
    let a = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let r = client::one_shot(&a, &client::get("/")).unwrap();
    assert_eq!(
        (r.status, r.interim.clone(), r.body.clone()),
        (200, vec![100, 103], b"ok".to_vec())
    );

    let a = scripted(
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    );
    let mut c = Client::connect(&a).unwrap();
    c.send(&client::get("/")).unwrap();
    assert_eq!(c.read_response().unwrap().status, 204);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
}
