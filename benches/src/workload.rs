//! The messages and configuration every core benchmark uses, so the criterion figures and the
//! allocation count describe the same traffic: a wrk-like GET, a ~100-byte response and a
//! 64 KiB response arriving in 16 KiB reads (the size of a typical socket read).

use upkeep_core::sim::direct::Direct;
use upkeep_core::{Address, Config};

/// A request as wrk sends it (plus the headers browsers and load balancers commonly add).
pub const GET: &[u8] = b"GET /small HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: wrk/4.1.0\r\n\
Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nX-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\r\n";

/// The response head nginx sends for a static file.
pub const RESPONSE_HEAD_64K: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Sat, 22 Nov 2025 14:31:00 GMT\r\nContent-Type: application/octet-stream\r\n\
Content-Length: 65536\r\nLast-Modified: Sat, 22 Nov 2025 14:00:00 GMT\r\nConnection: keep-alive\r\n\
ETag: \"6921c2a0-10000\"\r\nAccept-Ranges: bytes\r\n\r\n";

/// Size of the large body.
pub const BIG: usize = 64 * 1024;

/// One socket read's worth of a large response body.
pub const READ: usize = 16 * 1024;

/// The small response (`return 200 "<100 bytes>"` in nginx): head and body in one read.
pub fn small_response() -> Vec<u8> {
    let mut r =
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 22 Nov 2025 14:31:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
            .to_vec();
    r.extend(std::iter::repeat_n(b'x', 100));
    r
}

/// The 64 KiB response as the reads a runtime would see: the head, then 16 KiB pieces.
pub struct BigResponse {
    body: Vec<u8>,
}

impl Default for BigResponse {
    fn default() -> Self {
        BigResponse {
            body: vec![b'y'; BIG],
        }
    }
}

impl BigResponse {
    /// The pieces in arrival order (borrowed, so replaying them allocates nothing).
    pub fn pieces(&self) -> Vec<&[u8]> {
        let mut v = vec![RESPONSE_HEAD_64K];
        v.extend(self.body.chunks(READ));
        v
    }

    /// Total bytes of the response (head + body).
    pub fn len(&self) -> usize {
        RESPONSE_HEAD_64K.len() + self.body.len()
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One listener, one backend, default settings except that neither side of the keep-alive is
/// capped by a request count, so a long benchmark stays in steady state on one client and one
/// pooled upstream connection.
pub fn config() -> Config {
    let mut config = Config::simple(
        Address::parse("127.0.0.1:8080").expect("valid address"),
        vec![Address::parse("127.0.0.1:9001").expect("valid address")],
    );
    config.upstreams[0].keepalive_requests = u32::MAX;
    config.limits.client_keepalive_requests = u32::MAX;
    config
}

/// A [`Direct`] driver after `warm` exchanges of `response`, so buffers, queues and the pool
/// reached their steady-state sizes.
pub fn warmed(response: &[&[u8]], warm: usize) -> Direct {
    let mut d = Direct::new(config());
    for _ in 0..warm {
        d.exchange(GET, response);
    }
    d
}

/// A chunked body of `total` payload bytes in chunks of `chunk` bytes, with the terminator.
pub fn chunked_body(total: usize, chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + total / chunk.max(1) * 8 + 8);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'z', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warmed_driver_keeps_one_pooled_upstream_connection() {
        let big = BigResponse::default();
        let small = small_response();
        let mut d = warmed(&[&small], 10);
        for _ in 0..10 {
            d.exchange(GET, &big.pieces());
        }
        let u = d.upstream.expect("connected");
        assert!(d.core.is_pooled(u));
        assert_eq!(d.core.stats().servers[0].connects, 1);
        assert!(d.to_client > 10 * BIG + 20 * 100);
    }

    #[test]
    fn chunked_body_is_framed() {
        assert_eq!(chunked_body(5, 3), b"3\r\nzzz\r\n2\r\nzz\r\n0\r\n\r\n");
    }
}
