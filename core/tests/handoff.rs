//! A reload's handoff (issue 15): an old core in a handoff drain lets each client connection
//! finish what it is doing, keeps it open, and releases it once idle with whatever bytes it
//! still holds; a new core adopts it and serves the next request — no close the client could
//! race with.

mod common;
use common::*;

#[test]
fn an_idle_client_moves_to_the_new_core_and_is_served_there() {
    let mut old = harness();
    let c = old.connect_client();
    let (_, rs) = exchange(&mut old, c, &get("/before"), &ok("old"));
    assert_eq!(rs[0].body, b"old");
    old.core.begin_handoff(old.now);
    old.pump();
    assert!(
        !old.clients[&c].closed,
        "a handoff drain closes no idle client"
    );
    assert_eq!(old.core.idle_clients(), [c]);
    let released = old.core.release_idle(c).expect("idle");
    assert!(released.received.is_empty() && released.unsent.is_empty());
    assert!(old.core.is_drained(), "nothing left: the old core can exit");
    assert!(
        !old.trace
            .iter()
            .any(|o| matches!(o, upkeep_core::Output::Close { conn, .. } if *conn == c)),
        "the socket was never closed"
    );

    let mut new = harness();
    let moved = new.adopt_client(&released);
    let (_, rs) = exchange(&mut new, moved, &get("/after"), &ok("new"));
    assert_eq!(rs[0].body, b"new");
    assert!(rs[0].header("connection").is_none(), "kept alive");
    no_leaks(&mut new);
}

#[test]
fn an_exchange_in_flight_finishes_on_the_old_core_then_the_connection_moves() {
    let mut old = harness();
    let c = old.connect_client();
    old.client_send(c, &get("/slow"));
    let u = busy_upstream(&old).unwrap();
    requests(&mut old, u);
    old.core.begin_handoff(old.now);
    old.pump();
    assert!(old.core.idle_clients().is_empty(), "busy: not idle");
    old.upstream_send(u, &ok("done"));
    let rs = responses(&mut old, c);
    assert_eq!(rs[0].body, b"done");
    assert!(
        rs[0].header("connection").is_none(),
        "no close announced: the connection lives on"
    );
    // Part of the next request arrived on the old core: it moves with the connection.
    old.client_send(c, b"GET /next HTTP/1.1\r\nHo");
    let released = old.core.release_idle(c).expect("idle again");
    assert_eq!(&released.received[..], b"GET /next HTTP/1.1\r\nHo");
    assert!(old.core.is_drained());

    let mut new = harness();
    let moved = new.adopt_client(&released);
    new.client_send(moved, b"st: a\r\n\r\n");
    let nu = busy_upstream(&new).expect("the request completed on the new core");
    assert_eq!(requests(&mut new, nu)[0].path, "/next");
    new.upstream_send(nu, &ok("next"));
    assert_eq!(responses(&mut new, moved)[0].body, b"next");
}

#[test]
fn unwritten_response_bytes_move_with_the_connection() {
    let mut old = harness();
    let c = old.connect_client();
    old.client_send(c, &get("/x"));
    let u = busy_upstream(&old).unwrap();
    requests(&mut old, u);
    // The client reads nothing for now: the response stays queued in the old core.
    old.stall(c, true);
    old.upstream_send(u, &ok("queued"));
    old.core.begin_handoff(old.now);
    old.pump();
    let released = old.core.release_idle(c).expect("idle, still flushing");
    assert!(!released.unsent.is_empty());

    let mut new = harness();
    let moved = new.adopt_client(&released);
    let rs = responses(&mut new, moved);
    assert_eq!(rs[0].body, b"queued", "written by the new core");
}

#[test]
fn a_plain_drain_still_closes_idle_clients() {
    let mut h = harness();
    let c = h.connect_client();
    exchange(&mut h, c, &get("/"), &ok("x"));
    h.core.begin_drain(h.now);
    h.pump();
    assert!(h.clients[&c].closed);
}

/// Requests from several clients, one at a time each, with the handoff at any step and a
/// request possibly in flight at that moment: every request gets exactly its own response,
/// from whichever core holds the connection then; no client connection is ever closed; the old
/// core ends drained.
mod generated {
    use super::*;
    use proptest::prelude::*;
    use upkeep_core::ConnId;

    /// Where a client connection lives.
    #[derive(Clone, Copy, Debug)]
    enum At {
        Old(ConnId),
        New(ConnId),
    }

