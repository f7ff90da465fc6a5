//! Loopback origin servers for tests: a thread accepts, a thread per connection serves, atomics
//! count what happened and a log keeps every request head and body the backend received, so a
//! test asserts on what reached the origin (a pooled connection, a smuggled request that must
//! never arrive, the headers a proxy added or removed).
//!
//! ```no_run
//! use upkeep_testkit::backend::Backend;
//! let backend = Backend::builder().name("a").identify().start().unwrap();
//! // ... point a proxy at backend.addr() and drive clients ...
//! assert_eq!(backend.accepted(), 1);
//! ```

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use upkeep_core::Address;

use crate::wire::{self, IO_TIMEOUT, Patience, Stream, TempDir, WireReader, invalid, is_timeout};

/// How often blocked backend threads wake up to check for shutdown and idle timeouts.
const POLL: Duration = Duration::from_millis(20);

/// How long a backend keeps an idle connection when no `idle_timeout` is set: longer than any
/// scenario, short enough that a leaked thread ends on its own.
const DEFAULT_IDLE: Duration = Duration::from_secs(120);

/// How a response body is produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// These bytes.
    Fixed(Vec<u8>),
    /// The request body, returned as is.
    Echo,
    /// `"<backend name> <method> <target>"`: lets a test check routing and ordering.
    Identify,
    /// `n` bytes of [`wire::pattern`]`(n, seed)` (check with [`crate::pattern`]).
    Pattern {
        /// Length in bytes.
        len: usize,
        /// Pattern seed.
        seed: u64,
    },
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    #[default]
    ContentLength,
    /// `Transfer-Encoding: chunked` with chunks of at most this many bytes.
    Chunked(usize),
    /// No length: the backend closes the connection after the body.
    CloseDelimited,
}

/// What the backend does after reading a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer with the configured body and framing (the normal keepalive responder).
    #[default]
    Respond,
    /// Answer a request carrying `Upgrade` with `101 Switching Protocols`, then echo every byte
    /// both ways until EOF; other requests get the normal response.
    Upgrade,
    /// Close right after reading a request, without answering.
    CloseWithoutAnswer,
    /// Answer with bytes that are not HTTP, then close.
    Garbage,
    /// Reset the connection (TCP RST: close with the request still unread) once a request
    /// arrives. On Unix sockets this is a plain close.
    Reset,
    /// Answer the first request of each connection normally, and close the connection (FIN,
    /// unanswered) when a second request arrives on it: the keepalive race, where the origin's
    /// idle close crosses the proxy's reuse of the connection.
    CloseReused,
    /// Answer the first request of each connection normally, and reset the connection when a
    /// second request arrives on it: a pooled connection that dies just as it is reused.
    ResetReused,
    /// Write exactly these bytes as the response, in one write (for malformed or unusual
    /// responses, or a response with more behind it), and keep reading the connection.
    Raw(Vec<u8>),
}

/// One request as the backend received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Index of the backend connection that carried it (0 = first accepted).
    pub conn: usize,
    /// Position of this request on its connection (0 = first).
    pub seq: usize,
    /// Method.
    pub method: String,
    /// Request target.
    pub target: String,
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// Header fields in order (values lossily decoded).
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// False when the connection ended (or broke framing) before the body was complete.
    pub complete: bool,
}

impl RecordedRequest {
    /// A request as httparse parsed it (its body, if any, is filled in later).
    fn parsed(conn: usize, seq: usize, r: &httparse::Request<'_, '_>, complete: bool) -> Self {
        RecordedRequest {
            conn,
            seq,
            method: r.method.unwrap_or_default().to_string(),
            target: r.path.unwrap_or_default().to_string(),
            version: r.version.unwrap_or(1),
            headers: crate::wire::owned_fields(r.headers),
            body: Vec::new(),
            complete,
        }
    }

    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::wire::header(&self.headers, name)
    }

    /// Every field named `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        crate::wire::headers_named(&self.headers, name)
    }
}

/// Configures and starts a [`Backend`].
#[derive(Clone, Debug)]
pub struct BackendBuilder {
    name: String,
    body: Body,
    framing: Framing,
    behaviour: Behaviour,
    idle_timeout: Option<Duration>,
    max_requests_per_conn: Option<usize>,
    delay: Option<Duration>,
    headers: Vec<(String, String)>,
    stray: Option<(Duration, Vec<u8>)>,
    bind: Bind,
    backlog: Option<i32>,
}

