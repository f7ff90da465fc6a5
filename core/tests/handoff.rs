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