    fn run(clients: usize, rounds: usize, handoff_at: usize, in_flight: bool, posts: u8) {
        let mut old = harness();
        let mut new = harness();
        let mut at: Vec<At> = (0..clients)
            .map(|_| At::Old(old.connect_client()))
            .collect();
        let mut handed = false;
        let mut step = 0;
        for round in 0..rounds {
            for k in 0..clients {
                let path = format!("/c{k}/r{round}");
                let req = if (round + k) % 4 < usize::from(posts) {
                    let mut r = post_head(&path, 4);
                    r.extend_from_slice(b"body");
                    r
                } else {
                    get(&path)
                };
                let (h, c) = match at[k] {
                    At::Old(c) => (&mut old, c),
                    At::New(c) => (&mut new, c),
                };
                h.client_send(c, &req);
                let u = busy_upstream(h).expect("forwarded");
                let got = requests(h, u);
                assert_eq!((got.len(), got[0].path.as_str()), (1, path.as_str()));
                step += 1;
                // The handoff begins with this request in flight, or right after it.
                let handoff_now = step == handoff_at && !handed;
                if handoff_now && in_flight {
                    old.core.begin_handoff(old.now);
                    old.pump();
                    handed = true;
                }
                let h = match at[k] {
                    At::Old(_) => &mut old,
                    At::New(_) => &mut new,
                };
                h.upstream_send(u, &ok(&path));
                let rs = responses(h, c);
                assert_eq!(rs.len(), 1, "{path}");
                assert_eq!(rs[0].body, path.as_bytes(), "its own response");
                assert!(rs[0].header("connection").is_none(), "{path}: no close");
                if handoff_now && !handed {
                    old.core.begin_handoff(old.now);
                    old.pump();
                    handed = true;
                }
                // Whatever is idle on the old core moves.
                if handed {
                    for id in old.core.idle_clients() {
                        let released = old.core.release_idle(id).expect("idle");
                        let moved = new.adopt_client(&released);
                        for slot in at.iter_mut() {
                            if matches!(*slot, At::Old(c) if c == id) {
                                *slot = At::New(moved);
                            }
                        }
                    }
                }
            }
        }
        let closed = old.trace.iter().any(
            |o| matches!(o, upkeep_core::Output::Close { conn, .. } if old.clients.contains_key(conn)),
        );
        assert!(!closed, "a client connection was closed");
        if handed {
            assert!(old.core.is_drained(), "the old core is left with nothing");
        }
        no_leaks(&mut new);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_request_gets_its_own_response_across_a_handoff(
            handoff_at in 1usize..12,
            in_flight in any::<bool>(),
            posts in 0u8..4,
        ) {
            run(3, 4, handoff_at, in_flight, posts);
        }
    }
}

/// A connection adopted between requests is a kept-alive one, not a new one: a later plain
/// drain (a stop after the reload) closes it at once like any idle keep-alive connection,
/// instead of waiting for a first request that may never come (holding the stop up to the
/// header timeout or `shutdown_timeout`).
#[test]
fn an_adopted_idle_client_is_closed_by_a_later_plain_drain() {
    let mut old = harness();
    let c = old.connect_client();
    exchange(&mut old, c, &get("/before"), &ok("old"));
    old.core.begin_handoff(old.now);
    old.pump();
    let released = old.core.release_idle(c).expect("idle");

    let mut new = harness();
    let moved = new.adopt_client(&released);
    new.core.begin_drain(new.now);
    new.pump();
    assert!(new.clients[&moved].closed, "idle keep-alive: closed");
    assert!(new.core.is_drained());
}

/// A pooled connection a reload moved to a new core is a reused one there: should the backend
/// have closed it meanwhile (its own keep-alive timeout racing the first request), the request
/// is re-sent once on a fresh connection — the keepalive race — not answered with a 502 that
/// also counts against the server's health.
#[test]
fn a_stale_adopted_pooled_connection_is_retried_on_a_fresh_one() {
    let mut old = harness();
    let c = old.connect_client();
    let (u, _) = exchange(&mut old, c, &get("/warm"), &ok("w"));
    assert!(old.core.is_pooled(u));
    let released = old.core.release_pooled();
    assert_eq!(released.len(), 1);

    let mut new = harness();
    let nu = adopt_pooled(&mut new, &released[0].1, released[0].3);
    let c2 = new.connect_client();
    new.client_send(c2, &get("/first"));
    assert_eq!(
        busy_upstream(&new),
        Some(nu),
        "the adopted connection is used"
    );
    new.take_upstream(nu);
    // The backend had closed it meanwhile: EOF before any response byte.
    new.upstream_eof(nu);
    let fresh = busy_upstream(&new).expect("re-sent on a fresh connection");
    assert_ne!(fresh, nu);
    assert_eq!(requests(&mut new, fresh)[0].path, "/first");
    new.upstream_send(fresh, &ok("again"));
    let rs = responses(&mut new, c2);
    assert_eq!((rs[0].status, &rs[0].body[..]), (200, &b"again"[..]));
    assert_eq!(new.core.stats().groups[0].stale_retries, 1);
}

