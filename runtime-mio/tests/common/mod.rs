//! A minimal loopback backend and client for this crate's runtime-specific tests (the shared
//! scenario suite lives in upkeep-testkit).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use upkeep_core::{Address, Config};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

/// A keep-alive HTTP/1.1 backend answering every request with its `name` as the body, after an
/// optional delay; counts accepted connections and requests.
pub struct Backend {
    pub addr: Address,
    pub accepted: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

trait Conn: Read + Write + Send + 'static {
    fn timeouts(&self);
}
impl Conn for TcpStream {
    fn timeouts(&self) {
        self.set_read_timeout(Some(TIMEOUT)).unwrap();
        self.set_write_timeout(Some(TIMEOUT)).unwrap();
    }
}
impl Conn for UnixStream {
    fn timeouts(&self) {
        self.set_read_timeout(Some(TIMEOUT)).unwrap();
        self.set_write_timeout(Some(TIMEOUT)).unwrap();
    }
}

impl Backend {
    pub fn tcp(name: &str) -> Backend {
        Backend::tcp_slow(name, Duration::ZERO)
    }

    pub fn tcp_slow(name: &str, delay: Duration) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        Backend::run(Address::Tcp(a), name, delay, move || {
            l.accept()
                .ok()
                .map(|(s, _)| Box::new(s) as Box<dyn ConnBox>)
        })
    }

    pub fn unix(name: &str, path: &str) -> Backend {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap();
        Backend::run(
            Address::Unix(path.into()),
            name,
            Duration::ZERO,
            move || {
                l.accept()
                    .ok()
                    .map(|(s, _)| Box::new(s) as Box<dyn ConnBox>)
            },
        )
    }

    fn run(
        addr: Address,
        name: &str,
        delay: Duration,
        accept: impl FnMut() -> Option<Box<dyn ConnBox>> + Send + 'static,
    ) -> Backend {
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, req, st, body) = (
            accepted.clone(),
            requests.clone(),
            stop.clone(),
            name.to_string(),
        );
        let mut accept = accept;
        let thread = thread::spawn(move || {
            while let Some(conn) = accept() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                acc.fetch_add(1, Ordering::SeqCst);
                let (req, body) = (req.clone(), body.clone());
                thread::spawn(move || serve(conn, &body, delay, &req));
            }
        });
        Backend {
            addr,
            accepted,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        match &self.addr {
            Address::Tcp(a) => drop(TcpStream::connect_timeout(a, TIMEOUT)),
            Address::Unix(p) => {
                drop(UnixStream::connect(p));
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub trait ConnBox: Read + Write + Send {
    fn set_timeouts(&self);
    fn try_clone_box(&self) -> Box<dyn ConnBox>;
}
impl<T: Conn + TryCloneConn> ConnBox for T {
    fn set_timeouts(&self) {
        self.timeouts()
    }
    fn try_clone_box(&self) -> Box<dyn ConnBox> {
        self.clone_conn()
    }
}
pub trait TryCloneConn {
    fn clone_conn(&self) -> Box<dyn ConnBox>;
}
impl TryCloneConn for TcpStream {
    fn clone_conn(&self) -> Box<dyn ConnBox> {
        Box::new(self.try_clone().unwrap())
    }
}
impl TryCloneConn for UnixStream {
    fn clone_conn(&self) -> Box<dyn ConnBox> {
        Box::new(self.try_clone().unwrap())
    }
}

fn serve(conn: Box<dyn ConnBox>, body: &str, delay: Duration, requests: &AtomicUsize) {
    conn.set_timeouts();
    let mut writer = conn.try_clone_box();
    let mut reader = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut discard = vec![0; len];
        if reader.read_exact(&mut discard).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A client connection with timeouts.
pub fn connect(a: &Address) -> Box<dyn ConnBox> {
    let c: Box<dyn ConnBox> = match a {
        Address::Tcp(sa) => {
            let s = TcpStream::connect_timeout(sa, TIMEOUT).unwrap();
            s.set_nodelay(true).unwrap();
            Box::new(s)
        }
        Address::Unix(p) => Box::new(UnixStream::connect(p).unwrap()),
    };
    c.set_timeouts();
    c
}

/// Sends a GET for `path` and reads one Content-Length response: (status, body).
pub fn get(conn: &mut dyn ConnBox, path: &str) -> (u16, String) {
    // One write: `write!` on a socket would send each formatted piece as its own segment.
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    read_response(conn)
}

pub fn read_response(conn: &mut dyn ConnBox) -> (u16, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut b).expect("reading response head");
        assert!(
            n == 1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let lower = l.to_ascii_lowercase();
            lower
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// One request on a fresh connection.
pub fn get_once(a: &Address, path: &str) -> (u16, String) {
    let mut c = connect(a);
    get(&mut *c, path)
}

/// A config in front of `backends`, `workers` workers, listening on an ephemeral loopback port.
pub fn config(backends: &[&Backend], workers: usize) -> Config {
    let mut c = Config::simple(
        addr("127.0.0.1:0"),
        backends.iter().map(|b| b.addr.clone()).collect(),
    );
    c.runtime.workers = workers;
    c
}

/// A unique temporary path for a Unix socket or file.
pub fn temp_path(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}/upkeep-mio-test-{}-{}-{name}",
        std::env::temp_dir().display(),
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn tcp_addr(a: &Address) -> SocketAddr {
    match a {
        Address::Tcp(sa) => *sa,
        Address::Unix(_) => panic!("not tcp"),
    }
}
