//! The admin listener's protocol, without I/O: `GET /metrics` (Prometheus text 0.0.4),
//! `GET /status` (nginx `stub_status`), `GET /ready` (503 while draining), the upstream API
//! (`/upstreams`, JSON: see [`crate::upstreams`]); `HEAD` of each; 404
//! for another path, 405 for another method. One short request per connection, answered with
//! `Connection: close`.
//!
//! A runtime accepts connections its own way and, per connection, feeds what it reads into a
//! [`Head`] until [`Head::push`] says it has enough (or the peer closed, or [`IO_TIMEOUT`] passed
//! since the accept), then writes [`answer`]'s bytes and closes. The facts come from an
//! [`Operator`] (the workers' [`Board`] and the draining flag), so `/metrics` and `/status` read the
//! same counters on every runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::board::{Board, Reporter};
use crate::metrics::Snapshot;
use crate::process::{self, Reloads};
use crate::upstreams::{self, Upstreams};

/// How long one admin connection may take to send its request head (and to take the answer):
/// a stuck scraper, or one trickling a byte at a time, cannot hold the listener long. A deadline
/// for the whole head, not a timeout per read.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request head read; a longer one is answered from what arrived.
pub const MAX_HEAD: usize = 8192;

/// A request head being received.
#[derive(Debug, Default)]
pub struct Head {
    bytes: Vec<u8>,
}

impl Head {
    /// An empty head.
    pub fn new() -> Head {
        Head {
            bytes: Vec::with_capacity(512),
        }
    }

    /// Appends bytes read from the connection; true once there is enough to answer (the blank
    /// line that ends the head arrived, or more than [`MAX_HEAD`] bytes did).
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        self.bytes.extend_from_slice(bytes);
        self.is_complete() || self.bytes.len() > MAX_HEAD
    }

    /// Whether the blank line that ends the head has arrived.
    fn is_complete(&self) -> bool {
        let b = &self.bytes;
        b.windows(4).any(|w| w == b"\r\n\r\n") || b.windows(2).any(|w| w == b"\n\n")
    }

    /// What arrived so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What the admin listener reports on: the workers' board and whether the proxy is draining.
#[derive(Debug)]
pub struct Operator<R> {
    /// Live workers and retired totals.
    pub board: Arc<Board<R>>,
    /// Set once the proxy drains: `/ready` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// Configuration reloads by result (`upkeep_reloads_total`).
    pub reloads: Arc<Reloads>,
    /// TLS handshakes and failures (appended to `/metrics`).
    pub tls: Arc<crate::tls::TlsStats>,
    /// The generation in force, for `/upstreams` (see [`crate::upstreams`]).
    pub upstreams: Upstreams,
}

impl<R> Clone for Operator<R> {
    fn clone(&self) -> Self {
        Operator {
            board: self.board.clone(),
            draining: self.draining.clone(),
            reloads: self.reloads.clone(),
            tls: self.tls.clone(),
            upstreams: self.upstreams.clone(),
        }
    }
}

impl<R> Default for Operator<R> {
    fn default() -> Self {
        Operator {
            board: Arc::default(),
            draining: Arc::default(),
            reloads: Arc::default(),
            tls: Arc::default(),
            upstreams: Upstreams::default(),
        }
    }
}

impl<R: Reporter> Operator<R> {
    /// Counters summed over every worker (see [`Board::collect`]).
    pub fn snapshot(&self) -> Snapshot {
        self.board.collect()
    }

    /// Whether the proxy is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the proxy draining.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Status,
    Ready,
    NotFound,
    MethodNotAllowed,
}

/// The route and whether the body is left out (`HEAD`), from the request line of `head`.
fn route(head: &[u8]) -> (Route, bool) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let route = match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", "/status") => Route::Status,
        ("GET" | "HEAD", "/ready") => Route::Ready,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    };
    (route, method == "HEAD")
}

