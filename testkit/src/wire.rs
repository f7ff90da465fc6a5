//! Byte-level plumbing shared by the backends and the clients: one stream type over TCP and Unix
//! sockets, a buffered reader that understands HTTP/1.1 message framing, and the deterministic
//! byte pattern used to check large bodies byte for byte.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use upkeep_core::Address;

/// The longest any single socket operation of the testkit may block: every scenario stays
/// bounded even when the proxy under test misbehaves.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message head either side accepts (a proxy bug that streams garbage must not make a
/// test allocate without bound).
const MAX_HEAD: usize = 256 * 1024;

/// A connected socket: TCP or Unix domain.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain socket connection.
    Unix(UnixStream),
    /// A TLS client connection over TCP ([`crate::tls::connect`]).
    Tls(Box<crate::tls::TlsStream>),
}

impl Stream {
    /// Connects to `addr` with [`IO_TIMEOUT`] as connect, read and write timeout.
    pub fn connect(addr: &Address) -> io::Result<Stream> {
        if let Some(config) = crate::over_tls::client_config_for(addr) {
            let (s, _) = crate::tls::connect(addr, crate::over_tls::SNI, config)?;
            s.sock.set_nodelay(true)?;
            return Ok(Stream::Tls(Box::new(s)));
        }
        let stream = match addr {
            Address::Tcp(sa) => {
                let s = TcpStream::connect_timeout(sa, IO_TIMEOUT)?;
                // Small requests must not wait for Nagle behind a delayed ACK.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
        };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// Sets the read timeout (`None` is refused by callers in this crate: nothing blocks forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.sock.set_read_timeout(t),
        }
    }

    /// Sets the write timeout.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tls(s) => s.sock.set_write_timeout(t),
        }
    }

    /// Half- or fully closes the connection.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
            // A TLS half-close would be close_notify, which needs `&mut`: the TCP shutdown
            // alone is what the peer sees as EOF anyway.
            Stream::Tls(s) => s.sock.shutdown(how),
        }
    }

    /// Another handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tls(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a TLS stream has one owner",
                ));
            }
        })
    }

    /// Reads without consuming (used to close with unread data, which makes TCP send a RST).
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.peek(buf),
            // Unix sockets have no std peek; a plain read serves the callers in this crate (who
            // only need to know that bytes arrived).
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tls(s) => s.sock.peek(buf),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            // A FIN without close_notify reads as the end of the stream, as on TCP.
            Stream::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => {
                let n = s.write(buf)?;
                s.flush()?;
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket address of a TCP address; panics on a Unix one (a test that needs a port).
pub fn tcp_addr(addr: &Address) -> std::net::SocketAddr {
    match addr {
        Address::Tcp(sa) => *sa,
        Address::Unix(p) => panic!("not a TCP address: unix:{p}"),
    }
}

/// True for the error kinds a socket read timeout produces.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What a patient reader does when a short socket timeout fires: the backends poll with short
/// timeouts so they notice shutdown, but still wait up to `patience` for a peer in mid-message.
#[derive(Clone, Debug)]
pub(crate) struct Patience {
    pub(crate) limit: Duration,
    pub(crate) stop: Arc<AtomicBool>,
}

/// A buffered reader over a [`Stream`] with HTTP/1.1 framing helpers. Bytes read past the end of
/// one message stay buffered for the next (pipelining, tunnels).
#[derive(Debug)]
pub struct WireReader {
    stream: Stream,
    buf: Vec<u8>,
    patience: Option<Patience>,
}

/// An error for a peer that broke the protocol.
pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl WireReader {
    /// Wraps a stream; timeouts come from the stream itself.
    pub fn new(stream: Stream) -> WireReader {
        WireReader {
            stream,
            buf: Vec::new(),
            patience: None,
        }
    }

    pub(crate) fn with_patience(stream: Stream, patience: Patience) -> WireReader {
        WireReader {
            stream,
            buf: Vec::new(),
            patience: Some(patience),
        }
    }

    /// The underlying stream (for writing).
    pub fn stream(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// The stream back (bytes buffered but not consumed are dropped).
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes received but not consumed yet.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// One read call; appends to the buffer. `Ok(0)` is EOF. Timeouts are returned as errors.
    pub fn fill_once(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads more bytes, retrying short timeouts while patient; EOF is an `UnexpectedEof` error.
    fn fill(&mut self) -> io::Result<()> {
        let start = Instant::now();
        loop {
            match self.fill_once() {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed mid-message",
                    ));
                }
                Ok(_) => return Ok(()),
                Err(e) if is_timeout(&e) => match &self.patience {
                    Some(p) if start.elapsed() < p.limit && !p.stop.load(Ordering::Relaxed) => {}
                    _ => return Err(e),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a message head and parses it with `parse`, which returns `Ok(Some(len))` when the
    /// head is complete (its length in bytes) and `Ok(None)` while partial. Returns the head
    /// bytes; `Ok(None)` on a clean EOF before any byte.
    pub(crate) fn read_head(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<Vec<u8>>> {
        loop {
            if !self.buf.is_empty()
                && let Some(len) = parse(&self.buf)?
            {
                let rest = self.buf.split_off(len);
                return Ok(Some(std::mem::replace(&mut self.buf, rest)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("message head too large"));
            }
            match self.fill() {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.buf.is_empty() => {
                    return Ok(None);
                }
                r => r?,
            }
        }
    }

    /// Reads exactly `n` body bytes.
    pub fn read_exact_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            self.fill()?;
        }
    }

    /// Reads and decodes a chunked body (strictly: hex sizes, optional extensions, CRLF after
    /// every chunk), discarding trailers.
    pub fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size_text = std::str::from_utf8(size_part).map_err(|_| invalid("chunk size"))?;
            if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!("bad chunk size {size_text:?}")));
            }
            let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("chunk size"))?;
            if size == 0 {
                // Trailers until the empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            body.extend_from_slice(&self.read_exact_bytes(size)?);
            if !self.read_exact_bytes(2)?.eq(b"\r\n") {
                return Err(invalid("missing CRLF after chunk data"));
            }
        }
    }

    /// Reads until the peer closes (a close-delimited body).
    pub fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(std::mem::take(&mut self.buf));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Encodes `body` as chunks of at most `chunk` bytes plus the last-chunk.
