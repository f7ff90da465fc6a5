//! Response heads: arbitrary bytes through `Head::parse_response`.
//!
//! Input: byte 0 chooses the request method the response answers (bits 0-1: GET, HEAD, POST,
//! CONNECT), whether Via is added (bit 2) and whether the client speaks HTTP/1.0 (bit 3); the
//! rest is the response.
//!
//! Checked:
//! - no panic, no hang; the outcome is "incomplete", a head, or an error (which the engine turns
//!   into a 502: every error must still map to a definite status);
//! - a reused `Head` gives what a fresh one gives;
//! - split independence: a complete head parses identically from `buf[..len]` and every sampled
//!   shorter prefix is "incomplete"; every sampled prefix of an incomplete input is incomplete;
//! - round trip through `write_response_head` with the options the engine derives (proxy.rs):
//!
//! "Same head" after the round trip means, precisely:
//! - status code and reason phrase byte-identical; version HTTP/1.1;
//! - end-to-end fields (not `strip`) byte-identical and in order, except Via when the proxy adds
//!   its own (then exactly one Via: the received values joined, then `1.x upkeep`);
//! - framing as the engine rewrites it: HEAD / 304 answers keep a received Content-Length, other
//!   bodiless answers carry none, Length(n) stays Length(n), chunked and close-delimited bodies
//!   become chunked for an HTTP/1.1 client and close-delimited for an HTTP/1.0 one; the re-parsed
//!   `body` is what RFC 9112 §6.3 gives for that framing and `content_length` is set exactly when
//!   the framing is a length;
//! - connection options exactly those the engine writes: `close` when the client connection
//!   must close (the response was not persistent, or the body is close-delimited), `keep-alive`
//!   for a persistent HTTP/1.0 client, `upgrade` (with the received Upgrade value) for a 101;
//!   nothing else hop-by-hop (no Keep-Alive timeout) survives.
#![no_main]

use std::cell::RefCell;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use upkeep_core::framing::{
    BodyKind, Head, HeadError, HeadLimits, MAX_HEADERS, Method, OutBody, ResponseOptions, Version,
    write_response_head,
};
use upkeep_core_fuzz::{HeadView, LIMITS, Outcome, ROOMY, assert_definite, prefix_points};

thread_local! {
    static REUSED: RefCell<Head> = RefCell::new(Head::new());
}

fn parse(head: &mut Head, buf: &[u8], method: Method, limits: &HeadLimits) -> Outcome {
    match head.parse_response(buf, method, limits) {
        Ok(false) => Outcome::Incomplete,
        Ok(true) => {
            assert!(head.len > 0 && head.len <= buf.len());
            assert!((100..=599).contains(&head.status), "status {}", head.status);
            Outcome::Head(HeadView::of(head, buf))
        }
        Err(e) => {
            assert_definite(&e);
            Outcome::Error(e)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, buf)) = data.split_first() else {
        return;
    };
    let method = [Method::Get, Method::Head, Method::Post, Method::Connect][(opts & 3) as usize];
    let mut head = Head::new();
    let outcome = parse(&mut head, buf, method, &LIMITS);
    let reused = REUSED.with(|h| parse(&mut h.borrow_mut(), buf, method, &LIMITS));
    assert_eq!(outcome, reused, "a reused Head disagrees with a fresh one");
    match &outcome {
        Outcome::Head(v1) => {
            let len = v1.len;
            let mut h = Head::new();
            assert_eq!(parse(&mut h, &buf[..len], method, &LIMITS), outcome);
            for k in prefix_points(len, buf, 12) {
                let mut h = Head::new();
                let p = parse(&mut h, &buf[..k], method, &LIMITS);
                assert_eq!(
                    p,
                    Outcome::Incomplete,
                    "prefix of {k} bytes of a valid {len}-byte response head is not incomplete"
                );
            }
            round_trip(&head, buf, v1, method, opts);
        }
        Outcome::Incomplete => {
            for k in prefix_points(buf.len(), buf, 6) {
                let mut h = Head::new();
                let p = parse(&mut h, &buf[..k], method, &LIMITS);
                assert_eq!(
                    p,
                    Outcome::Incomplete,
                    "prefix of {k} bytes of an incomplete head"
                );
            }
        }
        Outcome::Error(_) => {}
    }
});

/// Known engine issue, found by this target (minimised input: `\nHTTP/1.0 406\r\nclose:\r\n\r\n`,
/// i.e. a POST from an HTTP/1.0 client): a received end-to-end field named `Close` is
/// forwarded, and when the proxy also writes `Connection: close` the next hop must strip it
/// (RFC 9110 §7.6.1; "Close" is a reserved field name for that reason, §16.3.2.1). Pinned by the
/// ignored test `close_field_forwarded_with_connection_close` in core/tests/fuzz_regressions.rs.
/// While true, a `Close` field is left out of the comparison when the proxy writes
/// `Connection: close`; set it to false once the engine strips (or refuses) such a field.
const KNOWN_CLOSE_FIELD_ISSUE: bool = false;

