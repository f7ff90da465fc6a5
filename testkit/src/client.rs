//! Raw HTTP/1.1 clients over TCP or Unix sockets: the tests write exact bytes (including
//! malformed ones) and parse what comes back with httparse, following the response framing rules
//! (Content-Length, chunked, close-delimited, HEAD, 204/304, interim 1xx). Every socket has
//! [`IO_TIMEOUT`](crate::wire::IO_TIMEOUT) read and write timeouts.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use upkeep_core::Address;

use crate::backend::Backend;
use crate::wire::{Stream, WireReader, invalid, is_timeout};

/// A parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Minor version of the status line (1 for HTTP/1.1).
    pub version: u8,
    /// Status code.
    pub status: u16,
    /// Header fields in order (values lossily decoded).
    pub headers: Vec<(String, String)>,
    /// The decoded body (de-chunked).
    pub body: Vec<u8>,
    /// Statuses of interim (1xx other than 101) responses that preceded this one.
    pub interim: Vec<u16>,
    /// The body was delimited by the connection closing.
    pub close_delimited: bool,
}

impl Response {
    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::wire::header(&self.headers, name)
    }

    /// Every field named `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        crate::wire::headers_named(&self.headers, name)
    }

    /// Whether a `Connection` field lists `token` (case-insensitive).
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers_named("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body as (lossy) text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET <target> HTTP/1.1` with `Host: test`.
pub fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// `GET <target> HTTP/1.1` with `Host: test` and `Connection: close`.
pub fn get_close(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `POST <target> HTTP/1.1` with a Content-Length body.
pub fn post(target: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// One client connection.
#[derive(Debug)]
pub struct Client {
    reader: WireReader,
}

impl Client {
    /// Connects to `addr` (TCP or Unix).
    pub fn connect(addr: &Address) -> io::Result<Client> {
        Ok(Client {
            reader: WireReader::new(Stream::connect(addr)?),
        })
    }

    /// Connects to `addr` with TLS, asking for `sni` (see [`crate::tls::connect`]).
    pub fn connect_tls(
        addr: &Address,
        sni: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> io::Result<Client> {
        let (stream, _) = crate::tls::connect(addr, sni, config)?;
        Ok(Client {
            reader: WireReader::new(Stream::Tls(Box::new(stream))),
        })
    }

    /// Writes `bytes` entirely.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.stream().write_all(bytes)
    }

    /// Reads one response to a request with method `GET` (a body is read per framing).
    pub fn read_response(&mut self) -> io::Result<Response> {
        self.read_response_for("GET")
    }

    /// Reads one response to a request with `method` (`HEAD` responses have no body).
    pub fn read_response_for(&mut self, method: &str) -> io::Result<Response> {
        let mut interim = Vec::new();
        loop {
            let head = self.reader.read_head(|buf| {
                let mut headers = [httparse::EMPTY_HEADER; 128];
                let mut r = httparse::Response::new(&mut headers);
                match r.parse(buf) {
                    Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
                    Ok(httparse::Status::Partial) => Ok(None),
                    Err(e) => Err(invalid(format!(
                        "bad response head ({e}): {:?}",
                        String::from_utf8_lossy(&buf[..buf.len().min(200)])
                    ))),
                }
            })?;
            let Some(head) = head else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            };
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut headers);
            r.parse(&head).map_err(|e| invalid(e.to_string()))?;
            let status = r.code.unwrap_or(0);
            let mut resp = Response {
                version: r.version.unwrap_or(1),
                status,
                headers: crate::wire::owned_fields(r.headers),
                body: Vec::new(),
                interim: Vec::new(),
                close_delimited: false,
            };
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            resp.interim = interim;
            let no_body = method.eq_ignore_ascii_case("HEAD")
                || status == 101
                || status == 204
                || status == 304;
            if no_body {
                return Ok(resp);
            }
            let te = resp.headers_named("transfer-encoding");
            if !te.is_empty() {
                if te.len() == 1 && te[0].trim().eq_ignore_ascii_case("chunked") {
                    resp.body = self.reader.read_chunked()?;
                    return Ok(resp);
                }
                return Err(invalid(format!("unexpected transfer-encoding {te:?}")));
            }
            match resp.headers_named("content-length").as_slice() {
                [] => {
                    resp.body = self.reader.read_to_eof()?;
                    resp.close_delimited = true;
                }
                [v] => {
                    let n: usize = v
                        .trim()
                        .parse()
                        .map_err(|_| invalid(format!("bad content-length {v:?}")))?;
                    resp.body = self.reader.read_exact_bytes(n)?;
                }
                many => return Err(invalid(format!("several content-length fields {many:?}"))),
            }
            return Ok(resp);
        }
    }

    /// Sends one request and reads its response (method taken from the request line).
    pub fn request(&mut self, raw: &[u8]) -> io::Result<Response> {
        self.send(raw)?;
        let method = raw.split(|&b| b == b' ').next().unwrap_or(b"GET");
        self.read_response_for(&String::from_utf8_lossy(method))
    }

    /// `GET <target>` with `Host: test` on this connection.
    pub fn get(&mut self, target: &str) -> io::Result<Response> {
        self.request(&get(target))
    }

    /// `GET <target>` on this connection: (status, body as text). Panics on any I/O error.
    pub fn get_text(&mut self, target: &str) -> (u16, String) {
        let r = self
            .get(target)
            .unwrap_or_else(|e| panic!("GET {target}: {e}"));
        (r.status, r.text())
    }

    /// Writes every request in one write, then reads one response per request, in order.
    pub fn pipeline(&mut self, requests: &[Vec<u8>]) -> io::Result<Vec<Response>> {
        let all: Vec<u8> = requests.concat();
        self.send(&all)?;
        requests
            .iter()
            .map(|r| {
                let method = r.split(|&b| b == b' ').next().unwrap_or(b"GET");
                self.read_response_for(&String::from_utf8_lossy(method))
            })
            .collect()
    }

    /// Reads whatever bytes arrive next (at least one, waiting up to the socket timeout);
    /// `Ok(empty)` on EOF. For tunnels.
    pub fn read_some(&mut self) -> io::Result<Vec<u8>> {
        if self.reader.buffered().is_empty() && self.reader.fill_once()? == 0 {
            return Ok(Vec::new());
        }
        Ok(self.reader.take_buffered())
    }

    /// Reads exactly `n` raw bytes (for tunnels).
    pub fn read_exact_raw(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.reader.read_exact_bytes(n)
    }

    /// Half-closes the write side.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.reader.stream().shutdown(Shutdown::Write)
    }

    /// Waits up to `within` for the peer to close: true on EOF or a reset. Bytes that arrive
    /// meanwhile (an error response, say) are discarded and waiting continues.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        let _ = self.reader.take_buffered();
        let _ = self
            .reader
            .stream()
            .set_read_timeout(Some(Duration::from_millis(50)));
        let closed = loop {
            if start.elapsed() >= within {
                break false;
            }
            let mut buf = [0u8; 4096];
            match self.reader.stream().read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let _ = self
            .reader
            .stream()
            .set_read_timeout(Some(crate::wire::IO_TIMEOUT));
        closed
    }

    /// Reads until the peer closes and returns what arrived first (nothing, after a complete
    /// exchange on a connection the peer then closes). A reset counts as a close; a read timeout
    /// is an error: a connection left open is not a closed one.
    pub fn read_until_closed(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.reader.fill_once() {
                Ok(0) => return Ok(self.reader.take_buffered()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(e),
                Err(_) => return Ok(self.reader.take_buffered()),
            }
        }
    }

    /// The underlying stream (to change timeouts, for example).
    pub fn stream(&mut self) -> &mut Stream {
        self.reader.stream()
    }
}