pub fn chunk_encode(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk.max(1) * 8 + 8);
    for piece in body.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `n` deterministic pseudo-random bytes (xorshift64* seeded by `seed`): large bodies that a
/// test can regenerate and compare byte for byte, and that no framing bug reproduces by chance.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A fresh directory under the system temp dir for Unix sockets, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/upkeep-testkit-<pid>-<n>/`.
    pub fn new() -> io::Result<TempDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("upkeep-testkit-{}-{n}", std::process::id()));
        // A leftover from a crashed run with the same pid is stale: start clean.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A `unix:` address for `name` inside the directory.
    pub fn socket(&self, name: &str) -> Address {
        Address::Unix(self.path.join(name).to_string_lossy().into_owned())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The first field named `name` (ASCII case-insensitive) of a parsed head's fields.
pub fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every field named `name` (ASCII case-insensitive), in order.
pub fn headers_named<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// httparse's fields as owned `(name, value)` pairs (values decoded lossily).
pub fn owned_fields(fields: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_varied() {
        assert_eq!(pattern(1000, 7), pattern(1000, 7));
        assert_ne!(pattern(1000, 7), pattern(1000, 8));
        let p = pattern(4096, 1);
        assert_eq!(p.len(), 4096);
        let distinct = p.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 200, "{distinct} distinct byte values");
    }

    #[test]
    fn chunk_encoding_shape() {
        assert_eq!(
            chunk_encode(b"hello", 2),
            b"2\r\nhe\r\n2\r\nll\r\n1\r\no\r\n0\r\n\r\n"
        );
        assert_eq!(chunk_encode(b"", 2), b"0\r\n\r\n");
    }
}