/// An idle connection whose listener the new configuration dropped has nowhere to move: it
/// closes once the end of its last response is written, never before.
#[test]
fn an_idle_client_on_a_dropped_listener_closes_after_its_last_bytes() {
    let mut old = harness();
    let c = old.connect_client();
    old.client_send(c, &get("/x"));
    let u = busy_upstream(&old).unwrap();
    requests(&mut old, u);
    old.stall(c, true);
    old.upstream_send(u, &ok("queued"));
    old.core.begin_handoff(old.now);
    old.core.close_idle_on(old.now, upkeep_core::ListenerId(0));
    old.pump();
    assert!(old.core.idle_clients().is_empty(), "not released");
    assert!(!old.clients[&c].closed, "its response is still queued");
    old.stall(c, false);
    assert_eq!(responses(&mut old, c)[0].body, b"queued");
    assert!(old.clients[&c].closed);
    assert!(old.core.is_drained());
}

/// A pooled connection keeps its idle deadline across a reload: the backend announced
/// `Keep-Alive: timeout=5`, so the new core lets go of it within those 5 s as the old one
/// would have — not after a fresh `keepalive_timeout`, when the backend has closed it long
/// since and a POST sent on it would fail.
#[test]
fn an_adopted_pooled_connection_keeps_its_idle_deadline() {
    let mut old = harness();
    let c = old.connect_client();
    let (u, _) = exchange(
        &mut old,
        c,
        &get("/warm"),
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 1\r\n\r\nw",
    );
    assert!(old.core.is_pooled(u));
    old.advance(secs(3));
    let released = old.core.release_pooled();
    let (_, addr, tls, expires) = released[0].clone();

    let mut new = harness();
    new.now = old.now;
    assert!(tls.is_none());
    let nu = adopt_pooled(&mut new, &addr, expires);
    assert!(new.core.is_pooled(nu));
    // 5 s after the response: gone, as the backend's hint asked.
    new.advance(secs(3));
    assert!(!new.core.is_pooled(nu), "expired with the backend's hint");
}

/// A client that pipelines keeps its next request buffered whenever a response completes; in a
/// handoff drain that request moves with the connection instead of starting on the old core —
/// otherwise a client that always has one more request queued would never be idle, stay on the
/// old configuration, and have its exchange cut at `shutdown_timeout`.
#[test]
fn a_pipelined_request_moves_with_the_connection() {
    let mut old = harness();
    let c = old.connect_client();
    let mut both = get("/one");
    both.extend_from_slice(&get("/two"));
    old.client_send(c, &both);
    let u = busy_upstream(&old).unwrap();
    assert_eq!(requests(&mut old, u)[0].path, "/one");
    old.core.begin_handoff(old.now);
    old.pump();
    old.upstream_send(u, &ok("one"));
    assert_eq!(responses(&mut old, c)[0].body, b"one");
    let released = old
        .core
        .release_idle(c)
        .expect("idle, its next request buffered");
    assert_eq!(&released.received[..], &get("/two")[..]);
    assert!(old.core.is_drained());

    let mut new = harness();
    let moved = new.adopt_client(&released);
    let nu = busy_upstream(&new).expect("the request started on the new core");
    assert_eq!(requests(&mut new, nu)[0].path, "/two");
    new.upstream_send(nu, &ok("two"));
    assert_eq!(responses(&mut new, moved)[0].body, b"two");
}

/// A pooled connection another core released, adopted by `h` (plain TCP) and connected as the
/// harness sees it.
fn adopt_pooled(
    h: &mut upkeep_core::sim::Harness,
    server: &upkeep_core::Address,
    expires: upkeep_core::Time,
) -> upkeep_core::ConnId {
    let id = h
        .core
        .adopt_pooled(h.now, server, None, expires)
        .expect("adopted");
    h.upstreams.insert(
        id,
        upkeep_core::sim::Endpoint {
            reading: true,
            connected: true,
            ..Default::default()
        },
    );
    h.pump();
    id
}