#[derive(Clone, Debug)]
enum Bind {
    V4,
    V6,
    Unix,
}

impl Default for BackendBuilder {
    fn default() -> Self {
        BackendBuilder {
            name: "backend".into(),
            body: Body::Identify,
            framing: Framing::ContentLength,
            behaviour: Behaviour::Respond,
            idle_timeout: None,
            max_requests_per_conn: None,
            delay: None,
            headers: Vec::new(),
            stray: None,
            bind: Bind::V4,
            backlog: None,
        }
    }
}

impl BackendBuilder {
    /// Name used in `Identify` bodies and the `X-Backend` response header.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Respond with these bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Fixed(body.into());
        self
    }
    /// Respond with the request body.
    pub fn echo(mut self) -> Self {
        self.body = Body::Echo;
        self
    }
    /// Respond with `"<name> <method> <target>"` (the default).
    pub fn identify(mut self) -> Self {
        self.body = Body::Identify;
        self
    }
    /// Respond with `len` bytes of [`crate::pattern`]`(len, seed)`.
    pub fn pattern_body(mut self, len: usize, seed: u64) -> Self {
        self.body = Body::Pattern { len, seed };
        self
    }
    /// Body framing (default Content-Length).
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
    /// Behaviour after reading a request (default: respond).
    pub fn behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }
    /// Answer upgrade requests with 101 and echo (shorthand for [`Behaviour::Upgrade`]).
    pub fn upgrade(self) -> Self {
        self.behaviour(Behaviour::Upgrade)
    }
    /// Close a keepalive connection idle for `d` (a backend whose keepalive timeout is shorter
    /// than the proxy's).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }
    /// Answer `n` requests per connection, the last with `Connection: close`, then close.
    pub fn max_requests_per_conn(mut self, n: usize) -> Self {
        self.max_requests_per_conn = Some(n.max(1));
        self
    }
    /// Wait `d` after reading a request before answering.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    /// After a connection has served a request and sat idle for `after`, write `bytes` on it
    /// and close it (what Node and others do: an unsolicited `408` on an idle keepalive
    /// connection). No request may ever receive these bytes as its response.
    pub fn stray_on_idle(mut self, after: Duration, bytes: impl Into<Vec<u8>>) -> Self {
        self.stray = Some((after, bytes.into()));
        self
    }
    /// Add a header field to every response.
    pub fn response_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Listen on `[::1]:0` instead of `127.0.0.1:0`.
    pub fn ipv6(mut self) -> Self {
        self.bind = Bind::V6;
        self
    }
    /// Listen on a Unix socket in a fresh temporary directory.
    pub fn unix(mut self) -> Self {
        self.bind = Bind::Unix;
        self
    }
    /// The listen backlog of a TCP backend (the system's default otherwise): a small one makes
    /// the kernel drop or stall connections, a large one takes a burst of connects at once.
    pub fn backlog(mut self, n: i32) -> Self {
        self.backlog = Some(n);
        self
    }

    /// Binds and starts accepting.
    pub fn start(self) -> io::Result<Backend> {
        let mut dir = None;
        let (listener, addr) = match self.bind {
            Bind::V4 | Bind::V6 => {
                let ip: std::net::IpAddr = match self.bind {
                    Bind::V6 => Ipv6Addr::LOCALHOST.into(),
                    _ => Ipv4Addr::LOCALHOST.into(),
                };
                let l = bind_tcp(SocketAddr::new(ip, 0), self.backlog)?;
                let a = l.local_addr()?;
                (Listener::Tcp(l), Address::Tcp(a))
            }
            Bind::Unix => {
                let d = TempDir::new()?;
                let addr = d.socket("backend.sock");
                let Address::Unix(path) = &addr else {
                    unreachable!()
                };
                let l = UnixListener::bind(path)?;
                dir = Some(d);
                (Listener::Unix(l), addr)
            }
        };
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            config: self,
            stop: Arc::new(AtomicBool::new(false)),
            accepted: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            idle_closed: AtomicUsize::new(0),
            written: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("testkit-backend-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(Backend {
            addr,
            shared,
            acceptor: Some(acceptor),
            _dir: dir,
        })
    }
}

