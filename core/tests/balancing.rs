//! Balancing: which server a request goes to — `ip_hash` stickiness and moving off a down
//! server, `least_conn` avoiding the busy server, backup servers, and servers marked down for
//! `fail_timeout` after a failure and tried again afterwards (except a single server, which
//! nginx never marks down). The engine is driven through its public API by the in-memory
//! harness (`upkeep_core::sim::Harness`), which records the server of every connection.

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;

use upkeep_core::config::Balance;
use upkeep_core::sim::Harness;

mod common;
use common::*;

#[test]
fn ip_hash_sticks_a_client_to_one_server() {
    let mut cfg = config(3);
    cfg.upstreams[0].balance = Balance::IpHash;
    let mut h = Harness::new(cfg);
    for n in 0..4u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, n));
        let mut servers = Vec::new();
        for i in 0..4 {
            let c = h.connect_client_from(ip);
            let (u, rs) = exchange(&mut h, c, &get(&format!("/{i}")), &ok("x"));
            assert_eq!(rs[0].status, 200);
            servers.push(h.upstreams[&u].server.unwrap().index);
        }
        assert!(servers.iter().all(|&s| s == servers[0]), "{servers:?}");
    }
}

#[test]
fn ip_hash_moves_off_a_down_server_and_comes_back_after_fail_timeout() {
    let mut cfg = config(2);
    cfg.upstreams[0].balance = Balance::IpHash;
    let mut h = Harness::new(cfg);
    let c = h.connect_client_from(ip(7));
    let (u, _) = exchange(&mut h, c, &get("/1"), &ok("x"));
    let home = h.upstreams[&u].server.unwrap();
    // The home server's pooled connection goes away, and it refuses the next connect.
    h.upstream_eof(u);
    h.auto_connect = false;
    h.client_send(c, &get("/2"));
    let first = h.connects[0];
    assert_eq!(h.upstreams[&first].server, Some(home));
    h.refuse_connect();
    let second = h.connects[0];
    assert_ne!(
        h.upstreams[&second].server,
        Some(home),
        "moved to the other server"
    );
    h.accept_connect();
    requests(&mut h, second);
    h.upstream_send(second, &ok("y"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    // While home is down the client stays on the other server (its pooled connection).
    let (u3, _) = exchange(&mut h, c, &get("/3"), &ok("z"));
    assert_eq!(u3, second);
    // After fail_timeout the client goes home again.
    h.auto_connect = true;
    h.advance(secs(11));
    let (u4, rs) = exchange(&mut h, c, &get("/4"), &ok("w"));
    assert_eq!(rs[0].status, 200);
    assert_eq!(h.upstreams[&u4].server, Some(home));
}

#[test]
fn least_conn_prefers_the_idle_server() {
    let mut cfg = config(2);
    cfg.upstreams[0].balance = Balance::LeastConn;
    let mut h = Harness::new(cfg);
    let c1 = h.connect_client();
    h.client_send(c1, &get("/slow"));
    let u1 = busy_upstream(&h).unwrap();
    requests(&mut h, u1);
    let s1 = h.upstreams[&u1].server.unwrap().index;
    for i in 0..3 {
        let c = h.connect_client();
        let (u, _) = exchange(&mut h, c, &get(&format!("/{i}")), &ok("q"));
        assert_ne!(
            h.upstreams[&u].server.unwrap().index,
            s1,
            "busy server avoided"
        );
    }
    h.upstream_send(u1, &ok("s"));
    assert_eq!(responses(&mut h, c1)[0].body, b"s");
}

#[test]
fn backup_takes_over_and_the_primary_comes_back_after_fail_timeout() {
    let mut cfg = config(2);
    cfg.upstreams[0].servers[1].backup = true;
    cfg.upstreams[0].servers[0].fail_timeout = secs(5);
    let mut h = Harness::new(cfg);
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let p = h.refuse_connect().unwrap();
    let primary = h.upstreams[&p].server;
    let b = h.accept_connect().unwrap();
    assert_ne!(h.upstreams[&b].server, primary);
    requests(&mut h, b);
    h.upstream_send(b, &ok("b"));
    assert_eq!(responses(&mut h, c)[0].status, 200);
    h.auto_connect = true;
    let (u, _) = exchange(&mut h, c, &get("/2"), &ok("b"));
    assert_eq!(u, b, "backup while the primary is down");
    h.advance(secs(6));
    let (u, rs) = exchange(&mut h, c, &get("/3"), &ok("p"));
    assert_eq!(rs[0].status, 200);
    assert_eq!(
        h.upstreams[&u].server, primary,
        "primary back after fail_timeout"
    );
    let (u2, _) = exchange(&mut h, c, &get("/4"), &ok("p"));
    assert_eq!(u2, u);
}

#[test]
fn second_request_after_502_from_a_dead_server_goes_to_the_live_one() {
    let mut h = Harness::new(config(2));
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    let u1 = h.refuse_connect().unwrap();
    assert_eq!(h.upstreams[&u1].server.unwrap().index, 0);
    h.refuse_connect().unwrap();
    assert_eq!(responses(&mut h, c)[0].status, 502);
    assert!(
        !h.clients[&c].closed,
        "502 for a complete request keeps the client"
    );
    // Server 1 recovers after its fail_timeout.
    h.advance(Duration::from_secs(11));
    h.client_send(c, &get("/2"));
    let u = h.accept_connect().expect("tried again after fail_timeout");
    requests(&mut h, u);
    h.upstream_send(u, &ok("back"));
    assert_eq!(responses(&mut h, c)[0].body, b"back");
}

/// nginx: "If there is only a single server in a group, max_fails, fail_timeout and slow_start
/// parameters are ignored, and such a server will never be considered unavailable." A single
/// backend that refused one connect (e.g. it was restarting) must be tried again for the next
/// request instead of a 10 s window of instant 502s.
#[test]
fn single_server_group_is_never_marked_unavailable() {
    let mut h = harness();
    h.auto_connect = false;
    let c = h.connect_client();
    h.client_send(c, &get("/1"));
    h.refuse_connect().unwrap();
    assert_eq!(responses(&mut h, c)[0].status, 502);
    let before = connects(&h);
    h.client_send(c, &get("/2"));
    assert_eq!(
        connects(&h),
        before + 1,
        "the only server is tried again (nginx never marks a single server down)"
    );
}
