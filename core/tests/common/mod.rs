//! Helpers shared by the scenario-style integration tests (`scenarios.rs` and the subject files
//! `backpressure.rs`, `timeouts.rs`, `retries.rs`, `balancing.rs`, `limits.rs`, `pooling.rs`,
//! `drain.rs`, `half_close.rs`, `pipelining.rs`, `bodies.rs`, `odd_responses.rs`): build a
//! config, play clients and backends through the harness, read what they received, check that
//! nothing leaks and the upstream accounting (also used by `sim.rs`).
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;

use upkeep_core::config::{Address, Config};
use upkeep_core::sim::Harness;
use upkeep_core::sim::http::{Message, read_request, read_responses};
use upkeep_core::{ConnId, Core, Input, Output, UpstreamId};

pub fn config(servers: usize) -> Config {
    let addrs = (0..servers)
        .map(|i| Address::parse(&format!("127.0.0.1:{}", 9001 + i)).unwrap())
        .collect();
    Config::simple(Address::parse("127.0.0.1:8080").unwrap(), addrs)
}

/// `config` with request buffering off (issue 15): request bodies stream from their first byte,
/// as bodies larger than `limits.request_buffer` do — for tests of the streaming path.
pub fn streaming(mut config: Config) -> Config {
    config.limits.request_buffer = 0;
    config
}

pub fn harness() -> Harness {
    Harness::new(config(1))
}

pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
}

/// Every request the backend side of `u` received so far (consumed).
pub fn requests(h: &mut Harness, u: ConnId) -> Vec<Message> {
    let buf = h.take_upstream(u);
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((m, used)) = read_request(&buf[pos..]) {
        out.push(m);
        pos += used;
    }
    assert_eq!(
        pos,
        buf.len(),
        "upstream received an incomplete or unparseable request"
    );
    out
}

/// Every complete response the client received so far (consumed).
pub fn responses(h: &mut Harness, c: ConnId) -> Vec<Message> {
    let eof = h.clients[&c].closed;
    let buf = h.take_client(c);
    let (rs, used) = read_responses(&buf, &[], eof);
    assert_eq!(
        used,
        buf.len(),
        "client received trailing bytes: {:?}",
        String::from_utf8_lossy(&buf[used..])
    );
    rs
}

/// Sends `req` from a new client; answers it from the upstream with `resp`; returns the
/// upstream connection used and the client's responses.
pub fn exchange(h: &mut Harness, c: ConnId, req: &[u8], resp: &[u8]) -> (ConnId, Vec<Message>) {
    h.client_send(c, req);
    let u = busy_upstream(h).expect("request reached an upstream connection");
    let got = requests(h, u);
    assert_eq!(got.len(), 1);
    h.upstream_send(u, resp);
    (u, responses(h, c))
}

/// A default harness where one client's `GET path` has reached the upstream (request consumed):
/// (harness, client, upstream connection).
pub fn forwarded(path: &str) -> (Harness, ConnId, ConnId) {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, &get(path));
    let u = busy_upstream(&h).expect("request forwarded");
    let got = requests(&mut h, u);
    assert_eq!(got[0].path, path);
    (h, c, u)
}

/// The upstream connection that has unread request bytes.
pub fn busy_upstream(h: &Harness) -> Option<ConnId> {
    h.upstreams
        .iter()
        .find(|(_, e)| !e.received.is_empty() && !e.closed)
        .map(|(&id, _)| id)
}

pub fn connects(h: &Harness) -> usize {
    h.trace
        .iter()
        .filter(|o| matches!(o, Output::Connect { .. }))
        .count()
}

pub const KIB: usize = 1024;
/// The default write high-water mark (`Limits::write_high_water`).
pub const HW: usize = 256 * KIB;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `n` bytes of a deterministic, non-repeating-looking body.
pub fn body_of(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(seed) % 251) as u8)
        .collect()
}

/// A POST head announcing a `len`-byte body.
pub fn post_head(path: &str, len: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").into_bytes()
}

