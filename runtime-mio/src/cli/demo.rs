//! `upkeep demo`: what upstream keepalive buys, on loopback, in a few seconds.
//!
//! Two small origin servers (std threads, HTTP/1.1 keep-alive, counting accepted connections)
//! sit behind the proxy (2 workers). A bounded burst of keep-alive client requests runs twice:
//! with pooling on (the default) and off (`keepalive = 0`). The table shows requests per second,
//! upstream connections the origins accepted, the pool hit ratio from the proxy's counters, and
//! TIME_WAIT sockets left on the origin ports (from /proc/net/tcp{,6}), and the proxy's CPU
//! time per request (its worker threads' on-CPU time from /proc/self/task/*/schedstat).
//!
//! `--tls`: the origins speak TLS with a certificate from a demo CA (embedded: generated once
//! with openssl, valid until 2126, loopback only) that the proxy verifies; the table adds the
//! upstream TLS handshakes, full and resumed, which is what pooling saves most of.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use upkeep_core::config::UpstreamTls;
use upkeep_core::{Address, Config};
use upkeep_mio::Proxy;
use upkeep_runtime::tls::Side;

/// The demo CA and the origins' certificate (demo.upkeep, 127.0.0.1) and key.
const DEMO_CA: &str = include_str!("demo_certs/ca.pem");
const DEMO_CERT: &str = include_str!("demo_certs/leaf.pem");
const DEMO_KEY: &str = include_str!("demo_certs/leaf.key");

const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 2000;
/// Hard cap on one phase, whatever the machine's speed.
const PHASE_CAP: Duration = Duration::from_secs(8);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A tiny keep-alive origin server.
struct Origin {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Origin {
    fn start(tls: Option<Arc<ServerConfig>>) -> io::Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                acc.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                let tls = tls.clone();
                thread::spawn(move || {
                    let _ = conn.set_nodelay(true);
                    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                    match tls {
                        Some(config) => {
                            if let Ok(server) = ServerConnection::new(config) {
                                serve(StreamOwned::new(server, conn), &st);
                            }
                        }
                        None => serve(conn, &st),
                    }
                });
            }
        });
        Ok(Origin {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers GETs on one connection until the peer closes, honouring `Connection: close`.
fn serve(conn: impl Read + Write, stop: &AtomicBool) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        let mut close = false;
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if line.to_ascii_lowercase().starts_with("connection:") && line.contains("close") {
                close = true;
            }
        }
        let resp: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        let writer = reader.get_mut();
        if writer
            .write_all(resp)
            .and_then(|()| writer.flush())
            .is_err()
            || close
        {
            return;
        }
    }
}

/// One client: keep-alive requests until done or the deadline, reconnecting when the proxy
/// ends a connection (after `client_keepalive_requests`). Returns how many responses it read.
fn client(proxy: SocketAddr, deadline: Instant) -> u64 {
    let mut done = 0;
    while done < REQUESTS_PER_CLIENT as u64 && Instant::now() < deadline {
        let n = connection(proxy, deadline, REQUESTS_PER_CLIENT as u64 - done);
        if n == 0 {
            break;
        }
        done += n;
    }
    done
}

/// Up to `max` requests on one connection.
fn connection(proxy: SocketAddr, deadline: Instant, max: u64) -> u64 {
    let Ok(conn) = TcpStream::connect_timeout(&proxy, IO_TIMEOUT) else {
        return 0;
    };
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(mut writer) = conn.try_clone() else {
        return 0;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut done = 0;
    while done < max {
        if Instant::now() >= deadline
            || writer
                .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
                .is_err()
        {
            break;
        }
        let mut len = 0;
        let mut close = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return done;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return done;
        }
        done += 1;
        if close {
            break;
        }
    }
    done
}

/// TIME_WAIT sockets whose local or remote port is one of `ports`.
fn time_wait(ports: &[u16]) -> Option<usize> {
    let mut n = 0;
    let mut any = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        any = true;
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 4 || cols[3] != "06" {
                continue;
            }
            let port = |c: &str| {
                c.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if [cols[1], cols[2]]
                .iter()
                .any(|c| port(c).is_some_and(|p| ports.contains(&p)))
            {
                n += 1;
            }
        }
    }
    any.then_some(n)
}

/// On-CPU time of this process's proxy worker threads (`upkeep-worker-*`), from the kernel's
/// scheduler statistics (nanoseconds, no clock-tick rounding); `None` without /proc.
fn worker_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("upkeep-worker") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(total))
}

