//! Memory per idle connection of an `upkeep` process (issue 14, item 4), on loopback:
//!
//! ```text
//! idle_memory UPKEEP_BIN [CLIENTS [POOLED]]      # defaults: 9900 clients, 2000 pooled
//! ```
//!
//! Starts its own origin (a thread per connection, 100-byte responses) and two `upkeep run`
//! processes in turn, one worker each, and reads their resident memory (`VmRSS`,
//! `/proc/PID/status`) at each step:
//!
//! 1. *clients*: after a warm-up (`start`), CLIENTS client connections open and idle (`connected`),
//!    then one request each and idle again (`after one request`), then all closed (`closed`);
//! 2. *pooled*: POOLED concurrent requests that the origin holds until all have arrived, so the
//!    proxy opens POOLED upstream connections; the clients close and those connections idle in
//!    the pool (`pooled`); then the origin closes them (`closed`).
//!
//! Each step waits until the proxy's descriptor count says it has seen the change (bounded) and
//! the RSS stops moving. Prints a markdown table. Every wait is bounded; the processes it starts
//! are killed by their handle; all traffic stays on 127.0.0.1.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET /small HTTP/1.1\r\nHost: origin\r\nUser-Agent: idle_memory\r\n\r\n";
const BODY: [u8; 100] = [b'x'; 100];
/// Longest any step waits for the proxy.
const PATIENCE: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(bin) = args.first().map(PathBuf::from) else {
        eprintln!("usage: idle_memory UPKEEP_BIN [CLIENTS [POOLED]]");
        return ExitCode::from(2);
    };
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (clients, pooled) = (num(1, 9900), num(2, 2000));
    match run(&bin, clients, pooled) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("idle_memory: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(bin: &Path, clients: usize, pooled: usize) -> io::Result<String> {
    let origin = Origin::start()?;
    let mut out = String::from(
        "| step | connections | VmRSS KiB | vs start | per connection | RssAnon KiB | vs start |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );

    // 1. Idle clients (the pool needs one connection: keepalive = 1 leaves the most
    //    descriptors for clients under the proxy's RLIMIT_NOFILE fit).
    let mut proxy = Proxy::start(bin, origin.port, 1, clients + 16)?;
    proxy.warm_up()?;
    let start = proxy.settled_rss()?;
    let base_fds = proxy.fds()?;
    row(&mut out, "clients: start", 0, start, start);
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(TcpStream::connect(("127.0.0.1", proxy.port))?);
    }
    proxy.wait_fds(|n| n >= base_fds + clients)?;
    let connected = proxy.settled_rss()?;
    row(
        &mut out,
        "clients: connected, no request yet",
        clients,
        connected,
        start,
    );
    for (i, c) in conns.iter_mut().enumerate() {
        exchange(c).map_err(|e| io::Error::other(format!("client {i}: {e}")))?;
    }
    let used = proxy.settled_rss()?;
    row(
        &mut out,
        "clients: idle after one request each",
        clients,
        used,
        start,
    );
    drop(conns);
    proxy.wait_fds(|n| n <= base_fds)?;
    let closed = proxy.settled_rss()?;
    row(&mut out, "clients: all closed", 0, closed, start);
    proxy.stop();

    // 2. Idle pooled upstream connections.
    let mut proxy = Proxy::start(bin, origin.port, pooled + 16, pooled + 16)?;
    proxy.warm_up()?;
    let start = proxy.settled_rss()?;
    let base_fds = proxy.fds()?;
    row(&mut out, "pooled: start", 0, start, start);
    origin.hold_until(origin.requests() + pooled);
    let mut conns = Vec::with_capacity(pooled);
    for _ in 0..pooled {
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port))?;
        c.write_all(REQUEST)?;
        conns.push(c);
    }
    for c in &mut conns {
        read_response(c)?;
    }
    drop(conns);
    // The clients gone, the upstream connections idle in the pool.
    proxy.wait_fds(|n| n >= base_fds + pooled - 1 && n <= base_fds + pooled + 1)?;
    let idle = proxy.settled_rss()?;
    row(
        &mut out,
        "pooled: idle in the pool, clients closed",
        pooled,
        idle,
        start,
    );
    origin.close_all();
    proxy.wait_fds(|n| n < base_fds)?;
    let closed = proxy.settled_rss()?;
    row(&mut out, "pooled: closed by the origin", 0, closed, start);
    if let Some(secs) = std::env::var("PAUSE_AT_END")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // For a look inside the settled proxy (e.g. gdb's `call malloc_info(0, stderr)`).
        eprintln!("upkeep pid {} paused for {secs} s", proxy.child.id());
        thread::sleep(Duration::from_secs(secs));
    }
    proxy.stop();
    Ok(out)
}

fn row(out: &mut String, step: &str, conns: usize, m: Mem, start: Mem) {
    eprintln!(
        "idle_memory: {step}: {} KiB (anonymous {} KiB)",
        m.rss, m.anon
    );
    let delta = m.rss as i64 - start.rss as i64;
    let per = if conns > 0 {
        format!("{:.2} KiB", delta as f64 / conns as f64)
    } else {
        "".into()
    };
    let vs = |now: u64, start: u64| format!("{:+.1} %", 100.0 * (now as f64 / start as f64 - 1.0));
    out.push_str(&format!(
        "| {step} | {conns} | {} | {} | {per} | {} | {} |\n",
        m.rss,
        vs(m.rss, start.rss),
        m.anon,
        vs(m.anon, start.anon)
    ));
}