/// Connects, sends one request, reads its response.
pub fn one_shot(addr: &Address, raw: &[u8]) -> io::Result<Response> {
    Client::connect(addr)?.request(raw)
}

/// Sends `n` requests made by `make(i)` on one keepalive connection, one at a time.
pub fn keepalive_requests(
    addr: &Address,
    n: usize,
    mut make: impl FnMut(usize) -> Vec<u8>,
) -> io::Result<Vec<Response>> {
    let mut c = Client::connect(addr)?;
    (0..n).map(|i| c.request(&make(i))).collect()
}

/// `GET <target>` on a fresh connection: (status, body as text). Panics on any I/O error.
pub fn get_text(addr: &Address, target: &str) -> (u16, String) {
    let r = one_shot(addr, &get(target)).unwrap_or_else(|e| panic!("GET {target} via {addr}: {e}"));
    (r.status, r.text())
}

/// The value of the sample `sample` (`name{labels}`, exactly as printed) in a Prometheus text
/// page; panics, showing the page, when it is missing.
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{sample} missing in:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{sample}: {e}"))
}

/// Connects to `addr`, sends `GET <target>` and waits until `backend` has read one more request
/// (panics after 10 s): a request in flight, for a test that drains, reloads or stops meanwhile.
/// Read its response with [`Client::read_response`].
pub fn in_flight(addr: &Address, target: &str, backend: &Backend) -> Client {
    let before = backend.requests();
    let mut c = Client::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    c.send(&get(target)).unwrap();
    assert!(
        backend.wait_until(crate::wire::IO_TIMEOUT, |b| b.requests() > before),
        "GET {target} never reached the backend"
    );
    c
}