/// The origins' TLS configuration (the embedded demo certificate).
fn origin_tls() -> io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(DEMO_CERT.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(DEMO_KEY.as_bytes()).map_err(io::Error::other)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

struct Phase {
    requests: u64,
    seconds: f64,
    upstream_connections: u64,
    hit_ratio: f64,
    time_wait: Option<usize>,
    /// The proxy workers' CPU time per request.
    cpu_per_request: Option<Duration>,
    /// Upstream TLS handshakes: (full, resumed).
    handshakes: (u64, u64),
}

fn phase(origins: &[Origin], keepalive: usize, ca: Option<&str>) -> io::Result<Phase> {
    let mut config = Config::simple(
        Address::parse("127.0.0.1:0").expect("literal address"),
        origins.iter().map(|o| Address::Tcp(o.addr)).collect(),
    );
    config.runtime.workers = 2;
    config.upstreams[0].keepalive = keepalive;
    config.upstreams[0].tls = ca.map(|ca| UpstreamTls {
        ca: Some(ca.to_owned()),
        ..UpstreamTls::default()
    });
    let before: u64 = origins.iter().map(Origin::accepted).sum();
    let proxy = Proxy::start(config)?;
    let Address::Tcp(listen) = proxy.listen_addrs()[0] else {
        unreachable!("a TCP listener")
    };
    let cpu_before = worker_cpu();
    let start = Instant::now();
    let deadline = start + PHASE_CAP;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| thread::spawn(move || client(listen, deadline)))
        .collect();
    let requests: u64 = clients.into_iter().map(|c| c.join().unwrap_or(0)).sum();
    let seconds = start.elapsed().as_secs_f64();
    let cpu = worker_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let snap = proxy.snapshot();
    let handshakes = proxy
        .tls_stats()
        .handshake_counts(|s| matches!(s, Side::Upstream { .. }));
    proxy.shutdown();
    let g = snap.groups.get("default").cloned().unwrap_or_default();
    let total = g.pool_hits + g.pool_misses;
    let ports: Vec<u16> = origins.iter().map(|o| o.addr.port()).collect();
    Ok(Phase {
        requests,
        seconds,
        upstream_connections: origins.iter().map(Origin::accepted).sum::<u64>() - before,
        hit_ratio: if total == 0 {
            0.0
        } else {
            g.pool_hits as f64 / total as f64
        },
        time_wait: time_wait(&ports),
        cpu_per_request: cpu
            .filter(|_| requests > 0)
            .map(|c| c / requests.max(1) as u32),
        handshakes,
    })
}

/// Runs the demo and prints the table (`tls`: TLS origins).
pub(crate) fn demo(tls: bool) -> io::Result<()> {
    let origin_tls = tls.then(origin_tls).transpose()?;
    let origins = [
        Origin::start(origin_tls.clone())?,
        Origin::start(origin_tls)?,
    ];
    // The proxy verifies the origins against the demo CA, from a file as an operator's would.
    let dir = std::env::temp_dir().join(format!("upkeep-demo-{}", std::process::id()));
    let ca = if tls {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("ca.pem");
        std::fs::write(&path, DEMO_CA)?;
        Some(path.display().to_string())
    } else {
        None
    };
    println!(
        "upkeep demo: 2 {}origins on {} and {}, proxy with 2 workers, {CLIENTS} keep-alive clients x {REQUESTS_PER_CLIENT} requests",
        if tls { "TLS " } else { "" },
        origins[0].addr,
        origins[1].addr
    );
    let on = phase(
        &origins,
        upkeep_core::config::DEFAULT_KEEPALIVE,
        ca.as_deref(),
    );
    let off = on.and_then(|on| Ok((on, phase(&origins, 0, ca.as_deref())?)));
    if tls {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (on, off) = off?;
    let tw = |p: &Phase| p.time_wait.map_or("n/a".to_string(), |n| n.to_string());
    println!();
    println!("{:<28}{:>14}{:>14}", "", "pooling on", "pooling off");
    println!("{:<28}{:>14}{:>14}", "requests", on.requests, off.requests);
    println!(
        "{:<28}{:>14.0}{:>14.0}",
        "requests/s",
        on.requests as f64 / on.seconds,
        off.requests as f64 / off.seconds
    );
    println!(
        "{:<28}{:>14}{:>14}",
        "upstream connections opened", on.upstream_connections, off.upstream_connections
    );
    println!(
        "{:<28}{:>13.2}%{:>13.2}%",
        "pool hit ratio",
        on.hit_ratio * 100.0,
        off.hit_ratio * 100.0
    );
    if tls {
        println!(
            "{:<28}{:>14}{:>14}",
            "upstream TLS handshakes",
            on.handshakes.0 + on.handshakes.1,
            off.handshakes.0 + off.handshakes.1
        );
        println!(
            "{:<28}{:>14}{:>14}",
            "  full / resumed",
            format!("{} / {}", on.handshakes.0, on.handshakes.1),
            format!("{} / {}", off.handshakes.0, off.handshakes.1)
        );
    }
    let cpu = |p: &Phase| {
        p.cpu_per_request.map_or("n/a".to_string(), |d| {
            format!("{:.1}us", d.as_secs_f64() * 1e6)
        })
    };
    println!(
        "{:<28}{:>14}{:>14}",
        "proxy CPU per request",
        cpu(&on),
        cpu(&off)
    );
    println!(
        "{:<28}{:>14}{:>14}",
        "TIME_WAIT sockets left",
        tw(&on),
        tw(&off)
    );
    println!();
    println!(
        "(TIME_WAIT counts sockets on the origin ports after each phase; the second includes any left by the first.)"
    );
    Ok(())
}
