//! Criterion microbenchmarks of the core (no I/O):
//! - `head`: request head parse + rewrite (what goes upstream), response head parse + rewrite
//!   (what goes to the client), in bytes/s and heads/s;
//! - `chunked`: chunked body decoding (small and 4 KiB chunks);
//! - `pool`: checkout + checkin of an idle upstream connection;
//! - `cycle`: a full request/response exchange through [`Core`](upkeep_core::Core) driven by
//!   the allocation-free `sim::direct::Direct` runtime (cycles/s), small and 64 KiB responses.
//!
//! `cargo bench -p upkeep-benches --bench core` (a few minutes; short measurement windows).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use upkeep_benches::workload::{self, BigResponse, GET, RESPONSE_HEAD_64K};
use upkeep_core::framing::{
    BodyDecoder, BodyKind, Forwarding, Head, HeadLimits, Method, OutBody, ResponseOptions,
    write_request_head, write_response_head,
};
use upkeep_core::pool::{Pool, PoolKey};
use upkeep_core::{ConnId, Time};

/// nginx's defaults (`large_client_header_buffers 4 8k`) and the core's 64 KiB head cap.
const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8 * 1024,
    max_head: 64 * 1024,
};

/// Short windows: the whole file runs in a few minutes on a shared 2-core machine.
fn configure<M: criterion::measurement::Measurement>(g: &mut BenchmarkGroup<'_, M>) {
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
}

/// Both throughput views of one head: bytes/s and heads/s.
fn head_bench(
    c: &mut Criterion,
    name: &str,
    input: &[u8],
    mut run: impl FnMut(&mut Head, &mut BytesMut),
) {
    let mut head = Head::new();
    let mut out = BytesMut::with_capacity(4096);
    for (unit, throughput) in [
        ("bytes", Throughput::Bytes(input.len() as u64)),
        ("heads", Throughput::Elements(1)),
    ] {
        let mut g = c.benchmark_group("head");
        configure(&mut g);
        g.throughput(throughput);
        g.bench_function(format!("{name}/{unit}"), |b| {
            b.iter(|| {
                out.clear();
                run(&mut head, &mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
}

fn head(c: &mut Criterion) {
    let fwd = Forwarding {
        client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        x_forwarded_for: true,
        proto: Some("http"),
        via: None,
        default_host: "app",
        te_trailers: false,
    };
    head_bench(c, "request", GET, |head, out| {
        let complete = head.parse_request(black_box(GET), &LIMITS).expect("valid");
        assert!(complete);
        write_request_head(head, GET, OutBody::None, false, &fwd, out);
    });
    let small = workload::small_response();
    let small_head = &small[..small.len() - 100];
    for (name, input) in [
        ("response_small", small_head),
        ("response_64k", RESPONSE_HEAD_64K),
    ] {
        head_bench(c, name, input, |head, out| {
            let complete = head
                .parse_response(black_box(input), Method::Get, &LIMITS)
                .expect("valid");
            assert!(complete);
            let opts = ResponseOptions {
                body: match head.body {
                    BodyKind::Length(n) => OutBody::Length(n),
                    _ => OutBody::Close,
                },
                close: false,
                keep_alive_10: false,
                upgrade: false,
                via: None,
            };
            write_response_head(head, input, &opts, out);
        });
    }
}

/// Decodes a whole chunked body, step by step, as the proxy does.
fn decode(body: &[u8]) -> usize {
    let mut dec = BodyDecoder::new(BodyKind::Chunked);
    let mut at = 0;
    let mut payload = 0;
    loop {
        let step = dec.step(&body[at..]).expect("valid chunked body");
        at += step.skip + step.data;
        payload += step.data;
        if step.done {
            return payload;
        }
        assert!(step.skip + step.data > 0, "stalled on a complete body");
    }
}

fn chunked(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunked");
    configure(&mut g);
    for (name, total, chunk) in [
        ("64k_in_4k_chunks", 64 * 1024, 4096),
        ("4k_in_64b_chunks", 4096, 64),
    ] {
        let body = workload::chunked_body(total, chunk);
        assert_eq!(decode(&body), total);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| b.iter(|| decode(black_box(&body))));
    }
    g.finish();
}

fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    // A pool with 16 idle connections over 4 servers (nginx's `keepalive 16` behind a
    // round-robin group); each iteration takes one for a request and puts it back.
    let mut pool = Pool::new(&[16]);
    let expires = Time(u64::MAX);
    for i in 0..16u32 {
        let key = PoolKey {
            server: i % 4,
            partition: 0,
        };
        let conn = ConnId {
            index: i,
            generation: 0,
        };
        assert_eq!(pool.checkin(key, 0, conn, expires), None);
    }
    let mut server = 0u32;
    let mut now = Time::ZERO;
    g.bench_function("checkout_checkin", |b| {
        b.iter(|| {
            server = (server + 1) % 4;
            now = Time(now.0 + 1);
            let key = PoolKey {
                server,
                partition: 0,
            };
            let conn = pool
                .checkout(now, black_box(key), &mut |_| {
                    unreachable!("nothing expires")
                })
                .expect("an idle connection for every server");
            let evicted = pool.checkin(key, 0, conn, expires);
            debug_assert!(evicted.is_none());
            black_box(evicted)
        })
    });
    g.finish();
}

fn cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    let small = workload::small_response();
    let mut d = workload::warmed(&[&small], 1000);
    g.bench_function("small", |b| {
        b.iter(|| d.exchange(GET, &[black_box(&small)]))
    });
    let big = BigResponse::default();
    let pieces = big.pieces();
    let mut d = workload::warmed(&pieces, 100);
    g.bench_function("64k", |b| b.iter(|| d.exchange(GET, black_box(&pieces))));
    assert_eq!(
        d.core.stats().servers[0].connects,
        1,
        "steady state: one pooled upstream connection"
    );
    g.finish();
}

criterion_group!(benches, head, chunked, pool, cycle);
criterion_main!(benches);
