//! Inputs found by the fuzz targets in `fuzz/` (see docs/fuzzing.md), replayed
//! as plain tests.

use upkeep_core::config::ServerConfig;
use upkeep_core::sim::world::{Action, BackendScript, Framing, ReqKind, World, tight_timeouts};
use upkeep_core::{Address, Config};

fn addr(port: u16) -> Address {
    Address::Tcp(format!("127.0.0.1:{port}").parse().unwrap())
}

/// `proxy_trace` (minimised from its first crash, which was in the fuzz harness, not in the
/// engine): with short proxy timeouts (read 150 ms) a backend that answers after 168 ms times
/// out every request (two tries each, `next_upstream_on_timeout`), so a pipeline of eleven
/// requests takes 11 × ~300 ms to be answered, one 504 after the other. That is longer than the
/// single round of timeouts `World::finish` waits for, which then reported the client as leaked;
/// the fuzz target now lets such exchanges finish before calling `finish`. The engine answers
/// every request, in order, and releases everything.
#[test]
fn slow_backend_long_pipeline_short_timeouts() {
    let mut cfg = Config::simple(addr(8080), vec![addr(9001)]);
    let g = &mut cfg.upstreams[0];
    g.servers = vec![ServerConfig::new(addr(9001))];
    g.keepalive_requests = 3;
    g.next_upstream_on_timeout = true;
    tight_timeouts(&mut cfg);
    let script = BackendScript {
        framing: Framing::ContentLength,
        body_size: 9,
        idle_close_ms: Some(802),
        max_requests: Some(3),
        announce_close: true,
        stray_408_ms: Some(438),
        cut_every: Some(6),
        reset_every: Some(0),
        down: false,
        rejected: false,
        delay_ms: 168,
        keep_alive_hint: None,
        early_hints: false,
        race_ms: 0,
        check_fails: 0,
        stray_every: None,
    };
    let mut w = World::new(117_440_512, cfg, vec![script]);
    let send = |kind| Action::Send { client: 0, kind };
    w.run(&[
        send(ReqKind::Get),
        send(ReqKind::Head),
        send(ReqKind::Head),
        send(ReqKind::Post(325)),
        send(ReqKind::Head),
        send(ReqKind::Head),
        Action::Pipeline {
            client: 0,
            kinds: vec![
                ReqKind::Post(325),
                ReqKind::Post(325),
                ReqKind::Post(325),
                ReqKind::Head,
                ReqKind::Get,
            ],
        },
    ]);
    for _ in 0..40 {
        w.run(&[Action::Advance { ms: 100 }]);
    }
    assert_eq!(w.results.len(), 11, "{:?}", w.results);
    assert!(w.results.values().all(|&s| s == 504), "{:?}", w.results);
    w.finish();
}

/// `response_head` (minimised input: selector byte `\n` = a POST from an HTTP/1.0 client, then
/// `HTTP/1.0 406\r\nclose:\r\n\r\n`): the response is not persistent, so the proxy writes
/// `Connection: close` to the client — and also forwards the backend's end-to-end field named
/// `close`, which the client must then remove as a field named by a connection option (RFC 9110
/// §7.6.1). "Close" is a reserved field name for exactly that reason (RFC 9110 §16.3.2.1). The
/// same happens whenever the proxy adds `Connection: close` (client asked to close, draining,
/// close-delimited relay). Low impact (the client loses a field nobody should send), but the
/// forwarded head no longer means what the proxy decided to forward. Fixed: a received `Close`
/// field is hop-by-hop (`headers::is_hop_by_hop`), never forwarded.
#[test]
fn close_field_forwarded_with_connection_close() {
    use bytes::BytesMut;
    use upkeep_core::framing::{
        BodyKind, Head, HeadLimits, Method, OutBody, ResponseOptions, write_response_head,
    };
    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 8 * 1024,
        max_head: 16 * 1024,
    };
    let raw = b"HTTP/1.0 406\r\nclose:\r\n\r\n";
    let mut head = Head::new();
    assert_eq!(head.parse_response(raw, Method::Post, &LIMITS), Ok(true));
    assert_eq!(head.body, BodyKind::UntilClose);
    assert!(!head.persistent());
    let forwarded: Vec<&[u8]> = head
        .fields
        .iter()
        .filter(|f| !f.strip)
        .map(|f| f.name.of(raw))
        .collect();
    // What the engine writes for an HTTP/1.0 client: a close-delimited body, Connection: close.
    let opts = ResponseOptions {
        body: OutBody::Close,
        close: true,
        keep_alive_10: false,
        upgrade: false,
        via: None,
    };
    let mut out = BytesMut::new();
    write_response_head(&head, raw, &opts, &mut out);
    let mut again = Head::new();
    assert_eq!(again.parse_response(&out, Method::Post, &LIMITS), Ok(true));
    let received: Vec<&[u8]> = again
        .fields
        .iter()
        .filter(|f| !f.strip)
        .map(|f| f.name.of(&out))
        .collect();
    assert_eq!(
        received,
        forwarded,
        "the client drops a field the proxy forwarded: {:?}",
        String::from_utf8_lossy(&out)
    );
}
