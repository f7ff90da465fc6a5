//! Split invariance of the whole engine: the same client and backend bytes, delivered in any
//! split (down to one byte at a time) and written back through sockets that take any number of
//! bytes per write, produce exactly the same bytes at the client and at the backend.

use proptest::prelude::*;
use upkeep_core::config::{Address, Config};
use upkeep_core::sim::Harness;
use upkeep_core::sim::http::read_request;

fn config() -> Config {
    Config::simple(
        Address::parse("127.0.0.1:8080").unwrap(),
        vec![Address::parse("127.0.0.1:9001").unwrap()],
    )
}

/// Requests of every framing a client sends, and a response of every framing a backend sends.
fn exchange(kind: u8, i: usize) -> (Vec<u8>, Vec<u8>) {
    let req = match kind % 4 {
        0 => format!("GET /r{i}?q=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"),
        1 => format!("POST /r{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"),
        2 => format!(
            "PUT /r{i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n"
        ),
        _ => format!(
            "HEAD /r{i} HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n"
        ),
    };
    let resp = match (kind / 4) % 3 {
        _ if kind % 4 == 3 => "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n".to_string(),
        0 => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nbody-{i}",
            5 + i.to_string().len()
        ),
        1 => format!(
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            i + 1,
            "z".repeat(i + 1)
        ),
        _ => format!(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-B: {i}\r\n\r\nok"
        ),
    };
    (req.into_bytes(), resp.into_bytes())
}

/// Cuts `data` into pieces at the given sizes (cycling; each at least 1).
fn pieces<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < data.len() {
        let n = sizes
            .get(k % sizes.len().max(1))
            .copied()
            .unwrap_or(data.len())
            .max(1);
        let end = (pos + n).min(data.len());
        out.push(&data[pos..end]);
        pos = end;
        k += 1;
    }
    out
}

/// Runs the exchanges; returns (bytes the client received, bytes the backend received).
fn run(
    kinds: &[u8],
    client_sizes: &[usize],
    backend_sizes: &[usize],
    write_chunk: Option<usize>,
) -> (Vec<u8>, Vec<u8>) {
    let mut h = Harness::new(config());
    h.write_chunk = write_chunk;
    let c = h.connect_client();
    let exchanges: Vec<(Vec<u8>, Vec<u8>)> = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| exchange(k, i))
        .collect();
    let all_requests: Vec<u8> = exchanges.iter().flat_map(|e| e.0.clone()).collect();
    let mut to_client = Vec::new();
    let mut to_backend = Vec::new();
    let mut parsed = 0; // bytes of to_backend already matched to a request
    let mut answered = 0;
    // Pipelined: the client writes everything, in pieces; the backend answers each request as it
    // completes, in pieces.
    let mut client_pieces = pieces(&all_requests, client_sizes).into_iter();
    loop {
        let sent = match client_pieces.next() {
            Some(p) => {
                h.client_send(c, p);
                true
            }
            None => false,
        };
        let mut progressed = false;
        loop {
            for u in h.open_upstreams() {
                to_backend.extend(h.take_upstream(u));
            }
            let Some((_, used)) = read_request(&to_backend[parsed..]) else {
                break;
            };
            parsed += used;
            let resp = exchanges[answered].1.clone();
            answered += 1;
            let u = *h
                .open_upstreams()
                .last()
                .expect("a connection carries the request");
            for p in pieces(&resp, backend_sizes) {
                h.upstream_send(u, p);
            }
            progressed = true;
        }
        to_client.extend(h.take_client(c));
        if !sent && !progressed {
            break;
        }
    }
    assert_eq!(
        answered,
        exchanges.len(),
        "every request reached the backend"
    );
    (to_client, to_backend)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_identical_output(
        kinds in proptest::collection::vec(0u8..12, 1..6),
        client_sizes in proptest::collection::vec(1usize..40, 1..8),
        backend_sizes in proptest::collection::vec(1usize..40, 1..8),
        write_chunk in proptest::option::of(1usize..64),
    ) {
        let whole = run(&kinds, &[usize::MAX], &[usize::MAX], None);
        let split = run(&kinds, &client_sizes, &backend_sizes, write_chunk);
        prop_assert_eq!(String::from_utf8_lossy(&split.0), String::from_utf8_lossy(&whole.0));
        prop_assert_eq!(String::from_utf8_lossy(&split.1), String::from_utf8_lossy(&whole.1));
    }
}

#[test]
fn byte_at_a_time_matches_whole_writes() {
    let kinds: Vec<u8> = (0..12).collect();
    let whole = run(&kinds, &[usize::MAX], &[usize::MAX], None);
    let bytewise = run(&kinds, &[1], &[1], Some(1));
    assert_eq!(
        String::from_utf8_lossy(&bytewise.0),
        String::from_utf8_lossy(&whole.0)
    );
    assert_eq!(
        String::from_utf8_lossy(&bytewise.1),
        String::from_utf8_lossy(&whole.1)
    );
    // And the output is what the rules say: 12 responses, HEAD ones without a body.
    assert_eq!(
        String::from_utf8_lossy(&whole.0)
            .matches("HTTP/1.1 200 OK")
            .count()
            + String::from_utf8_lossy(&whole.0)
                .matches("HTTP/1.1 201 Created")
                .count(),
        12
    );
}
