//! `upkeep_runtime::io::read_then_fail`: a write that finds the backend gone reads its early
//! answer first. When that answer is larger than the client's `write_high_water` the core
//! defers the backend's end of stream until the client has taken what came before; reporting
//! the write's failure after the end of stream would cut an answer that arrived complete (the
//! review of the first version found the client getting 16,401 of 65,578 bytes).
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;

use socket2::SockRef;
use upkeep_core::{Address, Config, Core, Input, ListenerId, Output, Time};
use upkeep_runtime::io::{Flushed, flush};

#[test]
fn an_early_answer_above_the_high_water_survives_the_reset() {
    let local = |port| Address::Tcp((Ipv4Addr::LOCALHOST, port).into());
    let mut config = Config::simple(local(8080), vec![local(9001)]);
    config.limits.write_high_water = 16 * 1024;
    config.limits.request_buffer = 0;
    let mut core = Core::new(config, 0).unwrap();
    let now = Time::ZERO;
    let client = core.accept(now, ListenerId(0), None).unwrap();
    // A 1 MiB upload: its head and the first 8 KiB of body.
    let mut req = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'u', 8 * 1024));
    core.handle(
        now,
        Input::Received {
            conn: client,
            data: &req,
        },
    );
    let mut up = None;
    while let Some(o) = core.poll_output() {
        if let Output::Connect { conn, .. } = o {
            up = Some(conn);
        }
    }
    let up = up.expect("a connect");
    core.handle(now, Input::Connected { conn: up });
    while core.poll_output().is_some() {}
    // The backend: a socket pair; it answers 64 KiB early and closes without reading.
    let (ours, mut backend) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let body = vec![b'r'; 64 * 1024];
    let mut resp =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    resp.extend_from_slice(&body);
    backend.write_all(&resp).unwrap();
    drop(backend);
    // The proxy writes the upload: EPIPE; read_then_fail reads the answer.
    let f = flush(&mut core, now, up, SockRef::from(&ours));
    assert_eq!(f, Flushed::Done);
    while core.poll_output().is_some() {}
    // The client now drains its queue (slowly: what a 16 KiB high water lets through).
    let mut got = Vec::new();
    let (cs, mut cpeer) = UnixStream::pair().unwrap();
    cs.set_nonblocking(true).unwrap();
    cpeer.set_nonblocking(true).unwrap();
    for _ in 0..1000 {
        let _ = flush(&mut core, now, client, SockRef::from(&cs));
        while core.poll_output().is_some() {}
        let mut buf = [0u8; 65536];
        match cpeer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {
                if !core.is_open(client) {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&got[..got.len().min(40)]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(
        got.len() >= resp.len(),
        "the complete early answer was cut: client got {} of {} bytes",
        got.len(),
        resp.len()
    );
}