/// A running loopback origin server; stops (and joins its threads, boundedly) on drop.
#[derive(Debug)]
pub struct Backend {
    addr: Address,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    _dir: Option<TempDir>,
}

#[derive(Debug)]
struct Shared {
    config: BackendBuilder,
    stop: Arc<AtomicBool>,
    accepted: AtomicUsize,
    requests: AtomicUsize,
    open: AtomicUsize,
    /// Connections this backend closed because they sat idle past `idle_timeout`.
    idle_closed: AtomicUsize,
    written: AtomicUsize,
    log: Mutex<Vec<RecordedRequest>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Backend {
    /// A builder with the defaults: `Identify` body, Content-Length, 127.0.0.1.
    pub fn builder() -> BackendBuilder {
        BackendBuilder::default()
    }

    /// Starts a default backend named `name`, answering `"<name> <method> <target>"`.
    pub fn identify(name: &str) -> io::Result<Backend> {
        Backend::builder().name(name).start()
    }

    /// Starts a default backend named `name` that waits `delay` before each answer (a request
    /// that stays in flight long enough for a test to drain, reload or give up meanwhile).
    pub fn slow(name: &str, delay: Duration) -> io::Result<Backend> {
        Backend::builder().name(name).delay(delay).start()
    }

    /// Where it listens.
    pub fn addr(&self) -> Address {
        self.addr.clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Request heads received so far (complete or not).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections currently open (accepted and not yet closed by either side).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections this backend closed itself because they sat idle past its `idle_timeout`
    /// (a proxy that honours `Keep-Alive: timeout` closes them first: this stays 0).
    pub fn idle_closed(&self) -> usize {
        self.shared.idle_closed.load(Ordering::SeqCst)
    }

    /// Response bytes (heads and bodies) the kernel has taken so far. A large body is written
    /// in pieces, so this shows how far it got when the peer stops reading (backpressure).
    pub fn bytes_written(&self) -> usize {
        self.shared.written.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn log(&self) -> Vec<RecordedRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Polls `cond` until it holds or `within` passes; returns whether it held. For counts that
    /// settle asynchronously (a connection the proxy closes after answering).
    pub fn wait_until(&self, within: Duration, mut cond: impl FnMut(&Backend) -> bool) -> bool {
        crate::eventually(within, || cond(self))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // Connection threads notice `stop` within POLL; a stuck one is detached after a bound.
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Binds a TCP listener with `backlog` (std's default when `None`).
fn bind_tcp(addr: SocketAddr, backlog: Option<i32>) -> io::Result<TcpListener> {
    let Some(backlog) = backlog else {
        return TcpListener::bind(addr);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// An address with nothing listening ("backend down"): binds 127.0.0.1:0, takes the port, and
/// closes the socket. Connecting to it is refused (the port may in principle be reused by
/// another test; loopback ephemeral ports make that very unlikely within a test's lifetime).
pub fn closed_port() -> Address {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let a = l.local_addr().expect("local_addr");
    drop(l);
    Address::Tcp(a)
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(on),
            Listener::Unix(l) => l.set_nonblocking(on),
        }
    }
    fn accept(&self) -> io::Result<Stream> {
        let s = match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Stream::Unix(s)
            }
        };
        Ok(s)
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok(stream) => {
                let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                let s = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("testkit-backend-conn-{index}"))
                    .spawn(move || {
                        let _ = serve(stream, index, &s);
                        s.open.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(t) => {
                        let mut threads = shared.threads.lock().unwrap();
                        threads.retain(|t| !t.is_finished());
                        threads.push(t);
                    }
                    Err(_) => {
                        shared.open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Err(e) if is_timeout(&e) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Serves one connection until EOF, error, idle timeout, a closing response or shutdown.
fn serve(stream: Stream, index: usize, shared: &Shared) -> io::Result<()> {
    let cfg = &shared.config;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let is_unix = matches!(stream, Stream::Unix(_));
    if cfg.behaviour == Behaviour::Reset && !is_unix {
        return reset_on_request(stream, index, 0, shared);
    }
    let mut reader = WireReader::with_patience(
        stream,
        Patience {
            limit: IO_TIMEOUT,
            stop: shared.stop.clone(),
        },
    );
    let idle_limit = cfg.idle_timeout.unwrap_or(DEFAULT_IDLE);
    let mut seq = 0;
    loop {
        // Idle: wait for the first byte of the next request.
        let idle_since = Instant::now();
        while reader.buffered().is_empty() {
            if shared.stop.load(Ordering::SeqCst) {
                return close(reader);
            }
            if idle_since.elapsed() >= idle_limit {
                shared.idle_closed.fetch_add(1, Ordering::SeqCst);
                return close(reader);
            }
            if let Some((after, bytes)) = &cfg.stray
                && seq > 0
                && idle_since.elapsed() >= *after
            {
                let _ = reader.stream().write_all(bytes);
                return close(reader);
            }
            if cfg.behaviour == Behaviour::ResetReused && seq > 0 && !is_unix {
                let mut probe = [0u8; 1];
                match reader.stream().peek(&mut probe) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        let stream = reader.into_stream();
                        return reset_on_request(stream, index, seq, shared);
                    }
                    Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            match reader.fill_once() {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut req = match read_request(&mut reader, index, seq) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Log what arrived even when it does not parse, so a test looking for a
                // smuggled request finds it here too.
                if !reader.buffered().is_empty() {
                    shared.requests.fetch_add(1, Ordering::SeqCst);
                    shared.log.lock().unwrap().push(RecordedRequest {
                        conn: index,
                        seq,
                        method: "<invalid>".into(),
                        target: String::from_utf8_lossy(reader.buffered()).into_owned(),
                        version: 1,
                        headers: Vec::new(),
                        body: Vec::new(),
                        complete: false,
                    });
                }
                return Err(e);
            }
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let body = read_request_body(&mut reader, &req);
        req.complete = body.is_ok();
        req.body = body.as_ref().cloned().unwrap_or_default();
        shared.log.lock().unwrap().push(req.clone());
        body?;
        seq += 1;

        match &cfg.behaviour {
            Behaviour::CloseWithoutAnswer | Behaviour::Reset => return close(reader),
            Behaviour::CloseReused if seq > 1 => return close(reader),
            Behaviour::Garbage => {
                let _ = reader
                    .stream()
                    .write_all(b"this is not HTTP at all\r\n\r\n\x00\x01\x02");
                return close(reader);
            }
            Behaviour::Upgrade if req.header("upgrade").is_some() => {
                return tunnel(reader, &req, shared);
            }
            Behaviour::Raw(bytes) => {
                // One write, as a backend that sends a response and more behind it in one go
                // does (the kernel may still split it; a Unix socket takes it whole).
                reader.stream().write_all(bytes)?;
                shared.written.fetch_add(bytes.len(), Ordering::SeqCst);
                continue;
            }
            _ => {}
        }
        if let Some(d) = cfg.delay {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if shared.stop.load(Ordering::SeqCst) {
                    return close(reader);
                }
                std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
            }
        }
        let last = cfg.max_requests_per_conn.is_some_and(|n| seq >= n)
            || cfg.framing == Framing::CloseDelimited
            || wants_close(&req);
        let (head, body) = build_response(cfg, &req, index, last);
        write_counted(reader.stream(), &head, shared)?;
        write_counted(reader.stream(), &body, shared)?;
        if last {
            return close(reader);
        }
    }
}

/// Writes `bytes` in pieces, adding each to the backend's `written` count as the kernel takes
/// it.
fn write_counted(stream: &mut Stream, bytes: &[u8], shared: &Shared) -> io::Result<()> {
    for piece in bytes.chunks(64 * 1024) {
        stream.write_all(piece)?;
        shared.written.fetch_add(piece.len(), Ordering::SeqCst);
    }
    Ok(())
}

fn close(mut reader: WireReader) -> io::Result<()> {
    let _ = reader.stream().shutdown(Shutdown::Write);
    Ok(())
}

/// Whether the request asks to close after this exchange (HTTP/1.0 without keep-alive, or
/// `Connection: close`).
fn wants_close(req: &RecordedRequest) -> bool {
    let tokens: Vec<String> = req
        .headers_named("connection")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    tokens.iter().any(|t| t == "close")
        || (req.version == 0 && !tokens.iter().any(|t| t == "keep-alive"))
}

/// Reads one request head. `Ok(None)` on EOF before any byte.
fn read_request(
    reader: &mut WireReader,
    conn: usize,
    seq: usize,
) -> io::Result<Option<RecordedRequest>> {
    let head = reader.read_head(|buf| {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(invalid(format!("backend: bad request head: {e}"))),
        }
    })?;
    let Some(head) = head else { return Ok(None) };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut headers);
    r.parse(&head).map_err(|e| invalid(e.to_string()))?;
    Ok(Some(RecordedRequest::parsed(conn, seq, &r, true)))
}

fn read_request_body(reader: &mut WireReader, req: &RecordedRequest) -> io::Result<Vec<u8>> {
    let te = req.headers_named("transfer-encoding");
    if !te.is_empty() {
        if te.len() == 1 && te[0].trim().eq_ignore_ascii_case("chunked") {
            return reader.read_chunked();
        }
        return Err(invalid("backend: unsupported transfer-encoding"));
    }
    match req.headers_named("content-length").as_slice() {
        [] => Ok(Vec::new()),
        [v] => {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| invalid("backend: bad content-length"))?;
            reader.read_exact_bytes(n)
        }
        _ => Err(invalid("backend: several content-length fields")),
    }
}

/// The response head and the (framed) body, apart: a large body is not copied behind its head.
fn build_response(
    cfg: &BackendBuilder,
    req: &RecordedRequest,
    conn: usize,
    last: bool,
) -> (Vec<u8>, Vec<u8>) {
    let seq = req.seq;
    let body = match &cfg.body {
        Body::Fixed(b) => b.clone(),
        Body::Echo => req.body.clone(),
        Body::Identify => format!("{} {} {}", cfg.name, req.method, req.target).into_bytes(),
        Body::Pattern { len, seed } => wire::pattern(*len, *seed),
    };
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nX-Backend: {}\r\nX-Backend-Conn: {conn}\r\nX-Backend-Seq: {seq}\r\n",
        cfg.name
    );
    for (n, v) in &cfg.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let is_head = req.method.eq_ignore_ascii_case("HEAD");
    match cfg.framing {
        Framing::ContentLength => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
        Framing::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::CloseDelimited => {}
    }
    if last && cfg.framing != Framing::CloseDelimited {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let body = match cfg.framing {
        _ if is_head => Vec::new(),
        Framing::Chunked(size) => wire::chunk_encode(&body, size),
        _ => body,
    };
    (head.into_bytes(), body)
}

/// 101, then echo bytes until either side closes.
fn tunnel(mut reader: WireReader, req: &RecordedRequest, shared: &Shared) -> io::Result<()> {
    let upgrade = req.header("upgrade").unwrap_or("websocket").to_string();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\r\n"
    );
    reader.stream().write_all(head.as_bytes())?;
    let idle_since = Instant::now();
    loop {
        let pending = reader.take_buffered();
        if !pending.is_empty() {
            reader.stream().write_all(&pending)?;
        }
        if shared.stop.load(Ordering::SeqCst) || idle_since.elapsed() > DEFAULT_IDLE {
            return close(reader);
        }
        match reader.fill_once() {
            Ok(0) => return close(reader),
            Ok(_) => {}
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits for a request to arrive without consuming it, logs its head if it parses, then closes
/// with the bytes unread: the kernel answers with RST instead of FIN.
fn reset_on_request(stream: Stream, index: usize, seq: usize, shared: &Shared) -> io::Result<()> {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) || start.elapsed() > DEFAULT_IDLE {
            return Ok(());
        }
        match stream.peek(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut r = httparse::Request::new(&mut headers);
                if let Ok(httparse::Status::Complete(_)) = r.parse(&buf[..n]) {
                    shared.requests.fetch_add(1, Ordering::SeqCst);
                    let recorded = RecordedRequest::parsed(index, seq, &r, false);
                    shared.log.lock().unwrap().push(recorded);
                    drop(stream);
                    return Ok(());
                }
                // Partial head: wait for more without spinning.
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
