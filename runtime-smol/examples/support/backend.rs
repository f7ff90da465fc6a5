//! A minimal event-driven loopback HTTP/1.1 backend for the fan-out example and benchmark: one
//! thread, one smol task per connection (so opening a connection costs what it costs a real
//! event-driven server, not a thread spawn), keepalive, `Content-Length` answers naming the
//! backend and the request target. It counts the connections it accepts.

use async_io::Async;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running backend (runs until the process exits).
pub struct Backend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 (any port) that answers `"<name>:<target>"`.
    pub fn start(name: &str) -> std::io::Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                let ex = smol::LocalExecutor::new();
                let listener = Async::new(listener).expect("register listener");
                smol::block_on(ex.run(async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        count.fetch_add(1, Ordering::Relaxed);
                        ex.spawn(serve(stream, name.clone())).detach();
                    }
                }))
            })?;
        Ok(Backend { addr, accepted })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Serves GET requests (no bodies) on one connection until the peer closes it.
async fn serve(mut stream: Async<TcpStream>, name: String) {
    let _ = stream.get_ref().set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let line = buf.split(|&b| b == b'\r').next().unwrap_or(b"");
        let target = line.split(|&b| b == b' ').nth(1).unwrap_or(b"/");
        let body = format!("{name}:{}", String::from_utf8_lossy(target));
        let close = buf[..end]
            .windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        buf.drain(..end);
        if stream.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}