/// The complete response (head and body) to the request `head`. Collects a snapshot only for
/// `/metrics` and `/status`; that waits for the workers' replies (at most
/// [`SNAPSHOT_WAIT`](crate::board::SNAPSHOT_WAIT) each), so an async runtime calls this off its
/// executor.
pub fn answer<R: Reporter>(head: &[u8], operator: &Operator<R>) -> Vec<u8> {
    if let Some(out) = answer_upstreams(head, operator) {
        return out;
    }
    let (route, head_only) = route(head);
    let (status, ctype, body) = match route {
        Route::Metrics => {
            let mut text = operator.snapshot().prometheus();
            process::render(&mut text, &process::read(), &operator.reloads);
            text.push_str(&operator.tls.prometheus());
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
        }
        Route::Status => ("200 OK", "text/plain", operator.snapshot().stub_status()),
        Route::Ready if operator.is_draining() => {
            ("503 Service Unavailable", "text/plain", "draining\n".into())
        }
        Route::Ready => ("200 OK", "text/plain", "ready\n".into()),
        Route::NotFound => ("404 Not Found", "text/plain", "not found\n".into()),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        ),
    };
    // RFC 9110 §15.5.6: a 405 must say which methods the resource does allow.
    let allow = if route == Route::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// `/upstreams` and below ([`crate::upstreams`]), JSON; `None` for another path.
fn answer_upstreams<R>(head: &[u8], operator: &Operator<R>) -> Option<Vec<u8>> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let r = upstreams::answer(method, path, &operator.upstreams)?;
    let allow = r
        .allow
        .map(|a| format!("Allow: {a}\r\n"))
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        r.status,
        r.body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(r.body.as_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Sender;

    /// A board with no workers.
    #[derive(Clone)]
    struct Nobody;

    impl Reporter for Nobody {
        fn id(&self) -> u64 {
            0
        }
        fn ask_snapshot(&self, _: Sender<Snapshot>) -> bool {
            false
        }
    }

    fn text(head: &[u8], operator: &Operator<Nobody>) -> String {
        String::from_utf8(answer(head, operator)).unwrap()
    }

    #[test]
    fn head_is_complete_at_the_blank_line_or_the_size_cap() {
        let mut h = Head::new();
        assert!(!h.push(b"GET /ready HTTP/1.1\r\nHost: a\r\n"));
        assert!(h.push(b"\r\n"));
        let mut bare = Head::new();
        assert!(bare.push(b"GET / HTTP/1.0\n\n"));
        let mut long = Head::new();
        assert!(!long.push(&[b'a'; MAX_HEAD]));
        assert!(long.push(b"a"));
    }

    #[test]
    fn routes_and_statuses() {
        let op = Operator::<Nobody>::default();
        assert_eq!(
            text(b"GET /ready HTTP/1.1\r\n\r\n", &op),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nready\n"
        );
        assert!(text(b"GET /status?x=1 HTTP/1.1\r\n\r\n", &op).ends_with("\r\n\r\nActive connections: 0 \nserver accepts handled requests\n 0 0 0 \nReading: 0 Writing: 0 Waiting: 0 \n"));
        let metrics = text(b"GET /metrics HTTP/1.1\r\n\r\n", &op);
        assert!(metrics.starts_with(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        ));
        assert!(metrics.contains("# TYPE upkeep_requests_total counter\n"));
        assert!(text(b"GET /nope HTTP/1.1\r\n\r\n", &op).starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(
            text(b"POST /ready HTTP/1.1\r\n\r\n", &op)
                .starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
        );
        assert!(text(b"", &op).starts_with("HTTP/1.1 405 "));
        assert!(
            text(b"DELETE /metrics HTTP/1.1\r\n\r\n", &op).contains("\r\nAllow: GET, HEAD\r\n")
        );
        assert!(!text(b"GET /nope HTTP/1.1\r\n\r\n", &op).contains("Allow:"));
        op.set_draining();
        assert!(
            text(b"GET /ready HTTP/1.1\r\n\r\n", &op)
                .starts_with("HTTP/1.1 503 Service Unavailable\r\n")
        );
    }

    #[test]
    fn head_leaves_out_the_body_but_not_its_length() {
        let op = Operator::<Nobody>::default();
        assert_eq!(
            text(b"HEAD /ready HTTP/1.1\r\n\r\n", &op),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
        );
    }
}
