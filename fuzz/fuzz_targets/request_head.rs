//! Request heads: arbitrary bytes through `Head::parse_request`.
//!
//! Input: byte 0 chooses the forwarding options of the re-serialisation (bit 0 X-Forwarded-For,
//! bit 1 X-Forwarded-Proto, bit 2 Via, bit 3 an IPv6 client address); the rest is the request.
//!
//! Checked:
//! - no panic, no hang (libFuzzer's `-timeout`);
//! - the outcome is "incomplete", a head, or an error whose status is a definite 4xx/5xx;
//! - a `Head` reused after another parse gives exactly what a fresh one gives;
//! - split independence: a complete head of `len` bytes parses identically from `buf[..len]`,
//!   and every sampled shorter prefix is "incomplete" (never an error, never a head) — the
//!   engine reads heads incrementally, so a valid head cut at a read boundary must just wait;
//!   likewise every sampled prefix of an incomplete input is incomplete;
//! - round trip (below).
//!
//! "Same head" after `write_request_head` and a re-parse means, precisely:
//! - method token, method and target: byte-identical;
//! - version: HTTP/1.1 (the writer always upgrades the version);
//! - Host: the received value, or `Forwarding::default_host` when the request had none;
//! - end-to-end fields (those not marked `strip`: not hop-by-hop, not named in Connection),
//!   name and value byte-identical and in the same order, except the fields the writer replaces
//!   when the option is on (X-Forwarded-For, X-Forwarded-Proto, Via), followed by the added Host
//!   when there was none;
//! - X-Forwarded-For (when on): one field, the received non-stripped non-empty values joined
//!   with ", ", then the client address; X-Forwarded-Proto (when on): one field `http`; Via (when
//!   on): one field, the received values joined, then `1.1 upkeep` / `1.0 upkeep` after the
//!   received version;
//! - body framing: the same `BodyKind` (Empty, Length(n), Chunked) and `content_length` exactly
//!   when the framing is Length;
//! - Upgrade: forwarded (with `Connection: upgrade`) exactly when the engine would tunnel
//!   (HTTP/1.1, Connection: upgrade, an Upgrade field, no body), else none;
//! - nothing hop-by-hop survives: no Expect (`expect_continue` false), no TE (`te_trailers`
//!   false), no close / keep-alive connection options.
#![no_main]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use upkeep_core::framing::{
    BodyKind, Forwarding, Head, HeadError, MAX_HEADERS, OutBody, Version, write_request_head,
};
use upkeep_core_fuzz::{HeadView, LIMITS, Outcome, ROOMY, assert_definite, prefix_points};

thread_local! {
    /// A head reused across inputs: `parse_request` must reset every field it sets.
    static REUSED: RefCell<Head> = RefCell::new(Head::new());
}

