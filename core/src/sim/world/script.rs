//! The scenario as plain data — what each backend does, what clients and backends may do next —
//! easy to generate with proptest or `arbitrary`, and the tight timeouts simulations run with.

use core::time::Duration;

use crate::Config;

/// How a backend delimits its response bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Framing {
    /// `Content-Length`.
    #[default]
    ContentLength,
    /// `Transfer-Encoding: chunked` (the body in a few chunks).
    Chunked,
    /// No length: the body ends when the backend closes the connection.
    CloseDelimited,
}

/// What one upstream server does, as data. One per server, in the core's global server order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BackendScript {
    /// Response framing.
    pub framing: Framing,
    /// Padding added to each response body after the echoed request identifier.
    pub body_size: usize,
    /// Closes connections idle for this long (a short backend keepalive timeout).
    pub idle_close_ms: Option<u64>,
    /// Closes a connection after this many responses.
    pub max_requests: Option<u32>,
    /// With `max_requests`: announce the close with `Connection: close` on the last response.
    pub announce_close: bool,
    /// Sends a stray `408 Request Timeout` + close on connections idle for this long.
    pub stray_408_ms: Option<u64>,
    /// Every k-th request to this server: send half the response, then close (reset when the
    /// framing is close-delimited, where a FIN would look like a complete body).
    pub cut_every: Option<u32>,
    /// Every k-th request to this server: reset the connection instead of answering.
    pub reset_every: Option<u32>,
    /// Every k-th response of this server carries more bytes behind it in the same write (a
    /// response nobody asked for, [`STRAY`]), and the connection stays open: a buggy backend,
    /// whose extra bytes must never answer another request.
    pub stray_every: Option<u32>,
    /// Refuses connects.
    pub down: bool,
    /// Accepts connects, but its TLS certificate fails our verification: the runtime reports
    /// every connect as [`Input::ConnectRejected`](crate::Input::ConnectRejected).
    pub rejected: bool,
    /// Answers each request after this many ms.
    pub delay_ms: u64,
    /// Sends `Keep-Alive: timeout=N` (seconds).
    pub keep_alive_hint: Option<u32>,
    /// Sends `103 Early Hints` before each final response.
    pub early_hints: bool,
    /// Network delay of what the backend sends when it closes on its own (idle close, stray 408):
    /// the window of the keepalive race, during which the proxy can still reuse the connection.
    pub race_ms: u64,
    /// Active health checks (`health_check`) this server fails, as a bit pattern: check `k`
    /// (counted from 0) is answered `500` when bit `k % 32` is set, else `200`.
    pub check_fails: u32,
}

/// What a [`BackendScript::stray_every`] backend writes behind a response: a complete response
/// of its own, which would pass for the next request's answer.
pub const STRAY: &[u8] =
    b"HTTP/1.1 200 OK\r\nX-Req-Id: stray\r\nContent-Length: 11\r\n\r\nid=stray;m=";

impl Default for BackendScript {
    fn default() -> Self {
        BackendScript {
            framing: Framing::ContentLength,
            body_size: 32,
            idle_close_ms: None,
            max_requests: None,
            announce_close: true,
            stray_408_ms: None,
            cut_every: None,
            reset_every: None,
            stray_every: None,
            down: false,
            rejected: false,
            delay_ms: 0,
            keep_alive_hint: None,
            early_hints: false,
            race_ms: 0,
            check_fails: 0,
        }
    }
}

/// A request a client can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ReqKind {
    /// `GET` (HTTP/1.1, persistent).
    Get,
    /// `HEAD`.
    Head,
    /// `POST` with a Content-Length body of this size.
    Post(u16),
    /// `POST` with a chunked body of this size.
    PostChunked(u16),
    /// `POST` with `Expect: 100-continue` and a Content-Length body (sent at once).
    PostExpect(u16),
    /// `PUT` (idempotent) with a Content-Length body.
    Put(u16),
    /// `GET` the backend answers with 204.
    NoContent,
    /// HTTP/1.0 `GET` without keep-alive (the connection closes after it).
    Http10,
    /// HTTP/1.0 `GET` with `Connection: keep-alive`.
    Http10KeepAlive,
    /// HTTP/1.1 `GET` with `Connection: close`.
    Close,
}

impl ReqKind {
    /// Whether the client may send more requests after this one.
    pub fn persistent(self) -> bool {
        !matches!(self, ReqKind::Http10 | ReqKind::Close)
    }
}

/// Something a backend does on one of its connections (picked by index among open ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum BackendEvent {
    /// Close the connection if it is idle.
    CloseIdle,
    /// Reset the connection (whatever its state).
    Reset,
    /// Send `408 Request Timeout` + close if idle.
    Stray408,
    /// Send garbage bytes if idle (keeping the connection open).
    Garbage,
}

/// One step of a scenario. Plain data: easy to generate with proptest or `arbitrary`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Action {
    /// A new client connects from 10.0.0.(ip % 4 + 1).
    Connect {
        /// Address selector.
        ip: u8,
    },
    /// Client (index modulo the number of clients) sends one request.
    Send {
        /// Client selector.
        client: u8,
        /// What.
        kind: ReqKind,
    },
    /// Client sends several requests in one write (truncated after a non-persistent one).
    Pipeline {
        /// Client selector.
        client: u8,
        /// What, in order.
        kinds: Vec<ReqKind>,
    },
    /// Client closes its write side (EOF).
    Close {
        /// Client selector.
        client: u8,
    },
    /// Client resets its connection.
    Reset {
        /// Client selector.
        client: u8,
    },
    /// Client stops (or resumes) reading.
    Stall {
        /// Client selector.
        client: u8,
        /// Stop (true) or resume (false).
        stalled: bool,
    },
    /// A backend event on an open upstream connection (index modulo their number).
    Backend {
        /// Connection selector.
        conn: u8,
        /// What.
        event: BackendEvent,
    },
    /// Virtual time passes.
    Advance {
        /// Milliseconds.
        ms: u32,
    },
    /// Largest write on the fake sockets, both directions (`None` = unlimited). Peers split
    /// their writes into random pieces up to this size.
    WriteChunk {
        /// Size.
        size: Option<u8>,
    },
}

/// Timeouts short enough for a simulation to hit every one of them within a few simulated
/// seconds: upstream read/send 150 ms, connect 100 ms, pool idle 300 ms, connection lifetime
/// 1 s (on every group), client timeouts 400 ms, lingering 100 ms.
pub fn tight_timeouts(cfg: &mut Config) {
    for g in &mut cfg.upstreams {
        g.read_timeout = Duration::from_millis(150);
        g.send_timeout = Duration::from_millis(150);
        g.connect_timeout = Duration::from_millis(100);
        g.keepalive_timeout = Duration::from_millis(300);
        g.keepalive_time = Duration::from_millis(1000);
    }
    let t = &mut cfg.client_timeouts;
    t.keepalive = Duration::from_millis(400);
    t.send = Duration::from_millis(400);
    t.header = Duration::from_millis(400);
    t.body = Duration::from_millis(400);
    t.lingering = Duration::from_millis(100);
}
