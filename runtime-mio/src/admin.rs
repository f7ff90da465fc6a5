//! The admin listener: `GET /metrics` (Prometheus text 0.0.4), `GET /status` (nginx
//! `stub_status`), `GET /ready` (503 while draining). Served by its own thread and its own small
//! mio loop, one short request per connection, so it never touches the request path; counters
//! come from the workers as snapshots over their command channels.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Events, Poll, Token, Waker};
use upkeep_core::Address;

use crate::net::{Bound, Listener, Stream};
use crate::worker::Board;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Per-connection read and write timeout: a stuck scraper cannot hold the admin thread long.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head we read.
const MAX_HEAD: usize = 8192;

/// A running admin listener.
#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) addr: Address,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    pub(crate) fn start(
        addr: &Address,
        board: Arc<Mutex<Board>>,
        draining: Arc<AtomicBool>,
    ) -> io::Result<Admin> {
        let mut bound = Bound::bind(addr)?;
        let addr = bound.address();
        let mut listener = bound.for_worker()?;
        let mut poll = Poll::new()?;
        listener.register(poll.registry(), LISTENER)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("upkeep-admin".into())
            .spawn(move || {
                let _keep = bound;
                let mut events = Events::with_capacity(16);
                while !stop2.load(Ordering::Acquire) {
                    if let Err(e) = poll.poll(&mut events, None)
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        log::error!("admin: poll failed: {e}");
                        return;
                    }
                    accept_all(&listener, &board, &draining);
                }
            })?;
        Ok(Admin {
            addr,
            waker,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and removes a Unix socket file.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Address::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_all(listener: &Listener, board: &Mutex<Board>, draining: &AtomicBool) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve(stream, board, draining) {
                    log::debug!("admin: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("admin: accept: {e}");
                return;
            }
        }
    }
}

fn serve(mut stream: Stream, board: &Mutex<Board>, draining: &AtomicBool) -> io::Result<()> {
    stream.make_blocking(IO_TIMEOUT)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            break;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            crate::collect(board).prometheus(),
        ),
        ("GET" | "HEAD", "/status") => {
            ("200 OK", "text/plain", crate::collect(board).stub_status())
        }
        ("GET" | "HEAD", "/ready") => {
            if draining.load(Ordering::Acquire) {
                ("503 Service Unavailable", "text/plain", "draining\n".into())
            } else {
                ("200 OK", "text/plain", "ready\n".into())
            }
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out)
}