fn parse(head: &mut Head, buf: &[u8], limits: &upkeep_core::framing::HeadLimits) -> Outcome {
    match head.parse_request(buf, limits) {
        Ok(false) => Outcome::Incomplete,
        Ok(true) => {
            assert!(
                head.len > 0 && head.len <= buf.len(),
                "head len {} of {}",
                head.len,
                buf.len()
            );
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
    let mut head = Head::new();
    let outcome = parse(&mut head, buf, &LIMITS);
    let reused = REUSED.with(|h| parse(&mut h.borrow_mut(), buf, &LIMITS));
    assert_eq!(outcome, reused, "a reused Head disagrees with a fresh one");

    match &outcome {
        Outcome::Head(v1) => {
            let len = v1.len;
            // The head alone parses the same.
            let mut h = Head::new();
            assert_eq!(
                parse(&mut h, &buf[..len], &LIMITS),
                outcome,
                "head alone differs"
            );
            // Shorter prefixes only ever wait for more.
            for k in prefix_points(len, buf, 12) {
                let mut h = Head::new();
                let p = parse(&mut h, &buf[..k], &LIMITS);
                assert_eq!(
                    p,
                    Outcome::Incomplete,
                    "prefix of {k} bytes of a valid {len}-byte head is not incomplete"
                );
            }
            round_trip(&head, buf, v1, opts);
        }
        Outcome::Incomplete => {
            for k in prefix_points(buf.len(), buf, 6) {
                let mut h = Head::new();
                let p = parse(&mut h, &buf[..k], &LIMITS);
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

const DEFAULT_HOST: &str = "backend.default";

fn round_trip(head: &Head, buf: &[u8], v1: &HeadView, opts: u8) {
    let xff = opts & 1 != 0;
    let proto = opts & 2 != 0;
    let via = opts & 4 != 0;
    let ip = if opts & 8 != 0 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))
    };
    let fwd = Forwarding {
        client_ip: Some(ip),
        x_forwarded_for: xff,
        proto: proto.then_some("http"),
        via: via.then_some("upkeep"),
        default_host: DEFAULT_HOST,
        te_trailers: false,
    };
    // What the engine does (proxy.rs): framing from the parsed body, upgrade only when it tunnels.
    let out_body = match v1.body {
        BodyKind::Empty | BodyKind::UntilClose => OutBody::None,
        BodyKind::Length(n) => OutBody::Length(n),
        BodyKind::Chunked => OutBody::Chunked,
    };
    let upgrade = v1.version == Version::Http11
        && v1.connection.upgrade
        && v1.upgrade.is_some()
        && v1.body == BodyKind::Empty;
    let mut out = BytesMut::new();
    write_request_head(head, buf, out_body, upgrade, &fwd, &mut out);

    let mut h2 = Head::new();
    let v2 = match h2.parse_request(&out, &ROOMY) {
        Ok(true) => HeadView::of(&h2, &out),
        Err(HeadError::HeaderTooLarge) if count_lines(&out) > MAX_HEADERS + 2 => {
            // The writer's additions pushed the field count past the parser's limit.
            return;
        }
        r => panic!(
            "re-serialised request does not parse: {r:?}\noriginal: {:?}\nwritten: {:?}",
            String::from_utf8_lossy(&buf[..v1.len]),
            String::from_utf8_lossy(&out)
        ),
    };
    let ctx = || {
        format!(
            "\noriginal: {:?}\nwritten: {:?}",
            String::from_utf8_lossy(&buf[..v1.len]),
            String::from_utf8_lossy(&out)
        )
    };
    assert_eq!(
        v2.len,
        out.len(),
        "trailing bytes after the written head{}",
        ctx()
    );
    assert_eq!(v2.method_name, v1.method_name, "method{}", ctx());
    assert_eq!(v2.method, v1.method, "method{}", ctx());
    assert_eq!(v2.target, v1.target, "target{}", ctx());
    assert_eq!(v2.version, Version::Http11, "version{}", ctx());
    let want_host = v1
        .host
        .clone()
        .unwrap_or_else(|| DEFAULT_HOST.as_bytes().to_vec());
    assert_eq!(v2.host.as_deref(), Some(&want_host[..]), "Host{}", ctx());

    let mut replaced: Vec<&[u8]> = Vec::new();
    if xff {
        replaced.push(b"x-forwarded-for");
    }
    if proto {
        replaced.push(b"x-forwarded-proto");
    }
    if via {
        replaced.push(b"via");
    }
    let mut want_fields = v1.end_to_end(&replaced);
    if v1.host.is_none() {
        want_fields.push((b"Host".to_vec(), DEFAULT_HOST.as_bytes().to_vec()));
    }
    assert_eq!(
        v2.end_to_end(&replaced),
        want_fields,
        "end-to-end fields{}",
        ctx()
    );

    if xff {
        let mut want = v1.joined(b"x-forwarded-for");
        if !want.is_empty() {
            want.extend_from_slice(b", ");
        }
        want.extend_from_slice(ip.to_string().as_bytes());
        assert_eq!(
            v2.values(b"x-forwarded-for"),
            vec![want],
            "X-Forwarded-For{}",
            ctx()
        );
    }
    if proto {
        assert_eq!(
            v2.values(b"x-forwarded-proto"),
            vec![b"http".to_vec()],
            "proto{}",
            ctx()
        );
    }
    if via {
        assert_eq!(v2.values(b"via"), vec![v1.expected_via()], "Via{}", ctx());
    }

    assert_eq!(v2.body, v1.body, "body framing{}", ctx());
    let want_cl = match v1.body {
        BodyKind::Length(n) => Some(n),
        _ => None,
    };
    assert_eq!(v2.content_length, want_cl, "Content-Length{}", ctx());
    if upgrade {
        assert_eq!(v2.upgrade, v1.upgrade, "Upgrade{}", ctx());
        assert!(v2.connection.upgrade, "Connection: upgrade{}", ctx());
    } else {
        assert_eq!(v2.upgrade, None, "Upgrade forwarded{}", ctx());
        assert!(
            !v2.connection.upgrade,
            "Connection: upgrade forwarded{}",
            ctx()
        );
    }
    assert!(
        !v2.connection.close && !v2.connection.keep_alive,
        "Connection{}",
        ctx()
    );
    assert!(!v2.expect_continue, "Expect forwarded{}", ctx());
    assert!(!v2.te_trailers, "TE forwarded{}", ctx());
    // Re-serialising the re-parsed head is a fixed point (with the same options).
    let mut out2 = BytesMut::new();
    let body2 = match v2.body {
        BodyKind::Empty | BodyKind::UntilClose => OutBody::None,
        BodyKind::Length(n) => OutBody::Length(n),
        BodyKind::Chunked => OutBody::Chunked,
    };
    let plain = Forwarding {
        client_ip: None,
        x_forwarded_for: false,
        proto: None,
        via: None,
        default_host: DEFAULT_HOST,
        te_trailers: false,
    };
    write_request_head(&h2, &out, body2, upgrade, &plain, &mut out2);
    let mut h3 = Head::new();
    assert_eq!(
        h3.parse_request(&out2, &ROOMY),
        Ok(true),
        "second round trip{}",
        ctx()
    );
    let v3 = HeadView::of(&h3, &out2);
    assert_eq!(
        v3.end_to_end(&[]),
        v2.end_to_end(&[]),
        "second round trip fields{}",
        ctx()
    );
}

fn count_lines(b: &[u8]) -> usize {
    b.windows(2).filter(|w| w == b"\r\n").count()
}