/// The proxy's resident memory: all of it (VmRSS) and its anonymous part (RssAnon: the heap and
/// stacks, without the binary's file-backed code pages, which grow as code runs the first time).
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss: u64,
    anon: u64,
}

/// One request and its response on `c`.
fn exchange(c: &mut TcpStream) -> io::Result<()> {
    c.write_all(REQUEST)?;
    read_response(c)
}

/// Reads one response with a Content-Length body (the origin's).
fn read_response(c: &mut TcpStream) -> io::Result<()> {
    c.set_read_timeout(Some(PATIENCE))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(&got, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::other(format!("no Content-Length in {head:?}")))?;
            if got.len() >= end + 4 + len {
                return Ok(());
            }
        }
        let n = c.read(&mut buf)?;
        if n == 0 {
            let got = String::from_utf8_lossy(&got);
            return Err(io::Error::other(format!(
                "the proxy closed before the response ended: {got:?}"
            )));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `upkeep` process under measurement.
struct Proxy {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Proxy {
    fn start(bin: &Path, origin: u16, keepalive: usize, clients: usize) -> io::Result<Proxy> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("idle_memory.{}.{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("upkeep.toml");
        std::fs::write(
            &config,
            format!(
                "workers = 1\n\n[[listen]]\naddr = \"127.0.0.1:{port}\"\n\n[[upstream]]\n\
                 name = \"origin\"\nservers = [\"127.0.0.1:{origin}\"]\nkeepalive = {keepalive}\n\
                 keepalive_timeout = \"600s\"\n\n[client_timeouts]\nkeepalive = \"600s\"\nheader = \"600s\"\n\n\
                 [limits]\nmax_client_connections = {clients}\n"
            ),
        )?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let proxy = Proxy { child, port, dir };
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("upkeep did not start listening"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    /// A hundred requests on one connection: whatever is allocated once is allocated.
    fn warm_up(&mut self) -> io::Result<()> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        for _ in 0..100 {
            exchange(&mut c)?;
        }
        let fds = self.fds()?;
        drop(c);
        self.wait_fds(|n| n < fds)
    }

    fn status(&self, key: &str) -> io::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {key} in /proc/PID/status")))
    }

    /// VmRSS (and RssAnon) in KiB 1.5 s after the step, once two readings 300 ms apart agree
    /// within 1 % (at most [`PATIENCE`]).
    fn settled_rss(&self) -> io::Result<Mem> {
        // The proxy returns freed memory at most once a second (runtime-shared trim.rs).
        thread::sleep(Duration::from_millis(1500));
        let deadline = Instant::now() + PATIENCE;
        let mut last = self.status("VmRSS:")?;
        loop {
            thread::sleep(Duration::from_millis(300));
            let now = self.status("VmRSS:")?;
            if now.abs_diff(last) * 100 <= last || Instant::now() > deadline {
                let anon = self.status("RssAnon:")?;
                return Ok(Mem { rss: now, anon });
            }
            last = now;
        }
    }

    fn fds(&self) -> io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }

    /// Polls the proxy's descriptor count until `ok` (at most [`PATIENCE`]).
    fn wait_fds(&self, ok: impl Fn(usize) -> bool) -> io::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let n = self.fds()?;
            if ok(n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("the proxy holds {n} descriptors")));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(self) {}
}

impl Drop for Proxy {
    /// Stops the process on every path out, errors included.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The origin: a thread per connection answering each request with 100 bytes, optionally
/// holding every answer until a number of requests has arrived (so the proxy needs that many
/// upstream connections at once).
struct Origin {
    port: u16,
    shared: Arc<OriginState>,
}

#[derive(Default)]
struct OriginState {
    requests: AtomicUsize,
    hold_until: AtomicUsize,
    arrived: (Mutex<()>, Condvar),
    streams: Mutex<Vec<TcpStream>>,
}

impl Origin {
    fn start() -> io::Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(OriginState::default());
        let state = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(copy) = stream.try_clone() {
                    state.streams.lock().unwrap().push(copy);
                }
                let state = state.clone();
                let _ = thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || serve(stream, &state));
            }
        });
        Ok(Origin { port, shared })
    }

    fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    fn hold_until(&self, n: usize) {
        self.shared.hold_until.store(n, Ordering::SeqCst);
    }

    /// Closes every connection the origin accepted.
    fn close_all(&self) {
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn serve(mut stream: TcpStream, state: &OriginState) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = find(&got, b"\r\n\r\n") {
            got.drain(..end + 4);
            state.requests.fetch_add(1, Ordering::SeqCst);
            let (lock, cvar) = &state.arrived;
            let mut guard = lock.lock().unwrap();
            cvar.notify_all();
            let deadline = Instant::now() + PATIENCE;
            while state.requests.load(Ordering::SeqCst) < state.hold_until.load(Ordering::SeqCst)
                && Instant::now() < deadline
            {
                guard = cvar
                    .wait_timeout(guard, Duration::from_millis(100))
                    .unwrap()
                    .0;
            }
            drop(guard);
            // One write: a second small one would wait for a delayed ACK (Nagle).
            let mut response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BODY.len()).into_bytes();
            response.extend_from_slice(&BODY);
            if stream.write_all(&response).is_err() {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}
