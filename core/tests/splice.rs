//! Zero-copy bodies seen from the core: the read that takes a response head stops short
//! (`Core::read_cap`) so that a large body behind it stays in the socket for `splice(2)`.
//! Driven by the in-memory harness playing a splicing runtime (`Harness::enable_splice`),
//! which honours the cap as the runtimes do.

use upkeep_core::sim::Harness;
use upkeep_core::{HEAD_READ, HEAD_READ_AFTER_LARGE};

mod common;
use common::*;

#[test]
fn a_response_head_is_read_with_a_cap_only_while_its_body_may_be_spliced() {
    let mut cfg = config(1);
    cfg.limits.splice_min = 1024;
    for splicing in [true, false] {
        let mut h = Harness::new(cfg.clone());
        if splicing {
            h.enable_splice(1 << 20);
        }
        let c = h.connect_client();
        h.client_send(c, &get("/big"));
        let u = busy_upstream(&h).unwrap();
        requests(&mut h, u);
        let expected = splicing.then_some(HEAD_READ);
        assert_eq!(h.core.read_cap(u), expected, "the head comes next");
        assert_eq!(h.core.read_cap(c), None, "a client is never capped");
        let body = body_of(64 * KIB, 7);
        h.upstream_send(
            u,
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        );
        assert_eq!(
            h.core.read_cap(u),
            None,
            "in the body: read as much as there is"
        );
        h.upstream_send(u, &body);
        let rs = responses(&mut h, c);
        assert_eq!(rs.len(), 1);
        assert!(rs[0].body == body, "the body arrives whole");
        assert!(h.core.is_pooled(u));
        assert_eq!(
            h.core.read_cap(u),
            None,
            "a pooled connection has no response to come"
        );
        assert_eq!(
            h.core.armed_read_cap(u),
            splicing.then_some(HEAD_READ_AFTER_LARGE),
            "a receive armed in the pool takes the next head (after a large body: little else)"
        );
        assert_eq!(h.core.armed_read_cap(c), None, "a client is never capped");
        let spliced = h.core.stats().spliced_bytes;
        if splicing {
            assert!(spliced > 0, "the body behind the head was spliced");
        } else {
            assert_eq!(spliced, 0);
        }
    }
}

/// A 64 KiB response that arrives whole, read as a runtime does: the capped head read takes
/// `HEAD_READ` bytes (head and the start of the body), and with the default `splice_min` the
/// rest of the body may then be spliced — all of it, and not a byte past it.
#[test]
fn what_a_capped_head_read_leaves_of_a_64_kib_body_is_spliced_with_the_default_splice_min() {
    let mut h = Harness::new(config(1));
    h.enable_splice(1 << 20);
    let c = h.connect_client();
    h.client_send(c, &get("/64k"));
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    let body = body_of(64 * KIB, 11);
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    let head_len = response.len();
    response.extend_from_slice(&body);

    let cap = h.core.read_cap(u).expect("a head comes next");
    let now = h.now;
    let got = h.core.read_with(now, u, cap, |buf| {
        buf.extend_from_slice(&response[..cap]);
        Ok(cap)
    });
    assert!(matches!(got, Ok(upkeep_core::ReadOutcome::Data(n)) if n == cap));
    h.pump();
    let hint = h
        .core
        .splice_source(u)
        .expect("the rest of the body may be spliced");
    assert_eq!(hint.to, c);
    assert_eq!(
        hint.max,
        response.len() - cap,
        "the rest of the body, no byte past it"
    );
    assert!(hint.max >= usize::try_from(h.core.config().limits.splice_min).unwrap());

    h.upstream_send(u, &response[cap..]);
    let rs = responses(&mut h, c);
    assert_eq!(rs.len(), 1);
    assert!(rs[0].body == body, "the body arrives whole");
    assert_eq!(
        h.core.stats().spliced_bytes,
        (body.len() - (cap - head_len)) as u64,
        "everything after the head read was spliced"
    );
    assert!(h.core.is_pooled(u));
}

/// The head of a response that follows one with a large body (a Content-Length of `splice_min`
/// or more) on the same connection is read with the smaller cap, so that more of a body like
/// the last one stays in the socket; one that follows a small body gets the usual cap again.
#[test]
fn after_a_large_body_the_next_head_is_read_with_the_smaller_cap() {
    let mut h = Harness::new(config(1));
    h.enable_splice(1 << 20);
    let c = h.connect_client();
    let min = usize::try_from(h.core.config().limits.splice_min).unwrap();
    let mut u = None;
    // (body length, the cap expected for the head of that response)
    let steps = [
        (64 * KIB, HEAD_READ),
        (100, HEAD_READ_AFTER_LARGE),
        (min, HEAD_READ),
        (min - 1, HEAD_READ_AFTER_LARGE),
        (64 * KIB, HEAD_READ),
        (0, HEAD_READ_AFTER_LARGE),
    ];
    for (i, (len, cap)) in steps.into_iter().enumerate() {
        h.client_send(c, &get("/next"));
        let up = busy_upstream(&h).unwrap();
        assert_eq!(
            *u.get_or_insert(up),
            up,
            "one pooled connection carries them all"
        );
        requests(&mut h, up);
        assert_eq!(
            h.core.read_cap(up),
            Some(cap),
            "step {i}: the head of a {len}-byte body"
        );
        let body = body_of(len, i as u32);
        let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        response.extend_from_slice(&body);
        h.upstream_send(up, &response);
        let rs = responses(&mut h, c);
        assert_eq!(rs.len(), 1);
        assert!(rs[0].body == body, "step {i}: the body arrives whole");
        assert!(h.core.is_pooled(up));
    }
}