fn round_trip(head: &Head, buf: &[u8], v1: &HeadView, method: Method, opts: u8) {
    let via = opts & 4 != 0;
    let client_10 = opts & 8 != 0;
    let status = v1.status;
    // The engine's choices (proxy.rs, response head handling), with a keep-alive client.
    let out = match v1.body {
        BodyKind::Empty if method == Method::Head || status == 304 => {
            v1.content_length.map_or(OutBody::None, OutBody::Length)
        }
        BodyKind::Empty => OutBody::None,
        BodyKind::Length(n) => OutBody::Length(n),
        BodyKind::Chunked | BodyKind::UntilClose if !client_10 => OutBody::Chunked,
        BodyKind::Chunked | BodyKind::UntilClose => OutBody::Close,
    };
    let tunnel = status == 101;
    let close_client = !v1.persistent || out == OutBody::Close;
    let ro = ResponseOptions {
        body: out,
        close: close_client && !tunnel,
        keep_alive_10: !close_client && client_10,
        upgrade: tunnel,
        via: via.then_some("upkeep"),
    };
    let mut w = BytesMut::new();
    write_response_head(head, buf, &ro, &mut w);
    let ctx = || {
        format!(
            "\noriginal ({method:?}): {:?}\nwritten: {:?}",
            String::from_utf8_lossy(&buf[..v1.len]),
            String::from_utf8_lossy(&w)
        )
    };
    let mut h2 = Head::new();
    let v2 = match h2.parse_response(&w, method, &ROOMY) {
        Ok(true) => HeadView::of(&h2, &w),
        Err(HeadError::HeaderTooLarge) if count_lines(&w) > MAX_HEADERS + 2 => return,
        r => panic!("re-serialised response does not parse: {r:?}{}", ctx()),
    };
    assert_eq!(v2.len, w.len(), "trailing bytes{}", ctx());
    assert_eq!(v2.status, v1.status, "status{}", ctx());
    assert_eq!(v2.reason, v1.reason, "reason{}", ctx());
    assert_eq!(v2.version, Version::Http11, "version{}", ctx());
    let mut replaced: Vec<&[u8]> = Vec::new();
    if via {
        replaced.push(b"via");
    }
    if ro.close && KNOWN_CLOSE_FIELD_ISSUE {
        replaced.push(b"close");
    }
    let replaced = &replaced[..];
    assert_eq!(
        v2.end_to_end(replaced),
        v1.end_to_end(replaced),
        "end-to-end fields{}",
        ctx()
    );
    if via {
        assert_eq!(v2.values(b"via"), vec![v1.expected_via()], "Via{}", ctx());
    }
    let no_body = method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (method == Method::Connect && (200..300).contains(&status));
    let want_body = match out {
        _ if no_body => BodyKind::Empty,
        OutBody::Length(n) => BodyKind::Length(n),
        OutBody::Chunked => BodyKind::Chunked,
        OutBody::None | OutBody::Close => BodyKind::UntilClose,
    };
    assert_eq!(v2.body, want_body, "body framing ({out:?}){}", ctx());
    let want_cl = match out {
        OutBody::Length(n) => Some(n),
        _ => None,
    };
    assert_eq!(v2.content_length, want_cl, "Content-Length{}", ctx());
    if !no_body {
        // The body the client reads is delimited the way the backend's was (or by the close).
        match (v1.body, v2.body) {
            (BodyKind::Length(a), BodyKind::Length(b)) => assert_eq!(a, b),
            (BodyKind::Chunked | BodyKind::UntilClose, BodyKind::Chunked) => {}
            (BodyKind::Chunked | BodyKind::UntilClose, BodyKind::UntilClose) => {
                assert!(
                    client_10 && ro.close,
                    "close-delimited without close{}",
                    ctx()
                )
            }
            (a, b) => panic!("framing {a:?} became {b:?}{}", ctx()),
        }
    }
    assert_eq!(v2.connection.close, ro.close, "Connection: close{}", ctx());
    assert_eq!(
        v2.connection.keep_alive,
        ro.keep_alive_10,
        "keep-alive{}",
        ctx()
    );
    assert_eq!(
        v2.connection.upgrade,
        ro.upgrade,
        "Connection: upgrade{}",
        ctx()
    );
    let want_upgrade = if tunnel { v1.upgrade.clone() } else { None };
    assert_eq!(v2.upgrade, want_upgrade, "Upgrade{}", ctx());
    assert_eq!(v2.keep_alive_timeout, None, "Keep-Alive forwarded{}", ctx());
    // An HTTP/1.1 head: the client keeps its connection exactly when no close was written.
    assert_eq!(v2.persistent, !ro.close, "persistence{}", ctx());
}

fn count_lines(b: &[u8]) -> usize {
    b.windows(2).filter(|w| w == b"\r\n").count()
}