/// A WebSocket upgrade through a default harness, answered with 101: (harness, client,
/// upstream connection), both sides' bytes so far consumed. The pair is now a byte tunnel.
pub fn open_tunnel() -> (Harness, ConnId, ConnId) {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(
        c,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let u = busy_upstream(&h).expect("upgrade request forwarded");
    requests(&mut h, u);
    h.upstream_send(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let head = h.take_client(c);
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    (h, c, u)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// No deadline the core asks for is already in the past.
pub fn timers_ok(h: &Harness, what: &str) {
    if let Some(t) = h.core.poll_timeout() {
        assert!(
            t >= h.now,
            "{what}: poll_timeout {:?} is in the past (now {:?})",
            t,
            h.now
        );
    }
}

/// Chunked bytes of `body` in `size`-byte chunks, with the last chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A runtime that read the EOF in the same go as the data before it (before it could act on
/// an interest change): the core sees the EOF while those bytes are still held back.
pub fn eof_now(h: &mut Harness, id: ConnId) {
    h.core.handle(h.now, Input::ReadClosed { conn: id });
    h.pump();
}

/// Data that arrives in one read, whatever the interest (same reasoning as `eof_now`).
/// Delivered in 16 KiB reads, as a runtime's read buffer would.
pub fn recv_now(h: &mut Harness, id: ConnId, data: &[u8]) {
    for piece in data.chunks(16 * KIB) {
        h.core.handle(
            h.now,
            Input::Received {
                conn: id,
                data: piece,
            },
        );
        h.pump();
    }
}

/// Closes whatever is still open, lets every deadline pass, and checks nothing is left.
pub fn no_leaks(h: &mut Harness) {
    let ids: Vec<ConnId> = h
        .clients
        .keys()
        .chain(h.upstreams.keys())
        .copied()
        .collect();
    for id in ids {
        if h.core.is_open(id) {
            h.reset(id);
        }
    }
    h.advance(secs(3600));
    let mut closes: Vec<ConnId> = h
        .trace
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect();
    let n = closes.len();
    closes.sort_by_key(|c| (c.index, c.generation));
    closes.dedup();
    assert_eq!(closes.len(), n, "a connection was closed twice");
    assert_eq!(h.core.connections(), 0, "connections leaked");
    assert_eq!(h.core.poll_timeout(), None, "timer leaked");
}

/// A close-delimited response body (1 MiB) read whole, EOF included, while the client is
/// stalled: the upstream EOF is deferred. Returns (harness, client, upstream, body).
pub fn deferred_close_delimited(client_req: &[u8]) -> (Harness, ConnId, ConnId, Vec<u8>, Vec<u8>) {
    let mut h = harness();
    let c = h.connect_client();
    h.client_send(c, client_req);
    let u = busy_upstream(&h).unwrap();
    requests(&mut h, u);
    h.stall(c, true);
    let body = body_of(1024 * KIB, 13);
    let head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    recv_now(&mut h, u, &head);
    recv_now(&mut h, u, &body);
    eof_now(&mut h, u);
    assert!(
        h.core.is_open(u),
        "EOF acted on while bytes are held back: {:?} {:?} pending {}",
        &h.trace[h.trace.len().saturating_sub(6)..],
        h.clients[&c].total_received,
        h.core.pending_len(c)
    );
    (h, c, u, head, body)
}

/// Every request handed to an upstream connection ended in one of two counted ways — the
/// connection went back to the pool, or it closed with a not-reused reason — or is still under
/// way: checkins + not-reused + busy upstream connections = requests assigned. A warm
/// connection (`min_idle`) is assigned no request but ends the same ways, so the connections
/// opened that way count as assigned too.
pub fn upstreams_accounted(core: &Core) {
    let groups = &core.stats().groups;
    let idle: usize = (0..groups.len())
        .map(|g| core.pool_idle(UpstreamId(g as u32)))
        .sum();
    let busy = (core.connections() - core.client_connections() - idle) as u64;
    // So do the connections that carried a health check (pooled or new).
    let warm: u64 = core
        .stats()
        .servers
        .iter()
        .map(|s| s.preconnects + s.checks)
        .sum();
    let assigned: u64 = groups
        .iter()
        .map(|g| g.pool_hits + g.pool_misses)
        .sum::<u64>()
        + warm;
    let ended: u64 = groups
        .iter()
        .map(|g| g.pool_checkins + g.not_reused.iter().sum::<u64>())
        .sum();
    assert_eq!(
        ended + busy,
        assigned,
        "pooled or not reused + busy != requests assigned: {groups:?}"
    );
}
