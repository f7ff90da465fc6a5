//! A backend that serves one connection at a time, like a non-threaded Python `HTTPServer` or
//! nginx + mod_wsgi with one process (seed 000): it accepts a connection, answers every request
//! on it (HTTP/1.1 keep-alive, `delay` per request), and only when that connection closes does
//! it accept the next. A second connection opened meanwhile waits in the listen backlog, its
//! requests unanswered — the failure a proxy must avoid.
//!
//! While it serves a connection it also looks (non-blocking) for a second one waiting in the
//! backlog and counts it: [`SerialBackend::overlaps`] is how many times a proxy opened a
//! connection while another was open. It serves that one afterwards, as the real server would.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use upkeep_core::Address;

/// How often the serving thread looks for a second connection and for shutdown.
const POLL: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicUsize,
    requests: AtomicUsize,
    overlaps: AtomicUsize,
    stop: AtomicBool,
}

/// The one-connection-at-a-time backend (see the module docs).
#[derive(Debug)]
pub struct SerialBackend {
    addr: Address,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl SerialBackend {
    /// Starts it on 127.0.0.1 (a free port), answering each request after `delay` with
    /// `200 OK` and the request's target as the body.
    pub fn start(delay: Duration) -> io::Result<SerialBackend> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = Address::Tcp(listener.local_addr()?);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("serial-backend".into())
            .spawn(move || serve(listener, delay, &c))?;
        Ok(SerialBackend {
            addr,
            counters,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> Address {
        self.addr.clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Requests answered (or being answered) so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Times a connection was found waiting while another was open.
    pub fn overlaps(&self) -> usize {
        self.counters.overlaps.load(Ordering::SeqCst)
    }
}

impl Drop for SerialBackend {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, delay: Duration, c: &Counters) {
    let mut waiting: Vec<TcpStream> = Vec::new();
    while !c.stop.load(Ordering::SeqCst) {
        let next = if waiting.is_empty() {
            match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(POLL);
                    continue;
                }
            }
        } else {
            waiting.remove(0)
        };
        c.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = serve_one(next, &listener, delay, c, &mut waiting);
    }
}

/// Answers the requests of one connection until it closes.
fn serve_one(
    mut s: TcpStream,
    listener: &TcpListener,
    delay: Duration,
    c: &Counters,
    waiting: &mut Vec<TcpStream>,
) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(POLL))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if c.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        // A second connection while this one is open: count it, serve it later. One that
        // arrived after this one's FIN (not read yet) is no overlap: the proxy had closed it.
        if let Ok((other, _)) = listener.accept() {
            if !closed_by_peer(&s) {
                c.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            waiting.push(other);
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                buf.drain(..end + 4 + len);
                std::thread::sleep(delay);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{target}",
                    target.len()
                );
                // Counted before the answer leaves: a client that has read it may check the
                // count at once (counting after the write raced with it).
                c.requests.fetch_add(1, Ordering::SeqCst);
                s.write_all(resp.as_bytes())?;
                continue;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether the peer's FIN is already waiting on `s` (after whatever bytes are unread): a
/// non-blocking peek that finds the end of the stream.
fn closed_by_peer(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    let eof = s.set_nonblocking(true).is_ok() && matches!(s.peek(&mut probe), Ok(0));
    let _ = s.set_nonblocking(false);
    eof
}
